"""SIGTERM is handled like Ctrl-C (issue 30 item 2): real `python -m convladder` processes, signalled mid-run.

Each test starts the CLI on the synthetic data set, waits for a line of its output, sends the signal and
checks the exit code (143 SIGTERM, 130 SIGINT), the one stderr line, and the run index row as the process
left it (read straight from SQLite: `runs list` would settle a dead owner's row itself and hide a lie).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from convladder import interrupts

TRAIN = ["train", "--dataset", "synthetic", "--subset", "1200", "--epochs", "3", "--threads", "1"]


def run_until(args: list[str], ready: str | Callable[[], bool], sig: int, env: dict[str, str] | None = None,
              timeout: float = 120) -> tuple[int, str, str]:
    """Start the CLI, send `sig` once a stdout line contains `ready` (or once `ready()` is true), wait."""
    proc = subprocess.Popen([sys.executable, "-m", "convladder", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    out = []
    deadline = time.time() + timeout
    if callable(ready):
        while not ready():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
    else:
        for line in proc.stdout:
            out.append(line)
            if ready in line:
                break
        else:
            raise AssertionError(f"never saw {ready!r}: {''.join(out)}{proc.stderr.read()}")
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(out) + rest, err


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def index_rows(root: Path) -> dict[str, str]:
    with sqlite3.connect(root / "index.sqlite") as conn:
        return dict(conn.execute("SELECT id, status FROM runs").fetchall())


@pytest.mark.parametrize("sig,code,head", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_train_stopped_by_a_signal_is_interrupted_at_once_and_resumes(tmp_path: Path, sig, code, head) -> None:
    rc, out, err = run_until([*TRAIN, "--runs", str(tmp_path)], "epoch 1/3", sig)
    assert rc == code, err
    (run_id, status), = index_rows(tmp_path).items()
    assert status == "interrupted"  # in the index as the process left it, not settled later by a reader
    assert json.loads((tmp_path / run_id / "result.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / run_id / "running.json").exists()
    assert lines(err) == [f"{head}: run {run_id} (epoch 1 saved); resume with: convladder train --resume {run_id}"]
    assert "interrupted after epoch" not in out  # said once, on stderr
    if sig == signal.SIGTERM:
        done = subprocess.run([sys.executable, "-m", "convladder", "train", "--resume", run_id, "--runs",
                               str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert index_rows(tmp_path) == {run_id: "completed"}


def test_a_signal_before_any_run_exists_says_nothing_was_saved(tmp_path: Path) -> None:
    marker = tmp_path / "importing"
    net = tmp_path / "slow_net.py"
    net.write_text("import time, pathlib, torch.nn as nn\n"
                   f"pathlib.Path({str(marker)!r}).touch()\ntime.sleep(60)\n"
                   "class Net(nn.Module):\n    pass\n")
    rc, _, err = run_until([*TRAIN, "--model", f"{net}:Net", "--runs", str(tmp_path / "runs")], marker.exists,
                           signal.SIGINT)
    assert rc == 130
    assert lines(err) == ["interrupted before any run was made: nothing saved"]  # was: "... --resume <run id>"
    assert not (tmp_path / "runs").exists() or not index_rows(tmp_path / "runs")


LADDER = """\
name: sig
base:
  model: "c1[conv3x3(8) relu bn] t[maxpool2x2 conv1x1(8)] c2[conv3x3(16) relu bn] out[gap conv1x1(10) softmax]"
  config: {dataset: synthetic, val_size: 0, augment: false, batch_size: 64, threads: 1}
steps:
  - name: one
    change: start
  - name: two
    change: narrower c2
    edit: [{set_channels: {c2: 12}}]
