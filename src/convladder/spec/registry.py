"""Resolve what a user typed (a registered name, a file, or spec text) into a NetworkSpec."""

from __future__ import annotations

from pathlib import Path

from convladder.errors import UserError
from convladder.spec.layers import NetworkSpec
from convladder.spec.notation import SpecError, parse_spec
from convladder.spec.own import is_own_ref
from convladder.spec.yamlform import load_spec_file
from convladder.spec.zoo import ZOO, ZooEntry


def list_models() -> dict[str, ZooEntry]:
    """All registered networks by name."""
    return dict(ZOO)


def get_spec(name: str) -> NetworkSpec:
    """The spec of a registered network."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise UserError(f"no network named {name!r}; registered: {', '.join(sorted(ZOO))}") from None
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
                raise SpecError(f"{model!r} is not a registered network ({', '.join(sorted(ZOO))}), nor a file, nor a valid spec: {exc}") from None
            raise
    return spec.with_input(input_shape) if input_shape else spec


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml", ".txt", ".spec")) or "/" in text and "[" not in text and "(" not in text
