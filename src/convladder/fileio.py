"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

A full disk (ENOSPC, or EDQUOT: a quota) is handled here, for every writer: the temp file is removed and
one `DiskFull` (a UserError) names the file, the bytes it needed and what is free there.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from convladder.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """A write failed for space: which file, how much it needed, how much is free (exit 2, nothing half-written)."""


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the file system of `path` (its nearest existing folder); None if unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def size_text(n: int | None) -> str:
    """1,234 B / 12.3 KB / 4.5 MB / 1.2 GB (decimal units, as df -H)."""
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,} B"


def disk_full(path: str | Path, need: int | None = None) -> DiskFull:
    """The one message of a write that found no space: file, bytes needed, bytes free there, what to do."""
    needed = f" (needs {size_text(need)})" if need else ""
    return DiskFull(f"no space left to write {path}{needed} — {size_text(free_bytes(path))} free there — free some "
                    "space (or point the output elsewhere) and run the command again; nothing was half-written")


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` is an OSError of a full disk or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def check_space(path: str | Path, need: int, what: str) -> None:
    """Before long work whose output size is known: DiskFull now if `need` bytes do not fit beside `path`."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise DiskFull(f"{what} needs about {size_text(need)} at {path} but only {size_text(free)} is free there — "
                       "free some space or write it elsewhere")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, give it the usual permissions, then rename.

    A full disk raises DiskFull (the temp file removed, the old file as it was).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a shared cache or report must stay readable
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_no_space(exc):
            raise disk_full(path, len(data)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
