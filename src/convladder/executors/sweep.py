"""Sweeps: a search space in YAML, a parameter budget checked before training, trials run by an executor.

File format (docs/scaling.md has the long version):

    name: width-study
    model: "c1[conv3x3({c1}, bias=false) relu bn dropout({drop})] ... out[gap conv1x1(10)]"  # template
    budget: 8000            # max parameters; networks above it are rejected before they train
    search: grid            # or random (with samples: N per studied value, sample_seed: S)
    seeds: 2                # each trial trains seeds seed .. seed+N-1; ranked by the worst of them
    scheduler: asha         # optional: Ray Tune's ASHA stops weak trials early on val_acc (executors/scheduled.py)
    base: {dataset: mnist, epochs: 3, threads: 1}   # TrainConfig keys held for every trial
    params:
      c1:   {role: studied,  values: [4, 8, 12]}    # the effect we read
      drop: {role: nuisance, values: [0.0, 0.05]}   # optimised for each studied value (fair comparison)
      lr:   {role: nuisance, loguniform: [0.01, 0.3]}  # random search only
      batch_size: {role: fixed, value: 64}          # held

A parameter is a `{placeholder}` of the model template or a TrainConfig key. Anything else is an error
naming the key and its line in the file.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.executors.base import Executor, InProcessExecutor, Job, make_job
from convladder.executors.scheduled import SchedulerSpec, parse_scheduler, stopped_summary

TOP_KEYS = {"name", "model", "budget", "search", "samples", "sample_seed", "seeds", "base", "params", "scheduler"}
PARAM_KEYS = {"role", "values", "value", "uniform", "loguniform", "randint"}
ROLES = ("studied", "nuisance", "fixed")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")


@dataclass
class Param:
    """One hyperparameter of the search space."""

    name: str
    role: str  # studied / nuisance / fixed
    values: list[Any] | None = None  # discrete choices (grid, or random choice)
    dist: tuple[str, float, float] | None = None  # (uniform|loguniform|randint, low, high): random search only


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    name: str
    model: str | None  # template with {placeholders}, or None (then base.model / a 'model' param decides)
    base: dict[str, Any]
    params: list[Param]
    budget: int | None = None
    search: str = "grid"
    samples: int = 4
    sample_seed: int = 0
    seeds: int = 1
    path: str | None = None
    scheduler: SchedulerSpec | None = None  # early stopping on Ray Tune (ASHA); None = every trial trains fully

    @property
    def studied(self) -> Param | None:
        return next((p for p in self.params if p.role == "studied"), None)


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


# -- reading the file -------------------------------------------------------------------------------------
def _key_lines(node: yaml.Node, path: tuple[str, ...] = (), out: dict | None = None) -> dict[tuple[str, ...], int]:
    """(key, subkey, ...) -> 1-based line of that key in the file, so errors can point at it."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = path + (str(key_node.value),)
            out[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key, out)
    return out


