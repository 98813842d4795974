"""The YAML (and plain dict) form of a network spec.

    name: mynet
    input: [1, 28, 28]          # C, H, W
    blocks:
      - name: conv1
        layers: [conv3x3(8, bias=false), relu, bn]      # layers in the text notation ...
      - name: out
        role: output
        layers:
          - {kind: conv, kernel_size: 1, out_channels: 10, bias: false}   # ... or as mappings
          - gap
          - logsoftmax

A file may instead give the whole network as text under `spec:`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.spec.layers import BLOCK_ROLES, Block, NetworkSpec, layer_from_dict
from convladder.spec.notation import format_layer, parse_spec


def spec_from_dict(data: Any, where: str = "spec") -> NetworkSpec:
    """Read the dict form; `where` names the source in error messages."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with 'blocks' or 'spec'")
    input_shape = tuple(data.get("input", (1, 28, 28)))
    if len(input_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in input_shape):
        raise UserError(f"{where}: 'input' must be [C, H, W] of positive integers, got {data.get('input')!r}")
    name = data.get("name")
    if "spec" in data:
        return parse_spec(str(data["spec"]), name=name, input_shape=input_shape)
    if not isinstance(data.get("blocks"), list) or not data["blocks"]:
        raise UserError(f"{where}: 'blocks' must be a non-empty list (or give the text notation under 'spec')")
    blocks = []
    for number, entry in enumerate(data["blocks"], 1):
        here = f"{where}: block {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("layers"), list):
            raise UserError(f"{here}: expected a mapping with a 'layers' list")
        unknown = set(entry) - {"name", "role", "layers"}
        if unknown:
            raise UserError(f"{here}: unknown key(s) {sorted(unknown)}; use name, role, layers")
        role = entry.get("role")
        if role is not None and role not in BLOCK_ROLES:
            raise UserError(f"{here}: role must be one of {', '.join(BLOCK_ROLES)}")
        layers = []
        for layer in entry["layers"]:
            if isinstance(layer, str):
                layers.extend(parse_spec(layer).layers)
            elif isinstance(layer, dict):
                try:
                    layers.append(layer_from_dict(layer))
                except (TypeError, ValueError) as exc:
                    raise UserError(f"{here}: {exc}") from None
            else:
                raise UserError(f"{here}: a layer must be text (e.g. 'conv3x3(16)') or a mapping")
        blocks.append(Block(entry.get("name"), tuple(layers), role))
    return NetworkSpec(tuple(blocks), name=name, input_shape=input_shape)


def spec_to_dict(spec: NetworkSpec) -> dict[str, Any]:
    """The dict form, with each layer in the text notation."""
    blocks = []
    for block in spec.blocks:
        entry: dict[str, Any] = {}
        if block.name:
            entry["name"] = block.name
        if block.role:
            entry["role"] = block.role
        entry["layers"] = [format_layer(layer) for layer in block.layers]
        blocks.append(entry)
    out: dict[str, Any] = {"input": list(spec.input_shape), "blocks": blocks}
    if spec.name:
        out = {"name": spec.name, **out}
    return out


def load_spec_file(path: Path) -> NetworkSpec:
    """Read a spec from a .yaml/.yml file or a text file in the notation."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read spec file {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        return spec_from_dict(data, where=str(path))
    try:
        return parse_spec(text, name=path.stem)
    except UserError as exc:
        raise type(exc)(f"{path}: {exc}") from None
