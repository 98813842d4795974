"""N copies of one network trained as one module: grouped convolutions, one image stream per copy.

`widen(models)` packs N built networks of the same spec (each initialised with its own seed) into a
`BatchedNet`: every conv gets N x the channels and N x the groups, so copy i's channels only ever see copy
i's channels; BatchNorm normalises N x C channels (per channel, so per copy); fully connected layers become
block-diagonal (`GroupedLinear`); activations, pooling, GAP, flatten and dropout are per element or per
channel anyway. The input is (B, N*C, H, W): copy i's own batch sits on channel group i. `logits` is
(B, N, classes). With the loss a sum of per-copy means and an element-wise optimiser (SGD, Adam, Adadelta),
each copy trains exactly as it would alone, up to float rounding (grouped kernels sum in another order).
Dropout draws one mask over the whole tensor: each copy gets its own, independent mask, but not the mask
the same seed draws when trained alone.

Every parameter, buffer and optimiser-state tensor of the batched model is the copies' tensors
concatenated along dim 0, so `unpack_state(..., i)` gives copy i's ordinary state_dict back.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from convladder.spec.build import ClassProbs, SpecNet, run_without_output_layer

_STATELESS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.MaxPool2d,
              nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, ClassProbs)


class GroupedLinear(nn.Module):
    """N independent Linear(in, out) layers on (B, N*in) -> (B, N*out); weight (N*out, in), bias (N*out)."""

    def __init__(self, copies: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.copies, self.in_features, self.out_features = copies, in_features, out_features
        self.weight = nn.Parameter(torch.empty(copies * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(copies * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = self.copies, x.shape[0]
        w = self.weight.view(n, self.out_features, self.in_features)
        y = torch.einsum("bni,noi->bno", x.reshape(b, n, self.in_features), w).reshape(b, n * self.out_features)
        return y + self.bias if self.bias is not None else y


class BatchedNet(nn.Sequential):
    """N copies of a SpecNet as one module (same block names, so state_dict keys match the copies')."""

    def __init__(self, blocks: dict[str, nn.Sequential], copies: int):
        super().__init__(OrderedDict(blocks))
        self.copies = copies

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N*C, H, W) -> (B, N, classes), the trailing softmax skipped as in `SpecNet.logits`."""
        x = run_without_output_layer(self, x)
        return x.reshape(x.shape[0], self.copies, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def why_not_batchable(model: nn.Module) -> str | None:
    """None if `model` can be widened, else the reason (a SpecNet of convs, BN, pools, activations, fc, dropout)."""
    if not isinstance(model, SpecNet):
        return f"the network is a {type(model).__name__}, not a network built from a spec"
    for module in model.modules():
        if isinstance(module, (SpecNet, nn.Sequential)):
            continue
        if isinstance(module, nn.PReLU):
            return "prelu shares its slope across channels"
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return f"conv padding_mode {module.padding_mode}"
            continue
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, *_STATELESS)):
            continue
        return f"layer {type(module).__name__} has no batched form"
    return None


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors], 0)


@torch.no_grad()
def _widen_module(ms: list[nn.Module]) -> nn.Module:
    first, n = ms[0], len(ms)
    if isinstance(first, nn.Conv2d):
        out = nn.Conv2d(n * first.in_channels, n * first.out_channels, first.kernel_size, stride=first.stride,
                        padding=first.padding, dilation=first.dilation, groups=n * first.groups,
                        bias=first.bias is not None, device=first.weight.device, dtype=first.weight.dtype)
    elif isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        out = type(first)(n * first.num_features, eps=first.eps, momentum=first.momentum, affine=first.affine,
                          track_running_stats=first.track_running_stats, device=first.running_mean.device)
    elif isinstance(first, nn.Linear):
        out = GroupedLinear(n, first.in_features, first.out_features, first.bias is not None).to(first.weight.device)
    else:
        return copy.deepcopy(first)  # stateless: one module serves every copy
    for name, tensor in first.state_dict().items():
        target = out.get_parameter(name) if name in dict(out.named_parameters()) else out.get_buffer(name)
        if tensor.dim() == 0:  # num_batches_tracked
            target.copy_(tensor)
        else:
            target.copy_(_cat([m.state_dict()[name] for m in ms]))
    return out


def widen(models: list[nn.Module]) -> BatchedNet:
    """Pack N networks built from the same spec into one BatchedNet (their weights copied in, in order)."""
    reason = why_not_batchable(models[0])
    if reason:
        raise ValueError(f"cannot batch: {reason}")
    blocks: dict[str, nn.Sequential] = {}
    for name, block in models[0].named_children():
        parts = [dict(m.named_children())[name] for m in models]
        blocks[name] = nn.Sequential(*[_widen_module([p[j] for p in parts]) for j in range(len(block))])
    net = BatchedNet(blocks, len(models))
    return net.train(models[0].training)


def unpack_state(state: dict[str, torch.Tensor], index: int, copies: int) -> dict[str, torch.Tensor]:
    """Copy `index`'s ordinary state_dict (the single network's keys and shapes) from a BatchedNet's."""
    return {k: (v.detach().clone() if v.dim() == 0 else v.detach().chunk(copies)[index].clone()) for k, v in state.items()}


def unpack_optimizer_state(state: dict, index: int, copies: int) -> dict:
    """Copy `index`'s optimiser state_dict from the batched optimiser's (per-parameter tensors split on dim 0)."""
    def part(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.detach().chunk(copies)[index].clone()
        return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)

    return {"state": {k: {name: part(v) for name, v in s.items()} for k, s in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}
