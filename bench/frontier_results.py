"""Write a measured frontier as a results table: bench/results/frontier-<name>.md.

    .venv/bin/python bench/frontier_results.py --runs /path/to/runs                 # the newest frontier summary
    .venv/bin/python bench/frontier_results.py --runs DIR --name mnist-cpu -o bench/results/frontier-mnist-cpu.md
    .venv/bin/python bench/frontier_results.py --runs DIR --summary DIR/frontiers/NAME-TIME.json -o OUT.md

Reads only what `convladder frontier` wrote: its summary (<runs>/frontiers/<name>-*.json, the newest of that
name) and each re-trained run's result.json. Per budget: the network, its parameters, every seed's final-epoch
test accuracy, their min / median / max (train.result.MEDIAN_RULE), the best-epoch figures (the epoch the split
in each result.json picked), each seed's wall time, the torch threads each run used (its env.json), and the
search's cost; machine, device, torch version and seeds at the top.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from convladder.fileio import atomic_write_text
from convladder.runs.store import RunStore
from convladder.train.result import MEDIAN_RULE, median_value, min_median_max

RESULTS = Path(__file__).parent / "results"


def newest_summary(runs: Path, name: str | None) -> Path:
    files = sorted((runs / "frontiers").glob(f"{name or '*'}-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        sys.exit(f"error: no frontier summary{f' named {name!r}' if name else ''} under {runs / 'frontiers'}")
    return files[-1]


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    s = min_median_max(values)
    return "-" if s is None else " / ".join(fmt.format(s[k]) for k in ("min", "median", "max"))


def threads_of(store: RunStore, run_ids: list[str]) -> str:
    """The torch threads the runs trained with (env.json), e.g. '1' or '1, 2'; '?' where a run does not say."""
    used = set()
    for run_id in run_ids:
        try:
            used.add(store.read_env(run_id).get("torch_threads"))
        except Exception:  # noqa: BLE001 - a run without a readable env.json: said as '?'
            used.add(None)
    return ", ".join(sorted("?" if t is None else str(t) for t in used)) or "-"


def picked_by(results: list[dict]) -> str:
    """The split that picked the best epoch in these results ('val', 'test', ...), as result.json says."""
    return ", ".join(sorted({str((r.get("best") or {}).get("selected_by") or "?") for r in results})) or "-"


def widths(spec_text: str) -> str:
    """'4/6/4/6/7/7/6' for a spec: the output channels of its convolutions but the classifier."""
    chans = [int(m) for m in re.findall(r"conv(?:3x3|1x1)\((\d+)", spec_text)]
    return "/".join(map(str, chans[:-1])) if len(chans) > 1 else "-"


def selection(summary: dict) -> str:
    searched = [b for b in summary["budgets"] if not b.get("selected_on")]
    if not searched:
        return "none (each budget had one network and one recipe: nothing was searched, its seeds are the reported ones)"
    return (f"{summary.get('selected_on')}, on the search seeds; the reported seeds are fresh ones"
            + (" (budgets with one trial: not searched)" if len(searched) < len(summary["budgets"]) else ""))


def seeds_line(budget: dict, search_seeds: int) -> str:
    """Which seeds chose (the search's: from the winner's seed on) and which report (its re-training)."""
    first = ((budget.get("winner") or {}).get("config") or {}).get("seed", 1)
    reported = (budget.get("final") or {}).get("seeds") or []
    return (f"- seeds: the search (selection on validation) ran on seed(s) "
            f"{', '.join(str(first + k) for k in range(search_seeds))}; the winner's reported (fresh) seeds: "
            f"{', '.join(map(str, reported)) or '-'}")


def screening(budget: dict, executor: str, search_seeds: int) -> list[str]:
    """The successive-halving search of one budget, as its summary recorded it: rungs, the rank check, the cost."""
    s = budget.get("screening")
    if not s:
        return []
    search_s, retrain_s = budget.get("search_wall_s", 0), budget.get("retrain_wall_s", 0)
    jobs = sum(r["trials"] + r.get("rank_check", 0) for r in s["rungs"]) * search_seeds
    trained = s.get("jobs_trained")
    whole = ("**{:.1f} min for the whole budget** (screening, promotion, rank check, the winner's seeds)"
             .format((search_s + retrain_s) / 60) if trained is None or trained >= jobs else
             f"{(search_s + retrain_s) / 60:.1f} min for THIS CALL ONLY: it trained {trained} of the search's {jobs} "
             "jobs and took the rest from the store (a resumed or widened search), so it is not the budget's whole wall")
    lines = ["", f"## {budget['budget']:,}: the search (successive halving, selection on validation)", "",
             f"- screen: {s['screen_epochs']} epochs on {s['screen_subset']:,} training images; reduction factor "
             f"{s['reduction_factor']:g}",
             f"- wall (executor {executor}): search {search_s / 60:.1f} min + the winner's re-training "
             f"{retrain_s / 60:.1f} min = {whole}",
             seeds_line(budget, search_seeds),
             f"- cost: {s['epoch_equivalents']['halving']:g} epoch-equivalents against "
             f"{s['epoch_equivalents']['grid']:g} for every trial at the full recipe; jobs trained {s.get('jobs_trained')}",
             f"- **rank check: Spearman {s['spearman']:+.2f} over n = {s['n']} trials trained in full** "
             f"({s.get('spearman_of')}){'; ' + s['flag'].upper() if s.get('flag') else ''}; winner from: "
             f"{s.get('winner_from')}", "",
             "| rung | trials (+ rank-check sample) | epochs | training images | promoted |", "|---|---|---|---|---|"]
    for r in s["rungs"]:
        images = ", ".join(f"{i:,}" if isinstance(i, int) else str(i) for i in r["train_images"])
        lines.append(f"| {r['rung']} | {r['trials']} (+{r.get('rank_check', 0)}) | "
                     f"{', '.join(map(str, r['epochs']))} | {images} | {', '.join(r.get('promoted') or []) or '-'} |")
    lines += ["", "| trial | family | params | validation % per rung | rank-check sample | status |", "|---|---|---|---|---|---|"]
    for t in budget.get("trials") or []:
        per_rung = ", ".join(f"r{k} {v:.2f}" for k, v in sorted((t.get("rungs") or {}).items()))
        lines.append(f"| {t['trial']} | {t.get('family', '-')} | {t['params']:,} | {per_rung} | "
                     f"{'yes' if t.get('rank_check_sample') else ''} | {t['status']} |")
    return lines


def table(summary: dict, store: RunStore) -> str:
    env = summary.get("environment") or {}
    lines = [f"# Frontier `{summary['name']}` on {summary['dataset']}", "",
             f"- machine: {env.get('cpu')} ({env.get('cores')} cores), {env.get('machine')}; device: "
             f"{env.get('cuda') or 'CPU only'}; torch {env.get('torch')}, python {env.get('python')}",
             f"- file: `{summary.get('file')}`; executor {summary.get('executor')}; started {summary.get('started')}",
             f"- each budget's network trained over {summary['seeds']} seeds; selection: " + selection(summary),
             "- accuracy: final-epoch test accuracy (the number reported); best-epoch = the epoch the split in the "
             "'picked by' column picked, its test accuracy shown; min / median / max over seeds",
             f"- {MEDIAN_RULE}; threads: the torch threads of each run (env.json)", ""]
    head = ("| budget | params | widths | epochs | seeds | final test % min / median / max | seeds >= 99.4 | "
            "each seed's final test % | best-epoch test % min / median / max | picked by | "
            "wall s per seed (median) | threads |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    total = 0.0
    for b in summary["budgets"]:
        w, f = b.get("winner") or {}, b.get("final") or {}
        run_ids = [r for r in f.get("runs") or [] if r]
        results = [store.read_result(r) for r in run_ids]
        finals = [float(r["final"]["test_acc"]) for r in results if (r.get("final") or {}).get("test_acc") is not None]
        bests = [float(r["best"]["test_acc"]) for r in results if (r.get("best") or {}).get("test_acc") is not None]
        walls = [float(r["wall_time_s"]) for r in results if r.get("wall_time_s")]
        total += sum(walls)
        epochs = (w.get("config") or {}).get("epochs", "-")
        lines.append(f"| {b['budget']:,} | {w.get('params') or 0:,} | {widths(w.get('model') or '')} | {epochs} | "
                     f"{len(finals)} | {spread(finals)} | {sum(v >= 99.4 for v in finals)}/{len(finals)} | "
                     f"{', '.join(f'{v:.2f}' for v in finals) or '-'} | {spread(bests)} | {picked_by(results)} | "
                     f"{median_value(walls):.0f} | {threads_of(store, run_ids)} |" if walls else
                     f"| {b['budget']:,} | - | - | - | 0 | - | - | - | - | - | - | - |")
    lines += ["", f"Training time summed over every run: {total / 3600:.2f} h of one process's wall time "
              f"(runs of several processes overlap)."]
    for b in summary["budgets"]:
        lines += screening(b, str(summary.get("executor")), int(summary.get("search_seeds") or 1))
    lines += ["", "Networks (spec text):", ""]
    for b in summary["budgets"]:
        w = b.get("winner") or {}
        if w.get("model"):
            lines.append(f"- {b['budget']:,}: `{w['model']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, type=Path, help="the run store the frontier wrote to")
    ap.add_argument("--name", default=None, help="the frontier's name (default: the newest summary)")
    ap.add_argument("--summary", type=Path, default=None,
                    help="one summary file of the store (default: the newest of --name): a widened or resumed search "
                         "writes a newer summary of the same name")
    ap.add_argument("-o", "--output", type=Path, default=None, help="default: bench/results/frontier-<name>.md")
    args = ap.parse_args(argv)
    if args.summary is not None and not args.summary.is_file():
        print(f"error: --summary {args.summary}: no such file; the summaries are in {args.runs / 'frontiers'}",
              file=sys.stderr)
        return 2
    path = args.summary or newest_summary(args.runs, args.name)
    summary = json.loads(path.read_text())
    text = table(summary, RunStore(args.runs))
    out = args.output or RESULTS / f"frontier-{summary['name']}.md"
    atomic_write_text(out, text)
    print(text)
    print(f"written: {out} (from {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
