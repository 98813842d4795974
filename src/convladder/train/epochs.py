"""The epoch runner: epochs of `TrainStep`s, then evaluation, for one model or N batched copies.

`EpochRunner` owns the model, the step (eager or a replayed CUDA graph), one generator per copy and
the per-copy views of the state (weights, resume state) that the recorder saves. `train_batched` trains N
seeds as one batched model (or as N models on parallel CUDA streams, `batched.StreamsEpochRunner`, which has
the same interface) and records each copy as its own run, exactly like N single runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from convladder.train.config import TrainConfig, crop_at
from convladder.train.optim import schedule_tables
from convladder.train.progress import Progress, recipe_text
from convladder.train.step import StepRunner, TrainStep, autocast_dtype, evaluate_copies, recalibrate_bn, step_mode

PAUSE_ENV = "CONVLADDER_TEST_PAUSE_AFTER_EPOCH"  # test hook: after saving epoch N, touch $..._MARKER and sleep


def pause_hook(epoch: int) -> None:
    """Tests kill the process here (SIGKILL between epochs) to check that resume reproduces the run."""
    if os.environ.get(PAUSE_ENV) == str(epoch):
        marker = os.environ.get(PAUSE_ENV + "_MARKER")
        if marker:
            open(marker, "w").close()
        time.sleep(600)


def channels_last_for(config: TrainConfig, device: torch.device) -> bool:
    return config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")


class EpochRunner:
    """Trains `model` (a single network, or a BatchedNet of len(seeds) copies) epoch by epoch."""

    def __init__(self, model: torch.nn.Module, data, config: TrainConfig, device: torch.device, seeds: list[int],
                 notice=None, teacher: Any = None):
        # teacher: config teacher's frozen network (train/distill.Teacher), shared by every step and replica
        self.config, self.data, self.device, self.seeds = config, data, device, seeds
        self.copies = len(seeds)
        self.batched = self.copies > 1
        self.channels_last = channels_last_for(config, device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # static shapes: cuDNN's fastest kernel per layer, picked once
        self.steps = data.steps_per_epoch(config.batch_size)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        lrs, moms = schedule_tables(config, self.steps)
        if config.data_parallel > 1:
            from convladder.train.parallel import ParallelStep, check_data_parallel

            check_data_parallel(model, config, device)
            self.step = ParallelStep(model, data, config, device, self.generators[0], lrs, moms, config.data_parallel,
                                     teacher=teacher)
        else:
            forward = torch.compile(model.logits) if config.compile else None
            if teacher is not None and self.channels_last:
                teacher.use_channels_last()
            self.step = TrainStep(model, data, config, device, self.generators, lrs, moms, forward=forward,
                                  channels_last=self.channels_last, teacher=teacher)
        self.runner = StepRunner(self.step, step_mode(config, device), notice)
        # config.ema: the weights' average (train/ema.py), updated by the step; evaluated beside the live model,
        # and the model that is selected, saved and reported (data parallel: replica 0's step keeps it)
        self.ema = getattr(self.step, "main", self.step).ema
        # config.lookahead: the slow weights (train/lookahead.py), saved in resume.pt beside the live ones
        self.lookahead = getattr(self.step, "main", self.step).lookahead

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model whose accuracies are reported and whose weights are saved: the EMA's when config.ema is on."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def warmup_s(self) -> float:
        return self.runner.warmup_s

    # -- one epoch ----------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, progress: Progress) -> tuple[list[dict[str, Any]], list[bool], float]:
        """Train one epoch; return per-copy rows (lr, train loss/acc), whether each loss is finite, and the start time."""
        progress.epoch_start(epoch, self.config.epochs, self.steps)
        te = time.perf_counter()
        self.model.train()
        step, run = self.step, self.runner
        step.new_epoch(crop_at(self.config, epoch))
        drive_steps(run, self.steps, step, self.config.batch_size, progress)
        losses, accs, seen = step.read_epoch()  # the epoch's one read from the device
        self.recalibrate_bn(epoch)
        return epoch_rows(epoch, epoch_lrs(step, epoch, self.steps), losses, accs, seen, te)

    def recalibrate_bn(self, epoch: int) -> None:
        """Precise BN after the last epoch's steps, on the first `precise_bn` training images (before evaluation,
        so the last epoch's val/test accuracies, the saved weights and the result are the recalibrated model's)."""
        n = min(self.config.precise_bn, self.data.n_train)
        if n and epoch == self.config.epochs:
            with self.all_cores():
                for model in [self.model] + ([self.ema.model] if self.ema is not None else []):
                    recalibrate_bn(model, self.data.x_train[:n], self.data, self.config.eval_batch_size,
                                   self.channels_last, self.copies, self.config.precision)

    def evaluate_into(self, rows: list[dict[str, Any]], epoch: int, te: float) -> None:
        """Add val/test loss and accuracy (on evaluation epochs) and the epoch's time to each copy's row."""
        self.add_evaluations(rows, epoch)
        finish_rows(rows, te)

    def add_evaluations(self, rows: list[dict[str, Any]], epoch: int) -> None:
        """Add val/test loss and accuracy to each copy's row on evaluation epochs."""
        c, d = self.config, self.data
        if epoch % c.eval_every == 0 or epoch == c.epochs:
            # with ema: val_*/test_* are the EMA weights' (what selection, saving and the result read), live_* the
            # live weights'; without, the keys and numbers are as before
            models = [("", self.eval_model)] + ([("live_", self.model)] if self.ema is not None else [])
            for prefix, model in models:
                if len(d.y_val):
                    for row, (loss, acc) in zip(rows, self._evaluate(d.x_val, d.y_val, model)):
                        row[prefix + "val_loss"], row[prefix + "val_acc"] = loss, acc
                for row, (loss, acc) in zip(rows, self._evaluate(d.x_test, d.y_test, model)):
                    row[prefix + "test_loss"], row[prefix + "test_acc"] = loss, acc

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module | None = None
                  ) -> list[tuple[float, float]]:
        """(loss, accuracy %) per copy of `model` (default: eval_model, the EMA's when config.ema is on)."""
        with self.all_cores():
            return evaluate_copies(self.eval_model if model is None else model, x, y, self.data,
                                   self.config.eval_batch_size, self.channels_last,
                                   self.copies, self.config.precision)

    def all_cores(self):
        """Evaluation with data_parallel > 1 uses one intra-op thread per replica (training uses one in all)."""
        if self.config.data_parallel > 1:
            from convladder.train.parallel import threads

            return threads(self.config.data_parallel)
        return contextlib.nullcontext()

    def clean_train(self) -> list[tuple[float, int]] | None:
        """Train accuracy without dropout/augmentation on the first clean_train_eval images, per copy."""
        if not self.config.clean_train_eval:
            return None
        n = min(self.config.clean_train_eval, self.data.n_train)
        accs = self._evaluate(self.data.x_train[:n], self.data.y_train[:n])
        return [(acc, n) for _, acc in accs]

    def shifted_test(self) -> list[dict[str, float]] | None:
        """Test accuracy per copy with every image shifted 0..shift_eval pixels, averaged over the 4 directions.

        {"0": acc, "1": acc, ...}; None when shift_eval is 0. Background fill is 0 (MNIST's black).
        """
        top = self.config.shift_eval
        if not top:
            return None
        from convladder.train.augment import SHIFT_DIRECTIONS, shift_images

        x, y = self.data.x_test, self.data.y_test
        out: list[dict[str, float]] = [{"0": acc} for _, acc in self._evaluate(x, y)]
        for k in range(1, top + 1):
            sums = [0.0] * self.copies
            for dx, dy in SHIFT_DIRECTIONS:
                for i, (_, acc) in enumerate(self._evaluate(shift_images(x, dx * k, dy * k), y)):
                    sums[i] += acc / len(SHIFT_DIRECTIONS)
            for i in range(self.copies):
                out[i][str(k)] = sums[i]
        return out

    # -- state per copy ------------------------------------------------------------------------------------
    def weights(self, i: int) -> dict[str, torch.Tensor]:
        """Copy i's weights to save (model/best.safetensors): the EMA's when config.ema is on."""
        return self._copy_state(self.eval_model, i)

    def _copy_state(self, model: torch.nn.Module, i: int) -> dict[str, torch.Tensor]:
        state = model.state_dict()
        if not self.batched:
            return state
        from convladder.train.batched import unpack_state

        return unpack_state(state, i, self.copies)

    def resume_state(self, i: int, weights: dict[str, torch.Tensor], epoch: int) -> dict[str, Any]:
        """What resume.pt holds for copy i (single-model format, so any copy resumes as an ordinary run).

        `weights`: what weights(i) gave; with config.ema those are the average's, saved under "ema", and the live
        weights, which training continues from, under "model"."""
        ema = None
        if self.ema is not None:
            ema, weights = weights, self._copy_state(self.model, i)
        optimizer = self.step.state()
        if self.batched:
            from convladder.train.batched import unpack_optimizer_state

            optimizer = unpack_optimizer_state(optimizer, i, self.copies)
        rng = {"gen": self.generators[i].get_state(), "cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        cpu = lambda state: {k: v.detach().cpu().contiguous() for k, v in state.items()}  # noqa: E731
        out = {"model": cpu(weights), "optimizer": optimizer, "scheduler": {"step": epoch * self.steps}, "rng": rng}
        if ema is not None:
            out["ema"] = cpu(ema)
        if self.lookahead is not None:  # the slow weights: a resumed run syncs towards the same ones
            slow = self.lookahead.state_dict()
            if self.batched:
                from convladder.train.batched import unpack_state

                slow = unpack_state(slow, i, self.copies)
            out["lookahead"] = cpu(slow)
        return out

    def load_resume(self, saved: dict[str, Any], epoch: int) -> None:
        """Continue a single run from its resume.pt after `epoch` epochs."""
        assert not self.batched
        self.model.load_state_dict(saved["model"])
        if self.ema is not None:
            # a resume.pt without "ema" (damaged: rebuilt from model.safetensors, which holds the EMA weights then)
            # starts the average from the weights loaded
            self.ema.load_state_dict(saved.get("ema") or saved["model"])
        if self.lookahead is not None:  # without "lookahead" (damaged resume.pt) from the weights loaded
            self.lookahead.load_state_dict(saved.get("lookahead"))
        if "optimizer" in saved:  # absent when resume.pt was damaged: the optimiser starts afresh
            self.step.load_state(saved["optimizer"])
        rng = saved.get("rng") or {}
        if rng:
            self.generators[0].set_state(rng["gen"])
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step.set_position(epoch * self.steps)


def epoch_lrs(step: Any, epoch: int, steps: int) -> tuple[float, float]:
    """The rates epoch `epoch` (1-based) trained at: its first step's and its last step's.

    Step t of the run (0-based) trains at lr_at(t); epoch e is steps (e-1)*steps .. e*steps - 1. (lr_at(e*steps),
    recorded before, is the next epoch's first rate: under a step schedule epoch 1 showed the halved rate.)
    """
    return step.lr_at((epoch - 1) * steps), step.lr_at(epoch * steps - 1)


def epoch_rows(epoch: int, lrs: tuple[float, float], losses: list[float], accs: list[float], seen: int,
               te: float) -> tuple[list[dict[str, Any]], list[bool], float]:
    """Per-copy rows of a trained epoch (started at `te`), whether each copy's loss is finite, and `te`.

    lr = the rate of the epoch's first step, lr_last = that of its last (equal unless the schedule moves the
    rate within an epoch: onecycle, cosine).
    """
    train_time = time.perf_counter() - te
    rows = [{"epoch": epoch, "lr": lrs[0], "lr_last": lrs[1], "train_loss": loss, "train_acc": acc,
             "train_time_s": train_time, "train_images_per_s": seen / train_time} for loss, acc in zip(losses, accs)]
    return rows, [math.isfinite(v) for v in losses], te


def finish_rows(rows: list[dict[str, Any]], te: float) -> None:
    """Add the epoch's time (training + evaluation, from `te`) to each row."""
    now = time.perf_counter()
    for row in rows:
        row["epoch_time_s"] = now - te
        # keep the row's key order of earlier versions: timing last
        row["train_time_s"] = row.pop("train_time_s")
        row["train_images_per_s"] = row.pop("train_images_per_s")


def run_info(config: TrainConfig, run_id: str | None, params: int, device: torch.device, data,
             distilled: dict[str, Any] | None = None) -> dict[str, Any]:
    """What Progress.start gets (`distilled`: the teacher's record, train/distill.py)."""
    return {"run_id": run_id, "model": config.model if len(config.model) < 40 else "custom spec", "params": params,
            "teacher_params": (distilled or {}).get("params"),
            "device": str(device) + (" (bf16 training step)" if autocast_dtype(device, config.precision) else ""),
            "n_train": data.n_train, "n_val": len(data.y_val), "n_test": len(data.y_test),
            "seed": config.seed, "epochs": config.epochs, "recipe": recipe_text(config, len(data.y_val), distilled)}


def drive_steps(run: Callable[[], None], steps: int, shown: Any, batch: int, progress: Progress) -> None:
    """Call `run` (one training step, or one replay of several) `steps` times; the progress display reads the
    running loss/accuracy of `shown` (a TrainStep) from the device only when it redraws."""
    for k in range(1, steps + 1):
        run()
        progress.step(k, lambda k=k: (float(shown.loss_sum[0]) / (k * batch), 100.0 * int(shown.correct[0]) / (k * batch)))
