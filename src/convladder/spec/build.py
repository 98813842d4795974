"""Build a `torch.nn.Module` from a network spec.

Before anything is allocated, `check_size` (spec/size.py, torch-free) works out every layer's output shape and
parameter count from the spec alone and refuses a network that cannot be built at its input size, or whose parameters or activations
exceed the limits ($CONVLADDER_MAX_PARAMS, $CONVLADDER_MAX_ACTIVATIONS, $CONVLADDER_MAX_LAYERS; or the keywords
of `build_module`). See docs/spec.md, "Size limits".
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from convladder.errors import UserError
from convladder.spec import kinds
from convladder.spec.layers import OUTPUT_ACTIVATIONS, POOLS, Layer, NetworkSpec
# shapes and sizes from the spec alone, torch-free (spec/size.py); importable from here as they always were
from convladder.spec.size import PER_APPLICATION, check_size, estimate_size, layer_shape, output_shape  # noqa: F401


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
    the reference network. Here each 64-bit draw gives four 16-bit uniforms (the keep probability is rounded
    to 1/65536), and the mask is made in float arithmetic: torch's CPU kernels on bool tensors (`>=`,
    `where`) are not vectorised and cost 4-8x a float multiply. Other devices use torch's own dropout.
    It draws from torch's default CPU generator, like `nn.Dropout`, so seeding and resume still apply, or from
    `generator` when one is set (data-parallel replicas stepping on threads each draw from their own).
    """

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or torch.jit.is_tracing():
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None, generator=self.generator)
        # keep where uniform16 >= threshold, i.e. where the integers minus (threshold - 1), clamped to [0, 1], are
        # exactly 1 (0 below it); float32 holds every 16-bit integer exactly (bf16/fp16 would not), and
        # empty_like keeps x's memory layout, so the multiply runs on two tensors of one layout
        mask = torch.empty_like(x, dtype=torch.float32).copy_(bits.view(torch.int16)[:n].view(x.shape))
        threshold = -32768 + round(self.p * 65536)
        mask.sub_(threshold - 1).clamp_(0.0, 1.0).mul_(1.0 / (1.0 - self.p))
        return x * mask.to(x.dtype)


