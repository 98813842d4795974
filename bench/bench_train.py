"""Benchmark the trainer: the reference network over seeds vs the pytorch/examples MNIST recipe.

    .venv/bin/python bench/bench_train.py --seeds 5            # full run (the lead runs this)
    .venv/bin/python bench/bench_train.py --seeds 1 --epochs 1 --subset 5000   # check it works

Writes bench/results/train-<device>.md and prints it. Timings never belong in tests.
On CPU the pytorch/examples recipe (1.2M params, 14 epochs) is timed on a slice of one epoch and
extrapolated; the table says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from convladder.fileio import atomic_write_text
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.loop import resolve_device, train
from convladder.train.runenv import cpu_model

RESULTS = Path(__file__).parent / "results"
EXAMPLES = dict(model="pytorch-mnist", optimizer="adadelta", lr=1.0, schedule="step", step_size=1, gamma=0.7,
                batch_size=64, augment=False, val_size=0, clean_train_eval=0, nesterov=False, momentum=0.0)
EXAMPLES_EPOCHS = 14  # pytorch/examples mnist default


def _fmt(x, suffix=""):
    return "-" if x is None else (f"{x:.2f}{suffix}" if isinstance(x, float) else f"{x}{suffix}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="network (default: the TrainConfig default)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default: the TrainConfig default)")
    ap.add_argument("--subset", type=int, default=0, help="train on the first N images only (quick check)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--examples-images", type=int, default=6400,
                    help="on CPU, images of one epoch to time the pytorch/examples recipe on (then extrapolate)")
    ap.add_argument("--set", action="append", default=[], help="extra key=value config overrides")
    ap.add_argument("--output", default=None, help="results file name under bench/results/ (default: "
                    "train-<device>.md, or train-<device>-<model>.md for --model)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]

    from convladder.train.config import parse_overrides

    device = resolve_device(args.device)
    base = {"device": args.device, "threads": args.threads, "subset": args.subset}
    if args.model:
        base["model"] = args.model
    if args.epochs:
        base["epochs"] = args.epochs
    base.update(parse_overrides(args.set))
    results = []
    for i in range(args.seeds):
        cfg = TrainConfig.from_dict({**base, "seed": 1 + i})
        r = train(cfg)
        threads_used = torch.get_num_threads()  # what the runs used (the examples recipe below sets its own)
        print(f"seed {r.seed}: {r.summary()}  wall {r.wall_time_s:.1f}s  to target {_fmt(r.time_to_target_s, 's')}  "
              f"train {r.extra['train_images_per_s']:.0f} img/s",
              flush=True)
        results.append(r)
    cfg = TrainConfig.from_dict({**base, "seed": 1})

    # pytorch/examples recipe
    if device.type == "cpu":
        n = args.examples_images
        with tempfile.TemporaryDirectory() as tmp:
            store = RunStore(tmp)
            ex = train(TrainConfig.from_dict({**EXAMPLES, "device": args.device, "threads": args.threads, "epochs": 1,
                                              "subset": n}), store)
            (row,) = store.read_metrics(ex.run_id)
        eval_s = row["epoch_time_s"] - row["train_time_s"]  # one pass over the 10k test images
        ex_wall = (row["train_time_s"] - ex.warmup_s) / n * 60000 * EXAMPLES_EPOCHS + eval_s * EXAMPLES_EPOCHS
        ex_label = (f"extrapolated: training {n} images took {row['train_time_s']:.1f}s "
                    f"({row['train_images_per_s']:.0f} img/s), test pass {eval_s:.1f}s; x 60k images x {EXAMPLES_EPOCHS} epochs")
        ex_acc = None
    else:
        ex = train(TrainConfig.from_dict({**EXAMPLES, "device": args.device, "epochs": EXAMPLES_EPOCHS}))
        ex_wall, ex_label, ex_acc = ex.wall_time_s, f"measured, {EXAMPLES_EPOCHS} epochs", ex.final["test_acc"]

    def stat(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    finals = [r.final["test_acc"] for r in results]
    walls = [r.wall_time_s for r in results]
    targets = [r.time_to_target_s for r in results]
    reached = sum(t is not None for t in targets)
    dev = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    lines = [
        f"# Training benchmark — {dev}",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {threads_used}; 1-min load "
        f"average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (other work on the machine)",
        f"- torch {torch.__version__}, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}",
        f"- recipe: {cfg.optimizer} lr {cfg.lr} {cfg.schedule}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
        f"augment {cfg.augment} (rotate {cfg.rotate}, translate {cfg.translate}, scale {cfg.scale}), "
        f"label smoothing {cfg.label_smoothing}, precise BN {cfg.precise_bn or 'off'}, val split {cfg.val_size}"
        + (f", crop {cfg.crop} for {cfg.crop_epochs} epochs" if cfg.crop else "")
        + (f", data parallel {cfg.data_parallel} (replicas on threads, 1 intra-op thread each)" if cfg.data_parallel > 1 else "")
        + (f", precision {cfg.precision}" + (" (bf16 autocast in the training step, evaluation fp32)"
                                              if cfg.precision == "bf16" and device.type == "cpu" else "")
           if cfg.precision != "auto" else "")
        + (f", subset {cfg.subset}" if cfg.subset else ""),
        f"- training throughput (forward+backward+augmentation), median epoch: "
        f"{statistics.median(r.extra['train_images_per_s'] for r in results):.0f} images/s",
        "- min / median / max over seeds; best-epoch = the epoch the validation split selected (test acc shown)",
        "",
        "| network | params | seeds | epochs | final test acc % | best-epoch test acc % | wall s | "
        f"time to >= {cfg.target} % s | seeds reaching it |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {cfg.model} | {results[0].params:,} | {len(results)} | {cfg.epochs} | {stat(finals)} | "
        f"{stat([r.best['test_acc'] for r in results])} | {stat(walls)} | {stat(targets)} | {reached}/{len(results)} |",
        f"| pytorch-examples (Adadelta, StepLR 0.7, batch 64) | {ex.params:,} | 1 | {EXAMPLES_EPOCHS} | "
        f"{_fmt(ex_acc)} | - | {ex_wall:.1f} ({ex_label}) | - | - |",
        "",
        f"Wall-time ratio pytorch-examples / {cfg.model}: {ex_wall / statistics.median(walls):.1f}x "
        f"(median wall time; examples {'extrapolated' if ex_acc is None else 'measured'}).",
        "",
        "| seed | final test % | best epoch | best-epoch test % | gap | potential | verdict | wall s | to target s |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r.seed} | {_fmt(r.final['test_acc'])} | {r.best['epoch']} | {_fmt(r.best['test_acc'])} | {_fmt(r.gap)} | "
          f"{_fmt(r.potential)} | {r.verdict} | {r.wall_time_s:.1f} | {_fmt(r.time_to_target_s)} |" for r in results],
    ]
    text = "\n".join(lines) + "\n"
    # the default network's table is train-<device>.md; another network's gets its own file
    out = RESULTS / (args.output or (f"train-{device.type}.md" if args.model is None
                                     else f"train-{device.type}-{args.model}.md"))
    atomic_write_text(out, text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
