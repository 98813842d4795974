"""Issue 30 items 1-2 for bench_hardening.py: a full disk, SIGTERM/SIGINT, and Ctrl-C in the own-model check.

Every try is a real `python -m convladder` process (PYTHONPATH = the src folder under test, so `--src` measures
the code before); "s" is its wall time (for a signal: from the signal to the exit), "MB" its peak RSS (VmHWM of
/proc/<pid>/status sampled every 20 ms; wait4's ru_maxrss is not used: it keeps the forking parent's pages).
A try passes on the documented answer only: exit 2 and one `error:` line for a full disk (reads: exit 0), exit
143/130 and one line for a signal, the run index and the run folders agreeing, no `.part` file, no Ray temporary
store, no `*** SIGTERM received` dump.
The disk-full group needs root (a 3 MB tmpfs is mounted); elsewhere it is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from test_signals import LADDER  # bench_hardening.py puts tests/ on the path: one ladder definition

Result = tuple[str, bool, str]
TRAIN = ["train", "--dataset", "synthetic", "--subset", "1200", "--threads", "1"]
SWEEP = """\
name: stops
model: "c1[conv3x3({c1}) relu bn] t[maxpool2x2 conv1x1(8)] c2[conv3x3(16) relu bn] out[gap conv1x1(10) softmax]"
budget: 20000
search: grid
seeds: 1
base: {dataset: synthetic, subset: 1200, epochs: 8, val_size: 0, batch_size: 64, threads: 1, augment: false}
params:
  c1: {role: studied, values: [4, 8]}
"""
FRONTIER = """\
name: stops
budgets: [3000]
base: {dataset: synthetic, subset: 1200, epochs: 8, val_size: 200, batch_size: 64, threads: 1}
"""


class Proc:
    """One CLI process: exit code, stdout, stderr, wall seconds and peak RSS (MB)."""

    def __init__(self, args: list[str], src: str, env: dict[str, str] | None = None):
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen([sys.executable, "-m", "convladder", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": src, **(env or {})})
        self.out: list[str] = []
        self.hwm_kb = 0  # the child's VmHWM, sampled: wait4's ru_maxrss would count the forking parent's pages
        import threading

        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        """Read /proc/<pid>/status VmHWM (the peak RSS of the exec'd program) every 20 ms until the child exits."""
        status = Path(f"/proc/{self.p.pid}/status")
        while True:
            try:
                hwm = next((int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
            except (OSError, ValueError):
                return
            if hwm is None:  # a zombie has no memory lines: it has exited
                return
            self.hwm_kb = max(self.hwm_kb, hwm)
            time.sleep(0.02)

    def alive(self) -> bool:
        """Whether the child still runs, without reaping it."""
        return os.waitid(os.P_PID, self.p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def wait_for(self, ready: str | Callable[[], bool], timeout: float = 150) -> bool:
        deadline = time.time() + timeout
        if callable(ready):
            while not ready():
                if not self.alive() or time.time() > deadline:
                    return False
                time.sleep(0.05)
            return True
        for line in self.p.stdout:
            self.out.append(line)
            if ready in line:
                return True
        return False

    def finish(self, timeout: float = 150) -> tuple[int, str, str, float, float]:
        """Read both pipes to their end, reap the child, kill it after `timeout`."""
        import threading

        got: dict[str, str] = {}
        readers = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, f.read()), daemon=True)
                   for k, f in (("out", self.p.stdout), ("err", self.p.stderr))]
        for t in readers:
            t.start()
        timer = threading.Timer(timeout, self.p.kill)
        timer.start()
        _, status = os.waitpid(self.p.pid, 0)
        timer.cancel()
        self.p.returncode = os.waitstatus_to_exitcode(status)
        for t in readers:
            t.join(10)
        return (self.p.returncode, "".join(self.out) + got.get("out", ""), got.get("err", ""),
                time.perf_counter() - self.t0, self.hwm_kb / 1024)


def run(args: list[str], src: str, env: dict[str, str] | None = None, timeout: float = 150):
    return Proc(args, src, env).finish(timeout)


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip() and not x.startswith(("note:", "latest = run"))]


