"""Batched augmentation on the device in plain torch: one affine warp per batch, random erasing, and for natural
images (photos, CIFAR-10) a random crop of the zero-padded image and a horizontal flip.

All random numbers come from the caller's generator (or, for the training step, from a buffer drawn from it
once per epoch), so a run is reproducible and resumable.
Works on float images in [0, 1] before normalisation, so padding and erasing fill with black (0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    rotate: float = 7.0  # max degrees either way
    translate: float = 2.0  # max pixels either way
    scale: float = 0.1  # scale factor in [1 - scale, 1 + scale]
    erase: float = 0.0  # probability of erasing one rectangle per image
    erase_area: tuple[float, float] = (0.02, 0.15)  # fraction of the image an erased rectangle covers
    pad_crop: int = 0  # pixels of zero padding each side before a random crop back to the image's size (0 = off)
    flip: bool = False  # mirror half the images left-right (natural images; never digits: a flipped 2 is no 2)

    @property
    def warps(self) -> bool:
        return bool(self.rotate or self.translate or self.scale)

    @classmethod
    def from_config(cls, config: Any) -> AugmentParams | None:
        """The augmentation a TrainConfig asks for; None when it asks for none (augment off, or every amount 0)."""
        params = cls(config.rotate, config.translate, config.scale, config.erase,
                     pad_crop=config.pad_crop, flip=config.flip)
        return params if config.augment and noise_rows(params) else None


def noise_rows(params: AugmentParams) -> int:
    """Uniform [0, 1) numbers `augment_from` reads per image: 4 for the warp, 5 for erasing, 2 for the padded
    crop, 1 for the flip (in that order: a run without the last two draws exactly what it drew before them)."""
    return 4 * params.warps + 5 * (params.erase > 0) + 2 * (params.pad_crop > 0) + int(params.flip)


def draw_noise(params: AugmentParams, n: int, generator: torch.Generator, device: torch.device,
               leading: tuple[int, ...] = ()) -> torch.Tensor:
    """(*leading, noise_rows, n) uniforms from `generator`; a whole epoch's worth is drawn in one call."""
    return torch.rand(*leading, noise_rows(params), n, generator=generator, device=device)


def _span(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return u * (high - low) + low


def affine_from(x: torch.Tensor, params: AugmentParams, u: torch.Tensor) -> torch.Tensor:
    """Rotate, translate and scale each image of (N,C,H,W) by amounts read from u (4, N) uniforms (bilinear, zero padding)."""
    _, _, h, w = x.shape
    angle = _span(u[0], -params.rotate, params.rotate) * (math.pi / 180)
    scale = _span(u[1], 1 - params.scale, 1 + params.scale)
    # affine_grid works in [-1, 1] coordinates: t pixels = 2t/size.
    tx = _span(u[2], -params.translate, params.translate) * (2 / w)
    ty = _span(u[3], -params.translate, params.translate) * (2 / h)
    # The grid maps output to input coordinates, so the inverse scale makes digits grow for scale > 1.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def erase_from(x: torch.Tensor, params: AugmentParams, u: torch.Tensor) -> torch.Tensor:
    """Set one rectangle per image to 0 with probability `params.erase`; its place and size from u (5, N) uniforms."""
    n, _, h, w = x.shape
    dev = x.device
    area = _span(u[0], *params.erase_area) * (h * w)
    aspect = torch.exp(_span(u[1], math.log(0.5), math.log(2.0)))
    eh = (area * aspect).sqrt().clamp(1, h)
    ew = (area / aspect).sqrt().clamp(1, w)
    y0 = u[2] * (h - eh)
    x0 = u[3] * (w - ew)
    apply = u[4] < params.erase
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
              & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1)) & apply.view(n, 1, 1))
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def pad_crop_from(x: torch.Tensor, pad: int, u: torch.Tensor) -> torch.Tensor:
    """Each image of (N,C,H,W) zero-padded by `pad` pixels each side, then cropped back to H x W at a random
    place read from u (2, N) uniforms: a whole-pixel shift of up to `pad` either way (CIFAR-10's usual 4).

    One gather over index grids (no Python loop, no data-dependent shapes), so it runs inside a CUDA graph.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = (u[0] * (2 * pad + 1)).long().clamp_(max=2 * pad)  # 0..2*pad, uniform
    dx = (u[1] * (2 * pad + 1)).long().clamp_(max=2 * pad)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def flip_from(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images of (N,C,H,W) whose uniform in u (N,) is below 0.5."""
    return torch.where((u < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)


def augment_from(x: torch.Tensor, params: AugmentParams, u: torch.Tensor) -> torch.Tensor:
    """`augment` with its random numbers given: u is (noise_rows(params), N) uniforms in [0, 1).

    No generator is touched here, so a CUDA graph can replay it: the numbers come from a buffer that is
    refilled (outside the graph) once per epoch. Order: warp, padded crop, flip, then erasing (the erased
    rectangle lands on the image as the network sees it).
    """
    erase_at = 4 * params.warps
    at = erase_at + 5 * (params.erase > 0)  # the rows after warp and erase: crop, then flip
    if params.warps:
        x = affine_from(x, params, u[:4])
    if params.pad_crop > 0:
        x = pad_crop_from(x, params.pad_crop, u[at:at + 2])
        at += 2
    if params.flip:
        x = flip_from(x, u[at])
    if params.erase > 0:
        x = erase_from(x, params, u[erase_at:])
    return x


def random_affine(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Rotate, translate and scale each image of (N,C,H,W) by its own random amount (bilinear, zero padding)."""
    return affine_from(x, params, torch.rand(4, len(x), generator=generator, device=x.device))


def random_erase(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Set one random rectangle per image to 0 with probability `params.erase` (masks, no Python loop)."""
    return erase_from(x, params, torch.rand(5, len(x), generator=generator, device=x.device))


def augment(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Apply the configured augmentations to float images (N,C,H,W) in [0, 1]; shape and dtype are kept."""
    return augment_from(x, params, draw_noise(params, len(x), generator, x.device))


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size pixels of (..., H, W) images (offsets rounded down when H - size is odd)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def shift_images(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(N,H,W) or (N,C,H,W) images moved dx pixels right and dy down, the uncovered border filled with 0.

    Whole-pixel shifts, no interpolation: the shifted-test evaluation (`shift_eval`) asks how a trained network
    answers when the digit is not where the training images had it (the notes' GAP vs non-GAP question).
    """
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


SHIFT_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # right, left, down, up
