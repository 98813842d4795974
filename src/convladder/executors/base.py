"""Jobs and executors: a job is one training run, a pure function of its resolved config.

`run_job(job, runs_root)` is a plain top-level function (picklable, importable by a worker on another
machine): it rebuilds the `TrainConfig` from the job's dict, trains, writes the run store under
`runs_root`, and returns a small JSON-able dict. An `Executor` maps jobs to such dicts; the in-process
executor runs them one after another. Other executors (Ray) live beside this module and reuse `run_job`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from convladder.train.config import ADDED_LATER, KEY_EXCLUDED

JOB_TAG = "job:"  # TrainConfig.tags entry `job:<key>` marks the run a job produced (used to skip reruns)
# `source:<file>`: the file that defined the job (a ladder's YAML), so a report finds it again; where the file
# lives is not what the job trains, so it is not part of the key (a moved ladder file keeps its finished jobs)
SOURCE_TAG = "source:"

OnDone = Callable[[dict[str, Any]], None]


@dataclass
class Job:
    """One training run: `key` identifies it (hash of `config`), `label` is for people (e.g. 'step 3 seed 2')."""

    key: str
    config: dict[str, Any]
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # passed through to the result (e.g. step index)


# Which keys say where/how fast a job runs rather than what it learns (a job moved to another machine keeps its
# key), and which keys are newer than stored job keys (with the value those jobs had), is said by each field of
# TrainConfig (train/config.py): KEY_EXCLUDED and ADDED_LATER are derived from it.


def job_key(config: dict[str, Any]) -> str:
    """A stable 16-hex hash of a resolved config (keys sorted; the `job:` tag and KEY_EXCLUDED left out)."""
    # keys added later, at their default, are left out so that jobs keyed before they existed keep their key
    core = {k: v for k, v in config.items() if k not in KEY_EXCLUDED and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    core["tags"] = sorted(t for t in config.get("tags") or [] if not t.startswith((JOB_TAG, SOURCE_TAG)))
    blob = json.dumps(core, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_job(config: dict[str, Any], label: str = "", tags: Iterable[str] = (), **meta: Any) -> Job:
    """A Job whose config carries its key in `tags` (so the store can find it again)."""
    cfg = dict(config)
    cfg["tags"] = [t for t in cfg.get("tags") or [] if not t.startswith(JOB_TAG)] + list(tags)
    key = job_key(cfg)
    cfg["tags"].append(f"{JOB_TAG}{key}")
    return Job(key, cfg, label, dict(meta))


def find_completed(runs_root: str | Path, key: str) -> str | None:
    """The id of a completed run of job `key` in the store, or None."""
    from convladder.runs.store import RunStore

    runs = RunStore(runs_root).list_runs(tag=f"{JOB_TAG}{key}", status="completed")
    return runs[0].id if runs else None


def run_job(job: Job, runs_root: str | Path) -> dict[str, Any]:
    """Train one job into the store at `runs_root`; never raises for a failing job (the error is returned).

    Idempotent: a job whose completed run is already in the store is not trained again (status 'skipped').
    """
    from convladder.fileio import DiskFull

    base = {"key": job.key, "label": job.label, **job.meta}
    t0 = time.perf_counter()
    try:
        done = find_completed(runs_root, job.key)
        if done:
            return {**base, **_summary(runs_root, done), "status": "skipped", "error": None, "wall_time_s": 0.0}
        from convladder.train.config import TrainConfig
        from convladder.train.loop import train
        from convladder.runs.store import RunStore

        result = train(TrainConfig.from_dict(job.config), store=RunStore(runs_root))
        out = {**base, "run_id": result.run_id, "status": result.status, "error": None,
               "final_test_acc": result.final.get("test_acc"), "final_val_acc": result.final.get("val_acc"),
               "final_train_acc": result.final.get("train_acc"),
               "best_test_acc": result.best.get("test_acc"), "params": result.params}
    except KeyboardInterrupt:
        raise  # the user stops the whole batch; the trainer marked the run interrupted
    except DiskFull:
        raise  # every job after it would fail the same way: the batch stops with the one line of the full disk
    except Exception as exc:  # noqa: BLE001 - a crashing job is recorded, the others go on
        out = {**base, "run_id": _failed_run_id(runs_root, job.key), "status": "failed",
               "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    out["wall_time_s"] = time.perf_counter() - t0
    return out


def seed_groups(jobs: list[Job]) -> list[list[Job]]:
    """Consecutive jobs whose configs differ only in the seed, seeds counting up by one: each list can train
    as one batched run (N seeds at once); every other job is a list of its own."""
    groups: list[list[Job]] = []
    for job in jobs:
        last = groups[-1][-1] if groups else None
        if last is not None and _same_but_seed(last.config, job.config) and \
                int(job.config.get("seed", 1)) == int(last.config.get("seed", 1)) + 1:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _same_but_seed(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def core(c: dict[str, Any]) -> dict[str, Any]:
        return {**c, "seed": None, "tags": [t for t in c.get("tags") or [] if not t.startswith(JOB_TAG)]}
    return core(a) == core(b)


def run_seed_group(jobs: list[Job], runs_root: str | Path) -> list[dict[str, Any]]:
    """Train jobs that differ only in the seed (`seed_groups`): at once when the trainer batches seeds on
    this device (`batched_mode`: on CUDA, N models stepped together as one CUDA graph; `batched: off` in the
    config turns it off), else one by one with `run_job`. One result dict per job, in order, either way; each
    seed is its own run with its own job tag, so reruns skip it as they skip any job.
    """
    from convladder.fileio import DiskFull

    pending = [j for j in jobs if not find_completed(runs_root, j.key)]
    if len(pending) < 2 or pending != jobs[len(jobs) - len(pending):] or not _batches(pending):
        return [run_job(j, runs_root) for j in jobs]
    done = [run_job(j, runs_root) for j in jobs[:len(jobs) - len(pending)]]  # the completed ones: 'skipped'
    from convladder.runs.store import RunStore
    from convladder.train.config import TrainConfig
    from convladder.train.loop import train_batched

    t0 = time.perf_counter()
    first = TrainConfig.from_dict(pending[0].config)
    error = None
    try:
        if train_batched(first.replace(seeds=len(pending)), RunStore(runs_root),
                         tags_by_seed={int(j.config.get("seed", 1)): list(j.config["tags"]) for j in pending}) is None:
            return done + [run_job(j, runs_root) for j in pending]  # the trainer chose one by one after all
    except (KeyboardInterrupt, DiskFull):
        raise
    except Exception as exc:  # noqa: BLE001 - a diverged seed raises at the end; the others are stored
        error = f"{type(exc).__name__}: {exc}"
    wall = (time.perf_counter() - t0) / len(pending)
    out = []
    for job in pending:  # each job's outcome from the store, as run_job reports it
        base = {"key": job.key, "label": job.label, **job.meta, "batched_with": len(pending)}
        run = find_completed(runs_root, job.key)
        if run:
            out.append({**base, **_summary(runs_root, run), "error": None, "wall_time_s": wall})
        else:
            out.append({**base, "run_id": _failed_run_id(runs_root, job.key), "status": "failed",
                        "error": error or "not completed in its batched run", "wall_time_s": wall})
    return done + out


def _batches(jobs: list[Job]) -> bool:
    """Whether the trainer would train these seeds at once on this machine (cheap: no data, no model)."""
    from convladder.train.config import TrainConfig
    from convladder.train.loop import batched_mode, resolve_device

    try:
        config = TrainConfig.from_dict(jobs[0].config).replace(seeds=len(jobs))
        return batched_mode(config, resolve_device(config.device)) is not None
    except Exception:  # noqa: BLE001 - a bad config fails in run_job with its own message
        return False


def job_line(res: dict[str, Any]) -> str:
    """'t001 seed 1: completed test 97.12%  run ID' (or the error / where it stopped) for a finished job."""
    acc = res.get("final_test_acc")
    stop = f" after epoch {res.get('epochs_done')}" if res.get("status") == "stopped" else ""
    return (f"{res.get('label')}: {res.get('status')}{stop}" + (f" test {acc:.2f}%" if acc is not None else "")
            + (f"  {res['error']}" if res.get("error") else "") + (f"  run {res['run_id']}" if res.get("run_id") else "")
            + (f"  (retried: {res['retried']})" if res.get("retried") else "")
            + (f"  ({res['recovered']})" if res.get("recovered") else "")
            + (f"  (note: {res['note']})" if res.get("note") else ""))


def _summary(runs_root: str | Path, run_id: str) -> dict[str, Any]:
    """A stored run's fields of a job result (as `run_job` reports a run it trained), from its result.json.

    Read tolerantly, as `runs list` reads it (`runs.reader.read_result`): a missing or damaged result.json
    leaves that run's accuracies unknown and says so in `note` (status and params from the index), instead of
    raising and losing the results of every other job.
    """
    from convladder.runs.reader import read_result
    from convladder.runs.store import RunStore

    store = RunStore(runs_root)
    record = store.get(run_id)
    notes: list[str] = []
    rec = read_result(store.root / record.id, notes)
    final, best = rec.get("final") or {}, rec.get("best") or {}
    out = {"run_id": run_id, "status": rec.get("status", record.status), "final_test_acc": final.get("test_acc"),
           "final_val_acc": final.get("val_acc"), "final_train_acc": final.get("train_acc"),
           "best_test_acc": best.get("test_acc"), "params": rec.get("params", record.params)}
    if notes:
        out["note"] = f"run {run_id}: {'; '.join(notes)}" + ("" if rec else ", its accuracies unknown")
    return out


def _failed_run_id(runs_root: str | Path, key: str) -> str | None:
    """The run folder a crashed job left (if it got that far), so the failure can be inspected."""
    try:
        from convladder.runs.store import RunStore

        runs = RunStore(runs_root).list_runs(tag=f"{JOB_TAG}{key}")
        return runs[0].id if runs else None
    except Exception:  # noqa: BLE001 - best effort only
        return None


class Executor(Protocol):
    """Runs jobs somewhere; returns one result dict per job, in the jobs' order."""

    def map(self, jobs: list[Job], runs_root: str | Path, on_done: OnDone | None = None) -> list[dict[str, Any]]: ...


