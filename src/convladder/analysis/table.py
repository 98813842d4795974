"""The network table: per layer, sizes, receptive field, jump, parameters and MACs.

Works on a spec or on any single-path `torch.nn.Module` (e.g. a user's own
`nn.Sequential`): the module is run once on a zero input with forward hooks on
its leaf modules, so the table follows the order layers are actually called.
Functional calls inside `forward` (F.relu, x.view) are not modules and do not
appear; they change neither parameters nor receptive field.

Receptive field by the standard recurrence (Araujo, Norris & Sim, Distill 2019):
    k' = d(k-1)+1,  n_out = floor((n_in + 2p - k')/s) + 1 (ceil mode respected),
    j_out = j_in * s,  r_out = r_in + (k'-1) * j_in.
BN, activations, dropout and 1x1 convolutions leave it unchanged. Global pooling
and a fully connected layer cover the union of every position's field:
r_in + (n_in-1) * j_in, which is at least the input size for a net that reads all of it.

Parameter counting follows PyTorch: BN has 2C trainable parameters (gamma, beta)
and 2C buffers (running mean, variance) — Keras shows the same BN as 4C params.
MACs count multiply-accumulates of convolutions and fully connected layers for
one image (the work `FlopCounterMode` reports as 2 FLOPs each); BN, activations
and pooling are left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from convladder.errors import UserError
from convladder.spec.build import ClassProbs, build_module
from convladder.spec.layers import NetworkSpec

ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU,
                    nn.ReLU6, nn.Hardswish, nn.Mish, nn.Softplus)
NEUTRAL_TYPES = ACTIVATION_TYPES + (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity,
                                    nn.GroupNorm, nn.LayerNorm, nn.Softmax, nn.LogSoftmax, ClassProbs)


@dataclass
class LayerRow:
    index: int
    name: str  # qualified module name, e.g. "conv1.0"
    block: str  # first part of the name; the spec's block
    kind: str  # conv3x3, maxpool2x2, bn, relu, gap, flatten, fc, softmax, ...
    op: str  # the notes' operation text, e.g. "(3x3x1)x10"
    input: list[int]
    output: list[int]
    rf: int | None
    jump: int | None
    params: int  # all parameters of this layer
    trainable_params: int
    buffers: int  # non-trainable state counted by Keras as params (BN running mean/var)
    macs: int
    bias: bool = False  # conv/fc with a bias term
    share: float = 0.0  # fraction of the network's parameters


@dataclass
class NetworkTable:
    input: list[int]
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    total_buffers: int
    total_macs: int
    rf_out: int | None
    spec: NetworkSpec | None = field(default=None, repr=False)
    block_roles: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "layers": [asdict(row) for row in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_buffers": self.total_buffers,
            "total_macs": self.total_macs,
            "rf_out": self.rf_out,
            "block_roles": self.block_roles,
        }

    @property
    def output(self) -> list[int]:
        return self.layers[-1].output if self.layers else self.input

    def reduction_row(self) -> LayerRow | None:
        """The layer whose field the output really has: where the map becomes one value per channel.

        A convolution that reduces the map to 1x1 (the lesson's 7x7 kernel) sees what its RF says;
        a parameter-free global reduction (gap, flatten + fc) only averages or mixes features that
        each saw the RF of the layer before it.
        """
        previous = None
        for row in self.layers:
            if len(row.output) == 1 or row.output[1] * row.output[2] == 1:
                return row if row.kind.startswith("conv") else previous
            previous = row
        return previous


def _pair(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def describe_module(module: nn.Module, in_shape: list[int]) -> tuple[str, str]:
    """(kind, op) for a leaf module, in the notes' style."""
    if isinstance(module, nn.Conv2d):
        k = _pair(module.kernel_size)
        cin = module.in_channels // module.groups
        return f"conv{k}x{k}", f"({k}x{k}x{cin})x{module.out_channels}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(module.kernel_size)
        kind = "maxpool" if isinstance(module, nn.MaxPool2d) else "avgpool"
        return f"{kind}{k}x{k}", f"{kind} {k}x{k}/{_pair(module.stride or k)}"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "gap" if isinstance(module, nn.AdaptiveAvgPool2d) else "gmp", "global pool"
    if isinstance(module, nn.Linear):
        return "fc", f"{module.in_features}x{module.out_features}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "bn", f"bn {module.num_features}"
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return "dropout", f"dropout {module.p:g}"
    if isinstance(module, nn.Flatten):
        return "flatten", "flatten"
    if isinstance(module, ClassProbs):
        return ("logsoftmax" if module.log else "softmax"), ("log-softmax" if module.log else "softmax")
    if isinstance(module, nn.LogSoftmax):
        return "logsoftmax", "log-softmax"
    name = type(module).__name__.lower()
    return name, name


def _trace(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device) -> list[tuple[str, nn.Module, list[int], list[int]]]:
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[str, nn.Module, list[int], list[int]]] = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        calls.append((names[module], module, list(inputs[0].shape[1:]), list(output.shape[1:])))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"the network cannot run on a {input_shape[1]}x{input_shape[2]}x{input_shape[0]} input: {first}") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls


