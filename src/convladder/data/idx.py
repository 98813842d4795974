"""Reading and writing IDX files (the format MNIST ships in), gzip-compressed or raw.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

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


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        # EOFError: truncated stream; BadGzipFile/zlib.error: corrupt bytes.
        raise UserError(
            f"{path}: corrupt or truncated gzip data ({err}) — delete it and fetch again, "
            "or replace it with a complete copy"
        ) from err


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a numpy array in native byte order; `name` is used in errors."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _CODE_TO_DTYPE:
        raise UserError(
            f"{name}: not an IDX file (wrong magic {data[:4].hex() or 'empty'}) — "
            "expected the MNIST-style IDX format (e.g. train-images-idx3-ubyte[.gz])"
        )
    dtype = _CODE_TO_DTYPE[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{name}: truncated IDX header — the file is incomplete; fetch it again")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise UserError(
            f"{name}: IDX data {what} ({got} bytes of data, header {shape} needs {expected}) — "
            "the file is incomplete or corrupt; fetch it again"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and writable memory, so torch.from_numpy accepts it.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gz or raw) into a numpy array; raises UserError naming the file."""
    return parse_idx(read_bytes(Path(path)), str(path))


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
