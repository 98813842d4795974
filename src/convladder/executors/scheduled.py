"""Early stopping of sweep trials with Ray Tune's schedulers (ASHA), without a scheduler of our own.

Each job (trial x seed) is a Tune trial whose `step()` trains one epoch (`train.loop.train_epochs`) and
reports the validation accuracy; Tune's ASHAScheduler compares trials at its rungs (grace_period,
grace_period x reduction_factor, ...) and stops the weak ones. The test set never decides: the metric is
`val_acc`, so a sweep with a scheduler needs a validation split.

Runs reach the driver's store the same way as with the plain Ray executor (`ray_runs.py`): the worker
trains into a private temporary store and hands the packed run to a collector actor on the driver's node;
the driver imports it (`runs.pack.import_run`). No shared file system is needed. A completed (or failed)
run is handed over in the step that ends it, before Tune hears "done"; a trial the scheduler stops ships
from `cleanup()` (or `reset_config()`, when Tune reuses the actor for the next trial), which closes the epoch
generator (status 'stopped' and a result.json). A trial whose
worker or node is lost is restarted (`max_failures` = the executor's `max_retries`).
Tune and Ray are imported inside functions only.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors.base import Job, OnDone, find_completed, run_job

SCHEDULER_KEYS = {"name", "grace_period", "reduction_factor"}
POLL_S = 1.0  # how often the driver collects finished runs while Tune runs


@dataclass
class SchedulerSpec:
    """A sweep file's `scheduler:` block: which Tune scheduler, and its rung settings (in epochs)."""

    name: str = "asha"
    grace_period: int = 1  # epochs every trial gets before it can be stopped
    reduction_factor: float = 2.0  # keep the top 1/reduction_factor at each rung

    def describe(self) -> str:
        return (f"{self.name} on val_acc (grace {self.grace_period} epoch(s), "
                f"keeps the top 1/{self.reduction_factor:g} at each rung)")


