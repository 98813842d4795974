"""A network's shapes and size from its spec alone: every layer's output shape and parameter count, and the
limits a network must fit before anything is built ($CONVLADDER_MAX_PARAMS, $CONVLADDER_MAX_ACTIVATIONS,
$CONVLADDER_MAX_LAYERS; docs/spec.md, "Size limits").

No torch here: checking a ladder, resolving a name and refusing an oversized network stay instant.
`spec/build.py` builds the modules and re-exports these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convladder.errors import UserError
from convladder.spec import kinds
from convladder.spec.layers import OUTPUT_ACTIVATIONS, POOLS, Layer, NetworkSpec, env_limit, max_layers, too_many_layers
from convladder.spec.notation import format_layer


def conv_out(n: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    """Output length of a conv/pool along one axis (torch's formula, ceil mode included)."""
    eff = d * (k - 1) + 1
    span = n + 2 * p - eff
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p:  # torch: the last window must start inside the input or left padding
        out -= 1
    return out


def _fail(index: int, layer: Layer, message: str) -> UserError:
    return UserError(f"layer {index + 1} ({format_layer(layer)}): {message}")


def layer_shape(layer: Layer, shape: tuple[int, ...], index: int) -> tuple[int, ...]:
    """Check one layer against its input `shape` ((C,H,W) or (F,)) and return its output shape; nothing is built."""
    kind = layer.kind
    spatial = len(shape) == 3
    if kind in ("conv", *POOLS, "gap") and not spatial:
        raise _fail(index, layer, f"needs a 2D feature map but gets a flat vector of {shape[0]}")
    if kind == "conv":
        c, h, w = shape
        groups = layer.groups or 1
        if c % groups or layer.out_channels % groups:
            raise _fail(index, layer, f"groups={groups} must divide in ({c}) and out ({layer.out_channels}) channels")
        out = (layer.out_channels, conv_out(h, layer.k, layer.s, layer.pad, layer.d),
               conv_out(w, layer.k, layer.s, layer.pad, layer.d))
    elif kind in POOLS:
        c, h, w = shape
        if layer.pad * 2 > layer.k:
            raise _fail(index, layer, "padding must be at most half the kernel size")
        ceil = bool(layer.ceil_mode)
        out = (c, conv_out(h, layer.k, layer.s, layer.pad, 1, ceil), conv_out(w, layer.k, layer.s, layer.pad, 1, ceil))
    elif kind == "gap":
        out = (shape[0], 1, 1)
    elif kind == "flatten":
        out = (math.prod(shape),)
    elif kind == "fc":
        if spatial:
            raise _fail(index, layer, f"gets a {shape[1]}x{shape[2]}x{shape[0]} feature map: put flatten (or gap and flatten) before it")
        out = (layer.out_features,)
    elif kind in OUTPUT_ACTIVATIONS:
        if spatial and shape[1:] != (1, 1):
            raise _fail(index, layer, f"the output is still {shape[1]}x{shape[2]} per channel: reduce it to 1x1 first (gap, or a kernel the size of the map)")
        out = (shape[0],)
    else:  # bn, dropout, activations
        out = shape
    if spatial and len(out) == 3 and min(out[1:]) < 1:
        raise _fail(index, layer, f"input {shape[1]}x{shape[2]} is too small for it (output would be {out[1]}x{out[2]}); use a larger input, padding, or fewer reductions")
    return out


def layer_params(layer: Layer, shape: tuple[int, ...]) -> int:
    """Parameters of one layer for an input of `shape`, as torch counts them (BN: 2C; buffers left out)."""
    if layer.kind == "conv":
        fan_in = shape[0] // (layer.groups or 1) * layer.k * layer.k
        return layer.out_channels * fan_in + (layer.out_channels if layer.has_bias else 0)
    if layer.kind == "fc":
        return shape[0] * layer.out_features + (layer.out_features if layer.has_bias else 0)
    if layer.kind == "bn":
        return 2 * shape[0]
    return kinds.KINDS[layer.kind].params  # activations: a count the kind declares (prelu: 1 slope)


PARAMS_ENV, ACTIVATIONS_ENV = "CONVLADDER_MAX_PARAMS", "CONVLADDER_MAX_ACTIVATIONS"
DEFAULT_MAX_PARAMS = 200_000_000  # VGG16 (138 M) fits; 0.8 GB of float32 weights, ~3 GB while training with Adam
DEFAULT_MAX_ACTIVATIONS = 1_000_000_000  # output values of all layers for one batch: 4 GB of float32


@dataclass(frozen=True)
class SizeEstimate:
    """What a spec costs, worked out from the spec alone: per layer, its output shape and parameters."""

    shapes: tuple[tuple[int, ...], ...]
    params_per_layer: tuple[int, ...]

    @property
    def params(self) -> int:
        return sum(self.params_per_layer)

    @property
    def activations(self) -> int:
        """Values in every layer's output for one image (what a forward pass keeps for backward, roughly)."""
        return sum(math.prod(shape) for shape in self.shapes)


def estimate_size(spec: NetworkSpec, in_channels: int | None = None) -> SizeEstimate:
    """Shapes and parameters of every layer as it runs (a shared block's once per application: its weights on
    the first, only its BN's on later ones); UserError naming the layer if the spec does not fit its input."""
    n = len(spec.applied_layers)
    if n > max_layers():
        raise UserError(too_many_layers(n))
    c, h, w = spec.input_shape
    shape: tuple[int, ...] = (in_channels or c, h, w)
    shapes, params = [], []
    for block in spec.blocks:
        for application in range(block.repeat):
            start = shape
            for layer in block.layers:
                own = application == 0 or layer.kind in PER_APPLICATION
                params.append(layer_params(layer, shape) if own else 0)
                shape = layer_shape(layer, shape, len(shapes))
                shapes.append(shape)
            if block.repeat > 1 and application == 0:
                check_shared(block.name or "", block.repeat, start, shape)
    return SizeEstimate(tuple(shapes), tuple(params))


# Layers of a shared block built once per application (the rest are built once and reused): BN's running
# statistics describe one input distribution, and each application's input has its own (docs/spec.md).
PER_APPLICATION = frozenset({"bn"})


def _channels(shape: tuple[int, ...]) -> str:
    return f"{shape[0]:,} channel{'s' * (shape[0] != 1)}" if len(shape) == 3 else f"a flat vector of {shape[0]:,}"


def check_shared(name: str, repeat: int, before: tuple[int, ...], after: tuple[int, ...]) -> None:
    """A shared block feeds its output back into itself: it must give back as many channels as it takes."""
    if len(before) != len(after) or before[0] != after[0]:
        unit = "channels" if len(before) == 3 else "features"
        raise UserError(f"block {name!r} is applied {repeat} times ({name}[...]*{repeat}) but turns "
                        f"{_channels(before)} into {_channels(after)} — a shared block must give back what it takes: "
                        f"end it with a layer of {before[0]:,} {unit}, or drop *{repeat}")


def _gb(values: int) -> str:
    return f"{values * 4 / 1e9:,.1f} GB as float32"


def check_size(spec: NetworkSpec, *, in_channels: int | None = None, max_params: int | None = None,
               max_activations: int | None = None, batch_size: int = 1) -> SizeEstimate:
    """Refuse, before anything is allocated, a spec that does not fit its input or exceeds the size limits.

    Limits: `max_params` (default $CONVLADDER_MAX_PARAMS or 200,000,000) parameters, and `max_activations`
    (default $CONVLADDER_MAX_ACTIVATIONS or 1,000,000,000) output values of all layers for `batch_size` images
    (a trainer passes its batch size; building alone checks one image).
    """
    size = estimate_size(spec, in_channels)
    layers = spec.applied_layers
    limit = max_params or env_limit(PARAMS_ENV, DEFAULT_MAX_PARAMS)
    if size.params > limit:
        i = max(range(len(layers)), key=lambda j: size.params_per_layer[j])
        raise UserError(f"the network has {size.params:,} parameters ({_gb(size.params)}), over the limit of "
                        f"{limit:,}; layer {i + 1} ({format_layer(layers[i])}) alone has "
                        f"{size.params_per_layer[i]:,} — use fewer channels, or raise the limit with "
                        f"{PARAMS_ENV}=<n> (Python: max_params=<n>)")
    limit = max_activations or env_limit(ACTIVATIONS_ENV, DEFAULT_MAX_ACTIVATIONS)
    values = size.activations * batch_size
    if values > limit:
        i = max(range(len(layers)), key=lambda j: math.prod(size.shapes[j]))
        out = size.shapes[i]
        where = f"{out[1]}x{out[2]}x{out[0]}" if len(out) == 3 else f"{out[0]}"
        images = "one image" if batch_size == 1 else f"a batch of {batch_size:,} images (batch_size)"
        raise UserError(f"the layer outputs of {images} hold {values:,} values ({_gb(values)}), over the limit of "
                        f"{limit:,}; layer {i + 1} ({format_layer(layers[i])}) outputs {where} per image — "
                        + ("lower batch_size, " if batch_size > 1 else "")
                        + f"use fewer channels, a smaller input or an earlier reduction, or raise the limit with "
                        f"{ACTIVATIONS_ENV}=<n> (Python: max_activations=<n>)")
    return size



def output_shape(spec: NetworkSpec) -> tuple[int, ...]:
    """Shape of one sample's output, from the spec alone (no module, no tensor)."""
    shapes = estimate_size(spec).shapes
    return shapes[-1] if shapes else tuple(spec.input_shape)