class InProcessExecutor:
    """Sequential, in this process (the default). A crashing job is recorded as failed; the rest go on.

    Jobs that differ only in the seed train as one batched run where the trainer batches seeds (CUDA).
    """

    name = "inprocess"

    def map(self, jobs: list[Job], runs_root: str | Path, on_done: OnDone | None = None) -> list[dict[str, Any]]:
        results = []
        for group in seed_groups(jobs):  # seeds of one config train at once where the trainer batches them
            for res in run_seed_group(group, runs_root):
                results.append(res)
                if on_done:
                    on_done(res)
        return results


EXECUTORS: dict[str, Callable[..., Executor]] = {"inprocess": InProcessExecutor}  # ray_executor adds "ray"


def make_executor(name: str = "inprocess", ray_address: str | None = None, cpus_per_trial: float = 1.0,
                  gpus_per_trial: float = 0.0, max_retries: int | None = None, ray_verbose: bool = False) -> Executor:
    """An executor by name with its options; Ray options without `ray` are an error, not ignored.
    `max_retries` None: the Ray executor's default."""
    from convladder.errors import UserError

    if name == "ray" and name not in EXECUTORS:
        importlib.import_module("convladder.executors.ray_executor")  # registers EXECUTORS["ray"]; Ray loads lazily
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}: use {' or '.join(sorted(set(EXECUTORS) | {'ray'}))}")
    if name == "inprocess":
        if ray_address or gpus_per_trial or max_retries is not None or ray_verbose:
            raise UserError("--ray-address/--gpus-per-trial/--max-retries/--ray-verbose need --executor ray")
        return InProcessExecutor()
    extra = {} if max_retries is None else {"max_retries": max_retries}
    return EXECUTORS[name](address=ray_address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                           verbose=ray_verbose, **extra)
