"""Weight EMA as a one-change ladder step: baseline vs EMA per seed, and three ways to give the EMA its BN statistics.

    convladder ladder run bench/ladder-ema-5k.yaml --seeds 3 --runs R
    PYTHONPATH=src .venv/bin/python bench/bench_ema.py --runs R [--images 10000] [--output ema-5k.md]

Reads the ladder's runs in store R (completed runs of one network; `ema` 0 = baseline, > 0 = EMA). Per seed:
final-epoch and best-epoch (by val) test accuracy of each step, and the EMA run's own live weights (metrics.jsonl
`live_test_acc`; the EMA never feeds back into training, so they are the baseline's weights when the runs match).
Then, for each EMA run, its final EMA weights with BatchNorm statistics from: (a) the average (what training
saves), (b) the live model at the end (resume.pt), (c) precise BN: recomputed on the first --images training
images (train/step.py `recalibrate_bn`) — val and test of each, nothing selected on test.
Writes bench/results/<output> and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from convladder.fileio import atomic_write_text
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, load_splits
from convladder.train.models import create_model
from convladder.train.result import median_value
from convladder.train.runenv import cpu_model
from convladder.train.step import recalibrate_bn

sys.path.insert(0, str(Path(__file__).parent))
from bench_precise_bn import val_and_test  # noqa: E402  (the one val/test evaluation of the precise-BN bench)

RESULTS = Path(__file__).parent / "results"


def stats(values: list[float]) -> str:
    """min / median / max, by the project's one median rule (the lower of the middle two)."""
    return (f"{min(values):.2f} / {median_value(values):.2f} / {max(values):.2f}" if values else "-")


