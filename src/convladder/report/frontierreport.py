"""The frontier part of the report: least-of-seeds accuracy against parameters, with the public figures beside.

Reads only the summary `convladder frontier` wrote (`<runs>/frontiers/<name>-<time>.json`,
`executors.frontier.run_frontier`); nothing is trained or recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from convladder.errors import UserError
from convladder.executors.families import family_of
from convladder.report.plot import Figure
from convladder.train.result import MEDIAN_RULE

FRONTIER_PREFIX = "frontier:"

# Reference points (MNIST test accuracy, %), as issue 14 states them, each with how many seeds stand behind it.
# lo/mid/hi: the spread over seeds (or the range a single seed reported); x2 > x: a range of network sizes.
REFERENCES: list[dict[str, Any]] = [
    {"label": "public: 6,260 params, 99.40-99.44 % (1 seed, 15 epochs)", "x": 6260, "lo": 99.40, "hi": 99.44,
     "seeds": 1, "marker": "D"},
    {"label": "public: 14,372 params, 99.6 % at best (1 seed)", "x": 14372, "lo": 99.6, "hi": 99.6, "seeds": 1,
     "marker": "D"},
    {"label": "public: a few 8-9k networks near 99.5 % (1 seed each)", "x": 8000, "x2": 9000, "lo": 99.5, "hi": 99.5,
     "seeds": 1, "marker": "_"},
    {"label": "convladder tiny6k: 6,124 params, 99.40 / 99.44 / 99.51 % (5 seeds: 1-5, 15 epochs)", "x": 6124,
     "lo": 99.40, "mid": 99.44, "hi": 99.51, "seeds": 5, "marker": "s"},
    # bench/results/train-cpu-tiny8k-seeds6-10.md: seeds that chose nothing (seeds 1-5 gave 99.48 / 99.50 / 99.50)
    {"label": "convladder tiny8k: 7,944 params, 99.38 / 99.42 / 99.54 % (5 seeds: fresh 6-10, 12 epochs)", "x": 7944,
     "lo": 99.38, "mid": 99.42, "hi": 99.54, "seeds": 5, "marker": "s"},
]
GOALS = [(2000, 99.1, "goal (issue 33): <= 2,000 params, >= 99.1 % least of 5 seeds"),
         (5000, 99.4, "goal: <= 5,000 params, >= 99.4 % on each of 5 seeds"),
         (15000, 99.6, "goal: <= 15,000 params, >= 99.6 % least of 5 seeds")]


def find_frontier(target: str, root: Path) -> Path | None:
    """`frontier:NAME` -> the newest <root>/frontiers/NAME-*.json; a .json file holding a frontier -> itself."""
    if target.startswith(FRONTIER_PREFIX):
        name = target[len(FRONTIER_PREFIX):]
        found = [p for p in sorted((root / "frontiers").glob(f"{name}-*.json"))
                 if p.stem[len(name) + 1:].replace("-", "").isdigit()]  # NAME-YYYYmmdd-HHMMSS only
        if not found:
            raise UserError(f"no summary of frontier {name!r} in {root / 'frontiers'}; run `convladder frontier FILE` "
                            "first (or give the summary's path)")
        return found[-1]
    path = Path(target).expanduser()
    if path.suffix == ".json" and path.is_file():
        try:
            return path if json.loads(path.read_text()).get("kind") == "frontier" else None
        except (OSError, ValueError, AttributeError):
            return None  # not ours: the sweep reader says what is wrong with it
    return None


def load_frontier_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"frontier summary {path} cannot be read ({exc}); rerun the frontier to write it again") from None
    if not isinstance(data, dict) or data.get("kind") != "frontier" or not isinstance(data.get("budgets"), list):
        raise UserError(f"{path} is not a frontier summary (no kind: frontier / budgets); give a file from <runs>/frontiers/")
    return data


# Where a network can be placed: its x in the frontier figure (bytes: analysis.memory, int8).
PLACEMENTS = {"params": "parameters", "int8_weights": "int8 weight bytes (flash)",
              "peak_ram": "peak int8 activation memory (RAM)"}
GREY_28 = ("mnist", "fashion-mnist")  # data sets whose images are the specs' default 28x28x1


def winner_bytes(winner: dict[str, Any], dataset: Any) -> tuple[int, int] | None:
    """(int8 weight bytes, int8 peak RAM bytes) of a winner's network from its table; None where the network or its
    input size is not known here (an own class, or a data set of other images)."""
    from convladder.analysis.table import summarize
    from convladder.spec.own import is_own_ref
    from convladder.spec.registry import resolve_spec

    text = (winner.get("config") or {}).get("model_spec") or winner.get("model")
    if not text or str(dataset).lower() not in GREY_28 or is_own_ref(str(text)):
        return None
    try:
        plan = summarize(resolve_spec(str(text))).memory
    except (UserError, ValueError, KeyError):
        return None
    return (plan.weights_int8, plan.peak_int8) if plan is not None else None


def measured(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The budgets with a re-trained winner: budget, params, int8 weight bytes and peak RAM (None where not known),
    and min/median/max final test accuracy."""
    out = []
    for b in summary["budgets"]:
        acc = (b.get("final") or {}).get("test_acc")
        if acc and (b.get("winner") or {}).get("params"):
            found = winner_bytes(b["winner"], summary.get("dataset"))
            out.append({"budget": b["budget"], "params": b["winner"]["params"], **acc,
                        "int8_weights": found[0] if found else None, "peak_ram": found[1] if found else None,
                        "n": len((b["final"] or {}).get("test_accs") or [])})
    return out


