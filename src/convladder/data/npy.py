"""Reading user `.npy` arrays (and `.npz` members) with the header checked before any allocation.

`np.load` allocates whatever shape the header declares, so a 1 KB file claiming
(999999999, 28, 28) ends in a MemoryError. Here the header is read on its own
(numpy.lib.format), the declared size is compared with `MAX_NPY_BYTES` and with the
bytes the file really holds, and only then is the array read, never unpickling.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

from convladder.errors import UserError

# Largest array a .npy file (or .npz member) may declare (1 GiB): 1.3 million 28x28 uint8 images,
# or 340,000 as float32. Raise it per call with `max_bytes=`.
MAX_NPY_BYTES = 1 << 30


def read_header(fh: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of the .npy stream at `fh`; UserError when it is not a readable .npy header."""
    try:
        version = npformat.read_magic(fh)
        # 3.0 differs from 2.0 only in allowing utf-8 field names (structured dtypes, refused below anyway).
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
        offset = fh.tell()
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as err:
        raise UserError(f"{name} is not a readable .npy file ({err}) — save arrays with numpy.save") from None
    return tuple(int(d) for d in shape), np.dtype(dtype), offset


def check_header(shape: tuple[int, ...], dtype: np.dtype, name: str, *, max_bytes: int = MAX_NPY_BYTES,
                 available: int | None = None) -> int:
    """Refuse object/structured dtypes and declared sizes above `max_bytes` or above `available` bytes.

    Returns the declared data size in bytes (exact: Python ints do not overflow).
    """
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufc":
        raise UserError(f"{name} holds {dtype} values; give a plain numeric array (uint8 0..255 or float pixels) "
                        "— object arrays are never unpickled")  # fmt: skip
    size = dtype.itemsize
    for dim in shape:
        size *= dim
    if size > max_bytes:
        raise UserError(f"{name}: header declares shape {shape} of {dtype} = {size:,} bytes, over the "
                        f"{max_bytes:,}-byte limit — split it into smaller files")  # fmt: skip
    if available is not None and size > available:
        raise UserError(f"{name}: header declares shape {shape} of {dtype} = {size:,} bytes but the file holds "
                        f"{max(available, 0):,} — the file is truncated or corrupt; save it again")  # fmt: skip
    return size


def load_npy(path: Path, *, max_bytes: int = MAX_NPY_BYTES) -> np.ndarray:
    """A .npy file's array, its header checked first (see `check_header`); never unpickles."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            shape, dtype, offset = read_header(fh, str(path))
            size = fh.seek(0, 2)
            check_header(shape, dtype, str(path), max_bytes=max_bytes, available=size - offset)
        return np.load(path, allow_pickle=False)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:  # still possible for odd headers numpy reads differently
        raise UserError(f"{path} is not a plain numeric .npy array ({err})") from None


def check_npz_member(npz: np.lib.npyio.NpzFile, key: str, name: str, *, max_bytes: int = MAX_NPY_BYTES) -> None:
    """Check the header of member `key` of an open .npz (its zip entry's declared size bounds what is read)."""
    names = npz.zip.namelist()
    info = npz.zip.getinfo(f"{key}.npy" if f"{key}.npy" in names else key)
    with npz.zip.open(info) as fh:
        shape, dtype, offset = read_header(fh, name)
    check_header(shape, dtype, name, max_bytes=max_bytes, available=info.file_size - offset)

