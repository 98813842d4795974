"""The sweep part of the report: the ranked table and the isolation plot of the studied parameter.

Reads only the summary a sweep wrote (`<runs>/sweeps/<name>-<time>.json`, `executors.sweep.sweep_summary`);
nothing is trained or recomputed here. The trials were ranked on the split the summary names (`ranked_on`: val,
or test without a validation split; a summary without it is an older, test-ranked one): the tables and the plot
say which, and test accuracy is what they report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from convladder.errors import UserError
from convladder.executors.sweep import ranked_on
from convladder.report.plot import Figure

SWEEP_PREFIX = "sweep:"


def find_summary(target: str, root: Path) -> Path | None:
    """A sweep summary file: `target` as a path to one, or `sweep:NAME`/`NAME` -> the newest NAME-*.json."""
    direct = Path(target).expanduser()
    if direct.suffix == ".json" and direct.is_file():
        return direct
    name = target[len(SWEEP_PREFIX):] if target.startswith(SWEEP_PREFIX) else target
    found = sorted((root / "sweeps").glob(f"{name}-*.json"))
    found = [p for p in found if p.stem[len(name) + 1:].replace("-", "").isdigit()]  # NAME-YYYYmmdd-HHMMSS only
    if found:
        return found[-1]
    if target.startswith(SWEEP_PREFIX):
        raise UserError(f"no summary of sweep {name!r} in {root / 'sweeps'}; run `convladder sweep FILE` first "
                        "(or give the summary's path)")
    return None


def load_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"sweep summary {path} cannot be read ({exc}); rerun the sweep to write it again") from None
    if not isinstance(data, dict) or "trials" not in data or "roles" not in data:
        raise UserError(f"{path} is not a sweep summary (no trials/roles); give a file from <runs>/sweeps/")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def isolation_figure(summary: dict[str, Any]) -> Figure | None:
    """Best trial per studied value (chosen on `ranked_on`): min-over-seeds test accuracy (max as the bar), its
    min validation accuracy when val chose it, params beside."""
    rows = summary.get("isolation") or []
    if not summary.get("studied") or not rows:
        return None
    name = summary["studied"]
    values = [r["value"] for r in rows]
    numeric = all(_is_number(v) for v in values)
    log = numeric and min(values) > 0 and max(values) / min(values) >= 20
    xs = values if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    done = [(x, r) for x, r in zip(xs, rows) if r.get("test_acc")]
    for x, r in done:
        acc = r["test_acc"]
        ax.errorbar([x], [acc["min"]], yerr=[[0], [acc["max"] - acc["min"]]], fmt="o", color="tab:red", capsize=3)
    on_val = ranked_on(summary) == "val"
    if done:
        ax.plot([x for x, _ in done], [r["test_acc"]["min"] for _, r in done], "-", color="tab:red", lw=1,
                label=f"test, min over {summary.get('seeds', 1)} seed(s)")
    chosen = [(x, r["val_acc"]["min"]) for x, r in done if on_val and r.get("val_acc")]
    if chosen:
        ax.plot(*zip(*chosen), "o--", mfc="none", color="tab:green", lw=0.8, label="val, min (chose the trial)")
    for x, r in zip(xs, rows):
        if not r.get("test_acc"):
            ax.annotate("none completed" if not r.get("rejected") else "over budget", (x, 0.03),
                        xycoords=("data", "axes fraction"), ha="center", va="bottom", rotation=90, fontsize=7,
                        color="grey")
    if log:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in values])
    split = "validation" if on_val else "TEST"
    ax.set(xlabel=f"{name} (studied)", ylabel="final accuracy (%)" if chosen else "final test accuracy (%)",
           title=f"isolation of {name}: the best trial per value, chosen on {split}")
    params = [(x, r["params"]) for x, r in zip(xs, rows) if r.get("params")]
    if params:
        ax2 = ax.twinx()
        ax2.plot(*zip(*params), "s--", color="tab:blue", ms=4, lw=0.8, label="parameters")
        ax2.set_ylabel("parameters", color="tab:blue")
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    how = ("chosen on the validation accuracy (green, min over seeds); red: its test accuracy" if on_val else
           "chosen on the TEST accuracy (no validation split), so the red test numbers are optimistic")
    return Figure("isolation", f"Isolation plot of the studied parameter {name}: for each value its best trial, "
                  f"{how} (dots: min over seeds, bar up to the max), with the nuisance parameters that got it there "
                  "in the table; blue: parameters of that trial's network", fig, vector=True)


def sweep_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the ranked trial table (values of every parameter, then the numbers); the column
    that ranked says so: 'min val % (ranks)', or 'min test % (ranks)' without a validation split."""
    names = list(summary["roles"])
    on_val = ranked_on(summary) == "val"
    head = (["rank", "trial", "status"] + [f"{n} ({summary['roles'][n]})" for n in names] + ["params"]
            + (["min val % (ranks)", "min test %", "median test", "max test"] if on_val else
               ["min test % (ranks)", "median", "max"]) + ["note"])
    rows = []
    for r in summary["trials"]:
        acc = r.get("test_acc") or {}
        rows.append([r.get("rank") or "–", r["trial"], r["status"]]
                    + [r["values"].get(n) if _is_number(r["values"].get(n)) else str(r["values"].get(n)) for n in names]
                    + [r.get("params")] + ([(r.get("val_acc") or {}).get("min")] if on_val else [])
                    + [acc.get("min"), acc.get("median"), acc.get("max"), r.get("error") or ""])
    return head, rows


def isolation_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """value, best trial (and the split that chose it), min test %, params, nuisance values, counts."""
    on_val = ranked_on(summary) == "val"

    def chosen(r: dict[str, Any]) -> str:
        val = (r.get("val_acc") or {}).get("min")
        return (f"{r['best_trial']} (chosen on val" + (f", min val {val:.2f} %)" if _is_number(val) else ")")
                if on_val else f"{r['best_trial']} (chosen on TEST)")

    return [[str(r["value"]), chosen(r) if r.get("best_trial") else "–",
             (r.get("test_acc") or {}).get("min"), r.get("params"),
             json.dumps(r.get("nuisance")) if r.get("nuisance") else "–",
             f"{r.get('completed', 0)}/{r.get('trials', 0)} completed, {r.get('rejected', 0)} over budget"]
            for r in summary.get("isolation") or []]
