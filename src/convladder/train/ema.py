"""Weight EMA (config `ema`): an exponential moving average of the weights, kept on the training device.

`TrainStep.update` calls `WeightEMA.update` after every optimiser step, inside the one step function (so a
captured CUDA graph replays it too; no host read). The decay of update n (n = optimiser steps before it,
0-based) is `min(ema, (1 + n) / (10 + n))` — the warm-up of TensorFlow's ExponentialMovingAverage: without it
the average would still hold ~65 % of the random initial weights after one MNIST epoch at 0.999, and the
early epochs' EMA accuracies would say nothing. BatchNorm's running mean/var are averaged with the same
decay as the weights (what timm's ModelEmaV2 does): the averaged statistics belong to averaged weights better
than the live model's latest ones would; integer buffers (num_batches_tracked) are copied. With `precise_bn`
the EMA model's statistics are recomputed on clean images after the last epoch (docs/training.md).
"""

from __future__ import annotations

import copy

import torch


def ema_decay(decay: float, n: int) -> float:
    """The decay of the EMA's update number n (0-based): min(decay, (1 + n) / (10 + n)); the test's reference."""
    return min(decay, (1 + n) / (10 + n))


class WeightEMA:
    """The average copy of `model`: `self.model`, a model of the same class, evaluated and saved in its place."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model)  # same class and layout: evaluation, saving and export need nothing new
        self.model.requires_grad_(False)
        live, avg = model.state_dict(keep_vars=True), self.model.state_dict(keep_vars=True)
        # frozen parameters (requires_grad off: bn_weight frozen, first_layer whiten-frozen) are copied, not
        # averaged: d * w + (1 - d) * w need not round back to w
        frozen = {k for k, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        pairs = [(avg[k], live[k], k not in frozen and avg[k].is_floating_point()) for k in live]
        self.averaged = [(a, v) for a, v, mean in pairs if mean]
        self.copied = [(a, v) for a, v, mean in pairs if not mean]
        device = next(iter(live.values())).device
        self._decay = torch.tensor(decay, dtype=torch.float32, device=device)

    @torch.no_grad()
    def update(self, n: torch.Tensor) -> None:
        """One update after optimiser step n (a 0-dim int64 tensor on the device: steps taken before this one)."""
        warm = (n + 1).to(torch.float32) / (n + 10).to(torch.float32)
        d = torch.minimum(self._decay, warm)
        avg = [a for a, _ in self.averaged]
        live = [v.detach() for _, v in self.averaged]
        # avg = d * avg + (1 - d) * live, as tensor ops: no host sync, graph-capturable
        torch._foreach_mul_(avg, d)
        torch._foreach_add_(avg, torch._foreach_mul(live, 1 - d))
        for a, v in self.copied:
            a.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's weights and buffers (on the CPU when saved by the caller)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the average (resume); in place, so the step's tensor lists stay valid."""
        self.model.load_state_dict(state)
