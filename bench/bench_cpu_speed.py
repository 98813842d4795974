"""Training-step throughput on the CPU: threads, batch size, memory layout, and N seeds batched vs one by one.

    PYTHONPATH=src .venv/bin/python bench/bench_cpu_speed.py                 # all rows (a few minutes)
    PYTHONPATH=src .venv/bin/python bench/bench_cpu_speed.py --steps 10      # quick check

Times the real training step (train/step.py: augmentation, forward, backward, SGD, schedule) on MNIST for
--steps steps after 3 warm-up steps, the rows interleaved over --repeats rounds (a shared machine's load
changes while it runs; the load average is printed per row). Writes bench/results/cpu-speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from convladder.train.batched import widen
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, load_splits
from convladder.train.optim import schedule_tables
from convladder.train.runenv import build_model, cpu_model
from convladder.train.step import TrainStep

RESULTS = Path(__file__).parent / "results"


def images_per_s(splits, threads: int, batch: int, copies: int, channels_last: bool, steps: int) -> float:
    torch.set_num_threads(threads)
    cfg = TrainConfig(batch_size=batch, device="cpu")
    data = DeviceData(splits, cfg, torch.device("cpu"))
    seeds = list(range(1, copies + 1))
    nets = [build_model("tiny8k", data.image_shape, s)[0] for s in seeds]
    model = widen(nets) if copies > 1 else nets[0]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(batch))
    step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(s) for s in seeds],
                     lrs, moms, channels_last=channels_last)
    model.train()
    step.new_epoch()
    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * copies / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    splits = load_splits(TrainConfig())
    rows = [  # threads, batch, copies, channels_last
        (1, 128, 1, False), (2, 128, 1, False), (1, 256, 1, False), (2, 256, 1, False), (1, 512, 1, False),
        (2, 512, 1, False), (1, 128, 1, True), (1, 128, 5, False), (2, 128, 5, False),
    ]
    got: dict[tuple, list[float]] = {r: [] for r in rows}
    loads: dict[tuple, list[float]] = {r: [] for r in rows}
    for _ in range(args.repeats):
        for r in rows:
            steps = max(4, args.steps // r[2])
            got[r].append(images_per_s(splits, *r, steps=steps))
            loads[r].append(os.getloadavg()[0])
            print(r, f"{got[r][-1]:.0f} img/s, load {loads[r][-1]:.1f}", flush=True)
    lines = ["# CPU training-step throughput — tiny8k, MNIST", "",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores (shared with other work; 1-min load average per "
             f"measurement shown); torch {torch.__version__}, python {sys.version.split()[0]}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}",
             f"- the training step of train/step.py (augmentation + forward + backward + SGD), {args.steps} steps "
             f"after 3 warm-up steps, rows interleaved over {args.repeats} rounds; images/s summed over copies", "",
             "| threads | batch | copies (seeds) | channels_last | images/s (min / median / max) | load avg during |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        v = got[r]
        lines.append(f"| {r[0]} | {r[1]} | {r[2]}{' batched' if r[2] > 1 else ''} | {'on' if r[3] else 'off'} | "
                     f"{min(v):,.0f} / {statistics.median(v):,.0f} / {max(v):,.0f} | "
                     f"{min(loads[r]):.1f}-{max(loads[r]):.1f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu-speed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
