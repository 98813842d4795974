"""The YAML (and plain dict) form of a network spec.

    name: mynet
    input: [1, 28, 28]          # C, H, W
    blocks:
      - name: conv1
        layers: [conv3x3(8, bias=false), relu, bn]      # layers in the text notation ...
      - name: res                                       # a shared block: built once, applied 3 times
        repeat: 3
        layers: [conv3x3(8, padding=1, bias=false), relu, bn]
      - name: out
        role: output
        layers:
          - {kind: conv, kernel_size: 1, out_channels: 10, bias: false}   # ... or as mappings
          - gap
          - logsoftmax

A file may instead give the whole network as text under `spec:`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.safeparse import load as load_yaml
from convladder.safeparse import read_text
from convladder.spec.layers import BLOCK_ROLES, Block, NetworkSpec, layer_from_dict, max_layers, too_many_layers
from convladder.spec.notation import format_layer, parse_spec

BLOCK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a block name the text notation can write back


def spec_from_dict(data: Any, where: str = "spec") -> NetworkSpec:
    """Read the dict form; `where` names the source in error messages."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with 'blocks' or 'spec'")
    raw_input = data.get("input", (1, 28, 28))
    if not isinstance(raw_input, (list, tuple)) or len(raw_input) != 3:
        raise UserError(f"{where}: 'input' must be [C, H, W] of positive integers, e.g. [1, 28, 28]")
    try:
        input_shape = NetworkSpec((), input_shape=tuple(raw_input)).input_shape
    except UserError as exc:
        raise UserError(f"{where}: 'input': {exc}") from None
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise UserError(f"{where}: 'name' must be text")
    if "spec" in data:
        if not isinstance(data["spec"], str):
            raise UserError(f"{where}: 'spec' must be the network as text, e.g. \"conv3x3(8) relu ...\"")
        try:
            return parse_spec(data["spec"], name=name, input_shape=input_shape)
        except UserError as exc:
            raise type(exc)(f"{where}: 'spec': {exc}") from None
    if not isinstance(data.get("blocks"), list) or not data["blocks"]:
        raise UserError(f"{where}: 'blocks' must be a non-empty list (or give the text notation under 'spec')")
    blocks, count, limit = [], 0, max_layers()
    for number, entry in enumerate(data["blocks"], 1):
        here = f"{where}: block {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("layers"), list):
            raise UserError(f"{here}: expected a mapping with a 'layers' list")
        unknown = [str(key)[:40] for key in entry if key not in ("name", "role", "layers", "repeat")]
        if unknown:
            raise UserError(f"{here}: unknown key(s) {sorted(unknown)}; use name, role, layers, repeat")
        role, block_name = entry.get("role"), entry.get("name")
        if role is not None and role not in BLOCK_ROLES:
            raise UserError(f"{here}: role must be one of {', '.join(BLOCK_ROLES)}")
        if block_name is not None and not (isinstance(block_name, str) and BLOCK_NAME.fullmatch(block_name)):
            raise UserError(f"{here}: name must be a word of letters, digits and _ (e.g. conv1), as in the notation")
        layers = []
        for layer in entry["layers"]:
            try:
                if isinstance(layer, str):
                    layers.extend(parse_spec(layer).layers)
                elif isinstance(layer, dict):
                    layers.append(layer_from_dict(layer))
                else:
                    raise UserError("a layer must be text (e.g. 'conv3x3(16)') or a mapping")
            except (UserError, TypeError) as exc:  # TypeError: a mapping with keys that are not text
                raise UserError(f"{here}: {exc}") from None
            if count + len(layers) > limit:
                raise UserError(f"{here}: {too_many_layers(count + len(layers))}")
        if not layers:
            raise UserError(f"{here}: 'layers' is empty; give at least one layer")
        try:
            blocks.append(Block(block_name, tuple(layers), role, entry.get("repeat", 1)))
        except UserError as exc:
            raise UserError(f"{here}: {exc}") from None
        count += len(layers) * blocks[-1].repeat
        if count > limit:
            raise UserError(f"{here}: {too_many_layers(count)}")
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
        if block.repeat > 1:
            entry["repeat"] = block.repeat
        entry["layers"] = [format_layer(layer) for layer in block.layers]
        blocks.append(entry)
    out: dict[str, Any] = {"input": list(spec.input_shape), "blocks": blocks}
    if spec.name:
        out = {"name": spec.name, **out}
    return out


def load_spec_file(path: Path) -> NetworkSpec:
    """Read a spec from a .yaml/.yml file or a text file in the notation."""
    text = read_text(path, "spec file")  # a regular UTF-8 file of bounded size
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = load_yaml(text, f"spec file {path}")[0]  # bounded: aliases, depth, size
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        except (ValueError, RecursionError) as exc:  # a number past 4,300 digits; nesting deeper than Python's stack
            raise UserError(f"{path}: cannot be read as a spec ({type(exc).__name__}: {str(exc)[:120]}) — "
                            "write the network as in docs/spec.md") from None
        return spec_from_dict(data, where=str(path))
    try:
        return parse_spec(text, name=path.stem)
    except UserError as exc:
        raise type(exc)(f"{path}: {exc}") from None
