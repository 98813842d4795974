"""Turn arbitrary digit images into MNIST form (colour pictures, for colour networks, into the network's input
size, in colour), and read batches that already are.

MNIST was made from NIST scans like this (LeCun et al.): the digit is size-normalised
to fit a 20x20 box keeping its aspect ratio (anti-aliased, so it becomes grey-level),
then placed in a 28x28 field so that its centre of mass sits at the field's centre.
Ink is white (255) on black (0). `to_mnist` repeats those steps for any photo, scan or
canvas drawing (for a network with another input size, the same layout scaled to its
field); `.npy` and IDX batches are taken as already in that form.
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
        said = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the bytes", str(exc))  # Pillow names its buffer
        raise UserError(f"{name} is not a readable image ({exc.__class__.__name__}: {said}) — give a PNG or JPEG") from None
    check_image_size(*img.size, name=name, max_side=max_side, max_pixels=max_pixels)
    return img


def _loaded(data: bytes | Path, *, name: str, max_side: int | None, max_pixels: int | None, draft: str):
    """The image opened (size checked from its header), EXIF-rotated and decoded; big JPEGs decoded at 1/2..1/8
    scale in `draft` mode ("L" or "RGB")."""
    _, ImageOps = _pil()
    img = open_image(data, name=name, max_side=max_side, max_pixels=max_pixels)
    factor = -(-max(img.size) // WORK_SIDE)
    try:
        if factor > 1 and img.format == "JPEG" and img.mode in ("L", "RGB"):
            img.draft(draft, (img.size[0] // factor, img.size[1] // factor))  # decode at 1/2, 1/4 or 1/8 scale
        img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
        img.load()
    except Exception as exc:  # Pillow raises several types for bad data (truncated files, bad chunks, ...)
        raise UserError(f"{name} is not a readable image ({exc.__class__.__name__}: {exc}) — give a PNG or JPEG") from None
    return img


def decode_image(data: bytes | Path, *, max_side: int | None = MAX_SIDE, name: str = "image",
                 max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/... bytes or a file into grayscale float32 (H, W) in [0, 1].

    Transparent pixels are composited onto the colour that contrasts with the opaque
    ones, so dark ink on a transparent background reads as ink (and so does light ink).
    Images over `max_side` per side or `max_pixels` in all are refused from their header,
    before their pixels are decoded (decompression bombs); None lifts a limit.
    """
    return _grey(_loaded(data, name=name, max_side=max_side, max_pixels=max_pixels, draft="L"), name)


