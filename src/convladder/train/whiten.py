"""First-layer whitening (config `first_layer: whiten | whiten-frozen`): the first conv's filters from the data.

The filters are the eigenvectors of the covariance of the k x k patches that conv sees in the normalised
training images, each scaled by 1 / sqrt(eigenvalue + eps), leading (largest eigenvalue) first: the idea of
KellerJordan/cifar10-airbench's whitening layer, written here for any first conv. On the patches they were
computed from, the responses are decorrelated with variance eigenvalue / (eigenvalue + eps), ~1 for every
component well above eps. docs/training.md says why that may help MNIST and what it costs.

- Fewer output channels C than patch dimensions d = C_in*k*k: the C leading components.
- C > d: channels d..2d-1 are the negated components (airbench's +/- pairs: a ReLU after the conv keeps
  one half-wave of each, the pair keeps both); channels from 2d on would only repeat these, so they keep
  the weights `init` gave them (env.json records how many channels were whitened).
- The patches are taken as the conv takes them: its padding (and padding mode), stride and dilation.
- Only training-split images (never validation or test), WHITEN_IMAGES of them drawn with the run's
  split_seed from a generator of its own (the global RNG stream is untouched), without augmentation.
- A conv bias, where there is one, is set to -W @ mean patch, so the responses have zero mean.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convladder.errors import UserError

WHITEN_IMAGES = 5000  # airbench's figure; the covariance of 9 or 25 dims settles long before that
WHITEN_EPS = 5e-4  # airbench's eps, in normalised units (unit pixel variance)
_CHUNK = 500  # images per chunk of patches: memory stays bounded whatever WHITEN_IMAGES is


def first_conv(model: nn.Module, input_shape: tuple[int, ...], where: str) -> tuple[str, nn.Conv2d]:
    """(name, module) of the layer that the forward pass applies first to the image; UserError where whitening
    cannot apply (not a plain 2-D conv, grouped, or something runs on the image before it)."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, torch.Tensor]] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0])) if not calls and args
                                         else None) for m in leaves]
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            (model.logits if hasattr(model, "logits") else model)(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    fix = "use first_layer=learn"
    if not calls:
        raise UserError(f"{where}: the network runs no layer module on the image (functional calls only) — {fix}")
    module, seen = calls[0]
    name = names.get(module, "?") or "the model itself"
    if not isinstance(module, nn.Conv2d):
        raise UserError(f"{where}: the first layer ({name}) is a {type(module).__name__}, not a 2-D convolution — "
                        f"whitening sets a first conv's filters; {fix}")
    if not (isinstance(seen, torch.Tensor) and seen.shape == x.shape and torch.equal(seen.cpu(), x)):
        raise UserError(f"{where}: the first conv ({name}) does not see the image as it is (something runs on it "
                        f"before the conv) — the patch statistics would not be its input's; {fix}")
    if module.groups != 1:
        raise UserError(f"{where}: the first conv ({name}) is grouped (groups={module.groups}); whitening needs "
                        f"every filter to see every input channel — {fix}")
    return name, module


def _columns(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N, C_in*kh*kw, L): every patch `conv` reads from images x (N, C, H, W), in its weight's order (channel,
    row, column), with its padding and padding mode, stride and dilation."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    pad = conv._reversed_padding_repeated_twice  # torch's own numbers for int, tuple and 'same' padding
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    return F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N*L, C_in*kh*kw) float64: the patches of `_columns`, one a row."""
    cols = _columns(conv, x.double())
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def patch_statistics(conv: nn.Conv2d, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean (d,), covariance (d, d), patches) over the patches of normalised `images`, in chunks.

    Each image's sums are float32 (a few hundred patches), their total float64: on MNIST's 5,000 images 15x
    faster than float64 patch rows (0.12 s -> 0.009 s per 500 images, one thread) at ~1e-6 relative error."""
    d = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    total = torch.zeros(d, dtype=torch.float64, device=images.device)
    outer = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    n = 0
    for start in range(0, len(images), _CHUNK):
        cols = _columns(conv, images[start:start + _CHUNK].float())  # (N, d, L)
        total += cols.sum(2).double().sum(0)
        outer += torch.matmul(cols, cols.transpose(1, 2)).double().sum(0)  # batched: no copy of the patches
        n += cols.shape[0] * cols.shape[2]
    mean = total / n
    return mean, outer / n - torch.outer(mean, mean), n


def whitening_filters(cov: torch.Tensor, channels: int, eps: float = WHITEN_EPS
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(filters (min(channels, 2d), d), eigenvalues (d,) largest first, components used) of covariance `cov`."""
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)  # leading first; rounding can make ~0 negative
    scaled = (vectors / torch.sqrt(values + eps)).T  # row i: component i
    d = len(values)
    if channels <= d:
        return scaled[:channels], values, channels
    return torch.cat([scaled, -scaled])[:channels], values, d


@torch.no_grad()
def whiten_first_layer(model: nn.Module, images: torch.Tensor, *, frozen: bool, where: str,
                       image_seed: int) -> dict[str, Any]:
    """Set the first conv of `model` from normalised training `images` (N, C, H, W); freeze its weight when
    `frozen`. Returns what env.json records (`first_layer`)."""
    name, conv = first_conv(model, tuple(images.shape[1:]), where)
    if conv.in_channels != images.shape[1]:  # first_conv ran it on these shapes, so only a broken module gets here
        raise UserError(f"{where}: the first conv ({name}) takes {conv.in_channels} channels, the images have "
                        f"{images.shape[1]}")
    mean, cov, patches = patch_statistics(conv, images)
    filters, values, components = whitening_filters(cov, conv.out_channels)
    w = conv.weight
    w[: len(filters)] = filters.reshape(len(filters), *w.shape[1:]).to(device=w.device, dtype=w.dtype)
    if conv.bias is not None:
        conv.bias[: len(filters)] = -(filters @ mean).to(device=w.device, dtype=w.dtype)
    if frozen:
        w.requires_grad_(False)
    d = len(values)
    return {"scheme": "whiten-frozen" if frozen else "whiten", "layer": name,
            "kernel": "x".join(map(str, conv.kernel_size)), "patch_dims": d, "channels": conv.out_channels,
            "whitened_channels": len(filters), "components": components,
            "negated_pairs": max(0, len(filters) - d), "kept_init_channels": conv.out_channels - len(filters),
            "images": len(images), "image_seed": image_seed, "patches": patches, "eps": WHITEN_EPS,
            "eigenvalues": [float(f"{v:.4g}") for v in values.tolist()],
            "bias_centred": conv.bias is not None, "frozen": frozen}
