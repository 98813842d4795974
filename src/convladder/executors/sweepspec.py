"""A sweep file read and checked: the model template, the parameters and their roles, the budget.

`load_sweep` / `parse_sweep` turn a YAML mapping into a `SweepSpec`; every bad value is a UserError naming the
key and its line in the file. `executors/sweep.py` makes the trials and runs them; the file format is there
and in docs/scaling.md.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.executors.scheduled import SchedulerSpec, parse_scheduler
from convladder.safeparse import clip, read_text, unknown_keys
from convladder.safeparse import load as load_yaml


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
    text = read_text(p, what)
    try:
        data, node = load_yaml(text, f"{what} {p}")  # bounded: aliases, depth, size
        lines = _key_lines(node) if node is not None else {}
        data = data or {}
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
            raise UserError(f"{where(key)}: {unknown_keys([key], TOP_KEYS, 'sweep key')}")
    base = dict(data.get("base") or {})
    known = set(field_names())
    for key in base:
        if key.replace("-", "_") not in known:
            raise UserError(f"{where('base', key)}: {unknown_keys([key], known, 'config key')} (under base:)")
    base = {k.replace("-", "_"): v for k, v in base.items()}
    model = data.get("model")
    holes = placeholders(model) if isinstance(model, str) else set()
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
        raise UserError(f"{where('search')}: search must be grid or random, not {clip(search)}")
    if search == "grid":
        for p in params:
            if p.dist:
                raise UserError(f"{where('params', p.name)}: {p.dist[0]} needs search: random (a grid needs values:)")
    spec = SweepSpec(name=str(data.get("name") or default_name), model=model, base=base, params=params,
                     budget=whole_number(data.get("budget"), where("budget"), allow_none=True), search=search,
                     samples=whole_number(data.get("samples", 4), where("samples")),
                     sample_seed=whole_number(data.get("sample_seed", 0), where("sample_seed"), minimum=0),
                     seeds=whole_number(data.get("seeds", base.get("seeds", 1)), where("seeds")),
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


def param_count(config: Any) -> int:
    """Parameters of a trial's network: a spec's table, or an own class built (its file imported) to count."""
    from convladder.spec.own import is_own_ref

    if is_own_ref(config.model):
        from convladder.spec.own import load_own

        module, _, _ = load_own(config.model, config.model_args)
        return sum(p.numel() for p in module.parameters())
    from convladder.analysis.table import summarize
    from convladder.spec.registry import resolve_spec

    return summarize(resolve_spec(config.model)).total_params


def whole_number(value: Any, where: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise UserError(f"{where}: expected a whole number >= {minimum}, got {clip(value)}")
    return int(value)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _param(name: str, entry: Any, where: Callable[..., str]) -> Param:
    """One params: entry; a bare scalar means fixed, a bare list means nuisance values."""
    if not isinstance(entry, dict):
        return Param(name, "fixed", [entry]) if not isinstance(entry, list) else Param(name, "nuisance", list(entry))
    for key in entry:
        if key not in PARAM_KEYS:
            raise UserError(f"{where(key)}: {unknown_keys([key], PARAM_KEYS)} in parameter {clip(name, 60)}")
    role = entry.get("role", "nuisance")
    if role not in ROLES:
        raise UserError(f"{where('role')}: role of {name!r} must be studied, nuisance or fixed, not {clip(role)}")
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
