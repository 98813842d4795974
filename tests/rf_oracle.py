"""The receptive-field oracle: which input pixels a unit's value depends on, measured by derivatives.

Independent of `convladder.analysis.field`: the network is linearised — every max-pool becomes an average
over the same windows (a depthwise convolution of ones: dilation and ceil mode kept), activations, dropout
and BN become identity, weights 1 and biases 0, float64 — so every path from a pixel to a unit carries a
positive weight and the support of the derivative is exactly the set of pixels the unit depends on.

Two measurements:

* `centre_field(model, input_shape, module_name, block)` — reverse mode on the model as written, at the
  input size given: the bounding box (height, width) of the gradient support of each unit in a block at
  the centre of `module_name`'s output. Units at the centre of a large enough input are not clipped by the
  border, so this is the textbook field (three 3x3 convs = 7, VGG16 pool5 = 212, ResNet-18 = 43/99/211/435).

* `net_fields(net, input_shape)` — every op of a generated `rf_netgen.Net`, every position of its output, in
  the table's convention: padding counts as if the map went on (the field of a unit not clipped by the
  border), so the network runs on a canvas: the image with a margin around it, every map a margin of
  positions larger, and the map's own positions (its "region") at a known offset. A global reduction —
  a global pool or mean, an fc over a flattened map, a pool or convolution whose one window covers the
  whole map — reads only its region, and whatever depends on one is clipped to the image (padding is not
  input). Forward-mode derivatives with one tangent per canvas row (then per canvas column), all in one
  batch, give for every position the rows (columns) it depends on; extents are the (smallest, largest) over
  the positions. The jump is the shift between the windows of neighbouring positions, measured with global
  reductions held constant (detached), over the smallest period in which the windows repeat. Per-axis
  measurement assumes what every generated op satisfies: what a position depends on along the height does
  not depend on its column (kernels are rectangles) — and that every column has a path to some pixel: where a
  position reads only padding the other axis is extended too (`_reads_only_padding`).

  Only where a derivative is nonzero matters, and every op of the linearised network is a sum of nonnegative
  terms with positive weights, so the canvas carries 0/1 supports (`_binary`, float32: exact) and a
  convolution of ones is computed as sums of shifted slices over each group's summed channels — the supports
  of the float64 derivatives of the full convolutions, several times cheaper.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

import rf_netgen as G

CANVAS = torch.float32  # the canvas holds 0/1 supports (see _binary)
POINTWISE = (nn.ReLU, nn.BatchNorm2d, nn.Dropout, G.Sigmoid, nn.Identity, nn.Sigmoid, nn.ReLU6, nn.GELU)


def _avg_like(x: torch.Tensor, k, s=None, p=0, d=1, ceil: bool = False, out: tuple[int, int] | None = None,
):
    """Every position of a max-pool's windows, equally: a depthwise convolution of ones, same geometry;
    `out` = the size PyTorch's pool gives (ceil mode: zeros past the end read nothing)."""
    k = (k, k) if isinstance(k, int) else tuple(k)
    s = k if s in (None, (), []) else ((s, s) if isinstance(s, int) else tuple(s))
    p = (p, p) if isinstance(p, int) else tuple(p)
    d = (d, d) if isinstance(d, int) else tuple(d)
    right = [p[a] for a in range(2)]
    if out is not None:  # pad after the map so that the last (ceil-mode) window fits
        for a in range(2):
            need = (out[a] - 1) * s[a] + d[a] * (k[a] - 1) + 1 - (x.shape[2 + a] + p[a])
            right[a] = max(right[a], need)
    y = _window_sum(x, k, s, d, ((p[0], right[0]), (p[1], right[1])))
    return y if out is None else y[:, :, :out[0], :out[1]]


