"""Resolve what a user typed (a registered name, a file, or spec text) into a NetworkSpec."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.spec.size import check_size
from convladder.spec.layers import NetworkSpec
from convladder.spec.notation import SpecError, parse_spec
from convladder.spec.ownref import is_own_ref, no_class_message
from convladder.spec.yamlform import load_spec_file
from convladder.spec.zoo import ZOO, ZooEntry


def list_models() -> dict[str, ZooEntry]:
    """All registered networks by name."""
    return dict(ZOO)


def suggest(name: str) -> str:
    """' — did you mean 'a' or 'b'?' for the registered names closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name.strip().lower(), {n.lower(): n for n in ZOO}, n=3, cutoff=0.6)
    if not close:
        return ""
    names = [next(n for n in ZOO if n.lower() == c) for c in close]
    return " — did you mean " + " or ".join(repr(n) for n in names) + "?"


def get_spec(name: str) -> NetworkSpec:
    """The spec of a registered network."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise UserError(f"no network named {str(name)[:80]!r}{suggest(str(name)[:200])} (registered: "
                        f"{', '.join(sorted(ZOO))})") from None
    return parse_spec(entry.text, name=name, input_shape=entry.input_shape)


def resolve_spec(model: str | NetworkSpec, input_shape: tuple[int, int, int] | None = None) -> NetworkSpec:
    """A registered name, a path to a .yaml/.txt spec file, or spec text -> NetworkSpec.

    `file.py:ClassName` (an own class) is refused with a message: it is built by `train.models.build`.

    `input_shape`, when given, replaces the spec's own.
    """
    if isinstance(model, NetworkSpec):
        spec = model
    elif is_own_ref(model):
        raise UserError(f"{model!r} names your own class (file.py:ClassName), not a network spec — train, summary, "
                        "check, lr-find, ladder steps and sweeps take it as --model/model:, and Python code as "
                        "convladder.create_model(...); importing it runs that file")
    elif model in ZOO:
        spec = get_spec(model)
    elif model.strip().endswith(".py"):  # a class file without `:ClassName`: the parser would blame the dot
        raise UserError(no_class_message(model))
    elif _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise UserError(f"spec file {model} does not exist; give a registered name ({', '.join(sorted(ZOO))}), a file, or spec text")
        spec = load_spec_file(path)
    else:
        try:
            spec = parse_spec(model)
        except SpecError as exc:
            if " " not in model.strip() and "[" not in model and "(" not in model:
                hint = suggest(model[:200])
                if hint:  # a near miss of a registered name: say so first, not the parser's complaint
                    raise SpecError(f"{model[:80]!r} is not a registered network{hint} (registered: "
                                    f"{', '.join(sorted(ZOO))})") from None
                raise SpecError(f"{model[:80]!r} is not a registered network ({', '.join(sorted(ZOO))}), nor a file, "
                                f"nor a valid spec: {exc}") from None
            raise
    return spec.with_input(input_shape) if input_shape else spec


def check_model(model: Any, input_shape: tuple[int, int, int] | None = None, *,
                batch_size: int = 1) -> NetworkSpec | None:
    """Resolve `model` when it names a spec and refuse it if it does not fit `input_shape` or the size limits
    (activations counted for `batch_size` images; see `spec.build.check_size`).

    Cheap (no module, no tensor): callers run it before reading a data set, so an oversized network fails in
    milliseconds. Anything that is not a spec (an own class `file.py:Class`, `python:<name>`, an nn.Module)
    gives None and is checked where it is built.
    """
    if isinstance(model, str) and (is_own_ref(model) or model.startswith("python:")):
        return None
    if not isinstance(model, (str, NetworkSpec)):
        return None
    spec = resolve_spec(model, input_shape)
    check_size(spec, batch_size=batch_size)
    return spec


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml", ".txt", ".spec")) or "/" in text and "[" not in text and "(" not in text
