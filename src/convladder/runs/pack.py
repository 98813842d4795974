"""Packing runs to move them between machines: a run as its index row plus every file's bytes, and
importing such a bundle into a store (a new run id there; the files as they were).

Used by the Ray executors: a worker trains into a private store, packs its runs, the driver imports them
(SQLite over a network file system is unsafe, and workers may not see the driver's disk). Bundles are an
internal transport, not a file format people exchange (people copy run folders and `runs reindex`), so
there is no `runs import` command. A bundle is still data, not trust: a worker may have died mid-write or
its disk may be damaged, so `import_run` checks every name, size, type, status and timestamp before any
folder is made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes
from convladder.runs.handle import OWNER_FILE, atomic_write_json
from convladder.runs.reader import check_config
from convladder.runs.store import RUN_ID, RunStore, notice
from convladder.safeparse import clip

RunBundle = dict[str, Any]  # {"record": RunRecord as dict, "files": {name: bytes}, "skipped": [name, ...]}

STATUSES = ("completed", "interrupted", "stopped", "failed")  # a finished run's; 'running' arrives as interrupted
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")  # no NUL, '/', leading dot, or 300-char names
MAX_FILE_BYTES = 1 << 30  # weights and resume state of a compact network are KBs to MBs
MAX_JSON_BYTES = 16 << 20
_JSON_DEPTH = 64


def _regular_bytes(path: Path) -> bytes | None:
    """The bytes of `path` if it is a regular file (not followed when a symlink; a FIFO never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # a symlink (ELOOP), a socket, or unreadable
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def pack_runs(root: str | Path) -> list[RunBundle]:
    """Every run in the store at `root`: its index row and the bytes of each regular file in its folder.

    Symlinks, FIFOs, devices and sub-folders are not followed or copied; they are listed under
    "skipped" and said in one note on stderr."""
    bundles = []
    for record in RunStore(root).list_runs():
        folder = Path(root) / record.id
        files, skipped = {}, []
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or p.name == OWNER_FILE:  # unfinished atomic writes; this host's pid
                continue
            data = _regular_bytes(p)
            if data is None:
                skipped.append(p.name)
            else:
                files[p.name] = data
        if skipped:
            notice(f"run {record.id}: not packed (not regular files): {', '.join(clip(s, 60) for s in skipped[:5])}"
                   + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""))
        bundles.append({"record": asdict(record), "files": files, "skipped": skipped})
    return bundles


def _json_object(data: bytes, name: str, bad: Any) -> dict[str, Any]:
    if len(data) > MAX_JSON_BYTES:
        raise bad(f"{name} holds {len(data):,} bytes, more than a run's {name} ever does")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"{name} is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise bad(f"{name} holds a JSON {type(value).__name__}, not an object")
    return value


def _safetensors_header(data: bytes, name: str, bad: Any) -> None:
    """The 8-byte length and JSON header a safetensors file starts with, within the file."""
    if len(data) < 8:
        raise bad(f"{name} is not a safetensors file ({len(data)} bytes)")
    size = struct.unpack("<Q", data[:8])[0]
    if size > len(data) - 8:
        raise bad(f"{name} is cut short (its header says {size:,} bytes, {len(data) - 8:,} follow)")
    _json_object(data[8:8 + size], name + " header", bad)


def _created(value: Any, bad: Any) -> str:
    """`created` as the index holds it (local YYYY-mm-ddTHH:MM:SS), between 2000 and tomorrow."""
    try:
        parsed = time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except (TypeError, ValueError, OverflowError):
        raise bad(f"created {clip(value, 40)} is not a time like 2026-01-31T12:00:00") from None
    if not time.mktime((2000, 1, 1, 0, 0, 0, 0, 1, -1)) <= parsed <= time.time() + 86400:
        raise bad(f"created {value} is before 2000 or in the future (`latest` would pick it forever)")
    return value


def _number(record: dict[str, Any], key: str, kind: type, low: float, high: float, bad: Any) -> Any:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)) \
            or not low <= value <= high:
        raise bad(f"{key} {clip(value, 40)} is not {'a whole number' if kind is int else 'a number'} in [{low}, {high}]")
    return kind(value)


