"""The checks that train a copy of the network: LR range test, overfitting one batch, a short run, one epoch.

All train with convladder's own training step (`train/step.py`) on an lr ramp (`lrfind.ramp_step`, the LR range
test's: the range test of `convladder lr-find` itself, then overfit and the short run at fixed or warming-up
rates) and, for `--epochs`, the trainer itself (`train/loop.py`, no run store); the patient's network is never
changed.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from convladder.data.datasets import DataSplits
from convladder.doctor.checks import Patient
from convladder.doctor.result import FAIL, PASS, SKIP, WARN, Check
from convladder.train.device_data import DeviceData
from convladder.train.lrfind import ramp_step
from convladder.train.step import evaluate

OVERFIT_IMAGES, OVERFIT_STEPS = 32, 300  # Karpathy's "overfit one batch": a few hundred steps must reach 100 %
LR_STEPS = 100  # mini-batches of the LR range test (convladder lr-find's default)
FELL = 0.05  # the ramp's smoothed loss must fall by this share of its start, else there is no good range
LEARN_STEPS = 100  # mini-batches of the short run
LEARN_PASS, LEARN_WARN = 0.5, 0.15  # held-out accuracy above chance, as a share of (100 - chance)


def _no_dropout(model: nn.Module) -> int:
    """Set every dropout module's p to 0 (a copy's); returns how many there were."""
    found = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
            found += 1
    return found


# -- LR range test -------------------------------------------------------------------------------------------

def good_range(lrs: list[float], smoothed: list[float], stopped: str, suggested: float | None = None
               ) -> dict[str, float | None]:
    """From a ramp: where the smoothed loss has fallen by a tenth of its total fall, or the suggestion if lower
    (low); its minimum (high); where it is back above its start or the ramp diverged (too_high, else None)."""
    if not smoothed:
        return {"low": None, "high": None, "too_high": None, "fell": 0.0}
    start = smoothed[0]
    m = min(range(len(smoothed)), key=smoothed.__getitem__)
    drop = start - smoothed[m]
    fell = drop / start if start > 0 else 0.0
    diverged = lrs[-1] if stopped.startswith("diverged") else None
    if fell < FELL:  # a flat curve: only a divergence says anything about the lr
        return {"low": None, "high": None, "too_high": diverged, "fell": fell}
    too_high = next((lrs[i] for i in range(m, len(smoothed)) if smoothed[i] >= start), diverged)
    low = next(lrs[i] for i in range(m + 1) if smoothed[i] <= start - 0.1 * drop)
    if suggested is not None and suggested < low:  # the ramp's own suggestion belongs to the good range
        low = suggested
    return {"low": low, "high": lrs[m], "too_high": too_high, "fell": fell}


def check_lr(p: Patient, splits: Any, steps: int = LR_STEPS) -> tuple[Check, float]:
    """The LR range test on a copy; whether config.lr sits in the good range. Returns (check, lr for the probes)."""
    from convladder.train.lrfind import suggest_lr
    from convladder.train.models import handing_over

    lr = p.config.lr
    top = max(10.0, 3 * lr)  # reach past the configured lr and the divergence, so "too high" is measured
    with handing_over(p.copy()) as ref:
        res = suggest_lr(p.config.replace(model=ref, model_spec=None, init="torch", model_args=None),
                         data=splits, max_lr=top, steps=steps)
    r = good_range(res.lrs, res.smoothed, res.stopped, res.suggested_lr)
    low, high, bad = r["low"], r["high"], r["too_high"]
    sugg = res.suggested_lr
    where = f"good range {low:.3g} .. {high:.3g}" if low is not None else "no good range (the loss did not fall)"
    if bad is not None:
        where += f", loss back above its start at {bad:.3g}"
    if bad is not None and lr >= bad:
        status = FAIL
        advice = (f"lr {lr:g} is where the ramp's loss climbs back or diverges ({bad:.3g}): the weights jump past "
                  "every minimum. Use " + (f"lr {sugg:.3g} (the ramp's suggestion)" if sugg is not None else
                                           f"an lr well below {bad:.3g}")
                  + (f", at most {high:.3g}" if high is not None else ""))
    elif low is None:
        status = WARN
        advice = ("no lr of the ramp made the loss fall: the problem is not the lr — read the data, activation, "
                  "gradient and short-run checks")
    elif lr < low:
        status = WARN
        advice = f"lr {lr:g} is below where the loss starts to fall ({low:.3g}): training will crawl; try {sugg:.3g}"
    elif lr > high:
        status = WARN
        advice = (f"lr {lr:g} is past the lowest loss of the ramp ({high:.3g}): fine as onecycle's peak if "
                  f"training stays stable, else use {sugg:.3g}")
    else:
        status = PASS
        advice = f"lr {lr:g} sits where the loss falls; the ramp suggests {sugg:.3g} ({res.suggestion})"
    probe_lr = lr if status != FAIL or sugg is None else sugg
    curve = [{"lr": a, "loss": b, "smoothed": c} for a, b, c in zip(res.lrs, res.losses, res.smoothed)]
    return Check(
        "lr", "learning rate (LR range test)", status,
        f"lr {lr:g}; {where}; suggested {sugg:.3g}" if sugg is not None else f"lr {lr:g}; {where}",
        "the notes end at 'Seventh: learning rate'. Too low and the loss barely moves in the epochs allowed; too "
        "high and each step overshoots, the loss rises or turns NaN. The range test raises the lr step by step "
        f"over {steps} mini-batches and watches the loss",
        advice,
        {"lr": lr, "low": low, "high": high, "too_high": bad, "suggested": sugg, "rule": res.suggestion,
         "stopped": res.stopped, "fell": r["fell"], "probe_lr": probe_lr}, curve), probe_lr


# -- overfit one batch -----------------------------------------------------------------------------------------

def check_overfit(p: Patient, lr: float, images: int = OVERFIT_IMAGES, max_steps: int = OVERFIT_STEPS) -> Check:
    """Train a copy on one fixed batch (no dropout, no augmentation, train mode) until it gets all of it right."""
    model = p.copy().train()
    dropouts = _no_dropout(model)
    d = p.data
    n = min(images, d.n_train)
    x, y = d.x_train[:n].cpu(), d.y_train[:n].cpu()
    x = x[:, 0] if x.shape[1] == 1 else x  # grey as (N, H, W), colour keeps its channels
    cfg = p.config.replace(batch_size=n, val_size=0, subset=0, augment=False, label_smoothing=0.0)
    one = DeviceData(DataSplits(d.name, x, y, x, y, d.classes, d.mean, d.std), cfg, p.device)
    step = ramp_step(model, one, cfg, p.device, [lr] * max_steps)
    losses, reached = [], None
    for t in range(1, max_steps + 1):
        step.new_epoch()  # one batch per epoch: the same n images, reshuffled
        step()
        loss, hits = float(step.last_loss[0]), int(step.correct[0])
        losses.append({"step": t, "loss": loss, "acc": 100.0 * hits / n})
        if not math.isfinite(loss):
            break
        if hits == n:
            reached = t
            break
    last = losses[-1]
    status = PASS if reached is not None else FAIL
    value = (f"100 % of {n} images after {reached} steps (loss {last['loss']:.3g}) at lr {lr:.3g}" if reached else
             f"{last['acc']:.0f} % of {n} images after {len(losses)} steps (loss {last['loss']:.3g}) at lr {lr:.3g}")
    advice = ("the network can learn; whether it learns what carries to new images is the next check" if reached
              else "a network that cannot memorise 32 images has a bug, not a lack of data: check that the loss "
                   "gets logits (or log-softmax), that every layer gets a gradient, that labels belong to their "
                   "images, and that the lr is not far too low or high")
    return Check(
        "overfit", "overfit one batch", status, value,
        "with no dropout, no augmentation and the same few images every step, any working network memorises them "
        "('mugs them up', the notes' word for overfitting) within a few hundred steps; here overfitting is the "
        "sign of health",
        advice,
        {"images": n, "steps": len(losses), "reached_at": reached, "lr": lr, "max_steps": max_steps,
         "final_loss": last["loss"], "final_acc": last["acc"], "dropout_layers_off": dropouts}, losses)


# -- a short run: does it learn something that carries to held-out images? --------------------------------------

def check_learning(p: Patient, lr: float, steps: int = LEARN_STEPS) -> Check:
    """Train a copy for `steps` mini-batches (linear warm-up over the first quarter) and score held-out images."""
    model = p.copy().train()
    warm = max(1, steps // 4)
    lrs = [lr * (0.1 + 0.9 * min(1.0, t / warm)) for t in range(steps)]
    step = ramp_step(model, p.data, p.config, p.device, lrs)
    losses = []
    for t in range(steps):
        if t % step.steps == 0:  # cycle epochs when the run is longer than one
            step.new_epoch()
        step()
        losses.append({"step": t + 1, "loss": float(step.last_loss[0])})
    d = p.data
    split = "val" if len(d.y_val) else "test"
    xs, ys = (d.x_val, d.y_val) if split == "val" else (d.x_test, d.y_test)
    finite = all(math.isfinite(r["loss"]) for r in losses)
    held_loss, acc = evaluate(model, xs, ys, d, p.config.eval_batch_size) if finite else (float("nan"), 0.0)
    chance = 100.0 / d.classes
    lift = (acc - chance) / (100.0 - chance)
    status = PASS if lift >= LEARN_PASS else WARN if lift >= LEARN_WARN else FAIL
    if not finite:
        status = FAIL
    k = max(1, steps // 10)
    first = sum(r["loss"] for r in losses[:k]) / k
    last = sum(r["loss"] for r in losses[-k:]) / k
    advice = (f"{split} accuracy climbs well above chance after {steps} steps: the network learns what carries to "
              "new images" if status == PASS else
              f"{split} accuracy stays near chance ({chance:.0f} %): if the network can overfit one batch but not "
              "this, the labels may not belong to their images (shuffled or misaligned) — look at the images with "
              "their labels; else see the gradient and lr checks")
    return Check(
        "learning", f"short run ({steps} steps)", status,
        f"{split} accuracy {acc:.1f} % (chance {chance:.0f} %) after {steps} steps at lr {lr:.3g}; training loss "
        f"{first:.3g} -> {last:.3g}",
        "the notes' answer to 'how do we verify the model is learning?' is validation: accuracy on images the "
        "network never trained on must rise; memorising the training images alone is not learning",
        advice,
        {"split": split, "accuracy": acc, "held_out_loss": held_loss, "chance": chance, "lift": lift, "lr": lr,
         "steps": steps, "loss_first": first, "loss_last": last}, losses)


# -- one epoch (optional) ------------------------------------------------------------------------------------------

def check_epochs(p: Patient, splits: Any, epochs: int) -> Check:
    """Train a copy with the config for `epochs` epochs (trainer, no run store): train vs validation, verdict."""
    from convladder.train.loop import train
    from convladder.train.models import handing_over
    from convladder.train.recorder import TrainingDiverged
    from convladder.train.result import potential_shown

    if epochs < 1:
        return Check("epoch", "one epoch", SKIP, "not run (--epochs 1 runs it)", "", "")
    cfg = p.config.replace(epochs=epochs, seeds=1, model_spec=None, init="torch", model_args=None)
    try:
        with handing_over(p.copy()) as ref:
            result = train(cfg.replace(model=ref), store=None, data=splits)
    except TrainingDiverged as exc:
        return Check("epoch", f"{epochs} epoch(s) of training", FAIL, f"the loss diverged: {exc}",
                     "a run that diverges learns nothing", "lower the lr (see the lr check)")
    f = result.final
    held = f.get("val_acc") if f.get("val_acc") is not None else f.get("test_acc")
    chance = 100.0 / p.classes
    lift = ((held or 0.0) - chance) / (100.0 - chance)
    status = FAIL if lift < LEARN_WARN else WARN if result.verdict == "overfitting" else PASS
    gap = result.gap
    reading = {
        "still improving": "test accuracy is still rising: train longer",
        "underfitting": (f"train accuracy is below the target {result.target:g} %: after {epochs} epoch(s) that is "
                         "expected — the full run's epochs and the schedule close it; if it stays, add capacity"),
        "overfitting": ("'a disease called overfitting': even a full fit of the training set would not reach the "
                        "target — add small dropout or augmentation (one change at a time)"),
        "healthy": "train and test are close and the target is within reach",
    }.get(result.verdict or "", "")
    return Check(
        "epoch", f"{epochs} epoch(s) of training", status,
        f"train {f.get('train_acc') or 0:.2f} %, val {f.get('val_acc') or float('nan'):.2f} %, test "
        f"{f.get('test_acc') or 0:.2f} %; gap {gap if gap is not None else float('nan'):+.2f}, potential "
        f"{potential_shown(result.potential, f.get('train_acc'))}; verdict {result.verdict}",
        "the notes read a run by its train/test gap and its potential = test + (100 - train): a small gap is "
        "preferred, and a potential below the target is the disease to treat",
        reading,
        {"train_acc": f.get("train_acc"), "val_acc": f.get("val_acc"), "test_acc": f.get("test_acc"), "gap": gap,
         "potential": result.potential, "verdict": result.verdict, "epochs": epochs,
         "wall_time_s": result.wall_time_s, "train_acc_source": result.train_acc_source})
