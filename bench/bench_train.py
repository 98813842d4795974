"""Benchmark the trainer: the reference network over a list of seeds vs the pytorch/examples MNIST recipe.

    .venv/bin/python bench/bench_train.py --seeds 6-10 --chosen-on "seeds 1-5"   # fresh seeds (the lead runs this)
    .venv/bin/python bench/bench_train.py --seeds 1 --epochs 1 --subset 2000       # check it works

Every run is written to a run store (--runs DIR, default a new folder under /tmp, kept), so each figure of the
table can be checked against the runs' per-epoch metrics (`convladder runs list --runs DIR`). Writes
bench/results/train-<device>.md (or --output) and prints it. Timings never belong in tests.

Time to target is train.result.TIME_TO_TARGET (training + evaluation of the epochs up to the first at the
target, warm-up apart), the definition bench_gpu.py uses; the process's wall clock is its own column.
On CPU the pytorch/examples recipe (1.2M params, 14 epochs) is timed on a slice of one epoch and
extrapolated; the table says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from convladder.fileio import atomic_write_text
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig, parse_overrides
from convladder.train.loop import parse_seed_list, resolve_device, train
from convladder.train.result import (
    MEDIAN_RULE,
    POTENTIAL_CAP,
    POTENTIAL_NOTE,
    TIME_TO_TARGET,
    RunResult,
    median_value,
    min_median_max,
    potential_shown,
)
from convladder.train.runenv import cpu_model

RESULTS = Path(__file__).parent / "results"
EXAMPLES = dict(model="pytorch-mnist", optimizer="adadelta", lr=1.0, schedule="step", step_size=1, gamma=0.7,
                batch_size=64, augment=False, val_size=0, clean_train_eval=0, nesterov=False, momentum=0.0)
EXAMPLES_EPOCHS = 14  # pytorch/examples mnist default
TAG = "bench:train"


def _fmt(x, suffix=""):
    return "-" if x is None else (f"{x:.2f}{suffix}" if isinstance(x, float) else f"{x}{suffix}")


def spread(values: list[float | None], digits: int = 2) -> str:
    """'min / median / max' over the values given (median: MEDIAN_RULE), '(k/N)' when only k of N have one."""
    s = min_median_max(values)
    if s is None:
        return f"- (0/{len(values)})" if values else "-"
    text = " / ".join(f"{s[k]:.{digits}f}" for k in ("min", "median", "max"))
    have = sum(v is not None for v in values)
    return text + (f" ({have}/{len(values)})" if have < len(values) else "")


def _potential(value: float | None, train: float | None) -> str:
    return potential_shown(value, train, raw=False)  # capped at 100 with '*', near chance "not meaningful", as the trainer prints


def _split_sizes(store: RunStore, results: list[RunResult]) -> str:
    """The validation images the runs actually held out (config.json's val_size: --subset N keeps N // 10)."""
    sizes = sorted({store.read_config(r.run_id).get("val_size") for r in results if r.run_id})
    return ", ".join(str(v) for v in sizes) or "-"


def _threads(store: RunStore, results: list[RunResult]) -> str:
    used = sorted({store.read_env(r.run_id).get("torch_threads") for r in results if r.run_id}, key=str)
    return ", ".join(str(t) for t in used) or "-"


def examples_row(args, store: RunStore, device: torch.device) -> tuple[RunResult, float, str, float | None]:
    """The pytorch/examples recipe: measured in full on a GPU, on CPU timed on a slice of one epoch and extrapolated."""
    if device.type != "cpu":
        ex = train(TrainConfig.from_dict({**EXAMPLES, "device": args.device, "epochs": EXAMPLES_EPOCHS,
                                          "tags": [TAG, "bench:examples"]}), store)
        return ex, ex.wall_time_s, f"measured, {EXAMPLES_EPOCHS} epochs, whole process", ex.final["test_acc"]
    n = min(args.examples_images, args.subset or args.examples_images)
    ex = train(TrainConfig.from_dict({**EXAMPLES, "device": args.device, "threads": args.threads, "epochs": 1,
                                      "subset": n, "tags": [TAG, "bench:examples"]}), store)
    (row,) = store.read_metrics(ex.run_id)
    eval_s = row["epoch_time_s"] - row["train_time_s"]  # one pass over the 10k test images
    wall = (row["train_time_s"] - ex.warmup_s) / n * 60000 * EXAMPLES_EPOCHS + eval_s * EXAMPLES_EPOCHS
    label = (f"extrapolated training + evaluation: training {n} images took {row['train_time_s']:.1f}s "
             f"({row['train_images_per_s']:.0f} img/s), test pass {eval_s:.1f}s; x 60k images x {EXAMPLES_EPOCHS} epochs")
    return ex, wall, label, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="network (default: the TrainConfig default)")
    ap.add_argument("--seeds", default="1-5", help="seed list: 6-10, 1,3,7 (default 1-5)")
    ap.add_argument("--chosen-on", default=None,
                    help="how the recipe was chosen, said in the table (e.g. 'seeds 1-5, final test accuracy')")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default: the TrainConfig default)")
    ap.add_argument("--subset", type=int, default=0, help="train on the first N images only (quick check)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--runs", default=None, help="run store for every run (default: a new folder under /tmp, kept)")
    ap.add_argument("--examples-images", type=int, default=6400,
                    help="on CPU, images of one epoch to time the pytorch/examples recipe on (then extrapolate)")
    ap.add_argument("--set", action="append", default=[], help="extra key=value config overrides")
    ap.add_argument("--output", default=None, help="results file name under bench/results/ (default: "
                    "train-<device>.md, or train-<device>-<model>.md for --model)")
    args = ap.parse_args(argv)
    seeds = parse_seed_list(args.seeds)
    load_before = os.getloadavg()[0]
    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="convladder-bench-train-", dir="/tmp"))
    store = RunStore(runs)

    device = resolve_device(args.device)
    base = {"device": args.device, "threads": args.threads, "subset": args.subset, "tags": [TAG]}
    if args.model:
        base["model"] = args.model
    if args.epochs:
        base["epochs"] = args.epochs
    base.update(parse_overrides(args.set))
    results = []
    for seed in seeds:
        r = train(TrainConfig.from_dict({**base, "seed": seed}), store)
        print(f"seed {r.seed}: {r.summary()}  wall {r.wall_time_s:.1f}s  to target {_fmt(r.train_time_to_target_s, 's')} "
              f"(training + evaluation)  train {r.extra['train_images_per_s']:.0f} img/s  run {r.run_id}", flush=True)
        results.append(r)
    cfg = TrainConfig.from_dict({**base, "seed": seeds[0]})
    ex, ex_wall, ex_label, ex_acc = examples_row(args, store, device)
    text = render(args, cfg, device, results, store, runs, load_before, (ex, ex_wall, ex_label, ex_acc))
    # the default network's table is train-<device>.md; another network's gets its own file; a quick check on a
    # subset is no measurement: its table stays beside its runs unless --output names a file
    name = args.output or (f"train-{device.type}.md" if args.model is None else f"train-{device.type}-{args.model}.md")
    out = (runs if args.subset and not args.output else RESULTS) / name
    atomic_write_text(out, text)
    print(text)
    print(f"written to {out}; runs in {runs}")
    return 0


