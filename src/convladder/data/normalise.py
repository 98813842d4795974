"""The one image normalisation: uint8 pixels -> [0, 1] -> zero mean, unit std with the data set's statistics.

Training (`train.step`), prediction and the page server (`serve`), the ONNX graph (`serve.export`), the report's
figures and the ladder's diagnostics all call these, so a network sees at inference exactly what it saw in
training. `mean` and `std` are in [0, 1] units (`DataSplits.mean/std`, env.json's `data_mean/data_std`).
"""

from __future__ import annotations

import numpy as np
import torch


def to_unit(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float pixels are taken as already 0..1 (returned as float32, same shape)."""
    x = pixels if isinstance(pixels, torch.Tensor) else torch.as_tensor(pixels)  # a tensor as is (compile, CUDA graphs)
    # float() copies a uint8 tensor, so the in-place divide never touches the caller's data
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalise(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Pixels in [0, 1] -> (x - mean) / std. Plain tensor arithmetic: it traces into ONNX and CUDA graphs."""
    return (x01 - mean) / std


def normalise_images(pixels: torch.Tensor | np.ndarray, mean: float, std: float) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) pixels (uint8, or float 0..1) -> normalised float32 (N, C, H, W), C = 1 if absent."""
    x = to_unit(pixels)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return normalise(x, mean, std)