def check_bundle(bundle: Any) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """(config, files to write, index row) of a valid bundle; one UserError naming the first problem."""
    record = bundle.get("record") if isinstance(bundle, dict) else None
    files = bundle.get("files") if isinstance(bundle, dict) else None
    old = record.get("id") if isinstance(record, dict) else None
    label = f"packed run {clip(old, 40)}" if isinstance(old, str) else "packed run"

    def bad(problem: str) -> UserError:
        return UserError(f"{label}: {problem} — the bundle is damaged; nothing was imported (train the run again)")

    if not isinstance(record, dict) or not isinstance(files, dict):
        raise bad("not a bundle (a mapping with 'record' and 'files')")
    if not isinstance(old, str) or not RUN_ID.match(old):
        raise bad("its id is not a run id (YYYYmmdd-HHMMSS-<6 hex>)")
    out: dict[str, bytes] = {}
    for name, data in files.items():
        if not isinstance(name, str) or not FILE_NAME.match(name):
            raise bad(f"file name {clip(name, 60)} is not a plain file name (letters, digits, '.', '_', '-'; at "
                      "most 128 characters; no '/', NUL or leading dot)")
        if not isinstance(data, bytes):
            raise bad(f"{name} holds {type(data).__name__}, not bytes")
        if len(data) > MAX_FILE_BYTES:
            raise bad(f"{name} holds {len(data):,} bytes, more than {MAX_FILE_BYTES:,}")
        if name.endswith(".json"):
            _json_object(data, name, bad)
        elif name.endswith(".safetensors"):
            _safetensors_header(data, name, bad)
        elif name.endswith((".jsonl", ".py")):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise bad(f"{name} is not UTF-8 text") from None
        if name != OWNER_FILE:  # the worker's pid and host mean nothing here
            out[name] = data
    config = _json_object(out["config.json"], "config.json", bad) if "config.json" in out else {}
    try:
        check_config(config, Path("config.json"))
    except UserError as exc:
        raise bad(str(exc).split(" — ")[0]) from None
    status = record.get("status")
    if "result.json" in out:
        result = _json_object(out["result.json"], "result.json", bad)
        status = result.get("status")  # the folder is the truth; the row follows it
        if status not in STATUSES:
            raise bad(f"result.json's status {clip(status, 40)} is not one of {', '.join(STATUSES)}")
        if not isinstance(result.get("final", {}), dict) or not isinstance(result.get("best", {}), dict):
            raise bad("result.json's final/best are not mappings")
    elif status == "running":
        status = "interrupted"  # its worker is gone: the last finished epoch (if any) is what there is
    if status not in STATUSES:
        raise bad(f"status {clip(status, 40)} is not one of {', '.join(STATUSES)}")
    row = {"status": status, "created": _created(record.get("created"), bad),
           "params": _number(record, "params", int, 0, 10**12, bad),
           "final_test_acc": _number(record, "final_test_acc", float, 0, 100, bad),
           "best_val_acc": _number(record, "best_val_acc", float, 0, 100, bad),
           "best_epoch": _number(record, "best_epoch", int, 0, 10**7, bad)}
    return config, out, row


def import_run(runs_root: str | Path, bundle: RunBundle) -> str:
    """Write a packed run into the store at `runs_root` (new run id, same files and row); return the new id.

    The whole bundle is checked first (`check_bundle`); then its files are written to a temporary folder
    in the store, moved into the new run's folder by rename (result.json last: a reader that sees it sees
    a finished run), and the row is added with the packed status in the same step (`RunStore.create_run`:
    a failure leaves no folder). result.json names the run: its run_id is replaced by parsing and dumping.
    """
    config, files, row = check_bundle(bundle)
    store = RunStore(runs_root)
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = store.root / f".import-{secrets.token_hex(4)}"  # a dot name: never taken for a run folder
    tmp.mkdir()
    try:
        for name, data in files.items():
            if name not in ("config.json", "result.json"):  # config: create_run writes it; result: needs the id
                atomic_write_bytes(tmp / name, data)

        def move_in(folder: Path) -> None:
            for name in sorted(files):
                if name not in ("config.json", "result.json"):
                    os.replace(tmp / name, folder / name)
            if "result.json" in files:
                result = json.loads(files["result.json"])
                result["run_id"] = folder.name
                atomic_write_json(folder / "result.json", result)

        handle = store.create_run(config, None, prepare=move_in, **row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return handle.id
