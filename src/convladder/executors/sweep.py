"""Sweeps: a search space in YAML, a parameter budget checked before training, trials run by an executor.

File format (docs/scaling.md has the long version):

    name: width-study
    model: "c1[conv3x3({c1}, bias=false) relu bn dropout({drop})] ... out[gap conv1x1(10)]"  # template
    budget: 8000            # max parameters; networks above it are rejected before they train
    search: grid            # or random (with samples: N per studied value, sample_seed: S)
    seeds: 2                # each trial trains seeds seed .. seed+N-1; ranked by the worst of them on validation
    scheduler: asha         # optional: Ray Tune's ASHA stops weak trials early on val_acc (executors/scheduled.py)
    base: {dataset: mnist, epochs: 3, threads: 1}   # TrainConfig keys held for every trial
    params:
      c1:   {role: studied,  values: [4, 8, 12]}    # the effect we read
      drop: {role: nuisance, values: [0.0, 0.05]}   # optimised for each studied value (fair comparison)
      lr:   {role: nuisance, loguniform: [0.01, 0.3]}  # random search only
      batch_size: {role: fixed, value: 64}          # held

A parameter is a `{placeholder}` of the model template or a TrainConfig key. Anything else is an error
naming the key and its line in the file (`sweepspec.py` reads and checks the file; this module makes the
trials, runs them and summarises).

Selection: trials are ranked (and the best nuisance setting per studied value picked) on the final-epoch
*validation* accuracy of their worst seed; test accuracy is reported beside it and never chooses. Trials
without a validation split (val_size 0) fall back to ranking on test, and the summary (`ranked_on`) and every
table say so.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors.base import Executor, InProcessExecutor, Job, make_job
from convladder.train.distill import resolve_dict as resolve_teacher
from convladder.executors.scheduled import stopped_summary
from convladder.executors.sweepspec import Param, SweepSpec, param_count, placeholders
from convladder.train.result import MEDIAN_RULE, min_median_max


@dataclass
class Trial:
    """One point of the search space, trained for every seed."""

    id: str
    values: dict[str, Any]  # studied + nuisance + fixed values of this trial
    config: dict[str, Any]  # the TrainConfig dict (seed = first seed)
    params: int | None = None
    status: str = "pending"  # pending / completed / failed / rejected
    error: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # one executor result per seed
    acc: dict[str, float] = field(default_factory=dict)  # min/median/max final test accuracy over seeds
    val: dict[str, float] = field(default_factory=dict)  # min/median/max final validation accuracy (all seeds have one)


# -- trials -----------------------------------------------------------------------------------------------
def _sample(p: Param, rng: random.Random) -> Any:
    if p.values is not None:
        return rng.choice(p.values)
    kind, low, high = p.dist  # type: ignore[misc]
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.randint(int(low), int(high))


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The value sets of all trials: a full grid, or `samples` random nuisance draws per studied value.

    Random search draws the nuisance values once and reuses them for every studied value (paired design):
    each studied value gets the same chances, so their best trials are comparable.
    """
    studied = spec.studied
    others = [p for p in spec.params if p is not studied]
    studied_values = studied.values if studied else [None]
    if spec.search == "grid":
        combos = [dict(zip([p.name for p in others], vs)) for vs in itertools.product(*[p.values for p in others])]
    else:
        rng = random.Random(spec.sample_seed)
        combos = [{p.name: _sample(p, rng) for p in others} for _ in range(spec.samples)]
    return [({studied.name: s} if studied else {}) | combo for s in studied_values for combo in combos]


