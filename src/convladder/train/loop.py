"""Training runs: one seed (`train`, or epoch by epoch with `train_epochs`), N seeds, and resume.

Each is `runner.run` (train/runner.py: the one setup and the one epoch loop) with one seed or a group of
seeds. The pieces: `step.py` (the training step and the evaluation step), `epochs.py` (epochs of steps,
per-copy state), `recorder.py` (the run folder, and outcomes -> statuses), `batched.py` (N seeds at once).
`train(config)` runs one seed; `train_seeds(config)` runs config.seeds seeds — at once when `batched` says so
(streams: N models in one CUDA graph; grouped: one widened model) — and summarises them; `resume(run, store)`
continues an interrupted run from its last saved epoch with the same result (on CPU, bit for bit) as an
uninterrupted run, because every RNG the run draws from is saved.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.train import distill, runner
from convladder.train.config import TrainConfig
from convladder.train.epochs import PAUSE_ENV
from convladder.train.progress import Progress
from convladder.train.recorder import TrainingDiverged
from convladder.train.result import RunResult, seed_stats
# the setup lives in runner.py; these names stay importable from here, the trainer's public face
from convladder.train.runner import batched_mode, check_size_early, resolve_device, set_threads
from convladder.train.step import autocast, evaluate

__all__ = ["PAUSE_ENV", "TrainingDiverged", "evaluate", "autocast", "resolve_device", "set_threads",
           "check_size_early", "train", "train_epochs", "run_to_end", "resume", "train_seeds", "train_batched",
           "batched_mode", "parse_seed_list"]


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
    runs = runner.run(config, store, progress, data=data, resume_run=resume_run)
    try:  # one seed: its row of each epoch, then its result
        rows = next(runs)
        while True:
            yield rows[0]
            rows = next(runs)
    except StopIteration as stop:
        return stop.value[0]
    finally:
        runs.close()  # a caller that stopped early: the run is recorded 'stopped' (nothing to do once it ended)


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


def train_seeds(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *,
                data=None) -> tuple[list[RunResult], dict[str, Any]]:
    """Train seeds config.seed .. config.seed + config.seeds - 1; return the results and min/median/max.

    With more than one seed the seeds train together (`batched_mode`): as N models on parallel CUDA streams,
    or as one grouped-convolution model when the network allows it (`train/batched.py`); each seed is still
    stored as its own run.
    """
    config, device = runner.begin(config, (progress or Progress()).note, data=data)  # lr: auto once for all seeds
    config = distill.resolve(config, store)  # once: a later seed's `latest` would be an earlier seed's run
    if batched_mode(config, device) is not None:
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
    the network cannot be widened). Returns None when the seeds are to train one by one (the caller does). A
    seed whose loss turns NaN/inf is recorded as failed, the others train on, and its TrainingDiverged is raised
    at the end.
    `tags_by_seed`: a seed's own tags instead of config.tags (an executor's job tag per seed).
    """
    return run_to_end(runner.run(config, store, progress, data=data, batched=True, tags_by_seed=tags_by_seed))
