"""The frontier: the best network under each of several parameter budgets, measured over seeds.

For every budget: generate networks of the notes' family (3x3 blocks, a transition = maxpool2x2 + 1x1, BN
after every layer but the last, small dropout, GAP + 1x1 to the classes, no bias, no FC), count their
parameters from the spec before anything trains, keep the ones closest under the budget, search them with
the recipe values through the sweep machinery (`sweep.run_sweep`: any executor, ASHA on Ray Tune), pick the
winner on the *validation* split, then re-train the winner over N fresh seeds and record the min / median /
max of the final-epoch test accuracy. docs/frontier.md has the file format and the design choices.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from convladder.errors import UserError
from convladder.executors.base import Executor, InProcessExecutor
from convladder.executors.scheduled import SchedulerSpec, parse_scheduler
from convladder.executors.sweep import Param, SweepSpec, Trial, _int, make_trials, read_yaml_mapping, run_sweep
from convladder.executors.sweep import write_summary as write_sweep_summary

TOP_KEYS = {"name", "budgets", "trials", "near", "seeds", "search_seeds", "search", "samples", "sample_seed",
            "scheduler", "base", "space", "recipe", "candidates"}
SPACE_DEFAULTS: dict[str, list[Any]] = {
    "before": [2, 3],  # 3x3 convolutions before the transition: where the transition sits
    "after": [3, 4],  # 3x3 convolutions after it
    "first": [4, 6, 8, 10, 12],  # channels of the first convolution
    "width1": [4, 6, 8, 10, 12, 16, 20],  # channels of the other convolutions before the transition
    "squeeze": [4, 6, 8, 10, 12],  # channels of the transition's 1x1
    "width2": [6, 8, 10, 12, 14, 16, 20, 24, 28, 32],  # channels of the convolutions after the transition
    "dropout": [0.05],  # after each 3x3 block (not the transition, not the output)
}
SPACE_KEYS = set(SPACE_DEFAULTS) | {"classes", "pad_last"}
DEFAULT_BUDGETS = [2000, 3000, 4000, 5000, 6000, 8000, 10000, 15000, 20000]


@dataclass
class FrontierSpec:
    """A parsed frontier file (or the defaults with command-line options)."""

    name: str
    budgets: list[int]
    base: dict[str, Any]
    space: dict[str, Any]
    recipe: dict[str, list[Any]]  # TrainConfig key -> values searched (grid, or random draws)
    candidates: list[str] = field(default_factory=list)  # extra networks (names or spec text) tried where they fit
    trials: int = 4  # architectures per budget from the space (0: only `candidates`)
    near: float = 0.6  # generated networks have at least near x budget parameters
    seeds: int = 5  # re-train seeds of each winner
    search_seeds: int = 1  # seeds per search trial; selection uses the worst of them on validation
    search: str = "grid"
    samples: int = 8
    sample_seed: int = 0
    scheduler: SchedulerSpec | None = None
    path: str | None = None


@dataclass
class Candidate:
    """One network of the search: its spec text, parameters (spec count) and where it came from."""

    text: str
    params: int
    shape: dict[str, Any]  # the family's dimensions, or {"given": name} for an explicit candidate


# -- reading ----------------------------------------------------------------------------------------------
def parse_budget(value: Any, where: str = "budget") -> int:
    """2000, '2k', '1.5k', '20000' -> whole parameters; anything else is a UserError."""
    text = str(value).strip().lower().replace(",", "").replace("_", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(k?)", text) if not isinstance(value, bool) else None
    number = float(match[1]) * (1000 if match[2] else 1) if match else 0
    if not match or number < 1 or number != int(number):
        raise UserError(f"{where}: budget {value!r} is not a parameter count — write e.g. 5000 or 5k")
    return int(number)


def _list(value: Any, where: str) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UserError(f"{where}: needs at least one value")
    return items


def load_frontier(path: str | Path | None, **overrides: Any) -> FrontierSpec:
    """Read a frontier file (None: the defaults) and apply the command line's overrides; UserError on bad input."""
    if path is None:
        return parse_frontier({}, **overrides)
    p, data, lines = read_yaml_mapping(path, "frontier file", "name:, budgets:, space:, recipe:, ...")
    spec = parse_frontier(data, lambda *key: f"{p}:{lines.get(tuple(key), '?')}", default_name=p.stem, **overrides)
    spec.path = str(p)
    return spec


