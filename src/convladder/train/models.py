"""The one way to get a network: `create_model(...)` and `build(...)`, for specs and a person's own classes.

What it accepts: a registered name, spec text, a spec file or a NetworkSpec; `path/to/file.py:ClassName`
(imports and runs that file); an nn.Module class or instance; a stored run (its id, `run:<id or prefix>`,
or its folder), which comes back with its trained weights.

An own model's run records, beside config.json: `own_model.json` (class, arguments, file, sha256,
output kind, whether the command line can rebuild it) and `model_source.py` (the text that ran).
Weights stay safetensors in the person's own state_dict keys.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convladder.errors import UserError
from convladder.runs.reader import (OWN_JSON, SOURCE_ENV, SOURCE_FILE, read_config, read_json, read_weights,
                                    source_status)
from convladder.spec.cellsource import cell_source, code_file, is_cell
from convladder.spec.layers import NetworkSpec
from convladder.spec.own import (ARGS_PYTHON, OwnSource, adopt, construct, find_class, import_source, is_own_ref,
                                 load_class, notice, parse_own_ref, person_class, read_source, sha256_text)

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
PYTHON_PREFIX = "python:"  # config.model of a class or instance handed over in Python
DEFAULT_SHAPE = (1, 28, 28)

_OBJECTS: dict[str, Any] = {}  # python:<name> -> the class/instance being trained (see `handing_over`)


@dataclass
class OwnModel:
    """What a run records about an own model (own_model.json; the source goes to model_source.py)."""

    cls: str  # class name
    given: str | None  # as the person gave it: 'nets/my_net.py:Net', 'python:Net'
    file: str | None  # absolute path of the file the class came from, if any
    args: dict[str, Any] | None  # constructor arguments; None = unknown (an instance built elsewhere)
    output: str  # what forward returns: log_probs, probs, logits, or own_logits (the class has logits())
    # 'file': the command line rebuilds it from file + class + args; 'recorded': from the run's model_source.py
    # (a notebook class, checked at train time to rebuild alone); 'python': only in Python (model=TheClass)
    rebuild: str
    sha256: str | None = None  # of the recorded source
    # 'file' (the whole file), 'cells' (a notebook's imports and definitions the class uses, see
    # spec/cellsource.py) or 'class' (the class's source only)
    source_scope: str | None = None
    module: str | None = None  # the class's Python module (python objects)
    initial_weights: str = "seeded"  # 'seeded' (built with the run's seed) or 'instance' (the given instance's)
    note: str | None = None  # why the command line cannot rebuild it (rebuild 'python'), said once at train time
    source: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{Path(self.file).name}:{self.cls}" if self.file else self.cls

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        data["source_file"] = SOURCE_FILE if self.source is not None else None
        data["cli_model"] = f"{self.file}:{self.cls}" if self.rebuild == "file" else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OwnModel:
        names = {f.name for f in fields(cls)} - {"source"}
        return cls(**{k: v for k, v in data.items() if k in names})


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


def _source_of(cls: type) -> tuple[str | None, str | None, str | None]:
    """(file, source text, scope) of a class: the whole file when it comes from one, else its own source."""
    module = sys.modules.get(cls.__module__)
    loaded: OwnSource | None = getattr(module, "_convladder_source", None)
    if loaded is not None:
        return str(loaded.path), loaded.text, "file"
    if is_cell(code_file(cls)) or (code_file(cls) is None and cls.__module__ == "__main__"):
        cells = cell_source(cls)  # a notebook cell or REPL: its imports and the definitions the class uses
        if cells is not None:
            return None, cells.text, "cells"
    path = getattr(module, "__file__", None) or _defining_file(cls)
    compiled = code_file(cls)
    if path and compiled and Path(compiled).resolve() != Path(path).resolve():
        path = None  # compiled elsewhere (typed into `python -i script.py`, exec'd): that file is not its source
    if path and path.endswith(".py") and Path(path).is_file():  # a script's __main__ too: imports and helpers
        try:
            return str(Path(path).resolve()), Path(path).read_text(encoding="utf-8"), "file"
        except (OSError, UnicodeDecodeError):
            pass
    try:
        return None, inspect.getsource(cls), "class"
    except (OSError, TypeError):  # defined in a REPL: no source to record
        return None, None, None


def _defining_file(cls: type) -> str | None:
    """The file a class's methods were compiled from (its module may not be in sys.modules)."""
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            path = Path(code.co_filename)
            try:
                if path.is_file() and f"class {cls.__name__}" in path.read_text(encoding="utf-8"):
                    return str(path)
            except (OSError, UnicodeDecodeError):
                return None
            return None
    return None


def python_record(cls: type, given: str, args: dict[str, Any] | None, output: str, initial: str,
                  module: nn.Module | None = None, input_shape: tuple[int, ...] = DEFAULT_SHAPE) -> OwnModel:
    """The record of a class handed over in Python: 'file' rebuild when file, top-level class and args are
    known; 'recorded' for a notebook class whose recovered source rebuilds `module` alone; else 'python'."""
    file, source, scope = _source_of(cls)
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        args = None
    # the command line imports the file again: not a script (__main__), and the class must be found by name
    importable = file is not None and cls.__module__ != "__main__" and cls.__qualname__ == cls.__name__
    rebuild = "file" if importable and args is not None else "python"
    note = None
    if scope == "cells" and source is not None and module is not None:
        args, note = _check_recorded(cls, source, args, module, input_shape)
        rebuild = "python" if note else "recorded"
    elif rebuild == "python":
        note = _why_python(cls, source, args, scope)
    return OwnModel(cls=cls.__name__, given=given, file=file, args=args, output=output, rebuild=rebuild,
                    sha256=sha256_text(source) if source is not None else None, source_scope=scope,
                    module=cls.__module__, initial_weights=initial, note=note, source=source)


