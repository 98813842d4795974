"""Fold eval-mode BatchNorm into neighbouring convolutions for faster CPU inference.

BatchNorm at inference is a per-channel affine map y = s*x + t. Next to a convolution it can be
absorbed exactly, which removes a full pass over the activations (~17 % of tiny8k's CPU time):

* conv -> BN: scale the conv's output channels (always exact);
* BN -> conv (the notes' order is conv relu BN, so this is the common case): scale the conv's input
  channels and move the shift into its bias. Exact only when the conv has no padding (padded zeros
  are not shifted) and no groups; in between may sit ops that commute with the affine map:
  dropout (identity at inference), global average pooling, and max pooling when every s > 0.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d)


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    return scale.detach(), shift.detach()


def _with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
    return conv


def fold_batchnorm(modules: list[nn.Module]) -> nn.Sequential:
    """An eval-mode copy of a flat module list with every foldable BatchNorm2d absorbed (others kept)."""
    mods = [copy.deepcopy(m).eval() for m in modules if not isinstance(m, (nn.Dropout, nn.Identity))]
    keep = [True] * len(mods)
    with torch.no_grad():
        for i, bn in enumerate(mods):
            if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
                continue
            scale, shift = _affine(bn)
            if i > 0 and isinstance(mods[i - 1], nn.Conv2d) and keep[i - 1]:
                conv = _with_bias(mods[i - 1])
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias.copy_(conv.bias * scale + shift)
                keep[i] = False
                continue
            j = i + 1
            while j < len(mods) and (isinstance(mods[j], _PASS_THROUGH)
                                     or (isinstance(mods[j], nn.MaxPool2d) and bool((scale > 0).all()))):
                j += 1
            if j < len(mods) and isinstance(mods[j], nn.Conv2d):
                conv = mods[j]
                if conv.groups == 1 and all(p == 0 for p in conv.padding) and conv.padding_mode == "zeros":
                    conv = _with_bias(conv)
                    # W*(s*x + t) = (W*s)*x + sum(W*t): fold t into the bias before scaling W.
                    conv.bias.add_((conv.weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))
                    conv.weight.mul_(scale.view(1, -1, 1, 1))
                    keep[i] = False
    return nn.Sequential(*[m for m, k in zip(mods, keep) if k])


class _Logits(nn.Module):
    """Calls `net.logits` (an own class's raw scores, whatever its forward returns)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits(x)


def inference_logits(model: nn.Module) -> nn.Module:
    """A fused copy of a SpecNet that returns logits; other modules answer with their `logits` (if any), unfused."""
    from convladder.spec.build import ClassProbs, SpecNet

    if not isinstance(model, SpecNet):
        return _Logits(model) if callable(getattr(model, "logits", None)) else model
    flat = [m for block in model for m in block]
    if flat and isinstance(flat[-1], ClassProbs):
        flat = flat[:-1]
    return nn.Sequential(*fold_batchnorm(flat), nn.Flatten(1))
