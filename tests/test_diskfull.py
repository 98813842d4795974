"""A full disk is an answer, not a crash (issue 30 item 1).

Unit tests simulate ENOSPC / SQLITE_FULL by replacing a writer and run everywhere; the tmpfs tests fill a real
3 MB tmpfs and run only as root where `mount` works (skipped with the reason elsewhere).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from convladder.errors import UserError
from convladder.fileio import DiskFull, atomic_write_bytes
from convladder.runs import store as store_mod
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.loop import train

TINY = "c1[conv3x3(4) relu bn] t[maxpool2x2 conv1x1(4)] out[gap conv1x1(10) softmax]"
CONFIG = dict(model=TINY, dataset="synthetic", epochs=2, batch_size=64, val_size=128, subset=600, lr=0.1,
              seed=1, threads=1, clean_train_eval=0)


def parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def no_space(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


# -- the one writer ----------------------------------------------------------------------------------------
def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", no_space)  # the data did not fit: the write fails at flush/fsync
    with pytest.raises(DiskFull) as err:
        atomic_write_bytes(target, b"x" * 5000)
    message = str(err.value)
    assert str(target) in message and "needs 5.0 KB" in message and "free there" in message
    assert "\n" not in message and isinstance(err.value, UserError)
    assert target.read_text() == "old" and not parts(tmp_path)


def test_edquot_counts_as_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")))
    with pytest.raises(DiskFull, match="no space left to write"):
        atomic_write_bytes(tmp_path / "a.bin", b"1")


# -- index and folders agree ------------------------------------------------------------------------------
def test_a_run_completed_on_disk_whose_index_update_failed_is_completed_and_never_trained_again(
        tmp_path: Path, monkeypatch) -> None:
    """result.json was written, then the index said 'database or disk is full': the folder is the truth."""
    real = RunStore._connect

    class FullIndex:  # SQLite's answer to the final status update on a full disk
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, params=()):
            if sql.startswith("UPDATE") and "completed" in params:
                raise sqlite3.OperationalError("database or disk is full")
            return self.conn.execute(sql, params)

        def close(self):
            self.conn.close()

    monkeypatch.setattr(RunStore, "_connect", lambda self: FullIndex(real(self)))
    store = RunStore(tmp_path)
    with pytest.raises(DiskFull, match="index.sqlite"):
        train(TrainConfig(**{**CONFIG, "tags": ["job:abc"]}), store)
    monkeypatch.setattr(RunStore, "_connect", real)
    (folder,) = store.run_folders()
    assert json.loads((folder / "result.json").read_text())["status"] == "completed"
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"  # what the failed write left
    owner = folder / "running.json"  # the training process is gone now
    owner.write_text(json.dumps({**json.loads(owner.read_text()), "pid": dead_pid()}))
    from convladder.executors.base import find_completed

    assert find_completed(tmp_path, "abc") == folder.name  # a ladder/sweep rerun skips it (was: 'interrupted')
    (row,) = store.list_runs()
    assert row.status == "completed" and row.final_test_acc is not None
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:  # and the index now says so too
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "completed"


def test_reads_work_when_the_index_cannot_be_written(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    train(TrainConfig(**CONFIG), store)

    def io_error(self, path):  # what SQLite says when its -wal/-shm file cannot grow
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(RunStore, "_open", io_error)
    monkeypatch.setattr(store_mod, "free_bytes", lambda path: 0)
    (row,) = RunStore(tmp_path).list_runs()
    assert row.status == "completed"
    assert RunStore(tmp_path).get("latest").id == row.id
    with pytest.raises(DiskFull, match="no space left to write .*index.sqlite"):
        RunStore(tmp_path).create_run({"model": "m"})
    assert len(RunStore(tmp_path).run_folders()) == 1  # no orphan folder


def test_enospc_while_saving_an_epoch_leaves_no_part_file_and_agreeing_status(tmp_path: Path, monkeypatch) -> None:
    from convladder.runs import handle

    store = RunStore(tmp_path)
    monkeypatch.setattr(handle.RunHandle, "save_resume", lambda self, state: _enospc_write(self.path / "resume.pt"))
    with pytest.raises(DiskFull, match="resume.pt"):
        train(TrainConfig(**CONFIG), store)
    (row,) = store.list_runs()
    result = json.loads((tmp_path / row.id / "result.json").read_text())
    assert row.status == result["status"] == "failed" and "no space left" in result["message"]
    assert not parts(tmp_path)


def _enospc_write(path: Path) -> None:
    import convladder.fileio as fileio

    real = fileio.os.fsync
    fileio.os.fsync = no_space
    try:
        atomic_write_bytes(path, b"resume state")
    finally:
        fileio.os.fsync = real


# -- a real full disk (root, tmpfs) -------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 3 MB tmpfs (root only); yields its path; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a 3 MB tmpfs (the unit tests above simulate ENOSPC instead)")
    mnt = Path("/tmp") / f"cl-full-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of `folder`, then give back `leave` bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 14, 1 << 10, 1):  # unbuffered: a failed write leaves nothing pending
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convladder", *args], capture_output=True, text=True, timeout=180)


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("note:")]


def test_a_full_tmpfs_store_reads_and_refuses_new_runs_in_one_line(tmpfs: Path) -> None:
    runs = tmpfs / "runs"
    made = cli("train", "--dataset", "synthetic", "--subset", "600", "--epochs", "1", "--runs", str(runs), "--quiet")
    assert made.returncode == 0, made.stderr
    fill(tmpfs)
    listed = cli("runs", "list", "--runs", str(runs))
    assert listed.returncode == 0 and "completed" in listed.stdout and "Traceback" not in listed.stderr, listed.stderr
    shown = cli("runs", "show", "latest", "--runs", str(runs))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    again = cli("train", "--dataset", "synthetic", "--subset", "600", "--epochs", "1", "--runs", str(runs), "--quiet")
    assert again.returncode == 2
    (line,) = errors(again.stderr)
    assert line.startswith("error: no space left to write ") and "free there" in line
    assert len(RunStore(runs).run_folders()) == 1 and not parts(tmpfs)


def test_a_tmpfs_that_fills_during_training_leaves_index_and_folder_agreeing(tmpfs: Path) -> None:
    runs = tmpfs / "runs"
    RunStore(runs).list_runs()
    RunStore(runs)._connect().close()  # the index exists; what is left cannot hold an epoch's weights
    fill(tmpfs, leave=150_000)  # the run's folder fits, an epoch's weights and resume state (~270 KB) do not
    done = cli("train", "--dataset", "synthetic", "--subset", "600", "--epochs", "2", "--runs", str(runs), "--quiet")
    assert done.returncode == 2, done.stderr
    (line,) = errors(done.stderr)
    assert line.startswith("error: no space left to write ") and "free there" in line, line
    assert not parts(tmpfs)
    os.unlink(tmpfs / "filler")  # space again: the store settles the run from its folder
    rows = RunStore(runs).list_runs()
    assert len(rows) == 1 and "safetensors" in line or "resume.pt" in line  # it failed saving an epoch
    for row in rows:
        result = tmpfs / "runs" / row.id / "result.json"
        expected = json.loads(result.read_text())["status"] if result.is_file() else "interrupted"
        assert row.status == expected
