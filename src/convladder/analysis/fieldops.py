"""The receptive-field rule of each kind of node (windows, upsampling, adaptive pools, reductions, reshapes,
dense layers, softmax, indexing, merges), applied by `analysis.field.propagate`: each takes the input's
`Field` and the traced node and gives the node's field, or an unknown one with the reason."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import torch

from convladder.analysis.fieldaxis import (NOTHING, Axis, Field, Pair, bilinear, cover, through, transposed,
                                           union_axes, unknown)
from convladder.analysis.trace import TraceNode


def spatial(shape: list[int] | None) -> Pair | None:
    """(height, width) of a traced (C, H, W) shape; None for anything else."""
    return (shape[1], shape[2]) if shape is not None and len(shape) == 3 else None


def _expected_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = (n + 2 * p - d * (k - 1) - 1) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # PyTorch drops a last window that starts in the padding
        out -= 1
    return out


def _map_axes(field: Field, change) -> tuple[Axis, Axis] | None:  # type: ignore[no-untyped-def]
    return None if field.axes is None else (change(field.axes[0], 0), change(field.axes[1], 1))


def window_field(field: Field, node: TraceNode) -> Field:
    g = node.geometry
    size_in, size_out = spatial(node.input), spatial(node.output)
    if field.layout == "mixed":  # the recurrence would add to a field every neighbour already shares
        return unknown(f"{node.name}: a 2D window on a map whose positions were already mixed")
    if field.layout != "map" or size_in is None or size_out is None:
        return unknown(f"{node.name}: a 2D window on a tensor that is not a map")
    k, s, d = g["kernel"], g["stride"], g["dilation"]
    padding = g.get("padding")
    if isinstance(padding, tuple):
        pad = padding
        expected = tuple(_expected_size(n, k[a], s[a], padding[a], d[a], g.get("ceil_mode", False))
                         for a, n in enumerate(size_in))
        if expected != size_out:
            return unknown(f"{node.name}: output {size_out[0]}x{size_out[1]} does not follow from its settings "
                           f"(expected {expected[0]}x{expected[1]})")
    elif padding == "valid":
        pad = (0, 0)
    elif padding == "same":  # PyTorch puts the odd pixel of padding after the map
        pad = tuple(d[a] * (k[a] - 1) // 2 for a in range(2))
    else:
        return unknown(f"{node.name}: padding {padding!r} is not known")
    assert field.step is not None
    step = (field.step[0] * s[0], field.step[1] * s[1])
    whole = size_out == (1, 1) and all(set(range(n)) <= {t * d[a] - pad[a] for t in range(k[a])}
                                       for a, n in enumerate(size_in))
    if whole:  # one window over every position (AvgPool2d(14) on 14x14): a global reduction
        return replace(field.union(), step=step)
    axes = _map_axes(field, lambda ax, a: through(ax, k[a], s[a], pad[a], d[a]))
    return replace(field, axes=axes, step=step, grid=size_out)  # type: ignore[arg-type]


def upsample_field(field: Field, node: TraceNode) -> Field:
    """Transposed convolutions and F.interpolate / nn.Upsample (nearest, or bilinear by an even factor)."""
    g = node.geometry
    size_in, size_out = spatial(node.input), spatial(node.output)
    if field.layout != "map" or size_in is None or size_out is None:
        return unknown(f"{node.name}: upsampling a tensor that is not a map")
    if g.get("transposed"):
        k, s, p, d = g["kernel"], g["stride"], g["padding"], g["dilation"]
        base = [(n - 1) * s[a] - 2 * p[a] + d[a] * (k[a] - 1) + 1 for a, n in enumerate(size_in)]
        if not all(0 <= size_out[a] - base[a] < max(s[a], d[a]) for a in range(2)):
            return unknown(f"{node.name}: output {size_out[0]}x{size_out[1]} does not follow from its settings")
        change = lambda ax, a: transposed(ax, k[a], s[a], p[a], d[a])  # noqa: E731
        step = (field.step[0] / s[0], field.step[1] / s[1])  # type: ignore[index]
    else:
        mode = g.get("mode")
        factors = [size_out[a] // size_in[a] for a in range(2)]
        if any(size_out[a] != factors[a] * size_in[a] for a in range(2)):
            return unknown(f"{node.name}: {mode} resizing by a factor that is not a whole number: positions "
                           f"do not repeat")
        wanted = g.get("scale_factor")
        if wanted is not None and [float(f) for f in (wanted if isinstance(wanted, (tuple, list)) else
                                                       (wanted, wanted))] != [float(f) for f in factors]:
            return unknown(f"{node.name}: scale factor {wanted} rounded to a size: positions do not repeat")
        if mode in ("nearest", "nearest-exact"):
            change = lambda ax, a: transposed(ax, factors[a], factors[a], 0, 1)  # noqa: E731
        elif mode == "bilinear" and not g.get("align_corners") and all(f % 2 == 0 or f == 1 for f in factors):
            change = lambda ax, a: bilinear(ax, factors[a]) if factors[a] > 1 else ax  # noqa: E731
        else:
            return unknown(f"{node.name}: {mode} resizing (align_corners={g.get('align_corners')}, factor "
                           f"{factors[0]}x{factors[1]}) is not analysed: an odd factor puts outputs on inputs")
        step = (field.step[0] / factors[0], field.step[1] / factors[1])  # type: ignore[index]
    axes = _map_axes(field, change)
    if axes is not None and any(NOTHING in ax.windows for ax in axes):
        return unknown(f"{node.name}: some positions read no input (the kernel is shorter than the stride)")
    return replace(field, axes=axes, step=step, grid=size_out)


def adaptive_field(field: Field, node: TraceNode) -> Field:
    size_in, size_out = spatial(node.input), spatial(node.output)
    if field.layout != "map" or size_in is None or size_out is None:
        return unknown(f"{node.name}: adaptive pooling of a tensor that is not a map")
    if size_out == (1, 1):
        return field.union()
    if size_out == size_in:
        return field
    if size_in[0] % size_out[0] or size_in[1] % size_out[1]:
        return unknown(f"{node.name}: adaptive pooling from {size_in[0]}x{size_in[1]} to {size_out[0]}x{size_out[1]} "
                       f"uses windows of different sizes")
    k = (size_in[0] // size_out[0], size_in[1] // size_out[1])
    assert field.step is not None
    axes = _map_axes(field, lambda ax, a: through(ax, k[a], k[a], 0, 1))
    return replace(field, axes=axes, step=(field.step[0] * k[0], field.step[1] * k[1]), grid=size_out)


def _dims(dim: object, ndim: int) -> set[int] | None:
    if dim is None:
        return None
    items = dim if isinstance(dim, (tuple, list)) else (dim,)
    try:
        return {int(d) % ndim for d in items}  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def reduce_field(field: Field, node: TraceNode) -> Field:
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


def _channels_only(before: list[int], after: list[int]) -> bool:
    """A reshape that keeps height and width last and regroups only the axes before them (a channel shuffle's
    view to (g, C/g, H, W) and back): every value stays at its position."""
    return (len(before) >= 3 and len(after) >= 3 and before[-2:] == after[-2:]
            and math.prod(before[:-2]) == math.prod(after[:-2]))


def reshape_field(field: Field, node: TraceNode) -> Field:
    before, after = node.input, node.output or []
    if node.kind in ("transpose", "swapaxes", "permute"):
        return _permute(field, node)
    if before == after:
        return field
    if field.layout == "map" and _channels_only(before, after):
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


def _permute(field: Field, node: TraceNode) -> Field:
    """transpose/permute: the field stays where batch, height and width keep their places (channels move)."""
    ndim = len(node.input) + 1
    dims = node.geometry.get("dims")
    try:
        dims = [int(d) % ndim for d in dims]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return unknown(f"{node.name}: {node.kind} over dimensions {dims!r}")
    order = list(range(ndim))
    if node.kind == "permute":
        order = dims if sorted(dims) == order else []
    elif len(dims) == 2:
        order[dims[0]], order[dims[1]] = order[dims[1]], order[dims[0]]
    if field.layout == "map" and ndim >= 4 and order and order[0] == 0 and order[-2:] == [ndim - 2, ndim - 1]:
        return field
    return unknown(f"{node.name}: {node.kind} {dims} moves the batch, height or width axis")


def dense_field(field: Field, node: TraceNode) -> Field:
    if field.layout == "flat":
        return replace(field.union(), layout="vector")
    if field.layout in ("vector", "mixed"):
        return field
    return unknown(f"{node.name}: a dense layer on a {len(node.input)}D map mixes values along its last axis")


def softmax_field(field: Field, node: TraceNode) -> Field:
    """Softmax, log-softmax and F.normalize divide by a sum along `dim`. Along the channels of one position they
    rescale values but move none, so the field stays (as the notes count BN); along the positions every value
    depends on all of them: the union of their fields. Along one spatial axis only: '?'."""
    ndim = len(node.input) + 1
    if node.geometry.get("flattens") and len(node.input) == 3:  # convladder's output layer flattens first
        field = reshape_field(field, replace(node, output=[node.input[0] * node.input[1] * node.input[2]]))
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


def slice_field(field: Field, node: TraceNode, items: list[object]) -> Field:
    """`x[:, :, a:b:s, c:d:t]` of a map: kept position q is old position a + q*s (a window of one tap).

    An integer on both height and width keeps one position (a vector with that position's field). Anything
    else on height or width (one integer, a list, a mask) gives '?'.
    """
    assert field.step is not None
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
    step = (field.step[0] * steps[0], field.step[1] * steps[1])
    axes = _map_axes(field, lambda ax, a: through(ax, 1, steps[a], -offsets[a], 1))
    if not kept:  # one position of the map: one value per channel
        return replace(field, axes=axes, step=step, layout="vector", grid=(1, 1))
    return replace(field, axes=axes, step=step, grid=(sizes[0], sizes[1]))


def merge_fields(fields: list[Field], node: TraceNode) -> Field:
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
    if len({f.grid for f in spread}) > 1:
        return unknown(f"{node.name}: {node.kind} of maps of different sizes (broadcast along one axis)")
    jumps = {f.step for f in spread}
    if len(jumps) > 1:
        listed = ", ".join(_fraction_text(j) for j in sorted(jumps, key=str))  # type: ignore[arg-type]
        return unknown(f"{node.name}: {node.kind} of inputs with different jumps ({listed}): their fields are not aligned")
    if spread and any(f.axes is not None for f in fields if f.grid == (1, 1)):
        return unknown(f"{node.name}: one position that is not a global reduction, broadcast over the map")
    base = spread[0] if spread else fields[0]
    local = [f.axes for f in (spread or fields) if f.axes is not None]
    axes = None if not local else (union_axes([a[0] for a in local]), union_axes([a[1] for a in local]))
    boxes = [f.glob for f in fields if f.glob is not None]
    glob = None if not boxes else (cover([b[0] for b in boxes]), cover([b[1] for b in boxes]))
    return replace(base, axes=axes, glob=glob, reason="")


def _fraction_text(pair: tuple[Fraction, Fraction]) -> str:
    texts = [str(v) for v in pair]
    return texts[0] if texts[0] == texts[1] else f"{texts[0]}x{texts[1]}"


def pad_field(field: Field, node: TraceNode) -> Field:
    """F.pad and padding layers: kept position q is old position q - before (a window of one tap)."""
    before, after = spatial(node.input), spatial(node.output)
    pad = node.geometry.get("before")  # pixels added before the map (top, left), when known
    if before == after:
        return field
    if pad is None or after is None:
        return unknown(f"{node.name}: padding by amounts the trace could not read")
    axes = _map_axes(field, lambda ax, a: through(ax, 1, 1, pad[a], 1))
    return replace(field, axes=axes, grid=after)