def frontier_figure(summary: dict[str, Any], x: str = "params") -> Figure | None:
    """Least-of-seeds, median and max final test accuracy against parameters (log x; MNIST: references too), or
    against int8 weight bytes or peak int8 RAM (x = 'int8_weights' / 'peak_ram': the winners whose bytes are known)."""
    points = [dict(p, params=p[x]) for p in measured(summary) if p[x] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    xs = [p["params"] for p in points]
    n = max(p["n"] for p in points)
    ax.vlines(xs, [p["min"] for p in points], [p["max"] for p in points], color="tab:red", alpha=0.35, lw=3)
    ax.plot(xs, [p["min"] for p in points], "o-", color="tab:red", lw=1.6, label=f"least of {n} seeds (this frontier)")
    ax.plot(xs, [p["median"] for p in points], "^--", color="tab:orange", lw=1, ms=4, label="median")
    ax.plot(xs, [p["max"] for p in points], "v:", color="tab:green", lw=1, ms=4, label="max")
    for p in points:
        ax.annotate(f"<={p['budget'] / 1000:g}k", (p["params"], p["min"]), textcoords="offset points", xytext=(5, -9),
                    ha="left", fontsize=7, color="tab:red")
    if str(summary.get("dataset", "")).lower() == "mnist" and x == "params":  # the references are in parameters
        _references(ax)
    ax.set_xscale("log")
    if x == "params":
        budgets = sorted({int(b["budget"]) for b in summary["budgets"]})
        ax.set_xticks(budgets, [f"{b / 1000:g}k" for b in budgets])  # the budgets, not 2x10^3: read as counts
    else:
        ax.set_xticks(xs, [f"{v / 1024:.1f}" for v in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    unit = "" if x == "params" else ", KiB"
    ax.set(xlabel=f"{PLACEMENTS[x]} (log scale{unit})", ylabel="final-epoch test accuracy (%)",
           title=f"frontier {summary.get('name')}: accuracy against {PLACEMENTS[x]}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    if x != "params":
        return Figure(f"frontier-{x.replace('_', '-')}", f"The same winners placed by {PLACEMENTS[x]} (int8: weights 1 "
                      "byte + a scale per output channel; RAM: the largest set of activations alive at once, "
                      "docs/analysis.md) — labels name the parameter budget", fig, vector=True, wide=True)
    return Figure("frontier", f"The frontier on {summary.get('dataset')}: each budget's winner (chosen on the validation "
                  f"split) re-trained over {n} seeds — red the least seed, with the median and max; grey and blue: "
                  "reference points with their seed counts (MNIST only); stars: the issue's goals", fig, vector=True,
                  wide=True)


def _references(ax: Any) -> None:
    for ref in REFERENCES:
        colour = "tab:blue" if ref["label"].startswith("convladder") else "dimgrey"
        if "x2" in ref:
            ax.hlines(ref["lo"], ref["x"], ref["x2"], color=colour, lw=2.5, label=ref["label"])
            continue
        mid = ref.get("mid", (ref["lo"] + ref["hi"]) / 2)
        ax.errorbar([ref["x"]], [mid], yerr=[[mid - ref["lo"]], [ref["hi"] - mid]], fmt=ref["marker"], color=colour,
                    mfc="none", ms=6, capsize=3, label=ref["label"])
    for x, y, label in GOALS:
        ax.plot([x], [y], "*", color="gold", mec="black", mew=0.5, ms=11, label=label)
    ax.axhline(99.4, color="grey", lw=0.6, ls=":")


def frontier_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One row per budget: the winner, its selection score, its seeds' min/median/max test accuracy, its family
    (executors/families.py; 'candidate' for a network the file named) and its spec."""
    head = ["budget", "params", "int8 weights KiB", "peak RAM int8 KiB", "min test %", "median", "max", "seeds",
            "val % (selection)", "trials completed", "screen vs full: spearman (n)",
            "over budget (never trained)", "recipe", "family", "network"]
    rows = []
    for b in summary["budgets"]:
        w, f, c = b.get("winner") or {}, b.get("final") or {}, b.get("candidates") or {}
        acc = f.get("test_acc") or {}
        done = sum(t.get("status") == "completed" for t in b.get("trials") or [])
        tried = "no search (one trial)" if b.get("selected_on") else f"{done}/{len(b.get('trials') or [])}"
        found = winner_bytes(w, summary.get("dataset")) if w else None
        kib = [round(v / 1024, 1) for v in found] if found else ["–", "–"]
        rows.append([b["budget"], w.get("params"), *kib, acc.get("min"), acc.get("median"), acc.get("max"),
                     len(f.get("test_accs") or []), w.get("val_acc"), tried, _rank_check(b.get("screening")),
                     c.get("over_budget", 0) + len(c.get("rejected") or []),
                     ", ".join(f"{k}={v}" for k, v in (w.get("recipe") or {}).items()) or "–",
                     family_of(w) if w else "–", w.get("model") or b.get("note") or "–"])
    return head, rows


def _rank_check(s: dict[str, Any] | None) -> str:
    """Successive halving's rank check as a cell: Spearman's rho and n, with its warning; '–' without halving."""
    if not s:
        return "–"
    rho = "–" if s.get("spearman") is None else f"{s['spearman']:+.2f}"
    sampled = "; winner from the rank-check sample" if s.get("winner_from") == "rank-check sample" else ""
    return f"{rho} (n={s.get('n')}){sampled}" + (f" WARNING: {s['flag']}" if s.get("flag") else "")


def frontier_body(summary: dict[str, Any]) -> str:
    """The frontier section of the HTML report: how it was measured, the figure, the table beside it."""
    from convladder.report.html import E, _figures, _notes_html, _num, table_html

    notes: list[str] = []
    figs = _figures([("frontier", lambda: frontier_figure(summary))]
                    + [(f"frontier by {PLACEMENTS[x]}", lambda x=x: frontier_figure(summary, x))
                       for x in ("int8_weights", "peak_ram")], notes)
    if not measured(summary):
        notes.append("no budget has a re-trained winner yet: nothing to plot")
    env = summary.get("environment") or {}
    per_budget = (f"{summary.get('trials_per_budget')} architecture(s) per budget" if summary.get("trials_per_budget")
                  else "the file's candidates only (a budget with one trial is not searched: its seeds are the reported ones)")
    facts = (f"data set {E(str(summary.get('dataset')))}; {E(per_budget)}, {summary.get('search_seeds', 1)} search seed(s), selected on the {E(str(summary.get('selected_on')))}; "
             f"each winner re-trained over {summary.get('seeds')} fresh seed(s); executor {E(str(summary.get('executor')))}"
             + (f", scheduler {E(str(summary['scheduler']))}" if summary.get("scheduler") else "")
             + f"; {_num(summary.get('wall_time_s'), 1)} s on {E(str(env.get('cpu') or env.get('machine')))}"
             + (f" + {E(str(env['cuda']))}" if env.get("cuda") else "") + f", torch {E(str(env.get('torch')))}")
    head, rows = frontier_rows(summary)
    return (f"<section><h2>Frontier {E(str(summary.get('name')))}: {len(summary['budgets'])} budget(s)</h2>"
            f"<p>{facts}.</p>" + figs + table_html(head, rows) + f"<p class='meta'>{E(MEDIAN_RULE)}</p>"
            + _notes_html(notes) + "</section>")