def bn_variants(folder: Path, data: DeviceData, images: int) -> dict[str, list[float]]:
    """[val %, test %] of the run's final EMA weights with each source of BatchNorm statistics."""
    ema = create_model(folder)
    out = {"averaged (saved)": val_and_test(ema, data)}
    live = torch.load(folder / "resume.pt", weights_only=True)["model"]
    state = ema.state_dict()
    bn = {k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    ema.load_state_dict({k: (live[k] if k in bn else v) for k, v in state.items()})
    out["live model's"] = val_and_test(ema, data)
    recalibrate_bn(ema, data.x_train[:images], data, 500)
    out[f"precise BN ({images:,} images)"] = val_and_test(ema, data)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="the ladder's run store")
    ap.add_argument("--images", type=int, default=10000, help="training images for precise BN")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default="ema-5k.md", help="results file name under bench/results/")
    ap.add_argument("--label", default="frontier5k", help="the network's name in the title")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = RunStore(Path(args.runs))
    by_seed: dict[int, dict[str, dict]] = {}
    configs = {}
    for run in store.list_runs(status="completed"):
        cfg = store.read_config(run.id)
        step = "ema" if cfg.get("ema") else "baseline"
        rows = store.read_metrics(run.id)
        by_seed.setdefault(cfg["seed"], {})[step] = {"run": run.id, "result": store.read_result(run.id),
                                                     "last": rows[-1], "cfg": cfg}
        configs[step] = cfg
    if not by_seed:
        print(f"no completed runs in {args.runs}", file=sys.stderr)
        return 1
    seeds = sorted(by_seed)
    done = {step: [s for s in seeds if step in by_seed[s]] for step in ("baseline", "ema")}
    cfg = configs.get("ema") or configs["baseline"]
    decay = configs["ema"]["ema"] if "ema" in configs else None
    params = store.get(next(iter(by_seed[seeds[0]].values()))["run"]).params
    lines = [f"# Weight EMA on {args.label} ({params:,} params): one-change ladder step (bench/ladder-ema-5k.yaml)", "",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores shared with other engineers' jobs, torch threads "
             f"{cfg.get('threads')} per run, niced; torch {torch.__version__}, python {sys.version.split()[0]}; "
             f"table made {time.strftime('%Y-%m-%d %H:%M')} UTC",
             f"- recipe: {cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']:g} "
             f"{cfg['schedule']}, augmentation on, {cfg['val_size']:,} validation images; EMA decay {decay} per step",
             f"- seeds finished: baseline {len(done['baseline'])} ({', '.join(map(str, done['baseline'])) or '-'}), "
             f"EMA {len(done['ema'])} ({', '.join(map(str, done['ema'])) or '-'}) of 3 planned",
             f"- store: {args.runs}; `PYTHONPATH=src python bench/bench_ema.py --runs {args.runs}` remakes this file",
             "", "## Test accuracy per seed (%)", "",
             "| seed | baseline final | baseline best epoch (val) | EMA final (EMA weights) | EMA best epoch (val, "
             "EMA weights) | EMA run's live weights, final | EMA - live, same run | wall s baseline / EMA |",
             "|---|---|---|---|---|---|---|---|"]
    cols: dict[str, list[float]] = {k: [] for k in ("bf", "bb", "ef", "eb", "el", "d")}

    def cell(entry: dict | None, key: str, part: str = "final") -> str:
        if entry is None:
            return "-"
        value = entry["result"][part]["test_acc"] if part != "live" else entry["last"].get("live_test_acc")
        cols[key].append(value)
        return f"{value:.2f}"

    def live_cell(e: dict | None, key: str, best: bool) -> str:
        """The baseline's figure from the EMA run's live weights (the same weights: see the check below)."""
        if e is None:
            return "-"
        rows = store.read_metrics(e["run"])
        row = rows[-1]
        if best:  # the recorder's rule: the first epoch with the highest val accuracy
            row = max(rows, key=lambda r: (r["live_val_acc"], -r["epoch"]))
        cols[key].append(row["live_test_acc"])
        return f"{row['live_test_acc']:.2f}†"

    for s in seeds:
        b, e = by_seed[s].get("baseline"), by_seed[s].get("ema")
        cells = [cell(b, "bf") if b else live_cell(e, "bf", False),
                 cell(b, "bb", "best") if b else live_cell(e, "bb", True),
                 cell(e, "ef"), cell(e, "eb", "best"), cell(e, "el", "live")]
        diff = "-"
        if e is not None:
            cols["d"].append(e["result"]["final"]["test_acc"] - e["last"]["live_test_acc"])
            diff = f"{cols['d'][-1]:+.2f}"
        walls = " / ".join(f"{x['result']['wall_time_s']:.0f}" if x else "-" for x in (b, e))
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {diff} | {walls} |")
    lines.append("| min / median / max | " + " | ".join(stats(cols[k]) for k in ("bf", "bb", "ef", "eb", "el"))
                 + f" | {stats(cols['d'])} | |")
    same = [s for s in done["ema"] if s in done["baseline"]]
    if same:
        match = all(by_seed[s]["ema"]["last"]["live_test_acc"] == by_seed[s]["baseline"]["result"]["final"]["test_acc"]
                    for s in same)
        epochs_match = all([r.get("live_test_acc") for r in store.read_metrics(by_seed[s]["ema"]["run"])]
                           == [r.get("test_acc") for r in store.read_metrics(by_seed[s]["baseline"]["run"])]
                           for s in same)
        lines += ["", f"The EMA runs' live weights {'equal' if match and epochs_match else 'do NOT equal'} the baseline "
                  f"runs' test accuracy at every epoch on seed(s) {', '.join(map(str, same))} (the average never feeds "
                  "back into training)."]
    if any("baseline" not in by_seed[s] and "ema" in by_seed[s] for s in seeds):
        lines += ["", "† no baseline run of this seed: the figure is the EMA run's own live weights (metrics.jsonl "
                  "`live_test_acc`; best epoch by `live_val_acc`), which are the baseline's weights as the check "
                  "above shows."]
    if done["ema"]:
        lines += ["", "## EMA minus live weights, epoch by epoch (same runs; mean over the EMA seeds, points)", "",
                  "| epoch | val | test |", "|---|---|---|"]
        per_run = [store.read_metrics(by_seed[s]["ema"]["run"]) for s in done["ema"]]
        for i, row in enumerate(per_run[0]):
            if "live_test_acc" not in row:
                continue
            gap = {k: sum(r[i][f"{k}_acc"] - r[i][f"live_{k}_acc"] for r in per_run) / len(per_run)
                   for k in ("val", "test")}
            lines.append(f"| {row['epoch']} | {gap['val']:+.2f} | {gap['test']:+.2f} |")
        config = TrainConfig.from_dict(configs["ema"])
        data = DeviceData(load_splits(config), config, torch.device("cpu"))
        lines += ["", f"## BatchNorm statistics for the EMA weights (final epoch; val % / test %)", "",
                  "| seed | averaged with the weights (saved) | the live model's at the end | precise BN |",
                  "|---|---|---|---|"]
        sums: dict[str, list[float]] = {}
        for s in done["ema"]:
            variants = bn_variants(store.root / by_seed[s]["ema"]["run"], data, args.images)
            for name, (_, test) in variants.items():
                sums.setdefault(name, []).append(test)
            lines.append(f"| {s} | " + " | ".join(f"{v:.2f} / {t:.2f}" for v, t in variants.values()) + " |")
            print(lines[-1], flush=True)
        lines.append("| test min / median / max | " + " | ".join(stats(v) for v in sums.values()) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
