"""Training levers as one-change steps over seeds: each lever's runs against the baseline's, seed by seed.

    PYTHONPATH=src .venv/bin/python bench/bench_levers.py --runs R1 --runs R2 --model frontier5k --epochs 12 \
        [--output levers-5k.md]

Reads every completed run of `--model` at `--epochs` in the stores given. A run's lever is its config's
difference from the default recipe, over the experiment's keys (train/config.py: seeds, names, threads and the
other keys that are not the experiment are left out); the run with no difference is the baseline. Per lever and
seed: final-epoch test accuracy, best-epoch test accuracy (the epoch picked on validation, never on test), the
final validation accuracy, and the paired difference to the baseline's same seed. min / median / max by the
project's one median rule. Nothing here picks a lever: the table is what was measured on the seeds listed.
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
from convladder.spec.notation import format_spec
from convladder.spec.registry import resolve_spec
from convladder.train.config import NOT_THE_EXPERIMENT, TrainConfig
from convladder.train.loop import parse_seed_list
from convladder.train.result import median_value
from convladder.train.runenv import cpu_model

RESULTS = Path(__file__).parent / "results"
# keys a run fills in for itself (the resolved spec, where the data came from): not a lever
FILLED_IN = {"model_spec", "data_root", "tags"}


def stats(values: list[float], signed: bool = False) -> str:
    """min / median / max, by the project's one median rule (the lower of the middle two)."""
    if not values:
        return "-"
    f = "{:+.2f}" if signed else "{:.2f}"
    return " / ".join(f.format(v) for v in (min(values), median_value(values), max(values)))


def lever_of(cfg: dict, default: dict, epochs: int | None = None) -> str:
    """The run's experiment keys that differ from the default recipe, as `key value` words ('' = baseline).

    epochs: the baseline's epochs; a run of another length names it as its lever ('epochs 15')."""
    skip = set(NOT_THE_EXPERIMENT) | FILLED_IN | {"model", "epochs", "teacher_runs"}
    words = [f"{k} {cfg[k]}" for k in sorted(cfg) if k not in skip and k in default and cfg[k] != default[k]
             and not k.startswith("distill_") and k != "teacher"]
    if epochs is not None and cfg.get("epochs") != epochs:
        words.insert(0, f"epochs {cfg.get('epochs')}")
    if cfg.get("teacher"):  # one lever: say what it is, with its temperature and weight (defaults or not)
        words.append(f"distilled from run {cfg['teacher']} (T {cfg.get('distill_temperature')}, weight "
                     f"{cfg.get('distill_weight')})")
    return ", ".join(words)


def collect(stores: list[Path], model: str, epochs: int,
            other_epochs: tuple[int, ...] = ()) -> dict[str, dict[int, dict]]:
    """{lever: {seed: {run, final, best, val, wall, store}}} of the completed runs of `model` at `epochs`, and
    at `other_epochs` as the lever 'epochs N'."""
    default = TrainConfig().to_dict()
    spec = format_spec(resolve_spec(model))  # a ladder records the network as its spec text, train as its name
    out: dict[str, dict[int, dict]] = {}
    for root in stores:
        store = RunStore(root)
        for run in store.list_runs(status="completed"):
            cfg = store.read_config(run.id)
            if cfg.get("epochs") not in (epochs, *other_epochs) or model not in (cfg.get("model"), run.model) and spec not in (
                    cfg.get("model"), cfg.get("model_spec")):
                continue
            result = store.read_result(run.id)
            lever = lever_of(cfg, default, epochs)
            seed = int(cfg["seed"])
            if seed in out.get(lever, {}):  # the same job twice (two stores): keep the first, say nothing new
                continue
            out.setdefault(lever, {})[seed] = {
                "run": run.id, "final": result["final"]["test_acc"], "best": result["best"]["test_acc"],
                "val": result["final"].get("val_acc"), "wall": result.get("wall_time_s"), "store": str(root),
                "params": run.params, "threads": cfg.get("threads")}
    return out