class _MaxPoolCPU(torch.autograd.Function):
    """2-D max pooling whose forward runs channels-last: torch's NCHW CPU kernel is 3-4x slower there.

    The indices (positions within each H x W plane) do not depend on the layout, so the backward is torch's own
    NCHW kernel, and values and gradients equal `F.max_pool2d`'s exactly (both keep the first maximum).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:  # type: ignore[override]
        y, indices = nn.functional.max_pool2d(x.contiguous(memory_format=torch.channels_last), pool.kernel_size,
                                              pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode,
                                              return_indices=True)
        ctx.save_for_backward(x, indices.contiguous())
        ctx.pool = pool
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, indices = ctx.saved_tensors
        pool = ctx.pool
        pair = nn.modules.utils._pair
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, pair(pool.kernel_size), pair(pool.stride), pair(pool.padding),
            pair(pool.dilation), bool(pool.ceil_mode), indices)
        return grad_x, None


class MaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` with a faster training path on the CPU (same values and gradients, see `_MaxPoolCPU`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or not x.requires_grad or not x.is_contiguous()
                or self.return_indices or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return super().forward(x)
        return _MaxPoolCPU.apply(x, self)


class SharedBlock(nn.Module):
    """A spec block `name[...]*N`: its layers built once and applied N times in a row, one BN per application.

    Children `0`, `1`, ... are the layers of the first application (as in a plain block's Sequential); a BN of a
    later application `a` is child `<index>_<a>` (`2_3`: layer 2's BN in the third application). Iterating gives
    the modules in the order they run (a shared one once per application), so whatever walks a SpecNet's blocks
    as a flat list of calls (`run_without_output_layer`, BN folding for export) applies the block N times.
    """

    def __init__(self, first: list[nn.Module], later: dict[str, nn.Module], repeat: int):
        super().__init__()
        for index, module in enumerate(first):
            self.add_module(str(index), module)
        for name, module in later.items():
            self.add_module(name, module)
        self.repeat = repeat
        self.order = [f"{i}_{a}" if f"{i}_{a}" in later else str(i)
                      for a in range(1, repeat + 1) for i in range(len(first))]

    def __iter__(self):
        return (self._modules[name] for name in self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = module(x)
        return x

    def application(self, child: str, call: int) -> int:
        """Which application (1, 2, ...) the `call`-th call of child `child` belongs to (the table's block#N)."""
        return int(child.rpartition("_")[2]) if "_" in child else call

    def extra_repr(self) -> str:
        return f"applied {self.repeat} times"


class SpecNet(nn.Sequential):
    """A network built from a spec: a Sequential of named blocks.

    `forward` honours the spec (probabilities when it ends in softmax);
    `logits` skips a trailing softmax/log-softmax so training can use
    `F.cross_entropy`, which is the numerically stable way to do the same.
    """

    def __init__(self, blocks: dict[str, nn.Module], spec: NetworkSpec):
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


def build_layer(layer: Layer, shape: tuple[int, ...], index: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Build one layer for an input of `shape` ((C,H,W) or (F,)); return it and its output shape.

    The shape is checked first, so a layer that does not fit its input is refused before its weights exist.
    """
    out = layer_shape(layer, shape, index)
    kind = layer.kind
    if kind == "conv":
        module: nn.Module = nn.Conv2d(
            shape[0], layer.out_channels, layer.k, stride=layer.s, padding=layer.pad,
            dilation=layer.d, groups=layer.groups or 1, bias=layer.has_bias,
        )
    elif kind in POOLS:
        cls = MaxPool2d if kind == "maxpool" else nn.AvgPool2d
        module = cls(layer.k, stride=layer.s, padding=layer.pad, ceil_mode=bool(layer.ceil_mode))
    elif kind == "bn":
        module = nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
    elif kind == "dropout":
        module = Dropout(layer.p)
    elif kind == "gap":
        module = nn.AdaptiveAvgPool2d(1)
    elif kind == "flatten":
        module = nn.Flatten()
    elif kind == "fc":
        module = nn.Linear(shape[0], layer.out_features, bias=layer.has_bias)
    elif kind in OUTPUT_ACTIVATIONS:
        module = ClassProbs(log=kind == "logsoftmax")
    else:
        module = _activation(layer)
    return module, out


def _activation(layer: Layer) -> nn.Module:
    """The kind's torch class (spec/kinds.py), given the layer's arguments in order, each defaulted by the kind."""
    kind = kinds.KINDS[layer.kind]
    values = [getattr(layer, name) for name in kind.args]
    return getattr(nn, kind.torch[0])(*[kind.defaults[i] if v is None else v for i, v in enumerate(values)])


def build_module(spec: NetworkSpec, in_channels: int | None = None, *, max_params: int | None = None,
                 max_activations: int | None = None) -> SpecNet:
    """Build the network; raise UserError naming the layer if it cannot be built at the spec's input size.

    `check_size` runs first, so an oversized network is refused before any weight is allocated (see there
    for `max_params` / `max_activations`; the defaults come from the environment).
    """
    names = [block.name or f"block{number + 1}" for number, block in enumerate(spec.blocks)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserError(f"block name {name!r} is used twice: give each block its own name")
        seen.add(name)
    check_size(spec, in_channels=in_channels, max_params=max_params, max_activations=max_activations)
    c, h, w = spec.input_shape
    shape: tuple[int, ...] = (in_channels or c, h, w)
    blocks: dict[str, nn.Module] = {}
    index = 0
    for name, block in zip(names, spec.blocks):
        modules, later = [], {}
        for application in range(1, block.repeat + 1):
            for number, layer in enumerate(block.layers):
                if application == 1 or layer.kind in PER_APPLICATION:
                    module, shape = build_layer(layer, shape, index)
                    if application == 1:
                        modules.append(module)
                    else:
                        later[f"{number}_{application}"] = module
                else:  # built once: later applications reuse it
                    shape = layer_shape(layer, shape, index)
                index += 1
        blocks[name] = SharedBlock(modules, later, block.repeat) if block.repeat > 1 else nn.Sequential(*modules)
    return SpecNet(blocks, spec)