def summarize(model_or_spec: nn.Module | NetworkSpec, input_shape: tuple[int, int, int] | None = None) -> NetworkTable:
    """Build the network table. `input_shape` is (C, H, W); a spec brings its own by default."""
    spec = model_or_spec if isinstance(model_or_spec, NetworkSpec) else getattr(model_or_spec, "spec", None)
    if isinstance(model_or_spec, NetworkSpec):
        if input_shape:
            spec = spec.with_input(tuple(input_shape))
        input_shape = spec.input_shape
        # The meta device builds even VGG-sized networks without allocating their weights.
        with torch.device("meta"):
            model = build_module(spec)
        device = torch.device("meta")
    else:
        model = model_or_spec
        if input_shape is None:
            raise UserError("summarize needs input_shape=(C, H, W) for a plain nn.Module")
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    calls = _trace(model, tuple(input_shape), device)
    rows = _rows(calls, list(input_shape))
    total = sum(p.numel() for p in model.parameters())
    for row in rows:
        row.share = row.params / total if total else 0.0
    roles = {}
    if spec is not None:
        for number, block in enumerate(spec.blocks):
            roles[block.name or f"block{number + 1}"] = block.resolved_role
    return NetworkTable(
        input=list(input_shape),
        layers=rows,
        total_params=total,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_buffers=sum(row.buffers for row in rows),
        total_macs=sum(row.macs for row in rows),
        rf_out=rows[-1].rf if rows else 1,
        spec=spec,
        block_roles=roles,
    )


def _rows(calls: list[tuple[str, nn.Module, list[int], list[int]]], input_shape: list[int]) -> list[LayerRow]:
    r: int | None = 1
    j: int | None = 1
    n_last = input_shape[1]  # spatial size of the last 2D map, for global layers
    rows = []
    for index, (name, module, ishape, oshape) in enumerate(calls):
        kind, op = describe_module(module, ishape)
        macs = 0
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and r is not None:
            k, s = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
            d = _pair(getattr(module, "dilation", 1))
            r, j = r + (d * (k - 1)) * j, j * s
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and r is not None:
            r = r + (ishape[1] - 1) * j  # the union of every position's field
        elif isinstance(module, nn.Linear) and r is not None and n_last > 1:
            r = r + (n_last - 1) * j  # a dense layer over a flattened map reads every position
            n_last = 1
        elif not isinstance(module, NEUTRAL_TYPES + (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            r = j = None  # a layer whose effect on the field we do not know
        if len(oshape) == 3:
            n_last = oshape[1]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = oshape[0] * oshape[1] * oshape[2] * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs = module.in_features * module.out_features
        params = sum(p.numel() for p in module.parameters(recurse=False))
        trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        buffers = sum(b.numel() for bname, b in module.named_buffers(recurse=False) if bname != "num_batches_tracked")
        bias = isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None
        rows.append(LayerRow(index, name, name.split(".")[0], kind, op, ishape, oshape, r, j, params, trainable,
                             buffers, macs, bias))
    return rows
