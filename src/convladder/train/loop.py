"""Training runs: one seed (`train`, or epoch by epoch with `train_epochs`), N seeds, and resume.

The pieces: `step.py` (the training step and the evaluation step), `epochs.py` (epochs of steps, per-copy
state), `recorder.py` (the run folder, and outcomes -> statuses), `batched.py` (N seeds at once).
`train(config)` runs one seed; `train_seeds(config)` runs config.seeds seeds — at once when `batched` says so
(streams: N models in one CUDA graph; grouped: one widened model) — and summarises them; `resume(run, store)`
continues an interrupted run from its last saved epoch with the same result (on CPU, bit for bit) as an
uninterrupted run, because every RNG the run draws from is saved.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Generator
from typing import Any

import torch

from convladder.errors import UserError
from convladder.interrupts import installed as interrupts_installed
from convladder.runs.store import RunStore
from convladder.spec.registry import check_model
from convladder.train import runenv
from convladder.train.config import TrainConfig, resolve_words, validate
from convladder.train.device_data import load_splits
from convladder.train.epochs import PAUSE_ENV, EpochRunner, pause_hook, run_info
from convladder.train.progress import Progress
from convladder.train.recorder import Recorder, TrainingDiverged
from convladder.train.result import RunResult, seed_stats
from convladder.train.step import autocast, evaluate

__all__ = ["PAUSE_ENV", "TrainingDiverged", "evaluate", "autocast", "resolve_device", "train", "train_epochs",
           "run_to_end", "resume", "train_seeds", "train_batched", "batched_mode", "parse_seed_list"]


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
    """config.threads, or the default on the CPU: one thread per core that other work leaves free, at least one.

    Measured on 2 cores (docs/training.md, bench/results/cpu-speed.md): idle, 2 threads train 1.5x faster than 1
    (3,639 vs 2,457 images/s, batch 128); with other work on the cores, 2 threads made an epoch up to 12x
    slower than 1 (OpenMP threads spin-wait for each other). The cores busy right now tell the two apart.
    """
    if config.data_parallel > 1 and device.type == "cpu":
        torch.set_num_threads(1)  # one core per replica's thread (train/parallel.py)
    elif config.threads:
        torch.set_num_threads(config.threads)
    elif device.type == "cpu":
        torch.set_num_threads(default_threads())


_TORCH_THREADS = torch.get_num_threads()  # torch's own choice, before anything here changes it


@functools.lru_cache(maxsize=1)  # decided once per process: later our own training would count as other work
def default_threads() -> int:
    """Torch's choice, less the cores other processes keep busy right now; at least 1."""
    cores = os.cpu_count() or 1
    busy = _busy_cores()
    if busy is None:
        return _TORCH_THREADS
    return max(1, min(_TORCH_THREADS, cores - int(busy + 0.3)))


