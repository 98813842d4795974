"""`doctor(model, splits, config)`: run every check in order and collect a `DoctorResult`.

Order: data -> initial loss and predictions -> activations -> gradients (one forward/backward each, at
initialisation) -> LR range test -> overfit one batch and a short run (both at the configured lr, or at the
range test's suggestion when the configured lr failed, so one broken setting does not hide the others) ->
optionally `epochs` epochs of real training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from convladder.doctor import checks, probes
from convladder.doctor.result import Check, DoctorResult
from convladder.errors import UserError
from convladder.train import runenv, runner
from convladder.train.config import TrainConfig


def _model_text(model: Any) -> str:
    if isinstance(model, str):
        return model if len(model) <= 60 else model[:57] + "..."
    from convladder.train.models import python_ref

    try:
        return python_ref(model)
    except Exception:  # noqa: BLE001 - a name for the header only
        return type(model).__name__


def _timed(check: Callable[..., Check], *args: Any, **kwargs: Any) -> Check:
    t = time.perf_counter()
    found = check(*args, **kwargs)
    found.seconds = time.perf_counter() - t
    return found


CHECKS = ("data", "init", "activations", "gradients", "lr", "overfit", "learning", "epoch")


def doctor(model: Any = None, splits: Any = None, config: TrainConfig | None = None, *, epochs: int = 0,
           only: set[str] | tuple[str, ...] | None = None, progress: Callable[[str], None] | None = None,
           overfit_steps: int = probes.OVERFIT_STEPS, lr_steps: int = probes.LR_STEPS,
           learn_steps: int = probes.LEARN_STEPS) -> DoctorResult:
    """Examine a network with its data and training config; returns every check (nothing is written).

    model: anything `convladder.train.models.build` takes — a name, spec text/file, `file.py:Class`, an nn.Module
    class, or an instance (examined with its own weights as they are; checks train copies only). None: config.model.
    splits: a DataSplits-like object (uint8 images, labels, classes, mean/std used to normalise); None: the
    config's data set. config: a TrainConfig (lr, optimizer, batch size, augmentation, ...); None: the defaults.
    only: run just these checks (names in CHECKS); without "lr", overfit and the short run use config.lr.
    epochs: also train a copy this many epochs with the config (the "epoch" check; 0 = skip it).
    """
    t0 = time.perf_counter()
    wanted = set(CHECKS if only is None else only)
    unknown = wanted - set(CHECKS)
    if unknown:
        raise UserError(f"unknown doctor check(s) {sorted(unknown)} — known: {', '.join(CHECKS)}")
    if epochs < 0:
        raise UserError(f"epochs must be 0 or more (got {epochs})")
    if only is not None and "epoch" in wanted and not epochs:
        epochs = 1  # asked for by name
    say = progress or (lambda text: None)
    config = (config or TrainConfig()).replace()
    if model is not None:
        config = config.replace(model=model, model_spec=None)
    config, device = runner.begin(config, say, data=splits)  # lr: auto is checked as the number it stands for
    splits = runner.load_data(config, splits)
    notes: list[str] = []
    n = min(len(splits.y_train), config.subset or len(splits.y_train))
    if config.val_size and config.val_size > n // 4:  # a small data set: keep most of it for training
        notes.append(f"val_size {config.val_size} is too large for {n} training images; held out {n // 5}")
        config = config.replace(val_size=n // 5)
    if config.batch_size > (n - config.val_size) // 2:
        notes.append(f"batch_size {config.batch_size} is too large for {n - config.val_size} images; used "
                     f"{max(1, (n - config.val_size) // 4)}")
        config = config.replace(batch_size=max(1, (n - config.val_size) // 4))
    setup = runenv.prepare(config, splits, device)
    patient = checks.Patient(setup.model, setup.data, config, device)
    found: list[Check] = []
    for name, label, check in (("data", "data", checks.check_data), ("init", "initial loss", checks.check_init),
                               ("activations", "activations", checks.check_activations),
                               ("gradients", "gradients", checks.check_gradients)):
        if name in wanted:
            say(f"checking {label}")
            found.append(_timed(check, patient))
    probe_lr = config.lr
    if "lr" in wanted:
        say(f"LR range test ({lr_steps} steps)")
        t = time.perf_counter()
        lr_check, probe_lr = probes.check_lr(patient, splits, lr_steps)
        lr_check.seconds = time.perf_counter() - t
        found.append(lr_check)
        if probe_lr != config.lr:
            notes.append(f"the configured lr {config.lr:g} failed the range test: overfit and short run used the "
                         f"suggestion {probe_lr:.3g}")
    if "overfit" in wanted:
        say(f"overfitting one batch (up to {overfit_steps} steps)")
        found.append(_timed(probes.check_overfit, patient, probe_lr, max_steps=overfit_steps))
    if "learning" in wanted:
        say(f"short run ({learn_steps} steps)")
        found.append(_timed(probes.check_learning, patient, probe_lr, learn_steps))
    if "epoch" in wanted and epochs:
        say(f"training {epochs} epoch(s)")
        found.append(_timed(probes.check_epochs, patient, splits, epochs))
    return DoctorResult(
        model=_model_text(model if model is not None else config.model), params=setup.params,
        dataset=setup.data.name, classes=setup.data.classes, device=str(device),
        config={"optimizer": config.optimizer, "lr": config.lr, "batch_size": config.batch_size,
                "schedule": config.schedule, "augment": config.augment, "seed": config.seed,
                "val_size": config.val_size, "momentum": config.momentum, "init": config.init},
        checks=found, wall_time_s=time.perf_counter() - t0, torch=torch.__version__,
        samples=checks.samples(patient), notes=notes)
