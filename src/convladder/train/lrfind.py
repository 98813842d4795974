"""LR range test: raise the learning rate exponentially over mini-batches and watch the loss.

The loss is smoothed (bias-corrected exponential average); the test stops when the smoothed loss exceeds
4x the best so far (divergence) or becomes NaN/inf. The model's weights and BN buffers are put back
afterwards, so a finder run never changes the network it was given. Two suggestions:

- valley (the default suggestion): the lr two-thirds of the way down the longest run of falling loss
  (fastai's `valley`); robust on noisy curves;
- steepest: where the smoothed loss falls fastest against log(lr), before the minimum.

For `onecycle` the suggestion is the max lr. `suggest_lr(config)` is what `train --lr auto` calls.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from convladder.errors import UserError

SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class LRFindResult:
    """The curve and the suggestions (lrs ascending; losses raw and smoothed, one per step taken)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    valley_lr: float | None
    steepest_lr: float | None
    min_loss_lr: float | None
    suggested_lr: float | None
    suggestion: str  # which rule gave suggested_lr
    stopped: str  # why the ramp ended: 'max lr reached' / 'diverged (...)'
    min_lr: float = 1e-5
    max_lr: float = 1.0
    steps: int = 100
    info: dict[str, Any] = field(default_factory=dict)  # model, params, optimizer, batch size, dataset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (lr, loss, sm) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
            writer.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}"])
        return buf.getvalue()


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`steps` learning rates from min_lr to max_lr, evenly spaced in log(lr)."""
    if not (0 < min_lr < max_lr) or not math.isfinite(max_lr):
        raise UserError(f"lr-find needs 0 < --min < --max (got {min_lr:g}, {max_lr:g})")
    if steps < 5:
        raise UserError(f"lr-find needs at least 5 steps (got {steps})")
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def ramp(take, lrs: list[float], *, beta: float = 0.98, diverge: float = 4.0
         ) -> tuple[list[float], list[float], list[float], str]:
    """The ramp's bookkeeping: `take(i, lr)` trains one step at `lr` and returns its loss (a float).

    Smooths the loss (bias-corrected exponential average) and stops at NaN/inf or when the smoothed loss
    exceeds `diverge` x its best. Returns (lrs taken, raw losses, smoothed losses, why it stopped).
    """
    taken: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best, stopped = 0.0, math.inf, "max lr reached"
    for i, lr in enumerate(lrs):
        value = take(i, lr)
        if not math.isfinite(value):
            stopped = f"diverged (loss {value} at lr {lr:.3g})"
            break
        avg = beta * avg + (1 - beta) * value
        sm = avg / (1 - beta ** (i + 1))  # bias correction: early values are not pulled towards 0
        taken.append(lr)
        raw.append(value)
        smooth.append(sm)
        best = min(best, sm)
        if i > 0 and sm > diverge * best:
            stopped = f"diverged (smoothed loss {sm:.3g} > {diverge:g}x best {best:.3g} at lr {lr:.3g})"
            break
    return taken, raw, smooth, stopped


def range_test(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches, lrs: list[float], *,
               beta: float = 0.98, diverge: float = 4.0, loss_fn=None) -> tuple[list[float], list[float], list[float], str]:
    """The ramp for any model and optimiser: one step per lr on the next batch from `batches` ((x, y) pairs).

    Restores the model's state_dict (weights and BN buffers) and the optimiser's state before returning,
    whatever happens. Returns (lrs taken, raw losses, smoothed losses, why it stopped).
    """
    loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m.logits(x) if hasattr(m, "logits") else m(x), y))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    was_training = model.training

    def take(i: int, lr: float) -> float:
        x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(model, x, y)
        value = float(loss.detach())  # one sync per step is fine: the test is ~100 steps
        if math.isfinite(value):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return value

    try:
        model.train()
        return ramp(take, lrs, beta=beta, diverge=diverge)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's valley: the longest strictly falling subsequence of the loss; 2/3 of the way along it."""
    n = len(losses)
    if n < 3:
        return None
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return float(lrs[min(n - 1, max(0, start + int(third) + int(third / 2)))])


def steepest(lrs: list[float], losses: list[float]) -> float | None:
    """The lr where the loss falls fastest against log(lr), looking only before its minimum."""
    stop = min(range(len(losses)), key=losses.__getitem__) if losses else 0
    if stop < 2:
        return None
    logs = [math.log(lr) for lr in lrs]
    slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, stop)]
    i = min(range(len(slopes)), key=slopes.__getitem__)
    return float(lrs[i + 1]) if slopes[i] < 0 else None


def ramp_step(model: torch.nn.Module, data: Any, config: Any, device: torch.device, lrs: list[float], *,
              channels_last: bool = False) -> Any:
    """The training step of `convladder train` (train/step.py) with its schedule replaced by `lrs`, one per step,
    momentum (SGD) or beta1 (Adam) held at the config's: the LR range test's ramp, and the doctor's probes'.

    Seeds the global RNG (dropout) and the step's generator (batch order, augmentation) with config.seed, so
    each ramp is the same whatever ran before it.
    """
    from convladder.train.optim import schedule_tables
    from convladder.train.step import TrainStep

    torch.manual_seed(config.seed)
    momentum = schedule_tables(config.replace(schedule="none", epochs=1), 1)[1][0]
    gen = torch.Generator(device=device).manual_seed(config.seed)
    return TrainStep(model, data, config, device, [gen], lrs + lrs[-1:], [momentum] * (len(lrs) + 1),
                     channels_last=channels_last)