def make_trials(spec: SweepSpec) -> list[Trial]:
    """Trials with their configs and parameter counts; over-budget or unbuildable ones are marked already."""
    from convladder.train.config import TrainConfig, val_images, validate

    holes = placeholders(spec.model) if spec.model else set()
    trials = []
    for i, values in enumerate(expand(spec)):
        config = dict(spec.base)
        if spec.model:
            config["model"] = spec.model.format(**{k: v for k, v in values.items() if k in holes})
        config.update({k: v for k, v in values.items() if k not in holes})
        config["tags"] = list(config.get("tags") or []) + [f"sweep:{spec.name}", f"trial:t{i:03d}"]
        trial = Trial(f"t{i:03d}", values, config)
        try:
            tc = TrainConfig.from_dict(config)
            validate(tc)
            trial.config = tc.replace(val_size=val_images(tc)).to_dict()  # the split the run really uses
            trial.params = param_count(tc)
        except Exception as exc:  # noqa: BLE001 - a bad point (spec error, invalid value) fails alone
            trial.status, trial.error = "failed", f"{type(exc).__name__}: {exc}"
            trials.append(trial)
            continue
        if spec.budget is not None and trial.params > spec.budget:
            trial.status = "rejected"
            trial.error = f"{trial.params:,} parameters > budget {spec.budget:,}"
        trials.append(trial)
    return trials


def trial_jobs(trial: Trial, seeds: int) -> list[Job]:
    """One job per seed (seed, seed+1, ...), labelled with the trial id."""
    first = int(trial.config.get("seed", 1))
    return [make_job({**trial.config, "seed": first + k, "seeds": 1}, label=f"{trial.id} seed {first + k}",
                     trial=trial.id) for k in range(seeds)]


@dataclass
class SweepResult:
    spec: SweepSpec
    trials: list[Trial]
    executor: str
    wall_time_s: float
    runs_root: str


def run_sweep(spec: SweepSpec, runs_root: str | Path, executor: Executor | None = None,
              on_done: Callable[[dict[str, Any]], None] | None = None) -> SweepResult:
    """Train every in-budget trial for every seed through `executor`; failures are recorded, the rest go on.

    With `spec.scheduler` the jobs run as Ray Tune trials and weak ones are stopped early (status 'stopped').
    """
    executor = executor or InProcessExecutor()
    if spec.scheduler and not hasattr(executor, "connect"):
        raise UserError(f"scheduler: {spec.scheduler.name} runs on Ray Tune: add --executor ray "
                        "(the in-process executor trains every trial to the end; drop scheduler: for that)")
    t0 = time.perf_counter()
    trials = make_trials(spec)
    runnable = [t for t in trials if t.status == "pending"]
    for t in runnable:  # teacher: its full run id, which the job key holds (train/distill.py)
        t.config = resolve_teacher(t.config, runs_root)
    jobs = [job for t in runnable for job in trial_jobs(t, spec.seeds)]
    by_id = {t.id: t for t in trials}
    if spec.scheduler:
        from convladder.executors.scheduled import map_scheduled

        done = map_scheduled(executor, jobs, runs_root, spec.scheduler, on_done=on_done)
    else:
        done = executor.map(jobs, runs_root, on_done=on_done)
    for res in done:
        by_id[res["trial"]].runs.append(res)
    for t in runnable:
        _settle(t)
    return SweepResult(spec, trials, getattr(executor, "name", type(executor).__name__),
                       time.perf_counter() - t0, str(runs_root))


def _settle(t: Trial) -> None:
    """Completed when every seed completed (or was in the store); stopped when the scheduler ended a seed early.

    `t.acc` / `t.val`: test / validation accuracy over seeds (`t.val` only when every seed has one).
    """
    ok = [r for r in t.runs if r.get("status") in ("completed", "skipped") and r.get("final_test_acc") is not None]
    stopped = [r for r in t.runs if r.get("status") == "stopped"]
    bad = [r for r in t.runs if r not in ok and r not in stopped]
    if stopped and not bad:
        t.status, t.error = "stopped", stopped_summary(stopped)
        return  # no final accuracy: a stopped trial is not ranked
    if bad or not ok:
        t.status = "failed"
        t.error = "; ".join(f"{r.get('label')}: {r.get('error') or r.get('note') or r.get('status')}"
                            for r in bad) or "no runs"
    else:
        t.status = "completed"
    accs = [float(r["final_test_acc"]) for r in ok]
    if accs:
        t.acc = min_median_max(accs) or {}
    vals = [r.get("final_val_acc") for r in ok]
    if vals and None not in vals:
        t.val = min_median_max(vals) or {}


