"""What an own-model run records: `own_model.json` (class, arguments, file, sha256, output kind, how it is
rebuilt) and `model_source.py` (the text that ran), and how that record is made for a class handed over in
Python — a file's class, a script's, or one from a notebook cell, whose recovered source is checked here to
rebuild the same network alone (spec/cellsource.py recovers it). `train.models` builds and rebuilds from it.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convladder.errors import UserError
from convladder.runs.reader import OWN_JSON, SOURCE_FILE
from convladder.spec.cellsource import cell_source, code_file, is_cell
from convladder.spec.own import OwnSource, construct, find_class, import_source, notice, sha256_text

DEFAULT_SHAPE = (1, 28, 28)


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


def source_of(cls: type) -> tuple[str | None, str | None, str | None]:
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
    file, source, scope = source_of(cls)
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


def write_record(folder: Path, own: OwnModel) -> None:
    """model_source.py (the text that ran) and own_model.json, each written atomically."""
    from convladder.fileio import atomic_write_bytes

    if own.source is not None:
        atomic_write_bytes(folder / SOURCE_FILE, own.source.encode("utf-8"))
    atomic_write_bytes(folder / OWN_JSON, (json.dumps(own.to_json(), indent=2) + "\n").encode())
    if own.rebuild == "python":  # said once, when the run is made, not first when a command fails later
        notice(f"{own.note or 'the command line cannot rebuild ' + own.cls}; report, predict, export and serve "
               f"from the command line cannot rebuild this run — in Python: {python_remedy(own.cls)}")


def python_remedy(cls: str, run: str = "run_id") -> str:
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
