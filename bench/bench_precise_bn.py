"""Precise BN on runs already trained: test (and val) accuracy of each final model before and after recalibration.

    PYTHONPATH=src .venv/bin/python bench/bench_precise_bn.py --runs R [--runs R2 ...] [--images 10000]

For every completed run in the stores that did not already use `precise_bn`: load its final weights, evaluate
val and test, recompute the BatchNorm statistics on the first --images training images (train/step.py
`recalibrate_bn`, what `--precise-bn N` does at the end of training), evaluate again. Nothing is selected on
the test set: every run is recalibrated. Writes bench/results/precise-bn-<device>.md (or --output) and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from convladder.fileio import atomic_write_text
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, load_splits
from convladder.train.models import create_model
from convladder.train.runenv import cpu_model
from convladder.train.step import evaluate, recalibrate_bn

RESULTS = Path(__file__).parent / "results"


def recipe(cfg: dict) -> str:
    aug = (f"rot {cfg['rotate']:g} / shift {cfg['translate']:g} / scale {cfg['scale']:g}" if cfg["augment"]
           else "none")
    extra = f", label smoothing {cfg['label_smoothing']:g}" if cfg["label_smoothing"] else ""
    return f"{cfg['epochs']} ep, batch {cfg['batch_size']}, lr {cfg['lr']:g}, aug {aug}{extra}"


def val_and_test(model: torch.nn.Module, data: DeviceData) -> list[float]:
    """[val accuracy %, test accuracy %] of the model as it is."""
    return [evaluate(model, x, y, data, 500)[1] for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", action="append", required=True, help="a run store folder (repeatable)")
    ap.add_argument("--images", type=int, default=10000, help="training images to recompute the statistics on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=None, help="results file name under bench/results/")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    datas: dict[tuple, DeviceData] = {}
    rows: list[tuple] = []
    for root in args.runs:
        store = RunStore(Path(root))
        for run in store.list_runs():
            cfg = store.read_config(run.id)
            if run.status != "completed" or cfg.get("precise_bn"):
                continue
            config = TrainConfig.from_dict(cfg)
            key = (config.dataset, config.val_size, config.split_seed, config.subset)
            if key not in datas:
                datas[key] = DeviceData(load_splits(config), config, device)
            data = datas[key]
            model = create_model(store.root / run.id).to(device)
            before = val_and_test(model, data)
            t = time.perf_counter()
            recalibrate_bn(model, data.x_train[:args.images], data, 500)
            seconds = time.perf_counter() - t
            after = val_and_test(model, data)
            rows.append((cfg.get("model"), recipe(cfg), config.seed, run.id, *before, *after, seconds))
            print(rows[-1], flush=True)
    if not rows:
        print("no completed runs without precise_bn in the given stores", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: (r[1], r[2]))
    deltas = [r[7] - r[5] for r in rows]
    lines = [f"# Precise BN on trained runs — test accuracy before and after recalibrating on {args.images:,} "
             "training images", "",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}; torch "
             f"{torch.__version__}, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}",
             f"- stores: {', '.join(args.runs)}; every completed run without precise_bn, final-epoch weights",
             f"- test accuracy change: mean {statistics.mean(deltas):+.3f} points over {len(rows)} runs; "
             f"{sum(d > 0.005 for d in deltas)} up, {sum(abs(d) <= 0.005 for d in deltas)} equal, "
             f"{sum(d < -0.005 for d in deltas)} down; recalibration took {statistics.median(r[8] for r in rows):.2f} s"
             " (median)", "",
             "| network | recipe | seed | run | val % | test % | val % after | test % after | test change |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.2f} | "
                     f"{r[7] - r[5]:+.2f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / (args.output or f"precise-bn-{device.type}.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
