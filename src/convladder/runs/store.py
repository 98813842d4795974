"""The run store: one folder per run plus an SQLite index (layout in docs/ARCHITECTURE.md).

Files are written atomically (temp file in the same folder, fsync, os.replace) so a crash never leaves
half a file. Weights are safetensors; resume state is torch.save of plain tensors/dicts read back with
weights_only=True, so loading anything from a run folder never runs code.

The folders are the truth, the index a cache of them: an index that is missing, empty or damaged is
rebuilt from the folders (`convladder runs reindex` does it on request). A store one may not write
(read-only folder or files) is read through a read-only connection, or by scanning the folders.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from convladder.errors import UserError
from convladder.fileio import DiskFull, disk_full, free_bytes, is_no_space
from convladder.paths import runs_dir
from convladder.runs import reader
from convladder.runs.handle import OWNER_FILE, RunHandle

if TYPE_CHECKING:  # annotations only: listing and showing runs never loads torch
    import torch

INDEX = "index.sqlite"
RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
STALE_S = 60.0  # a temp file of an atomic write older than this was left by a killed writer
COLUMNS = ("id", "created", "status", "name", "model", "dataset", "seed", "params", "epochs",
           "final_test_acc", "best_val_acc", "best_epoch", "path", "tags")
SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, created TEXT NOT NULL, status TEXT NOT NULL, name TEXT, model TEXT, dataset TEXT,
  seed INTEGER, params INTEGER, epochs INTEGER, final_test_acc REAL, best_val_acc REAL, best_epoch INTEGER,
  path TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '[]')"""
LATEST = ("latest", "last")
ENDED = ("completed", "interrupted", "stopped", "failed")  # statuses a run's result.json ends with
LOW_SPACE = 1 << 20  # an SQLite I/O error with less than this free is taken for a full disk
_SAID: set[str] = set()


