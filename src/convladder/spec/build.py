"""Build a `torch.nn.Module` from a network spec."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from convladder.errors import UserError
from convladder.spec.layers import OUTPUT_ACTIVATIONS, POOLS, Layer, NetworkSpec
from convladder.spec.notation import format_layer


class ClassProbs(nn.Module):
    """The output activation: flatten (N,C,1,1) to (N,C), then softmax or log-softmax over classes."""

    def __init__(self, log: bool):
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.log_softmax(x, dim=1) if self.log else torch.softmax(x, dim=1)

    def extra_repr(self) -> str:
        return "log_softmax" if self.log else "softmax"


class Dropout(nn.Dropout):
    """Element-wise dropout, as `nn.Dropout`, with a faster mask on the CPU.

    On the CPU, `bernoulli_` draws one random number per element and took ~30 % of a training step of
    the reference network. Here each 64-bit draw gives four 16-bit uniforms, so the mask costs ~1/6
    as much; the keep probability is rounded to 1/65536. Other devices use torch's own dropout.
    It draws from torch's default CPU generator, like `nn.Dropout`, so seeding and resume still apply.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or torch.jit.is_tracing():
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        uniform16 = bits.view(torch.int16)[:n].view(x.shape)
        keep = uniform16 >= (-32768 + round(self.p * 65536))
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)


class SpecNet(nn.Sequential):
    """A network built from a spec: a Sequential of named blocks.

    `forward` honours the spec (probabilities when it ends in softmax);
    `logits` skips a trailing softmax/log-softmax so training can use
    `F.cross_entropy`, which is the numerically stable way to do the same.
    """

    def __init__(self, blocks: dict[str, nn.Sequential], spec: NetworkSpec):
        super().__init__(OrderedDict(blocks))
        self.spec = spec

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return run_without_output_layer(self, x).flatten(1)


def run_without_output_layer(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential of blocks, skipping a trailing softmax/log-softmax (training wants raw logits)."""
    modules = [m for block in blocks for m in block]
    if modules and isinstance(modules[-1], ClassProbs):
        modules = modules[:-1]
    for module in modules:
        x = module(x)
    return x


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


def build_layer(layer: Layer, shape: tuple[int, ...], index: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Build one layer for an input of `shape` ((C,H,W) or (F,)); return it and its output shape."""
    kind = layer.kind
    spatial = len(shape) == 3
    if kind in ("conv", *POOLS, "gap") and not spatial:
        raise _fail(index, layer, f"needs a 2D feature map but gets a flat vector of {shape[0]}")
    if kind == "conv":
        c, h, w = shape
        groups = layer.groups or 1
        if c % groups or layer.out_channels % groups:
            raise _fail(index, layer, f"groups={groups} must divide in ({c}) and out ({layer.out_channels}) channels")
        module = nn.Conv2d(
            c, layer.out_channels, layer.k, stride=layer.s, padding=layer.pad,
            dilation=layer.d, groups=groups, bias=layer.has_bias,
        )
        out = (layer.out_channels, conv_out(h, layer.k, layer.s, layer.pad, layer.d),
               conv_out(w, layer.k, layer.s, layer.pad, layer.d))
    elif kind in POOLS:
        c, h, w = shape
        if layer.pad * 2 > layer.k:
            raise _fail(index, layer, "padding must be at most half the kernel size")
        ceil = bool(layer.ceil_mode)
        cls = nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d
        module = cls(layer.k, stride=layer.s, padding=layer.pad, ceil_mode=ceil)
        out = (c, conv_out(h, layer.k, layer.s, layer.pad, 1, ceil), conv_out(w, layer.k, layer.s, layer.pad, 1, ceil))
    elif kind == "bn":
        module = nn.BatchNorm2d(shape[0]) if spatial else nn.BatchNorm1d(shape[0])
        out = shape
    elif kind == "dropout":
        module, out = Dropout(layer.p), shape
    elif kind == "gap":
        module, out = nn.AdaptiveAvgPool2d(1), (shape[0], 1, 1)
    elif kind == "flatten":
        module, out = nn.Flatten(), (math.prod(shape),)
    elif kind == "fc":
        if spatial:
            raise _fail(index, layer, f"gets a {shape[1]}x{shape[2]}x{shape[0]} feature map: put flatten (or gap and flatten) before it")
        module, out = nn.Linear(shape[0], layer.out_features, bias=layer.has_bias), (layer.out_features,)
    elif kind in OUTPUT_ACTIVATIONS:
        if spatial and shape[1:] != (1, 1):
            raise _fail(index, layer, f"the output is still {shape[1]}x{shape[2]} per channel: reduce it to 1x1 first (gap, or a kernel the size of the map)")
        module, out = ClassProbs(log=kind == "logsoftmax"), (shape[0],)
    else:
        module, out = _activation(layer), shape
    if spatial and len(out) == 3 and min(out[1:]) < 1:
        raise _fail(index, layer, f"input {shape[1]}x{shape[2]} is too small for it (output would be {out[1]}x{out[2]}); use a larger input, padding, or fewer reductions")
    return module, out


def _activation(layer: Layer) -> nn.Module:
    kind = layer.kind
    if kind == "leakyrelu":
        return nn.LeakyReLU(layer.negative_slope if layer.negative_slope is not None else 0.01)
    if kind == "elu":
        return nn.ELU(layer.alpha if layer.alpha is not None else 1.0)
    return {"relu": nn.ReLU, "prelu": nn.PReLU, "selu": nn.SELU, "tanh": nn.Tanh,
            "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "gelu": nn.GELU}[kind]()


def build_module(spec: NetworkSpec, in_channels: int | None = None) -> SpecNet:
    """Build the network; raise UserError naming the layer if it cannot be built at the spec's input size."""
    c, h, w = spec.input_shape
    shape: tuple[int, ...] = (in_channels or c, h, w)
    blocks: dict[str, nn.Sequential] = {}
    index = 0
    for number, block in enumerate(spec.blocks):
        modules = []
        for layer in block.layers:
            module, shape = build_layer(layer, shape, index)
            modules.append(module)
            index += 1
        name = block.name or f"block{number + 1}"
        if name in blocks:
            raise UserError(f"block name {name!r} is used twice: give each block its own name")
        blocks[name] = nn.Sequential(*modules)
    return SpecNet(blocks, spec)


def output_shape(spec: NetworkSpec) -> tuple[int, ...]:
    """Shape of one sample's output, without building tensors."""
    c, h, w = spec.input_shape
    shape: tuple[int, ...] = (c, h, w)
    for index, layer in enumerate(spec.layers):
        _, shape = build_layer(layer, shape, index)
    return shape
