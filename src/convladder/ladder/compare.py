"""Comparing the steps of a ladder: one row per step, the handout's figure beside ours, a reading per step.

The reading uses the notes' terms: gap = train - test, potential = test + (100 - train); potential
below the target means no closing of the gap reaches it: the disease is overfitting (regularise);
train below the target means the network cannot even fit the training set (underfitting).
Potential passes 100 when train is below test; it is then printed capped, with a note (train.result.potential_text).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convladder.train.result import POTENTIAL_CAP, POTENTIAL_NOTE, potential_meaningful, potential_shown, potential_text
from convladder.ladder.ladder import Ladder, Step
from convladder.ladder.run import OPTS_TAG, ladder_jobs, parse_options_tag
from convladder.runs.reader import read_result
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.result import MEDIAN_RULE, gap, median_item, min_median_max, potential, verdict

ADVICE = {
    "overfitting": "regularise (dropout, augmentation)",
    "underfitting": "the network cannot fit the training set: more capacity, RF or epochs",
    "still improving": "test accuracy is still rising: train longer before judging",
    "healthy": "",
}


def output_classes(table: Any) -> int | None:
    """The number of classes a network table's output scores: K for a (K,) or (K, 1, 1) output, else None.

    Chance accuracy is 100/K, so the near-chance rule of the potential needs K (a run records no class count;
    its network's output is checked against the data's classes before training, train/runenv.py)."""
    out = getattr(table, "output", None) if table is not None else None
    if not out or not (len(out) == 1 or (len(out) == 3 and out[1] * out[2] == 1)):
        return None
    return int(out[0]) if out[0] >= 2 else None


def campaign_tag(runs: Iterable[Any]) -> str | None:
    """The `opts:` tag of the newest run that has one (`runs` newest first), or None."""
    for run in runs:
        for tag in run.tags:
            if tag.startswith(OPTS_TAG):
                return tag
    return None


def one_run_per_seed(runs: Iterable[Any]) -> list[Any]:
    """One run per seed, by seed: the newest completed run of each seed, else its newest other run.

    `runs` are newest first and have `.seed` and `.status` (the store's records, or the report's RunData):
    a rerun or a repeat of a seed never counts twice, and a failed or interrupted run never stands in for a
    completed one.
    """
    per_seed: dict[Any, Any] = {}
    for run in runs:
        cur = per_seed.get(run.seed)
        if cur is None or (cur.status != "completed" and run.status == "completed"):
            per_seed[run.seed] = run
    return sorted(per_seed.values(), key=lambda r: (r.seed is None, r.seed if isinstance(r.seed, int) else 0))


@dataclass
class StepRuns:
    """The runs of one step: `mine` (of the shown `ladder run` options), `fresh` (whose job key the ladder file
    still makes; the rest are stale), `chosen` (one per seed of the fresh ones, see one_run_per_seed) and
    `others` (how many runs of the step other `ladder run` options made: not shown, but counted)."""

    step: Step
    mine: list[Any]
    fresh: list[Any]
    chosen: list[Any]
    others: int = 0

    @property
    def stale(self) -> int:
        return len(self.mine) - len(self.fresh)

    @property
    def completed(self) -> list[Any]:
        return [r for r in self.chosen if r.status == "completed"]


def select_runs(ladder: Ladder, runs: list[Any], opts_tag: str | None, runs_root: Any = None) -> list[StepRuns]:
    """Which runs stand for each step -- the one selection `ladder report` and the HTML report share.

    `runs` (newest first, with `.tags`, `.seed`, `.status`) are the runs tagged with this ladder; those of the
    `opts_tag` options are kept, runs whose job key the current ladder file no longer makes are stale, and of
    the rest one run per seed stands for the step.
    """
    opts = parse_options_tag(opts_tag) if opts_tag else {}
    # runs_root: where a step's teacher is resolved, as `ladder run` resolved it (its full run id is in the key)
    expected = ({job.key for job in ladder_jobs(ladder, None, max(1, _max_seeds(runs)), runs_root=runs_root,
                                                tolerant=True, **opts)} if opts_tag else set())
    out = []
    for step in ladder.steps:
        of_step = [r for r in runs if f"step:{step.index}" in r.tags]
        mine = [r for r in of_step if opts_tag is None or opts_tag in r.tags]
        fresh = [r for r in mine if any(t[4:] in expected for t in r.tags if t.startswith("job:"))]
        out.append(StepRuns(step, mine, fresh, one_run_per_seed(fresh), len(of_step) - len(mine)))
    return out


def ladder_summary(ladder: Ladder, store: RunStore, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One plain dict per step: spec facts, handout figures, seed results, aggregates, verdict and reading.

    `options` picks which `ladder run` options to show (e.g. {"epochs": 1, "subset": 512}); by default
    those of the newest run of this ladder. Runs whose config no longer matches the ladder file are
    left out and counted as `stale`; of the rest, one run per seed (select_runs).
    """
    from convladder.ladder.run import options_tag

    runs = store.list_runs(tag=f"ladder:{ladder.name}")  # newest first
    opts_tag = options_tag(options) if options is not None else campaign_tag(runs)
    opts = parse_options_tag(opts_tag) if opts_tag else {}
    rows: list[dict[str, Any]] = []
    prev_test: float | None = None
    for sel in select_runs(ladder, runs, opts_tag, store.root):
        step = sel.step
        table = step.table()
        seeds = [_seed_row(store, r) for r in sel.chosen]
        done = [s for s in seeds if s["status"] == "completed"]
        row: dict[str, Any] = {
            "step": step.index, "name": step.name, "change": step.change, "why": step.why, "because": step.because,
            "params": table.total_params, "rf_out": table.rf_out, "rf_out_text": table.rf_out_text, "handout": step.handout, "spec": step.spec_text,
            # the epochs the step trains: a run option, the ladder's, or the trainer's default
            "epochs": opts.get("epochs") or step.train.get("epochs") or TrainConfig().epochs,
            "dataset": (done[0]["dataset"] if done else None) or opts.get("dataset") or step.train.get("dataset", "mnist"),
            "seeds": seeds, "n_completed": len(done), "n_failed": sum(s["status"] == "failed" for s in seeds),
            "stale": sel.stale, "other_options": sel.others, "options": opts, "target": ladder.target,
            "classes": output_classes(table),  # chance = 100/classes: when a potential means nothing
        }
        row.update(_aggregate(done, ladder.target))
        row["reading"] = reading(row, prev_test)
        if row.get("test") is not None:
            prev_test = row["test"]
        rows.append(row)
    return rows


