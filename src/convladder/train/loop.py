"""Training runs: one seed (`train`, or epoch by epoch with `train_epochs`), N seeds, and resume.

The pieces: `step.py` (the training step and the evaluation step), `epochs.py` (epochs of steps, per-copy
state), `recorder.py` (the run folder, and outcomes -> statuses), `batched.py` (N seeds as one model).
`train(config)` runs one seed; `train_seeds(config)` runs config.seeds seeds — batched into one model when
the network allows (`batched` = auto/on/off) — and summarises them; `resume(run, store)` continues an
interrupted run from its last saved epoch with the same result (on CPU, bit for bit) as an uninterrupted
run, because every RNG the run draws from is saved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

import torch

from convladder.errors import UserError
from convladder.train import runenv
from convladder.train.config import TrainConfig, validate
from convladder.train.device_data import load_splits
from convladder.train.epochs import PAUSE_ENV, EpochRunner, pause_hook, run_info
from convladder.train.progress import Progress
from convladder.train.recorder import Recorder, TrainingDiverged
from convladder.train.result import RunResult, seed_stats
from convladder.train.step import autocast, evaluate
from convladder.train.store import RunStore

__all__ = ["PAUSE_ENV", "TrainingDiverged", "evaluate", "autocast", "resolve_device", "train", "train_epochs",
           "run_to_end", "resume", "train_seeds", "train_batched"]


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


def set_threads(config: TrainConfig, device: torch.device) -> None:
    """config.threads, or the default: on the CPU, 1 thread when the machine has at most 2 cores.

    Measured on 2 shared cores (docs/training.md): with other work on the cores, 2 threads made an epoch
    ~5x slower than 1 (OpenMP threads spin-wait for each other); on an idle machine 2 threads gain little.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    elif device.type == "cpu" and (os.cpu_count() or 1) <= 2:
        torch.set_num_threads(1)


def _select(config: TrainConfig, data) -> str | None:
    if config.select_on == "val" and len(data.y_val):
        return "val"
    return "test" if config.select_on == "test" else None


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
    set_threads(config, device)
    setup = runenv.prepare(config, data if data is not None else load_splits(config), device)
    config = config.replace(model_spec=setup.spec_text)
    runner = EpochRunner(setup.model, setup.data, config, device, [config.seed], notice=progress.note)
    rec = Recorder(config, store, setup.params, t0, _select(config, setup.data))
    if resume_run is not None:
        saved = rec.reopen(resume_run)
        runner.load_resume(saved, rec.state.epoch)
    elif store is not None:
        rec.create(runenv.environment(device, setup.data.image_shape, setup.data.mean, setup.data.std))
    progress.start(run_info(config, rec.run_id, setup.params, device, setup.data))
    try:
        for epoch in range(rec.state.epoch + 1, config.epochs + 1):
            rows, finite, te = runner.train_epoch(epoch, progress)
            if not finite[0]:
                raise rec.diverged(epoch)
            if not rec.state.warmup_s:  # the first epoch this process trained: warm-up, capture or compile
                rec.state.warmup_s = runner.warmup_s
            runner.evaluate_into(rows, epoch, te)
            weights = runner.weights(0) if rec.handle else None
            rec.epoch_done(rows[0], weights, runner.resume_state(0, weights, epoch) if weights is not None else None)
            progress.epoch_end(rows[0])
            pause_hook(epoch)
            yield rows[0]
    except GeneratorExit:  # the caller stopped early: a finished-so-far run, not a failure
        if rec.handle is not None:
            rec.stopped()
        raise
    except KeyboardInterrupt:
        if rec.handle is not None:
            progress.note(rec.interrupted().message)
        raise
    except TrainingDiverged:
        raise  # already recorded as failed
    except Exception as exc:  # anything else after the folder exists: mark the run failed, never leave 'running'
        if rec.handle is not None:
            rec.failed(exc)
        raise
    clean = runner.clean_train()
    result = rec.completed(clean[0] if clean else None)
    progress.finish(result)
    return result


def resume(run: str, store: RunStore, progress: Progress | None = None, *, data=None) -> RunResult:
    """Continue run `run` (id or prefix) from its last saved epoch with its saved config."""
    record = store.get(run)
    if record.status == "completed":
        raise UserError(f"run {record.id} already completed; nothing to resume")
    config = TrainConfig.from_dict(store.read_config(record.id))
    return train(config, store, progress, data=data, resume_run=record.id)