def _window_sum(x: torch.Tensor, k, s, d, pads) -> torch.Tensor:
    """Each channel alone, zero-padded by `pads` ((before, after) per axis): the sum of every window of k taps
    (dilation d, stride s) — a convolution with a kernel of ones, as one shifted strided slice per tap and axis
    (exact, and far cheaper than torch's float64 convolution)."""
    x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    for a in range(2):
        dim = 2 + a
        count = (x.shape[dim] - d[a] * (k[a] - 1) - 1) // s[a] + 1
        taps = [x.narrow(dim, t * d[a], (count - 1) * s[a] + 1) for t in range(k[a])]
        if s[a] > 1:
            taps = [t[:, :, ::s[a]] if a == 0 else t[:, :, :, ::s[a]] for t in taps]
        x = taps[0].clone() if len(taps) > 1 else taps[0]
        for tap in taps[1:]:
            x += tap
    return x


def linearise(model: nn.Module) -> nn.Module:
    """A float64 copy: max-pools averaged, activations/dropout/BN identity, weights 1, biases 0, eval mode."""
    model = copy.deepcopy(model).double().eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, _PoolAsAvg(child))
            elif isinstance(child, POINTWISE):
                setattr(module, name, nn.Identity())
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    return model


class _PoolAsAvg(nn.Module):
    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.pool(x).shape[2:])  # the size PyTorch's max-pool gives
        m = self.pool
        return _avg_like(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, size)


