"""A person's own network class: `path/to/file.py:ClassName` plus JSON constructor arguments.

Importing a person's file runs their code, so it happens only for this explicit form (never for a
name or spec text that merely looks like a file). The file's text is read once and exactly that
text is executed, so what a run records is what ran.

Training needs raw class scores (`logits`). A person's `forward` may end in `F.log_softmax`,
`F.softmax` or nothing; `adopt` finds out which on a small random batch and gives the instance a
`logits` method by switching it to a subclass of its own class. Its state_dict keys stay the
person's, so saved weights load straight into their class.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convladder.errors import UserError
from convladder.safeparse import load_json_text
# the torch-free half (the form file.py:ClassName, a file's hash), kept importable from here
from convladder.spec.ownref import (OWN_REF, OwnRef, is_own_ref, module_classes, no_class_message,  # noqa: F401
                                    parse_own_ref, sha256_text)

_MODULES: dict[tuple[str, str], types.ModuleType] = {}  # (path, sha256) -> module: one import per text
_ADOPTED: dict[tuple[type, str], type] = {}  # (person's class, output kind) -> subclass with logits()
_SAID: set[str] = set()  # notices already printed in this process


@dataclass(frozen=True)
class OwnSource:
    path: Path
    text: str
    sha256: str


def read_source(path: Path, what: str = "model file") -> OwnSource:
    """The file's text and its sha256; UserError when it is missing or not text."""
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (folder {path.parent} does not exist either)"
        raise UserError(f"{what} {path} does not exist{hint} — give the path of a .py file that defines the class, "
                        "as path/to/file.py:ClassName")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read ({type(exc).__name__}: {exc})") from None
    return OwnSource(path, text, sha256_text(text))


def parse_model_args(value: Any, what: str = "--model-args") -> dict[str, Any]:
    """Constructor arguments: a mapping, or its JSON text such as '{"width": 16}'; keys become strings."""
    if isinstance(value, str):
        # bounded in size and depth; an error quotes a clipped piece, not 120 KB of it
        value = load_json_text(value, what) if value.strip() else {}
    if not isinstance(value, dict):
        raise UserError(f"{what} must be a JSON object of name: value pairs (got {type(value).__name__})")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: values must be JSON (numbers, strings, lists, objects)") from None
    return {str(k): v for k, v in value.items()}


