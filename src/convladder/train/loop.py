"""The training loop: data on the device, metrics read once per epoch, state saved every epoch.

`train(config)` runs one seed; `train_seeds(config)` runs config.seeds seeds and summarises them;
`resume(run, store)` continues an interrupted run from its last saved epoch with the same result
(on CPU, bit for bit) as an uninterrupted run, because every RNG the run draws from is saved.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from convladder.errors import UserError
from convladder.train import runenv
from convladder.train.augment import AugmentParams, augment
from convladder.train.config import TrainConfig, validate
from convladder.train.device_data import DeviceData, load_splits, to_unit
from convladder.train.optim import current_lr, make_optimizer, make_scheduler
from convladder.train.progress import Progress
from convladder.train.result import RunResult, gap, potential, seed_stats, verdict
from convladder.train.store import RunHandle, RunStore

PAUSE_ENV = "CONVLADDER_TEST_PAUSE_AFTER_EPOCH"  # test hook: after saving epoch N, touch $..._MARKER and sleep
NAN_CHECK_EVERY = 100  # steps between cheap finite-loss checks (one sync each)


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run is marked failed and its last good checkpoint kept."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


@dataclass
class _State:
    """What changes from epoch to epoch (saved in resume.pt)."""

    epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "val_acc": None, "test_acc": None})
    elapsed_s: float = 0.0
    time_to_target_s: float | None = None
    warmup_s: float = 0.0


@torch.no_grad()  # not inference_mode: the weights' format switch must give ordinary tensors back to training
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: DeviceData, batch_size: int,
             channels_last: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy %) over (x uint8, y) in large batches; one device read at the end."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    # On the CPU, inference is faster channels_last (15k tiny8k images: 0.65 s vs 1.8 s) while training is
    # slower, so the weights switch format for evaluation only; their values do not change.
    switch = x.device.type == "cpu" and not channels_last
    if switch:
        model.to(memory_format=torch.channels_last)
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    try:
        for start in range(0, len(y), batch_size):
            xb = data.normalise(to_unit(x[start:start + batch_size]))
            if channels_last or switch:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[start:start + batch_size]
            with _autocast(x.device):
                logits = model.logits(xb).float()
            loss += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
    finally:
        if switch:
            model.to(memory_format=torch.contiguous_format)
    return float(loss) / len(y), 100.0 * int(correct) / len(y)


def _autocast(device: torch.device):
    # bf16 on CUDA: no loss scaling needed; CPU autocast is slower than fp32 for these tiny convs.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but torch sees no CUDA GPU; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device mps requested but it is not available; use --device cpu or auto")
    return torch.device(name)


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"gen": gen.get_state(), "cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _pause_hook(epoch: int) -> None:
    """Tests kill the process here (SIGKILL between epochs) to check that resume reproduces the run."""
    if os.environ.get(PAUSE_ENV) == str(epoch):
        marker = os.environ.get(PAUSE_ENV + "_MARKER")
        if marker:
            open(marker, "w").close()
        time.sleep(600)


def train(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
          data=None, resume_run: str | None = None) -> RunResult:
    """Train one seed. `data`: a DataSplits-like object instead of loading config.dataset (tests).

    With a store, the run gets a folder and index row (only after the config validated, the data loaded
    and the model built). Raises UserError for bad input, TrainingDiverged on NaN/inf loss;
    KeyboardInterrupt is re-raised after the run is marked interrupted (resumable).
    """
    return run_to_end(train_epochs(config, store, progress, data=data, resume_run=resume_run))


def run_to_end(epochs: Generator[dict[str, Any], None, RunResult]) -> RunResult:
    """Drive a `train_epochs` generator to its end and return its RunResult."""
    while True:
        try:
            next(epochs)
        except StopIteration as stop:
            return stop.value


def train_epochs(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                 data=None, resume_run: str | None = None) -> Generator[dict[str, Any], None, RunResult]:
    """`train` one epoch at a time: yields each epoch's metrics row (after it is saved), returns the RunResult.

    A caller that stops early (`.close()`, e.g. a scheduler such as ASHA dropping a weak trial) gets the run
    recorded as 'stopped' after its last finished epoch, with a result.json; it can be resumed to full length.
    """
    t0 = time.perf_counter()
    validate(config)
    progress = progress or Progress()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    setup = runenv.prepare(config, data if data is not None else load_splits(config), device)
    data, model, spec_text, params = setup.data, setup.model, setup.spec_text, setup.params
    config = config.replace(model_spec=spec_text)
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = data.steps_per_epoch(config.batch_size)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    aug = AugmentParams(config.rotate, config.translate, config.scale, config.erase) if config.augment else None
    state = _State()
    handle: RunHandle | None = None
    if resume_run is not None:
        assert store is not None
        handle = store.handle(resume_run)
        saved = handle.load_resume()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"], gen, device)
        state = _State(**saved["state"])
        handle.update(status="running")
    elif store is not None:
        env = runenv.environment(device, data.image_shape, data.mean, data.std)
        handle = store.create_run(config.to_dict(), env, params=params)
    run_id = handle.id if handle else None
    progress.start({"run_id": run_id, "model": config.model if len(config.model) < 40 else "custom spec",
                    "params": params, "device": str(device), "n_train": data.n_train, "n_val": len(data.y_val),
                    "n_test": len(data.y_test), "seed": config.seed, "epochs": config.epochs})
    forward = torch.compile(model.logits) if config.compile else model.logits
    select = "val" if config.select_on == "val" and len(data.y_val) else ("test" if config.select_on == "test" else None)
    resumed_at = state.elapsed_s - (time.perf_counter() - t0)  # wall time carried over from earlier processes
    clock = lambda: resumed_at + time.perf_counter() - t0  # noqa: E731
    try:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            progress.epoch_start(epoch, config.epochs, steps)
            te = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            for step, idx in enumerate(data.batches(config.batch_size, gen), 1):
                x = to_unit(data.x_train[idx])
                if aug is not None:
                    x = augment(x, aug, gen)
                x = data.normalise(x)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = data.y_train[idx]
                with _autocast(device):
                    logits = forward(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(idx)
                if epoch == 1 and step == 1 and state.warmup_s == 0:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    state.warmup_s = time.perf_counter() - te  # first step: compile + allocation
                if step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                    break
                progress.step(step, lambda: (float(loss_sum) / seen, 100.0 * int(correct) / seen))
            train_loss = float(loss_sum) / seen
            if not torch.isfinite(torch.tensor(train_loss)):
                raise _diverged(config, state, handle, params, t0, epoch, clock())
            row: dict[str, Any] = {"epoch": epoch, "lr": current_lr(optimizer), "train_loss": train_loss,
                                   "train_acc": 100.0 * int(correct) / seen}
            train_time = time.perf_counter() - te
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                if len(data.y_val):
                    row["val_loss"], row["val_acc"] = evaluate(model, data.x_val, data.y_val, data,
                                                               config.eval_batch_size, channels_last)
                row["test_loss"], row["test_acc"] = evaluate(model, data.x_test, data.y_test, data,
                                                             config.eval_batch_size, channels_last)
                if state.time_to_target_s is None and row["test_acc"] >= config.target:
                    state.time_to_target_s = clock()
            row["epoch_time_s"] = time.perf_counter() - te
            row["train_time_s"] = train_time  # training steps only (throughput: train_images_per_s)
            row["train_images_per_s"] = seen / train_time
            state.rows.append(row)
            state.epoch = epoch
            improved = select is not None and f"{select}_acc" in row and (
                state.best["epoch"] is None or row[f"{select}_acc"] > state.best[f"{select}_acc"])
            if improved:
                state.best = {"epoch": epoch, "val_acc": row.get("val_acc"), "test_acc": row.get("test_acc")}
            state.elapsed_s = clock()
            if handle is not None:
                _save_epoch(handle, model, optimizer, scheduler, gen, device, state, improved)
            progress.epoch_end(row)
            _pause_hook(epoch)
            yield row
    except GeneratorExit:  # the caller stopped early: a finished-so-far run, not a failure
        if handle is not None:
            _finish(handle, _result(config, state, run_id, params, clock(), "stopped", select, None,
                                    f"stopped early after epoch {state.epoch} of {config.epochs}; "
                                    f"continue with: convladder train --resume {run_id}"))
        raise
    except KeyboardInterrupt:
        if handle is not None:
            result = _result(config, state, run_id, params, clock(), "interrupted", select, None,
                             f"interrupted after epoch {state.epoch}; resume with: convladder train --resume {run_id}")
            _finish(handle, result)
            progress.note(result.message)
        raise
    except TrainingDiverged:
        raise  # already recorded as failed
    except Exception as exc:  # anything else after the folder exists: mark the run failed, never leave 'running'
        if handle is not None:
            _finish(handle, _result(config, state, run_id, params, clock(), "failed", select, None,
                                    f"{type(exc).__name__}: {exc}"))
        raise
    clean = None
    if config.clean_train_eval:
        n = min(config.clean_train_eval, data.n_train)
        clean = (evaluate(model, data.x_train[:n], data.y_train[:n], data, config.eval_batch_size, channels_last)[1], n)
    result = _result(config, state, run_id, params, clock(), "completed", select, clean)
    if handle is not None:
        _finish(handle, result)
    progress.finish(result)
    return result


def _save_epoch(handle: RunHandle, model, optimizer, scheduler, gen, device, state: _State, improved: bool) -> None:
    """Weights (safetensors), metrics and resume state after every epoch; resume.pt is written last."""
    weights = model.state_dict()
    handle.save_weights("model", weights)
    if improved:
        handle.save_weights("best", weights)
    handle.write_metrics(state.rows)
    handle.save_resume({"model": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(gen, device), "state": dict(state.__dict__)})


def _result(config: TrainConfig, state: _State, run_id: str | None, params: int, wall: float, status: str,
            select: str | None, clean: tuple[float, int] | None, message: str = "") -> RunResult:
    clean_train, clean_n = clean if clean is not None else (None, 0)
    rows = state.rows
    last = rows[-1] if rows else {}
    evaluated = [r for r in rows if "test_acc" in r]
    final_test = evaluated[-1]["test_acc"] if evaluated else None
    seen = last.get("train_acc")
    train_acc = clean_train if clean_train is not None else seen
    best = dict(state.best)
    best["selected_by"] = select or "final epoch (no validation split)"
    if select is None and evaluated:
        best.update(epoch=evaluated[-1]["epoch"], val_acc=evaluated[-1].get("val_acc"), test_acc=final_test)
    ok = train_acc is not None and final_test is not None
    return RunResult(
        run_id=run_id, status=status, params=params, epochs_done=state.epoch,
        final={"train_acc": train_acc, "train_acc_seen": seen, "train_acc_clean": clean_train,
               "val_acc": evaluated[-1].get("val_acc") if evaluated else None, "test_acc": final_test},
        best=best,
        gap=gap(train_acc, final_test) if ok else None,
        potential=potential(train_acc, final_test) if ok else None,
        verdict=verdict(train_acc, final_test, [r["test_acc"] for r in evaluated], config.target) if ok else None,
        train_acc_source=(f"clean (no dropout/augmentation, first {clean_n} training images)"
                          if clean_train is not None else "seen while training (dropout/augmentation on)"),
        wall_time_s=wall, time_to_target_s=state.time_to_target_s, warmup_s=state.warmup_s,
        message=message, seed=config.seed, target=config.target,
        extra={"train_images_per_s": sorted(r["train_images_per_s"] for r in rows)[len(rows) // 2] if rows else None})


def _finish(handle: RunHandle, result: RunResult) -> None:
    handle.write_json("result.json", result.to_dict())
    handle.update(status=result.status, final_test_acc=result.final.get("test_acc"),
                  best_val_acc=result.best.get("val_acc"), best_epoch=result.best.get("epoch"))


def _diverged(config, state, handle, params, t0, epoch, wall) -> TrainingDiverged:
    where = f"run {handle.id}" if handle else "the run"
    message = (f"loss became NaN/inf in epoch {epoch} ({where} stopped; the checkpoint of epoch {state.epoch} is kept): "
               f"lower the learning rate (lr={config.lr:g}) or check the data")
    result = _result(config, state, handle.id if handle else None, params, wall, "failed", None, None, message)
    if handle is not None:
        _finish(handle, result)
    return TrainingDiverged(message, result)


def resume(run: str, store: RunStore, progress: Progress | None = None, *, data=None) -> RunResult:
    """Continue run `run` (id or prefix) from its last saved epoch with its saved config."""
    record = store.get(run)
    if record.status == "completed":
        raise UserError(f"run {record.id} already completed; nothing to resume")
    config = TrainConfig.from_dict(store.read_config(record.id))
    return train(config, store, progress, data=data, resume_run=record.id)


def train_seeds(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                data=None) -> tuple[list[RunResult], dict[str, Any]]:
    """Train seeds config.seed .. config.seed + config.seeds - 1; return the results and min/median/max."""
    results = [train(config.replace(seed=config.seed + i, seeds=1), store, progress, data=data)
               for i in range(config.seeds)]
    return results, seed_stats(results)
