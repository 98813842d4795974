"""Start-up time of the CLI (issue 31): each command in a fresh interpreter, N times, the median wall time, and
whether it imported torch (read from `sys.modules` after the command, in one more run).

    .venv/bin/python bench/bench_startup.py [--repeat 7] [--src DIR] [--out bench/results/startup.md]

The rows `python -c pass` and `python -c "import torch"` say what the interpreter and torch cost on the same
machine at the same time; the load average before and after is printed too, since on shared cores a busy
neighbour inflates every figure. `--src /path/to/old/src` measures another checkout (the before column).
Targets: commands that compute nothing <= 0.3 s on 2 cores; `summary` of a registered network <= 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_startup import PROBE, TINY  # noqa: E402 - the test's probe (torch in sys.modules after the command)

COMPLETION = {"_CONVLADDER_COMPLETE": "complete_bash", "COMP_WORDS": "convladder tra", "COMP_CWORD": "1"}
# (label, argv after `convladder`, extra environment, target seconds or None)
COMMANDS = [
    ("--version", ["--version"], {}, 0.3),
    ("--help", ["--help"], {}, 0.3),
    ("train --help", ["train", "--help"], {}, 0.3),
    ("completion (bash, 'tra')", [], COMPLETION, 0.3),
    ("models", ["models"], {}, 0.3),
    ("runs list", ["runs", "list"], {}, 0.3),
    ("runs show latest", ["runs", "show", "latest"], {}, 0.3),
    ("ladder check eip4-s2", ["ladder", "check", "eip4-s2"], {}, 0.3),
    ("summary tiny8k", ["summary", "tiny8k"], {}, 1.5),
]


def wall(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the process: user + sys, exit code); CPU time is what a busy neighbour inflates least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, proc.returncode


def torch_imported(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"torch imported: True": "yes", "torch imported: False": "no"}.get(last, f"? (exit {proc.returncode})")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (the median is reported)")
    parser.add_argument("--src", type=Path, default=None, help="the src folder of another checkout to measure")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CONVLADDER_RUNS": str(Path(tmp) / "runs")}
        if opts.src:
            env["PYTHONPATH"] = str(opts.src.resolve())
        # one real run (1 epoch, synthetic data), so that `runs list|show` read real files
        subprocess.run([sys.executable, "-m", "convladder", "train", "--model", TINY, "--dataset", "synthetic",
                        "--subset", "640", "--epochs", "1", "--val-size", "64", "--threads", "1", "--quiet"],
                       check=True, env=env, cwd=ROOT, capture_output=True)
        load_before = os.getloadavg()
        rows = []
        baselines = [("python -c pass", [sys.executable, "-c", "pass"], None),
                     ("python -c 'import torch'", [sys.executable, "-c", "import torch"], None)]
        runs = [(label, argv, env, "yes" if "torch" in label else "no", None) for label, argv, _ in baselines]
        runs += [(label, [sys.executable, "-m", "convladder", *args], {**env, **extra}, None, target)
                 for label, args, extra, target in COMMANDS]
        for label, argv, run_env, torch, target in runs:
            results = [wall(argv, run_env) for _ in range(opts.repeat)]
            torch = torch or torch_imported(argv[3:], run_env)
            rows.append((label, statistics.median(r[0] for r in results), min(r[0] for r in results),
                         statistics.median(r[1] for r in results), torch, target, max(r[2] for r in results)))
            print(f"{label:28} median {rows[-1][1]:.3f}s wall, {rows[-1][3]:.3f}s CPU  torch imported: {torch}",
                  flush=True)
        load_after = os.getloadavg()
    text = table(rows, opts, load_before, load_after)
    print()
    print(text)
    if opts.out:
        sys.path.insert(0, str(ROOT / "src"))
        from convladder.fileio import atomic_write_text

        atomic_write_text(opts.out, text)


def table(rows: list[tuple], opts: argparse.Namespace, load_before: tuple, load_after: tuple) -> str:
    src = opts.src or ROOT / "src"
    lines = [f"machine: {machine()}; torch {version('torch')}; source {src}",
             f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
             f"after {'/'.join(f'{x:.2f}' for x in load_after)}; {opts.repeat} runs per command, each a fresh "
             "interpreter (`python -m convladder ...`), wall time measured around the process",
             "",
             "| command | median wall s | fastest wall s | median CPU s (user+sys) | torch imported | target s | exit |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for label, median, fastest, cpu, torch, target, code in rows:
        lines.append(f"| {label} | {median:.3f} | {fastest:.3f} | {cpu:.3f} | {torch} | "
                     f"{'' if target is None else target} | {code} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