def parse_frontier(data: dict[str, Any], where: Callable[..., str] = lambda *k: "frontier", *,
                   default_name: str = "frontier", budgets: str | None = None, seeds: int | None = None,
                   trials: int | None = None, epochs: str | None = None, dataset: str | None = None) -> FrontierSpec:
    """A FrontierSpec from a mapping; `where(*key)` says file:line for errors; keyword overrides win."""
    from convladder.train.config import field_names, val_images

    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{where(key)}: unknown frontier key {key!r}; known: {', '.join(sorted(TOP_KEYS))}")
    known = set(field_names())
    base = {str(k).replace("-", "_"): v for k, v in _mapping(data, "base", where).items()}
    for key in base:
        if key not in known:
            raise UserError(f"{where('base', key)}: unknown config key {key!r} under base:; known: {', '.join(sorted(known))}")
    if "model" in base:
        raise UserError(f"{where('base', 'model')}: base: may not set model — the frontier generates the networks "
                        "(add your own under candidates:)")
    recipe: dict[str, list[Any]] = {}
    for key, values in _mapping(data, "recipe", where).items():
        name = str(key).replace("-", "_")
        if name not in known or name in ("model", "seed", "seeds", "tags"):
            raise UserError(f"{where('recipe', key)}: recipe key {key!r} is not a searchable config key "
                            "(e.g. lr, epochs, rotate, translate, scale, weight_decay)")
        recipe[name] = _list(values, where("recipe", key))
        for v in recipe[name]:  # type-check every recipe value now, not when its trial comes up
            _check_config({name: v}, where("recipe", key))
    space = dict(SPACE_DEFAULTS) | {"classes": 10, "pad_last": True}
    for key, values in _mapping(data, "space", where).items():
        if key not in SPACE_KEYS:
            raise UserError(f"{where('space', key)}: unknown space key {key!r}; known: {', '.join(sorted(SPACE_KEYS))}")
        if key in ("classes", "pad_last"):
            if (isinstance(values, bool) or not isinstance(values, int) or values < 2) if key == "classes" \
                    else not isinstance(values, bool):
                raise UserError(f"{where('space', key)}: {key} takes " + ("a whole number >= 2" if key == "classes"
                                                                          else "true or false"))
            space[key] = values
            continue
        values = _list(values, where("space", key))
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and (0 <= v < 1 if key == "dropout"
                 else v == int(v) and v >= (0 if key == "before" else 1)) for v in values)
        if not ok:
            raise UserError(f"{where('space', key)}: {key} takes " + ("dropout rates in [0, 1)" if key == "dropout"
                            else "whole numbers >= 1" if key != "before" else "whole numbers >= 0"))
        space[key] = [float(v) for v in values] if key == "dropout" else [int(v) for v in values]
    raw_budgets = budgets.split(",") if budgets is not None else data.get("budgets", DEFAULT_BUDGETS)
    src = "--budgets" if budgets is not None else where("budgets")
    budget_list = sorted({parse_budget(b, src) for b in _list(raw_budgets, src) if str(b).strip()})
    if not budget_list:
        raise UserError(f"{src}: give at least one budget, e.g. 2k,5k")
    if epochs is not None:
        recipe["epochs"] = [_int(_epochs(e), "--epochs (e.g. 10,15)") for e in epochs.split(",") if e.strip()]
        if not recipe["epochs"]:
            raise UserError("--epochs: give whole numbers separated by commas, e.g. 10,15")
    if dataset is not None:
        base["dataset"] = dataset
    near = data.get("near", 0.6)
    if isinstance(near, bool) or not isinstance(near, (int, float)) or not 0 <= near < 1:
        raise UserError(f"{where('near')}: near must be a fraction in [0, 1) (0.6 = at least 60 % of the budget)")
    search = str(data.get("search", "grid"))
    if search not in ("grid", "random"):
        raise UserError(f"{where('search')}: search must be grid or random, not {search!r}")
    candidates = [str(c) for c in _list(data.get("candidates"), where("candidates"))] if data.get("candidates") else []
    for c in candidates:  # a typo in a name is an error now, not when its budget comes up
        try:
            spec_params(c)
        except UserError as exc:
            raise UserError(f"{where('candidates')}: candidate {c[:60]!r}: {exc}") from None
    spec = FrontierSpec(
        name=str(data.get("name") or default_name), budgets=budget_list, base=base, space=space, recipe=recipe,
        candidates=candidates,
        trials=trials if trials is not None else _int(data.get("trials", 4), where("trials"), minimum=0),
        near=float(near), seeds=seeds if seeds is not None else _int(data.get("seeds", 5), where("seeds")),
        search_seeds=_int(data.get("search_seeds", 1), where("search_seeds")), search=search,
        samples=_int(data.get("samples", 8), where("samples")),
        sample_seed=_int(data.get("sample_seed", 0), where("sample_seed"), minimum=0),
        scheduler=parse_scheduler(data.get("scheduler"), where))
    if spec.seeds < 1 or spec.trials < 0:
        raise UserError(f"--seeds must be at least 1 and --trials at least 0 (got {spec.seeds} and {spec.trials})")
    if spec.trials == 0 and not spec.candidates:
        raise UserError(f"{where('trials')}: trials: 0 tries only your candidates: — list some, or give trials >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
        raise UserError(f"{where('name')}: name {spec.name!r} may hold letters, digits, '.', '_' and '-' only")
    config = _check_config(base, where("base"))
    if val_images(config) == 0:
        raise UserError(f"{where('base')}: the frontier selects on the validation split, but base: leaves none "
                        "(val_size: 0 or a subset under 10 images); keep val_size > 0 — the test set never selects")
    return spec


def _mapping(data: dict[str, Any], key: str, where: Callable[..., str]) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where(key)}: {key}: must be a mapping of key: value lines, not {value!r}")
    return value