def train_seeds(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                data=None) -> tuple[list[RunResult], dict[str, Any]]:
    """Train seeds config.seed .. config.seed + config.seeds - 1; return the results and min/median/max.

    With more than one seed and `batched` on (or auto on CUDA), the seeds train together as one batched model
    when the network allows it (`train/batched.py`); each seed is still stored as its own run.
    """
    setting = getattr(config, "batched", "auto")
    # auto: on CUDA only. On 2 CPU cores, 5 tiny8k copies batched trained 1,592 images/s against 2,127 for one
    # model alone (grouped convolutions are slower per image there; bench/results/cpu-speed.md).
    if config.seeds > 1 and (setting == "on" or (setting == "auto" and resolve_device(config.device).type == "cuda")):
        results = train_batched(config, store, progress, data=data)
        if results is not None:
            return results, seed_stats(results)
    results = [train(config.replace(seed=config.seed + i, seeds=1), store, progress, data=data)
               for i in range(config.seeds)]
    return results, seed_stats(results)


def train_batched(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                  data=None) -> list[RunResult] | None:
    """Seeds config.seed .. + config.seeds - 1 as one batched model; one run (folder, result) per seed.

    Returns None when the network cannot be batched and `batched` is auto (the caller trains the seeds one by
    one); raises UserError for `batched: on`. A seed whose loss turns NaN/inf is recorded as failed, the
    others train on, and its TrainingDiverged is raised at the end.
    """
    from convladder.train.batched import why_not_batchable, widen

    t0 = time.perf_counter()
    validate(config)
    progress = progress or Progress()
    device = resolve_device(config.device)
    set_threads(config, device)
    splits = data if data is not None else load_splits(config)
    seeds = [config.seed + i for i in range(config.seeds)]
    setups = [runenv.prepare(config.replace(seed=s, seeds=1), splits, device) for s in seeds]
    reason = why_not_batchable(setups[0].model)
    if reason:
        if getattr(config, "batched", "auto") == "on":
            raise UserError(f"batched: on, but {reason}; use batched=auto or off")
        return None
    data_on_device, spec_text, params = setups[0].data, setups[0].spec_text, setups[0].params
    model = widen([s.model for s in setups])
    del setups
    torch.manual_seed(seeds[0])  # one dropout stream for all copies
    configs = [config.replace(seed=s, seeds=1, model_spec=spec_text) for s in seeds]
    runner = EpochRunner(model, data_on_device, configs[0], device, seeds, notice=progress.note)
    select = _select(configs[0], data_on_device)
    recs = [Recorder(c, store, params, t0, select) for c in configs]
    env = runenv.environment(device, data_on_device.image_shape, data_on_device.mean, data_on_device.std)
    env["batched_with_seeds"] = seeds
    for rec, c in zip(recs, configs):
        if store is not None:
            rec.create(env)
        progress.start(run_info(c, rec.run_id, params, device, data_on_device))
    alive = list(range(len(seeds)))
    diverged: list[TrainingDiverged] = []
    try:
        for epoch in range(1, config.epochs + 1):
            rows, finite, te = runner.train_epoch(epoch, progress)
            for i in [i for i in alive if not finite[i]]:
                diverged.append(recs[i].diverged(epoch))
                alive.remove(i)
            if not alive:
                break
            runner.evaluate_into(rows, epoch, te)
            for i in alive:
                if epoch == 1:
                    recs[i].state.warmup_s = runner.warmup_s
                weights = runner.weights(i) if recs[i].handle else None
                recs[i].epoch_done(rows[i], weights,
                                   runner.resume_state(i, weights, epoch) if weights is not None else None)
                progress.epoch_end(rows[i])
            pause_hook(epoch)
    except KeyboardInterrupt:
        for i in alive:
            if recs[i].handle is not None:
                progress.note(recs[i].interrupted().message)
        raise
    except Exception as exc:
        for i in alive:
            if recs[i].handle is not None:
                recs[i].failed(exc)
        raise
    results = []
    if alive:
        cleans = runner.clean_train()
        for i in alive:
            results.append(recs[i].completed(cleans[i] if cleans else None))
            progress.finish(results[-1])
    if diverged:
        raise diverged[0]
    return results
