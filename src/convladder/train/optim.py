"""Optimisers and learning-rate schedules whose values live on the training device.

A schedule is a table: the learning rate (and momentum, which OneCycle cycles) of every step, computed
once before training from torch's own schedulers, so its values are exactly torch's. The training step
reads row `t` of the table into 0-dim device tensors that the optimiser uses; nothing is read back to
the host, and a CUDA graph can replay the whole step (`train/step.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Union

import torch
from torch import nn

from convladder.train.config import TrainConfig


class TensorSGD:
    """SGD with (Nesterov) momentum and weight decay, torch's update rule, lr and momentum as device tensors.

    `torch.optim.SGD` takes a tensor lr but not a tensor momentum, and OneCycle cycles the momentum every step.
    Momentum buffers start at zero, which equals torch's "first buffer = gradient" with dampening 0, so the
    update has the same shape on every step (what graph capture needs). Element-wise, so copies packed into
    one batched model stay independent.

    It has torch's optimiser interface (`param_groups`, `state`, `step`, `zero_grad`, `state_dict`,
    `load_state_dict`, the state dict in torch's format, so resume.pt files are the same as before) without
    subclassing `torch.optim.Optimizer`: that class's first construction imports torch._dynamo (2.3 s of every
    training process's start on the 2-core CPU) and wraps `step` and `zero_grad` in hooks (~70 us a step).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: torch.Tensor,
                 momentum: torch.Tensor, *, nesterov: bool = False, weight_decay: float = 0.0,
                 use_momentum: bool = True):
        # params: tensors, or groups as torch takes them ({"params": [...], "lr_scale": s}: that group's lr is
        # lr * s, applied inside the step, so every group shares the one lr tensor a CUDA graph reads)
        given = list(params)
        groups = given if given and isinstance(given[0], dict) else [{"params": given}]
        params = [p for g in groups for p in g["params"]]
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups: list[dict[str, Any]] = [
            {"params": list(g["params"]), "weight_decay": weight_decay, "nesterov": nesterov,
             **({"lr_scale": float(g["lr_scale"])} if g.get("lr_scale", 1.0) != 1.0 else {})} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {p: {} for p in params}
        self.lr, self.momentum, self.use_momentum = lr, momentum, use_momentum
        if use_momentum:
            for p in params:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if self.use_momentum:
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, grads)
                if group["nesterov"]:
                    update = torch._foreach_mul(bufs, self.momentum)
                    torch._foreach_add_(update, grads)
                    torch._foreach_mul_(update, self.lr)
                else:
                    update = torch._foreach_mul(bufs, self.lr)
            else:
                update = torch._foreach_mul(grads, self.lr)
            scale = group.get("lr_scale", 1.0)  # a Python float: no host read, the same op on every replay
            if scale != 1.0:
                torch._foreach_mul_(update, scale)
            torch._foreach_sub_(params, update)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's: drop every gradient (or zero it in place with set_to_none=False)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch's format: parameters numbered in group order; the state holds the live buffers, as torch's does."""
        numbers: dict[torch.Tensor, int] = {}
        groups = []
        for group in self.param_groups:
            start = len(numbers)
            numbers.update((p, start + i) for i, p in enumerate(group["params"]) if p not in numbers)
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [numbers[p] for p in group["params"]]})
        state = {numbers[p]: dict(s) for p, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy a saved state (torch's format) into the buffers in place; the groups take the saved settings."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        params: dict[int, torch.Tensor] = {}
        for group, saved in zip(self.param_groups, saved_groups):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                                 "optimizer's group")
            params.update(zip(saved["params"], group["params"]))
        for number, saved_state in state_dict["state"].items():
            p = params[int(number)]
            for name, value in saved_state.items():
                buffer = self.state[p].get(name)
                if buffer is not None and buffer.shape == value.shape:
                    buffer.copy_(value)  # in place: a captured CUDA graph keeps pointing at the same buffers
                else:
                    self.state[p][name] = value.detach().to(device=p.device, dtype=p.dtype).clone()
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})


Optimiser = Union[torch.optim.Optimizer, TensorSGD]


def _torch_optimizer(params: list[Any], config: TrainConfig, lr, capturable: bool = False,
                     momentum=None) -> torch.optim.Optimizer:
    """torch's optimiser of the config (lr a float, or a device tensor for the training step); `params` are
    tensors or groups whose "lr" is already scaled (`param_groups`)."""
    extra = {"capturable": True} if capturable else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        betas = (momentum, torch.full_like(momentum, 0.999)) if momentum is not None else (config.momentum, 0.999)
        return cls(params, lr=lr, betas=betas, weight_decay=config.weight_decay,
                   foreach=False if not capturable else None, **extra)
    return torch.optim.Adadelta(params, lr=lr, weight_decay=config.weight_decay,
                                foreach=False if not capturable else None, **extra)


