"""Receptive field and jump of every node of a traced network, multi-path included.

The field of a position is the box of input pixels its value depends on. Along each axis (height, width)
every position's window is kept exactly, as `[lo, hi)` in input pixels; padding counts as if the map went on
(the field of a unit not clipped by the border: a 3x3 convolution sees 3 at the corner too). A window layer
applies the standard recurrence (Araujo, Norris & Sim, Distill 2019: k' = d(k-1)+1, r_out = r_in + (k'-1)j_in,
j_out = j_in s) position by position, so upsampling (transposed convolutions, `F.interpolate` nearest or
bilinear by a whole factor), where neighbouring positions can see fields of different sizes, is exact too:
the windows repeat with a period of a few positions (`Axis`), the jump is a fraction (1/2 after a 2x
upsampling of the input's grid), and the table prints the range of sizes ("44-48") where they differ.

A global reduction — global pooling, a mean over height and width, a dense layer over a flattened map, a
softmax over the positions, a pool or convolution whose one window covers the whole map (`AvgPool2d(14)` on
14x14) — sees the union of every position's field clipped to the image (padding is not input). That box
(`Field.glob`) stays with everything computed from it: after a squeeze-excite gate or a global-context add,
each position sees the whole image and its own window, clipped to the image, so later windows do not grow
past it. BN, activations, dropout, softmax over channels, casts, 1x1 convolutions and reshapes that only
move channels (a channel shuffle) leave the field as it is. At a merge (add, multiply, concatenate) each
position sees the union of its inputs' windows, which needs equal jumps; inputs of one position that come
from a global reduction broadcast. Anything else — different jumps at a merge, a reshape that moves values
between positions, an operation the analysis does not know, a size that does not follow from the layer's
settings — gives an unknown field with the reason, and everything computed from it is unknown too. A wrong
number is worse than a '?'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import torch

from convladder.analysis.ops import expand_index
from convladder.analysis.trace import INPUT, ModelTrace, TraceNode

Pair = tuple[int, int]
Window = tuple[int, int]
_FAR = 1 << 40
NOTHING: Window = (_FAR, -_FAR)  # a position that reads no input pixel


def _moved(w: Window, by: int) -> Window:
    return w if w[0] >= w[1] else (w[0] + by, w[1] + by)


def _cover(windows: list[Window]) -> Window:
    lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
    return (lo, hi) if lo < hi else NOTHING


@dataclass(frozen=True)
class Axis:
    """Position q along one axis sees input pixels `window(q)`: the windows of q = 0..P-1, repeated `shift`
    pixels further on every P positions (P = 1 except after upsampling)."""

    windows: tuple[Window, ...]
    shift: int

    def window(self, q: int) -> Window:
        turns, phase = divmod(q, len(self.windows))
        return _moved(self.windows[phase], turns * self.shift)

    @property
    def jump(self) -> Fraction:
        return Fraction(self.shift, len(self.windows))


def _axis(windows: list[Window], shift: int) -> Axis:
    """The axis of these windows (one period) in its shortest period."""
    n = len(windows)
    for p in range(1, n):
        if n % p == 0 and (shift * p) % n == 0:
            step = shift * p // n
            if all(_moved(windows[i], step) == windows[i + p] for i in range(n - p)):
                return Axis(tuple(windows[:p]), step)
    return Axis(tuple(windows), shift)


def _through(axis: Axis, k: int, s: int, p: int, d: int) -> Axis:
    """A window of k taps (dilation d, stride s, padding p): output o reads inputs o*s - p + t*d."""
    period = len(axis.windows) // math.gcd(len(axis.windows), s)
    shift = axis.shift * (period * s // len(axis.windows))
    return _axis([_cover([axis.window(o * s - p + t * d) for t in range(k)]) for o in range(period)], shift)


def _transposed(axis: Axis, k: int, s: int, p: int, d: int) -> Axis:
    """A transposed convolution: input i adds into outputs i*s - p + t*d (a nearest upsampling by s is k = s)."""
    period = len(axis.windows) * s
    reads = [[(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0] for o in range(period)]
    return _axis([_cover([axis.window(i) for i in r]) if r else NOTHING for o, r in enumerate(reads)], axis.shift)


def _bilinear(axis: Axis, s: int) -> Axis:
    """Bilinear upsampling by a whole factor s, align_corners=False: output o reads the two inputs around
    (o + 0.5)/s - 0.5 (one when it falls on an input: the other's weight is 0)."""
    windows = []
    for o in range(len(axis.windows) * s):
        num, den = 2 * o + 1 - s, 2 * s
        reads = [num // den] + ([num // den + 1] if num % den else [])
        windows.append(_cover([axis.window(i) for i in reads]))
    return _axis(windows, axis.shift)


def _union_axes(axes: list[Axis]) -> Axis:
    period = math.lcm(*(len(a.windows) for a in axes))
    shift = axes[0].shift * period // len(axes[0].windows)
    return _axis([_cover([a.window(q) for a in axes]) for q in range(period)], shift)


@dataclass(frozen=True)
class Field:
    """What each output value of a node sees of the input."""

    axes: tuple[Axis, Axis] | None  # each position's window (height, width); None: no local part, or unknown
    step: tuple[Fraction, Fraction] | None  # jump: input pixels between neighbouring positions; None = unknown
    # map (N,C,H,W) | flat (positions folded into features) | vector (one value per feature)
    # | mixed (a map whose every value sees the same union of positions, e.g. after a softmax over them)
    layout: str = "map"
    grid: Pair = (1, 1)  # the positions the values still come from (for a later union)
    reason: str = ""  # why the field is unknown
    image: Pair = (1, 1)  # the input's size, which a union of fields cannot exceed
    glob: tuple[Window, Window] | None = None  # the box a global reduction saw, seen by every position

    @property
    def known(self) -> bool:
        return self.axes is not None or self.glob is not None

    def extents(self) -> tuple[Pair, Pair] | None:
        """(smallest, largest) field over the positions, per axis; None where unknown or a position sees nothing."""
        if not self.known:
            return None
        out = []
        for a in range(2):
            sizes = set()
            for q in range(self.grid[a] if self.axes is not None else 1):
                lo, hi = self.axes[a].window(q) if self.axes is not None else NOTHING
                if self.glob is not None:  # the whole box and the own window, clipped: padding is not input
                    lo, hi = max(0, min(lo, self.glob[a][0])), min(self.image[a], max(hi, self.glob[a][1]))
                if lo >= hi:
                    return None
                sizes.add(hi - lo)
            out.append((min(sizes), max(sizes)))
        return out[0], out[1]

    @property
    def r(self) -> Pair | None:
        """The field (height, width) when every position has the same; None when unknown or it varies."""
        ext = self.extents()
        if ext is None or ext[0][0] != ext[0][1] or ext[1][0] != ext[1][1]:
            return None
        return ext[0][0], ext[1][0]

    @property
    def j(self) -> Pair | None:
        """The jump (height, width) when it is a whole number of pixels."""
        if self.step is None or any(s.denominator != 1 for s in self.step):
            return None
        return int(self.step[0]), int(self.step[1])

    def union(self) -> Field:
        """Every position combined: the field of a global reduction, the part of the input it covers."""
        box = []
        for a in range(2):
            seen = [self.axes[a].window(q) for q in range(self.grid[a])] if self.axes is not None else []
            lo, hi = _cover(seen + ([self.glob[a]] if self.glob is not None else []))
            box.append((max(0, lo), min(self.image[a], hi)))
        if any(lo >= hi for lo, hi in box):
            return unknown("a global reduction of positions that see no input pixel")
        return replace(self, axes=None, glob=(box[0], box[1]), grid=(1, 1))


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


def _map_axes(field: Field, change) -> tuple[Axis, Axis] | None:  # type: ignore[no-untyped-def]
    return None if field.axes is None else (change(field.axes[0], 0), change(field.axes[1], 1))


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
    axes = _map_axes(field, lambda ax, a: _through(ax, k[a], s[a], pad[a], d[a]))
    return replace(field, axes=axes, step=step, grid=size_out)  # type: ignore[arg-type]


def _upsample(field: Field, node: TraceNode) -> Field:
    """Transposed convolutions and F.interpolate / nn.Upsample (nearest, or bilinear by an even factor)."""
    g = node.geometry
    size_in, size_out = _spatial(node.input), _spatial(node.output)
    if field.layout != "map" or size_in is None or size_out is None:
        return unknown(f"{node.name}: upsampling a tensor that is not a map")
    if g.get("transposed"):
        k, s, p, d = g["kernel"], g["stride"], g["padding"], g["dilation"]
        base = [(n - 1) * s[a] - 2 * p[a] + d[a] * (k[a] - 1) + 1 for a, n in enumerate(size_in)]
        if not all(0 <= size_out[a] - base[a] < max(s[a], d[a]) for a in range(2)):
            return unknown(f"{node.name}: output {size_out[0]}x{size_out[1]} does not follow from its settings")
        change = lambda ax, a: _transposed(ax, k[a], s[a], p[a], d[a])  # noqa: E731
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
            change = lambda ax, a: _transposed(ax, factors[a], factors[a], 0, 1)  # noqa: E731
        elif mode == "bilinear" and not g.get("align_corners") and all(f % 2 == 0 or f == 1 for f in factors):
            change = lambda ax, a: _bilinear(ax, factors[a]) if factors[a] > 1 else ax  # noqa: E731
        else:
            return unknown(f"{node.name}: {mode} resizing (align_corners={g.get('align_corners')}, factor "
                           f"{factors[0]}x{factors[1]}) is not analysed: an odd factor puts outputs on inputs")
        step = (field.step[0] / factors[0], field.step[1] / factors[1])  # type: ignore[index]
    axes = _map_axes(field, change)
    if axes is not None and any(NOTHING in ax.windows for ax in axes):
        return unknown(f"{node.name}: some positions read no input (the kernel is shorter than the stride)")
    return replace(field, axes=axes, step=step, grid=size_out)


def _adaptive(field: Field, node: TraceNode) -> Field:
    size_in, size_out = _spatial(node.input), _spatial(node.output)
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
    axes = _map_axes(field, lambda ax, a: _through(ax, k[a], k[a], 0, 1))
    return replace(field, axes=axes, step=(field.step[0] * k[0], field.step[1] * k[1]), grid=size_out)


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


def _channels_only(before: list[int], after: list[int]) -> bool:
    """A reshape that keeps height and width last and regroups only the axes before them (a channel shuffle's
    view to (g, C/g, H, W) and back): every value stays at its position."""
    return (len(before) >= 3 and len(after) >= 3 and before[-2:] == after[-2:]
            and math.prod(before[:-2]) == math.prod(after[:-2]))


def _reshape(field: Field, node: TraceNode) -> Field:
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
    axes = _map_axes(field, lambda ax, a: _through(ax, 1, steps[a], -offsets[a], 1))
    if not kept:  # one position of the map: one value per channel
        return replace(field, axes=axes, step=step, layout="vector", grid=(1, 1))
    return replace(field, axes=axes, step=step, grid=(sizes[0], sizes[1]))


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
    axes = None if not local else (_union_axes([a[0] for a in local]), _union_axes([a[1] for a in local]))
    boxes = [f.glob for f in fields if f.glob is not None]
    glob = None if not boxes else (_cover([b[0] for b in boxes]), _cover([b[1] for b in boxes]))
    return replace(base, axes=axes, glob=glob, reason="")


def _fraction_text(pair: tuple[Fraction, Fraction]) -> str:
    texts = [str(v) for v in pair]
    return texts[0] if texts[0] == texts[1] else f"{texts[0]}x{texts[1]}"


def propagate(trace: ModelTrace) -> dict[str, Field]:
    """The field of every node of `trace`, by name (INPUT included)."""
    image = _spatial(trace.input_shape) or (1, 1)
    pixel = Axis(((0, 1),), 1)
    fields: dict[str, Field] = {INPUT: Field((pixel, pixel), (Fraction(1), Fraction(1)),
                                             "map" if len(trace.input_shape) == 3 else "vector", image, image=image)}
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
        if before == after:
            return field
        if pad is None or after is None:
            return unknown(f"{node.name}: padding by amounts the trace could not read")
        axes = _map_axes(field, lambda ax, a: _through(ax, 1, 1, pad[a], 1))
        return replace(field, axes=axes, grid=after)
    handlers = {"window": _window, "adaptive": _adaptive, "reduce": _reduce, "reshape": _reshape,
                "dense": _dense, "softmax": _softmax, "upsample": _upsample}
    handler = handlers.get(node.category)
    if handler is None:
        return unknown(node.geometry.get("reason") or f"{node.name}: {node.kind} is not analysed for the receptive field")
    return handler(field, node)