def suggest_lr(config, *, min_lr: float = 1e-5, max_lr: float = 1.0, steps: int = 100, data=None,
               beta: float = 0.98, diverge: float = 4.0) -> LRFindResult:
    """The LR range test for a TrainConfig: its model, data, batch size, optimiser and augmentation.

    Trains with the training step of `convladder train` (train/step.py) on a model built for the test and
    thrown away afterwards. Deterministic for a given config.seed. Writes nothing. `data`: a DataSplits-like
    object (tests).
    """
    from convladder.train import runenv
    from convladder.train.epochs import channels_last_for
    from convladder.train.runner import begin, load_data

    config, device = begin(config, words=False)  # lr: auto is what this test finds
    lrs = lr_schedule(min_lr, max_lr, steps)
    setup = runenv.prepare(config, load_data(config, data), device)
    data, model = setup.data, setup.model
    channels_last = channels_last_for(config, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = ramp_step(model, data, config, device, lrs, channels_last=channels_last)
    model.train()

    def take(i: int, lr: float) -> float:
        if i % step.steps == 0:  # cycle epochs when the ramp is longer than one epoch
            step.new_epoch()
        step()
        return float(step.last_loss[0])  # one sync per step is fine: the test is ~100 steps

    taken, raw, smooth, stopped = ramp(take, lrs, beta=beta, diverge=diverge)
    return analyse(taken, raw, smooth, stopped, min_lr, max_lr, steps,
                   info={"model": config.model, "params": setup.params, "optimizer": config.optimizer,
                         "batch_size": config.batch_size, "dataset": config.dataset, "seed": config.seed,
                         "device": str(device), "schedule": config.schedule})


def analyse(lrs: list[float], raw: list[float], smooth: list[float], stopped: str, min_lr: float, max_lr: float,
            steps: int, info: dict[str, Any] | None = None) -> LRFindResult:
    """Suggestions from a finished ramp; valley first, then steepest, then min-loss lr / 10."""
    v, s = valley(lrs, smooth), steepest(lrs, smooth)
    m = float(lrs[min(range(len(smooth)), key=smooth.__getitem__)]) if smooth else None
    if v is not None:
        chosen, rule = v, "valley"
    elif s is not None:
        chosen, rule = s, "steepest"
    elif m is not None:
        chosen, rule = m / 10, "min-loss lr / 10"
    else:
        chosen, rule = None, "none (the loss diverged at once: lower --min)"
    return LRFindResult(lrs, raw, smooth, v, s, m, chosen, rule, stopped, min_lr, max_lr, steps, info or {})


def sparkline(values: list[float], width: int = 60, top: float | None = None) -> str:
    """The curve as one line of block characters (resampled to `width`, scaled between min and `top`).

    `top` clips the divergence spike, which would otherwise flatten the interesting part to one level.
    """
    if not values:
        return ""
    n = len(values)
    picked = [values[min(n - 1, int(i * n / width))] for i in range(min(width, n))]
    low = min(picked)
    high = max(picked) if top is None else max(min(top, max(picked)), low)
    picked = [min(v, high) for v in picked]
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))] for v in picked)


def marker_line(lrs: list[float], marks: dict[str, float | None], width: int = 60) -> str:
    """A line under the sparkline with a letter where each suggested lr falls."""
    n = min(width, len(lrs))
    line = [" "] * n
    if not lrs:
        return ""
    lo, hi = math.log(lrs[0]), math.log(lrs[-1])
    for letter, lr in marks.items():
        if lr is not None and hi > lo:
            line[min(n - 1, max(0, round((math.log(lr) - lo) / (hi - lo) * (n - 1))))] = letter
    return "".join(line).rstrip()


def format_result(res: LRFindResult) -> str:
    """Text report: sparkline of the smoothed loss with v/s markers, the suggestions, why it stopped."""
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    lines = [f"lr range test: {len(res.lrs)} steps from {res.min_lr:g}, {res.stopped}",
             f"loss  {sparkline(res.smoothed, top=_start_level(res.smoothed))}",
             f"      {marker_line(res.lrs, {'s': res.steepest_lr, 'v': res.valley_lr})}",
             f"lr    {f(res.lrs[0] if res.lrs else None)} .. {f(res.lrs[-1] if res.lrs else None)} (log scale)",
             f"valley {f(res.valley_lr)}   steepest {f(res.steepest_lr)}   min loss at {f(res.min_loss_lr)}",
             f"suggested lr: {f(res.suggested_lr)} ({res.suggestion})"]
    return "\n".join(lines)


def _start_level(smooth: list[float]) -> float | None:
    """The highest smoothed loss before the minimum (where the plot's top should be)."""
    if not smooth:
        return None
    stop = min(range(len(smooth)), key=smooth.__getitem__)
    return max(smooth[: stop + 1])


def write_result(res: LRFindResult, out: str | Path) -> tuple[Path, Path]:
    """`out`.json (curve + suggestions) and `out`.csv (step, lr, loss, smoothed_loss), written atomically."""
    from convladder.fileio import atomic_write_bytes

    base = Path(out).expanduser()
    if base.suffix in (".json", ".csv"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = base.with_suffix(".json"), base.with_suffix(".csv")
    atomic_write_bytes(json_path, (json.dumps(res.to_dict(), indent=1) + "\n").encode())
    atomic_write_bytes(csv_path, res.to_csv().encode())
    return json_path, csv_path
