"""The frontier's families of networks: each turns one point of the space into spec text, counted from the spec.

- `notes`: tiny8k's layout — 3x3 conv blocks, a transition (maxpool2x2 + 1x1 squeeze), GAP, a 1x1 to the
  classes; relu bn dropout after every 3x3 block, no bias, no fully connected layer.
- `separable`: the same block order, but every 3x3 block after the first is depthwise-separable: a 3x3 with
  groups = its input channels (depthwise), straight into a 1x1 to the block's width (pointwise), then relu bn
  dropout. No ReLU or BN between the two: Xception (Chollet 2017, sec. 4.7) measured faster convergence and
  better accuracy without a non-linearity there, Keras' SeparableConv2D is the pair as one layer, and the
  public 1.9k-parameter MNIST recipe does the same; it also spares the 2C BN parameters per block that
  MobileNet's BN+ReLU after the depthwise half would cost. The first conv (1 input channel) stays a plain 3x3.

- `shared`: the separable family with the blocks of a stage after its first (all of one width, in = out) made
  one separable block applied that many times with one set of weights (`conv3[...]*3`, docs/spec.md "Shared
  weights": BN per application), the reuse the best public <= 2k MNIST network makes. The stage's first block
  changes the channels and stays its own; a shared block holding the network's last 3x3 is padded in every
  application (one layer serves them all), so its maps keep their size there.

Every family takes one or two transitions (`transitions`); with two, `middle` 3x3 blocks sit between them and
the blocks after either transition are `width2` wide. docs/frontier.md ("The space") has the rules.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from convladder.errors import UserError

FAMILIES = ("notes", "separable", "shared")


@dataclass
class Candidate:
    """One network of the search: its spec text, parameters (spec count) and where it came from."""

    text: str
    params: int
    shape: dict[str, Any]  # the family's dimensions (family, transitions, before, ...), or {"given": name}


def _block(name: str, separable: bool, c_in: int, width: int, pad: str, drop: str) -> str:
    if separable:
        return (f"{name}[conv3x3({c_in}{pad}, groups={c_in}, bias=false) conv1x1({width}, bias=false) "
                f"relu bn{drop}]")
    return f"{name}[conv3x3({width}{pad}, bias=false) relu bn{drop}]"


def family_text(before: int, after: int, first: int, width1: int, squeeze: int, width2: int, dropout: float,
                classes: int = 10, pad_last: bool = True, *, family: str = "notes", transitions: int = 1,
                middle: int = 0) -> str:
    """One network of a family as spec text (no bias anywhere, BN after every layer but the last)."""
    if family not in FAMILIES:
        raise UserError(f"family {family!r} is not one the frontier generates — use one of {', '.join(FAMILIES)}")
    drop = f" dropout({dropout:g})" if dropout > 0 else ""
    stages = [before] + ([middle] if transitions == 2 else []) + [after]  # 3x3 blocks between the transitions
    total = sum(stages)
    blocks, n, c_in = [], 0, 1
    for s, count in enumerate(stages):
        run: list[tuple[int, str]] = []  # shared family: (number, padding) of the stage's blocks after its first
        for k in range(count):
            width = first if n == 0 else width1 if s == 0 else width2
            pad = ", padding=1" if pad_last and n == total - 1 and after > 0 else ""
            n += 1
            if family == "shared" and k > 0 and n > 2:  # (conv2 is stage 0's first separable block)
                run.append((n, pad))
                continue
            blocks.append(_block(f"conv{n}", family != "notes" and n > 1, c_in, width, pad, drop))
            c_in = width
        if run:  # applied len(run) times; padded in every application when it holds the padded last block
            pad = ", padding=1" if any(p for _, p in run) else ""
            blocks.append(_block(f"conv{run[0][0]}", True, c_in, c_in, pad, drop)
                          + (f"*{len(run)}" if len(run) > 1 else ""))
        if s < len(stages) - 1:
            blocks.append(f"trans{s + 1}[maxpool2x2 conv1x1({squeeze}, bias=false) relu bn]")
            c_in = squeeze
    return " ".join(blocks) + f" out[gap conv1x1({classes}, bias=false) logsoftmax]"


def network_text(shape: dict[str, Any], dropout: float, space: dict[str, Any]) -> str:
    """The spec text of a generated candidate's shape with this dropout."""
    return family_text(**shape, dropout=dropout, classes=int(space["classes"]), pad_last=bool(space["pad_last"]))