def read_yaml_mapping(path: str | Path, what: str, keys: str) -> tuple[Path, dict[str, Any], dict[tuple[str, ...], int]]:
    """(path, mapping, line of each key path) of a YAML file; UserError naming the file (and line) otherwise.

    `what` names the file kind in messages ('sweep file'), `keys` the top-level keys it expects.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist — give a YAML file")
    text = p.read_text()
    try:
        lines = _key_lines(yaml.compose(text) or yaml.MappingNode("tag:yaml.org,2002:map", []))
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{p}:{mark.line + 1 if mark else '?'}: {what} is not valid YAML "
                        f"({getattr(exc, 'problem', None) or str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {p} must be a mapping ({keys})")
    return p, data, lines


def load_sweep(path: str | Path, seeds: int | None = None) -> SweepSpec:
    """Read and check a sweep file; raise UserError naming the key and line of anything wrong."""
    p, data, lines = read_yaml_mapping(path, "sweep file", "name:, model:, params:, ...")
    spec = parse_sweep(data, lambda *key: f"{p}:{lines.get(tuple(key), '?')}", default_name=p.stem)
    spec.path = str(p)
    # an own class (model: nets.py:Net) is found relative to the sweep file, wherever the sweep is started
    spec.model = _own_relative_to(spec.model, p.parent)
    if "model" in spec.base:
        spec.base["model"] = _own_relative_to(spec.base["model"], p.parent)
    if seeds is not None:
        spec.seeds = seeds
    return spec


def parse_sweep(data: dict[str, Any], where: Callable[..., str] = lambda *k: "sweep",
                default_name: str = "sweep") -> SweepSpec:
    """A SweepSpec from a mapping; `where(*key)` says 'file:line' of a key for error messages."""
    from convladder.train.config import TrainConfig, field_names

    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{where(key)}: unknown sweep key {key!r}; known: {', '.join(sorted(TOP_KEYS))}")
    base = dict(data.get("base") or {})
    known = set(field_names())
    for key in base:
        if key.replace("-", "_") not in known:
            raise UserError(f"{where('base', key)}: unknown config key {key!r} under base:; known: {', '.join(sorted(known))}")
    base = {k.replace("-", "_"): v for k, v in base.items()}
    model = data.get("model")
    holes = _placeholders(model) if isinstance(model, str) else set()
    params = []
    for name, entry in (data.get("params") or {}).items():
        name = str(name)
        if name not in holes and name.replace("-", "_") not in known:
            raise UserError(f"{where('params', name)}: unknown parameter {name!r}: it is neither a {{placeholder}} of "
                            f"the model template ({', '.join(sorted(holes)) or 'none'}) nor a config key")
        params.append(_param(name if name in holes else name.replace("-", "_"), entry,
                             lambda *k, n=name: where("params", n, *k)))
    missing = holes - {p.name for p in params}
    if missing:
        raise UserError(f"{where('model')}: the model template uses {{{', '.join(sorted(missing))}}} but params: "
                        "gives no values for it")
    studied = [p.name for p in params if p.role == "studied"]
    if len(studied) > 1:
        raise UserError(f"{where('params', studied[1])}: only one parameter can be studied at a time "
                        f"(one change at a time); found {', '.join(studied)}")
    search = str(data.get("search", "grid"))
    if search not in ("grid", "random"):
        raise UserError(f"{where('search')}: search must be grid or random, not {search!r}")
    if search == "grid":
        for p in params:
            if p.dist:
                raise UserError(f"{where('params', p.name)}: {p.dist[0]} needs search: random (a grid needs values:)")
    spec = SweepSpec(name=str(data.get("name") or default_name), model=model, base=base, params=params,
                     budget=_int(data.get("budget"), where("budget"), allow_none=True), search=search,
                     samples=_int(data.get("samples", 4), where("samples")),
                     sample_seed=_int(data.get("sample_seed", 0), where("sample_seed"), minimum=0),
                     seeds=_int(data.get("seeds", base.get("seeds", 1)), where("seeds")),
                     scheduler=parse_scheduler(data.get("scheduler"), where))
    if spec.scheduler and int(base.get("val_size", TrainConfig.val_size)) == 0:
        raise UserError(f"{where('scheduler')}: the scheduler compares trials on validation accuracy, but base: "
                        "sets val_size: 0; keep a validation split (the test set never stops a trial)")
    base.pop("seeds", None)  # seeds are expanded into jobs here, one run per seed
    TrainConfig.from_dict({k: v for k, v in base.items()})  # type-check the fixed keys now, not per trial
    return spec


def _own_relative_to(model: Any, folder: Path) -> Any:
    """`file.py:Class` (a template too) with a relative file -> the file under `folder`, absolute."""
    match = re.match(r"^(?P<file>[^:]+\.py):(?P<cls>.+)$", model) if isinstance(model, str) else None
    if not match or Path(match["file"]).expanduser().is_absolute():
        return model
    return f"{(folder / match['file']).resolve()}:{match['cls']}"


def _param_count(config: Any) -> int:
    """Parameters of a trial's network: a spec's table, or an own class built (its file imported) to count."""
    from convladder.spec.own import is_own_ref

    if is_own_ref(config.model):
        from convladder.spec.own import load_own

        module, _, _ = load_own(config.model, config.model_args)
        return sum(p.numel() for p in module.parameters())
    from convladder.analysis.table import summarize
    from convladder.spec.registry import resolve_spec

    return summarize(resolve_spec(config.model)).total_params


def _int(value: Any, where: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise UserError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return int(value)


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _param(name: str, entry: Any, where: Callable[..., str]) -> Param:
    """One params: entry; a bare scalar means fixed, a bare list means nuisance values."""
    if not isinstance(entry, dict):
        return Param(name, "fixed", [entry]) if not isinstance(entry, list) else Param(name, "nuisance", list(entry))
    for key in entry:
        if key not in PARAM_KEYS:
            raise UserError(f"{where(key)}: unknown key {key!r} in parameter {name!r}; known: {', '.join(sorted(PARAM_KEYS))}")
    role = entry.get("role", "nuisance")
    if role not in ROLES:
        raise UserError(f"{where('role')}: role of {name!r} must be studied, nuisance or fixed, not {role!r}")
    if "value" in entry:
        if role != "fixed":
            raise UserError(f"{where('value')}: value: is for fixed parameters; use values: [...] for {role} {name!r}")
        return Param(name, role, [entry["value"]])
    dists = [d for d in DISTRIBUTIONS if d in entry]
    if "values" in entry:
        values = entry["values"]
        if not isinstance(values, list) or not values:
            raise UserError(f"{where('values')}: values of {name!r} must be a non-empty list")
        if role == "fixed" and len(values) != 1:
            raise UserError(f"{where('values')}: fixed {name!r} takes one value (value: X)")
        return Param(name, role, list(values))
    if len(dists) == 1 and role == "nuisance":
        low_high = entry[dists[0]]
        if not (isinstance(low_high, list) and len(low_high) == 2 and all(isinstance(v, (int, float)) for v in low_high)
                and low_high[0] < low_high[1] and (dists[0] != "loguniform" or low_high[0] > 0)):
            raise UserError(f"{where(dists[0])}: {dists[0]} of {name!r} needs [low, high] with low < high"
                            + (" and low > 0" if dists[0] == "loguniform" else ""))
        return Param(name, role, None, (dists[0], float(low_high[0]), float(low_high[1])))
    raise UserError(f"{where()}: parameter {name!r} needs values: [...]" +
                    (" (distributions are for nuisance parameters)" if dists else " or a distribution (random search)"))


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

    holes = _placeholders(spec.model) if spec.model else set()
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
            trial.params = _param_count(tc)
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
    """Completed when every seed completed (or was in the store); stopped when the scheduler ended a seed early."""
    ok = [r for r in t.runs if r.get("status") in ("completed", "skipped") and r.get("final_test_acc") is not None]
    stopped = [r for r in t.runs if r.get("status") == "stopped"]
    bad = [r for r in t.runs if r not in ok and r not in stopped]
    if stopped and not bad:
        t.status, t.error = "stopped", stopped_summary(stopped)
        return  # no test accuracy: a stopped trial is not ranked by the test set
    if bad or not ok:
        t.status = "failed"
        t.error = "; ".join(f"{r.get('label')}: {r.get('error') or r.get('status')}" for r in bad) or "no runs"
    else:
        t.status = "completed"
    accs = [float(r["final_test_acc"]) for r in ok]
    if accs:
        t.acc = {"min": min(accs), "median": statistics.median(accs), "max": max(accs)}


def rank(trials: list[Trial]) -> list[Trial]:
    """Completed trials by min-over-seeds test accuracy (high first), then parameters (few first); then the rest."""
    order = {"completed": 0, "stopped": 1, "failed": 2, "rejected": 3, "pending": 4}
    return sorted(trials, key=lambda t: (order[t.status], -(t.acc.get("min") or 0.0) if t.status == "completed" else 0,
                                         t.params if t.params is not None else 1 << 62, t.id))


def sweep_summary(result: SweepResult) -> dict[str, Any]:
    """Everything a report needs: the ranked table and the isolation data of the studied parameter.

    `isolation`: for each studied value, its best completed trial (rank order) with the nuisance values
    that got it there, so a plot of min-over-seeds accuracy against the studied value is a fair one.
    """
    spec = result.spec
    ranked = rank(result.trials)
    rows = [{"rank": i + 1 if t.status == "completed" else None, "trial": t.id, "status": t.status,
             "values": t.values, "params": t.params, "test_acc": t.acc or None, "error": t.error,
             "runs": [r.get("run_id") for r in t.runs]} for i, t in enumerate(ranked)]
    studied = spec.studied
    isolation = []
    if studied:
        for value in studied.values or []:
            best = next((t for t in ranked if t.status == "completed" and t.values.get(studied.name) == value), None)
            tried = [t for t in result.trials if t.values.get(studied.name) == value]
            isolation.append({"value": value, "best_trial": best.id if best else None,
                              "test_acc": best.acc if best else None, "params": best.params if best else None,
                              "nuisance": {k: v for k, v in best.values.items() if k != studied.name} if best else None,
                              "trials": len(tried), "completed": sum(t.status == "completed" for t in tried),
                              "rejected": sum(t.status == "rejected" for t in tried)})
    counts = {s: sum(t.status == s for t in result.trials) for s in ("completed", "stopped", "failed", "rejected")}
    return {"name": spec.name, "file": spec.path, "executor": result.executor, "search": spec.search,
            "seeds": spec.seeds, "budget": spec.budget,
            "scheduler": spec.scheduler.describe() if spec.scheduler else None, "model_template": spec.model,
            "roles": {p.name: p.role for p in spec.params}, "studied": studied.name if studied else None,
            "trials": rows, "isolation": isolation, "counts": counts, "wall_time_s": result.wall_time_s,
            "runs_root": result.runs_root}


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
    """The ranked table as text, then the isolation lines of the studied parameter."""
    names = list(summary["roles"])
    head = f"{'rank':>4} {'trial':5} {'status':9} " + " ".join(f"{n[:10]:>10}" for n in names) + \
        f" {'params':>8} {'min acc':>8} {'median':>7} {'max':>7}"
    lines = ([f"scheduler: {summary['scheduler']}; stopped trials are listed after the completed ones, unranked"]
             if summary.get("scheduler") else []) + [head]
    for r in summary["trials"]:
        acc = r["test_acc"] or {}
        vals = " ".join(f"{_short(r['values'].get(n)):>10}" for n in names)
        lines.append(f"{r['rank'] or '-':>4} {r['trial']:5} {r['status']:9} {vals} {_short(r['params']):>8} "
                     f"{_short(acc.get('min')):>8} {_short(acc.get('median')):>7} {_short(acc.get('max')):>7}"
                     + (f"  {r['error']}" if r["error"] else ""))
    if summary["studied"]:
        lines.append(f"\nisolation of {summary['studied']} (best trial per value, min over {summary['seeds']} seed(s)):")
        for row in summary["isolation"]:
            acc = row["test_acc"] or {}
            lines.append(f"  {summary['studied']}={_short(row['value'])}: "
                         + (f"{row['best_trial']} min acc {_short(acc.get('min'))} params {_short(row['params'])} "
                            f"with {json.dumps(row['nuisance'])}" if row["best_trial"] else "no completed trial")
                         + f"  ({row['completed']}/{row['trials']} completed, {row['rejected']} over budget)")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"
    return str(v)
