"""The one way to get a network: `create_model(...)` and `build(...)`, for specs and a person's own classes.

What it accepts: a registered name, spec text, a spec file or a NetworkSpec; `path/to/file.py:ClassName`
(imports and runs that file); an nn.Module class or instance; a stored run (its id, `run:<id or prefix>`,
or its folder), which comes back with its trained weights.

An own model's run records, beside config.json: `own_model.json` (class, arguments, file, sha256,
output kind, whether the command line can rebuild it) and `model_source.py` (the text that ran); how that
record is made is `train.ownrecord`. Weights stay safetensors in the person's own state_dict keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convladder.errors import UserError
from convladder.runs.reader import (OWN_JSON, SOURCE_ENV, SOURCE_FILE, read_config, read_json, read_weights,
                                    source_status)
from convladder.runs.reader import weights_mismatch, weights_path
from convladder.spec.layers import NetworkSpec
from convladder.spec.own import (ARGS_PYTHON, adopt, construct, find_class, import_source, is_own_ref, load_class,
                                 notice, parse_own_ref, person_class, read_source, sha256_text)
from convladder.train.ownrecord import (DEFAULT_SHAPE, OwnModel, python_remedy, source_of, python_record,
                                        read_record, write_record)  # noqa: F401 - OwnModel, write_record: the
# trainer takes them from here (runenv, recorder), the one module that gets networks

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
PYTHON_PREFIX = "python:"  # config.model of a class or instance handed over in Python

_OBJECTS: dict[str, Any] = {}  # python:<name> -> the class/instance being trained (see `handing_over`)


@dataclass
class Built:
    module: nn.Module  # has logits(x)
    spec_text: str  # what config.model_spec records: spec text, an absolute file.py:Class, or python:<name>
    own: OwnModel | None = None


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Initial weights from `seed` without disturbing the caller's global RNG stream."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _init(module: nn.Module, init: str) -> nn.Module:
    from convladder.train.init import init_weights

    return init_weights(module, init)


# -- Python objects -------------------------------------------------------------------------------------

def python_ref(obj: Any) -> str:
    """python:<name> for a class or instance (the module is left out for __main__ and loaded files)."""
    cls = person_class(obj)
    plain = cls.__module__ in ("__main__", "builtins") or cls.__module__.startswith("convladder_own_")
    return PYTHON_PREFIX + (cls.__qualname__ if plain else f"{cls.__module__}.{cls.__qualname__}")


@contextmanager
def handing_over(obj: Any) -> Iterator[str]:
    """Make a class/instance reachable as config.model = python:<name> while the trainer runs."""
    ref = python_ref(obj)
    _OBJECTS[ref] = obj
    try:
        yield ref
    finally:
        if _OBJECTS.get(ref) is obj:
            del _OBJECTS[ref]


# -- building ----------------------------------------------------------------------------------------------

def build(model: Any, *, args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
          seed: int | None = None, init: str = "torch", classes: int | None = None) -> Built:
    """Build a network with seeded initial weights; own models are checked on `input_shape` and get logits().

    An instance is used as it is (its own weights; trained in place). Raises UserError for anything the
    person can fix: missing file, import error, unknown class, failing constructor, wrong output shape.
    """
    given = model if isinstance(model, str) else None
    if isinstance(model, str) and model.startswith(PYTHON_PREFIX):
        if model not in _OBJECTS:
            raise UserError(f"{model!r} was a Python object handed to convladder in another session — pass the "
                            f"class or instance again, e.g. convladder.train({model[len(PYTHON_PREFIX):]}, ...) or "
                            f"convladder.create_model(run_id, model={model[len(PYTHON_PREFIX):].split('.')[-1]})")
        model = _OBJECTS[model]
    shape = tuple(input_shape or (model.input_shape if isinstance(model, NetworkSpec) else DEFAULT_SHAPE))
    if isinstance(model, type) and issubclass(model, nn.Module):
        with _seeded(seed):
            module = _init(construct(model, args, model.__name__, ARGS_PYTHON), init)
        kind = adopt(module, shape, classes, model.__name__)
        module._convladder_args = dict(args or {})  # type: ignore[assignment]  # plain attribute, not state
        ref = given or python_ref(model)
        return Built(module, ref, python_record(model, ref, dict(args or {}), kind, "seeded", module, shape))
    if isinstance(model, nn.Module):
        if args:
            raise UserError("model_args apply when convladder constructs the class; this instance is built already "
                            "— pass the class instead, or leave model_args out")
        with _seeded(seed):
            _init(model, init)
        cls = person_class(model)
        kind = adopt(model, shape, classes, cls.__name__)
        ref = given or python_ref(model)
        return Built(model, ref, python_record(cls, ref, getattr(model, "_convladder_args", None), kind, "instance",
                                               model, shape))
    if isinstance(model, str) and is_own_ref(model):
        ref = parse_own_ref(model)
        cls, src = load_class(ref)
        where = f"{ref.path.name}:{ref.cls}"
        with _seeded(seed):
            module = _init(construct(cls, args, where), init)
        kind = adopt(module, shape, classes, where)
        module._convladder_args = dict(args or {})  # type: ignore[assignment]
        own = OwnModel(cls=ref.cls, given=ref.given, file=str(ref.path), args=dict(args or {}), output=kind,
                       rebuild="file", sha256=src.sha256, source_scope="file", source=src.text)
        return Built(module, ref.text, own)
    if args:
        raise UserError(f"model_args apply to an own model (path/to/file.py:ClassName), not to {str(model)[:60]!r}")
    if not isinstance(model, (str, NetworkSpec)):
        raise UserError(f"cannot build a network from a {type(model).__name__}: give a registered name, spec text, "
                        "a NetworkSpec, path/to/file.py:ClassName, or an nn.Module class or instance")
    from convladder.spec.build import build_module
    from convladder.spec.notation import format_spec
    from convladder.spec.registry import resolve_spec

    spec = resolve_spec(model, input_shape=shape if input_shape else None)
    with _seeded(seed):
        module = _init(build_module(spec), init)
    return Built(module, format_spec(spec))


def create_model(target: Any, /, *, model: Any = None, args: dict[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None, classes: int | None = None, seed: int | None = 1,
                 init: str = "torch", which: str = "final", runs: str | Path | None = None,
                 code: str | None = None) -> nn.Module:
    """A network from anything convladder accepts; a stored run comes back with its trained weights (eval mode).

    target: registered name, spec text/file, NetworkSpec, `file.py:ClassName`, nn.Module class or instance,
    or a run (id, `run:<id/prefix/latest>`, or its folder). For a run of a Python class, `model=TheClass`
    rebuilds it; `code='recorded'` rebuilds from the source the run recorded (that runs the recorded code).
    Initial weights come from `seed` (torch's global RNG is left as it was).
    """
    folder = _run_folder(target, runs)
    if folder is not None:
        return model_from_folder(folder, which, model=model, code=code)
    return build(target, args=args, input_shape=input_shape, seed=seed, init=init, classes=classes).module


def _run_folder(target: Any, runs: str | Path | None) -> Path | None:
    if isinstance(target, Path):
        folder = target.expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder} is not a run folder (no config.json)")
        return folder
    if isinstance(target, str) and not is_own_ref(target) and "[" not in target \
            and (Path(target).expanduser() / "config.json").is_file():
        return Path(target).expanduser()
    if isinstance(target, str) and (RUN_ID.match(target) or target.startswith("run:")):
        from convladder.runs.store import RunStore

        store = RunStore(runs)
        return store.root / store.get(target.removeprefix("run:")).id
    return None


# -- rebuilding a run's network --------------------------------------------------------------------------

def run_network(folder: Path, *, model: Any = None, code: str | None = None) -> nn.Module:
    """A run's network with its initial (untrained) weights: from the spec, or the own model's record."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        shape = tuple((read_json(folder / "env.json").get("input_shape")) or DEFAULT_SHAPE)
    except (UserError, TypeError):
        shape = DEFAULT_SHAPE
    own = read_record(folder)
    if own is not None:
        return _rebuild_own(folder, own, shape, model, code)
    if model is not None:
        raise UserError(f"run {folder.name} trained a spec network; model= is only for runs of an own class")
    from convladder.spec.build import build_module
    from convladder.spec.notation import parse_spec

    text = config.get("model_spec")
    if not text:
        raise UserError(f"{folder / 'config.json'} has no model_spec: the network cannot be rebuilt")
    if str(text).startswith(PYTHON_PREFIX) or is_own_ref(str(text)):
        raise UserError(f"run {folder.name} trained an own model but has no {OWN_JSON}: it cannot be rebuilt")
    return build_module(parse_spec(text, name=config.get("model"), input_shape=shape))


def model_from_folder(folder: Path, which: str = "final", *, model: Any = None, code: str | None = None) -> nn.Module:
    """A run's network with its trained weights, in eval mode."""
    folder = Path(folder)
    module = run_network(folder, model=model, code=code)
    try:
        weights = read_weights(folder, which)
        problem = weights_mismatch(module.state_dict(), weights)  # names the tensor; refuses int8 weights
        if problem:
            raise RuntimeError(f"{weights_path(folder, which).name}: {problem}")
        module.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        own = read_record(folder)
        if own is None:
            raise UserError(f"run {folder.name}: weights do not fit the network in config.json ({first})") from None
        fix = (f"{SOURCE_ENV}=recorded rebuilds it from the run's copy of the source"
               if (folder / SOURCE_FILE).is_file() and own.rebuild != "recorded"
               else f"in Python: {python_remedy(own.cls, repr(folder.name))} with the class it trained")
        raise UserError(f"run {folder.name}: the weights do not fit {own.cls} as rebuilt now ({first}) — did the "
                        f"class change since? {fix}") from None
    return module.eval()


def _rebuild_own(folder: Path, own: OwnModel, shape: tuple[int, ...], model: Any, code: str | None) -> nn.Module:
    run = f"run {folder.name}"
    code = code or os.environ.get(SOURCE_ENV) or "disk"
    if code not in ("disk", "recorded"):
        raise UserError(f"{SOURCE_ENV}={code!r}: use 'recorded' (rebuild from the run's copy) or leave it unset")
    where = own.where
    if model is not None:
        if isinstance(model, nn.Module):
            module = model
        elif isinstance(model, type) and issubclass(model, nn.Module):
            _, text, _ = source_of(person_class(model))
            if own.sha256 and text is not None and sha256_text(text) != own.sha256:
                notice(f"the source of {model.__name__} differs from what {run} recorded ({SOURCE_FILE})")
            module = construct(model, own.args or {}, where)
        else:
            raise UserError(f"model= takes the nn.Module class (or an instance) that {run} trained, not a "
                            f"{type(model).__name__}")
    elif code == "recorded" or own.rebuild == "recorded":
        module = _from_recorded(folder, own, explicit=code == "recorded")
    elif own.rebuild == "file" and own.file:
        path = Path(own.file)
        if not path.is_file():
            raise UserError(f"{path}, the file {run} trained {own.cls} from, no longer exists — put it back, or "
                            f"rebuild from the run's recorded copy with {SOURCE_ENV}=recorded (that runs the "
                            f"recorded code: {folder / SOURCE_FILE})")
        src = read_source(path)
        if own.sha256 and src.sha256 != own.sha256:
            notice(source_status(folder) or f"{path} changed since {run}")
        module = construct(find_class(import_source(src), own.cls, str(path)), own.args, where)
    else:
        why = own.note or f"it trained a Python object ({own.given or own.cls}) that the command line cannot rebuild"
        recorded = (f"; or {SOURCE_ENV}=recorded runs the source it recorded ({SOURCE_FILE})"
                    if (folder / SOURCE_FILE).is_file() and own.args is not None else "")
        raise UserError(f"{run} cannot be rebuilt here: {why} — in Python: "
                        f"{python_remedy(own.cls, repr(folder.name))}{recorded}")
    adopt(module, shape, None, where)
    return module


def _from_recorded(folder: Path, own: OwnModel, explicit: bool) -> nn.Module:
    """The class built from the run's model_source.py. Without the explicit choice ($CONVLADDER_OWN_SOURCE=recorded,
    code='recorded') only a copy whose sha256 is the one training recorded runs: an edited copy is refused."""
    path, run = folder / SOURCE_FILE, f"run {folder.name}"
    remedy = f"in Python: {python_remedy(own.cls, repr(folder.name))}"
    if not path.is_file():
        raise UserError(f"{run} recorded no source ({SOURCE_FILE} is missing), so it cannot be rebuilt from it — "
                        f"{remedy}")
    src = read_source(path, "recorded source")
    if own.sha256 and src.sha256 != own.sha256:
        if not explicit:
            raise UserError(f"{path} was edited after {run} recorded it (sha256 differs), so it is not run without "
                            f"asking — {SOURCE_ENV}=recorded runs it as it is now; or {remedy}")
        notice(f"{path} was edited after the run recorded it (sha256 differs)")
    extra = None
    if own.source_scope == "class":  # a class's source alone: give it the usual imports
        import torch.nn.functional as F

        extra = {"torch": torch, "nn": nn, "F": F}
    return construct(find_class(import_source(src, extra), own.cls, str(path)), own.args or {}, own.where)
