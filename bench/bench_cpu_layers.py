"""convladder's CPU dropout and max-pool layers against torch's, timed as the whole training step of tiny8k.

    PYTHONPATH=src .venv/bin/python bench/bench_cpu_layers.py                 # 2 batch sizes x 2 thread counts
    PYTHONPATH=src .venv/bin/python bench/bench_cpu_layers.py --rounds 2      # quick check

The same tiny8k (seed 1) trains with four layer sets: torch's `nn.Dropout` and `nn.MaxPool2d`, convladder's
`Dropout` only, its `MaxPool2d` only, and both (what `spec/build.py` builds). Each set runs the real step
(train/step.py: augmentation, forward, backward, SGD, schedule) on MNIST for ~12,000 images after 3 warm-up
steps; the sets are interleaved over --rounds rounds, because a shared machine's speed drifts while it runs, and
the ratio against torch's layers is taken within each round. Writes bench/results/cpu-layers.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from convladder.fileio import atomic_write_text
from convladder.spec import build
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, load_splits
from convladder.train.optim import schedule_tables
from convladder.train.runenv import build_model, cpu_model
from convladder.train.step import TrainStep

RESULTS = Path(__file__).parent / "results"
LAYER_SETS = {  # name -> (convladder's Dropout, convladder's MaxPool2d)
    "torch's layers": (False, False),
    "convladder Dropout": (True, False),
    "convladder MaxPool2d": (False, True),
    "both (built by spec)": (True, True),
}


def with_layers(model: nn.Module, own_dropout: bool, own_pool: bool) -> nn.Module:
    """Swap convladder's Dropout/MaxPool2d for torch's where the set says so (same arguments, no weights)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, build.Dropout) and not own_dropout:
                setattr(parent, name, nn.Dropout(child.p))
            elif isinstance(child, build.MaxPool2d) and not own_pool:
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding, child.dilation,
                                                   ceil_mode=child.ceil_mode))
    return model


def images_per_s(data: DeviceData, batch: int, layers: tuple[bool, bool], images: int) -> float:
    cfg = TrainConfig(batch_size=batch, device="cpu")
    model = with_layers(build_model("tiny8k", data.image_shape, 1)[0], *layers)
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(batch))
    step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(1)], lrs, moms)
    return step_images_per_s(step, model, batch, images)


def step_images_per_s(step, model: nn.Module, batch: int, images: int, crop: int = 0) -> float:
    """Training images per second of `step` (a TrainStep or ParallelStep) over ~`images` images, after 3 warm-up steps."""
    model.train()
    step.new_epoch(crop)
    for _ in range(3):
        step()
    steps = max(4, images // batch)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=12000, help="training images per measurement")
    args = ap.parse_args(argv)
    cfg = TrainConfig()
    data = DeviceData(load_splits(cfg), cfg, torch.device("cpu"))
    loads = [os.getloadavg()[0]]
    lines = ["# convladder's CPU Dropout and MaxPool2d against torch's — tiny8k training step, MNIST", "",
             machine_line(),
             f"- the training step of train/step.py, ~{args.images:,} images per measurement after 3 warm-up steps, "
             f"the layer sets interleaved over {args.rounds} rounds; speed-up = median over rounds of the ratio "
             "to torch's layers in the same round", ""]
    table = ["| threads | batch | layers | images/s (min / median / max) | speed-up vs torch's layers |",
             "|---|---|---|---|---|"]
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for batch in (256, 128):
            got: dict[str, list[float]] = {name: [] for name in LAYER_SETS}
            for _ in range(args.rounds):
                for name, layers in LAYER_SETS.items():
                    got[name].append(images_per_s(data, batch, layers, args.images))
                loads.append(os.getloadavg()[0])
                print(threads, batch, {k: round(v[-1]) for k, v in got.items()}, flush=True)
            base = got["torch's layers"]
            for name, v in got.items():
                ratio = statistics.median(a / b for a, b in zip(v, base))
                table.append(f"| {threads} | {batch} | {name} | {spread(v)} | {ratio:.2f}x |")
    write_results("cpu-layers.md", lines, table, loads)
    return 0


def spread(values: list[float]) -> str:
    """'min / median / max' of images/s."""
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


def machine_line() -> str:
    """A results header's machine line: CPU, cores, torch and python versions, the time now."""
    return (f"- machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, python "
            f"{sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}")


def write_results(name: str, lines: list[str], table: list[str], loads: list[float]) -> None:
    """Header lines (the load average seen while it ran added as the 5th), then the table: bench/results/<name>."""
    lines.insert(4, f"- 1-min load average {min(loads):.2f}-{max(loads):.2f} while it ran (other work on the machine)")
    text = "\n".join(lines + table) + "\n"
    atomic_write_text(RESULTS / name, text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