def notice(text: str) -> None:
    """One line on stderr, once per process."""
    if text not in _SAID:
        _SAID.add(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


def new_run_id() -> str:
    """YYYYmmdd-HHMMSS-<6 hex>: sortable by time, unique thanks to the random suffix (and exclusive mkdir)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _damaged(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error means the index file itself is damaged (not busy, locked or read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
    return type(exc) is sqlite3.DatabaseError


def _no_space(exc: BaseException, where: Path) -> bool:
    """Whether a write failed for space: ENOSPC/EDQUOT, SQLITE_FULL, or an SQLite I/O error (its WAL or -shm
    file could not grow) on a file system with less than LOW_SPACE free."""
    if is_no_space(exc):
        return True
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == 13 or "database or disk is full" in str(exc):  # SQLITE_FULL
        return True
    free = free_bytes(where)
    return (code == 10 or "disk I/O error" in str(exc)) and free is not None and free < LOW_SPACE  # SQLITE_IOERR


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

    def describe(self) -> str:
        """id, name, model and created in one line (what `latest` resolved to)."""
        model = self.model if self.model and len(self.model) <= 40 else ("custom spec" if self.model else "-")
        return f"{self.id} (name {self.name or '-'}, model {model}, created {self.created})"


def _record(row: dict[str, Any] | tuple) -> RunRecord:
    values = list(row.values()) if isinstance(row, dict) else list(row)
    try:
        tags = json.loads(values[-1] or "[]")
    except ValueError:
        tags = []
    return RunRecord(*values[:-1], tags=[t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [])


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie or another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True



def _set_up(conn: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """WAL mode and the schema, retried while another process holds the file: SQLite answers a journal-mode change
    (and the first schema write of a new index) with SQLITE_BUSY at once, without its busy handler, when another
    connection is setting up the same file — two runs starting together on a fresh store saw 'database is locked'."""
    deadline = time.monotonic() + wait_s
    pause = 0.01
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            conn.execute(SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

class RunStore:
    """Runs under `root` (default: $CONVLADDER_RUNS or ./runs)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else runs_dir()
        self.db_path = self.root / INDEX
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"run store {self.root} is a file, not a folder — give --runs (or $CONVLADDER_RUNS) "
                            "a folder, new or holding runs")
        self._tidied = False

    # -- state of the folder ---------------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        """Whether this process may write the store (a missing store counts: it is created on first write)."""
        if not self.root.exists():
            return True
        if not os.access(self.root, os.W_OK | os.X_OK):
            return False
        return not self.db_path.exists() or os.access(self.db_path, os.W_OK)

    def run_folders(self) -> list[Path]:
        """Folders named like run ids, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if RUN_ID.match(p.name) and p.is_dir())

    def _tidy(self) -> None:
        """Remove temp files of killed atomic writes (older than STALE_S; a live writer's are newer)."""
        if self._tidied or not self.root.is_dir() or not self.writable:
            return
        self._tidied = True
        cutoff = time.time() - STALE_S
        for folder in [self.root, *self.run_folders()]:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                temp = (name.startswith(".") and name.endswith(".part")) or name.startswith(f"{INDEX}.rebuild-")
                try:
                    if temp and entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError:
                    pass  # gone meanwhile, or not ours to remove

    # -- database -------------------------------------------------------------------------------------
    def _mkdir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_no_space(exc):
                raise disk_full(self.root) from None
            raise UserError(f"cannot create the run store {self.root} ({exc.strerror or exc}); give --runs a "
                            "folder you may write") from None

    def _open(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            _set_up(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self) -> sqlite3.Connection:
        """A writing connection; a damaged index is rebuilt first, an empty one filled from the folders."""
        if not self.writable:
            raise UserError(f"run store {self.root} is read-only here; give --runs a folder you may write "
                            "(reading it works: runs list/show, predict, export)")
        self._mkdir()
        self._tidy()
        try:
            conn = self._open(self.db_path)
            empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM runs)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if _no_space(exc, self.root):
                raise disk_full(self.db_path) from None
            if not _damaged(exc):
                raise
            self.reindex(reason=f"{self.db_path} is damaged ({exc})")
            return self._open(self.db_path)
        if empty and self.run_folders():  # zero-byte or lost index: the folders still say what ran
            try:
                self._fill(conn, self.run_folders())
            except BaseException as exc:
                conn.close()
                if _no_space(exc, self.root):
                    raise disk_full(self.db_path) from None
                raise
            notice(f"{self.db_path} was empty: rebuilt the index from the {len(self.run_folders())} run folder(s)")
        return conn

    def _connect_read(self) -> sqlite3.Connection | None:
        """A connection for reading, or None (no readable index: the caller scans the folders)."""
        if not self.db_path.is_file():
            return None
        if self.writable:
            try:
                return self._connect()
            except DiskFull:  # reading needs no space: the index is read as on a read-only store
                notice(f"the disk of {self.root} is full ({free_bytes(self.root) or 0:,} bytes free): reading the "
                       "index without writing it")
        uri = "file:" + quote(str(self.db_path.resolve()))
        # mode=ro still needs the WAL's -shm file; immutable reads the file alone (nobody can write it anyway)
        for flags in ("?mode=ro", "?immutable=1"):
            try:
                conn = sqlite3.connect(uri + flags, uri=True, timeout=60)
                conn.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
                return conn
            except sqlite3.Error:
                try:
                    conn.close()
                except UnboundLocalError:
                    pass
        notice(f"the index {self.db_path} cannot be read and the store is read-only: listing the run folders instead")
        return None

    def _update(self, run_id: str, **fields: Any) -> None:
        if "tags" in fields:
            fields["tags"] = json.dumps(fields["tags"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with closing(self._connect()) as conn:
            try:
                conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))
            except sqlite3.OperationalError as exc:
                if _no_space(exc, self.root):
                    raise disk_full(self.db_path) from None
                raise

    def _folder_row(self, folder: Path) -> dict[str, Any]:
        return reader.row_from_folder(folder, running=(folder / OWNER_FILE).is_file())

    def _fill(self, conn: sqlite3.Connection, folders: list[Path]) -> int:
        """Add rows for `folders` that the index lacks (never overwrites a row a writer put there)."""
        rows = [self._folder_row(f) for f in folders]
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany(f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             [tuple(r[c] for c in COLUMNS) for r in rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn.total_changes - before

    def reindex(self, reason: str | None = None) -> int:
        """Rebuild the index from the run folders (a new file swapped in atomically); returns the run count.

        `reason`: said in a one-line notice (an automatic rebuild); None for `convladder runs reindex`.
        """
        if not self.writable:
            raise UserError(f"run store {self.root} is read-only here: the index cannot be rebuilt (reading "
                            "works without it: commands list the run folders)")
        self._mkdir()
        folders = self.run_folders()
        tmp = self.root / f"{INDEX}.rebuild-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            with closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
                conn.execute(SCHEMA)
                self._fill(conn, folders)
                conn.execute("PRAGMA journal_mode=WAL")
            for suffix in ("-wal", "-shm"):  # the old file's journal must never be replayed onto the new one
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
            os.replace(tmp, self.db_path)
        except (OSError, sqlite3.OperationalError) as exc:
            if _no_space(exc, self.root):
                raise disk_full(self.db_path) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        if reason:
            notice(f"{reason}: rebuilt the index from the {len(folders)} run folder(s)")
        return len(folders)

    # -- writing --------------------------------------------------------------------------------------
    def create_run(self, config: dict[str, Any], env: dict[str, Any] | None = None, *,
                   prepare: Callable[[Path], None] | None = None, **row: Any) -> RunHandle:
        """Make a new run folder (exclusive mkdir: two runs never share one), write config/env, add its row.

        The index is opened (and repaired if damaged) before the folder is made, and a folder whose row
        cannot be written is removed again: no orphan folders. `prepare(folder)` writes extra files first
        (an own model's record).
        """
        with closing(self._connect()) as conn:
            while True:
                run_id = new_run_id()
                try:
                    (self.root / run_id).mkdir()
                    break
                except FileExistsError:
                    continue
                except OSError as exc:
                    if is_no_space(exc):
                        raise disk_full(self.root / run_id) from None
                    raise
            handle = RunHandle(self, run_id)
            try:
                handle.write_json("config.json", config)
                if prepare is not None:
                    prepare(handle.path)
                if env is not None:
                    handle.write_json("env.json", env)
                values = {"id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
                          "name": config.get("name"), "model": config.get("model"), "dataset": config.get("dataset"),
                          "seed": config.get("seed"), "epochs": config.get("epochs"),
                          "path": str(handle.path.resolve()), "tags": json.dumps(config.get("tags") or []), **row}
                # OR REPLACE: a reader that rebuilt the index meanwhile may have added this folder's row
                conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                             tuple(values.values()))
            except BaseException as exc:
                import shutil

                shutil.rmtree(handle.path, ignore_errors=True)  # no orphan folder, no half-made run
                if _no_space(exc, self.root):
                    raise disk_full(self.db_path) from None
                raise
        if values["status"] == "running":
            handle.claim()
        return handle

    def handle(self, run_id_or_prefix: str) -> RunHandle:
        return RunHandle(self, self.get(run_id_or_prefix).id)

    # -- reading --------------------------------------------------------------------------------------
    def _all(self, retry: bool = True) -> list[RunRecord]:
        """Every run, newest first: the index, rebuilt when damaged; the folders when it cannot be read."""
        if not self.root.is_dir():
            return []
        if not self.db_path.is_file() and self.writable and self.run_folders():
            try:
                self.reindex(reason=f"{self.db_path} is missing")
            except DiskFull:
                notice(f"{self.db_path} is missing and the disk is full: listing the run folders")
        rows: list[RunRecord] = []
        indexed = False
        try:
            conn = self._connect_read()
            if conn is not None:
                with closing(conn):
                    rows = [_record(r) for r in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM runs")]
                indexed = True
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            if self.writable and retry:
                try:
                    self.reindex(reason=f"{self.db_path} is damaged ({exc})")
                    return self._all(retry=False)
                except DiskFull:
                    notice(f"the index {self.db_path} is damaged and the disk is full: listing the run folders")
            notice(f"the index {self.db_path} is damaged and cannot be rebuilt here: listing the run folders")
        if not indexed or not self.writable:  # read-only: folders the index lacks (a lost WAL) count too
            known = {r.id for r in rows}
            rows += [_record(self._folder_row(f)) for f in self.run_folders() if f.name not in known]
        return sorted(rows, key=lambda r: (r.created, r.id), reverse=True)

    def list_runs(self, limit: int | None = None, tag: str | None = None, **filters: Any) -> list[RunRecord]:
        """Runs newest first; filters are column=value (status, model, dataset, seed, name), tag=one tag."""
        bad = set(filters) - set(COLUMNS)
        if bad:
            raise UserError(f"cannot filter runs by {', '.join(sorted(bad))}; use one of {', '.join(COLUMNS)}")
        records = [r for r in self._all() if all(getattr(r, k) == v for k, v in filters.items() if k != "status")]
        records = [self._settle_orphan(r) for r in records]
        if "status" in filters:  # an orphan found while listing 'running' is 'interrupted' now
            records = [r for r in records if r.status == filters["status"]]
        if tag:
            records = [r for r in records if tag in r.tags]
        return records[:limit] if limit else records

    def _settle_orphan(self, record: RunRecord) -> RunRecord:
        """A 'running' run whose process on this host is gone (SIGKILL, power loss, a full disk) is settled.

        The folder is the truth: a result.json that says how the run ended (its index update failed, e.g. for
        space) gives the row; else the run becomes 'interrupted' (its last finished epoch is saved, so it can be
        resumed). A full disk keeps the settled row in memory only (a read never fails for space).
        """
        if record.status != "running":
            return record
        folder = self.root / record.id
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
            if owner.get("host") != socket.gethostname() or _alive(int(owner["pid"])):
                return record
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return record  # no owner file (older run) or unreadable: leave the row as it is
        row = self._folder_row(folder)
        fields: dict[str, Any] = {"status": "interrupted"}
        if row["status"] in ENDED:  # it ended on disk; only the index did not hear of it
            fields = {k: row[k] for k in ("status", "params", "final_test_acc", "best_val_acc", "best_epoch")}
        if self.writable:
            try:
                RunHandle(self, record.id).update(**fields)  # also removes the owner file
            except DiskFull:
                notice(f"the disk of {self.root} is full: run {record.id} is shown as {fields['status']} "
                       "(its folder says so) but the index cannot be updated now")
        for key, value in fields.items():
            setattr(record, key, value)
        return record

    def get(self, run_id_or_prefix: str) -> RunRecord:
        """A run by id or unique id prefix; 'latest' = the newest run, 'latest:X' = the newest whose model,
        name or a tag is X. What `latest` resolved to is said on stderr."""
        ref = run_id_or_prefix.strip() if isinstance(run_id_or_prefix, str) else ""
        if not ref:
            raise UserError(f"an empty run id matches no run — give a run id, a unique prefix, 'latest' or "
                            f"'latest:<model, name or tag>' (see `convladder runs list --runs {self.root}`)")
        runs = self.list_runs()
        head, _, scope = ref.partition(":")
        if head in LATEST:
            if scope:
                runs = [r for r in runs if scope in (r.model, r.name) or scope in r.tags]
            if not runs:
                what = f"no run of model, name or tag {scope!r}" if scope else "no runs"
                raise UserError(f"{ref!r}: {what} in {self.root}; see `convladder runs list --runs {self.root}`")
            print(f"{ref} = run {runs[0].describe()}", file=sys.stderr, flush=True)
            return runs[0]
        exact = [r for r in runs if r.id == ref]
        matches = exact or [r for r in runs if r.id.startswith(ref)]
        if not matches:
            raise UserError(f"no run {ref!r} in {self.root}; see `convladder runs list --runs {self.root}`")
        if len(matches) > 1:
            raise UserError(f"run prefix {ref!r} matches {len(matches)} runs; give more characters")
        return matches[0]

    def run_path(self, run_id: str) -> Path:
        return self.root / self.get(run_id).id

    def read_config(self, run_id: str) -> dict[str, Any]:
        """config.json, type-checked: one UserError when it is missing, damaged or of the wrong shape."""
        return reader.read_config(self.run_path(run_id))

    def read_env(self, run_id: str) -> dict[str, Any]:
        return reader.read_json(self.run_path(run_id) / "env.json")

    def read_result(self, run_id: str) -> dict[str, Any]:
        return reader.read_json(self.run_path(run_id) / "result.json")

    def read_metrics(self, run_id: str) -> list[dict[str, Any]]:
        return reader.read_metrics(self.run_path(run_id) / "metrics.jsonl")

    def load_state_dict(self, run_id: str, which: str = "final") -> dict[str, torch.Tensor]:
        return reader.read_weights(self.run_path(run_id), which)