def _busy_cores(window_s: float = 0.25) -> float | None:
    """Cores in use over the next `window_s` seconds (/proc/stat), else the 1-minute load average.

    /proc/stat first: the load average lags a minute behind, so right after a heavy job it still reads busy.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(window_s)
        total1, idle1 = sample()
        if total1 > total0:
            return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return None


IMAGES_28X28 = ("mnist", "fashion-mnist", "fashion", "synthetic")


def check_size_early(config: TrainConfig) -> None:
    """Refuse an oversized spec in milliseconds, before the data set is read (its images are 1x28x28)."""
    if config.dataset in IMAGES_28X28 and config.data_root is None:
        check_model(config.model_spec or config.model, (1, 28, 28), batch_size=config.batch_size)


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
    config = resolve_words(config, progress.note, data=data)  # lr: auto -> the LR range test's suggestion
    device = resolve_device(config.device)
    set_threads(config, device)
    if data is None:
        check_size_early(config)
    setup = runenv.prepare(config, data if data is not None else load_splits(config), device)
    # the validation images actually held out (--subset N caps them at N // 10): what config.json records
    config = config.replace(model_spec=setup.spec_text, val_size=len(setup.data.y_val))
    runner = EpochRunner(setup.model, setup.data, config, device, [config.seed], notice=progress.note)
    rec = Recorder(config, store, setup.params, t0, _select(config, setup.data), own=setup.own)
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
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under the CLI (interrupts.Terminated)
        if rec.handle is not None:
            message = rec.interrupted().message
            if not interrupts_installed():  # the CLI says it in its one line
                progress.note(message)
        raise
    except TrainingDiverged:
        raise  # already recorded as failed
    except Exception as exc:  # anything else after the folder exists: mark the run failed, never leave 'running'
        if rec.handle is not None:
            rec.failed(exc)
        raise
    clean, shifted = runner.clean_train(), runner.shifted_test()
    result = rec.completed(clean[0] if clean else None, shifted[0] if shifted else None)
    progress.finish(result)
    return result


def resume(run: str, store: RunStore, progress: Progress | None = None, *, data=None) -> RunResult:
    """Continue run `run` (id or prefix) from its last saved epoch with its saved config."""
    record = store.get(run)
    if record.status == "completed":
        raise UserError(f"run {record.id} already completed; nothing to resume")
    config = TrainConfig.from_dict(store.read_config(record.id))
    return train(config, store, progress, data=data, resume_run=record.id)


def parse_seed_list(text: str) -> list[int]:
    """'6-10' / '1,3,7' / '1-3,9' / '5' -> the seeds in the order written, each once (benchmarks' --seeds).

    A seed list, not a count: a recipe chosen on seeds 1-5 is reported on fresh seeds (e.g. 6-10).
    """
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, dash, hi = part.partition("-")
            chunk = list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
            chunk = []
        if not chunk or any(s < 0 for s in chunk):
            raise UserError(f"seeds {text!r}: {part!r} is not a seed or a range — write e.g. 6-10 or 1,3,7")
        seeds += [s for s in chunk if s not in seeds]
    return seeds


def batched_mode(config: TrainConfig, device: torch.device) -> str | None:
    """How config.seeds seeds train at once: 'streams', 'grouped', or None (one after another).

    auto: streams on CUDA (any model; one CUDA graph replays all N steps side by side), one after another
    elsewhere — on 2 idle CPU cores, 5 tiny8k copies batched by grouped convolutions trained 2,946 images/s
    in all against 3,639 for one model alone (bench/results/cpu-speed.md), and streams gain nothing on a CPU.
    """
    setting = getattr(config, "batched", "auto")
    if config.seeds < 2 or setting == "off":
        return None
    if setting in ("on", "grouped"):
        return "grouped"
    if setting == "streams" or device.type == "cuda":
        return "streams"
    return None


def train_seeds(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                data=None) -> tuple[list[RunResult], dict[str, Any]]:
    """Train seeds config.seed .. config.seed + config.seeds - 1; return the results and min/median/max.

    With more than one seed the seeds train together (`batched_mode`): as N models on parallel CUDA streams,
    or as one grouped-convolution model when the network allows it (`train/batched.py`); each seed is still
    stored as its own run.
    """
    config = resolve_words(config, (progress or Progress()).note, data=data)  # once for all seeds (lr: auto)
    if batched_mode(config, resolve_device(config.device)) is not None:
        results = train_batched(config, store, progress, data=data)
        if results is not None:
            return results, seed_stats(results)
    results = [train(config.replace(seed=config.seed + i, seeds=1), store, progress, data=data)
               for i in range(config.seeds)]
    return results, seed_stats(results)


def train_batched(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                  data=None, tags_by_seed: dict[int, list[str]] | None = None) -> list[RunResult] | None:
    """Seeds config.seed .. + config.seeds - 1 trained at once; one run (folder, result) per seed.

    How, by `batched_mode`: streams — N ordinary models stepped together (one CUDA graph on CUDA; one after
    another, each as its sequential run, elsewhere); grouped — one grouped-convolution model (UserError when
    the network cannot be widened). Returns None when the seeds are to train one by one (the caller does). A seed whose loss turns NaN/inf
    is recorded as failed, the others train on, and its TrainingDiverged is raised at the end.
    `tags_by_seed`: a seed's own tags instead of config.tags (an executor's job tag per seed).
    """
    from convladder.train.batched import CopyRng, StreamsEpochRunner, why_not_batchable, widen

    t0 = time.perf_counter()
    validate(config)
    progress = progress or Progress()
    device = resolve_device(config.device)
    set_threads(config, device)
    mode = batched_mode(config, device)
    if mode is None:
        return None
    config = resolve_words(config, progress.note, data=data)  # lr: auto, once for all seeds
    if config.data_parallel > 1:
        raise UserError(f"data_parallel={config.data_parallel} trains one seed at a time across the cores; "
                        f"use batched=off (or data_parallel=1 with batched={config.batched})")
    if data is None:
        check_size_early(config)
    splits = data if data is not None else load_splits(config)
    seeds = [config.seed + i for i in range(config.seeds)]
    rng = CopyRng(device)
    setups = []
    for s in seeds:
        setups.append(runenv.prepare(config.replace(seed=s, seeds=1), splits, device))
        rng.record()  # prepare seeded the global generators as the seed's sequential run does
    reason = why_not_batchable(setups[0].model) if mode == "grouped" else None
    if reason:  # grouped is only ever asked for explicitly (batched=on|grouped)
        raise UserError(f"batched: {config.batched}, but {reason}; use batched=streams, auto or off")
    data_on_device, spec_text, params = setups[0].data, setups[0].spec_text, setups[0].params
    tags_by_seed = tags_by_seed or {}
    configs = [config.replace(seed=s, seeds=1, model_spec=spec_text, val_size=len(data_on_device.y_val),
                              tags=list(tags_by_seed.get(s, config.tags))) for s in seeds]
    if mode == "streams":
        runner = StreamsEpochRunner([s.model for s in setups], data_on_device, configs, device, rng,
                                    notice=progress.note)
    else:
        model = widen([s.model for s in setups])
        torch.manual_seed(seeds[0])  # one dropout stream for all copies
        runner = EpochRunner(model, data_on_device, configs[0], device, seeds, notice=progress.note)
    owns = [s.own for s in setups]
    del setups
    select = _select(configs[0], data_on_device)
    recs = [Recorder(c, store, params, t0, select, own=own) for c, own in zip(configs, owns)]
    env = runenv.environment(device, data_on_device.image_shape, data_on_device.mean, data_on_device.std)
    env["batched_with_seeds"] = seeds
    env["batched_mode"] = mode
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
                message = recs[i].interrupted().message
                if not interrupts_installed():
                    progress.note(message)
        raise
    except Exception as exc:
        for i in alive:
            if recs[i].handle is not None:
                recs[i].failed(exc)
        raise
    results = []
    if alive:
        cleans, shifted = runner.clean_train(), runner.shifted_test()
        for i in alive:
            results.append(recs[i].completed(cleans[i] if cleans else None, shifted[i] if shifted else None))
            progress.finish(results[-1])
    if diverged:
        raise diverged[0]
    return results