def _why_python(cls: type, source: str | None, args: dict[str, Any] | None, scope: str | None) -> str:
    """Why the command line cannot rebuild a class handed over in Python (the train-time notice's reason)."""
    if source is None:
        where = code_file(cls) or cls.__module__
        return (f"the source of {cls.__name__} cannot be recovered (defined in {where}, which keeps no text), so "
                "the run records no model_source.py")
    if args is None:
        return (f"{cls.__name__} was given as an instance whose constructor arguments convladder never saw (pass "
                "the class with model_args= instead)")
    if cls.__module__ == "__main__":
        return f"{cls.__name__} is defined in a script's __main__, which the command line does not import again"
    return f"{cls.__name__} is not a top-level class of an importable file ({scope or 'no'} source recorded)"


def _check_recorded(cls: type, text: str, args: dict[str, Any] | None, module: nn.Module,
                    shape: tuple[int, ...]) -> tuple[dict[str, Any] | None, str | None]:
    """Import the recovered text alone, build the class (with `args`; an instance's unknown args: none) and compare
    its layers and its output with `module`'s on two random images. (args to record, None) when it rebuilds
    the same network, else (args, why not) — the command line may then not rebuild from it."""
    tried = {} if args is None else args
    name = cls.__name__
    try:
        with torch.random.fork_rng(devices=[]):
            src = OwnSource(Path.cwd() / SOURCE_FILE, text, sha256_text(text))
            rebuilt = construct(find_class(import_source(src), name, SOURCE_FILE), tried, name)
        mine, theirs = module.state_dict(), rebuilt.state_dict()
        if [(k, tuple(v.shape)) for k, v in mine.items()] != [(k, tuple(v.shape)) for k, v in theirs.items()]:
            raise UserError(f"{name}(**{json.dumps(tried)}) built from it has other layers")
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        rebuilt.load_state_dict(mine)
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(device)
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                same = torch.allclose(module(x), rebuilt.to(device).eval()(x), rtol=1e-4, atol=1e-5)
        finally:
            module.train(was)
        if not same:
            raise UserError("the rebuilt network computes other outputs from the same weights")
    except UserError as exc:
        if args is None:
            return None, (f"{name} was given as an instance, and {name}() built from its recovered source is not "
                          f"the same network ({str(exc).split(' — ')[0]}): pass the class with model_args= instead")
        return args, (f"{name}'s source, recovered from the notebook into model_source.py, does not rebuild it "
                      f"alone: {str(exc).split(' — ')[0]}")
    except Exception as exc:  # noqa: BLE001 - the person's forward may raise anything
        return args, f"{name}'s recovered source does not run alone ({type(exc).__name__}: {exc})"
    return tried, None


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


# -- what a run records ----------------------------------------------------------------------------------

def write_record(folder: Path, own: OwnModel) -> None:
    """model_source.py (the text that ran) and own_model.json, each written atomically."""
    from convladder.fileio import atomic_write_bytes

    if own.source is not None:
        atomic_write_bytes(folder / SOURCE_FILE, own.source.encode("utf-8"))
    atomic_write_bytes(folder / OWN_JSON, (json.dumps(own.to_json(), indent=2) + "\n").encode())
    if own.rebuild == "python":  # said once, when the run is made, not first when a command fails later
        notice(f"{own.note or 'the command line cannot rebuild ' + own.cls}; report, predict, export and serve "
               f"from the command line cannot rebuild this run — in Python: {_python_remedy(own.cls)}")


def _python_remedy(cls: str, run: str = "run_id") -> str:
    """What rebuilds a run of a class only Python can build: the person hands the class over."""
    return f"result.report(model={cls}), convladder.create_model({run}, model={cls})"


def read_record(folder: Path) -> OwnModel | None:
    """The own-model record of a run folder, or None for a spec run."""
    path = Path(folder) / OWN_JSON
    if not path.is_file():
        return None
    try:
        return OwnModel.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}: {exc}); the run's own-model record "
                        "is damaged") from None


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
        module.load_state_dict(read_weights(folder, which))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        own = read_record(folder)
        if own is None:
            raise UserError(f"run {folder.name}: weights do not fit the network in config.json ({first})") from None
        fix = (f"{SOURCE_ENV}=recorded rebuilds it from the run's copy of the source"
               if (folder / SOURCE_FILE).is_file() and own.rebuild != "recorded"
               else f"in Python: {_python_remedy(own.cls, repr(folder.name))} with the class it trained")
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
            _, text, _ = _source_of(person_class(model))
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
                        f"{_python_remedy(own.cls, repr(folder.name))}{recorded}")
    adopt(module, shape, None, where)
    return module


def _from_recorded(folder: Path, own: OwnModel, explicit: bool) -> nn.Module:
    """The class built from the run's model_source.py. Without the explicit choice ($CONVLADDER_OWN_SOURCE=recorded,
    code='recorded') only a copy whose sha256 is the one training recorded runs: an edited copy is refused."""
    path, run = folder / SOURCE_FILE, f"run {folder.name}"
    remedy = f"in Python: {_python_remedy(own.cls, repr(folder.name))}"
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
