"""Reading and writing IDX files (the format MNIST ships in), gzip-compressed or raw.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order (big-endian for multi-byte types).

Reading is bounded by the header: the data size it declares is checked against
`MAX_IDX_BYTES` before anything is allocated, and a gzip stream is unpacked in chunks
into a buffer of exactly that size, so a small `.gz` that unpacks to gigabytes (a gzip
bomb) is refused after reading at most the declared size plus one chunk.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes

# IDX type code -> big-endian numpy dtype.
_CODE_TO_DTYPE = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {(dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()}

GZIP_MAGIC = b"\x1f\x8b"
# Largest data part an IDX file may declare (1 GiB): MNIST's largest file holds 47 MB, EMNIST's 640 MB.
# Raise it per call with `read_idx(path, max_bytes=...)`.
MAX_IDX_BYTES = 1 << 30
# Deflate cannot compress better than 1032:1, so a .gz declaring more than this many times its own size
# is truncated (or lies) whatever it holds: refused before allocating.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20
DEFAULT_HINT = "replace it with a complete copy"


def _header(head: bytes, name: str, hint: str) -> tuple[np.dtype, int]:
    """(dtype, ndim) from the first 4 bytes, or a UserError for a wrong magic."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _CODE_TO_DTYPE:
        raise UserError(
            f"{name}: not an IDX file (wrong magic {head[:4].hex() or 'empty'}) — "
            f"expected the MNIST-style IDX format (e.g. train-images-idx3-ubyte[.gz]); {hint}"
        )
    return _CODE_TO_DTYPE[head[2]], head[3]


def _data_size(shape: tuple[int, ...], dtype: np.dtype, name: str, max_bytes: int, hint: str) -> int:
    """Bytes of data the header declares (exact: Python ints do not overflow), refused above `max_bytes`."""
    size = dtype.itemsize
    for dim in shape:
        size *= dim
    if size > max_bytes:
        raise UserError(
            f"{name}: IDX header declares shape {shape} = {size:,} bytes of data, over the {max_bytes:,}-byte "
            f"limit — the file is corrupt or not meant for this; {hint}"
        )
    return size


def _size_mismatch(name: str, got: int | None, shape: tuple[int, ...], expected: int, hint: str) -> None:
    """Raise the error for data shorter or longer than the header declares (`got` None: longer, not counted)."""
    if got is not None and got < expected:
        what = f"truncated ({got:,} bytes of data, header {shape} needs {expected:,})"
    elif got is not None:
        what = f"has trailing bytes ({got:,} bytes of data, header {shape} declares {expected:,})"
    else:  # a gzip stream is not unpacked past the declared end, so its real length stays unknown
        what = f"has trailing bytes (it unpacks to more than the {expected:,} bytes header {shape} declares)"
    raise UserError(f"{name}: IDX data {what} — the file is incomplete or corrupt; {hint}")


def _read_exact(fh: BinaryIO, buf: memoryview) -> int:
    """Fill `buf` from `fh` in chunks; return the number of bytes read (short at end of stream)."""
    done = 0
    while done < len(buf):
        n = fh.readinto(buf[done:done + _CHUNK])
        if not n:
            break
        done += n
    return done


def _read_stream(fh: BinaryIO, name: str, max_bytes: int, hint: str, *, raw_size: int | None = None,
                 gz_size: int | None = None) -> np.ndarray:
    """Decode an IDX stream; `raw_size`/`gz_size` (the file's size) let impossible headers fail before allocating."""
    head = fh.read(4)
    dtype, ndim = _header(head, name, hint)
    dims = fh.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise UserError(f"{name}: truncated IDX header — the file is incomplete; {hint}")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    expected = _data_size(shape, dtype, name, max_bytes, hint)
    if raw_size is not None and raw_size - 4 - 4 * ndim != expected:
        _size_mismatch(name, raw_size - 4 - 4 * ndim, shape, expected, hint)
    if gz_size is not None and expected > _DEFLATE_MAX_RATIO * gz_size + _CHUNK:
        raise UserError(
            f"{name}: IDX header declares {expected:,} bytes of data, more than {gz_size:,} bytes of gzip can "
            f"hold — the file is truncated or corrupt; {hint}"
        )
    data = np.empty(expected, dtype=np.uint8)  # pages are committed only as they are filled
    got = _read_exact(fh, memoryview(data))
    if got < expected:
        _size_mismatch(name, got, shape, expected, hint)
    if fh.read(1):  # one byte past the declared end: stop here, however much more the stream holds
        _size_mismatch(name, None, shape, expected, hint)
    arr = data.view(dtype).reshape(shape)
    # Native byte order (torch.from_numpy needs it); single bytes are already native, so no copy.
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def parse_idx(data: bytes, name: str = "<bytes>", *, max_bytes: int = MAX_IDX_BYTES,
              hint: str = DEFAULT_HINT) -> np.ndarray:
    """Decode raw (uncompressed) IDX bytes into a writable numpy array in native byte order."""
    return _read_stream(io.BytesIO(data), name, max_bytes, hint, raw_size=len(data))


def read_idx(path: Path, *, max_bytes: int = MAX_IDX_BYTES, hint: str = DEFAULT_HINT) -> np.ndarray:
    """Read an IDX file (gz or raw) into a numpy array, reading at most what its header declares.

    Raises UserError naming the file; `hint` says what to do (e.g. how to fetch the file again).
    """
    path = Path(path)
    name = str(path)
    try:
        with open(path, "rb") as raw:
            size = raw.seek(0, io.SEEK_END)
            raw.seek(0)
            if raw.read(2) != GZIP_MAGIC:
                raw.seek(0)
                return _read_stream(raw, name, max_bytes, hint, raw_size=size)
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                return _read_stream(fh, name, max_bytes, hint, gz_size=size)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        # EOFError: the gzip stream ends early; BadGzipFile/zlib.error: corrupt bytes.
        raise UserError(f"{name}: corrupt or truncated gzip data ({err}) — {hint}") from None
    except OSError as err:
        raise UserError(f"cannot read {name}: {err.strerror or err} — {hint}") from None


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a numpy array as IDX bytes."""
    arr = np.asarray(array)
    code = _KIND_TO_CODE.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None or arr.ndim > 255:
        raise ValueError(f"IDX cannot hold dtype {arr.dtype} with {arr.ndim} dims")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(arr, dtype=_CODE_TO_DTYPE[code]).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file, atomically (temp file in the same folder, then rename).

    Gzip-compressed when `compress` is True, or when None and the name ends in `.gz`.
    """
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        # mtime=0: identical content gives identical files.
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
    return path