def ranking_split(trials: list[Trial]) -> tuple[str, str | None]:
    """('val', None) when every completed trial has a validation accuracy, else ('test', why).

    One split ranks the whole sweep. Without completed trials (a dry run) the configs' val_size decide.
    """
    done = [t for t in trials if t.status == "completed"]
    if done:
        missing = [t for t in done if not t.val]
        if not missing:
            return "val", None
        if all(int(t.config.get("val_size", 1)) == 0 for t in done):
            return "test", "the trials have no validation split (val_size: 0)"
        return "test", f"{len(missing)} of {len(done)} completed trial(s) have no final validation accuracy"
    planned = [t for t in trials if t.status != "failed"]
    if planned and any(int(t.config.get("val_size", 1)) == 0 for t in planned):
        return "test", "the trials have no validation split (val_size: 0)"
    return "val", None


def rank(trials: list[Trial], on: str | None = None) -> list[Trial]:
    """Completed trials by min-over-seeds accuracy on `on` (val/test; default `ranking_split`), high first, then
    parameters (few first), then trial id; then stopped, failed, rejected trials."""
    on = on or ranking_split(trials)[0]
    order = {"completed": 0, "stopped": 1, "failed": 2, "rejected": 3, "pending": 4}

    def score(t: Trial) -> float:
        return -((t.val if on == "val" else t.acc).get("min") or 0.0) if t.status == "completed" else 0.0

    return sorted(trials, key=lambda t: (order[t.status], score(t), t.params if t.params is not None else 1 << 62, t.id))


def sweep_summary(result: SweepResult) -> dict[str, Any]:
    """Everything a report needs: the ranked table and the isolation data of the studied parameter.

    `ranked_on` ('val' or 'test', `ranking_split`) is the split that ranked the trials and picked each
    studied value's best; `ranking` says it in one line. `isolation`: for each studied value, its best
    completed trial (rank order) with the nuisance values that got it there and its test accuracy.
    """
    spec = result.spec
    on, why = ranking_split(result.trials)
    ranked = rank(result.trials, on)
    rows = [{"rank": i + 1 if t.status == "completed" else None, "trial": t.id, "status": t.status,
             "values": t.values, "params": t.params, "val_acc": t.val or None, "test_acc": t.acc or None,
             "error": t.error, "runs": [r.get("run_id") for r in t.runs],
             "retried": [f"{r.get('label')}: {r['retried']}" for r in t.runs if r.get("retried")]}
            for i, t in enumerate(ranked)]
    studied = spec.studied
    isolation = []
    if studied:
        for value in studied.values or []:
            best = next((t for t in ranked if t.status == "completed" and t.values.get(studied.name) == value), None)
            tried = [t for t in result.trials if t.values.get(studied.name) == value]
            isolation.append({"value": value, "best_trial": best.id if best else None,
                              "val_acc": (best.val or None) if best else None,
                              "test_acc": best.acc if best else None, "params": best.params if best else None,
                              "nuisance": {k: v for k, v in best.values.items() if k != studied.name} if best else None,
                              "trials": len(tried), "completed": sum(t.status == "completed" for t in tried),
                              "rejected": sum(t.status == "rejected" for t in tried)})
    counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "stopped", "failed", "rejected")}
    summary = {"name": spec.name, "file": spec.path, "executor": result.executor, "search": spec.search,
               "seeds": spec.seeds, "budget": spec.budget, "ranked_on": on, "ranked_on_why": why,
               "scheduler": spec.scheduler.describe() if spec.scheduler else None, "model_template": spec.model,
               "roles": {p.name: p.role for p in spec.params}, "studied": studied.name if studied else None,
               "trials": rows, "isolation": isolation, "counts": counts, "wall_time_s": result.wall_time_s,
               "runs_root": result.runs_root}
    summary["ranking"] = ranking_line(summary)
    return summary


def ranked_on(summary: dict[str, Any]) -> str:
    """'val' or 'test': the split that ranked a summary's trials; a summary without `ranked_on` (written
    before sweeps ranked on validation) was ranked on test."""
    return "val" if summary.get("ranked_on") == "val" else "test"


