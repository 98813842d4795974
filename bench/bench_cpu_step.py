"""Training-step speed of tiny8k on the CPU: data parallel (`data_parallel`), central crops (`crop`), precision.

    PYTHONPATH=src .venv/bin/python bench/bench_cpu_step.py                # 5 interleaved rounds, batch 128
    PYTHONPATH=src .venv/bin/python bench/bench_cpu_step.py --rounds 2     # quick check
    PYTHONPATH=src .venv/bin/python bench/bench_cpu_step.py --precisions fp32,bf16 --crops 0,24 --output cpu-step-bf16.md

The real step (train/step.py, or train/parallel.py's replicas: augmentation, centre crop, forward, backward,
SGD, schedule) on MNIST, ~12,000 images per measurement after 3 warm-up steps. Rows: one model with all cores'
intra-op threads, and N replicas on N threads with one intra-op thread each, on whole 28x28 images and on crops
26, 24, 22, 20. The rows are interleaved over --rounds rounds, because a shared machine's speed drifts while it
runs, and each row's speed-up over one model on whole images is taken within each round. MACs per image come
from the network table at each input size. Writes bench/results/cpu-step.md.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from bench_cpu_layers import machine_line, spread, step_images_per_s, write_results  # this folder is on sys.path when a bench runs as a script

from convladder.analysis.table import summarize
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, load_splits
from convladder.train.optim import schedule_tables
from convladder.train.runenv import build_model
from convladder.train.parallel import ParallelStep
from convladder.train.step import TrainStep

CROPS = (0, 26, 24, 22, 20)


def images_per_s(data: DeviceData, batch: int, crop: int, replicas: int, images: int, precision: str = "fp32") -> float:
    """Training images per second of one (replicas = 1, all cores' threads) or N data-parallel replicas."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(1 if replicas > 1 else cores)
    cfg = TrainConfig(batch_size=batch, device="cpu", data_parallel=replicas, precision=precision)
    model = build_model("tiny8k", data.image_shape, 1)[0]
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(batch))
    cpu, gen = torch.device("cpu"), torch.Generator().manual_seed(1)
    step = (ParallelStep(model, data, cfg, cpu, gen, lrs, moms, replicas) if replicas > 1
            else TrainStep(model, data, cfg, cpu, [gen], lrs, moms))
    return step_images_per_s(step, model, batch, images, crop)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=12000, help="training images per measurement")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--crops", default=",".join(map(str, CROPS)), help="crop sizes (0 = whole images)")
    ap.add_argument("--precisions", default="fp32", help="precision settings, e.g. fp32,bf16 (bf16 autocast in the step)")
    ap.add_argument("--output", default="cpu-step.md", help="results file under bench/results/")
    args = ap.parse_args(argv)
    crops = [int(c) for c in args.crops.split(",")]
    precisions = args.precisions.split(",")
    cfg = TrainConfig()
    data = DeviceData(load_splits(cfg), cfg, torch.device("cpu"))
    model = build_model("tiny8k", data.image_shape, 1)[0]
    macs = {c: summarize(model, (1, c or 28, c or 28)).total_macs for c in crops}
    loads = [os.getloadavg()[0]]
    lines = ["# tiny8k training step on the CPU: data parallel (`data_parallel`), central crops (`crop`) and precision "
             "(`precision`), MNIST", "",
             machine_line(),
             f"- the training step of train/step.py, batch {args.batch_size}, ~{args.images:,} images per "
             f"measurement after 3 warm-up steps, the rows interleaved over {args.rounds} rounds; speed-up = "
             "median over rounds of the ratio to one model on whole images in the same round", ""]
    cores = os.cpu_count() or 1
    counts = [1, cores] if cores > 1 else [1]
    rows = [(r, c, p) for p in precisions for r in counts for c in crops]
    base = rows[0]  # the speed-up's reference: one model, the first crop and precision given (fp32 28x28 by default)
    size = lambda c: f"{c}x{c}" if c else "28x28 (whole)"  # noqa: E731
    table = ["| training | precision | crop | MACs per image | images/s (min / median / max) | "
             f"speed-up vs one model, {size(base[1])}, {base[2]} |", "|---|---|---|---|---|---|"]
    got: dict[tuple[int, int, str], list[float]] = {row: [] for row in rows}
    for _ in range(args.rounds):
        for replicas, c, p in rows:
            got[(replicas, c, p)].append(images_per_s(data, args.batch_size, c, replicas, args.images, p))
        loads.append(os.getloadavg()[0])
        print({f"{r}x{c}:{p}": round(v[-1]) for (r, c, p), v in got.items()}, flush=True)
    for (replicas, c, p), v in got.items():
        ratio = statistics.median(a / b for a, b in zip(v, got[base]))
        how = (f"{replicas} replicas x 1 thread (data_parallel={replicas})" if replicas > 1
               else f"one model, {cores} threads")
        table.append(f"| {how} | {p} | {size(c)} | {macs[c]:,} | {spread(v)} | {ratio:.2f}x |")
    write_results(args.output, lines, table, loads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