def table(levers: dict[str, dict[int, dict]], model: str, epochs: int, stores: list[Path],
          fresh: bool = False, other_epochs: tuple[int, ...] = (), label: str | None = None) -> list[str]:
    """The table's lines; `label` names the network in the title (the command that remakes the file keeps
    --model as given)."""
    name = label or model
    base = levers.get("", {})
    any_run = next(iter(next(iter(levers.values())).values()))
    threads = sorted({str(r["threads"]) for runs in levers.values() for r in runs.values()})
    title = (f"# {name} ({any_run['params']:,} params), {epochs} epochs, on fresh seeds" if fresh else
             f"# Training levers on {name} ({any_run['params']:,} params), {epochs} epochs"
             + "".join(f" (and {e} as the lever 'epochs {e}')" for e in other_epochs) + ": one change each "
             "against the baseline, seed by seed")
    lines = [title, "",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores shared with other jobs (so wall times are loaded), "
             f"torch threads per run {', '.join(threads)}, niced; torch {torch.__version__}, python "
             f"{sys.version.split()[0]}; table made {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
             "- the rest of the recipe is the default (`convladder train --help`): SGD Nesterov, OneCycle max lr 0.1, "
             "batch 128, light augmentation, 5,000 validation images (the best epoch is picked on them)",
             f"- stores: {', '.join(map(str, stores))}; `PYTHONPATH=src python bench/bench_levers.py "
             + " ".join(f"--runs {s}" for s in stores) + f" --model {model}" + (f" --label '{label}'" if label else "") + f" --epochs {epochs}"
             + "".join(f" --other-epochs {e}" for e in other_epochs)
             # the seeds in the table, always: a store that later gains other seeds must not change the remade file
             + f" --seeds {','.join(map(str, sorted({s for r in levers.values() for s in r})))}"
             + f"{' --fresh' if fresh else ''}` remakes this file",
             ("- fresh seeds: nothing was chosen on them (the network and recipe were fixed before they ran); they "
              "report" if fresh else
              "- these seeds choose: a lever kept on them must be reported on fresh seeds (6-10)"),
             "- wall times: each run's own, on cores shared with a varying number of other jobs (levers measured on "
             "different days met different loads): they compare nothing", "",
             "| lever (change from the default recipe) | seeds | final test % min / median / max | best-epoch test % "
             "(by val) | final val % | final test minus baseline, same seed (min / median / max) | wall s (median) |",
             "|---|---|---|---|---|---|---|"]
    for lever in sorted(levers, key=lambda k: (k != "", k)):
        runs = levers[lever]
        seeds = sorted(runs)
        diffs = [runs[s]["final"] - base[s]["final"] for s in seeds if s in base and lever]
        walls = [r["wall"] for r in runs.values() if r["wall"] is not None]
        wall = f"{median_value(walls):.0f}" if walls else "-"
        lines.append(f"| {lever or 'baseline (default recipe)'} | {', '.join(map(str, seeds))} | "
                     f"{stats([runs[s]['final'] for s in seeds])} | {stats([runs[s]['best'] for s in seeds])} | "
                     f"{stats([runs[s]['val'] for s in seeds if runs[s]['val'] is not None])} | "
                     f"{stats(diffs, signed=True) if diffs else '-'} | {wall} |")
    lines += ["", "## Per seed: final-epoch test % (best-epoch test %, picked on val)", "",
              "| lever | " + " | ".join(f"seed {s}" for s in sorted({s for r in levers.values() for s in r})) + " |"]
    all_seeds = sorted({s for r in levers.values() for s in r})
    lines.append("|---|" + "---|" * len(all_seeds))
    for lever in sorted(levers, key=lambda k: (k != "", k)):
        runs = levers[lever]
        cells = [f"{runs[s]['final']:.2f} ({runs[s]['best']:.2f})" if s in runs else "-" for s in all_seeds]
        lines.append(f"| {lever or 'baseline'} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", action="append", required=True, help="a run store (repeatable)")
    ap.add_argument("--model", default="frontier5k")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--other-epochs", type=int, action="append", default=[],
                    help="also runs of this many epochs, as the lever 'epochs N' (repeatable)")
    ap.add_argument("--label", default=None, help="the network's name in the title (default: --model)")
    ap.add_argument("--seeds", default=None, help="only these seeds ('6-10', '1,3'); default: every seed stored")
    ap.add_argument("--fresh", action="store_true", help="the runs are fresh seeds that report (not ones that choose)")
    ap.add_argument("--output", default=None, help="results file name under bench/results/ (default: print only)")
    args = ap.parse_args(argv)
    stores = [Path(s) for s in args.runs]
    levers = collect(stores, args.model, args.epochs, tuple(args.other_epochs))
    if args.seeds:  # e.g. the fresh seeds alone, from stores that also hold the seeds that chose
        keep = set(parse_seed_list(args.seeds))
        levers = {k: {s: r for s, r in runs.items() if s in keep} for k, runs in levers.items()}
        levers = {k: runs for k, runs in levers.items() if runs}
    if not levers:
        print(f"no completed {args.model} runs of {args.epochs} epochs in {', '.join(args.runs)}", file=sys.stderr)
        return 1
    lines = table(levers, args.model, args.epochs, stores, args.fresh, tuple(args.other_epochs), args.label)
    if args.label:  # a spec given as a file: its text, so the table says what was trained
        lines += ["", f"Network ({args.model}): `{format_spec(resolve_spec(args.model))}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        atomic_write_text(RESULTS / args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
