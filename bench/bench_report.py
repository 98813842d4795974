"""Time `write_report` on a synthetic 10-step ladder (tiny trained models) and print machine, torch, time, size.

    .venv/bin/python bench/bench_report.py [--steps 10] [--seeds 1] [--keep DIR]

Target: <= 30 s on 2 CPU cores, file < 10 MB. The run store is built by hand in the documented layout
(convladder.report.demo), so this measures the report alone, not the trainer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from convladder.report.demo import make_ladder
from convladder.report.html import write_report


def cpu_name() -> str:
    from convladder.train.runenv import cpu_model

    return cpu_model()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="build the store here and keep it (default: a temp dir)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="convladder-bench-"))
    t0 = time.perf_counter()
    make_ladder(root, "bench", steps=args.steps, seeds=args.seeds, epochs=3)
    build_s = time.perf_counter() - t0
    out = root / "report.html"
    t0 = time.perf_counter()
    write_report("bench", out, root)
    report_s = time.perf_counter() - t0
    size = out.stat().st_size
    rows = [("machine", f"{cpu_name()}, {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}"),
            ("torch", torch.__version__), ("ladder", f"{args.steps} steps x {args.seeds} seed(s), store built in {build_s:.1f} s"),
            ("write_report time", f"{report_s:.1f} s (target <= 30 s)"), ("report size", f"{size / 1e6:.2f} MB (target < 10 MB)"),
            ("file", str(out))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
