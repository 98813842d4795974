"""The training step as one function, and the evaluation step.

`TrainStep()` does one optimisation step: pick the batch, augment, forward, loss, backward, optimiser,
schedule, and add the batch's loss and correct count to sums on the device. Everything it reads or writes
lives in tensors that exist before the first step (the epoch's batch order and augmentation noise, the step
counters, the learning rate and momentum, the sums), so:

- no step synchronises with the host: the sums are read once per epoch (`read_epoch`), and a NaN/inf loss
  shows up there as a non-finite sum;
- shapes stay the same within an epoch: every batch has `batch_size` images (the epoch's remainder is left
  out, see `DeviceData.epoch_order`), and the image size changes at most once per run (config.crop: the
  first epochs train on central crops, eagerly; the step runner captures at the first whole-image step);
- on CUDA the whole step is captured once as a CUDA graph and replayed (`StepRunner`). Random numbers work
  under capture because augmentation reads a noise buffer drawn from the run's generator once per epoch,
  outside the graph, and dropout draws from the default CUDA generator, which graphs advance on every replay.

One `TrainStep` trains one model, or N independent copies packed into one batched model
(`train/batched.py`): copy i reads its own batches and noise (drawn from its own generator), and its loss is
its own mean, summed over copies, so each copy's gradient is exactly what it would be alone.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from convladder.errors import UserError
from convladder.train.augment import AugmentParams, augment_from, centre_crop, draw_noise, noise_rows
from convladder.train.config import TrainConfig
from convladder.data.normalise import to_unit
from convladder.train.device_data import DeviceData
from convladder.train.ema import WeightEMA
from convladder.train.lookahead import Lookahead
from convladder.train.optim import bind_tensors, follow_lr, make_optimizer

CUDA_EVAL_BATCH = 10000  # on CUDA, evaluation batches are at least this large (one launch per batch matters there)
WARMUP_STEPS = 3  # eager steps before capture (cuDNN picks its kernels, the allocator settles), as torch's docs do


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast of `precision` (config `precision`: auto, fp32, bf16) on `device`.

    auto: bf16 on CUDA (no loss scaling needed), none elsewhere; bf16: also on the CPU, where it pays off only
    with AMX (bf16 matrix units: Intel Xeon 4th generation and later); fp32: none. The weights stay fp32 either
    way. The cast-weight cache is off: a CUDA graph must cast inside the captured step, not reuse a cache entry.
    """
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 where `autocast` casts (CUDA unless fp32; the CPU with bf16), else None."""
    if precision == "fp32" or device.type not in ("cuda", "cpu") or (device.type == "cpu" and precision != "bf16"):
        return None
    return torch.bfloat16


def eval_precision(precision: str, device: torch.device) -> str:
    """Evaluation's precision: the training step's on CUDA, fp32 on the CPU, where evaluation is a small part of
    the time and the accuracy is then that of the fp32 weights that are saved and exported."""
    return precision if device.type == "cuda" else "fp32"


class TrainStep:
    """One training step of `model` (`copies` > 1: a batched model whose `logits` is (B, copies, classes))."""

    def __init__(self, model: torch.nn.Module, data: DeviceData, config: TrainConfig, device: torch.device,
                 generators: list[torch.Generator], lr_table: list[float], momentum_table: list[float], *,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None, channels_last: bool = False,
                 shard: tuple[int, int] = (0, 1), teacher: Any = None):
        # shard (r, n): a data-parallel replica (train/parallel.py) that takes images r, r+n, ... of each batch
        # teacher: config teacher's network (train/distill.Teacher), whose soft targets join the loss
        self.teacher = teacher
        self.model, self.data, self.config, self.device = model, data, config, device
        self.generators = generators
        self.copies = len(generators)
        self.shard = shard
        self.batch_size = config.batch_size // shard[1]
        self.steps = data.steps_per_epoch(config.batch_size)
        self.forward = forward or model.logits
        self.channels_last = channels_last
        if config.precision == "bf16" and device.type not in ("cuda", "cpu"):
            raise UserError(f"precision=bf16 runs on cuda and cpu, not {device.type}: use precision=auto or fp32")
        self.aug = AugmentParams.from_config(config)  # None: no augmentation asked for
        f32 = dict(device=device, dtype=torch.float32)
        i64 = dict(device=device, dtype=torch.int64)
        self.lr_host = list(lr_table)
        self.lr_table = torch.tensor(lr_table, **f32)
        self.momentum_table = torch.tensor(momentum_table, **f32)
        self.lr = self.lr_table[0].clone()
        self.momentum = self.momentum_table[0].clone()
        self.optimizer = make_optimizer(model, config, self.lr, self.momentum, capturable=device.type == "cuda")
        # config.ema: the weights' moving average, updated in `update` (data-parallel: replica 0's step only)
        self.ema = WeightEMA(model, config.ema) if config.ema and shard[0] == 0 else None
        # config.lookahead: the slow weights (train/lookahead.py), synced in `update`; data-parallel: replica 0's
        # step only, as its optimiser is the one that steps and the replicas copy its weights after every step
        self.lookahead = (Lookahead(model, config.lookahead, config.lookahead_alpha)
                          if config.lookahead and shard[0] == 0 else None)
        n, s, b = self.copies, self.steps, self.batch_size
        self.order = torch.zeros(n, s, b, **i64)  # this epoch's batches, per copy
        self.noise = torch.zeros(n, s, noise_rows(self.aug), b, **f32) if self.aug is not None else None
        self.t = torch.zeros((), **i64)  # steps taken in the run (the schedule's row)
        self.k = torch.zeros((), **i64)  # steps taken in this epoch (the batch's row)
        self.loss_sum = torch.zeros(n, **f32)
        self.correct = torch.zeros(n, **i64)
        self.last_loss = torch.zeros(n, **f32)  # the latest step's loss per copy (read by the LR range test)
        self.crop = 0  # this epoch's crop size (0: whole images); set by new_epoch

    # -- outside the step (once per epoch) ---------------------------------------------------------------
    def draw_epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One epoch's batches (steps, batch) of whole batches (config.batch_size) and their augmentation noise
        (steps, rows, batch), drawn from `generator`."""
        batch = self.config.batch_size
        order = self.data.epoch_order(batch, generator)
        noise = draw_noise(self.aug, batch, generator, self.device, (self.steps,)) if self.noise is not None else None
        return order, noise

    def new_epoch(self, crop: int = 0, drawn: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None) -> None:
        """Draw the epoch's batch order and augmentation noise from each copy's generator; zero the sums.

        crop > 0: this epoch's steps train on the central crop x crop pixels of each augmented image.
        drawn: each copy's `draw_epoch` already made (data-parallel replicas share one draw; each keeps its shard).
        """
        self.crop = crop
        r, n = self.shard
        for i, gen in enumerate(self.generators):
            order, noise = drawn[i] if drawn is not None else self.draw_epoch(gen)
            self.order[i].copy_(order[:, r::n])
            if self.noise is not None:
                self.noise[i].copy_(noise[..., r::n])
        self.k.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()

    def set_position(self, t: int) -> None:
        """Continue the schedule at step `t` (resume)."""
        self.t.fill_(t)
        self.lr.copy_(self.lr_table[t])
        self.momentum.copy_(self.momentum_table[t])

    def read_epoch(self) -> tuple[list[float], list[float], int]:
        """(mean train loss per copy, train accuracy % per copy, images per copy) of the steps since new_epoch.

        The only read from the device in an epoch; assumes `steps` steps were taken.
        """
        seen = self.steps * self.batch_size
        loss, correct = torch.stack([self.loss_sum, self.correct.to(torch.float32)]).tolist()
        return [v / seen for v in loss], [100.0 * c / seen for c in correct], seen

    def lr_at(self, t: int) -> float:
        """The lr of step t, from the host's copy of the table (no device read)."""
        return self.lr_host[min(t, len(self.lr_host) - 1)]

    # -- the step ------------------------------------------------------------------------------------------
    def __call__(self) -> None:
        self.backward()
        self.update()

    def backward(self) -> None:
        """The batch's gradients in each parameter's .grad, its loss and correct count added to the sums."""
        n, b = self.copies, self.batch_size
        row = self.k.view(1)
        idx = self.order.index_select(1, row).view(n, b)  # (copies, batch)
        x = to_unit(self.data.x_train[idx.view(-1)])  # (copies * batch, C, H, W), copy-major
        y = self.data.y_train[idx]
        if self.aug is not None:
            u = self.noise.index_select(1, row).view(n, -1, b).transpose(0, 1).reshape(-1, n * b)
            x = augment_from(x, self.aug, u)
        if self.crop:  # after the warp, so the crop sees the digit where the warp put it (no extra shift)
            x = centre_crop(x, self.crop)
        x = self.data.normalise(x)
        taught = None
        if self.teacher is not None:  # the teacher sees exactly this batch, each copy's images in turn
            with autocast(self.device, self.config.precision):
                taught = self.teacher.logits(x)
        if n > 1:  # copy i's images on channel group i
            c, h, w = x.shape[1:]
            x = x.view(n, b, c, h, w).transpose(0, 1).reshape(b, n * c, h, w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.precision):
            logits = self.forward(x).float()
        if n == 1:
            per_copy = F.cross_entropy(logits, y[0], label_smoothing=self.config.label_smoothing).view(1)
            hits = (logits.detach().argmax(1) == y[0]).sum().view(1)
        else:  # each copy's mean loss, summed: copy i's gradient is its own, as if trained alone
            flat = F.cross_entropy(logits.reshape(b * n, -1), y.t().reshape(-1), reduction="none",
                                   label_smoothing=self.config.label_smoothing)
            per_copy = flat.view(b, n).mean(0)
            hits = (logits.detach().argmax(2) == y.t()).sum(0)
        if taught is not None:  # (1 - w) * CE + w * T^2 KL, per copy (train/distill.py)
            per_copy = self.teacher.loss(per_copy, logits, taught)
        loss = per_copy[0] if n == 1 else per_copy.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        per_copy = per_copy.detach()
        self.last_loss.copy_(per_copy)
        self.loss_sum.add_(per_copy * b)
        self.correct.add_(hits)

    def update(self) -> None:
        """The optimiser's step from the gradients, then the schedule's next lr and momentum; the next batch."""
        follow_lr(self.optimizer, self.lr)  # bn_lr: a torch optimiser's scaled group's lr tensor (no-op otherwise)
        self.optimizer.step()
        if self.lookahead is not None:  # before the EMA: the average takes the weights the model holds after a sync
            self.lookahead.update(self.t)
        if self.ema is not None:
            self.ema.update(self.t)  # self.t: optimiser steps before this one (the EMA's warm-up reads it)
        # the schedule: the next step's lr and momentum, read on the device from the table
        self.t += 1
        self.lr.copy_(self.lr_table.index_select(0, self.t.view(1)).view(()))
        self.momentum.copy_(self.momentum_table.index_select(0, self.t.view(1)).view(()))
        self.k += 1

    def state(self) -> dict:
        """Optimiser state (the schedule's position is the epoch count; generators are saved by the caller)."""
        return self.optimizer.state_dict()

    def load_state(self, optimizer_state: dict) -> None:
        self.optimizer.load_state_dict(optimizer_state)
        # load_state_dict puts the saved hyperparameters into the groups: point them at the step's tensors again
        bind_tensors(self.optimizer, self.lr, self.momentum)


