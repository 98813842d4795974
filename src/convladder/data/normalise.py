"""The one image normalisation: uint8 pixels -> [0, 1] -> zero mean, unit std with the data set's statistics.

Training (`train.step`), prediction and the page server (`serve`), the ONNX graph (`serve.export`), the report's
figures and the ladder's diagnostics all call these, so a network sees at inference exactly what it saw in
training. `mean` and `std` are in [0, 1] units (`DataSplits.mean/std`, env.json's `data_mean/data_std`): one
float for grey data, one float per channel (a tuple; a list in JSON) for colour data (`Stat`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

# One statistic: a float for every channel alike (grey data, and every run stored before colour), or a tuple
# with one float per channel. A per-channel tensor (C, 1, 1) is accepted by `normalise` too (made once on the
# training device, so a CUDA graph reads it instead of copying from the host each step).
Stat = Union[float, tuple[float, ...]]


def as_stat(value: Any) -> Stat | None:
    """A statistic read from JSON or code: a number -> float, a list/tuple of numbers -> tuple (one number ->
    float); anything else (None, text, booleans, empty lists) -> None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return float(value[0]) if len(value) == 1 else tuple(float(v) for v in value)
    if isinstance(value, np.ndarray) and value.ndim <= 1 and value.size:
        return as_stat(value.tolist() if value.ndim else float(value))
    return None


def stat_values(stat: Stat) -> tuple[float, ...]:
    """The numbers of a statistic, as a tuple (one for a float)."""
    return tuple(stat) if isinstance(stat, Sequence) else (float(stat),)


def stat_ok(mean: Stat, std: Stat) -> bool:
    """Finite means, positive finite stds, and as many of one as of the other."""
    m, s = stat_values(mean), stat_values(std)
    return len(m) == len(s) and all(map(math.isfinite, m + s)) and all(v > 0 for v in s)


def stat_text(stat: Stat, digits: int = 4) -> str:
    """'0.1307' for a float, '(0.4914, 0.4822, 0.4465)' per channel (R, G, B for colour)."""
    if isinstance(stat, Sequence):
        return "(" + ", ".join(f"{v:.{digits}f}" for v in stat) + ")"
    return f"{stat:.{digits}f}"


def stat_channels(stat: Stat) -> int | None:
    """How many channels a per-channel statistic is for; None for a float (any number of channels)."""
    return len(stat) if isinstance(stat, Sequence) else None


def channel_tensor(stat: Stat | torch.Tensor, like: torch.Tensor | None = None) -> float | torch.Tensor:
    """A float stays a float; per-channel numbers become a (C, 1, 1) float32 tensor (on `like`'s device)."""
    if isinstance(stat, torch.Tensor) or not isinstance(stat, Sequence):
        return stat if isinstance(stat, torch.Tensor) else float(stat)
    device = like.device if like is not None else None
    return torch.tensor(stat, dtype=torch.float32, device=device).view(-1, 1, 1)


def to_unit(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float pixels are taken as already 0..1 (returned as float32, same shape)."""
    x = pixels if isinstance(pixels, torch.Tensor) else torch.as_tensor(pixels)  # a tensor as is (compile, CUDA graphs)
    # float() copies a uint8 tensor, so the in-place divide never touches the caller's data
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalise(x01: torch.Tensor, mean: Stat | torch.Tensor, std: Stat | torch.Tensor) -> torch.Tensor:
    """Pixels (N, C, H, W) in [0, 1] -> (x - mean) / std, per channel where mean/std are per channel.

    Plain tensor arithmetic: it traces into ONNX and CUDA graphs. A float statistic keeps the arithmetic of
    runs stored before colour data existed, to the bit.
    """
    return (x01 - channel_tensor(mean, x01)) / channel_tensor(std, x01)


def normalise_images(pixels: torch.Tensor | np.ndarray, mean: Stat, std: Stat) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) pixels (uint8, or float 0..1) -> normalised float32 (N, C, H, W), C = 1 if absent."""
    x = to_unit(pixels)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return normalise(x, mean, std)
