"""Lookahead (config `lookahead` k, `lookahead_alpha` alpha): a slow copy of the weights the optimiser trains.

Zhang, Lucas, Hinton and Ba, "Lookahead Optimizer: k steps forward, 1 step back" (NeurIPS 2019): the optimiser
takes k steps with the model's ("fast") weights, then the slow weights move a fraction alpha towards them and the
fast weights restart from there — `slow += alpha * (fast - slow); fast = slow` after optimiser steps k, 2k, ...
of the run. `TrainStep.update` calls `Lookahead.update` right after `optimizer.step()` and before the EMA's update
(the EMA averages what the model then holds). The optimiser's own state (SGD's momentum, Adam's moments) is kept
across a sync, the paper's default ("maintain"), not reset.

The step is tensor ops only: whether step t syncs is a 0/1 factor made on the device from the step counter, and a
step that does not sync adds zero to the slow weights and multiplies the fast ones by one — exact, so a captured
CUDA graph replays the same arithmetic every step and nothing reads the host.
"""

from __future__ import annotations

import torch

from convladder.errors import UserError


class Lookahead:
    """The slow weights of `model`'s trainable parameters, synced into the model every `k` optimiser steps."""

    def __init__(self, model: torch.nn.Module, k: int, alpha: float):
        if k < 1 or not 0 < alpha <= 1:
            raise ValueError(f"lookahead needs k >= 1 and alpha in (0, 1], got k={k}, alpha={alpha}")
        self.k, self.alpha = k, alpha
        # Only what the optimiser trains: a frozen parameter (bn_weight frozen, first_layer whiten-frozen) never
        # moves, so its slow copy would equal it; BatchNorm's running mean/var are not trained but estimated for
        # the weights the model holds, and interpolating them is no part of Lookahead (the paper and timm's
        # Lookahead act on the optimiser's parameters only). named_parameters() lists a shared weight once.
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.fast = [p for _, p in named]
        self.slow = [p.detach().clone() for p in self.fast]
        device = self.fast[0].device if self.fast else torch.device("cpu")
        self._alpha = torch.tensor(alpha, dtype=torch.float32, device=device)

    @torch.no_grad()
    def update(self, t: torch.Tensor) -> None:
        """After optimiser step t (a 0-dim int64 tensor on the device: steps taken before this one) — a sync when
        t + 1 is a multiple of k: slow += alpha * (fast - slow), then fast = slow."""
        if not self.fast:
            return
        sync = ((t + 1) % self.k == 0).to(torch.float32)  # 1.0 on steps k, 2k, ...: no host read
        diff = torch._foreach_sub(self.fast, self.slow)
        torch._foreach_mul_(diff, self._alpha * sync)
        torch._foreach_add_(self.slow, diff)
        # fast = fast * (1 - sync) + slow * sync: exactly fast when sync is 0 and exactly slow when it is 1
        torch._foreach_mul_(self.fast, 1 - sync)
        torch._foreach_add_(self.fast, torch._foreach_mul(self.slow, sync))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The slow weights by parameter name (resume.pt's "lookahead")."""
        return dict(zip(self.names, self.slow))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        """Restore the slow weights (resume); None: start them from the model's weights as they are now (a
        resume.pt rebuilt from model.safetensors has none). In place, so a captured graph's tensors stay valid."""
        if state is not None:
            missing = [n for n in self.names if n not in state]
            if missing:
                raise UserError(f"resume.pt's lookahead weights lack {missing[0]} — the run's resume state is "
                                "damaged: train the run afresh")
        for name, slow, fast in zip(self.names, self.slow, self.fast):
            slow.copy_(fast.detach() if state is None else state[name])
