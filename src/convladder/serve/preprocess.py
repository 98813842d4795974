"""Turn arbitrary digit images into MNIST form, and read batches that already are.

MNIST was made from NIST scans like this (LeCun et al.): the digit is size-normalised
to fit a 20x20 box keeping its aspect ratio (anti-aliased, so it becomes grey-level),
then placed in a 28x28 field so that its centre of mass sits at the field's centre.
Ink is white (255) on black (0). `to_mnist` repeats those steps for any photo, scan or
canvas drawing; `.npy` and IDX batches are taken as already in MNIST form.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convladder.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BATCH_SUFFIXES = (".npy", ".idx", "-ubyte", ".gz")
BOX = 20  # the digit's longest side after size normalisation
FIELD = 28
# Where MNIST puts the centre of mass, in pixel indices: measured on the test set as (13.98, 14.01),
# i.e. 14, not the geometric 13.5 (with 14, MNIST images pass through to_mnist unchanged).
CENTRE = 14.0
INK_FLOOR = 0.15  # ink below this fraction of the peak is paper texture / JPEG noise, not digit
MIN_CONTRAST = 0.08  # peak ink/background difference below this means there is no digit


class NoInkError(UserError):
    """The image has no digit in it (blank canvas, flat colour)."""


class ImageTooLarge(UserError):
    """The image is wider or taller than allowed (refused before decoding its pixels)."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover - Pillow is in the [serve] and [dev] extras
        raise UserError("reading image files needs Pillow: pip install 'convladder[serve]'") from None
    return Image, ImageOps


def decode_image(data: bytes | Path, *, max_side: int | None = None, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/... bytes or a file into grayscale float32 (H, W) in [0, 1].

    Transparent pixels are composited onto the colour that contrasts with the opaque
    ones, so dark ink on a transparent background reads as ink (and so does light ink).
    `max_side` refuses larger images before their pixels are decoded (decompression bombs).
    """
    Image, ImageOps = _pil()
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if max_side is not None and max(img.size) > max_side:
            raise ImageTooLarge(f"{name} is {img.size[0]}x{img.size[1]} pixels; the limit is {max_side} per side — scale it down")
        img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
        img.load()
    except UserError:
        raise
    except Exception as exc:  # Pillow raises several types for bad data (UnidentifiedImageError, OSError, ...)
        raise UserError(f"{name} is not a readable image ({exc.__class__.__name__}: {exc}) — give a PNG or JPEG") from None
    if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32) / 255.0
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        alpha = rgba[..., 3]
        opaque = alpha > 0.5
        if opaque.all():
            return gray
        # Contrast with the opaque pixels; an all-transparent image becomes blank (no ink).
        backdrop = 1.0 if opaque.any() and gray[opaque].mean() < 0.5 else 0.0
        return gray * alpha + backdrop * (1.0 - alpha)
    if img.mode not in ("L", "F", "I", "I;16"):
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.float32)
    if img.mode in ("I", "I;16"):
        arr = arr / max(float(arr.max()), 1.0)
    elif img.mode == "L":
        arr = arr / 255.0
    return arr


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Grayscale float (H, W) in [0, 1], any polarity -> uint8 (28, 28), white ink on black."""
    Image, _ = _pil()
    g = np.asarray(gray, dtype=np.float32)
    # The border is mostly background: its median tells paper colour even with a digit touching an edge.
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    ink = (background - g) if background > 0.5 else (g - background)  # invert a light background
    np.clip(ink, 0.0, None, out=ink)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < MIN_CONTRAST:
        raise NoInkError("no digit found: the image is blank or one flat colour — draw or photograph a digit")
    ink /= peak
    ink[ink < INK_FLOOR] = 0.0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # BOX averages areas when shrinking (what a scanner's sensor does); bilinear when enlarging tiny crops.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(crop, mode="F").resize((nw, nh), resample), dtype=np.float32)
    small = np.clip(small, 0.0, None)
    # Thin strokes fade when shrunk a lot; MNIST digits reach full intensity, so restore the peak.
    small /= max(float(small.max()), 1e-6)
    total = float(small.sum())
    yy, xx = np.indices(small.shape)
    cy, cx = float((yy * small).sum()) / total, float((xx * small).sum()) / total
    top = int(np.clip(round(CENTRE - cy), 0, FIELD - nh))
    left = int(np.clip(round(CENTRE - cx), 0, FIELD - nw))
    out = np.zeros((FIELD, FIELD), np.float32)
    out[top:top + nh, left:left + nw] = small
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def as_batch(arr: np.ndarray, name: str) -> np.ndarray:
    """Check an array is MNIST-form images and return uint8 or float32 (N, 28, 28) pixels in 0..255 or 0..1."""
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (FIELD, FIELD):
        raise UserError(f"{name} has shape {a.shape}; batches must be (N, 28, 28) MNIST-form images")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{name} holds {a.dtype}; give uint8 0..255 or float pixels")
    a = a.astype(np.float32)
    # Floats may be 0..1 or 0..255; anything above 1 means the latter.
    return a / 255.0 if a.size and float(a.max()) > 1.0 else a


@dataclass
class Batch:
    """Images in MNIST form with a name for each (file name, or file[index] for batches)."""

    pixels: np.ndarray  # (N, 28, 28): uint8 0..255 or float32 0..1
    names: list[str]


def _is_batch_file(path: Path) -> bool:
    return path.name.endswith(BATCH_SUFFIXES) and not path.name.endswith(tuple(s + ".gz" for s in IMAGE_SUFFIXES))


def load_inputs(paths: list[Path], *, max_side: int | None = None) -> Batch:
    """Read image files, folders of images, `.npy` and IDX batches into one batch."""
    chunks: list[np.ndarray] = []
    names: list[str] = []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif not path.exists():
            raise UserError(f"{path} does not exist — give image files, a folder of images, .npy or IDX files")
        else:
            files.append(path)
    for path in files:
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)  # never unpickle user files
            except ValueError as exc:
                raise UserError(f"{path} is not a plain numeric .npy array ({exc})") from None
            batch = as_batch(arr, str(path))
        elif _is_batch_file(path):
            from convladder.data.idx import read_idx  # IDX (raw or gzipped), any element type

            batch = as_batch(read_idx(path), str(path))
        else:
            chunks.append(to_mnist(decode_image(path, max_side=max_side, name=str(path)))[None])
            names.append(str(path))
            continue
        chunks.append(batch if batch.dtype == np.uint8 else np.round(batch * 255).astype(np.uint8))
        names.extend(f"{path}[{i}]" for i in range(len(batch)))
    # One dtype for the whole batch: floats were rounded to uint8 above (MNIST is 8-bit anyway).
    return Batch(np.concatenate(chunks) if chunks else np.zeros((0, FIELD, FIELD), np.uint8), names)