def generate(space: dict[str, Any]) -> tuple[list[Candidate], dict[str, int]]:
    """Every network of the space with its parameter count (spec count, nothing built), and per family how many
    do not fit the input (maps below 1x1).

    The notes' rules prune the product: the first convolution is no wider than the block it starts, the
    transition's 1x1 reduces (squeeze <= width1) and the block after it does not start below the squeeze.
    """
    from convladder.executors.frontierspec import spec_params  # frontierspec imports FAMILIES from here

    key = repr(sorted(space.items()))
    if key in _GENERATED:
        return _GENERATED[key]
    out, unfit, seen, too_small = [], {}, set(), set()
    for fam in space.get("family", ["notes"]):
        unfit[fam] = 0
        for transitions in space.get("transitions", [1]):
            for middle in (space.get("middle", [2]) if transitions == 2 else [0]):
                for before, after, first, w1, sq, w2 in itertools.product(
                        space["before"], space["after"], space["first"], space["width1"], space["squeeze"],
                        space["width2"]):
                    if before < 1 or (before == 1 and w1 != space["width1"][0]):
                        continue  # before=1: the first conv is the whole block, width1 does not apply
                    if first > w1 or sq > w1 or w2 < sq:
                        continue
                    shape = {"before": before, "after": after, "first": first, "width1": w1, "squeeze": sq,
                             "width2": w2, "family": fam, "transitions": transitions}
                    if transitions == 2:
                        shape["middle"] = middle
                    text = network_text(shape, 0.0, space)
                    if text in seen:
                        continue
                    seen.add(text)
                    where = (fam, transitions, before, middle, after)  # the map sizes depend on these alone
                    if where in too_small:  # counted, not parsed again: no width makes these maps fit
                        unfit[fam] += 1
                        continue
                    try:
                        params = spec_params(text)
                    except UserError:  # the maps shrink below 1x1: the shape does not fit the input
                        unfit[fam] += 1
                        too_small.add(where)
                        continue
                    out.append(Candidate(text, params, shape))
    _GENERATED[key] = (out, unfit)
    return out, unfit


_GENERATED: dict[str, tuple[list[Candidate], dict[str, int]]] = {}  # the space's networks, counted once per process


def layout(shape: dict[str, Any]) -> tuple[Any, ...]:
    """Where a candidate's transitions sit: the key the trials take turns over."""
    return shape["family"], shape["transitions"], shape["before"], shape.get("middle", 0), shape["after"]


def take_turns(near: list[Candidate], trials: int) -> list[Candidate]:
    """`trials` networks, nearest under the budget first: the families take turns, and within a family its
    layouts (where the transitions sit) take turns — so the trials are not all one family or one layout."""
    per_family: dict[str, dict[tuple[Any, ...], list[Candidate]]] = {}
    for c in sorted(near, key=lambda c: (-c.params, c.text)):
        per_family.setdefault(c.shape["family"], {}).setdefault(layout(c.shape), []).append(c)
    queues = [[c for row in itertools.zip_longest(*groups.values()) for c in row if c is not None]
              for groups in per_family.values()]
    chosen = [c for row in itertools.zip_longest(*queues) for c in row if c is not None]
    return chosen[:trials]


def family_of(row: dict[str, Any]) -> str:
    """The family a summary row's network belongs to: its shape says; 'candidate' for one the file named;
    summaries written before families existed knew only the notes' family."""
    shape = row.get("shape") or {}
    if row.get("family"):
        return str(row["family"])
    if "given" in shape:
        return "candidate"
    return str(shape.get("family", "notes")) if shape else "–"


def family_counts(pool: list[Candidate], unfit: dict[str, int], budget: int, near: float,
                  chosen: list[Candidate]) -> dict[str, dict[str, int]]:
    """Per family: networks generated, in the budget, near it (near x budget up to it), and chosen."""
    counts = {fam: {"generated": n, "in_budget": 0, "near": 0, "chosen": 0} for fam, n in unfit.items()}
    for c in pool:
        row = counts[c.shape["family"]]
        row["generated"] += 1
        row["in_budget"] += c.params <= budget
        row["near"] += near * budget <= c.params <= budget
    for c in chosen:
        counts[c.shape["family"]]["chosen"] += 1
    return counts
