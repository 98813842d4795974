"""Benchmark ASHA early stopping: the same lr sweep on a local Ray with and without `scheduler: asha`.

    .venv/bin/python bench/bench_asha.py                       # 8 lr values, MNIST subset, CPU, 1 CPU per trial
    .venv/bin/python bench/bench_asha.py --device cuda --gpus-per-trial 0.25

Prints (and writes bench/results/asha-<device>.md) the wall time of each, the epochs trained in total, the
trials stopped, the best trial each found (ranked as the sweep table ranks: min-over-seeds final validation
accuracy; its test accuracy is printed),
and whether the trials ASHA let finish got exactly the accuracy of the full run (same seeds, threads 1).
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

from convladder.executors.sweep import run_sweep, sweep_summary
from convladder.executors.sweepspec import parse_sweep
from convladder.runs.store import RunStore
from convladder.train.runenv import cpu_model

RESULTS = Path(__file__).parent / "results"
TEMPLATE = ("c1[conv3x3(8, bias=false) relu bn] c2[conv3x3(12, bias=false) relu bn] t1[maxpool2x2 conv1x1(8)] "
            "c3[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10)]")
LRS = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 0.0001, 0.05, 0.2]


def sweep_data(args: argparse.Namespace, asha: bool) -> dict:
    base = {"dataset": args.dataset, "subset": args.subset, "epochs": args.epochs, "val_size": args.val_size,
            "batch_size": 128, "device": args.device, "threads": args.threads, "clean_train_eval": 0,
            "augment": False, "schedule": "none", "nesterov": False}
    data = {"name": "asha" if asha else "full", "model": TEMPLATE, "search": "grid", "seeds": 1, "base": base,
            "params": {"lr": {"role": "studied", "values": LRS[:args.trials]}}}
    if asha:
        data["scheduler"] = {"name": "asha", "grace_period": args.grace, "reduction_factor": args.factor}
    return data


def epochs_trained(root: str) -> int:
    store = RunStore(root)
    return sum(len(store.read_metrics(r.id)) for r in store.list_runs())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--subset", type=int, default=6000)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--gpus-per-trial", type=float, default=0.0)
    args = ap.parse_args(argv)

    import ray

    from convladder.executors.ray_executor import RayExecutor

    executor = RayExecutor(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)
    t0 = time.perf_counter()
    executor.connect()
    init_s = time.perf_counter() - t0
    load0 = os.getloadavg()
    out: dict[str, dict] = {}
    for asha in (False, True):
        with tempfile.TemporaryDirectory() as root:
            t = time.perf_counter()
            summary = sweep_summary(run_sweep(parse_sweep(sweep_data(args, asha)), root, executor))
            out["asha" if asha else "full"] = {"wall": time.perf_counter() - t, "summary": summary,
                                               "epochs": epochs_trained(root)}
    load1 = os.getloadavg()
    ray.shutdown()

    def best(s: dict) -> str:
        top = next((r for r in s["trials"] if r["rank"] == 1), None)
        return f"lr={top['values']['lr']:g}: {top['test_acc']['min']:.2f} %" if top else "none completed"

    full, asha = out["full"], out["asha"]
    full_acc = {r["trial"]: (r["test_acc"] or {}).get("min") for r in full["summary"]["trials"]}
    same = all(full_acc[r["trial"]] == r["test_acc"]["min"] for r in asha["summary"]["trials"]
               if r["status"] == "completed")
    n = args.trials
    rows = [
        ("machine", f"{platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs"
                    + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")),
        ("python / torch / ray", f"{platform.python_version()} / {torch.__version__} / {ray.__version__}"),
        ("sweep", f"{n} lr values (SGD momentum 0.9, constant lr), {args.dataset} subset {args.subset} "
                  f"({args.val_size} for validation), {args.epochs} epochs, device {args.device}, "
                  f"{args.cpus_per_trial:g} CPU + {args.gpus_per_trial:g} GPU per trial"),
        ("asha", f"grace {args.grace} epoch(s), reduction factor {args.factor:g}, metric val_acc"),
        ("ray.init (once, not in the walls below)", f"{init_s:.1f} s"),
        ("load average before / after", f"{load0[0]:.2f} / {load1[0]:.2f}"),
        ("full sweep on Ray: wall / epochs trained", f"{full['wall']:.1f} s / {full['epochs']}"),
        ("ASHA sweep on Ray: wall / epochs trained", f"{asha['wall']:.1f} s / {asha['epochs']}"),
        ("ASHA / full wall", f"{asha['wall'] / full['wall']:.2f}x"),
        ("trials completed / stopped (ASHA)", f"{asha['summary']['counts']['completed']} / "
                                              f"{asha['summary']['counts']['stopped']}"),
        ("best trial, full / ASHA", f"{best(full['summary'])} / {best(asha['summary'])}"),
        ("ASHA's finished trials = full run's", "yes" if same else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    text = "\n".join([f"| {'what':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
                     + [f"| {k:{width}} | {v} |" for k, v in rows]) + "\n"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"asha-{args.device}.md"
    path.write_text(f"# bench_asha ({time.strftime('%Y-%m-%d %H:%M')})\n\n`{' '.join(sys.argv[1:]) or '(defaults)'}`"
                    f"\n\n{text}")
    print(text, end="")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