class StepRunner:
    """Calls a `TrainStep`: eagerly, or on CUDA as one captured CUDA graph replayed every step.

    `mode`: 'eager', or 'graph' (CUDA only): the first WARMUP_STEPS calls run eagerly on a side stream (they
    are real training steps), then the step is captured once and every later call replays it. If capture
    raises, training goes on eagerly after a one-line notice on stderr. Steps on crops (config.crop) always
    run eagerly; warm-up and capture begin with the first whole-image step. `warmup_s`: time of the first
    call, or of the warm-up steps plus capture.
    """

    def __init__(self, step: TrainStep, mode: str = "eager", notice: Callable[[str], None] | None = None, *,
                 stream: torch.cuda.Stream | None = None, warmed: bool = False):
        # stream, warmed: a caller that already warmed this step up on `stream` (train/batched.py's fallback)
        # has the next call capture at once
        self.step, self.mode = step, mode
        self.notice = notice or (lambda text: print(text, file=sys.stderr, flush=True))
        self.graph = None
        self.calls = WARMUP_STEPS if warmed else 0  # calls on the graph path (warm-up, capture, replays)
        self._eager_calls = 0
        self.warmup_s = 0.0
        self._stream = stream
        self._t0: float | None = time.perf_counter() if warmed else None

    def __call__(self) -> None:
        if self.mode != "graph" or self.step.crop:
            # config.crop's epochs run eagerly: the graph is captured on whole images, the size the rest of the
            # run keeps (a graph's shapes are fixed)
            self._eager()
            return
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if self.calls <= WARMUP_STEPS:
            self._eager_on_side_stream()
            return
        entry_stream = torch.cuda.current_stream()
        try:
            self._capture()
        except Exception as exc:  # noqa: BLE001 - any capture failure: go on eagerly
            self.graph = None
            self.mode = "eager"
            torch.cuda.set_stream(entry_stream)  # a raising capture_end can skip torch's own stream restore
            torch.cuda.synchronize()
            self.notice(f"CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                        "training goes on eagerly")
            self.step()
            self.warmup_s = time.perf_counter() - self._t0
            return
        self.graph.replay()
        torch.cuda.synchronize()
        self.warmup_s = time.perf_counter() - self._t0

    def _eager(self) -> None:
        self._eager_calls += 1
        if self._eager_calls > 1:
            self.step()
            return
        t0 = time.perf_counter()
        self.step()
        self._sync()
        self.warmup_s = time.perf_counter() - t0

    def _sync(self) -> None:
        if self.step.device.type == "cuda":
            torch.cuda.synchronize()

    def _eager_on_side_stream(self) -> None:
        # torch's docs: warm up on a side stream before capture (the same stream then captures)
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            self.step()
        torch.cuda.current_stream().wait_stream(self._stream)

    def _capture(self) -> None:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # grads set to None before capture: backward then allocates them from the graph's own pool
        self.step.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, stream=self._stream):
            self.step()  # recorded, not run: the replay below does this step
        self.graph = graph

    @property
    def captured(self) -> bool:
        return self.graph is not None