def bn_param_ids(model: nn.Module) -> set[int]:
    """ids of the parameters of `model`'s BatchNorm layers (weight and bias)."""
    return {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)}


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters (requires_grad; `train/init.py` froze the rest) as optimiser groups.

    bn_lr 1: one group, every parameter in `model.parameters()` order (the optimiser state of runs stored before
    bn_lr existed). Otherwise the other parameters, then BatchNorm's with `lr_scale` = bn_lr.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.bn_lr == 1.0:
        return [{"params": params}]
    bn = bn_param_ids(model)
    groups = [{"params": [p for p in params if id(p) not in bn]},
              {"params": [p for p in params if id(p) in bn], "lr_scale": float(config.bn_lr)}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, config: TrainConfig, lr: torch.Tensor | None = None,
                   momentum: torch.Tensor | None = None, capturable: bool = False) -> Optimiser:
    """The config's optimiser. With `lr`/`momentum` tensors (the training step): SGD is `TensorSGD`; Adam/AdamW
    take both as tensors (momentum = beta1), Adadelta the lr. Without them: torch's optimiser with a float lr.

    A group with `lr_scale` (bn_lr) trains at lr * scale: TensorSGD scales inside its step; torch's optimisers get
    the group its own lr tensor, which `follow_lr` sets from the shared one before every step."""
    groups = param_groups(model, config)
    if lr is not None and config.optimizer == "sgd":
        assert momentum is not None
        return TensorSGD(groups, lr, momentum, nesterov=config.nesterov and config.momentum > 0,
                         weight_decay=config.weight_decay, use_momentum=config.momentum > 0)
    base = config.lr if lr is None else lr
    for group in groups:
        if group.get("lr_scale", 1.0) != 1.0:
            group["lr"] = base * group["lr_scale"]  # a float, or a new device tensor that follow_lr keeps current
    if lr is None:
        return _torch_optimizer(groups, config, config.lr)
    return _torch_optimizer(groups, config, lr, capturable, momentum if config.optimizer != "adadelta" else None)


def follow_lr(optimizer: Optimiser, lr: torch.Tensor) -> None:
    """Each scaled group's lr tensor = lr * its scale, on the device (no host read; a CUDA graph replays it).

    Nothing to do for TensorSGD (it scales inside its step) or a group at scale 1 (it holds `lr` itself)."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        if scale != 1.0 and isinstance(group.get("lr"), torch.Tensor):
            torch.mul(lr, scale, out=group["lr"])


def bind_tensors(optimizer: Optimiser, lr: torch.Tensor, momentum: torch.Tensor) -> None:
    """After `load_state_dict` put the saved hyperparameters into the groups: point them at the step's tensors
    again (a scaled group at its own tensor, set from `lr` by `follow_lr`)."""
    for group in optimizer.param_groups:
        if "lr" in group:
            scale = group.get("lr_scale", 1.0)
            group["lr"] = lr if scale == 1.0 else lr * scale
        if "betas" in group and isinstance(group["betas"][0], torch.Tensor):
            group["betas"] = (momentum, group["betas"][1])


def momentum_cycle(config: TrainConfig) -> tuple[float, float] | None:
    """OneCycle's momentum range (high, low): `momentum` +- 0.05, kept within [0, 0.999]; None when not cycled.

    torch's OneCycleLR cycles 0.95 -> 0.85 -> 0.95 whatever the optimiser's momentum, so `momentum=0.8` would
    change nothing; centring the cycle on the config's value keeps the default (0.9: 0.95/0.85, the same
    floats) and makes the setting mean what it says. Rounded so 0.9 +- 0.05 are the floats 0.95 and 0.85.
    """
    if config.schedule != "onecycle" or config.optimizer not in ("sgd", "adam", "adamw"):
        return None
    if config.optimizer == "sgd" and config.momentum == 0:  # plain SGD: no momentum to cycle
        return None
    return round(min(config.momentum + 0.05, 0.999), 10), round(max(config.momentum - 0.05, 0.0), 10)


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)  # torch's OneCycleLR._annealing_cos


def schedule_tables(config: TrainConfig, steps_per_epoch: int) -> tuple[list[float], list[float]]:
    """(lr, momentum) of steps 0 .. epochs*steps_per_epoch (one more than the steps: the lr after the last).

    The formulas and float arithmetic of torch's OneCycleLR / LambdaLR (two cosine phases; momentum cycles
    high -> low -> high around SGD's momentum or Adam's beta1 when OneCycle cycles it, see `momentum_cycle`).
    Momentum is otherwise constant: SGD's `momentum`, Adam's beta1 (also `momentum`). Driving torch's scheduler
    step by step took 1.7 s for 5k steps. `tests/test_step.py` checks these tables against torch's schedulers.
    """
    total = config.epochs * steps_per_epoch
    base_momentum = config.momentum if config.optimizer in ("sgd", "adam", "adamw") else 0.0
    if config.schedule == "onecycle":
        cycle = momentum_cycle(config)
        high, low_m = cycle or (base_momentum, base_momentum)
        initial = config.lr / config.div_factor
        low = initial / config.final_div_factor
        phases = [(float(config.pct_start * total) - 1, initial, config.lr, high, low_m),
                  (total - 1, config.lr, low, low_m, high)]
        lrs, moms = [], []
        for t in range(total + 1):
            begin = 0.0
            for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
                if t <= end or i == len(phases) - 1:
                    pct = (t - begin) / (end - begin)
                    lrs.append(_cos(lr0, lr1, pct))
                    moms.append(_cos(m0, m1, pct) if cycle else base_momentum)
                    break
                begin = end
        return lrs, moms
    if config.schedule == "step":
        every = config.step_size * steps_per_epoch
        lrs = [config.lr * config.gamma ** (t // every) for t in range(total + 1)]
    elif config.schedule == "cosine":
        lrs = [config.lr * (0.5 * (1 + math.cos(math.pi * min(t, total) / total))) for t in range(total + 1)]
    else:
        lrs = [config.lr] * (total + 1)
    return lrs, [base_momentum] * (total + 1)
