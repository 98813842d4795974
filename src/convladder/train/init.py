"""Weight initialisation schemes: the network's starting point is one of the things a ladder step can change.

Why it matters here: PyTorch's default for convolutions (kaiming uniform with a=sqrt(5), i.e. variance
1/(3 fan_in)) shrinks the signal's variance about 6x per ReLU layer. A network of eight such layers without
BatchNorm then starts with a near-constant output and SGD at lr 0.01 stays at chance: measured on the
eip4-s2 ladder's 3rd network, 11.35 % test accuracy after 2 epochs with torch's init, 93.4 % with Keras'
default (Glorot uniform weights, zero biases), which the handout's networks were trained with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convladder.data.normalise import to_unit
from convladder.errors import UserError

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


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that have a weight and bias (affine)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def start_levers(model: nn.Module, config: Any, data: Any) -> dict[str, Any]:
    """The config's levers on a freshly built, initialised model, before training: `first_layer` whitened from
    `data`'s training split (train/whiten.py), BatchNorm weights frozen (`bn_weight: frozen`) or all BatchNorm
    parameters (`bn_lr: 0`). Frozen means requires_grad False: no optimiser group, no gradient, the EMA copies
    it (bn_lr > 0 is optimiser groups, train/optim.py). Returns what env.json records; {} at the defaults.

    `data`: a DeviceData (x_train: the training split's uint8 images, no validation image; normalise)."""
    record: dict[str, Any] = {}
    if config.bn_lr != 1.0 or config.bn_weight == "frozen":
        bns = bn_layers(model)
        if not bns:
            keys = " ".join(k for k, on in (("bn_lr", config.bn_lr != 1.0), ("bn_weight", config.bn_weight != "learn"))
                            if on)
            raise UserError(f"{keys}: network {config.model!r} has no BatchNorm layer with a weight and bias to "
                            "set — leave bn_lr at 1 and bn_weight at learn for it")
        for bn in bns:
            if config.bn_weight == "frozen" or config.bn_lr == 0:
                bn.weight.requires_grad_(False)
            if config.bn_lr == 0:
                bn.bias.requires_grad_(False)
    if config.first_layer != "learn":
        from convladder.train.whiten import WHITEN_IMAGES, whiten_first_layer

        # drawn with split_seed, as the validation split is: every seed of an experiment whitens alike (batched
        # seeds share one env.json); a generator of its own, so the global stream (dropout, data order) is untouched
        gen = torch.Generator().manual_seed(config.split_seed)
        pick = torch.randperm(len(data.x_train), generator=gen)[:WHITEN_IMAGES]
        images = data.normalise(to_unit(data.x_train[pick.to(data.x_train.device)]))
        record["first_layer"] = whiten_first_layer(model, images, frozen=config.first_layer == "whiten-frozen",
                                                   where=f"first_layer={config.first_layer}",
                                                   image_seed=config.split_seed)
    return record