def step_mode(config: TrainConfig, device: torch.device) -> str:
    """'graph' on CUDA unless switched off (cuda_graphs=off) or the forward is torch.compile'd; else 'eager'."""
    setting = getattr(config, "cuda_graphs", "auto")
    if device.type != "cuda" or setting == "off" or config.compile:
        return "eager"
    return "graph"


def eval_batch_size(batch_size: int, device: torch.device) -> int:
    """On CUDA, evaluation batches are at least CUDA_EVAL_BATCH images (one launch per batch matters there)."""
    return max(batch_size, CUDA_EVAL_BATCH) if device.type == "cuda" else batch_size


def model_inputs(x: torch.Tensor, data: DeviceData, batch_size: int, channels_last: bool = False,
                 copies: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, normalised batch) over uint8 images `x`; with copies > 1 each copy's channel group gets the batch."""
    for start in range(0, len(x), batch_size):
        xb = data.normalise(to_unit(x[start:start + batch_size]))
        if copies > 1:
            xb = xb.repeat(1, copies, 1, 1)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield start, xb


@torch.no_grad()  # not inference_mode: the weights' format switch must give ordinary tensors back to training
def evaluate_copies(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: DeviceData, batch_size: int,
                    channels_last: bool = False, copies: int = 1, precision: str = "auto") -> list[tuple[float, float]]:
    """[(mean loss, accuracy %)] per copy over (x uint8, y) in large batches; one device read at the end.

    With copies > 1 every copy sees the same images (stacked on its channel group).
    """
    if len(y) == 0:
        return [(float("nan"), float("nan"))] * copies
    was_training = model.training
    model.eval()
    batch_size = eval_batch_size(batch_size, x.device)
    # On the CPU, inference is faster channels_last (15k tiny8k images: 0.65 s vs 1.8 s) while training is
    # slower, so the weights switch format for evaluation only; their values do not change.
    switch = x.device.type == "cpu" and not channels_last
    if switch:
        model.to(memory_format=torch.channels_last)
    loss = torch.zeros(copies, device=x.device)
    correct = torch.zeros(copies, device=x.device, dtype=torch.int64)
    try:
        for start, xb in model_inputs(x, data, batch_size, channels_last or switch, copies):
            yb = y[start:start + batch_size]
            with autocast(x.device, eval_precision(precision, x.device)):
                logits = model.logits(xb).float()
            if copies == 1:
                logits = logits.unsqueeze(1)  # (N, copies, classes) either way
            nb = len(yb)
            loss += F.cross_entropy(logits.reshape(nb * copies, -1), yb.repeat_interleave(copies),
                                    reduction="none").view(nb, copies).sum(0)
            correct += (logits.argmax(2) == yb.view(-1, 1)).sum(0)
    finally:
        if switch:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    pairs = torch.stack([loss, correct.to(loss.dtype)]).tolist()
    return [(pairs[0][i] / len(y), 100.0 * pairs[1][i] / len(y)) for i in range(copies)]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor, data: DeviceData, batch_size: int,
                   channels_last: bool = False, copies: int = 1, precision: str = "auto") -> int:
    """Precise BN: recompute every BatchNorm's running mean/var as the plain average over (x uint8) in batches.

    During training the running statistics are a moving average over augmented images with dropout on, and over
    weights that kept changing; the test sees clean images, no dropout and the final weights. Here the model is
    in eval mode (dropout off, also a functional `F.dropout(training=self.training)`) except its BatchNorm layers,
    which see the clean images with the final weights. Returns the number of BatchNorm layers recalibrated.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or len(x) == 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()  # in place: a captured CUDA graph keeps pointing at the same buffers
        m.momentum = None  # cumulative average over the batches
        m.train()
    try:
        for _, xb in model_inputs(x, data, eval_batch_size(batch_size, x.device), channels_last, copies):
            with autocast(x.device, eval_precision(precision, x.device)):
                model.logits(xb)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(bns)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: DeviceData, batch_size: int,
             channels_last: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy %) of one model over (x uint8, y)."""
    return evaluate_copies(model, x, y, data, batch_size, channels_last, 1)[0]
