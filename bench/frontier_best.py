"""Issue 33's frontier table and figure: the best network measured under each budget, on seeds that chose nothing.

    .venv/bin/python bench/frontier_best.py        # writes bench/results/frontier.md and docs/frontier-best.svg

Reads only bench/results/frontier-best.json: per network its budget, parameters, epochs, the seeds that chose
it and the seeds that report it, every reporting seed's final-epoch test accuracy (copied from the source table
the entry names; tests/test_frontier.py checks each figure is in that table), its wall time and the search
behind it. The table holds every entry; the figure the registered networks only (`registered` true), placed
with the public reference points by the report's own frontier figure. Which network a budget registers was
decided on the choosing seeds, never on the figures here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from convladder.fileio import atomic_write_text
from convladder.train.result import MEDIAN_RULE, min_median_max

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "results" / "frontier-best.json"


def verdict(budget: int, acc: dict[str, float], epochs: int) -> str:
    """Issue 33's goal for the budget, met or not, with the margin the least seed has (None: no goal)."""
    goals = {2000: (99.10, None, 20), 5000: (99.40, 99.45, 15), 15000: (99.60, None, 20)}
    if budget not in goals:
        return "-"
    least, median, max_epochs = goals[budget]
    ok = acc["min"] >= least and (median is None or acc["median"] >= median) and epochs <= max_epochs
    margins = f"least {acc['min'] - least:+.2f}" + (f", median {acc['median'] - median:+.2f}" if median else "")
    return f"{'met' if ok else 'not met'} ({margins})"


def table(data: dict[str, Any]) -> str:
    lines = ["# The frontier: the best measured under each budget (issue 33)", "",
             f"- machine: {data['machine']}",
             "- figures: final-epoch MNIST test accuracy, min / median / max over the reporting seeds, none of which "
             "chose anything (the choosing seeds are in their own column); "
             f"{MEDIAN_RULE}",
             "- goals (issue 33): " + "; ".join(f"<= {int(b):,}: {g}" for b, g in data["goals"].items()),
             "- wall s: each run's whole process, median over the reporting seeds, on the load named (loaded figures "
             "compare nothing)",
             f"- made by `bench/frontier_best.py` from `{DATA.relative_to(ROOT)}`; the figure: "
             "[docs/frontier-best.svg](../../docs/frontier-best.svg)", "",
             "| budget | network | family | params | epochs | chosen on | reported on seeds | final test % min / median "
             "/ max | each seed | goal | wall s (median) | load | search | source |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in data["entries"]:
        acc = min_median_max(e["finals"])
        lines.append(
            f"| {e['budget']:,} | {e['network']} | {e['family']} | {e['params']:,} | {e['epochs']} | {e['chose']} | "
            f"{', '.join(map(str, e['seeds']))} | {acc['min']:.2f} / {acc['median']:.2f} / {acc['max']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in e['finals'])} | {verdict(e['budget'], acc, e['epochs'])} | "
            f"{e['wall_s']} | {e['load']} | {e['search']} | [{Path(e['source']).name}]({Path(e['source']).name}) |")
    return "\n".join(lines) + "\n"


def figure_summary(data: dict[str, Any]) -> dict[str, Any]:
    """The registered entries as a frontier summary, so the report's frontier figure draws them."""
    budgets = []
    for e in sorted((e for e in data["entries"] if e.get("registered")), key=lambda e: e["params"]):
        budgets.append({"budget": e["budget"], "winner": {"params": e["params"], "model": e["network"]},
                        "final": {"test_acc": min_median_max(e["finals"]), "test_accs": e["finals"]}})
    return {"name": "best measured (fresh seeds)", "dataset": "mnist", "budgets": budgets}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--table", type=Path, default=ROOT / "bench" / "results" / "frontier.md")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "frontier-best.svg")
    args = ap.parse_args(argv)
    data = json.loads(args.data.read_text())
    atomic_write_text(args.table, table(data))
    import matplotlib

    from convladder.report.frontierreport import frontier_figure

    matplotlib.rcParams["svg.hashsalt"] = "frontier-best"  # fixed element ids: the same data, the same file
    fig = frontier_figure(figure_summary(data))
    if fig is None:
        print("no registered entry to draw", file=sys.stderr)
        return 1
    atomic_write_text(args.figure, fig.svg())
    print(f"written: {args.table}, {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