def parse_scheduler(raw: Any, where) -> SchedulerSpec | None:
    """The `scheduler:` entry of a sweep file (`asha` or a mapping); `where(*key)` says file:line."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where('scheduler')}: scheduler must be asha or a mapping {{name: asha, grace_period: 1, "
                        "reduction_factor: 2}")
    for key in raw:
        if key not in SCHEDULER_KEYS:
            raise UserError(f"{where('scheduler', key)}: unknown scheduler key {key!r}; known: "
                            f"{', '.join(sorted(SCHEDULER_KEYS))}")
    name = str(raw.get("name", "asha")).lower()
    if name != "asha":
        raise UserError(f"{where('scheduler', 'name')}: scheduler {name!r} is not supported; use asha")
    grace, factor = raw.get("grace_period", 1), raw.get("reduction_factor", 2)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise UserError(f"{where('scheduler', 'grace_period')}: grace_period must be a whole number of epochs >= 1")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise UserError(f"{where('scheduler', 'reduction_factor')}: reduction_factor must be a number > 1")
    return SchedulerSpec(name, grace, float(factor))


class EpochRunner:
    """One job trained an epoch per `step()` into a worker's private store, shipping its run the moment it ends.

    The run is handed to the collector (`ship`) inside the step that ends it, *before* Tune hears 'done': a node
    lost after that loses no finished run (Tune records the trial done, and a cleanup() that never runs has
    nothing left to ship). Only a trial the scheduler stops ships from `close()`. `ship(result)` packs the store.
    """

    def __init__(self, job: Job, store_path: str, ship: Callable[[dict[str, Any]], None],
                 shipped: dict[str, Any] | None = None) -> None:
        from convladder.runs.store import RunStore
        from convladder.train.config import TrainConfig
        from convladder.train.loop import train_epochs

        self.job, self.ship, self.shipped = job, ship, shipped
        self.t0 = time.perf_counter()
        self.result = None
        self.error: str | None = None
        self.last: dict[str, Any] = {}
        self.epochs_total = int(job.config.get("epochs", 1))
        # an earlier attempt of this job shipped its completed run: nothing to train (no duplicate run)
        self.epochs = None if shipped else train_epochs(TrainConfig.from_dict(job.config), RunStore(store_path))

    def step(self) -> dict[str, Any]:
        if self.shipped is not None:
            val = self.shipped.get("final_val_acc")
            return {"epoch": self.epochs_total, "val_acc": float("nan") if val is None else float(val),
                    "train_acc": float("nan"), "done": True}
        try:
            row = next(self.epochs)
            self.last = row
            if row["epoch"] >= self.epochs_total:
                self._finish()
        except StopIteration as stop:
            self.result = stop.value
        except Exception as exc:  # noqa: BLE001 - the run is marked failed by the trainer; report and end
            self.error = f"{type(exc).__name__}: {exc}"
        done = self.result is not None or self.error is not None
        if done:
            self._ship("completed" if self.result is not None else "failed")
        return {**self._metrics(), "done": done}

    def _finish(self) -> None:
        try:
            next(self.epochs)
        except StopIteration as stop:
            self.result = stop.value

    def _metrics(self) -> dict[str, Any]:
        val = self.last.get("val_acc")
        return {"epoch": self.last.get("epoch", 0), "val_acc": float("nan") if val is None else float(val),
                "train_acc": self.last.get("train_acc", float("nan"))}

    def close(self) -> None:
        """Tune stopped the trial (or it ended): a run not shipped yet is a stopped one; ship it."""
        if self.shipped is not None or self.epochs is None:
            return
        self.epochs.close()  # writes the 'stopped' result.json after the last finished epoch
        self._ship("stopped")

    def _ship(self, status: str) -> None:
        base = {"key": self.job.key, "label": self.job.label, **self.job.meta, "executor": "ray",
                "scheduler": True, "status": status, "error": self.error, "run_id": None, "final_test_acc": None,
                "epochs_done": self.last.get("epoch", 0), "last_val_acc": self.last.get("val_acc"),
                "wall_time_s": time.perf_counter() - self.t0}
        if self.result is not None:
            base.update(run_id=self.result.run_id, final_test_acc=self.result.final.get("test_acc"),
                        final_val_acc=self.result.final.get("val_acc"),
                        final_train_acc=self.result.final.get("train_acc"),
                        best_test_acc=self.result.best.get("test_acc"), params=self.result.params)
        self.ship(base)
        self.shipped = base


def _trainable_class():
    """The Tune Trainable, defined here so that Tune is imported only when a scheduled sweep runs."""
    from ray import tune

    from convladder.executors.ray_runs import PrivateStore

    class EpochTrainable(tune.Trainable):
        """One job; one Tune iteration = one epoch (`EpochRunner`)."""

        def setup(self, config: dict[str, Any], jobs: list[Job], collector: str, token: str, threads: int) -> None:
            if threads > 0:
                import torch

                torch.set_num_threads(threads)
            self.jobs, self.collector, self.token = jobs, collector, token
            self._start(config)

        def _start(self, config: dict[str, Any]) -> None:
            job = self.jobs[config["job"]]
            self.store = PrivateStore(self.collector, self.token, job.key, prefix="convladder-tune-")
            try:
                self.runner: EpochRunner | None = EpochRunner(job, self.store.path, self.store.ship, self.store.shipped)
            except BaseException:
                self.store.remove()
                raise

        def step(self) -> dict[str, Any]:
            return self.runner.step()

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            """Tune reuses this actor for the next trial (reuse_actors): finish this job, start that one. Saves a
            worker process start (torch import) per trial."""
            self.cleanup()
            self._start(new_config)
            return True

        def cleanup(self) -> None:
            if self.runner is None:
                return
            try:
                self.runner.close()
            finally:
                self.runner = None
                self.store.remove()

    return EpochTrainable


def map_scheduled(executor, jobs: list[Job], runs_root: str | Path, scheduler: SchedulerSpec,
                  on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Run `jobs` as Tune trials under `scheduler` on the executor's Ray; results in the jobs' order.

    Each result has status completed, stopped (by the scheduler; `epochs_done`, `last_val_acc`), failed
    or skipped (already in the store). Runs are imported into the store at `runs_root` as they arrive.
    A trial whose worker or node is lost is restarted up to `executor.max_retries` times (`retried` says why).
    """
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        if find_completed(runs_root, job.key):
            results[i] = run_job(job, runs_root)  # 'skipped': the store has it
            if on_done:
                on_done(results[i])
        else:
            todo.append(i)
    if not todo:  # a rerun with nothing left to train does not start or join Ray
        return [r for r in results if r is not None]
    ray = executor.connect()
    # Tune's new console output prints tables and tracebacks of trials it stops; the legacy one at verbose=0
    # is silent, and convladder prints its own progress line per job.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from convladder.executors.ray_runs import Collected, first_sentence, job_base

    executor.log.route_loggers()  # Tune's loggers exist now
    index = {jobs[i].key: i for i in todo}
    collected = Collected(ray, runs_root)
    causes: dict[int, list[str | None]] = {}  # job index -> Tune's error of each failed attempt (None: not known)

    def collect() -> None:
        for result in collected.drain():
            i = index.get(result["key"])
            if i is not None and results[i] is None:
                results[i] = _with_retry(result, collected, causes.get(i))
                if on_done:
                    on_done(results[i])

    class Poll(tune.Callback):
        """Imports finished runs while Tune runs (progress lines as trials end); notes why trials failed."""

        last = 0.0

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last >= POLL_S:
                self.last = time.monotonic()
                collect()

        def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
            causes.setdefault(trial.config["job"], []).append(_error_line(trial))

        on_trial_recover = on_trial_error  # failed, and will be retried

    trainable = tune.with_parameters(_trainable_class(), jobs=jobs, collector=collected.name, token=collected.token,
                                     threads=executor.torch_threads)
    resources = {"cpu": executor.cpus, "gpu": executor.gpus}
    storage = tempfile.mkdtemp(prefix="convladder-tune-store-")
    max_epochs = max(int(jobs[i].config.get("epochs", 1)) for i in todo)
    asha = ASHAScheduler(time_attr="training_iteration", metric="val_acc", mode="max", max_t=max_epochs,
                         grace_period=min(scheduler.grace_period, max_epochs),
                         reduction_factor=scheduler.reduction_factor)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"job": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(scheduler=asha, reuse_actors=True),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=1 if executor.log.verbose else 0,
                                      callbacks=[Poll()],
                                      failure_config=tune.FailureConfig(max_failures=executor.max_retries),
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
        try:
            tuner.fit()
        except Exception as exc:  # noqa: BLE001 - Tune's own failure (not a trial's): one line, finished runs kept
            collect()
            raise UserError(f"Ray Tune stopped the sweep ({first_sentence(exc)}); runs that finished are "
                            f"in the store and a rerun skips them{executor.log.note()}") from None
        collect()
        recovered, executor.left_elsewhere = collected.recover_leftovers()
    finally:
        collected.close()
        shutil.rmtree(storage, ignore_errors=True)
    for res in recovered:  # finished on disk, its worker lost before it shipped (cannot happen unless it died mid-hand-over)
        i = index[res["key"]]
        if results[i] is None or results[i].get("status") != "completed":
            results[i] = _with_retry({**job_base(jobs[i]), "executor": "ray", **res}, collected, causes.get(i))
            if on_done:
                on_done(results[i])
    for i in todo:
        if results[i] is None:  # the trial's worker was lost before it shipped its run
            why = "; ".join(c for c in causes.get(i, []) if c) or collected.loss_cause(jobs[i].key)
            results[i] = _with_retry({**job_base(jobs[i]), "run_id": None, "status": "failed", "executor": "ray",
                                      "error": f"tune trial ended without a run: {why}{executor.log.note()}"},
                                     collected, causes.get(i))
            if on_done:
                on_done(results[i])
    return [r for r in results if r is not None]


def _with_retry(result: dict[str, Any], collected, causes: list[str | None] | None) -> dict[str, Any]:
    note = collected.retry_note(result["key"], causes)
    return {**result, "retried": note} if note else result


def _error_line(trial) -> str | None:
    """The last line of a failed Tune trial's error (e.g. 'ray.exceptions.ActorDiedError: ... node died')."""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - the error file may be gone with its node
        text = ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def stopped_summary(runs: list[dict[str, Any]]) -> str:
    """'stopped at epoch 2 (val 97.1 %)' for a trial whose seeds were stopped early."""
    stopped = [r for r in runs if r.get("status") == "stopped"]
    epochs = sorted({int(r.get("epochs_done") or 0) for r in stopped})
    vals = [r["last_val_acc"] for r in stopped if r.get("last_val_acc") is not None and not math.isnan(r["last_val_acc"])]
    return (f"stopped by the scheduler after epoch {'/'.join(map(str, epochs))}"
            + (f" (val {max(vals):.2f} %)" if vals else ""))