def _max_seeds(runs: list) -> int:
    return len({r.seed for r in runs}) or 1


def _seed_row(store: RunStore, record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": record.id, "seed": record.seed, "status": record.status, "dataset": record.dataset}
    notes: list[str] = []  # the tolerant reader: a missing or damaged result.json is a note, never a traceback
    res = read_result(store.root / record.id, notes)
    final, best = res.get("final") or {}, res.get("best") or {}
    if not res or (res.get("status", record.status) == "completed" and final.get("test_acc") is None):
        # no final numbers to compare: shown with the note, left out of the medians
        return {**out, "status": "incomplete", "error": "; ".join(notes) or "result.json has no final test accuracy"}
    history = [m["test_acc"] for m in store.read_metrics(record.id) if m.get("test_acc") is not None]
    return {**out, "status": res.get("status", record.status), "train": final.get("train_acc"), "test": final.get("test_acc"),
            "best_test": best.get("test_acc"), "best_epoch": best.get("epoch"), "selected_by": best.get("selected_by"),
            "params": res.get("params"), "history": history, "error": res.get("message") or "; ".join(notes) or None,
            "wall_time_s": res.get("wall_time_s"), "shifted": res.get("shifted_test"), "notes": notes,
            "distilled": res.get("distilled_from"),  # config teacher (train/distill.py)
            # config ema (train/ema.py): the accuracies are the weight average's
            "weights": (res.get("extra") if isinstance(res.get("extra"), dict) else {}).get("weights")}


def _aggregate(done: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The median seed's train/test/gap/potential (train.result.median_item on final test accuracy: one run's
    numbers, as the HTML ladder page shows them); min/median/max over seeds of the final and of each seed's
    best-epoch test accuracy; the verdict of the least seed (the lowest final test accuracy), which the target
    is judged on."""
    if not done:
        return {"train": None, "test": None, "gap": None, "potential": None, "verdict": None, "least": None}
    median = median_item(done, lambda s: s["test"])  # `done` is in seed order, as the HTML page's runs
    train, test = median["train"], median["test"]
    bests = [s for s in done if s.get("best_test") is not None]
    least = min(done, key=lambda s: s["test"])  # `done` is in seed order: a tie goes to the lowest seed
    judged: dict[str, Any] = {"seed": least["seed"], "run_id": least["run_id"], "train": least["train"],
                              "test": least["test"], "gap": None, "potential": None, "verdict": None}
    if least["train"] is not None:
        judged.update(gap=gap(least["train"], least["test"]), potential=potential(least["train"], least["test"]),
                      verdict=verdict(least["train"], least["test"], least["history"], target))
    out = {"train": train, "test": test, "test_stats": min_median_max([s["test"] for s in done]),
           "best_stats": min_median_max([s["best_test"] for s in bests]),
           "best_epochs": sorted({s["best_epoch"] for s in bests if s.get("best_epoch") is not None}),
           "selected_by": ", ".join(sorted({str(s["selected_by"]) for s in bests if s.get("selected_by")})) or None,
           "params_trained": done[0].get("params"), "least": judged, "verdict": judged["verdict"],
           "median_seed": median["seed"], "shifted": median.get("shifted"), "distilled": median.get("distilled"),
           "weights": median.get("weights")}
    if train is None:
        return {**out, "gap": None, "potential": None}
    return {**out, "gap": gap(train, test), "potential": potential(train, test)}


def reading(row: dict[str, Any], prev_test: float | None = None) -> str:
    """The notes' reading of one step, e.g. 'train 99.80 / test 99.05: gap 0.75, potential 99.25 < target 99.4
    -> overfitting: regularise'. Over several seeds the verdict and 'on target' are the least seed's (the
    lowest final test accuracy), and the reading names it beside the medians."""
    if row.get("test") is None:
        broken = [s for s in row.get("seeds") or [] if s.get("status") == "incomplete" and s.get("error")]
        if broken and not row.get("n_failed"):  # a run whose folder lost its numbers is not 'not run yet'
            return f"no final numbers: run {broken[0]['run_id']}: {broken[0]['error']}"
        return "failed: " + (row["seeds"][0].get("error") or "see the run") if row.get("n_failed") else "not run yet"
    target = row["target"]
    least = row.get("least") or {key: row.get(key) for key in ("train", "test", "gap", "potential", "verdict")}
    n = row.get("n_completed") or 1
    which = f" (the least of {n} seeds: seed {least.get('seed')})" if n > 1 else ""
    medians = ("; median " + (f"train {row['train']:.2f} / " if row.get("train") is not None else "")
               + f"test {row['test']:.2f} (seed {row.get('median_seed')})") if n > 1 else ""
    classes = row.get("classes")  # None: 10, as potential_shown assumes
    if least.get("train") is None:
        text = f"test {least['test']:.2f}{which} (no train accuracy recorded){medians}"
    else:
        # near chance the potential is no figure to hold against the target: no '>= target' after it
        cmp = ("" if not potential_meaningful(least["train"], classes)
               else " < " if least["potential"] < target else " >= ")
        text = (f"train {least['train']:.2f} / test {least['test']:.2f}{which}: gap {least['gap']:.2f}, "
                f"potential {potential_shown(least['potential'], least['train'], classes)}"
                f"{cmp + f'target {target:g}' if cmp else ''} -> {least['verdict']}")
        advice = ADVICE.get(least["verdict"] or "", "")
        if least["verdict"] == "healthy":
            advice = "on target" if least["test"] >= target else "right direction: closing the gap reaches the target"
        text += (f": {advice}" if advice else "") + medians
    if prev_test is not None:
        text += f" ({row['test'] - prev_test:+.2f}{' median' if n > 1 else ''} vs previous step)"
    return text


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(rows: list[dict[str, Any]], ladder: Ladder) -> str:
    """The plain-text comparison table plus one reading line per step."""
    datasets = sorted({str(r["dataset"]) for r in rows if r.get("dataset")})
    head = (f"ladder {ladder.name} on {', '.join(datasets) or 'mnist'} (target {ladder.target:g} %; "
            "train/test/gap/potential = final epoch of the median seed (by final test); min/med/max = final "
            "test over seeds; "
            "best-epoch test = each seed's best epoch, min/med/max over seeds, and the split that picked it; "
            "verdict and 'on target' judged on the least seed)")
    cols = ("#", "step", "params (handout)", "RF", "ep", "train (h)", "test (h)", "min/med/max",
            "best-epoch test min/med/max", "gap", "potential", "verdict (least seed)")
    lines = []
    for r in rows:
        h = r["handout"] or {}
        hp = f" ({int(h['params']):,})" if h.get("params") else ""
        ts = r.get("test_stats")
        spread = f"{ts['min']:.2f}/{ts['median']:.2f}/{ts['max']:.2f}" if ts else "-"
        bs, eps = r.get("best_stats"), r.get("best_epochs") or []
        best = "-" if not bs else (f"{bs['min']:.2f}/{bs['median']:.2f}/{bs['max']:.2f}"
                                   + ("" if not eps else f"@{eps[0]}" if len(eps) == 1 else f"@{eps[0]}-{eps[-1]}")
                                   + f" ({r.get('selected_by') or '?'})")
        seeds = f" [{r['n_completed']} seed(s)" + (f", {r['n_failed']} failed" if r["n_failed"] else "") + "]"
        name = (r["name"] + (" (distilled)" if r.get("distilled") else "")  # a teacher's soft targets trained it
                + (" (EMA weights)" if r.get("weights") else ""))  # config ema: its accuracies are the average's
        lines.append((str(r["step"]), name, f"{r['params']:,}{hp}", r.get("rf_out_text") or str(r["rf_out"]), str(r["epochs"]),
                      _pct(r.get("train")) + (f" ({h['train']:.2f})" if h.get("train") else ""),
                      _pct(r.get("test")) + (f" ({h['test']:.2f}" + (f"@{h['epoch']}" if h.get("epoch") else "") + ")"
                                             if h.get("test") else ""),
                      spread, best, _pct(r.get("gap")),
                      potential_shown(r.get("potential"), r.get("train"), r.get("classes"), raw=False),
                      (r.get("verdict") or "-") + seeds))
    shifts = sorted({k for r in rows for k in (r.get("shifted") or {})}, key=int)
    if shifts:  # shift_eval ran: the median seed's test accuracy with images shifted 0..N pixels
        cols = (*cols, f"test shifted {'/'.join(shifts)} px")
        lines = [(*line, "/".join(f"{r['shifted'][k]:.1f}" if k in (r.get("shifted") or {}) else "-" for k in shifts))
                 for line, r in zip(lines, rows)]
    widths = [max(len(c), *(len(x[i]) for x in lines)) for i, c in enumerate(cols)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [head, fmt(cols), fmt(tuple("-" * w for w in widths)), *map(fmt, lines), MEDIAN_RULE, "", "readings:"]
    if any(r.get("distilled") for r in rows):
        out.insert(-2, "(distilled): trained on a teacher run's soft targets (config teacher); params are the student's "
                       "only — `runs show` names the teacher and its params")
    if any(r.get("weights") for r in rows):
        out.insert(-2, "(EMA weights): the step trained with config ema; its accuracies are the weight average's, "
                       "the weights that were evaluated, selected and saved")
    others = sum(r.get("other_options") or 0 for r in rows)
    if others:  # runs of another `ladder run` invocation: never mixed in, never dropped without a word
        shown = " ".join(f"{k}={v}" for k, v in sorted((rows[0].get("options") or {}).items())) or "the defaults"
        out.insert(1, f"shown: the runs of the newest `ladder run` options ({shown}); {others} other run(s) of these "
                      "steps (other options, or made by hand) are not shown")
    for r in rows:
        out.append(f"  {r['step']}. {r['name']} -- {r['change']}")
        out.append(f"     {r['reading']}" + (f"  [{r['stale']} stale run(s) of an older ladder file ignored]" if r["stale"] else ""))
        out += [f"     note: run {s['run_id']}: {n}" for s in r.get("seeds") or [] for n in s.get("notes") or []]
    if any((v or 0) > POTENTIAL_CAP for r in rows for v in (r.get("potential"), (r.get("least") or {}).get("potential"))):
        out += ["", POTENTIAL_NOTE]
    return "\n".join(out)