def render(args, cfg: TrainConfig, device: torch.device, results: list[RunResult], store: RunStore, runs: Path,
           load_before: float, examples: tuple[RunResult, float, str, float | None]) -> str:
    ex, ex_wall, ex_label, ex_acc = examples
    target = cfg.target
    finals = [r.final.get("test_acc") for r in results]
    walls = [r.wall_time_s for r in results]
    times = [r.train_time_to_target_s for r in results]
    # every epoch's training + evaluation (the clock of TIME_TO_TARGET, to the end), from the stored metrics
    epochs_s = [sum(m.get("epoch_time_s", 0.0) for m in store.read_metrics(r.run_id)) - r.warmup_s for r in results]
    selected = sorted({str(r.best.get("selected_by")) for r in results})
    dev = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    seed_text = args.seeds + (f" (recipe chosen on {args.chosen_on}; these seeds report it)" if args.chosen_on else "")
    over = any((r.potential or 0) > POTENTIAL_CAP for r in results)
    lines = [
        f"# Training benchmark — {dev}",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {_threads(store, results)} (env.json of "
        f"the runs); 1-min load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        "(other work on the machine)",
        f"- torch {torch.__version__}, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}",
        f"- seeds: {seed_text}; runs: `{runs}` (tag `{TAG}`; per-epoch metrics in each run's metrics.jsonl)",
        f"- recipe: {cfg.optimizer} lr {cfg.lr} {cfg.schedule}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
        f"augment {cfg.augment} (rotate {cfg.rotate}, translate {cfg.translate}, scale {cfg.scale}), "
        f"label smoothing {cfg.label_smoothing}, precise BN {cfg.precise_bn or 'off'}, "
        f"val split {_split_sizes(store, results)} (images held out, from the runs' config.json)"
        + (f", crop {cfg.crop} for {cfg.crop_epochs} epochs" if cfg.crop else "")
        + (f", data parallel {cfg.data_parallel} (replicas on threads, 1 intra-op thread each)" if cfg.data_parallel > 1 else "")
        + (f", precision {cfg.precision}" + (" (bf16 autocast in the training step, evaluation fp32)"
                                              if cfg.precision == "bf16" and device.type == "cpu" else "")
           if cfg.precision != "auto" else "")
        + (f", subset {cfg.subset}" if cfg.subset else ""),
        f"- training throughput (forward+backward+augmentation), median epoch: "
        f"{median_value([r.extra.get('train_images_per_s') for r in results]):.0f} images/s",
        f"- min / median / max over seeds; {MEDIAN_RULE}; best-epoch = the epoch picked by {', '.join(selected)} "
        "(its test accuracy shown)",
        f"- {TIME_TO_TARGET}; (k/N): only k of the N seeds reached it, the spread is over those k",
        "- wall s: the whole process of a run (data loading, model build, training, evaluation, saving)",
        "",
        f"| network | params | seeds | epochs | final test acc % | final >= {target} % | best-epoch test acc % | "
        f"wall s | time to >= {target} % s (training + evaluation) | warm-up s | seeds that reached it at some epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {cfg.model} | {results[0].params:,} | {len(results)} | {cfg.epochs} | {spread(finals)} | "
        f"{sum(f is not None and f >= target for f in finals)}/{len(results)} | "
        f"{spread([r.best.get('test_acc') for r in results])} | {spread(walls, 1)} | {spread(times, 1)} | "
        f"{spread([r.warmup_s for r in results])} | {sum(t is not None for t in times)}/{len(results)} |",
        f"| pytorch-examples (Adadelta, StepLR 0.7, batch 64) | {ex.params:,} | 1 | {EXAMPLES_EPOCHS} | "
        f"{_fmt(ex_acc)} | - | - | {ex_wall:.1f} ({ex_label}) | - | - | - |",
        "",
        (f"Time ratio pytorch-examples / {cfg.model}: {ex_wall / median_value(epochs_s):.1f}x (training + "
         f"evaluation of every epoch, warm-up excluded: {cfg.model} median {median_value(epochs_s):.1f} s from the "
         "runs' metrics.jsonl; examples extrapolated)" if ex_acc is None else
         f"Time ratio pytorch-examples / {cfg.model}: {ex_wall / median_value(walls):.1f}x (median wall time of "
         "the whole process; examples measured)."),
        "",
        "| seed | run | final test % | best epoch | best-epoch test % | gap | potential | verdict | wall s | "
        "to target s (training + evaluation) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r.seed} | {r.run_id} | {_fmt(r.final.get('test_acc'))} | {r.best.get('epoch')} | "
          f"{_fmt(r.best.get('test_acc'))} | {_fmt(r.gap)} | {_potential(r.potential, r.final.get('train_acc'))} | {r.verdict} | "
          f"{r.wall_time_s:.1f} | {_fmt(r.train_time_to_target_s)} |" for r in results],
    ]
    if over:
        lines += ["", POTENTIAL_NOTE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
