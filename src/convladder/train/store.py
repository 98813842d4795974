"""The run store: one folder per run plus an SQLite index (layout in docs/ARCHITECTURE.md).

Files are written atomically (temp file in the same folder, fsync, os.replace) so a crash never leaves
half a file. Weights are safetensors; resume state is torch.save of plain tensors/dicts read back with
weights_only=True, so loading anything from a run folder never runs code.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes
from convladder.paths import runs_dir

OWNER_FILE = "running.json"  # host and pid of the process training the run; removed when it stops running
COLUMNS = ("id", "created", "status", "name", "model", "dataset", "seed", "params", "epochs",
           "final_test_acc", "best_val_acc", "best_epoch", "path", "tags")
SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, created TEXT NOT NULL, status TEXT NOT NULL, name TEXT, model TEXT, dataset TEXT,
  seed INTEGER, params INTEGER, epochs INTEGER, final_test_acc REAL, best_val_acc REAL, best_epoch INTEGER,
  path TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '[]')"""


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def new_run_id() -> str:
    """YYYYmmdd-HHMMSS-<6 hex>: sortable by time, unique thanks to the random suffix (and exclusive mkdir)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class RunRecord:
    """One row of the index."""

    id: str
    created: str
    status: str
    name: str | None
    model: str | None
    dataset: str | None
    seed: int | None
    params: int | None
    epochs: int | None
    final_test_acc: float | None
    best_val_acc: float | None
    best_epoch: int | None
    path: str
    tags: list[str]


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie or another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


class RunHandle:
    """Writes one run's folder and keeps its index row up to date."""

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.id = store, run_id
        self.path = store.root / run_id

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with all epochs so far (small; keeps it consistent with resume.pt)."""
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())

    def save_weights(self, which: str, state_dict: dict[str, torch.Tensor]) -> None:
        """which: 'model' (final) or 'best'."""
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        atomic_write_bytes(self.path / f"{which}.safetensors", st_save(tensors))

    def save_resume(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path / "resume.pt", buf.getvalue())

    def load_resume(self) -> dict[str, Any]:
        path = self.path / "resume.pt"
        if not path.is_file():
            raise UserError(f"run {self.id} has no resume.pt (it never finished an epoch); start a new run")
        from convladder.spec.own import notice
        from convladder.train.models import source_status

        changed = source_status(self.path)  # resuming runs the file as it is now: say if it is not what ran
        if changed:
            notice(changed)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
            raise UserError(f"{path} cannot be read ({type(exc).__name__}: {exc}); start a new run") from None

    def claim(self) -> None:
        """Record this process as the one training the run (OWNER_FILE), so a vanished owner can be noticed."""
        self.write_json(OWNER_FILE, {"host": socket.gethostname(), "pid": os.getpid()})

    def update(self, **fields: Any) -> None:
        """Change the index row; status 'running' records this process as the run's owner (see OWNER_FILE)."""
        if fields.get("status") == "running":
            self.claim()
        self.store._update(self.id, **fields)
        if "status" in fields and fields["status"] != "running":
            (self.path / OWNER_FILE).unlink(missing_ok=True)


