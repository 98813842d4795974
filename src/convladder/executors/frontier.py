"""The frontier: the best network under each of several parameter budgets, measured over seeds.

For every budget: generate networks of the space's families (`families.py`: the notes' 3x3 blocks, a transition =
maxpool2x2 + 1x1, BN after every layer but the last, small dropout, GAP + 1x1 to the classes, no bias, no FC;
or their depthwise-separable variant), count their
parameters from the spec before anything trains, keep the ones closest under the budget, search them with
the recipe values through the sweep machinery (`sweep.run_sweep`: any executor, ASHA on Ray Tune), pick the
winner on the *validation* split, then re-train the winner over N fresh seeds and record the min / median /
max of the final-epoch test accuracy. The frontier file is read in `frontierspec.py`; docs/frontier.md has the
file format and the design choices.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors.base import Executor, InProcessExecutor
from convladder.executors.families import (  # family_text stays importable from here, as before the move
    Candidate, family_counts, family_of, family_text, generate, network_text, take_turns)
from convladder.executors.frontierspec import FrontierSpec, spec_params
from convladder.executors.sweep import Param, SweepSpec, Trial, make_trials, run_sweep
from convladder.executors.sweep import write_summary as write_sweep_summary
from convladder.train.result import MEDIAN_RULE, min_median_max


# -- the networks: executors/families.py generates each family; here they are chosen per budget ----------
def candidates(spec: FrontierSpec, budget: int) -> tuple[list[Candidate], dict[str, Any]]:
    """The architectures tried under `budget`: the `trials` nearest under it, one per family and layout in turn.

    Every network of the space is counted; over-budget ones and those under near x budget are dropped here,
    so they never train. Families, then layouts (where the transitions sit), take turns so the trials are not
    all one family or one layout.
    Explicit candidates between near x budget and the budget are added; the others are listed as rejected
    (a 2k network is not a 5k budget's answer).
    """
    s = spec.space
    pool, unfit = generate(s) if spec.trials else ([], {})  # trials: 0 tries the file's candidates only
    seen = {c.text: c for c in pool if c.params <= budget}
    over = len(pool) - len(seen)
    near = [c for c in seen.values() if c.params >= spec.near * budget]
    chosen = take_turns(near, spec.trials) if spec.trials else []  # families, then layouts, take turns
    with_dropout = [Candidate(network_text(c.shape, d, s), c.params, {**c.shape, "dropout": d})
                    for c in chosen for d in s["dropout"]]
    rejected = []
    for name in spec.candidates:
        params = spec_params(name)
        if params > budget:
            rejected.append({"model": name, "params": params, "reason": f"{params:,} parameters > budget {budget:,}"})
        elif params < spec.near * budget:
            rejected.append({"model": name, "params": params,
                             "reason": f"{params:,} parameters < near {spec.near:g} x budget {budget:,}"})
        else:
            with_dropout.append(Candidate(name, params, {"given": name}))
    stats = {"generated": len(pool) + sum(unfit.values()), "over_budget": over, "does_not_fit": sum(unfit.values()),
             "in_budget": len(seen), "near": len(near), "chosen": len(chosen), "rejected": rejected,
             "families": family_counts(pool, unfit, budget, spec.near, chosen)}
    return with_dropout, stats


# -- search, selection, re-training -----------------------------------------------------------------------
def search_sweep(spec: FrontierSpec, budget: int, cands: list[Candidate]) -> SweepSpec:
    """The sweep of one budget: candidate networks x recipe values; the sweep re-checks the budget."""
    base = {**spec.base, "tags": list(spec.base.get("tags") or []) + [f"frontier:{spec.name}", f"budget:{budget}"]}
    params = [Param("model", "nuisance", [c.text for c in cands])] + [
        Param(k, "nuisance", list(v)) for k, v in spec.recipe.items()]
    return SweepSpec(name=f"frontier-{spec.name}-{budget}", model=None, base=base, params=params, budget=budget,
                     search=spec.search, samples=spec.samples, sample_seed=spec.sample_seed, seeds=spec.search_seeds,
                     path=spec.path, scheduler=spec.scheduler)


def _final(runs_root: str | Path, run_id: str | None, key: str, notes: list[str] | None = None) -> float | None:
    """The final-epoch `key` (val_acc, test_acc) of a run, from its result.json, read tolerantly (as `runs list`
    reads it): a missing or damaged file is None and one line in `notes` naming the run, never an error that
    loses the whole frontier."""
    from convladder.runs.reader import read_result
    from convladder.runs.store import RunStore

    if not run_id:
        return None
    store = RunStore(runs_root)
    found: list[str] = []
    value = (read_result(store.root / store.get(run_id).id, found).get("final") or {}).get(key)
    if notes is not None:
        notes.extend(f"run {run_id}: {n}" for n in found)
    return float(value) if value is not None else None


def select(trials: list[Trial], runs_root: str | Path) -> tuple[Trial | None, list[dict[str, Any]]]:
    """The winner: the highest worst-seed *validation* accuracy (final epoch), then fewer parameters.

    The test accuracy of search trials is never read here: the test set does not choose.
    """
    rows, scored = [], []
    for t in trials:
        notes: list[str] = []
        vals = [_final(runs_root, r.get("run_id"), "val_acc", notes) for r in t.runs] if t.status == "completed" else []
        val = min(vals) if vals and None not in vals else None  # a seed without one: the trial is not scored
        rows.append({"trial": t.id, "status": t.status, "model": t.values.get("model"), "params": t.params,
                     "recipe": {k: v for k, v in t.values.items() if k != "model"}, "val_acc": val,
                     "error": t.error, "runs": [r.get("run_id") for r in t.runs],
                     **({"notes": notes} if notes else {})})
        if val is not None:
            scored.append((val, t))
    if not scored:
        return None, rows
    best = min(scored, key=lambda vt: (-vt[0], vt[1].params or 0, vt[1].id))[1]
    return best, rows


def retrain_sweep(spec: FrontierSpec, budget: int, winner: Trial, searched: bool = True) -> SweepSpec:
    """The winner's exact config over `seeds` fresh seeds (after the search seeds: none of them selected it).

    `searched` False (a budget with one trial, so nothing to select): the seeds start at the base seed.
    """
    config = {k: v for k, v in winner.config.items() if k not in ("tags", "seeds")}
    config["seed"] = int(winner.config.get("seed", 1)) + (spec.search_seeds if searched else 0)
    config["tags"] = list(spec.base.get("tags") or []) + [f"frontier:{spec.name}", f"budget:{budget}", "frontier-final"]
    return SweepSpec(name=f"frontier-{spec.name}-{budget}-seeds", model=None, base=config, params=[], budget=budget,
                     seeds=spec.seeds, path=spec.path)


def run_budget(spec: FrontierSpec, budget: int, runs_root: str | Path, executor: Executor,
               on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search one budget, select on validation, re-train the winner over seeds; the budget's summary row."""
    t0 = time.perf_counter()
    cands, stats = candidates(spec, budget)
    row: dict[str, Any] = {"budget": budget, "candidates": stats, "trials": [], "winner": None, "final": None}
    if not cands:
        row["note"] = (f"no network of the space has between {spec.near:.0%} of {budget:,} and {budget:,} "
                       "parameters; widen space: or lower near:")
        return row
    shapes = {c.text: c.shape for c in cands}
    sweep = search_sweep(spec, budget, cands)
    planned = make_trials(sweep)
    searched = not (len(planned) == 1 and planned[0].status == "pending" and spec.search == "grid")
    if searched and spec.halving:  # successive halving: rungs of rising fidelity, then a rank check
        from convladder.executors.halving import search_halving

        winner, row["trials"], row["screening"] = search_halving(spec, budget, planned, runs_root, executor, on_done)
    elif searched:
        search = run_sweep(sweep, runs_root, executor, on_done=on_done)
        winner, row["trials"] = select(search.trials, runs_root)
    else:  # one network, one recipe: nothing to select, so no search run; its seeds are the reported ones
        winner = planned[0]
        row["trials"] = [{"trial": winner.id, "status": "not searched", "model": winner.values.get("model"),
                          "params": winner.params, "val_acc": None, "error": None, "runs": [],
                          "recipe": {k: v for k, v in winner.values.items() if k != "model"}}]
        row["selected_on"] = "the only trial of this budget (no search)"
    for r in row["trials"]:
        r["shape"] = shapes.get(r["model"])
        r["family"] = family_of(r)
    row["search_wall_s"] = time.perf_counter() - t0
    if winner is None:
        row["note"] = "no search trial completed with a validation accuracy; see the trials' errors"
        return row
    win_row = next(r for r in row["trials"] if r["trial"] == winner.id)
    row["winner"] = {**win_row, "config": {k: v for k, v in winner.config.items() if k != "tags"}}
    t1 = time.perf_counter()
    final = run_sweep(retrain_sweep(spec, budget, winner, searched), runs_root, executor, on_done=on_done).trials[0]
    ok = [r for r in final.runs if r.get("status") in ("completed", "skipped") and r.get("final_test_acc") is not None]
    tests = [float(r["final_test_acc"]) for r in ok]
    notes = [r["note"] for r in final.runs if r.get("note")]  # result.json unreadable when the sweep read it
    vals = [v for v in (_final(runs_root, r.get("run_id"), "val_acc", notes) for r in ok) if v is not None]
    row["final"] = {"status": final.status, "error": final.error, "seeds": [int(r["label"].rsplit(" ", 1)[-1])
                    for r in final.runs], "runs": [r.get("run_id") for r in final.runs], "test_accs": tests,
                    "test_acc": min_median_max(tests), "val_acc": min_median_max(vals), "completed": len(ok),
                    **({"notes": notes} if notes else {})}
    row["retrain_wall_s"] = time.perf_counter() - t1
    return row


def environment() -> dict[str, Any]:
    """Where the frontier was measured (a frontier table is only meaningful with its machine)."""
    import torch

    from convladder.train.runenv import cpu_model

    return {"machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def run_frontier(spec: FrontierSpec, runs_root: str | Path, executor: Executor | None = None,
                 on_done: Callable[[dict[str, Any]], None] | None = None,
                 on_budget: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every budget in turn; `on_budget(summary)` after each (the summary so far: write it, print it)."""
    executor = executor or InProcessExecutor()
    if spec.scheduler and not hasattr(executor, "connect"):  # before any budget, searched or not, trains
        raise UserError(f"scheduler: {spec.scheduler.name} runs on Ray Tune: add --executor ray "
                        "(the in-process executor trains every trial to the end; drop scheduler: for that)")
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "kind": "frontier", "name": spec.name, "file": spec.path, "dataset": spec.base.get("dataset", "mnist"),
        "executor": getattr(executor, "name", type(executor).__name__), "search": spec.search,
        "scheduler": (spec.halving or spec.scheduler).describe() if spec.halving or spec.scheduler else None,
        "seeds": spec.seeds,
        "search_seeds": spec.search_seeds, "trials_per_budget": spec.trials, "near": spec.near,
        "selected_on": "validation accuracy of the final epoch (worst search seed)", "space": spec.space,
        "recipe": spec.recipe, "base": spec.base, "environment": environment(), "budgets": [],
        "runs_root": str(runs_root), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for budget in spec.budgets:
        summary["budgets"].append(run_budget(spec, budget, runs_root, executor, on_done))
        summary["wall_time_s"] = time.perf_counter() - t0
        if on_budget:
            on_budget(summary)
    summary["wall_time_s"] = time.perf_counter() - t0
    return summary


def write_summary(summary: dict[str, Any], runs_root: str | Path, path: Path | None = None) -> Path:
    """Save (atomically) as <runs>/frontiers/<name>-<time>.json, or over `path` (a run in progress)."""
    return write_sweep_summary(summary, runs_root, "frontiers", path)


def format_table(summary: dict[str, Any]) -> str:
    """One line per budget: the winner's parameters, validation score, test min/median/max; its spec below."""
    head = (f"{'budget':>7} {'params':>7} {'trials':>9} {'val % (sel)':>11} {'test min':>8} {'median':>7} {'max':>7}"
            f" {'seeds':>5}")
    searched = any(not b.get("selected_on") for b in summary["budgets"])
    how = (f"winners selected on {summary['selected_on']}; test over {summary['seeds']} fresh seed(s)" if searched
           else f"one network per budget, nothing searched; test over {summary['seeds']} seed(s)")
    lines = [f"frontier {summary['name']} on {summary['dataset']}: {how}", head]
    for b in summary["budgets"]:
        c, w, f = b["candidates"], b["winner"], b["final"] or {}
        done = sum(t["status"] == "completed" for t in b["trials"])
        acc = f.get("test_acc") or {}
        tried = "no search" if b.get("selected_on") else f"{done}/{len(b['trials'])}"
        lines.append(f"{b['budget']:>7,} {_fmt(w and w['params'], ','):>7} {tried:>9} "
                     f"{_fmt(w and w['val_acc']):>11} {_fmt(acc.get('min')):>8} {_fmt(acc.get('median')):>7} "
                     f"{_fmt(acc.get('max')):>7} {f.get('completed', 0):>5}"
                     + (f"  {b['note']}" if b.get("note") else "")
                     + (f"  ({c['over_budget']} generated over budget, never trained)" if c.get("over_budget") else ""))
        if w:
            recipe = ", ".join(f"{k}={v}" for k, v in w["recipe"].items())
            taught = w["recipe"].get("teacher") or (summary.get("base") or {}).get("teacher")  # config teacher
            lines.append(f"        {family_of(w)}: {w['model']}" + (f"  [{recipe}]" if recipe else "")
                         + (f"  (distilled from {taught}: params are the student's only)" if taught else ""))
        unread = [n for t in b["trials"] for n in t.get("notes") or []] + list(f.get("notes") or [])
        lines += [f"        note: {n} (left out)" for n in unread]
        if b.get("screening"):
            from convladder.executors.halving import screening_line

            lines.append(f"        {screening_line(b['screening'])}")
    return "\n".join(lines + [f"({MEDIAN_RULE})"])


def _fmt(v: Any, kind: str = ".2f") -> str:
    return "-" if v is None else format(v, kind)
