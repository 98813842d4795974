"""A frontier file read and checked: budgets, the search space, the recipe values, the seeds.

`load_frontier` / `parse_frontier` turn a YAML mapping (or the defaults plus command-line options) into a
`FrontierSpec`; every bad value is a UserError that says file:line. `executors/frontier.py` runs the search.
docs/frontier.md has the file format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors.families import FAMILIES
from convladder.executors.scheduled import SchedulerSpec, parse_scheduler
from convladder.executors.sweepspec import read_yaml_mapping, whole_number
from convladder.safeparse import clip, unknown_keys


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
    "family": ["notes"],  # which generators of executors/families.py: notes, separable, shared
    "transitions": [1],  # transition blocks: 1 or 2
    "middle": [2],  # 3x3 convolutions between two transitions (transitions: 2 only)
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
    halving: Any = None  # HalvingSpec: `scheduler: {name: halving}`, successive halving in-process (halving.py)


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
    from convladder.executors.halving import is_halving, parse_halving  # lazily: halving.py imports frontier.py
    from convladder.train.config import field_names, val_images

    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{where(key)}: {unknown_keys([key], TOP_KEYS, 'frontier key')}")
    known = set(field_names())
    base = {str(k).replace("-", "_"): v for k, v in _mapping(data, "base", where).items()}
    for key in base:
        if key not in known:
            raise UserError(f"{where('base', key)}: {unknown_keys([key], known, 'config key')} (under base:)")
    if "model" in base:
        raise UserError(f"{where('base', 'model')}: base: may not set model — the frontier generates the networks "
                        "(add your own under candidates:)")
    recipe: dict[str, list[Any]] = {}
    for key, values in _mapping(data, "recipe", where).items():
        name = str(key).replace("-", "_")
        if name not in known or name in ("model", "seed", "seeds", "tags"):
            raise UserError(f"{where('recipe', key)}: recipe key {clip(key, 60)} is not a searchable config key "
                            "(e.g. lr, epochs, rotate, translate, scale, weight_decay)")
        recipe[name] = _list(values, where("recipe", key))
        for v in recipe[name]:  # type-check every recipe value now, not when its trial comes up
            _check_config({name: v}, where("recipe", key))
    space = dict(SPACE_DEFAULTS) | {"classes": 10, "pad_last": True}
    for key, values in _mapping(data, "space", where).items():
        if key not in SPACE_KEYS:
            raise UserError(f"{where('space', key)}: {unknown_keys([key], SPACE_KEYS, 'space key')}")
        if key in ("classes", "pad_last"):
            if (isinstance(values, bool) or not isinstance(values, int) or values < 2) if key == "classes" \
                    else not isinstance(values, bool):
                raise UserError(f"{where('space', key)}: {key} takes " + ("a whole number >= 2" if key == "classes"
                                                                          else "true or false"))
            space[key] = values
            continue
        values = _list(values, where("space", key))
        if key == "family":
            bad = [v for v in values if v not in FAMILIES]
            if bad:
                raise UserError(f"{where('space', key)}: family {clip(bad[0], 40)} is not one the frontier generates "
                                f"— use {' or '.join(FAMILIES)} (docs/frontier.md, The space)")
            space[key] = list(dict.fromkeys(values))
            continue
        if key == "transitions" and any(v not in (1, 2) or isinstance(v, bool) for v in values):
            raise UserError(f"{where('space', key)}: transitions takes 1 or 2 (transition blocks), not {clip(values, 40)}")
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
        recipe["epochs"] = [whole_number(_epochs(e), "--epochs (e.g. 10,15)") for e in epochs.split(",") if e.strip()]
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
        trials=trials if trials is not None else whole_number(data.get("trials", 4), where("trials"), minimum=0),
        near=float(near), seeds=seeds if seeds is not None else whole_number(data.get("seeds", 5), where("seeds")),
        search_seeds=whole_number(data.get("search_seeds", 1), where("search_seeds")), search=search,
        samples=whole_number(data.get("samples", 8), where("samples")),
        sample_seed=whole_number(data.get("sample_seed", 0), where("sample_seed"), minimum=0),
        scheduler=None if is_halving(data.get("scheduler")) else parse_scheduler(data.get("scheduler"), where),
        halving=parse_halving(data, where))
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
        raise UserError(f"{where(key)}: {key}: must be a mapping of key: value lines, not {clip(value)}")
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


def spec_params(text: str) -> int:
    """Parameters of a spec (registered name or text), counted from the spec before anything is built."""
    from convladder.spec.build import check_size
    from convladder.spec.registry import resolve_spec

    return check_size(resolve_spec(text)).params
