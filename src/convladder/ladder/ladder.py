"""Ladder files: a base network + training recipe, then ordered steps that each change one thing.

A ladder is YAML (format in docs/ladder.md):

    name: my-ladder
    base:
      model: "conv1[conv3x3(10) relu] ..."     # registered name, spec text or spec file
      config: {optimizer: sgd, lr: 0.01}       # TrainConfig keys
    steps:
      - name: 1st
        change: the starting point
      - name: 2nd
        change: add BN after every ReLU
        why: the notes' cure for feature amplitudes drifting
        edit: [{add: {layer: bn, after: relu}}]
        handout: {params: 11260, train: 99.39, test: 98.97}

Each step is applied to the step before it (the first to the base). A step may override the
network with `model:` (a whole new spec, or your own class as `path/to/file.py:ClassName`, the path
relative to the ladder file, its constructor arguments in `config: {model_args: {...}}`) or `edit:`
(targeted edits of a spec, below), and the training recipe with `config:`. Loading resolves every step to a full spec and a full config dict, and
raises a UserError naming the step and its line for anything wrong.

Edits (a list; each item is a one-key mapping, applied in order):
  add:          {layer: "bn", after: "relu"}  insert after every layer matching `after` (`before:` too)
  remove:       "dropout"                     remove every matching layer
  set:          {layer: "conv", bias: false}  set a layer argument on every matching layer
  set_channels: {conv5: 24, conv3: 32}        out_channels of the conv(s) in the named blocks
  replace:      {layer: "conv7x7", with: "gap"}  every matching layer -> the layers of the text
  block:        {name: out, layers: "gap conv1x1(10) softmax"}  replace (or append) a named block
Matching: a kind ("conv", "relu"), a sized kind ("conv3x3", "maxpool2x2") or a full layer
("dropout(0.1)"); `blocks: [..]` limits any edit to those blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.safeparse import clip, read_text, unknown_keys
from convladder.safeparse import load as load_yaml
from convladder.spec.layers import KIND_ARGS, Block, Layer, NetworkSpec
from convladder.spec.notation import SIZED_KIND, format_spec, parse_spec

BUILTIN_PACKAGE = "convladder.ladder.builtin"
TOP_KEYS = {"name", "title", "description", "dataset", "base", "steps", "notes", "target"}
STEP_KEYS = {"name", "change", "why", "because", "model", "edit", "config", "handout", "note"}
HANDOUT_KEYS = {"params", "train", "test", "epoch", "note"}
CLASSES = 10  # every data set a ladder runs on (MNIST, Fashion-MNIST, synthetic) has 10 classes
EDIT_OPS = ("add", "remove", "set", "set_channels", "replace", "block")


@dataclass
class Step:
    """One rung: what it changes (as written) and what it resolves to (full spec + config)."""

    index: int  # 1-based
    name: str
    change: str
    why: str = ""
    because: str | None = None
    model: str | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the overrides this step writes
    handout: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    spec: NetworkSpec | None = None  # resolved (None when the step trains an own class)
    train: dict[str, Any] = field(default_factory=dict)  # resolved config overrides (cumulative, no model)
    own: str | None = None  # resolved own class: absolute path/to/file.py:ClassName

    @property
    def spec_text(self) -> str:
        """What the step's runs train: the spec text, or the own class's absolute file.py:ClassName."""
        if self.own is not None:
            return self.own
        assert self.spec is not None
        return format_spec(self.spec)

    def table(self) -> Any:
        """The step's network table (an own class is imported and built to trace it)."""
        from convladder.analysis.table import summarize

        if self.spec is not None:
            return summarize(self.spec)
        from convladder.spec.own import load_own

        module, _, _ = load_own(str(self.own), self.train.get("model_args"), (1, 28, 28), CLASSES)
        return summarize(module, (1, 28, 28))

    def where(self, ladder: Ladder, key: str | None = None) -> str:
        line = ladder.key_lines.get((self.index, key), self.line) if key else self.line
        return f"step {self.index} ({self.name!r}, {ladder.source} line {line})"


