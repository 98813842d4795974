"""One way into training: the setup every entry shares, and the epoch loop of one seed or N seeds at once.

- `begin`: validate the config, replace its words (`lr: auto` -> the LR range test's lr), pick the device and
  the threads;
- `load_data`: refuse an oversized spec before reading the data set, then read it (or take the data given);
- `run`: both, then the models (built and checked per seed), the epoch runner, one recorder per seed, and
  the epochs (train, evaluate, record; stopped / interrupted / failed / diverged statuses).

`train`, `train_epochs`, `train_batched`, `train_seeds` and `resume` (train/loop.py) are `run` with one seed
or a group of seeds; the executors' `run_job`/`run_seed_group`, `convladder.train(...)`, ladders, sweeps and the
benchmarks reach it through them; `lrfind.suggest_lr` and the doctor use `begin` and `load_data`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import torch

from convladder.errors import UserError
from convladder.interrupts import installed as interrupts_installed
from convladder.runs.store import RunStore
from convladder.spec.registry import check_model
from convladder.train import distill, runenv
from convladder.train.config import TrainConfig, resolve_words, validate
from convladder.train.device_data import load_splits
from convladder.train.epochs import EpochRunner, pause_hook, run_info
from convladder.train.progress import Progress
from convladder.train.recorder import Recorder, TrainingDiverged
from convladder.train.result import RunResult

Rows = list[dict[str, Any]]


# -- setup --------------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA, else MPS, else CPU) or the device named; UserError when it is not there."""
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


def begin(config: TrainConfig, note: Callable[[str], None] | None = None, *, data: Any = None,
          words: bool = True) -> tuple[TrainConfig, torch.device]:
    """Validate `config`, replace its words (`words=False`: the LR range test, which is what `lr: auto` runs),
    pick the device and set the threads; return the config to train and the device."""
    validate(config)
    if words:
        config = resolve_words(config, note, data=data)  # lr: auto -> the LR range test's suggestion
    device = resolve_device(config.device)
    set_threads(config, device)
    return config, device


IMAGES_28X28 = ("mnist", "fashion-mnist", "fashion", "synthetic")


def check_size_early(config: TrainConfig) -> None:
    """Refuse an oversized spec in milliseconds, before the data set is read (its images are 1x28x28)."""
    if config.dataset in IMAGES_28X28 and config.data_root is None:
        check_model(config.model_spec or config.model, (1, 28, 28), batch_size=config.batch_size)


def load_data(config: TrainConfig, data: Any = None) -> Any:
    """`data` when given (a DataSplits-like object: tests, the doctor), else config's data set (DataSplits)."""
    if data is not None:
        return data
    check_size_early(config)
    return load_splits(config)


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


# -- the models, the epoch runner and the recorders ----------------------------------------------------------

def _select(config: TrainConfig, data: Any) -> str | None:
    if config.select_on == "val" and len(data.y_val):
        return "val"
    return "test" if config.select_on == "test" else None


class Prepared(NamedTuple):
    """The seeds' models built and checked, and the runner that trains them."""

    runner: Any  # EpochRunner, or batched.StreamsEpochRunner (the same interface)
    configs: list[TrainConfig]  # one per seed, as its config.json records it
    owns: list[Any]  # one per seed: what the run records about an own model (None for a spec)
    setup: runenv.Setup  # the first seed's: data on the device, spec text, params
    teacher: Any = None  # config teacher's network (train/distill.Teacher), or None


def _epoch_runner(config: TrainConfig, splits: Any, device: torch.device, mode: str | None,
                  tags_by_seed: dict[int, list[str]], notice: Callable[[str], None]) -> Prepared:
    """One seed (mode None: `config` kept as given) or config.seeds seeds (mode 'streams' or 'grouped')."""
    if mode is None:
        setup = runenv.prepare(config, splits, device)
        config = config.replace(model_spec=setup.spec_text, val_size=len(setup.data.y_val))
        teacher = distill.load(config, setup.data, device)
        return Prepared(EpochRunner(setup.model, setup.data, config, device, [config.seed], notice=notice,
                                    teacher=teacher), [config], [setup.own], setup, teacher)
    from convladder.train.batched import CopyRng, StreamsEpochRunner, why_not_batchable, widen

    seeds = [config.seed + i for i in range(config.seeds)]
    rng = CopyRng(device)
    setups = []
    for s in seeds:
        setups.append(runenv.prepare(config.replace(seed=s, seeds=1), splits, device))
        rng.record()  # prepare seeded the global generators as the seed's sequential run does
    reason = why_not_batchable(setups[0].model) if mode == "grouped" else None
    if reason:  # grouped is only ever asked for explicitly (batched=on|grouped)
        raise UserError(f"batched: {config.batched}, but {reason}; use batched=streams, auto or off")
    first = setups[0]
    teacher = distill.load(config, first.data, device)
    configs = [config.replace(seed=s, seeds=1, model_spec=first.spec_text, val_size=len(first.data.y_val),
                              tags=list(tags_by_seed.get(s, config.tags))) for s in seeds]
    models = [s.model for s in setups]
    owns = [s.own for s in setups]
    if mode == "streams":
        return Prepared(StreamsEpochRunner(models, first.data, configs, device, rng, notice=notice, teacher=teacher),
                        configs, owns, first, teacher)
    model = widen(models)
    torch.manual_seed(seeds[0])  # one dropout stream for all copies
    return Prepared(EpochRunner(model, first.data, configs[0], device, seeds, notice=notice, teacher=teacher), configs,
                    owns, first, teacher)