@contextmanager
def _functional_linearised():
    real = F.max_pool2d

    def avg(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        size = tuple(real(x, kernel_size, stride, padding, dilation, ceil_mode).shape[2:])
        return _avg_like(x, kernel_size, stride, padding, dilation, ceil_mode, size)

    def identity(x, *args, **kwargs):
        return x

    # functional activations written in forward become identity too (a saturated sigmoid's derivative is 0)
    patches = [mock.patch.object(F, "max_pool2d", avg)] + [
        mock.patch.object(module, name, identity) for module, name in
        ((torch, "sigmoid"), (torch, "tanh"), (F, "relu"), (F, "sigmoid"), (F, "tanh"), (F, "gelu"), (F, "silu"))]
    for patch in patches:
        patch.start()
    try:
        yield
    finally:
        for patch in patches:
            patch.stop()


def _held(y: torch.Tensor) -> torch.Tensor:
    """A global reduction held constant: its value (batch entry 0) kept, its derivatives zero."""
    return torch.cat([y[:1], torch.zeros_like(y[1:])])


class _Reached(Exception):
    pass


def _box(mask: torch.Tensor) -> tuple[int, int]:
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def centre_field(model: nn.Module, input_shape: tuple[int, int, int], module_name: str | None = None,
                 block: int = 1, call: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """((smallest, largest) height, (smallest, largest) width) of the fields of the `block` x `block` units at
    the centre of `module_name`'s output (the model's output when None) at its `call`-th call (a module applied
    several times), by reverse-mode gradients."""
    model = linearise(model)
    seen: list[torch.Tensor] = []

    def stop(module, inputs, output):
        seen.append(output)
        if len(seen) == call:
            raise _Reached  # what comes after (a dense layer sized for another input) does not matter

    target = model if module_name is None else model.get_submodule(module_name)
    handle = target.register_forward_hook(stop)
    x = torch.ones(1, *input_shape, dtype=torch.float64, requires_grad=True)
    try:
        with _functional_linearised():
            model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    out = seen[-1]
    hs, ws = [], []
    if out.dim() == 2:
        units = [lambda: out[0].sum()]
    else:
        h0, w0 = (out.shape[2] - block) // 2, (out.shape[3] - block) // 2
        units = [lambda i=i, j=j: out[0, :, h0 + i, w0 + j].sum() for i in range(block) for j in range(block)]
    for unit in units:
        (grad,) = torch.autograd.grad(unit(), x, retain_graph=True)
        h, w = _box(grad[0].abs().sum(0) > 0)
        hs.append(h)
        ws.append(w)
    return (min(hs), max(hs)), (min(ws), max(ws))


# -- generated networks, every position, in the table's convention --------------------------------------------

@dataclass
class OpField:
    extents: tuple[tuple[int, int], tuple[int, int]]  # (smallest, largest) field per axis over the positions
    jumps: tuple[Fraction | None, Fraction | None]  # None: one position, or no period seen
    layout: str  # map | flat | vector
    clipped: bool  # depends on a global reduction


@dataclass(eq=False)
class _V:
    """A value on the canvas: its tensor, where the original map's positions start, their number, kind."""

    x: torch.Tensor
    off: tuple[int, int]
    n: tuple[int, int]
    kind: str = "map"  # map | flat (a flattened map, kept as the map) | vector
    glob: bool = False

    def region(self) -> torch.Tensor:
        return self.x[:, :, self.off[0]:self.off[0] + self.n[0], self.off[1]:self.off[1] + self.n[1]]


class Retry(Exception):
    """A position's support reached the canvas edge: a wider margin is needed."""


def _geometry(op: nn.Module):
    """(kernel, stride, padding, dilation, ceil, is_pool) of a window op, as pairs; None for other ops."""
    def pair(v):
        return (v, v) if isinstance(v, int) else (tuple(v) if v is not None else None)
    if isinstance(op, nn.Conv2d):
        return pair(op.kernel_size), pair(op.stride), op.padding, pair(op.dilation), False, False
    if isinstance(op, (nn.MaxPool2d, nn.AvgPool2d)):
        k = pair(op.kernel_size)
        return k, pair(op.stride) or k, pair(op.padding), pair(getattr(op, "dilation", 1)), op.ceil_mode, True
    if isinstance(op, G.FPool):
        k = pair(op.k)
        return k, pair(op.s) or k, pair(op.p), pair(op.d), op.ceil, True
    return None


def _ones_conv(x: torch.Tensor, cout: int, groups: int, conv) -> torch.Tensor:
    """A (transposed) convolution whose weights are all 1: every output channel of a group is the same sum of
    that group's input channels, so the channels of each group are summed first, `conv` (a window sum over each
    channel alone) runs on those and its result is repeated: the numbers of the convolution with a full weight
    of ones, several times fewer operations."""
    n, c, h, w = x.shape
    y = conv(x.view(n, groups, c // groups, h, w).amax(2))  # 0/1 supports: any channel of the group
    return y.repeat_interleave(cout // groups, 1) if cout > groups else y


def _conv_pads(padding, k, d) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) per axis, as torch pads: 'same' puts the odd pixel after the map."""
    if padding == "same":
        return tuple((d[a] * (k[a] - 1) // 2, d[a] * (k[a] - 1) - d[a] * (k[a] - 1) // 2) for a in range(2))
    p = _pads(padding, k, d)
    return (p[0], p[0]), (p[1], p[1])


def _whole(geo, n_in: tuple[int, int], n_out: tuple[int, int]) -> bool:
    """One window that reads every position of the map: a global reduction (AvgPool2d(14) on 14x14)."""
    k, _, padding, d = geo[:4]
    p = _pads(padding, k, d)
    return n_out == (1, 1) and all(set(range(n_in[i])) <= {t * d[i] - p[i] for t in range(k[i])} for i in range(2))


def _pads(padding, k, d) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple(d[a] * (k[a] - 1) // 2 for a in range(2))
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


def _apply(op: nn.Module, ins: list[_V], out_n: tuple[int, int], local: bool) -> _V:
    """One op on the canvas (linearised)."""
    a = ins[0]
    geo = _geometry(op)
    if geo is not None:
        k, s, padding, d, ceil, is_pool = geo
        p = _pads(padding, k, d)
        whole = _whole(geo, a.n, out_n)
        x = a.region() if whole else a.x
        assert whole or all(a.off[i] % s[i] == 0 for i in range(2)), "margin not a multiple of the strides"
        off = (0, 0) if whole else (a.off[0] // s[0], a.off[1] // s[1])
        if is_pool:  # the canvas map keeps as many positions after the original ones as before them
            y = _avg_like(x, k, s, p, d, ceil, (out_n[0] + 2 * off[0], out_n[1] + 2 * off[1]))
        else:
            y = _ones_conv(x, op.out_channels, op.groups, lambda v: _window_sum(v, k, s, d, _conv_pads(padding, k, d)))
        if whole:
            return _V(_held(y) if local else y, (0, 0), (1, 1), glob=True)
        return _V(y, off, out_n, glob=a.glob)
    if isinstance(op, POINTWISE):
        return a
    if isinstance(op, nn.ConvTranspose2d):
        y = _ones_conv(a.x, op.out_channels, op.groups, lambda v: F.conv_transpose2d(
            v, torch.ones(v.shape[1], 1, *op.kernel_size, dtype=v.dtype), None, op.stride, op.padding,
            op.output_padding, v.shape[1], op.dilation))
        return _V(y, (a.off[0] * op.stride[0], a.off[1] * op.stride[1]), out_n, glob=a.glob)
    if isinstance(op, G.Interp):
        y = F.interpolate(a.x, scale_factor=op.scale, mode=op.mode)
        return _V(y, (a.off[0] * op.scale, a.off[1] * op.scale), out_n, glob=a.glob)
    if isinstance(op, G.Shuffle):
        return _V(op(a.x), a.off, a.n, glob=a.glob)
    if isinstance(op, (G.Mean, nn.AdaptiveAvgPool2d, G.WholeMapPool)):  # global reductions: the region only
        y = a.region().mean((2, 3), keepdim=True)
        y = _held(y) if local else y
        return _V(y if not (isinstance(op, G.Mean) and not op.keepdim) else y[:, :, 0, 0], (0, 0), (1, 1),
                  "vector" if isinstance(op, G.Mean) and not op.keepdim else "map", glob=True)
    if isinstance(op, nn.Flatten):
        if a.n == (1, 1):
            return _V(a.region()[:, :, 0, 0], (0, 0), (1, 1), "vector", glob=a.glob)
        return _V(a.x, a.off, a.n, "flat", glob=a.glob)  # each value keeps its position's field
    if isinstance(op, nn.Linear):
        v = a.region().flatten(1) if a.kind == "flat" else a.x
        ones = torch.ones(op.out_features, v.shape[1], dtype=v.dtype)
        y = F.linear(v, ones)
        return _V(_held(y) if local and a.kind == "flat" else y, (0, 0), (1, 1), "vector",
                  glob=a.glob or a.kind == "flat")
    if isinstance(op, (G.Add, G.Mul, G.Cat)):
        spread = [v for v in ins if v.kind == "map" and v.n != (1, 1)]
        if spread:
            assert len({v.off for v in spread}) == 1 and len({v.n for v in spread}) == 1
            size = [min(v.x.shape[2 + i] for v in spread) for i in range(2)]
            # broadcast made explicit (an implicit one sends forward AD through a decomposition that imports
            # torch._dynamo: seconds)
            xs = [v.x[:, :, :size[0], :size[1]] if v in spread else v.region().expand(-1, -1, *size) for v in ins]
            base = spread[0]
        else:
            xs, base = [v.region() if v.kind == "map" else v.x for v in ins], ins[0]
        if isinstance(op, G.Mul):  # product rule: d(ab) = a db + b da, at the (positive) values in entry 0
            a0, b0 = xs[0][:1], xs[1][:1]
            y = torch.cat([a0 * b0, a0 * xs[1][1:] + b0 * xs[0][1:]])
        else:
            y = torch.cat(xs, 1) if isinstance(op, G.Cat) else xs[0] + xs[1]
        return _V(y, base.off if spread else (0, 0), base.n, base.kind, glob=any(v.glob for v in ins))
    raise TypeError(f"the oracle does not know {type(op).__name__}")


def _sizes(net: G.Net, input_shape) -> list[tuple[int, int]]:
    """Each op's output (height, width) from a run of the real network ((1, 1) for vectors)."""
    sizes: list[tuple[int, int]] = []
    handles = [op.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:]) if o.dim() == 4 else (1, 1)))
               for op in net.ops]
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return sizes


