"""The one-change check: what a step changes against the step before, grouped into *things*.

A *thing* is one category of difference; a step may change many layers as long as every
difference is of the same category (the notes: "Allowed to change only one thing"):

- network: `add <kind>` (e.g. BN after every ReLU), `remove <kind>`, `<kind>: <argument>`
  (e.g. `conv: out_channels` for widths anywhere, `conv: bias`, `dropout: p`), and
  `replace <old kind> by <new kind>` (a layer swapped in place, e.g. the 7x7 output conv by GAP);
- training: one group of config keys (`augmentation` = augment/rotate/translate/scale/erase,
  `schedule` = schedule and its shape knobs, `optimizer` = optimizer/momentum/nesterov,
  `validation` = val_size/select_on/split_seed, `data` = dataset/data_root/subset);
  every other key is a thing by itself (`lr`, `epochs`, `batch_size`, ...);
- moving layers between blocks or renaming blocks is bookkeeping, not a thing; keys that do not
  change what is learned (device, threads, eval batch size, ...) are not things either.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from convladder.spec.layers import KIND_ARGS, Layer, NetworkSpec
from convladder.spec.notation import format_layer

CONFIG_GROUPS = {
    "augmentation": ("augment", "rotate", "translate", "scale", "erase", "pad_crop", "flip"),
    "schedule": ("schedule", "step_size", "gamma", "pct_start", "div_factor", "final_div_factor"),
    "optimizer": ("optimizer", "momentum", "nesterov"),
    "validation": ("val_size", "select_on", "split_seed"),
    "data": ("dataset", "data_root", "subset"),
}
NOT_A_THING = ("device", "threads", "channels_last", "compile", "eval_every", "eval_batch_size", "name", "tags",
               "model", "model_spec", "seeds", "clean_train_eval")


@dataclass
class StepDiff:
    """Differences of one step against the previous one, and the things they amount to."""

    added: list[tuple[str, str]] = field(default_factory=list)  # (block, layer text)
    removed: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # (block, old text, new text)
    config: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, old, new)
    notes: list[str] = field(default_factory=list)  # bookkeeping (blocks renamed/moved)
    things: dict[str, list[str]] = field(default_factory=dict)  # thing -> what belongs to it

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.config)

    def lines(self) -> list[str]:
        """Human-readable diff lines: + added, - removed, ~ changed, and config keys."""
        out = [f"  + {layer}  [{block}]" for block, layer in self.added]
        out += [f"  - {layer}  [{block}]" for block, layer in self.removed]
        out += [f"  ~ {old} -> {new}  [{block}]" for block, old, new in self.changed]
        out += [f"  config {key}: {old!r} -> {new!r}" for key, old, new in self.config]
        out += [f"  ({note})" for note in self.notes]
        return out


def _flat(spec: NetworkSpec) -> list[tuple[str, Layer]]:
    return [(str(block.name or "-"), layer) for block in spec.blocks for layer in block.layers]


def _group(key: str) -> str | None:
    if key in NOT_A_THING:
        return None
    for group, keys in CONFIG_GROUPS.items():
        if key in keys:
            return group
    return key


def diff_steps(prev_spec: NetworkSpec | None, new_spec: NetworkSpec | None, prev_config: dict[str, Any],
               new_config: dict[str, Any], prev_own: str | None = None, new_own: str | None = None) -> StepDiff:
    """Layer-level diff of the specs (aligned on canonical layer text) and key-level diff of the configs.

    A step that trains an own class (spec None, `*_own` = its file.py:ClassName) is compared as a whole:
    another class is one thing, `network: model`.
    """
    d = StepDiff()
    if prev_spec is None or new_spec is None:
        old_name, new_name = prev_own or "spec network", new_own or "spec network"
        if old_name != new_name or (prev_spec is None) != (new_spec is None):
            d.changed.append(("-", old_name, new_name))
            d.things["network: model"] = [f"{old_name} -> {new_name}"]
        prev_spec = new_spec = NetworkSpec(())  # only the configs are compared below
    a, b = _flat(prev_spec), _flat(new_spec)
    ta, tb = [format_layer(x) for _, x in a], [format_layer(x) for _, x in b]
    things: dict[str, list[str]] = dict(d.things)

    def thing(name: str, what: str) -> None:
        things.setdefault(name, []).append(what)

    def compare(i: int, j: int) -> None:
        (blk, old), (_, new) = a[i], b[j]
        if old == new:
            if blk != b[j][0]:
                moved.append((blk, b[j][0]))
            return
        d.changed.append((blk, ta[i], tb[j]))
        if old.kind == new.kind:
            for arg in KIND_ARGS[old.kind]:
                if getattr(old, arg) != getattr(new, arg):
                    thing(f"{old.kind}: {arg}", f"{ta[i]} -> {tb[j]}")
        else:
            thing(f"replace {_kind(old)} by {_kind(new)}", f"{ta[i]} -> {tb[j]}")

    # Align on layer kinds only, so a width or kernel change pairs the old conv with the new one
    # (aligning on full text would see every conv as removed and re-added).
    moved: list[tuple[str, str]] = []
    sm = difflib.SequenceMatcher(a=[x.kind for _, x in a], b=[x.kind for _, x in b], autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2)):
                compare(i, j)
            continue
        for i in range(i1, i2):
            d.removed.append((a[i][0], ta[i]))
            thing(f"remove {a[i][1].kind}", ta[i])
        for j in range(j1, j2):
            d.added.append((b[j][0], tb[j]))
            thing(f"add {b[j][1].kind}", tb[j])
    if moved:
        d.notes.append(f"{len(moved)} layer(s) now in other blocks, e.g. {moved[0][0]} -> {moved[0][1]}")
    repeats = {blk.name: blk.repeat for blk in prev_spec.blocks}  # a shared block's applications (name[...]*N)
    for blk in new_spec.blocks:
        if repeats.get(blk.name, blk.repeat) != blk.repeat:
            d.changed.append((str(blk.name), f"*{repeats[blk.name]}", f"*{blk.repeat}"))
            thing("shared block: applications", f"{blk.name} *{repeats[blk.name]} -> *{blk.repeat}")
    for key in sorted(set(prev_config) | set(new_config)):
        old, new = prev_config.get(key), new_config.get(key)
        if old != new:
            d.config.append((key, old, new))
            group = _group(key)
            if key == "model_args":  # an own class's constructor arguments are part of the network
                thing("network: model" if "network: model" in things else "network: model_args", f"{old!r} -> {new!r}")
            elif group:
                thing(f"config {group}", f"{key}: {old!r} -> {new!r}")
    if [blk.name for blk in prev_spec.blocks] != [blk.name for blk in new_spec.blocks] and not d.notes:
        d.notes.append("block names changed")
    d.things = things
    return d


def _kind(layer: Layer) -> str:
    text = format_layer(layer)
    return text.split("(")[0]


def full_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig defaults with the overrides applied (so a key set to its default is no change)."""
    from convladder.train.config import TrainConfig

    data = TrainConfig.from_dict(overrides).to_dict()
    data.pop("model", None)
    data.pop("model_spec", None)
    return data


