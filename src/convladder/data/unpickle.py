"""A restricted unpickler for the `mnist.pkl.gz` (Python-2, protocol-2) MNIST pickle.

`pickle` can run arbitrary code through the globals a stream names; this one only
admits what rebuilding numpy arrays needs and refuses everything else *before*
anything is called.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np

from convladder.errors import UserError

# The function ndarray.__reduce__ names; taken from numpy itself so that the
# deprecated `numpy.core` alias is never imported (numpy 2 warns on it).
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]



def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for `_codecs.encode`, which Python 3 protocol-2 pickles use to store bytes.

    Only the latin1 text -> bytes case is admitted, so a re-saved (Python 3) copy of the
    pickle loads too, and nothing else can be reached through it.
    """
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise UserError(f"pickle: refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1", errors="strict")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and nothing else."""

    def __init__(self, file: IO[bytes], *, source: str = "pickle") -> None:
        # latin1: Python-2 pickles store array bytes as `str`; latin1 maps them 1:1 to bytes.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"{self._source}: refusing to unpickle {module}.{name} — only numpy arrays are "
                "allowed; the file is not the expected MNIST pickle (possibly malicious)"
            ) from None


def restricted_load(file: IO[bytes] | bytes, *, source: str = "pickle") -> Any:
    """Unpickle numpy arrays (nested in tuples/lists) from a file object or bytes."""
    fh = io.BytesIO(file) if isinstance(file, (bytes, bytearray)) else file
    try:
        return RestrictedUnpickler(fh, source=source).load()
    except UserError:
        raise
    except Exception as err:  # pickle raises many types on corrupt data
        raise UserError(f"{source}: cannot unpickle ({type(err).__name__}: {err})") from err


def float_to_uint8(x: np.ndarray, *, source: str = "pickle") -> np.ndarray:
    """Undo the pickle's `pixel / 256` scaling exactly, refusing anything that is not exact."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    # Multiplying by a power of two is exact in any float type, so stay in float32 (memory).
    scaled = x * x.dtype.type(256)
    rounded = np.rint(scaled)
    if rounded.size and (rounded.min() < 0 or rounded.max() > 255):
        raise UserError(f"{source}: pixel values outside [0, 256) — not the expected MNIST pickle")
    if not np.array_equal(rounded, scaled):
        raise UserError(f"{source}: pixels are not exact multiples of 1/256 — not the expected MNIST pickle")
    return rounded.astype(np.uint8)


def pickle_to_arrays(obj: Any, *, source: str = "pickle") -> dict[str, np.ndarray]:
    """Turn ((x_train, y), (x_valid, y), (x_test, y)) with flat float images into uint8 IDX-style arrays.

    Train and validation are concatenated in order: together they are the original
    60k training set.
    """
    try:
        (xa, ya), (xb, yb), (xt, yt) = obj
        parts = [np.asarray(a) for a in (xa, ya, xb, yb, xt, yt)]
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: unexpected structure ({err}) — expected 3 (images, labels) pairs") from err
    xa, ya, xb, yb, xt, yt = parts
    for x, y in ((xa, ya), (xb, yb), (xt, yt)):
        if x.ndim != 2 or x.shape[1] != 784 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{source}: unexpected shapes {x.shape} / {y.shape} — expected (N, 784) / (N,)")

    def labels(y: np.ndarray) -> np.ndarray:
        if y.size and (y.min() < 0 or y.max() > 255):
            raise UserError(f"{source}: labels outside 0..255")
        return y.astype(np.uint8)

    return {
        "x_train": float_to_uint8(np.concatenate([xa, xb]), source=source).reshape(-1, 28, 28),
        "y_train": labels(np.concatenate([ya, yb])),
        "x_test": float_to_uint8(xt, source=source).reshape(-1, 28, 28),
        "y_test": labels(yt),
    }