def _binary(v: _V) -> _V:
    """Each value as 1 where it is nonzero (its support), 0 elsewhere. Every op is a sum of nonnegative terms
    with positive weights (the product rule too), so where a value is nonzero depends only on where its inputs
    are: the supports are those of the float64 derivatives, while the numbers stay small (float32 is exact)."""
    v.x.sign_()  # in place: a tensor shared with an input (a view, the op itself) is 0/1 already
    return v


CHUNK = 1 << 22  # canvas values per channel and batch entry, summed over a chunk of tangents: memory bound


def _supports(net: G.Net, input_shape, sizes, axis: int, margin: int, local: bool, other: int = 0):
    """Per op: the (value, [per-position-along-`axis` sets of canvas rows/columns]) on a canvas enlarged along
    `axis` by `margin` on each side; each set as (first, last+1) or None when empty. The tangents run in chunks
    (a wide canvas of a strided network held them all at once in 23 GB)."""
    c, h, w = input_shape
    shape = [h, w]
    shape[axis] += 2 * margin
    shape[1 - axis] += 2 * other  # the other axis too, without tangents, where its padding cut every path
    n = shape[axis]
    per = max(1, CHUNK // (shape[0] * shape[1]))
    merged = None
    for lo in range(0, n, per):
        part = _supports_of(net, input_shape, sizes, axis, margin, local, other, shape, range(lo, min(n, lo + per)))
        merged = part if merged is None else [
            (v, [a if b is None else b if a is None else (min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(sa, sb)])
            for (v, sa), (_, sb) in zip(merged, part)]
    return merged


def _supports_of(net: G.Net, input_shape, sizes, axis, margin, local, other, shape, rows: range):
    """`_supports` for the tangents of canvas rows (columns) `rows` only."""
    c, h, w = input_shape
    n = shape[axis]
    # batch entry 0 carries the values (all ones), entry 1 + r the derivative along canvas row/column r: every
    # op but the product is linear, so one pass of the linearised ops computes both
    x = torch.zeros(1 + len(rows), c, *shape, dtype=CANVAS)
    x[0] = 1.0
    idx = torch.arange(len(rows))
    if axis == 0:
        x[idx + 1, :, idx + rows.start, :] = 1.0
    else:
        x[idx + 1, :, :, idx + rows.start] = 1.0
    off = (margin, other) if axis == 0 else (other, margin)
    last_use = {r: i for i, reads in enumerate(net.wiring) for r in reads}
    out = []
    values: dict[int, _V] = {0: _V(x, off, (h, w))}
    for i, (op, reads) in enumerate(zip(net.ops, net.wiring)):
        v = _binary(_apply(op, [values[r] for r in reads], sizes[i], local))
        values[i + 1] = v
        out.append(_measure(v, axis, rows.start))
        start, count = (v.off[axis], v.n[axis]) if v.kind != "vector" else (0, 1)
        # a position whose support comes within half the margin of the canvas edge may have read past it
        # (strides and dilations skip pixels, so touching the edge is not the only sign): widen and rerun
        guard = margin // 2
        if any(s is not None and (s[0] < guard or s[1] > n - guard) for s in out[-1][1][start:start + count]):
            raise Retry  # found early: the rest of the run would be wasted
        for r in reads:
            if last_use.get(r) == i:
                values.pop(r, None)
    return out


def _measure(v: _V, axis: int, base: int):
    """The (first, last+1) canvas row/column of every position along `axis`, over the whole canvas map, for
    tangents of rows (columns) `base`, `base` + 1, ..."""
    t = v.x[1:]  # (every value is a sum of positive terms: nonzero where it depends)
    if v.kind == "vector":
        dep = t.amax(1)[:, None] > 0  # (tangents, 1)
    else:
        s = t.amax(1) > 0  # (tangents, H, W)
        dep = s.any(2) if axis == 0 else s.any(1)  # union over the other axis (rectangular kernels)
    any_ = dep.any(0).tolist()
    first = dep.int().argmax(0).tolist()
    last = (dep.shape[0] - dep.flip(0).int().argmax(0)).tolist()
    return v, [(base + lo, base + hi) if ok else None for ok, lo, hi in zip(any_, first, last)]


def _period(windows: list[tuple[int, int]]) -> Fraction | None:
    """The jump: shift per position over the smallest period in which the windows repeat (3 periods seen)."""
    for p in range(1, len(windows) // 3 + 1):
        shifts = {(windows[i + p][0] - windows[i][0], windows[i + p][1] - windows[i][1]) for i in range(len(windows) - p)}
        if len(shifts) == 1:
            (d0, d1), = shifts
            if d0 == d1:
                return Fraction(d0, p)
    return None


def net_fields(net: G.Net, input_shape: tuple[int, int, int], margin: int | None = None) -> list[OpField]:
    """The field of every op's output (positions of the original map; table convention), see the module doc."""
    sizes = _sizes(net, input_shape)
    cum = [1]  # the product of strides on the way to each tensor: the margin must divide by it
    for op, reads, size in zip(net.ops, net.wiring, sizes):
        geo = _geometry(op)  # (a window over the whole map starts afresh at one position)
        n_in = tuple(input_shape[1:]) if reads[0] == 0 else sizes[reads[0] - 1]
        step = math.lcm(*geo[1]) if geo is not None and not _whole(geo, n_in, size) else 1
        cum.append(math.lcm(*(cum[r] for r in reads)) * step)
    stride = max(cum)
    image = input_shape[1:]
    margin = margin or stride * -(-max(8, max(image) // 2, 6 * stride) // stride)
    while True:
        try:
            other = 0
            if _reads_only_padding(net, input_shape, sizes, 0):
                other = stride * -(-8 // stride)  # a multiple of the strides: positions stay aligned
                while _reads_only_padding(net, input_shape, sizes, other):
                    other *= 2
                    if other > 64 * margin:
                        raise AssertionError("a position depends on no input pixel")
            per_axis = [_axis_fields(net, input_shape, sizes, a, margin, image[a], other) for a in range(2)]
            break
        except Retry:
            margin *= 2
    fields = []
    for (ev, jv), (ew, jw) in zip(*per_axis):
        fields.append(OpField((ev[0], ew[0]), (jv, jw), ev[1], ev[2]))
    return fields


class _Empty(Exception):
    """Every position along the other axis read only its padding: measure with that axis extended too."""


def _axis_fields(net, input_shape, sizes, axis, margin, image, other):
    try:
        return _axis_fields_at(net, input_shape, sizes, axis, margin, image, other)
    except _Empty:  # (a margin along the other axis that is a multiple of the strides keeps positions aligned)
        return _axis_fields_at(net, input_shape, sizes, axis, margin, image, 2 * other or margin)


def _reads_only_padding(net: G.Net, input_shape, sizes, other: int) -> bool:
    """Whether a position of some op's map reads only padding through its local paths (global reductions held),
    on the image with `other` positions of canvas on every side.

    Each axis is measured with the other axis at its real size (cheaper), where a column that reads only
    padding carries no derivative: the rows a position depends on through it would be lost, although in the
    table's convention (the map goes on) that column sees pixels like any other. Such networks are measured
    with the other axis extended as well, by a margin that leaves no position of any map without a path."""
    c, h, w = input_shape
    x = torch.ones(2, c, h + 2 * other, w + 2 * other, dtype=CANVAS)
    values: dict[int, _V] = {0: _V(x, (other, other), (h, w))}
    for i, (op, reads) in enumerate(zip(net.ops, net.wiring)):
        v = values[i + 1] = _binary(_apply(op, [values[r] for r in reads], sizes[i], local=True))
        if v.kind == "vector" or (v.glob and v.n == (1, 1)):
            continue  # one value from a global reduction: no local part to see
        if not bool((v.region()[1].amax(0) > 0).all()):
            return True
    return False


def _axis_fields_at(net, input_shape, sizes, axis, margin, image, other):
    full = _supports(net, input_shape, sizes, axis, margin, local=False, other=other)
    needs_local = any(v.glob and v.kind == "map" and v.n[axis] > 1 for v, _ in full)
    local = _supports(net, input_shape, sizes, axis, margin, local=True, other=other) if needs_local else full
    result = []
    canvas = image + 2 * margin
    for (v, spans), (lv, lspans) in zip(full, local):
        start, count = (v.off[axis], v.n[axis]) if v.kind != "vector" else (0, 1)
        sizes_seen = []
        for q in range(start, start + count):
            span = spans[q]
            if span is None:
                if other:
                    raise AssertionError("a position depends on no input pixel")
                raise _Empty
            if v.glob:  # clipped to the image: padding is not input
                span = (max(span[0], margin), min(span[1], margin + image))
            sizes_seen.append(span[1] - span[0])
        jump = _period(_central_run(lspans, canvas)) if v.kind != "vector" and count > 1 else None
        result.append((((min(sizes_seen), max(sizes_seen)), v.kind, v.glob), jump))
    return result


def _central_run(spans, canvas) -> list[tuple[int, int]]:
    """The longest run of consecutive positions whose windows are known and inside the canvas."""
    best, run = [], []
    for s in spans:
        if s is not None and s[0] > 0 and s[1] < canvas:
            run.append(s)
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    return best


# -- the comparison with the network table ---------------------------------------------------------------------

def extents(row) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """A table row's field as (smallest, largest) per axis; None for '?'."""
    if getattr(row, "rf_range", None):  # (getattr: the same check runs against older tables)
        return tuple(tuple(e) for e in row.rf_range)  # type: ignore[return-value]
    if row.rf_hw:
        return (row.rf_hw[0], row.rf_hw[0]), (row.rf_hw[1], row.rf_hw[1])
    return None


def jumps(row) -> tuple[Fraction, Fraction] | None:
    if row.jump_hw:
        return Fraction(row.jump_hw[0]), Fraction(row.jump_hw[1])
    if getattr(row, "jump_ratio", None):
        return Fraction(row.jump_ratio[0]), Fraction(row.jump_ratio[1])
    return None


def compare(seed: int, stats: dict | None = None) -> list[str]:
    """Where `convladder summary` of generated network `seed` and the oracle disagree (empty: nowhere): at each
    op's row (the last row in its scope `ops.<i>`), the field per axis (range where positions differ) and
    the jump where the oracle sees one. `stats` (optional) counts rows, ranges, fractional jumps, op kinds."""
    from convladder.analysis.table import summarize  # the thing under test, kept out of the oracle above

    net, shape = G.random_net(seed)
    table = summarize(net, shape)
    rows = {}
    for r in table.layers:
        if r.name.startswith("ops."):
            rows[int(r.name.split(".")[1])] = r
    problems = []
    for i, truth in enumerate(net_fields(net, shape)):
        r = rows.get(i)
        if r is None:
            problems.append(f"seed {seed}: op {i} ({type(net.ops[i]).__name__}) has no row")
            continue
        got, jump = extents(r), jumps(r)
        bad_jump = jump is None or any(t is not None and t != j for t, j in zip(truth.jumps, jump))
        if got != truth.extents or bad_jump:
            problems.append(f"seed {seed} {shape}: row {r.name} ({r.kind}) shows {r.rf_text} jump {r.jump_text} "
                            f"({r.note}); oracle {truth.extents} jump {truth.jumps}")
        if stats is not None:
            stats["rows"] = stats.get("rows", 0) + 1
            stats["ranges"] = stats.get("ranges", 0) + (truth.extents[0][0] != truth.extents[0][1]
                                                        or truth.extents[1][0] != truth.extents[1][1])
            stats["fractional jumps"] = stats.get("fractional jumps", 0) + any(
                j is not None and j.denominator != 1 for j in truth.jumps)
            stats["clipped by a global reduction"] = stats.get("clipped by a global reduction", 0) + truth.clipped
            kind = type(net.ops[i]).__name__
            stats.setdefault("kinds", {})[kind] = stats.setdefault("kinds", {}).get(kind, 0) + 1
    return problems
