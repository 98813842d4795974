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


def wall(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0, proc.returncode


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
        for label, argv, target in baselines:
            times = [wall(argv, env)[0] for _ in range(opts.repeat)]
            rows.append((label, statistics.median(times), min(times), "yes" if "torch" in label else "no", target, 0))
            print(f"{label:28} median {rows[-1][1]:.3f}s", flush=True)
        for label, args, extra, target in COMMANDS:
            run_env = {**env, **extra}
            results = [wall([sys.executable, "-m", "convladder", *args], run_env) for _ in range(opts.repeat)]
            times = [t for t, _ in results]
            rows.append((label, statistics.median(times), min(times), torch_imported(args, run_env), target,
                         max(code for _, code in results)))
            print(f"{label:28} median {rows[-1][1]:.3f}s  torch imported: {rows[-1][3]}", flush=True)
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
             "| command | median wall s | fastest s | torch imported | target s | exit |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for label, median, fastest, torch, target, code in rows:
        lines.append(f"| {label} | {median:.3f} | {fastest:.3f} | {torch} | {'' if target is None else target} | "
                     f"{code} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
