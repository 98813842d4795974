"""Optimisers and learning-rate schedules. Every schedule steps once per batch, so state is one counter."""

from __future__ import annotations

import math

import torch
from torch import nn

from convladder.train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW or Adadelta, as the config says."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adadelta(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-batch schedule: none, step (x gamma every step_size epochs), onecycle, or cosine to ~0."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        # cycle_momentum only for optimisers that have a momentum/beta to cycle.
        cycle = config.optimizer in ("sgd", "adam", "adamw") and not (config.optimizer == "sgd" and config.momentum == 0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=config.pct_start,
            div_factor=config.div_factor, final_div_factor=config.final_div_factor, cycle_momentum=cycle)
    if config.schedule == "step":
        every = config.step_size * steps_per_epoch
        factor = lambda step: config.gamma ** (step // every)  # noqa: E731
    elif config.schedule == "cosine":
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
