"""Packing runs to move them between machines: a run as its index row plus every file's bytes, and
importing such a bundle into a store (a new run id there; the files as they were).

Used by the Ray executors: a worker trains into a private store, packs its runs, the driver imports them
(SQLite over a network file system is unsafe, and workers may not see the driver's disk).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes
from convladder.runs.store import RunStore

RunBundle = dict[str, Any]  # {"record": RunRecord as dict, "files": {name: bytes}}


def pack_runs(root: str | Path) -> list[RunBundle]:
    """Every run in the store at `root`: its index row and the bytes of each file in its folder."""
    bundles = []
    for record in RunStore(root).list_runs():
        folder = Path(root) / record.id
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                 if p.is_file() and not p.name.startswith(".")}  # dot files are unfinished atomic writes
        bundles.append({"record": asdict(record), "files": files})
    return bundles


def import_run(runs_root: str | Path, bundle: RunBundle) -> str:
    """Write a packed run into the store at `runs_root` (new run id, same files and row); return the new id.

    Built on RunStore's public API: `create_run` makes the folder and row, then each file is written
    atomically and the row gets the packed status and numbers. result.json names the run, so the old
    id in it is replaced by the new one.
    """
    record, files = bundle["record"], bundle["files"]
    try:
        config = json.loads(files["config.json"]) if "config.json" in files else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"packed run {record.get('id')}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"packed run {record.get('id')}: config.json does not hold a JSON object")
    store = RunStore(runs_root)
    handle = store.create_run(config, None, params=record.get("params"))
    old, new = record["id"], handle.id
    # config/metrics/weights first, result.json last: a reader that sees result.json sees a finished run
    for name in sorted(files, key=lambda n: n == "result.json"):
        if "/" in name or name in ("", ".", ".."):
            continue  # only plain file names of the run's own folder
        data = files[name]
        if name == "result.json":
            data = data.decode().replace(old, new).encode()
        atomic_write_bytes(handle.path / name, data)
    handle.update(status=record["status"], created=record["created"], final_test_acc=record.get("final_test_acc"),
                  best_val_acc=record.get("best_val_acc"), best_epoch=record.get("best_epoch"))
    return new