def check_ladder(ladder: Any) -> list[StepDiff]:
    """Diff every step against the one before (step 1 against the base); raise UserError for a step
    that changes nothing, or more than one thing without `because:`."""
    from convladder.errors import UserError
    from convladder.spec.ownref import is_own_ref
    from convladder.spec.registry import resolve_spec

    diffs: list[StepDiff] = []
    prev_own = ladder.base_model if is_own_ref(ladder.base_model) else None
    prev_spec = None if prev_own else resolve_spec(ladder.base_model)
    prev_cfg = full_config(ladder.base_config)
    for step in ladder.steps:
        cfg = full_config(step.train)
        d = diff_steps(prev_spec, step.spec, prev_cfg, cfg, prev_own, getattr(step, "own", None))
        if step.index > 1 and d.empty:
            raise UserError(f"{step.where(ladder)} changes nothing against step {step.index - 1}: "
                            "change one thing (model/edit/config) or remove the step")
        if step.index > 1 and len(d.things) > 1 and not step.because:
            raise UserError(f"{step.where(ladder)} changes {len(d.things)} things ({'; '.join(d.things)}): "
                            "split it into one-change steps, or say why they go together with `because: ...`")
        diffs.append(d)
        prev_spec, prev_cfg, prev_own = step.spec, cfg, getattr(step, "own", None)
    return diffs