def one_error(code: int, err: str) -> bool:
    got = lines(err)
    return code == 2 and len(got) == 1 and got[0].startswith("error: ") and "Traceback" not in err


def parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def index_status(root: Path) -> dict[str, str]:
    if not (root / "index.sqlite").is_file():
        return {}
    with closing(sqlite3.connect(f"file:{root / 'index.sqlite'}?immutable=1", uri=True)) as conn:
        return dict(conn.execute("SELECT id, status FROM runs").fetchall())


def folder_status(folder: Path) -> str:
    try:
        return json.loads((folder / "result.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "interrupted"


def row(case: str, ok: bool, code, s: float, mb: float, detail: str) -> tuple[Result, str]:
    return (case, ok, f"exit {code}: {detail}"[:200]), f"| {case} | {'ok' if ok else 'FAIL'} | {code} | {s:.1f} | {mb:.0f} | {detail[:170].replace('|', '/')} |"


# -- disk full ----------------------------------------------------------------------------------------------
def mount_tmpfs() -> Path | str:
    if os.geteuid() != 0:
        return "not root: a 3 MB tmpfs cannot be mounted (tests/test_diskfull.py's unit tests simulate ENOSPC)"
    mnt = Path("/tmp") / f"cl-bench-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        mnt.rmdir()
        return f"mount failed: {done.stderr.strip()[:100]}"
    return mnt


def fill(folder: Path, leave: int = 0) -> None:
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for size in (1 << 20, 1 << 14, 1 << 10, 1):
        while True:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                break
    os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def unfill(folder: Path) -> None:
    for f in folder.glob("filler-*"):
        f.unlink()


def diskfull(tmp: Path, src: str) -> tuple[list[Result], list[str]]:
    mnt = mount_tmpfs()
    if isinstance(mnt, str):
        return [], [f"disk full: skipped ({mnt})"]
    results, rows = [], []

    def add(case, ok, code, s, mb, detail):
        r, line = row(case, ok, code, s, mb, detail)
        results.append(r)
        rows.append(line)

    try:
        runs = mnt / "runs"
        code, out, err, s, mb = run([*TRAIN, "--epochs", "1", "--runs", str(runs), "--quiet"], src)
        lad = tmp / "stops.yaml"
        lad.write_text(LADDER)
        lrun = ["ladder", "run", str(lad), "--steps", "1", "--dataset", "synthetic", "--subset", "600", "--epochs", "1",
                "--runs", str(runs)]
        run(lrun, src)
        fill(mnt)
        for case, args in (("runs list on a full store", ["runs", "list", "--runs", str(runs)]),
                           ("runs show on a full store", ["runs", "show", "latest", "--runs", str(runs)])):
            code, out, err, s, mb = run(args, src)
            add(case, code == 0 and "Traceback" not in err and "completed" in out, code, s, mb,
                (lines(err) or ["-"])[-1])
        code, out, err, s, mb = run(["report", "latest", "--runs", str(runs), "-o", str(tmp / "r.html")], src, timeout=240)
        add("report -o to another disk, store full", code == 0 and (tmp / "r.html").is_file(), code, s, mb,
            (lines(out) or ["-"])[-1])
        code, out, err, s, mb = run(["report", "latest", "--runs", str(runs), "-o", str(mnt / "r.html")], src)
        add("report -o onto the full disk: refused before the work", one_error(code, err) and s < 20, code, s, mb,
            (lines(err) or ["-"])[-1])
        code, out, err, s, mb = run(["export", "latest", "--runs", str(runs), "-o", str(mnt / "m.onnx")], src)
        add("export -o onto the full disk", one_error(code, err) and not (mnt / "m.onnx").exists(), code, s, mb,
            (lines(err) or ["-"])[-1])
        before = sorted(p.name for p in runs.iterdir())
        code, out, err, s, mb = run([*TRAIN, "--epochs", "1", "--runs", str(runs), "--quiet"], src)
        add("train into a full store", one_error(code, err) and sorted(p.name for p in runs.iterdir()) == before
            and not parts(mnt), code, s, mb, (lines(err) or ["-"])[-1])
        # what a failed final index update leaves: result.json completed, the row 'running', its owner gone
        done = [r for r, st in index_status(runs).items() if st == "completed"]
        rid = done[-1]
        unfill(mnt)
        with closing(sqlite3.connect(runs / "index.sqlite", isolation_level=None)) as conn:
            conn.execute("UPDATE runs SET status = 'running' WHERE id = ?", (rid,))
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (runs / rid / "running.json").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
        fill(mnt)
        code, out, err, s, mb = run(lrun, src)
        add("ladder rerun: a step completed on disk, index 'running', disk full", code == 0 and "[skip]" in out
            and "Traceback" not in err, code, s, mb, (lines(out) or ["-"])[0])
        code, out, err, s, mb = run(["sweep", str(_sweep(tmp)), "--runs", str(runs)], src)
        add("sweep into a full store", one_error(code, err) and not parts(mnt), code, s, mb, (lines(err) or ["-"])[-1])
        unfill(mnt)
        fill(mnt, leave=150_000)  # room for the run's folder and the index, not for an epoch's 270 KB of files
        code, out, err, s, mb = run([*TRAIN, "--epochs", "2", "--runs", str(runs), "--quiet"], src)
        unfill(mnt)
        from_folders = {f.name: folder_status(f) for f in runs.iterdir() if f.is_dir()}
        code2, out2, _, _, _ = run(["runs", "list", "--runs", str(runs)], src)
        listed = {ln.split()[0]: ln.split()[1] for ln in out2.splitlines() if ln[:1].isdigit()}
        add("disk fills during training", one_error(code, err) and not parts(mnt) and listed == from_folders, code, s,
            mb, (lines(err) or ["-"])[-1] + f"; index then folders agree: {listed == from_folders}")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()
    return results, rows


def _sweep(tmp: Path) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(SWEEP)
    return path


# -- signals ------------------------------------------------------------------------------------------------
def signals(tmp: Path, src: str) -> tuple[list[Result], list[str]]:
    results, rows = [], []

    def add(case, ok, code, s, mb, detail):
        r, line = row(case, ok, code, s, mb, detail)
        results.append(r)
        rows.append(line)

    def stopped(case: str, args: list[str], ready, sig: int, want: int, check=lambda out, err: True,
                env: dict[str, str] | None = None, says_on: str = "err", runs: Path | None = None) -> None:
        p = Proc(args, src, env)
        if not p.wait_for(ready):
            code, out, err, s, mb = p.finish()
            add(case, False, code, s, mb, "never reached the point to signal: " + (lines(err) or ["-"])[-1])
            return
        t_sig = time.perf_counter()
        p.p.send_signal(sig)
        marked = None  # seconds from the signal until the index says 'interrupted' (`runs` given)
        while runs is not None and marked is None and p.alive():
            try:
                if "interrupted" in index_status(runs).values():
                    marked = time.perf_counter() - t_sig
            except sqlite3.Error:
                pass
            time.sleep(0.01)
        code, out, err, s, mb = p.finish()
        said = lines(err if says_on == "err" else out)[-1:] if says_on == "out" else lines(err)
        ok = code == want and len(said) == 1 and "Traceback" not in err and "*** SIG" not in err and check(out, err)
        when = f" [index 'interrupted' {marked:.2f} s after the signal]" if marked is not None else ""
        add(case, ok, code, time.perf_counter() - t_sig, mb, (said[-1] if said else "(nothing said)")[:90] + when)

    for sig, want in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        runs = tmp / f"train-{sig}"
        stopped(f"train, {signal.Signals(sig).name} after epoch 1", [*TRAIN, "--epochs", "6", "--runs", str(runs)],
                "epoch 1/6", sig, want,
                lambda out, err, runs=runs: list(index_status(runs).values()) == ["interrupted"]
                and f"--resume {next(iter(index_status(runs)))}" in err, runs=runs)  # names the run to resume
    runs = tmp / f"train-{signal.SIGTERM}"
    rid = next(iter(index_status(runs)), "-")
    code, out, err, s, mb = run(["train", "--resume", rid, "--runs", str(runs), "--quiet"], src, timeout=240)
    add("resume after SIGTERM", code == 0 and index_status(runs) == {rid: "completed"}, code, s, mb,
        (lines(err) or ["completed"])[-1])
    lad = tmp / "stops.yaml"
    lad.write_text(LADDER)
    runs = tmp / "ladder"
    stopped("ladder run, SIGTERM in step 2", ["ladder", "run", str(lad), "--dataset", "synthetic", "--subset", "1200",
                                              "--epochs", "6", "--runs", str(runs)],
            lambda: len(list(runs.glob("*/metrics.jsonl"))) == 2, signal.SIGTERM, 143,
            lambda out, err: sorted(index_status(runs).values()) == ["completed", "interrupted"])
    runs = tmp / "sweep"
    stopped("sweep, SIGTERM in trial 1", ["sweep", str(_sweep(tmp)), "--runs", str(runs)],
            lambda: any(runs.glob("*/metrics.jsonl")), signal.SIGTERM, 143,
            lambda out, err: "interrupted" in index_status(runs).values())
    (tmp / "frontier.yaml").write_text(FRONTIER)
    runs = tmp / "frontier"
    stopped("frontier, SIGTERM in a trial", ["frontier", str(tmp / "frontier.yaml"), "--trials", "2", "--seeds", "1",
                                             "--runs", str(runs), "--quiet"],
            lambda: any(runs.glob("*/metrics.jsonl")), signal.SIGTERM, 143,
            lambda out, err: "interrupted" in index_status(runs).values())
    runs = tmp / f"train-{signal.SIGTERM}"
    stopped("serve, SIGTERM", ["serve", rid, "--runs", str(runs), "--port", "0"], "open http://", signal.SIGTERM, 143,
            lambda out, err: "stopped" in out and not lines(err), says_on="out")
    marker = tmp / "importing"
    net = tmp / "slow_net.py"
    net.write_text(f"import time, pathlib\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(60)\n"
                   "import torch.nn as nn\nclass Net(nn.Module):\n    pass\n")
    for sig, want in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        marker.unlink(missing_ok=True)
        stopped(f"own-model check, {signal.Signals(sig).name} (no run exists)",
                [*TRAIN, "--model", f"{net}:Net", "--runs", str(tmp / "own")], marker.exists, sig, want,
                lambda out, err: "resume" not in err and "saved" in err)
    ray_tmp = Path(tempfile.mkdtemp(prefix="cl-b-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        import importlib.util

        if importlib.util.find_spec("ray"):
            runs = tmp / "ray"
            stopped("ladder run --executor ray, SIGTERM mid-step",
                    ["ladder", "run", str(lad), "--dataset", "synthetic", "--subset", "1200", "--epochs", "30",
                     "--runs", str(runs), "--executor", "ray"], lambda: any(ray_tmp.glob("convladder-ray-*")),
                    signal.SIGTERM, 143, lambda out, err: not any(ray_tmp.glob("convladder-ray-*")),
                    env={"TMPDIR": str(ray_tmp)})
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
    return results, rows


HEADER = ["| try | result | exit | s | peak MB | what it said |", "|---|---|---|---|---|---|"]
