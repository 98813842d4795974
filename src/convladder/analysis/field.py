"""Receptive field and jump of every node of a traced network, multi-path included.

Per axis (height, width), by the standard recurrence (Araujo, Norris & Sim, Distill 2019):
    k' = d(k-1)+1,  r_out = r_in + (k'-1) * j_in,  j_out = j_in * s.
BN, activations, dropout, softmax over channels, casts and 1x1 convolutions leave the field as it is
(normalisations rescale values but move none); a softmax or F.normalize over the positions covers all of them.
A slice of height or width (x[:, :, a::s]) moves the first field a jumps on and multiplies the jump by s. A global reduction (global pooling, a mean over height and width, a dense layer over a
flattened map) covers the union of every position's field, r + (n-1) * j, clipped to the image. At a merge
(add, multiply, concatenate) the field is the union of the inputs' fields — the largest when their centres
line up — when their jumps agree; inputs of one position (e.g. a squeeze-excite gate) broadcast and need no
jump. Anything else — a jump mismatch at a merge, a reshape that mixes positions, an operation the analysis
does not know, a size that does not follow from the layer's settings — gives an unknown field with the
reason, and everything computed from it is unknown too. A wrong number is worse than a '?'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from convladder.analysis.ops import expand_index
from convladder.analysis.trace import INPUT, ModelTrace, TraceNode

Pair = tuple[int, int]


@dataclass(frozen=True)
class Field:
    """What each output value of a node sees of the input."""

    r: Pair | None  # receptive field (height, width) in input pixels; None = unknown
    j: Pair | None  # jump: input pixels between neighbouring outputs
    # map (N,C,H,W) | flat (positions folded into features) | vector (one value per feature)
    # | mixed (a map whose every value sees the same union of positions, e.g. after a softmax over them)
    layout: str = "map"
    grid: Pair = (1, 1)  # the positions the values still come from (for a later union)
    reason: str = ""  # why r is unknown, or a remark about how it was computed
    start: Pair | None = (0, 0)  # input pixel where the first position's field begins (negative: in the padding)
    image: Pair = (1, 1)  # the input's size, which a union of fields cannot exceed

    @property
    def known(self) -> bool:
        return self.r is not None

    def union(self) -> Field:
        """Every position combined: the field of a global reduction, the part of the input it covers."""
        assert self.r is not None and self.j is not None
        spans = [r + (n - 1) * j for r, n, j in zip(self.r, self.grid, self.j)]
        if self.start is not None:  # clip to the image: padding is not input
            spans = [min(size, s + span) - max(0, s) for s, span, size in zip(self.start, spans, self.image)]
        return replace(self, r=tuple(spans), grid=(1, 1), start=(0, 0) if self.start is not None else None)  # type: ignore[arg-type]


def unknown(reason: str) -> Field:
    return Field(None, None, reason=reason)


def _spatial(shape: list[int] | None) -> Pair | None:
    return (shape[1], shape[2]) if shape is not None and len(shape) == 3 else None


def _expected_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = (n + 2 * p - d * (k - 1) - 1) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # PyTorch drops a last window that starts in the padding
        out -= 1
    return out


def _window(field: Field, node: TraceNode) -> Field:
    g = node.geometry
    size_in, size_out = _spatial(node.input), _spatial(node.output)
    if field.layout == "mixed":  # the recurrence would add to a field every neighbour already shares
        return unknown(f"{node.name}: a 2D window on a map whose positions were already mixed")
    if field.layout != "map" or size_in is None or size_out is None:
        return unknown(f"{node.name}: a 2D window on a tensor that is not a map")
    k, s, d = g["kernel"], g["stride"], g["dilation"]
    padding = g.get("padding")
    if isinstance(padding, tuple):
        expected = tuple(_expected_size(n, k[a], s[a], padding[a], d[a], g.get("ceil_mode", False))
                         for a, n in enumerate(size_in))
        if expected != size_out:
            return unknown(f"{node.name}: output {size_out[0]}x{size_out[1]} does not follow from its settings "
                           f"(expected {expected[0]}x{expected[1]})")
    assert field.r is not None and field.j is not None
    r = tuple(field.r[a] + d[a] * (k[a] - 1) * field.j[a] for a in range(2))
    j = tuple(field.j[a] * s[a] for a in range(2))
    start = None
    if field.start is not None:
        if isinstance(padding, tuple):
            pad = padding
        elif padding == "valid":
            pad = (0, 0)
        elif padding == "same":
            pad = tuple(d[a] * (k[a] - 1) // 2 for a in range(2))
        else:
            pad = None
        start = tuple(field.start[a] - pad[a] * field.j[a] for a in range(2)) if pad is not None else None
    return replace(field, r=r, j=j, layout="map", grid=size_out, start=start)  # type: ignore[arg-type]


def _adaptive(field: Field, node: TraceNode) -> Field:
    size_in, size_out = _spatial(node.input), _spatial(node.output)
    if field.layout != "map" or size_in is None or size_out is None:
        return unknown(f"{node.name}: adaptive pooling of a tensor that is not a map")
    if size_out == (1, 1):
        return replace(field.union(), grid=(1, 1))
    if size_out == size_in:
        return field
    if size_in[0] % size_out[0] or size_in[1] % size_out[1]:
        return unknown(f"{node.name}: adaptive pooling from {size_in[0]}x{size_in[1]} to {size_out[0]}x{size_out[1]} "
                       f"uses windows of different sizes")
    k = (size_in[0] // size_out[0], size_in[1] // size_out[1])
    assert field.r is not None and field.j is not None
    r = tuple(field.r[a] + (k[a] - 1) * field.j[a] for a in range(2))
    j = tuple(field.j[a] * k[a] for a in range(2))
    return replace(field, r=r, j=j, layout="map", grid=size_out)  # type: ignore[arg-type]


def _dims(dim: object, ndim: int) -> set[int] | None:
    if dim is None:
        return None
    items = dim if isinstance(dim, (tuple, list)) else (dim,)
    try:
        return {int(d) % ndim for d in items}  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _reduce(field: Field, node: TraceNode) -> Field:
    ndim = len(node.input) + 1
    dims = _dims(node.dim, ndim)
    if dims is None:
        return field.union() if node.dim is None and node.output == [] else unknown(
            f"{node.name}: {node.kind} over dimension {node.dim!r}")
    if field.layout == "map" and ndim == 4:
        if dims >= {2, 3} and 0 not in dims:
            return replace(field.union(), layout="map" if len(node.output or []) == 3 else "vector")
        if dims == {1}:
            return field  # over channels: each position alone
    if field.layout == "flat" and dims == {1} and ndim == 2:
        return replace(field.union(), layout="vector")
    if field.layout in ("vector", "mixed") and 0 not in dims:
        return field  # every value already sees the same field
    return unknown(f"{node.name}: {node.kind} over dimension {node.dim!r} of a {field.layout} tensor")


def _reshape(field: Field, node: TraceNode) -> Field:
    before, after = node.input, node.output or []
    if before == after:
        return field
    if field.layout == "map" and len(before) == 3:
        if before[1] * before[2] == 1:
            return replace(field, layout="vector", grid=(1, 1))
        if len(after) == 1 and after[0] == before[0] * before[1] * before[2]:
            return replace(field, layout="flat")  # each value keeps its own field until a layer mixes them
    if field.layout in ("flat", "vector") and len(after) == 1:
        return field
    if field.layout == "vector" and len(after) == 3 and after[1] * after[2] == 1:
        return replace(field, layout="map", grid=(1, 1))  # (N, C) -> (N, C, 1, 1): one position
    return unknown(f"{node.name}: reshape from {'x'.join(map(str, before))} to {'x'.join(map(str, after))} "
                   f"moves values between positions")


def _dense(field: Field, node: TraceNode) -> Field:
    if field.layout == "flat":
        return replace(field.union(), layout="vector")
    if field.layout in ("vector", "mixed"):
        return field
    return unknown(f"{node.name}: a dense layer on a {len(node.input)}D map mixes values along its last axis")


def _softmax(field: Field, node: TraceNode) -> Field:
    """Softmax, log-softmax and F.normalize divide by a sum along `dim`. Along the channels of one position they
    rescale values but move none, so the field stays (as the notes count BN); along the positions every value
    depends on all of them: the union of their fields. Along one spatial axis only: '?'."""
    ndim = len(node.input) + 1
    if node.geometry.get("flattens") and len(node.input) == 3:  # convladder's output layer flattens first
        field = _reshape(field, replace(node, output=[node.input[0] * node.input[1] * node.input[2]]))
        if not field.known:
            return field
        ndim = 2
    dim = node.dim
    if dim is None and node.kind in ("softmax", "logsoftmax"):
        dim = 0 if ndim in (0, 1, 3) else 1  # torch's choice for a softmax called without dim
    dims = _dims(dim, ndim)
    if dims is None or 0 in dims:
        return unknown(f"{node.name}: {node.kind} over dimension {dim!r}")
    if field.layout in ("vector", "mixed"):
        return field  # every value already sees the same field
    if field.layout == "map" and ndim == 4:
        if dims == {1}:
            return field
        if dims >= {2, 3}:
            return replace(field.union(), layout="mixed")
        return unknown(f"{node.name}: {node.kind} over dimension {dim!r} mixes the positions along one axis")
    if field.layout == "flat" and ndim == 2 and dims == {1}:
        return replace(field.union(), layout="vector")  # over a flattened map: every position
    return unknown(f"{node.name}: {node.kind} over dimension {dim!r} of a {field.layout} tensor")


def _channel_index(item: object) -> bool:
    """An index of the channel axis that keeps the axis (a slice, a list of channels): positions do not move."""
    if isinstance(item, slice):
        return True
    if isinstance(item, list):
        return all(isinstance(i, (int, bool)) for i in item)
    return isinstance(item, torch.Tensor) and item.dim() == 1


def _slice(field: Field, node: TraceNode, items: list[object]) -> Field:
    """`x[:, :, a:b:s, c:d:t]` of a map: the first kept row starts a*j further on, neighbours are s*j apart.

    An integer on both height and width keeps one position (a vector with that position's field). Anything
    else on height or width (one integer, a list, a mask) gives '?'.
    """
    assert field.j is not None
    what = f"{node.name}: indexing {node.op.removeprefix('slice ') or 'the map'}"
    if not isinstance(items[0], slice):
        return unknown(f"{what} picks from the batch axis")
    if not _channel_index(items[1]):
        return unknown(f"{what} drops or reorders the channel axis")
    offsets, steps, sizes, kept = [], [], [], 0
    for axis, (item, n) in enumerate(zip(items[2:], node.input[1:])):
        if isinstance(item, bool) or not isinstance(item, (int, slice)):
            return unknown(f"{what} uses a {type(item).__name__} on the {('height', 'width')[axis]} axis")
        if isinstance(item, int):
            if not -n <= item < n:
                return unknown(f"{what}: index {item} is outside the map")
            offsets.append(item % n)
            steps.append(1)
            sizes.append(1)
            continue
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in (item.start, item.stop, item.step)):
            return unknown(f"{what} with bounds that are not integers")
        picked = range(*item.indices(n))
        if len(picked) == 0 or picked.step < 1:
            return unknown(f"{what} keeps no position")
        offsets.append(picked.start)
        steps.append(picked.step)
        sizes.append(len(picked))
        kept += 1
    if kept == 1:
        return unknown(f"{what} keeps one axis of the map")
    if (node.output or [])[1:] != (sizes if kept else []):
        return unknown(f"{what}: output {node.output} does not follow from the index")
    j = tuple(field.j[a] * steps[a] for a in range(2))
    start = None if field.start is None else tuple(field.start[a] + offsets[a] * field.j[a] for a in range(2))
    if not kept:  # one position of the map: one value per channel
        return replace(field, j=j, layout="vector", grid=(1, 1), start=start)  # type: ignore[arg-type]
    return replace(field, j=j, grid=(sizes[0], sizes[1]), start=start)  # type: ignore[arg-type]


def _merge(fields: list[Field], node: TraceNode) -> Field:
    if not fields:
        return unknown(f"{node.name}: {node.kind} of tensors made inside forward")
    bad = next((f for f in fields if not f.known), None)
    if bad is not None:
        return bad
    if node.kind == "concat":
        dims = _dims(node.dim, len(node.output or []) + 1)
        if dims != {1}:
            return unknown(f"{node.name}: concatenation along dimension {node.dim!r}, not channels")
    layouts = {f.layout for f in fields if f.grid != (1, 1) or f.layout != "map"}
    if len(layouts) > 1:
        return unknown(f"{node.name}: {node.kind} of a {' and a '.join(sorted(layouts))} tensor")
    spread = [f for f in fields if f.grid != (1, 1)]  # inputs of one position broadcast: their jump is moot
    jumps = {f.j for f in spread}
    if len(jumps) > 1:
        listed = ", ".join(f"{j[0]}" if j and j[0] == j[1] else f"{j}" for j in sorted(jumps, key=str))
        return unknown(f"{node.name}: {node.kind} of inputs with different jumps ({listed}): their fields are not aligned")
    base = spread[0] if spread else fields[0]
    aligned = spread or fields
    if all(f.start is not None for f in aligned):
        # the union of the inputs' fields: from the earliest start to the latest end
        start = tuple(min(f.start[a] for f in aligned) for a in range(2))  # type: ignore[index]
        end = tuple(max(f.start[a] + f.r[a] for f in aligned) for a in range(2))  # type: ignore[index,operator]
        r = tuple(end[a] - start[a] for a in range(2))
    else:
        start, r = None, tuple(max(f.r[a] for f in aligned) for a in range(2))  # type: ignore[index]
    whole = [f.r for f in fields if f.grid == (1, 1) and f.r is not None]  # broadcast gates see what they saw
    r = tuple(max([r[a]] + [w[a] for w in whole]) for a in range(2))
    return replace(base, r=r, start=start, reason="")  # type: ignore[arg-type]


def propagate(trace: ModelTrace) -> dict[str, Field]:
    """The field of every node of `trace`, by name (INPUT included)."""
    image = _spatial(trace.input_shape) or (1, 1)
    fields: dict[str, Field] = {INPUT: Field((1, 1), (1, 1), "map" if len(trace.input_shape) == 3 else "vector",
                                             image, image=image)}
    for node in trace.nodes:
        fields[node.name] = _node_field(node, [fields.get(i, unknown(f"{i} was not traced")) for i in node.inputs])
    return fields


def _node_field(node: TraceNode, inputs: list[Field]) -> Field:
    if node.unseen_input:
        return unknown(f"{node.name}: its input comes from computation the hooks could not see")
    if node.category == "merge":
        return _merge(inputs, node)
    if not inputs:
        return unknown(f"{node.name}: reads no traced tensor")
    field = inputs[0]
    if not field.known:
        return field
    if node.category == "select" and node.geometry.get("of_tensor") and field.layout == "map" and len(node.input) == 3:
        items = expand_index(node.geometry.get("index"), 4)
        if items is not None:
            return _slice(field, node, items)
    if node.category == "pointwise" or node.category == "select":
        if node.category == "pointwise" and _spatial(node.input) != _spatial(node.output):
            return unknown(f"{node.name}: {node.kind} changed the size from {node.input} to {node.output}")
        if node.category == "select" and len(node.input) != len(node.output or []):
            return _reshape(field, node)  # x[:, :, None, None] and the like: the same rules as a reshape
        return replace(field, grid=_spatial(node.output) or field.grid)
    if node.category == "pad":
        before, after = _spatial(node.input), _spatial(node.output)
        pad = node.geometry.get("before")  # pixels added before the map (top, left), when known
        start = None
        if field.start is not None and pad is not None and field.j is not None:
            start = tuple(field.start[a] - pad[a] * field.j[a] for a in range(2))
        return replace(field, grid=after or field.grid, start=start if before != after else field.start)
    handlers = {"window": _window, "adaptive": _adaptive, "reduce": _reduce, "reshape": _reshape,
                "dense": _dense, "softmax": _softmax}
    handler = handlers.get(node.category)
    if handler is None:
        return unknown(node.geometry.get("reason") or f"{node.name}: {node.kind} is not analysed for the receptive field")
    return handler(field, node)