class RunStore:
    """Runs under `root` (default: $CONVLADDER_RUNS or ./runs)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else runs_dir()
        self.db_path = self.root / "index.sqlite"

    # -- database -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
        return conn

    def _update(self, run_id: str, **fields: Any) -> None:
        if "tags" in fields:
            fields["tags"] = json.dumps(fields["tags"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with closing(self._connect()) as conn:
            conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))

    # -- writing --------------------------------------------------------------------------------------
    def create_run(self, config: dict[str, Any], env: dict[str, Any] | None = None, *, own: Any = None,
                   **row: Any) -> RunHandle:
        """Make a new run folder (exclusive mkdir: two runs never share one), write config/env, add its row.

        `own`: the `train.models.OwnModel` record of a person's own network (its source and class), if any.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = new_run_id()
            try:
                (self.root / run_id).mkdir()
                break
            except FileExistsError:
                continue
        handle = RunHandle(self, run_id)
        handle.write_json("config.json", config)
        if own is not None:
            from convladder.train.models import write_record

            write_record(handle.path, own)
        if env is not None:
            handle.write_json("env.json", env)
        values = {"id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
                  "name": config.get("name"), "model": config.get("model"), "dataset": config.get("dataset"),
                  "seed": config.get("seed"), "epochs": config.get("epochs"), "path": str(handle.path.resolve()),
                  "tags": json.dumps(config.get("tags") or []), **row}
        with closing(self._connect()) as conn:
            conn.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         tuple(values.values()))
        if values["status"] == "running":
            handle.claim()
        return handle

    def handle(self, run_id_or_prefix: str) -> RunHandle:
        return RunHandle(self, self.get(run_id_or_prefix).id)

    # -- reading --------------------------------------------------------------------------------------
    def list_runs(self, limit: int | None = None, tag: str | None = None, **filters: Any) -> list[RunRecord]:
        """Runs newest first; filters are column=value (status, model, dataset, seed, name), tag=one tag."""
        bad = set(filters) - set(COLUMNS)
        if bad:
            raise UserError(f"cannot filter runs by {', '.join(sorted(bad))}; use one of {', '.join(COLUMNS)}")
        if not self.db_path.exists():
            return []
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        with closing(self._connect()) as conn:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE {where} ORDER BY created DESC, id DESC",
                                tuple(filters.values())).fetchall()
        records = [self._settle_orphan(RunRecord(*r[:-1], tags=json.loads(r[-1] or "[]"))) for r in rows]
        if "status" in filters:  # an orphan found while listing 'running' is 'interrupted' now
            records = [r for r in records if r.status == filters["status"]]
        if tag:
            records = [r for r in records if tag in r.tags]
        return records[:limit] if limit else records

    def _settle_orphan(self, record: RunRecord) -> RunRecord:
        """A 'running' run whose process on this host is gone (SIGKILL, power loss) becomes 'interrupted'.

        The trainer had no chance to say so itself; its last finished epoch is saved, so it can be resumed.
        """
        if record.status != "running":
            return record
        try:
            owner = json.loads((self.root / record.id / OWNER_FILE).read_text())
            if owner.get("host") != socket.gethostname() or _alive(int(owner["pid"])):
                return record
        except (OSError, ValueError, KeyError, TypeError):
            return record  # no owner file (older run) or unreadable: leave the row as it is
        RunHandle(self, record.id).update(status="interrupted")  # also removes the owner file
        record.status = "interrupted"
        return record

    def get(self, run_id_or_prefix: str) -> RunRecord:
        """A run by id or unique id prefix ('latest' = the newest run)."""
        runs = self.list_runs()
        if run_id_or_prefix in ("latest", "last") and runs:
            return runs[0]
        exact = [r for r in runs if r.id == run_id_or_prefix]
        matches = exact or [r for r in runs if r.id.startswith(run_id_or_prefix)]
        if not matches:
            raise UserError(f"no run {run_id_or_prefix!r} in {self.root}; see `convladder runs list --runs {self.root}`")
        if len(matches) > 1:
            raise UserError(f"run prefix {run_id_or_prefix!r} matches {len(matches)} runs; give more characters")
        return matches[0]

    def run_path(self, run_id: str) -> Path:
        return self.root / self.get(run_id).id

    def _read_json(self, run_id: str, name: str) -> Any:
        path = self.run_path(run_id) / name
        if not path.is_file():
            raise UserError(f"{path} does not exist (run not finished, or the folder was changed)")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None

    def read_config(self, run_id: str) -> dict[str, Any]:
        return self._read_json(run_id, "config.json")

    def read_env(self, run_id: str) -> dict[str, Any]:
        return self._read_json(run_id, "env.json")

    def read_result(self, run_id: str) -> dict[str, Any]:
        return self._read_json(run_id, "result.json")

    def read_metrics(self, run_id: str) -> list[dict[str, Any]]:
        path = self.run_path(run_id) / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def load_state_dict(self, run_id: str, which: str = "final") -> dict[str, torch.Tensor]:
        from convladder.train.models import read_weights

        return read_weights(self.run_path(run_id), which)

    def load_model(self, run_id: str, which: str = "final", *, model: Any = None,
                   code: str | None = None) -> torch.nn.Module:
        """Rebuild the run's network (spec, or own class from its record) and load its weights (eval mode).

        `model`/`code`: for own-model runs, see `convladder.train.models.create_model`.
        """
        from convladder.train.models import model_from_folder

        return model_from_folder(self.run_path(run_id), which, model=model, code=code)
