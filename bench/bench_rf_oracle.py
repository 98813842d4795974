"""The network table's receptive field and jump against the gradient oracle, over many generated networks.

    .venv/bin/python bench/bench_rf_oracle.py [--networks 10000] [--start 0] [--out bench/results/rf-oracle.md]

Network `seed` is `tests/rf_netgen.random_net(seed)` for seed in [start, start + networks); each op's row of
`convladder.analysis.table.summarize` is compared with `tests/rf_oracle.net_fields` (field per axis, its range
where positions differ, and the jump). The suite runs the first 300 (tests/test_field_oracle.py). Every
disagreement is printed; the table (markdown) is written atomically.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rf_oracle import compare  # noqa: E402

from convladder.fileio import atomic_write_text  # noqa: E402


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


MEMORY = 6 << 30  # address space per worker: a network that needs more is an error in the table, not an OOM kill


def _quiet() -> None:
    warnings.filterwarnings("ignore", message="Using padding='same'")  # even kernels with 'same': torch's note
    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        paths = ["tests/rf_oracle.py", "tests/rf_netgen.py"] + [f"src/convladder/analysis/{m}.py" for m in (
            "field", "fieldaxis", "fieldops", "table", "trace", "ops")]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], capture_output=True, text=True,
                               timeout=10).stdout
        return out.stdout.strip() + (" (the oracle or the field code edited after it)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _one(seed: int) -> tuple[list[str], str, dict]:
    counted: dict = {}
    try:
        return compare(seed, counted), "", counted
    except Exception as exc:  # an oracle or table crash is a finding too: counted and shown
        return [], f"seed {seed}: {type(exc).__name__}: {exc}", counted


def _add(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/rf-oracle.md"))
    parser.add_argument("--jobs", type=int, default=1, help="processes, each with one torch thread")
    args = parser.parse_args()
    stats: dict = {}
    problems: list[str] = []
    errors: list[str] = []
    began = time.time()
    args.commit, args.load = _commit(), os.getloadavg()[0]
    seeds = range(args.start, args.start + args.networks)
    with multiprocessing.get_context("fork").Pool(args.jobs, initializer=_quiet) as pool:
        for done, (found, error, counted) in enumerate(pool.imap(_one, seeds, chunksize=20), 1):
            problems += found
            errors += [error] if error else []
            for p in found + ([error] if error else []):
                print(p, flush=True)
            _add(stats, counted)
            if done % 500 == 0:
                print(f"{done} networks, {len(problems)} disagreements, {len(errors)} errors, "
                      f"{time.time() - began:.0f} s", flush=True)
                if done < args.networks:  # a table of what is done so far, said to be partial
                    _write(args, stats, problems, errors, time.time() - began, done)
    _write(args, stats, problems, errors, time.time() - began, args.networks)


def _write(args: argparse.Namespace, stats: dict, problems: list[str], errors: list[str], elapsed: float,
           done: int) -> None:
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.get("kinds", {}).items(), key=lambda kv: -kv[1]))
    lines = [
        "# Receptive field against a gradient oracle (`bench/bench_rf_oracle.py`)",
        "",
        f"Machine: {_cpu()}, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.jobs} process(es) of 1 torch thread (2 cores shared with other work; "
        f"load average {args.load:.1f} at the start, {os.getloadavg()[0]:.1f} at this write), at most "
        f"{MEMORY >> 30} GiB per process. Code: commit {args.commit}. {time.strftime('%Y-%m-%d')}.",
        "",
        (f"**Partial: {done:,} of {args.networks:,} networks done.**\n\n" if done < args.networks else "") +
        f"Networks: `tests/rf_netgen.random_net(seed)`, seeds {args.start}–{args.start + done - 1}. "
        "At every op's row, the table's field per axis (its smallest–largest where positions differ) and jump "
        "are compared with the oracle (`tests/rf_oracle.net_fields`: derivatives of the linearised network on "
        "a canvas, every position of the map).",
        "",
        "| networks | rows compared | rows with a range | rows with a fractional jump | rows clipped by a global "
        "reduction | disagreements | errors | time |",
        "|---|---|---|---|---|---|---|---|",
        f"| {done:,} | {stats.get('rows', 0):,} | {stats.get('ranges', 0):,} | "
        f"{stats.get('fractional jumps', 0):,} | {stats.get('clipped by a global reduction', 0):,} | "
        f"**{len(problems)}** | **{len(errors)}** | {elapsed:.0f} s |",
        "",
        f"Rows by op: {kinds}.",
    ]
    if problems or errors:
        lines += ["", "First findings:", ""] + [f"- {p}" for p in (problems + errors)[:20]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
