"""Turn arbitrary digit images into MNIST form, and read batches that already are.

MNIST was made from NIST scans like this (LeCun et al.): the digit is size-normalised
to fit a 20x20 box keeping its aspect ratio (anti-aliased, so it becomes grey-level),
then placed in a 28x28 field so that its centre of mass sits at the field's centre.
Ink is white (255) on black (0). `to_mnist` repeats those steps for any photo, scan or
canvas drawing; `.npy` and IDX batches are taken as already in MNIST form.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convladder.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Images wider or taller than MAX_SIDE, or with more than MAX_PIXELS pixels, are refused from their header,
# before any pixel is decoded (a 12000x12000 PNG of a few hundred KB would otherwise take gigabytes).
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# Pillow's own decompression-bomb guard, kept as a backstop for any other Image.open in the process:
# it warns above this many pixels and refuses above twice as many (its default, 89 M, lets 12000x12000 through).
PIL_MAX_IMAGE_PIXELS = 2 * MAX_PIXELS
# Larger images are box-averaged down to this many pixels per side before float conversion (memory).
WORK_SIDE = 1024
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
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > PIL_MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = PIL_MAX_IMAGE_PIXELS
        # Pillow's warning band (1-2x its limit) lies above MAX_PIXELS, which check_image_size refuses with
        # a clearer message right after Image.open: the warning would only add a second, noisier line.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image, ImageOps


def check_image_size(width: int, height: int, *, name: str = "image", max_side: int | None = MAX_SIDE,
                     max_pixels: int | None = MAX_PIXELS) -> None:
    """Raise ImageTooLarge when a (width, height) read from an image header is over the limits (None: no limit)."""
    side = max_side is not None and max(width, height) > max_side
    if side or (max_pixels is not None and width * height > max_pixels):
        limit = f"{max_side} pixels per side" if side else f"{max_pixels:,} pixels"
        raise ImageTooLarge(f"{name} is {width}x{height} pixels; the limit is {limit} — scale it down "
                            "first (a digit needs no more than a few hundred pixels per side)")


def open_image(data: bytes | Path, *, name: str = "image", max_side: int | None = MAX_SIDE,
               max_pixels: int | None = MAX_PIXELS):
    """Open an image lazily (Pillow reads only the header) and check its size before anything is decoded.

    Returns the PIL image, not yet loaded. Raises ImageTooLarge over the limits (see `check_image_size`)
    and UserError for data that is not an image.
    """
    Image, _ = _pil()
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError as exc:  # Pillow's backstop, hit first by images of over 2x its limit
        found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds limit of M pixels"
        size = f"has {int(found.group(1)):,} pixels" if found else "is too large"
        raise ImageTooLarge(f"{name} {size}; the limit is {max_pixels or MAX_PIXELS:,} pixels — scale it down "
                            "first (a digit needs no more than a few hundred pixels per side)") from None
    except Exception as exc:  # Pillow raises several types for bad data (UnidentifiedImageError, OSError, ...)
        raise UserError(f"{name} is not a readable image ({exc.__class__.__name__}: {exc}) — give a PNG or JPEG") from None
    check_image_size(*img.size, name=name, max_side=max_side, max_pixels=max_pixels)
    return img


def decode_image(data: bytes | Path, *, max_side: int | None = MAX_SIDE, name: str = "image",
                 max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/... bytes or a file into grayscale float32 (H, W) in [0, 1].

    Transparent pixels are composited onto the colour that contrasts with the opaque
    ones, so dark ink on a transparent background reads as ink (and so does light ink).
    Images over `max_side` per side or `max_pixels` in all are refused from their header,
    before their pixels are decoded (decompression bombs); None lifts a limit.
    """
    _, ImageOps = _pil()
    img = open_image(data, name=name, max_side=max_side, max_pixels=max_pixels)
    factor = -(-max(img.size) // WORK_SIDE)
    try:
        if factor > 1 and img.format == "JPEG" and img.mode in ("L", "RGB"):
            img.draft("L", (img.size[0] // factor, img.size[1] // factor))  # decode at 1/2, 1/4 or 1/8 scale
        img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
        img.load()
    except Exception as exc:  # Pillow raises several types for bad data (truncated files, bad chunks, ...)
        raise UserError(f"{name} is not a readable image ({exc.__class__.__name__}: {exc}) — give a PNG or JPEG") from None
    if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode not in ("L", "F", "I", "I;16", "RGBA"):
        img = img.convert("L")
    if img.mode == "I;16":
        img = img.convert("I")  # Image.reduce does not take 16-bit modes
    factor = -(-max(img.size) // WORK_SIDE)
    if factor > 1:
        # Box-average down to WORK_SIDE before going to float32: to_mnist shrinks the digit to 20 px anyway,
        # and this keeps a 4096x4096 RGBA photo at ~0.1 GB instead of ~0.6 GB of float copies.
        img = img.reduce(factor)
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
    arr = np.asarray(img, dtype=np.float32)
    if img.mode == "I":
        arr = arr / max(float(arr.max()), 1.0)
    elif img.mode == "L":
        arr = arr / 255.0
    return arr


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Grayscale float (H, W) in [0, 1], any polarity -> uint8 (28, 28), white ink on black."""
    Image, _ = _pil()
    g = np.asarray(gray)
    if g.dtype.kind == "c" or not np.isfinite(g).all():
        raise UserError("the image holds NaN, infinite or complex values — give real pixel values (e.g. 0..1)")
    g = g.astype(np.float32, copy=False)
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
    if a.dtype.kind not in "iuf":
        raise UserError(f"{name} holds {a.dtype} values; give uint8 0..255 or real (float) pixels 0..1 or 0..255")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UserError(f"{name} holds {int(bad.sum())} NaN/infinite value(s) (first at index {first}) "
                            "— give finite pixels, 0..1 or 0..255")  # fmt: skip
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise UserError(f"{name} holds values from {lo:g} to {hi:g}; pixels must lie in 0..1 or 0..255 "
                        "— rescale them (MNIST form: white ink on black)")  # fmt: skip
    a = a.astype(np.float32)
    # Floats may be 0..1 or 0..255; anything above 1 means the latter.
    return a / 255.0 if hi > 1.0 else a


@dataclass
class Batch:
    """Images in MNIST form with a name for each (file name, or file[index] for batches)."""

    pixels: np.ndarray  # (N, 28, 28): uint8 0..255 or float32 0..1
    names: list[str]


def _is_batch_file(path: Path) -> bool:
    return path.name.endswith(BATCH_SUFFIXES) and not path.name.endswith(tuple(s + ".gz" for s in IMAGE_SUFFIXES))


def load_inputs(paths: list[Path], *, max_side: int | None = MAX_SIDE) -> Batch:
    """Read image files, folders of images, `.npy` and IDX batches into one batch.

    Sizes are checked from headers before reading: images against `max_side`/`MAX_PIXELS`,
    `.npy` against `MAX_NPY_BYTES` (never unpickled), IDX against `MAX_IDX_BYTES`.
    """
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
            from convladder.data.npy import load_npy  # header checked before allocation; never unpickled

            batch = as_batch(load_npy(path), str(path))
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