def _recorders(prepared: Prepared, store: RunStore | None, progress: Progress, device: torch.device, t0: float,
               mode: str | None, resume_run: str | None) -> list[Recorder]:
    """One recorder per seed: its run folder created (or reopened to resume), its progress started."""
    runner, configs, owns, setup = prepared[:4]
    data = setup.data
    select = _select(configs[0], data)
    recs = [Recorder(c, store, setup.params, t0, select, own=own) for c, own in zip(configs, owns)]
    distilled = prepared.teacher.record if prepared.teacher is not None else None
    env = None
    for rec, c in zip(recs, configs):
        rec.distilled = distilled  # result.json's distilled_from
        if resume_run is not None:
            runner.load_resume(rec.reopen(resume_run), rec.state.epoch)
        elif store is not None:
            if env is None:
                env = runenv.environment(device, data.image_shape, data.mean, data.std)
                env.update(setup.levers or {})  # first_layer: how the first conv was whitened
                if mode is not None:
                    env["batched_with_seeds"], env["batched_mode"] = [x.seed for x in configs], mode
            rec.create(env)
        progress.start(run_info(c, rec.run_id, setup.params, device, data, distilled))
    return recs


# -- the epochs -----------------------------------------------------------------------------------------------

def run(config: TrainConfig, store: RunStore | None = None, progress: Progress | None = None, *, data: Any = None,
        batched: bool = False, resume_run: str | None = None, tags_by_seed: dict[int, list[str]] | None = None
        ) -> Generator[Rows, None, list[RunResult] | None]:
    """Train config.seed (or, `batched`, config.seeds seeds at once), one run each; yield each epoch's rows of the
    seeds still training (after they are saved); return their RunResults.

    `batched` with a `batched_mode` of None returns None at once (the caller trains the seeds one by one).
    `resume_run`: continue that run (one seed) from its last saved epoch. A caller that stops early (`.close()`)
    gets the runs recorded as 'stopped'. A seed whose loss turns NaN/inf is recorded as failed, the others
    train on, and its TrainingDiverged is raised at the end; KeyboardInterrupt marks the runs interrupted.
    `tags_by_seed`: a seed's own tags instead of config.tags (an executor's job tag per seed).
    """
    t0 = time.perf_counter()
    progress = progress or Progress()
    config, device = begin(config, progress.note, data=data)
    config = distill.resolve(config, store)  # teacher: the full run id, refused before any folder exists
    mode = batched_mode(config, device) if batched else None
    if batched and mode is None:
        return None
    if mode is not None and config.data_parallel > 1:
        raise UserError(f"data_parallel={config.data_parallel} trains one seed at a time across the cores; "
                        f"use batched=off (or data_parallel=1 with batched={config.batched})")
    prepared = _epoch_runner(config, load_data(config, data), device, mode, tags_by_seed or {}, progress.note)
    recs = _recorders(prepared, store, progress, device, t0, mode, resume_run)
    runner = prepared.runner
    del prepared  # grouped: the first seed's own model was copied into the widened one; let it go
    return (yield from _epochs(runner, recs, config.epochs, progress))


def _epochs(runner: Any, recs: list[Recorder], epochs: int, progress: Progress
            ) -> Generator[Rows, None, list[RunResult]]:
    """Epochs recs[0].state.epoch + 1 .. `epochs` of every seed; each seed's outcome recorded (module docstring)."""
    alive = list(range(len(recs)))
    diverged: list[TrainingDiverged] = []
    try:
        for epoch in range(recs[0].state.epoch + 1, epochs + 1):
            rows, finite, te = runner.train_epoch(epoch, progress)
            for i in [i for i in alive if not finite[i]]:
                diverged.append(recs[i].diverged(epoch))  # recorded as failed, its last good epoch kept
                alive.remove(i)
            if not alive:
                break
            runner.evaluate_into(rows, epoch, te)
            for i in alive:
                rec = recs[i]
                if not rec.state.warmup_s:  # the first epoch this process trained: warm-up, capture or compile
                    rec.state.warmup_s = runner.warmup_s
                weights = runner.weights(i) if rec.handle else None
                rec.epoch_done(rows[i], weights, runner.resume_state(i, weights, epoch) if weights is not None else None)
                progress.epoch_end(rows[i])
            pause_hook(epoch)
            yield [rows[i] for i in alive]
    except GeneratorExit:  # the caller stopped early: finished-so-far runs, not failures
        _end(recs, alive, lambda rec: rec.stopped())
        raise
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under the CLI (interrupts.Terminated)
        _end(recs, alive, lambda rec: _interrupted(rec, progress))
        raise
    except Exception as exc:  # anything else after the folders exist: mark the runs failed, never leave 'running'
        _end(recs, alive, lambda rec: rec.failed(exc))
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


def _end(recs: list[Recorder], alive: list[int], end: Callable[[Recorder], Any]) -> None:
    for i in alive:
        if recs[i].handle is not None:
            end(recs[i])


def _interrupted(rec: Recorder, progress: Progress) -> None:
    message = rec.interrupted().message
    if not interrupts_installed():  # the CLI says it in its one line
        progress.note(message)