def last_line(exc: BaseException) -> str:
    """`TypeError: message`: the last line Python would print for the exception."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def import_source(src: OwnSource, extra_globals: dict[str, Any] | None = None) -> types.ModuleType:
    """Execute the source text as a fresh module (once per path and text) and return it."""
    key = (str(src.path), src.sha256)
    if key in _MODULES and not extra_globals:
        return _MODULES[key]
    stem = re.sub(r"\W", "_", src.path.stem)
    name = f"convladder_own_{stem}_{src.sha256[:12]}"
    module = types.ModuleType(name)
    module.__file__ = str(src.path)
    module.__dict__.update(extra_globals or {})
    module._convladder_source = src  # type: ignore[attr-defined]  # lets a run record the whole file
    try:
        code = compile(src.text, str(src.path), "exec")
    except SyntaxError as exc:
        raise UserError(f"{src.path} line {exc.lineno}: {exc.msg} — fix the file's syntax") from None
    sys.modules[name] = module  # dataclasses, typing and pickle look the module up by name
    sys.path.insert(0, str(src.path.parent))  # as `python file.py` would: sibling imports work
    try:
        exec(code, module.__dict__)  # noqa: S102 - the person asked for their file explicitly
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: any failure of their code is their error
        sys.modules.pop(name, None)
        raise UserError(f"importing {src.path} failed: {last_line(exc)} — fix the file so that it imports "
                        "without errors (code that trains or reads files belongs under "
                        "`if __name__ == \"__main__\":`)") from None
    finally:
        try:
            sys.path.remove(str(src.path.parent))
        except ValueError:
            pass
    if not extra_globals:
        _MODULES[key] = module
    return module


def find_class(module: types.ModuleType, name: str, where: str) -> type[nn.Module]:
    """The nn.Module subclass `name` defined in `module`; UserError listing the file's classes otherwise."""
    found = module.__dict__.get(name)
    if found is None:
        classes = sorted(n for n, v in vars(module).items()
                         if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
        listed = f"its nn.Module classes: {', '.join(classes)}" if classes else "it defines no nn.Module class"
        raise UserError(f"{where} does not define {name!r} ({listed}) — give one of them after the colon")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        kind = "a class" if isinstance(found, type) else f"a {type(found).__name__}"
        raise UserError(f"{where}:{name} is {kind}, not a subclass of torch.nn.Module — name your network class")
    return found


ARGS_CLI = "--model-args '{...}' (model_args= in Python)"
ARGS_PYTHON = "model_args={...} in convladder.train (args= in create_model and summarize)"


def construct(cls: type[nn.Module], args: dict[str, Any] | None, where: str, hint: str = ARGS_CLI) -> nn.Module:
    """cls(**args); UserError with the exception's last line when the constructor raises.

    `hint`: how the person passes constructor arguments where they are (a flag, or a keyword in Python).
    """
    try:
        module = cls(**(args or {}))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the person's constructor may raise anything
        if isinstance(exc, AttributeError) and "before Module.__init__() call" in str(exc):
            raise UserError(_no_super(cls, where, last_line(exc))) from None
        shown = json.dumps(args or {}, default=str)
        raise UserError(f"{where}: {cls.__name__}(**{shown}) raised {last_line(exc)} — fix the constructor or "
                        f"pass its arguments with {hint}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"{where}: {cls.__name__}(...) returned a {type(module).__name__}, not an nn.Module")
    if "_modules" not in vars(module):  # nothing assigned a layer, so nothing raised: still never initialised
        raise UserError(_no_super(cls, where, "nn.Module.__init__ never ran"))
    return module


def _no_super(cls: type, where: str, what: str) -> str:
    return (f"{where}: {cls.__name__}.__init__ does not call super().__init__() ({what}) — add "
            "super().__init__() as the first line of __init__, before any layer is assigned")


def load_class(ref: OwnRef, source: OwnSource | None = None) -> tuple[type[nn.Module], OwnSource]:
    """Import the file (or the given source text) and return the class and the text that ran."""
    src = source or read_source(ref.path)
    return find_class(import_source(src), ref.cls, str(ref.path)), src


def notice(text: str) -> None:
    """A one-line notice on stderr, once per process."""
    if text not in _SAID:
        _SAID.add(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


# -- output kind and the logits() method ---------------------------------------------------------------

def output_kind(out: torch.Tensor) -> str:
    """log_probs (exp of every row sums to 1), probs (non-negative rows summing to 1) or logits."""
    x = out.detach().double()
    if bool((x <= 1e-6).all()) and torch.allclose(x.exp().sum(1), torch.ones(len(x), dtype=x.dtype), atol=1e-4):
        return "log_probs"
    if bool((x >= 0).all()) and torch.allclose(x.sum(1), torch.ones(len(x), dtype=x.dtype), atol=1e-4):
        return "probs"
    return "logits"


def _probe(module: nn.Module, call, input_shape: tuple[int, ...], where: str) -> Any:
    """Run `call` on 2 random images in eval mode (RNG untouched); UserError naming the size if it fails."""
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return call(x)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - shape errors come as RuntimeError, ValueError, IndexError...
        c, h, w = (tuple(input_shape) + (1, 1))[:3]
        raise UserError(f"{where} cannot run on a {h}x{w}x{c} input (HxWxC): {last_line(exc)} — check the "
                        "layer sizes against that input (padding, pooling, the size before flatten/view)") from None
    finally:
        module.train(was_training)


def check_output(out: Any, classes: int | None, where: str) -> None:
    """UserError unless `out` is a (2, classes) tensor, saying how to end `forward` instead."""
    n = classes or 10
    if not isinstance(out, torch.Tensor):
        raise UserError(f"{where} returns a {type(out).__name__}, not a tensor — return one (N, {n}) tensor of "
                        "class scores from forward")
    shape = tuple(out.shape)
    if len(shape) == 4 and shape[0] == 2 and shape[2:] == (1, 1):
        raise UserError(f"{where} returns (N, {shape[1]}, 1, 1) — flatten it: end forward with x.view(-1, {shape[1]})")
    if len(shape) == 4:
        raise UserError(f"{where} returns feature maps {shape[1:]} per image, not (N, {n}) class scores — "
                        f"end forward with GAP then a 1x1 conv to {n} channels (F.adaptive_avg_pool2d(x, 1)) "
                        f"and x.view(-1, {n})")
    if len(shape) != 2 or shape[0] != 2:
        raise UserError(f"{where} returns shape {shape} for a batch of 2 images, not (2, {n}) — the map before "
                        f"view/flatten is not 1x1; reduce it first (GAP, or a kernel the size of the map), "
                        f"then x.view(-1, {n})")
    if classes is not None and shape[1] != classes:
        raise UserError(f"{where} gives {shape[1]} scores per image but the data set has {classes} classes — "
                        f"make the last layer output {classes}")


def _logits_from_log_probs(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self(x)  # log-softmax output is already a valid input for cross-entropy (it is idempotent)


def _logits_from_probs(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = self(x)
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def _logits_raw(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self(x)


_LOGITS = {"log_probs": _logits_from_log_probs, "probs": _logits_from_probs, "logits": _logits_raw}


def person_class(module_or_cls: nn.Module | type) -> type:
    """The person's own class behind an adopted instance (or class)."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    return getattr(cls, "_convladder_base", cls) if cls.__dict__.get("_convladder_adopted") else cls


def adopt(module: nn.Module, input_shape: tuple[int, ...], classes: int | None, where: str) -> str:
    """Check the module on `input_shape` and give it `logits()`; return its output kind.

    A class with its own `logits` method keeps it (its output is only checked). Otherwise the instance's
    class becomes a subclass of the person's class whose `logits` turns the output into raw scores.
    """
    base = person_class(module)
    if any("logits" in store for store in (module._modules, module._parameters, module._buffers, vars(module))):
        raise UserError(f"{where} has an attribute named 'logits'; convladder calls model.logits(x) for the raw "
                        "class scores — rename that attribute (e.g. self.head)")
    if callable(getattr(base, "logits", None)):
        check_output(_probe(module, module.logits, input_shape, where), classes, f"{where}.logits")
        return "own_logits"
    out = _probe(module, module, input_shape, where)
    check_output(out, classes, where)
    kind = output_kind(out)
    if kind == "probs":
        notice(f"{where} returns probabilities (softmax); training takes their log — end forward with "
               "F.log_softmax(x, dim=1) instead, which is numerically stable")
    sub = _ADOPTED.get((base, kind))
    if sub is None:
        sub = type(base.__name__, (base,), {
            "logits": _LOGITS[kind], "__module__": base.__module__, "__qualname__": base.__qualname__,
            "__doc__": base.__doc__, "_convladder_adopted": True, "_convladder_base": base,
            "_convladder_output": kind})
        _ADOPTED[(base, kind)] = sub
    module.__class__ = sub
    return kind


def load_own(ref: str | OwnRef, args: dict[str, Any] | None = None, input_shape: tuple[int, ...] = (1, 28, 28),
             classes: int | None = None, base_dir: str | Path | None = None) -> tuple[nn.Module, str, OwnSource]:
    """Import, construct, check and adopt `file.py:ClassName`; return (module, output kind, source that ran).

    Initial weights come from torch's global RNG: seed it first for a reproducible start.
    """
    own = ref if isinstance(ref, OwnRef) else parse_own_ref(ref, base_dir)
    cls, src = load_class(own)
    where = f"{own.path.name}:{own.cls}"
    module = construct(cls, args, where)
    return module, adopt(module, tuple(input_shape), classes, where), src