@dataclass
class Ladder:
    name: str
    title: str
    description: str
    source: str  # file path or builtin name, for messages
    base_model: str
    base_config: dict[str, Any]
    steps: list[Step]
    target: float = 99.4
    key_lines: dict[tuple[int, str | None], int] = field(default_factory=dict)
    file: Path | None = None  # the ladder file's absolute path (None: built-in, or text parsed without a file)

    def step(self, index: int) -> Step:
        return self.steps[index - 1]

    @property
    def source_tags(self) -> tuple[str, ...]:
        """The tag its runs carry so a report finds the ladder file again (`source:<file>`; none when built in)."""
        from convladder.executors.base import SOURCE_TAG

        return (f"{SOURCE_TAG}{self.file}",) if self.file is not None else ()


# -- loading ------------------------------------------------------------------------------------------

def builtin_names() -> list[str]:
    """Names of the ladders shipped with convladder."""
    return sorted(p.name[:-5] for p in resources.files(BUILTIN_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def load_ladder(name_or_path: str | Path) -> Ladder:
    """A built-in ladder by name, or a ladder YAML file; fully resolved (specs built-checked, configs validated)."""
    text_id = str(name_or_path)
    path = Path(text_id).expanduser()
    if path.is_file():
        return parse_ladder(read_text(path, "ladder"), source=str(path))
    if text_id in builtin_names():
        text = resources.files(BUILTIN_PACKAGE).joinpath(f"{text_id}.yaml").read_text()
        return parse_ladder(text, source=f"{text_id}.yaml")
    raise UserError(f"no ladder {text_id!r}: not a file and not a built-in ladder ({', '.join(builtin_names())})")


def recorded_file(runs: Iterable[Any]) -> Path | None:
    """The ladder file the newest of `runs` (newest first, each with `.tags`) was run from, where it still is."""
    from convladder.executors.base import SOURCE_TAG

    for run in runs:
        for tag in run.tags:
            if tag.startswith(SOURCE_TAG) and Path(tag[len(SOURCE_TAG):]).is_file():
                return Path(tag[len(SOURCE_TAG):])
    return None


def load_ladder_of(name_or_path: str | Path, runs: Iterable[Any] = ()) -> Ladder:
    """A ladder file, a built-in name, or the name of a ladder whose runs (`runs`, newest first, with `.tags`)
    record their ladder file: `report my-dropout` finds my-ladder.yaml wherever it was run from."""
    text_id = str(name_or_path)
    if Path(text_id).expanduser().is_file() or text_id in builtin_names():
        return load_ladder(text_id)
    runs = list(runs)
    recorded = recorded_file(runs)
    if recorded is not None:
        ladder = load_ladder(recorded)
        if ladder.name == text_id:  # (a file renamed to another ladder since: not this one)
            return ladder
    if runs:
        raise UserError(f"ladder {text_id!r} has runs but its ladder file is not found: "
                        + ("they record no ladder file (made by an older convladder)" if recorded is None else
                           f"{recorded} now names another ladder")
                        + f" — give the file instead, e.g. `convladder ladder report path/to/{text_id}.yaml`")
    return load_ladder(text_id)


def _lines(text: str, source: str) -> tuple[Any, dict[tuple[int, str | None], int], int]:
    """Parse YAML, returning data plus 1-based line numbers of each step and each step key."""
    try:
        data, node = load_yaml(text, f"ladder {source}")  # bounded: aliases, depth, size
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"ladder {source}{where} is not valid YAML: {getattr(exc, 'problem', exc)} — fix the file") from None
    lines: dict[tuple[int, str | None], int] = {}
    steps_line = 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "steps" and isinstance(value_node, yaml.SequenceNode):
                steps_line = key_node.start_mark.line + 1
                for i, item in enumerate(value_node.value, 1):
                    lines[(i, None)] = item.start_mark.line + 1
                    if isinstance(item, yaml.MappingNode):
                        for k, v in item.value:
                            lines[(i, str(k.value))] = k.start_mark.line + 1
    return data, lines, steps_line


def parse_ladder(text: str, source: str = "<ladder>") -> Ladder:
    """Parse and resolve ladder YAML text."""
    data, lines, steps_line = _lines(text, source)
    if not isinstance(data, dict):
        raise UserError(f"ladder {source} must be a mapping with `base:` and `steps:` — see docs/ladder.md")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise UserError(f"ladder {source}: {unknown_keys(unknown, TOP_KEYS, 'top-level key')}")
    base = data.get("base") or {}
    if not isinstance(base, dict) or "model" not in base:
        raise UserError(f"ladder {source}: `base:` needs `model:` (a registered name or spec text) and optional `config:`")
    steps_raw = data.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise UserError(f"ladder {source} line {steps_line}: `steps:` must be a non-empty list of steps")
    base_config = dict(base.get("config") or {})
    if data.get("dataset"):
        base_config.setdefault("dataset", data["dataset"])
    ladder = Ladder(name=str(data.get("name") or Path(source).stem), title=str(data.get("title") or ""),
                    description=str(data.get("description") or ""), source=source,
                    base_model=str(base["model"]), base_config=base_config, steps=[],
                    target=float(data.get("target", base_config.get("target", 99.4))), key_lines=lines)
    _check_config(ladder, base_config, f"ladder {source} base config")
    base_dir = Path(source).parent if Path(source).is_file() else None  # own classes: relative to the file
    ladder.file = Path(source).resolve() if base_dir is not None else None
    network = _resolve_model(str(base["model"]), f"ladder {source} base model", base_dir)
    if isinstance(network, str):
        ladder.base_model = network
    config = dict(base_config)
    checked: set[str] = set()
    for i, raw in enumerate(steps_raw, 1):
        step = _parse_step(ladder, i, raw)
        config = {**config, **step.config}
        network = _apply(ladder, step, network, base_dir, config.get("model_args"), checked)
        if isinstance(network, str):
            step.own = network
        else:
            step.spec = network
        step.train = dict(config)
        ladder.steps.append(step)
    return ladder


def _parse_step(ladder: Ladder, i: int, raw: Any) -> Step:
    line = ladder.key_lines.get((i, None), 0)
    where = f"step {i} ({ladder.source} line {line})"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a step is a mapping with at least `change:`")
    unknown = set(raw) - STEP_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise UserError(f"{where.replace(f'line {line}', f'line {ladder.key_lines.get((i, key), line)}')}: "
                        f"unknown key {clip(key, 60)}; a step knows {', '.join(sorted(STEP_KEYS))}")
    if not raw.get("change"):
        raise UserError(f"{where}: say what the step changes with `change: ...`")
    edits = raw.get("edit") or []
    if isinstance(edits, dict):
        edits = [edits]
    if not isinstance(edits, list):
        raise UserError(f"{where}: `edit:` must be a list of edits like - add: {{layer: bn, after: relu}}")
    handout = raw.get("handout") or {}
    if not isinstance(handout, dict) or set(handout) - HANDOUT_KEYS:
        raise UserError(f"{where}: `handout:` is a mapping of {', '.join(sorted(HANDOUT_KEYS))}")
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        raise UserError(f"{where}: `config:` must be a mapping of training keys (e.g. lr: 0.01)")
    step = Step(index=i, name=str(raw.get("name") or f"step {i}"), change=str(raw["change"]),
                why=str(raw.get("why") or ""), because=raw.get("because"), model=raw.get("model"),
                edits=edits, config={str(k).replace("-", "_"): v for k, v in config.items()},
                handout=handout, line=line)
    _check_config(ladder, step.config, step.where(ladder, "config"))
    return step


def _check_config(ladder: Ladder, config: dict[str, Any], where: str) -> None:
    from convladder.train.config import TrainConfig, field_names, validate

    if "model" in config or "model_spec" in config:
        raise UserError(f"{where}: set the network with the step's `model:` or `edit:`, not in `config:`")
    unknown = sorted(set(config) - set(field_names()))
    if unknown:
        raise UserError(f"{where}: {unknown_keys(unknown, field_names(), 'training key')}")
    try:
        validate(TrainConfig.from_dict({**ladder.base_config, **config}))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _resolve_model(model: str, where: str, base_dir: Path | None = None) -> NetworkSpec | str:
    """A spec, or (own class) the absolute `file.py:ClassName`, the file taken relative to `base_dir`."""
    from convladder.spec.ownref import is_own_ref, parse_own_ref
    from convladder.spec.registry import resolve_spec

    try:
        if is_own_ref(model):
            return parse_own_ref(model, base_dir).text
        return resolve_spec(model)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _check_own(ref: str, args: Any, where: str, checked: set[str]) -> None:
    """Import and build the own class once per (class, arguments): bad input fails at load, naming the step."""
    import json

    from convladder.spec.own import load_own

    key = f"{ref}\n{json.dumps(args, sort_keys=True, default=str)}"
    if key in checked:
        return
    try:
        load_own(ref, args, (1, 28, 28), CLASSES)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    checked.add(key)


def _apply(ladder: Ladder, step: Step, spec: NetworkSpec | str, base_dir: Path | None = None, model_args: Any = None,
           checked: set[str] | None = None) -> NetworkSpec | str:
    """The step's network: its `model:` (if any), then its edits; checked to build (an own class: to run)."""
    if step.model:
        spec = _resolve_model(str(step.model), step.where(ladder, "model"), base_dir)
    if isinstance(spec, str):
        if step.edits:
            raise UserError(f"{step.where(ladder, 'edit')}: `edit:` changes spec networks, but this step trains your "
                            f"own class {spec} — change it with `model:` (another class) or `config: {{model_args: ...}}`")
        _check_own(spec, model_args, step.where(ladder, "model" if step.model else None), checked or set())
        return spec
    if model_args:
        raise UserError(f"{step.where(ladder, 'config')}: model_args applies to an own class (model: file.py:ClassName), "
                        "not to a spec network")
    for n, edit in enumerate(step.edits, 1):
        where = f"{step.where(ladder, 'edit')}, edit {n}"
        try:
            spec = apply_edit(spec, edit)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{where}: {exc}") from None
    from convladder.spec.size import output_shape

    where = step.where(ladder, "edit" if step.edits else "model")
    try:
        shape = output_shape(spec)
    except UserError as exc:
        raise UserError(f"{where}: the network cannot be built: {exc}") from None
    if tuple(shape) != (CLASSES,):
        raise UserError(f"{where}: the network outputs {tuple(shape)} per image, not {CLASSES} class scores; "
                        "end it with a kernel that covers the map, or gap and a 1x1 conv to 10 channels")
    return spec


# -- edits --------------------------------------------------------------------------------------------

def matches(layer: Layer, selector: str) -> bool:
    """Does `layer` match a kind ('conv'), a sized kind ('conv3x3') or a full layer text ('dropout(0.1)')?"""
    sel = selector.strip().lower()
    if sel in KIND_ARGS:
        return layer.kind == sel
    sized = SIZED_KIND.match(sel)
    if sized:
        return layer.kind == sized.group(1) and layer.k == int(sized.group(2))
    return layer == _layers(selector)[0]


def _layers(text: str) -> list[Layer]:
    return parse_spec(str(text)).layers


def _map_layers(spec: NetworkSpec, fn, blocks: list[str] | None) -> NetworkSpec:
    """Rebuild spec with fn(layer) -> list of layers, for layers in `blocks` (all when None)."""
    out = []
    for block in spec.blocks:
        if blocks is not None and block.name not in blocks:
            out.append(block)
            continue
        new = [x for layer in block.layers for x in fn(layer)]
        if not new:
            raise UserError(f"the edit leaves block {block.name!r} empty")
        out.append(dataclasses.replace(block, layers=tuple(new)))
    return dataclasses.replace(spec, blocks=tuple(out))


def apply_edit(spec: NetworkSpec, edit: dict[str, Any]) -> NetworkSpec:
    """Apply one edit (see the module docstring); raise UserError if it is malformed or matches nothing."""
    if not isinstance(edit, dict) or len(edit) != 1 or next(iter(edit)) not in EDIT_OPS:
        raise UserError(f"an edit is a one-key mapping, one of {', '.join(EDIT_OPS)} (got {edit!r})")
    op, arg = next(iter(edit.items()))
    if isinstance(arg, str) and op == "remove":
        arg = {"layer": arg}
    if not isinstance(arg, dict):
        raise UserError(f"`{op}:` needs a mapping of arguments")
    arg = dict(arg)
    blocks = arg.pop("blocks", None)
    names = {b.name for b in spec.blocks}
    for b in blocks or []:
        if b not in names:
            raise UserError(f"no block {b!r}; blocks are {', '.join(str(n) for n in names)}")
    hits = 0

    def count(flag: bool) -> bool:
        nonlocal hits
        hits += flag
        return flag

    if op == "add":
        new = _layers(arg.pop("layer"))
        after, before = arg.pop("after", None), arg.pop("before", None)
        if (after is None) == (before is None):
            raise UserError("`add:` needs exactly one of after: or before: (a layer kind)")
        _no_extra(op, arg)
        sel = after or before
        result = _map_layers(spec, lambda L: ([L, *new] if after else [*new, L]) if count(matches(L, sel)) else [L], blocks)
    elif op == "remove":
        sel = arg.pop("layer")
        _no_extra(op, arg)
        result = _map_layers(spec, lambda L: [] if count(matches(L, sel)) else [L], blocks)
    elif op == "set":
        sel = arg.pop("layer")
        if not arg:
            raise UserError("`set:` needs at least one argument to set, e.g. bias: false")
        result = _map_layers(spec, lambda L: [dataclasses.replace(L, **arg)] if count(matches(L, sel)) else [L], blocks)
    elif op == "replace":
        sel, new = arg.pop("layer"), _layers(arg.pop("with"))
        _no_extra(op, arg)
        result = _map_layers(spec, lambda L: list(new) if count(matches(L, sel)) else [L], blocks)
    elif op == "set_channels":
        result = spec
        for block_name, channels in arg.items():
            if block_name not in names:
                raise UserError(f"set_channels: no block {block_name!r}; blocks are {', '.join(str(n) for n in names)}")
            before_hits = hits
            result = _map_layers(result, lambda L: [dataclasses.replace(L, out_channels=int(channels))]
                                 if count(L.kind == "conv") else [L], [block_name])
            if hits == before_hits:
                raise UserError(f"set_channels: block {block_name!r} has no convolution")
    else:  # block
        name, layers = arg.pop("name"), _layers(arg.pop("layers"))
        _no_extra(op, arg)
        if name in names:
            result = dataclasses.replace(spec, blocks=tuple(
                dataclasses.replace(b, layers=tuple(layers)) if b.name == name else b for b in spec.blocks))
        else:
            result = dataclasses.replace(spec, blocks=(*spec.blocks, Block(name, tuple(layers))))
        hits = 1
    if not hits:
        raise UserError(f"`{op}: {edit[op]}` matches no layer of the network")
    return result


def _no_extra(op: str, arg: dict[str, Any]) -> None:
    if arg:
        raise UserError(f"`{op}:` has unknown argument(s) {', '.join(sorted(arg))}")
