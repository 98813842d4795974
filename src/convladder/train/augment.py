"""Batched augmentation on the device in plain torch: one affine warp per batch, plus random erasing.

All random numbers come from the caller's generator, so a run is reproducible and resumable.
Works on float images in [0, 1] before normalisation, so padding and erasing fill with black (0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    rotate: float = 7.0  # max degrees either way
    translate: float = 2.0  # max pixels either way
    scale: float = 0.1  # scale factor in [1 - scale, 1 + scale]
    erase: float = 0.0  # probability of erasing one rectangle per image
    erase_area: tuple[float, float] = (0.02, 0.15)  # fraction of the image an erased rectangle covers

    @property
    def warps(self) -> bool:
        return bool(self.rotate or self.translate or self.scale)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_affine(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Rotate, translate and scale each image of (N,C,H,W) by its own random amount (bilinear, zero padding)."""
    n, _, h, w = x.shape
    dev = x.device
    angle = _uniform(n, -params.rotate, params.rotate, generator, dev) * (math.pi / 180)
    scale = _uniform(n, 1 - params.scale, 1 + params.scale, generator, dev)
    # affine_grid works in [-1, 1] coordinates: t pixels = 2t/size.
    tx = _uniform(n, -params.translate, params.translate, generator, dev) * (2 / w)
    ty = _uniform(n, -params.translate, params.translate, generator, dev) * (2 / h)
    # The grid maps output to input coordinates, so the inverse scale makes digits grow for scale > 1.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_erase(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Set one random rectangle per image to 0 with probability `params.erase` (masks, no Python loop)."""
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, *params.erase_area, generator, dev) * (h * w)
    aspect = torch.exp(_uniform(n, math.log(0.5), math.log(2.0), generator, dev))
    eh = (area * aspect).sqrt().clamp(1, h)
    ew = (area / aspect).sqrt().clamp(1, w)
    y0 = torch.rand(n, generator=generator, device=dev) * (h - eh)
    x0 = torch.rand(n, generator=generator, device=dev) * (w - ew)
    apply = torch.rand(n, generator=generator, device=dev) < params.erase
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
              & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1)) & apply.view(n, 1, 1))
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def augment(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Apply the configured augmentations to float images (N,C,H,W) in [0, 1]; shape and dtype are kept."""
    if params.warps:
        x = random_affine(x, params, generator)
    if params.erase > 0:
        x = random_erase(x, params, generator)
    return x
