"""Weight initialisation schemes: the network's starting point is one of the things a ladder step can change.

Why it matters here: PyTorch's default for convolutions (kaiming uniform with a=sqrt(5), i.e. variance
1/(3 fan_in)) shrinks the signal's variance about 6x per ReLU layer. A network of eight such layers without
BatchNorm then starts with a near-constant output and SGD at lr 0.01 stays at chance: measured on the
eip4-s2 ladder's 3rd network, 11.35 % test accuracy after 2 epochs with torch's init, 93.4 % with Keras'
default (Glorot uniform weights, zero biases), which the handout's networks were trained with.
"""

from __future__ import annotations

import torch
from torch import nn

from convladder.train.config import INITS  # the config owns its choices (config.py stays free of torch)


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every conv/linear layer of `model` in place by `scheme`; BatchNorm keeps gamma 1, beta 0.

    torch: leave PyTorch's defaults. glorot: Keras' defaults (Glorot/Xavier uniform weights, zero biases).
    kaiming: He normal for ReLU (fan_in), zero biases. Draws from torch's global RNG (seeded by the caller).
    """
    if scheme not in INITS:
        raise ValueError(f"init {scheme!r} is not one of {INITS}")
    if scheme == "torch":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "glorot":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
