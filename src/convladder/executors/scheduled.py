"""Early stopping of sweep trials with Ray Tune's schedulers (ASHA), without a scheduler of our own.

Each job (trial x seed) is a Tune trial whose `step()` trains one epoch (`train.loop.train_epochs`) and
reports the validation accuracy; Tune's ASHAScheduler compares trials at its rungs (grace_period,
grace_period x reduction_factor, ...) and stops the weak ones. The test set never decides: the metric is
`val_acc`, so a sweep with a scheduler needs a validation split.

Runs reach the driver's store the same way as with the plain Ray executor: the worker trains into a
private temporary store; when Tune stops the trial (early or at the end) `cleanup()` closes the epoch
generator (a stopped run gets status 'stopped' and a result.json), packs the run folder and hands it to a
collector actor; the driver imports it (`runs.pack.import_run`). No shared file system is needed.
Tune and Ray are imported inside functions only.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import uuid
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


def _trainable_class():
    """The Tune Trainable, defined here so that Tune is imported only when a scheduled sweep runs."""
    import ray
    from ray import tune

    class EpochTrainable(tune.Trainable):
        """One job; one Tune iteration = one epoch. cleanup() always ships the run to the collector."""

        def setup(self, config: dict[str, Any], jobs: list[Job], collector: str, threads: int) -> None:
            from convladder.train.config import TrainConfig
            from convladder.train.loop import train_epochs
            from convladder.runs.store import RunStore

            if threads > 0:
                import torch

                torch.set_num_threads(threads)
            self.job = jobs[config["job"]]
            self.collector = ray.get_actor(collector)
            self.tmp = tempfile.mkdtemp(prefix="convladder-tune-")
            self.t0 = time.perf_counter()
            self.result = None
            self.error: str | None = None
            self.last: dict[str, Any] = {}
            self.epochs_total = int(self.job.config.get("epochs", 1))
            self.epochs = train_epochs(TrainConfig.from_dict(self.job.config), RunStore(self.tmp))

        def step(self) -> dict[str, Any]:
            try:
                row = next(self.epochs)
                if row["epoch"] >= self.epochs_total:
                    self._finish()
            except StopIteration as stop:
                self.result = stop.value
                return {**self._metrics(), "done": True}
            except Exception as exc:  # noqa: BLE001 - the run is marked failed by the trainer; report and end
                self.error = f"{type(exc).__name__}: {exc}"
                return {**self._metrics(), "done": True}
            self.last = row
            return {**self._metrics(), "done": self.result is not None}

        def _finish(self) -> None:
            try:
                next(self.epochs)
            except StopIteration as stop:
                self.result = stop.value

        def _metrics(self) -> dict[str, Any]:
            val = self.last.get("val_acc")
            return {"epoch": self.last.get("epoch", 0), "val_acc": float("nan") if val is None else float(val),
                    "train_acc": self.last.get("train_acc", float("nan"))}

        def cleanup(self) -> None:
            from convladder.runs.pack import pack_runs

            status = "completed" if self.result is not None else "failed" if self.error else "stopped"
            if status == "stopped":
                self.epochs.close()  # writes the 'stopped' result.json after the last finished epoch
            base = {"key": self.job.key, "label": self.job.label, **self.job.meta, "executor": "ray",
                    "scheduler": True, "status": status, "error": self.error,
                    "epochs_done": self.last.get("epoch", 0), "last_val_acc": self.last.get("val_acc"),
                    "wall_time_s": time.perf_counter() - self.t0}
            try:
                bundles = pack_runs(self.tmp)
                run_id = bundles[0]["record"]["id"] if bundles else None
                if self.result is not None:
                    base.update(run_id=self.result.run_id, final_test_acc=self.result.final.get("test_acc"),
                                final_val_acc=self.result.final.get("val_acc"),
                                final_train_acc=self.result.final.get("train_acc"),
                                best_test_acc=self.result.best.get("test_acc"), params=self.result.params)
                else:
                    base.update(run_id=run_id, final_test_acc=None)
                ray.get(self.collector.put.remote(base, bundles))
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)

    return EpochTrainable


def _collector_class():
    import ray

    @ray.remote(num_cpus=0)
    class RunCollector:
        """Holds finished runs (result dict + packed folders) until the driver takes them."""

        def __init__(self) -> None:
            self.items: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

        def put(self, result: dict[str, Any], bundles: list[dict[str, Any]]) -> None:
            self.items.append((result, bundles))

        def take(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
            items, self.items = self.items, []
            return items

    return RunCollector


def map_scheduled(executor, jobs: list[Job], runs_root: str | Path, scheduler: SchedulerSpec,
                  on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Run `jobs` as Tune trials under `scheduler` on the executor's Ray; results in the jobs' order.

    Each result has status completed, stopped (by the scheduler; `epochs_done`, `last_val_acc`), failed
    or skipped (already in the store). Runs are imported into the store at `runs_root` as they arrive.
    """
    ray = executor.connect()
    # Tune's new console output prints tables and tracebacks of trials it stops; the legacy one at verbose=0
    # is silent, and convladder prints its own progress line per job.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from convladder.runs.pack import import_run

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        if find_completed(runs_root, job.key):
            results[i] = run_job(job, runs_root)  # 'skipped': the store has it
            if on_done:
                on_done(results[i])
        else:
            todo.append(i)
    if not todo:
        return [r for r in results if r is not None]
    index = {jobs[i].key: i for i in todo}
    name = f"convladder-collector-{uuid.uuid4().hex[:12]}"
    collector = _collector_class().options(name=name).remote()

    def collect() -> None:
        for result, bundles in ray.get(collector.take.remote()):
            ids = {b["record"]["id"]: import_run(runs_root, b) for b in bundles}
            result["run_id"] = ids.get(result.get("run_id"), result.get("run_id"))
            i = index.get(result["key"])
            if i is not None and results[i] is None:
                results[i] = result
                if on_done:
                    on_done(result)

    class Poll(tune.Callback):
        """Imports finished runs while Tune runs, so progress lines appear as trials end."""

        last = 0.0

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last >= POLL_S:
                self.last = time.monotonic()
                collect()

    trainable = tune.with_parameters(_trainable_class(), jobs=jobs, collector=name, threads=executor.torch_threads)
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
            tune_config=tune.TuneConfig(scheduler=asha, reuse_actors=False),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0, callbacks=[Poll()],
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
        try:
            grid = tuner.fit()
        except Exception as exc:  # noqa: BLE001 - Tune's own failure (not a trial's): one line, finished runs kept
            collect()
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UserError(f"Ray Tune stopped the sweep ({type(exc).__name__}: {first}); runs that finished are "
                            "in the store and a rerun skips them") from None
        collect()
        lost = {r.config["job"]: r.error for r in grid if r.error is not None}
    finally:
        ray.kill(collector)
        shutil.rmtree(storage, ignore_errors=True)
    for i in todo:
        if results[i] is None:  # the worker died before cleanup() could ship the run
            job = jobs[i]
            err = lost.get(i)
            results[i] = {"key": job.key, "label": job.label, **job.meta, "run_id": None, "status": "failed",
                          "executor": "ray", "error": "tune trial ended without a result"
                          + (f": {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}" if err else "")}
            if on_done:
                on_done(results[i])
    return [r for r in results if r is not None]


def stopped_summary(runs: list[dict[str, Any]]) -> str:
    """'stopped at epoch 2 (val 97.1 %)' for a trial whose seeds were stopped early."""
    stopped = [r for r in runs if r.get("status") == "stopped"]
    epochs = sorted({int(r.get("epochs_done") or 0) for r in stopped})
    vals = [r["last_val_acc"] for r in stopped if r.get("last_val_acc") is not None and not math.isnan(r["last_val_acc"])]
    return (f"stopped by the scheduler after epoch {'/'.join(map(str, epochs))}"
            + (f" (val {max(vals):.2f} %)" if vals else ""))