def _grey(img, name: str) -> np.ndarray:
    """A loaded PIL image -> grayscale float32 (H, W) in [0, 1] (see `decode_image`)."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        return _decode_integer(img, name)
    if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode not in ("L", "F", "RGBA"):
        img = img.convert("L")
    factor = -(-max(img.size) // WORK_SIDE)
    if factor > 1:
        # Box-average down to WORK_SIDE before going to float32: to_mnist shrinks the digit to 20 px anyway,
        # and this keeps a 4096x4096 RGBA photo at ~0.1 GB instead of ~0.6 GB of float copies.
        img = img.reduce(factor)
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32) / 255.0
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        return _composite(gray, rgba[..., 3])
    arr = np.asarray(img, dtype=np.float32)
    return arr / 255.0 if img.mode == "L" else _float_to_unit(arr, name)


GREY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def decode_colour(data: bytes | Path, *, max_side: int | None = MAX_SIDE, name: str = "image",
                  max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/... into RGB float32 (H, W, 3) in [0, 1], kept in colour (for networks trained on colour).

    Grey images (8/16/32-bit, float) give three equal channels, decoded as `decode_image` does; transparent
    pixels are laid on white (how a viewer shows a photo with a transparent background). Size limits as there.
    """
    img = _loaded(data, name=name, max_side=max_side, max_pixels=max_pixels, draft="RGB")
    if img.mode in GREY_MODES and "transparency" not in img.info:
        return np.repeat(_grey(img, name)[..., None], 3, axis=2)
    img = img.convert("RGBA")
    factor = -(-max(img.size) // WORK_SIDE)
    if factor > 1:
        img = img.reduce(factor)  # box-average big photos first, as decode_image does (memory)
    rgba = np.asarray(img, dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)  # on white


def fit_image(rgb: np.ndarray, size: tuple[int, int], *, name: str = "the image") -> np.ndarray:
    """RGB float (H, W, 3) in [0, 1] -> uint8 (3, h, w) for a colour network: the largest centred part with the
    network's aspect ratio, resized to `size` (h, w) — area-averaged when shrinking, bicubic when enlarging."""
    Image, _ = _pil()
    a = np.asarray(rgb)
    if a.dtype.kind == "c" or not np.isfinite(a).all():
        raise UserError(f"{name} holds NaN, infinite or complex values — give real pixel values (e.g. 0..1)")
    field_h, field_w = size
    h, w = a.shape[:2]
    if h * field_w > w * field_h:  # too tall for the network's aspect: keep the middle rows
        keep = max(1, round(w * field_h / field_w))
        a = a[(h - keep) // 2:(h - keep) // 2 + keep]
    elif h * field_w < w * field_h:  # too wide: keep the middle columns
        keep = max(1, round(h * field_w / field_h))
        a = a[:, (w - keep) // 2:(w - keep) // 2 + keep]
    u8 = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    shrink = a.shape[0] >= field_h and a.shape[1] >= field_w
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    out = np.asarray(Image.fromarray(u8, mode="RGB").resize((field_w, field_h), resample), dtype=np.uint8)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _float_to_unit(arr: np.ndarray, name: str) -> np.ndarray:
    """32-bit float grayscale ("F") -> [0, 1]: kept when it already is, else scaled by the range its values
    fill (255, 65535, or their maximum), as the integer modes are. A float TIFF saved from 8-bit data holds
    0..255: read as 0..1 it was nearly all "ink", and its paper colour was never found."""
    finite = arr[np.isfinite(arr)]  # NaN/inf are refused by to_mnist, with the message of every other input
    lo, hi = float(finite.min(initial=0.0)), float(finite.max(initial=0.0))
    if lo < 0:
        raise UserError(f"{name} holds negative pixel values (down to {lo:g}) — give an 8- or 16-bit image, or "
                        "floats in [0, 1]")
    depth = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0 if hi <= 65535.0 else hi
    return arr / depth if depth != 1.0 else arr


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Lay gray (H, W) with alpha in [0, 1] on the colour that contrasts with its opaque pixels."""
    opaque = alpha > 0.5
    if opaque.all():
        return gray
    # Contrast with the opaque pixels; an all-transparent image becomes blank (no ink).
    backdrop = 1.0 if opaque.any() and gray[opaque].mean() < 0.5 else 0.0
    return gray * alpha + backdrop * (1.0 - alpha)


def _decode_integer(img, name: str) -> np.ndarray:
    """16-bit ("I;16", "I;16B", "I;16L", "I;16N") and 32-bit ("I") grayscale -> float32 (H, W) in [0, 1].

    Scaled by the depth's full range, so a 16-bit picture decodes like its 8-bit version: 65535 for the
    16-bit modes; for "I" (32-bit, which also holds 8- or 16-bit data) the smallest of 255, 65535 and
    the image's maximum that covers its values. Converting to "L" instead clips every value above 255.
    """
    key = img.info.get("transparency")  # a grey level that stands for "transparent" (PNG tRNS)
    depth = 65535 if img.mode.startswith("I;16") else None
    if depth is None:
        lo, hi = img.getextrema()
        if lo < 0:
            raise UserError(f"{name} holds negative pixel values (down to {lo}) — give an 8- or 16-bit image")
        depth = 255 if hi <= 255 else 65535 if hi <= 65535 else hi
    img = img.convert("I")  # Image.reduce does not take the 16-bit modes
    factor = -(-max(img.size) // WORK_SIDE)
    alpha = None
    if isinstance(key, int):
        Image, _ = _pil()
        mask = Image.fromarray(np.where(np.asarray(img) == key, 0, 255).astype(np.uint8), mode="L")
        alpha = np.asarray(mask.reduce(factor) if factor > 1 else mask, dtype=np.float32) / 255.0
    if factor > 1:
        img = img.reduce(factor)  # box-average to WORK_SIDE before float32, as for the other modes
    gray = np.asarray(img, dtype=np.float32) / float(depth)
    return gray if alpha is None else _composite(gray, alpha)


def field_box(size: tuple[int, int]) -> tuple[int, tuple[float, float]]:
    """The digit's longest side and its centre of mass (row, column) in a field of `size` (height, width):
    MNIST's layout scaled to the field (20 px and (14, 14) in 28x28; 14 px and (10, 10) in 20x20)."""
    h, w = size
    return max(1, round(BOX * min(h, w) / FIELD)), (CENTRE * h / FIELD, CENTRE * w / FIELD)


def to_mnist(gray: np.ndarray, *, size: tuple[int, int] = (FIELD, FIELD), name: str = "the image") -> np.ndarray:
    """Grayscale float (H, W) in [0, 1], any polarity -> uint8 `size` (28, 28), white ink on black.

    For a network whose input is not 28x28 the digit is laid out in proportion (see `field_box`).
    """
    Image, _ = _pil()
    field_h, field_w = size
    box, (centre_y, centre_x) = field_box(size)
    g = np.asarray(gray)
    if g.dtype.kind == "c" or not np.isfinite(g).all():
        raise UserError(f"{name} holds NaN, infinite or complex values — give real pixel values (e.g. 0..1)")
    g = g.astype(np.float32, copy=False)
    # The border is mostly background: its median tells paper colour even with a digit touching an edge.
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    ink = (background - g) if background > 0.5 else (g - background)  # invert a light background
    np.clip(ink, 0.0, None, out=ink)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < MIN_CONTRAST:
        raise NoInkError(f"no digit found in {name}: it is blank or one flat colour — draw or photograph a digit")
    ink /= peak
    ink[ink < INK_FLOOR] = 0.0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
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
    top = int(np.clip(round(centre_y - cy), 0, field_h - nh))
    left = int(np.clip(round(centre_x - cx), 0, field_w - nw))
    out = np.zeros((field_h, field_w), np.float32)
    out[top:top + nh, left:left + nw] = small
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def shape_text(input_shape: tuple[int, int, int]) -> str:
    """The batch shape a network with `input_shape` (C, H, W) takes: '(N, 28, 28)', or '(N, 3, 32, 32)'."""
    c, h, w = input_shape
    return f"(N, {h}, {w})" if c == 1 else f"(N, {c}, {h}, {w})"


def as_batch(arr: np.ndarray, name: str, input_shape: tuple[int, int, int] = (1, FIELD, FIELD)) -> np.ndarray:
    """Check an array is images in the network's input form and return uint8 or float32 pixels in 0..255 or
    0..1: (N, H, W) for one channel, (N, C, H, W) for more (`input_shape` is (C, H, W); (N, H, W, C) batches
    are turned to that)."""
    c, h, w = input_shape
    a = np.asarray(arr)
    if c == 1:
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim == 2:
            a = a[None]
        want = (h, w)
    else:
        if a.ndim == 3:
            a = a[None]
        if a.ndim == 4 and a.shape[3] == c and a.shape[1] != c:
            a = a.transpose(0, 3, 1, 2)  # (N, H, W, C), as image libraries hold colour pictures
        want = (c, h, w)
    if a.ndim != len(want) + 1 or a.shape[1:] != want:
        form = " MNIST-form" if tuple(input_shape) == (1, FIELD, FIELD) else ""
        network = "" if form else f" (the network's input is {c}x{h}x{w})"
        raise UserError(f"{name} has shape {a.shape}; batches must be {shape_text(input_shape)}{form} images{network}")
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

    pixels: np.ndarray  # (N, H, W), or (N, C, H, W) for C > 1 channels: uint8 0..255
    names: list[str]


def _is_batch_file(path: Path) -> bool:
    return path.name.endswith(BATCH_SUFFIXES) and not path.name.endswith(tuple(s + ".gz" for s in IMAGE_SUFFIXES))


def load_inputs(paths: list[Path], *, max_side: int | None = MAX_SIDE,
                input_shape: tuple[int, int, int] = (1, FIELD, FIELD)) -> Batch:
    """Read image files, folders of images, `.npy` and IDX batches into one batch for a network whose input
    is `input_shape` (C, H, W): for one channel images are put into MNIST form at H x W, for three (colour)
    they stay in colour, centre-cropped to the network's aspect and resized (`fit_image`); batches must have
    that shape already.

    Sizes are checked from headers before reading: images against `max_side`/`MAX_PIXELS`,
    `.npy` against `MAX_NPY_BYTES` (never unpickled), IDX against `MAX_IDX_BYTES`.
    """
    chunks: list[np.ndarray] = []
    names: list[str] = []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif not path.exists():
            raise UserError(f"{path} does not exist — give image files, a folder of images, .npy or IDX files")
        elif not path.is_file():  # a FIFO or device would block or never end
            raise UserError(f"{path} is not a regular file (a FIFO, device or socket) — give image files, a folder "
                            "of images, .npy or IDX files")
        else:
            files.append(path)
    c, h, w = input_shape
    pictures = [p for p in files if p.suffix.lower() != ".npy" and not _is_batch_file(p)]
    if c not in (1, 3) and pictures:
        raise UserError(f"{pictures[0]} is an image file, but the network takes {c}x{h}x{w} inputs ({c} channels); "
                        f"image files become 1-channel (MNIST form) or 3-channel (colour) inputs only — give a .npy "
                        f"batch of shape {shape_text(input_shape)} instead")
    for path in files:
        if path.suffix.lower() == ".npy":
            from convladder.data.npy import load_npy  # header checked before allocation; never unpickled

            batch = as_batch(load_npy(path), str(path), input_shape)
        elif _is_batch_file(path):
            from convladder.data.idx import read_idx  # IDX (raw or gzipped), any element type

            batch = as_batch(read_idx(path), str(path), input_shape)
        elif c == 3:  # a colour network: the picture stays in colour, resized to the network's input
            chunks.append(fit_image(decode_colour(path, max_side=max_side, name=str(path)), (h, w), name=str(path))[None])
            names.append(str(path))
            continue
        else:
            gray = decode_image(path, max_side=max_side, name=str(path))
            chunks.append(to_mnist(gray, size=(h, w), name=str(path))[None])
            names.append(str(path))
            continue
        chunks.append(batch if batch.dtype == np.uint8 else np.round(batch * 255).astype(np.uint8))
        names.extend(f"{path}[{i}]" for i in range(len(batch)))
    # One dtype for the whole batch: floats were rounded to uint8 above (MNIST is 8-bit anyway).
    empty = np.zeros((0, h, w) if c == 1 else (0, c, h, w), np.uint8)
    return Batch(np.concatenate(chunks) if chunks else empty, names)
