"""Benchmark sweeps: the same trials in-process vs on a local Ray; overhead, throughput, identical results.

    .venv/bin/python bench/bench_sweep.py                                   # 4 trials, MNIST subset, CPU
    .venv/bin/python bench/bench_sweep.py --dataset synthetic --subset 512  # no MNIST needed
    .venv/bin/python bench/bench_sweep.py --device cuda --gpus-per-trial 0.25 --trials 4 --subset 20000
                                                                            # GPU sharing (4 trials per GPU)

Writes bench/results/sweep-<device>.md and prints it. Ray times are given with and without starting Ray
(ray.init and the first worker imports are a fixed cost; a long sweep pays them once). On a shared machine
other processes take CPU too: the table records the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from convladder.executors.base import InProcessExecutor
from convladder.executors.sweep import run_sweep, sweep_summary
from convladder.executors.sweepspec import parse_sweep
from convladder.train.runenv import cpu_model

RESULTS = Path(__file__).parent / "results"
TEMPLATE = ("c1[conv3x3({c1}, bias=false) relu bn] c2[conv3x3(16, bias=false) relu bn] "
            "t1[maxpool2x2 conv1x1(8)] c3[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10)]")


def sweep_data(args: argparse.Namespace) -> dict:
    """A grid of `trials` widths of the first conv (studied), one seed each."""
    widths = [4 + 4 * i for i in range(args.trials)]
    base = {"dataset": args.dataset, "subset": args.subset, "epochs": args.epochs, "val_size": 0,
            "batch_size": args.batch_size, "device": args.device, "threads": args.threads,
            "clean_train_eval": 0, "augment": False}
    return {"name": "bench", "model": TEMPLATE, "search": "grid", "seeds": 1, "base": base,
            "params": {"c1": {"role": "studied", "values": widths}}}


def accs(summary: dict) -> dict[str, object]:
    return {r["trial"]: (r["test_acc"] or {}).get("min") for r in summary["trials"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--subset", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per trial in both executors (same count = bit-identical results on CPU)")
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="torch threads of the in-process baseline (default: --threads; 0 = all cores, the "
                         "fastest in-process setting, but then results need not be bit-identical)")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--gpus-per-trial", type=float, default=0.0)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--skip-inprocess", action="store_true")
    args = ap.parse_args(argv)

    import ray

    from convladder.executors.ray_executor import RayExecutor

    spec = parse_sweep(sweep_data(args))
    load0 = os.getloadavg()
    rows: list[tuple[str, str]] = []
    inproc_s = None
    if not args.skip_inprocess:
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            baseline = spec
            if args.baseline_threads is not None:
                baseline = parse_sweep({**sweep_data(args), "base": {**sweep_data(args)["base"],
                                                                      "threads": args.baseline_threads}})
            local = sweep_summary(run_sweep(baseline, root, InProcessExecutor()))
            inproc_s = time.perf_counter() - t0
    executor = RayExecutor(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                           num_cpus=args.num_cpus)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        executor.connect()
        t1 = time.perf_counter()
        remote = sweep_summary(run_sweep(spec, root, executor))
        t2 = time.perf_counter()
    ray_total, ray_init, ray_run = t2 - t0, t1 - t0, t2 - t1
    ray.shutdown()
    load1 = os.getloadavg()

    n = args.trials
    rows += [
        ("machine", f"{platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs"
                    + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")),
        ("python / torch / ray", f"{platform.python_version()} / {torch.__version__} / {ray.__version__}"),
        ("sweep", f"{n} trials x 1 seed, {args.dataset} subset {args.subset}, {args.epochs} epoch(s), batch "
                  f"{args.batch_size}, device {args.device}, torch threads {args.threads or 'default'}"
                  + (f" (in-process baseline: {args.baseline_threads or 'default'})"
                     if args.baseline_threads is not None else "")),
        ("ray resources", f"{args.cpus_per_trial:g} CPU + {args.gpus_per_trial:g} GPU per trial, "
                          f"local Ray with {args.num_cpus or os.cpu_count()} CPUs"),
        ("load average before / after", f"{load0[0]:.2f} / {load1[0]:.2f}"),
    ]
    if inproc_s is not None:
        rows.append(("in-process wall", f"{inproc_s:.1f} s ({n / inproc_s * 60:.1f} trials/min)"))
    rows += [
        ("ray wall (incl. ray.init)", f"{ray_total:.1f} s ({n / ray_total * 60:.1f} trials/min)"),
        ("  of which ray.init", f"{ray_init:.1f} s"),
        ("ray wall (excl. ray.init)", f"{ray_run:.1f} s ({n / ray_run * 60:.1f} trials/min)"),
    ]
    if inproc_s is not None:
        rows += [
            ("ray / in-process (incl. init)", f"{ray_total / inproc_s:.2f}x"),
            ("ray / in-process (excl. init)", f"{ray_run / inproc_s:.2f}x"),
            ("identical test accuracies", "yes" if accs(local) == accs(remote) else
             f"no: {accs(local)} vs {accs(remote)}"),
        ]
    rows.append(("completed trials (ray)", f"{remote['counts']['completed']}/{n}"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join([f"| {'what':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
                     + [f"| {k:{width}} | {v} |" for k, v in rows]) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sweep-{args.device}.md"
    out.write_text(f"# bench_sweep ({time.strftime('%Y-%m-%d %H:%M')})\n\n`{' '.join(sys.argv[1:]) or '(defaults)'}`\n\n"
                   + text)
    print(text, end="")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
