"""Time a 1-epoch, small-subset pass over every step of a ladder (default eip4-s2) and print a table.

    .venv/bin/python bench/bench_ladder.py [--ladder eip4-s2] [--subset 512] [--data mnist] [--threads 2]

The issue's budget: on 2 CPU cores the whole pass finishes in <= 2 minutes. Runs go to a temporary store.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from convladder.ladder.ladder import load_ladder
from convladder.ladder.run import run_ladder
from convladder.train.runenv import cpu_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ladder", default="eip4-s2")
    ap.add_argument("--subset", type=int, default=512)
    ap.add_argument("--data", default="mnist", help="mnist (needs the cache), fashion-mnist or synthetic")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ladder = load_ladder(args.ladder)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        res = run_ladder(ladder, root, epochs=1, subset=args.subset, dataset=args.data, device=args.device,
                         threads=args.threads, echo=lambda s: None)
    total = time.perf_counter() - t0
    print(f"machine: {platform.machine()} {cpu_model()}, {args.threads} thread(s); torch {torch.__version__}; "
          f"{args.data}, subset {args.subset}, 1 epoch")
    print(f"{'step':<4} {'name':<16} {'params':>8} {'status':<10} {'test %':>7} {'wall s':>7}")
    for r in res:
        acc = r.get("final_test_acc")
        print(f"{r['step']:<4} {ladder.step(r['step']).name:<16} {r.get('params') or 0:>8,} {r['status']:<10} "
              f"{'-' if acc is None else f'{acc:.2f}':>7} {r.get('wall_time_s', 0):>7.1f}")
    print(f"total {total:.1f}s (budget 120s)")


if __name__ == "__main__":
    main()
