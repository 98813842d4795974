"""Content checks: shapes and counts for any data set, pinned sha256 for the built-in ones."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from convladder.data import catalog
from convladder.errors import UserError


def array_sha256(arr: np.ndarray) -> str:
    """sha256 of the array's raw C-order bytes (labels are hashed as uint8)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def placement_hint(name: str) -> str:
    """How to supply the files by hand (used at the end of error messages)."""
    from convladder.paths import data_dir

    files = ", ".join(f"{f}.gz" for f in catalog.FILES.values())
    return (
        f"or place the four IDX files ({files}) in {data_dir() / name}/, "
        f"or run `convladder data fetch {name} --from FOLDER_OR_NPZ`"
    )


CHANNELS = (1, 3)  # grey or colour (RGB)
IMAGE_FORMS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"


def channels_first(arr: np.ndarray, name: str) -> np.ndarray:
    """Images in any accepted layout -> (N, H, W) for one channel, (N, 3, H, W) for colour (a view where it can).

    (N, H, W, C) is told from (N, C, H, W) by which axis holds 1 or 3; flat (N, 784) rows are 28x28 MNIST.
    """
    if arr.ndim == 2 and arr.shape[1] == 784:
        arr = arr.reshape(-1, 28, 28)  # flat 784-pixel rows, as some .npz files store them
    if arr.ndim == 4:
        last, second = arr.shape[3] in CHANNELS, arr.shape[1] in CHANNELS
        if last == second:  # neither (e.g. 4 channels) or both (a 3-pixel-wide image?): cannot tell
            why = "no axis holds 1 or 3 channels" if not last else "both axis 1 and axis 3 could be the channels"
            raise UserError(f"{name} has shape {arr.shape}: {why} — give {IMAGE_FORMS}")
        arr = arr.transpose(0, 3, 1, 2) if last else arr
        if arr.shape[1] == 1:
            arr = arr[:, 0]
    if arr.ndim not in (3, 4) or len(arr) == 0 or 0 in arr.shape:
        raise UserError(f"{name} has shape {arr.shape}; expected non-empty {IMAGE_FORMS}")
    return arr


def check_arrays(arrays: Mapping[str, np.ndarray], where: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Validate shapes, dtypes and counts; return uint8 images ((N, H, W) grey, (N, 3, H, W) colour; see
    `channels_first`) and uint8 labels.

    `where` maps each key to the file (or description) named in error messages.
    """
    out: dict[str, np.ndarray] = {}
    for key in catalog.KEYS:
        if key not in arrays:
            raise UserError(f"{where.get(key, key)}: missing {key}")
        arr = np.asarray(arrays[key])
        if arr.dtype.kind not in "ui":
            raise UserError(
                f"{where[key]}: {key} has dtype {arr.dtype}; expected integers "
                "(uint8 pixels 0..255, integer labels)"
            )
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{where[key]}: {key} values outside 0..255")
        if key.startswith("x"):
            arr = channels_first(arr, f"{where[key]}: {key}")
        elif arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]  # (N, 1) labels, as Keras' cifar10.load_data() gives them
        if key.startswith("y") and (arr.ndim != 1 or len(arr) == 0):
            raise UserError(f"{where[key]}: {key} has shape {arr.shape}; expected non-empty (N,)")
        out[key] = np.ascontiguousarray(arr.astype(np.uint8, copy=False))
    for split in ("train", "test"):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if len(x) != len(y):
            raise UserError(
                f"{where[f'x_{split}']} has {len(x)} images but {where[f'y_{split}']} has {len(y)} "
                "labels — the files do not belong together; replace them with a matching pair"
            )
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise UserError(
            f"{where['x_test']}: test images are {out['x_test'].shape[1:]} but training images are "
            f"{out['x_train'].shape[1:]}"
        )
    return out


def verify_hashes(name: str, arrays: Mapping[str, np.ndarray], where: Mapping[str, str]) -> dict[str, str]:
    """Check the pinned sha256 of each array (when `name` is pinned); return the computed hashes."""
    pinned = catalog.PINNED_SHA256.get(name)
    got = {key: array_sha256(arrays[key]) for key in catalog.KEYS}
    if pinned is None:
        return got
    for key in catalog.KEYS:
        if got[key] != pinned[key]:
            raise UserError(
                f"{where[key]}: content does not match {name} ({key} sha256 {got[key][:12]}…, "
                f"expected {pinned[key][:12]}…) — the file is corrupt or from another data set; "
                f"delete it and run `convladder data fetch {name} --force`, {placement_hint(name)}"
            )
    return got