"""


@pytest.mark.slow  # ~20 s: two CLI processes
def test_ladder_run_under_sigterm_marks_the_step_and_a_rerun_skips_finished_ones(tmp_path: Path) -> None:
    ladder = tmp_path / "sig.yaml"
    ladder.write_text(LADDER)
    args = ["ladder", "run", str(ladder), "--dataset", "synthetic", "--subset", "1200", "--epochs", "3",
            "--runs", str(tmp_path / "runs")]
    folders = tmp_path / "runs"
    second = lambda: len(list(folders.glob("*/metrics.jsonl"))) == 2  # noqa: E731 - step two finished an epoch
    rc, out, err = run_until(args, second, signal.SIGTERM)
    assert rc == 143, err
    rows = index_rows(folders)
    assert sorted(rows.values()) == ["completed", "interrupted"], rows
    (cut,) = [r for r, s in rows.items() if s == "interrupted"]
    assert lines(err) == [f"terminated (SIGTERM): run {cut} (epoch {cut_epoch(folders / cut)} saved); rerun the "
                          "same `ladder run`: finished steps are skipped, a cut step trains again"]
    again = subprocess.run([sys.executable, "-m", "convladder", *args], capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "[skip] step 1 one" in again.stdout and again.stdout.count("[skip]") == 1


def cut_epoch(folder: Path) -> int:
    return len(lines((folder / "metrics.jsonl").read_text()))


def test_deferred_holds_a_signal_until_the_block_ends() -> None:
    old = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    try:
        interrupts.install()
        done = []
        with pytest.raises(interrupts.Terminated):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append("all of the block ran")
        assert done == ["all of the block ran"]
        assert interrupts.exit_code(interrupts.Terminated()) == 143
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        interrupts._state.update(installed=False, last=None)


def test_serve_stops_on_sigterm_with_143(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "convladder", "train", "--dataset", "synthetic", "--subset", "600",
                           "--epochs", "1", "--runs", str(tmp_path), "--quiet"], capture_output=True, text=True,
                          timeout=180)
    assert made.returncode == 0, made.stderr
    rc, out, err = run_until(["serve", "latest", "--runs", str(tmp_path), "--port", "0"], "open http://",
                             signal.SIGTERM)
    assert rc == 143 and "stopped (terminated (SIGTERM))" in out, (rc, out, err)
    assert "Traceback" not in err


@pytest.mark.slow  # ~40 s: a local Ray starts and stops
@pytest.mark.skipif(not __import__("importlib").util.find_spec("ray"), reason="ray is not installed")
def test_ray_ladder_under_sigterm_shuts_workers_down_and_removes_their_stores(tmp_path: Path, request) -> None:
    ladder = tmp_path / "sig.yaml"
    ladder.write_text(LADDER)
    # the workers' temporary stores go here (Ray's session folder too: its socket paths must stay short)
    tmp = Path(tempfile.mkdtemp(prefix="cl-sig-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    args = ["ladder", "run", str(ladder), "--dataset", "synthetic", "--subset", "1200", "--epochs", "30",
            "--runs", str(tmp_path / "runs"), "--executor", "ray"]
    stores = lambda: any(tmp.glob("convladder-ray-*"))  # noqa: E731 - a worker is training
    rc, out, err = run_until(args, stores, signal.SIGTERM, {"TMPDIR": str(tmp)}, timeout=150)
    assert rc == 143, (out, err)  # was -6 (SIGABRT from Ray's C++ handler)
    assert "*** SIGTERM received" not in err and "Traceback" not in err
    assert lines(err)[-1].startswith("terminated (SIGTERM): ")
    assert not list(tmp.glob("convladder-ray-*"))  # the killed workers' stores are removed


def _runs_list_cut_by_sigterm(monkeypatch) -> int:
    """`convladder runs list` in this process, stopped by SIGTERM inside the store; its exit code."""
    from convladder.cli import main
    from convladder.runs.store import RunStore

    def cut(self, *a, **k):
        raise interrupts.Terminated()

    monkeypatch.setattr(RunStore, "list_runs", cut)
    old = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    try:
        with pytest.raises(SystemExit) as done:
            main(["runs", "list", "--runs", "/nonexistent-store"])
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        interrupts._state.update(installed=False, last=None)
    return done.value.code


def test_a_command_without_its_own_handler_exits_143_with_one_line(monkeypatch, capsys) -> None:
    """typer turns an uncaught KeyboardInterrupt into a silent exit 130; the CLI says it and keeps SIGTERM's 143."""
    assert _runs_list_cut_by_sigterm(monkeypatch) == 143
    assert lines(capsys.readouterr().err) == ["terminated (SIGTERM): stopped; no file was left half-written "
                                              "(every write is atomic)"]


def test_a_stop_names_only_the_runs_of_its_own_command(monkeypatch, capsys) -> None:
    """Runs cut by an earlier command of the same process (a notebook, a test session) are not listed again."""
    interrupts.record("20250101-000000-abcdef", 3)  # an earlier command's cut run
    assert _runs_list_cut_by_sigterm(monkeypatch) == 143
    err = capsys.readouterr().err
    assert "20250101-000000-abcdef" not in err
    assert lines(err) == ["terminated (SIGTERM): stopped; no file was left half-written (every write is atomic)"]