def _check_config(values: dict[str, Any], where: str) -> Any:
    """The TrainConfig of `values`, its error prefixed with where it came from."""
    from convladder.train.config import TrainConfig

    try:
        return TrainConfig.from_dict(values)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _epochs(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


# -- the networks -----------------------------------------------------------------------------------------
def family_text(before: int, after: int, first: int, width1: int, squeeze: int, width2: int, dropout: float,
                classes: int = 10, pad_last: bool = True) -> str:
    """One network of the notes' family as spec text (no bias anywhere, BN after every layer but the last)."""
    drop = f" dropout({dropout:g})" if dropout > 0 else ""
    blocks, n = [], 0
    for i in range(before + after):
        n += 1
        width = first if i == 0 else width1 if i < before else width2
        pad = ", padding=1" if pad_last and i == before + after - 1 and after > 0 else ""
        blocks.append(f"conv{n}[conv3x3({width}{pad}, bias=false) relu bn{drop}]")
        if i == before - 1:
            blocks.append(f"trans1[maxpool2x2 conv1x1({squeeze}, bias=false) relu bn]")
    return " ".join(blocks) + f" out[gap conv1x1({classes}, bias=false) logsoftmax]"


def spec_params(text: str) -> int:
    """Parameters of a spec (registered name or text), counted from the spec before anything is built."""
    from convladder.spec.build import check_size
    from convladder.spec.registry import resolve_spec

    return check_size(resolve_spec(text)).params


def family(space: dict[str, Any]) -> tuple[list[Candidate], int]:
    """Every network of the space with its parameter count (spec count, nothing built), and how many do not fit.

    The notes' rules prune the product: the first convolution is no wider than the block it starts, the
    transition's 1x1 reduces (squeeze <= width1) and the block after it does not start below the squeeze.
    """
    key = repr(sorted(space.items()))
    if key in _FAMILY:
        return _FAMILY[key]
    out, unfit, seen = [], 0, set()
    for before, after, first, w1, sq, w2 in itertools.product(space["before"], space["after"], space["first"],
                                                              space["width1"], space["squeeze"], space["width2"]):
        if before < 1 or (before == 1 and w1 != space["width1"][0]):
            continue  # before=1: the first conv is the whole block, width1 does not apply
        if first > w1 or sq > w1 or w2 < sq:
            continue
        text = family_text(before, after, first, w1, sq, w2, 0.0, int(space["classes"]), bool(space["pad_last"]))
        if text in seen:
            continue
        seen.add(text)
        try:
            params = spec_params(text)
        except UserError:  # the maps shrink below 1x1: the shape does not fit the input
            unfit += 1
            continue
        out.append(Candidate(text, params, {"before": before, "after": after, "first": first, "width1": w1,
                                            "squeeze": sq, "width2": w2}))
    _FAMILY[key] = (out, unfit)
    return out, unfit


_FAMILY: dict[str, tuple[list[Candidate], int]] = {}  # the space's networks, counted once per process


def candidates(spec: FrontierSpec, budget: int) -> tuple[list[Candidate], dict[str, Any]]:
    """The architectures tried under `budget`: the `trials` nearest under it, one per shape in turn.

    Every network of the space is counted; over-budget ones and those under near x budget are dropped here,
    so they never train. Shapes (before, after) take turns so the trials are not all one layout.
    Explicit candidates between near x budget and the budget are added; the others are listed as rejected
    (a 2k network is not a 5k budget's answer).
    """
    s = spec.space
    pool, unfit = family(s) if spec.trials else ([], 0)  # trials: 0 tries the file's candidates only
    seen = {c.text: c for c in pool if c.params <= budget}
    over = len(pool) - len(seen)
    near = [c for c in seen.values() if c.params >= spec.near * budget]
    groups: dict[tuple[int, int], list[Candidate]] = {}
    for c in sorted(near, key=lambda c: (-c.params, c.text)):
        groups.setdefault((c.shape["before"], c.shape["after"]), []).append(c)
    chosen: list[Candidate] = []
    for row in itertools.zip_longest(*groups.values()):  # round robin over shapes, nearest first in each
        chosen += [c for c in row if c is not None]
    chosen = chosen[:spec.trials] if spec.trials else []
    with_dropout = [Candidate(family_text(**c.shape, dropout=d, classes=int(s["classes"]), pad_last=bool(s["pad_last"])),
                              c.params, {**c.shape, "dropout": d}) for c in chosen for d in s["dropout"]]
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
    stats = {"generated": len(pool) + unfit, "over_budget": over, "does_not_fit": unfit, "in_budget": len(seen),
             "near": len(near), "chosen": len(chosen), "rejected": rejected}
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


def _final(runs_root: str | Path, run_id: str | None, key: str) -> float | None:
    """The final-epoch `key` (val_acc, test_acc) of a run, from its result.json."""
    from convladder.runs.store import RunStore

    if not run_id:
        return None
    value = (RunStore(runs_root).read_result(run_id).get("final") or {}).get(key)
    return float(value) if value is not None else None


def select(trials: list[Trial], runs_root: str | Path) -> tuple[Trial | None, list[dict[str, Any]]]:
    """The winner: the highest worst-seed *validation* accuracy (final epoch), then fewer parameters.

    The test accuracy of search trials is never read here: the test set does not choose.
    """
    rows, scored = [], []
    for t in trials:
        vals = [_final(runs_root, r.get("run_id"), "val_acc") for r in t.runs] if t.status == "completed" else []
        val = min(vals) if vals and None not in vals else None
        rows.append({"trial": t.id, "status": t.status, "model": t.values.get("model"), "params": t.params,
                     "recipe": {k: v for k, v in t.values.items() if k != "model"}, "val_acc": val,
                     "error": t.error, "runs": [r.get("run_id") for r in t.runs]})
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


def _spread(values: list[float]) -> dict[str, float] | None:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else None


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
    if searched:
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
    vals = [v for v in (_final(runs_root, r.get("run_id"), "val_acc") for r in ok) if v is not None]
    row["final"] = {"status": final.status, "error": final.error, "seeds": [int(r["label"].rsplit(" ", 1)[-1])
                    for r in final.runs], "runs": [r.get("run_id") for r in final.runs], "test_accs": tests,
                    "test_acc": _spread(tests), "val_acc": _spread(vals), "completed": len(ok)}
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
        "scheduler": spec.scheduler.describe() if spec.scheduler else None, "seeds": spec.seeds,
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
            lines.append(f"        {w['model']}" + (f"  [{recipe}]" if recipe else ""))
    return "\n".join(lines)


def _fmt(v: Any, kind: str = ".2f") -> str:
    return "-" if v is None else format(v, kind)