def ranking_line(summary: dict[str, Any]) -> str:
    """The one line that says which split ranked the trials (and why it is test, when it is)."""
    seeds = summary.get("seeds", 1)
    if ranked_on(summary) == "val":
        return (f"ranked on VAL: the least final-epoch validation accuracy over {seeds} seed(s) orders the trials "
                "and picks each studied value's best; test accuracy (last epoch, min / median / max over seeds) is "
                "reported beside it, never used to choose")
    if "ranked_on" in summary:
        why = f"{summary.get('ranked_on_why') or 'no validation accuracy'}; give base: val_size > 0 to rank on validation"
    else:
        why = "a summary written before sweeps ranked on validation; rerun the sweep to rank on validation"
    return (f"WARNING ranked on TEST: ranked by the least final-epoch TEST accuracy over {seeds} seed(s): the test "
            f"set orders the trials and picks each studied value's best, so their test numbers are optimistic: {why}")


def write_summary(summary: dict[str, Any], runs_root: str | Path, folder_name: str = "sweeps",
                  path: Path | None = None) -> Path:
    """Save the summary atomically as <runs>/<folder_name>/<name>-<time>.json (the report reads it from there),
    or over `path` (a summary being updated as work finishes)."""
    from convladder.runs.handle import atomic_write_json

    if path is None:
        folder = Path(runs_root) / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{summary['name']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(path, summary)
    return path


def format_table(summary: dict[str, Any]) -> str:
    """The ranked table as text, then the isolation lines of the studied parameter.

    Above the header, one line says which split ranked (`ranking_line`). Ranked on val: the least final-epoch
    validation accuracy over seeds, then test min / median / max beside it; ranked on test (no validation
    split, or an older summary): the test min / median / max only.
    """
    names = list(summary["roles"])
    on_val = ranked_on(summary) == "val"
    head = f"{'rank':>4} {'trial':5} {'status':9} " + " ".join(f"{n[:10]:>10}" for n in names) + f" {'params':>8} " + \
        (f"{'min final val':>13} | {'min final test':>14} {'median':>7} {'max':>7}" if on_val else
         f"{'min final test':>14} {'median':>7} {'max':>7}")
    lines = ([f"scheduler: {summary['scheduler']}; stopped trials are listed after the completed ones, unranked"]
             if summary.get("scheduler") else [])
    lines += [ranking_line(summary), head]
    for r in summary["trials"]:
        acc, val = r.get("test_acc") or {}, r.get("val_acc") or {}
        vals = " ".join(f"{_short(r['values'].get(n)):>10}" for n in names)
        nums = (f"{_short(val.get('min')):>13} | {_short(acc.get('min')):>14} {_short(acc.get('median')):>7} "
                f"{_short(acc.get('max')):>7}" if on_val else
                f"{_short(acc.get('min')):>14} {_short(acc.get('median')):>7} {_short(acc.get('max')):>7}")
        lines.append(f"{r['rank'] or '-':>4} {r['trial']:5} {r['status']:9} {vals} {_short(r['params']):>8} {nums}"
                     + (f"  {r['error']}" if r["error"] else ""))
    if summary["studied"]:
        split = "VAL" if on_val else "TEST"
        lines.append(f"\nisolation of {summary['studied']} (best trial per value by the least final-epoch {split} "
                     f"accuracy over {summary['seeds']} seed(s)" + ("; test reported, not used to choose):" if on_val
                                                                    else "):"))
        for row in summary["isolation"]:
            acc, val = row.get("test_acc") or {}, row.get("val_acc") or {}
            test = (f"test min/median/max {_short(acc.get('min'))}/{_short(acc.get('median'))}/{_short(acc.get('max'))}"
                    if on_val else f"min final test {_short(acc.get('min'))}")
            lines.append(f"  {summary['studied']}={_short(row['value'])}: "
                         + (f"{row['best_trial']} " + (f"min final val {_short(val.get('min'))}, " if on_val else "")
                            + f"{test} params {_short(row['params'])} with {json.dumps(row['nuisance'])}"
                            if row["best_trial"] else "no completed trial")
                         + f"  ({row['completed']}/{row['trials']} completed, {row['rejected']} over budget)")
    return "\n".join(lines + [f"({MEDIAN_RULE})"])


def _short(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"
    return str(v)
