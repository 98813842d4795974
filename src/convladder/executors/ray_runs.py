"""How runs trained on Ray reach the driver's store, even when a node dies: shipped before a job reports done.

A worker trains into a private temporary store (`PrivateStore`), registered first with a collector actor
that lives on the driver's node (`RunCollector`; a node that dies cannot take it along). When the run ends,
the worker packs it and hands it to the collector *before* its task returns or its Tune trial reports done,
then removes the folder. So a run is never finished-but-unshipped behind a "done": if the node dies after
the hand-over, the run is already on the driver's node, and a retried attempt finds it there and trains
nothing (no duplicate run). The driver (`Collected`) imports what arrives, once per job key.

A node that dies mid-run leaves its temporary folder behind. Folders on the driver's own machine are found
from the collector's register: completed runs in them are imported (the store had none of that job), the
folders removed. A folder on another machine that died stays there; its path is in the job's result.
Ray is imported inside functions only.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from convladder.executors.base import Job, _summary, find_completed
from convladder.runs.pack import import_run, pack_runs

Attempt = dict[str, Any]  # {"node_id", "host", "path", "pid", "t"}: one try of a job, as the worker registered it


def _collector_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class RunCollector:
        """Holds shipped runs until the driver takes them, and every attempt of every job (for retries)."""

        def __init__(self) -> None:
            self.items: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            self.attempts: dict[str, list[Attempt]] = {}
            self.completed: dict[str, dict[str, Any]] = {}

        def start(self, key: str, attempt: Attempt) -> tuple[int, dict[str, Any] | None]:
            """Register an attempt; (its number, the job's completed result if an earlier attempt shipped one)."""
            self.attempts.setdefault(key, []).append(attempt)
            return len(self.attempts[key]), self.completed.get(key)

        def put(self, result: dict[str, Any], bundles: list[dict[str, Any]]) -> None:
            self.items.append((result, bundles))
            if result.get("status") == "completed":
                self.completed[result["key"]] = result

        def take(self) -> tuple[list[tuple[dict[str, Any], list[dict[str, Any]]]], dict[str, list[Attempt]]]:
            items, self.items = self.items, []
            return items, self.attempts

    return RunCollector


def first_sentence(exc: BaseException) -> str:
    """'NodeDiedError: Task failed because the node it was running on is dead or unavailable.' (Ray's messages
    go on for lines with commands to try)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    end = text.find(". ")
    return f"{type(exc).__name__}: {text[:end + 1] if end > 0 else text}"[:300]


def job_base(job: Job) -> dict[str, Any]:
    """The fields every result of `job` starts with."""
    return {"key": job.key, "label": job.label, **job.meta}


# -- worker side --------------------------------------------------------------------------------------------
class PrivateStore:
    """A worker's temporary run store for one attempt of job `key`, registered with the collector."""

    def __init__(self, collector_name: str, token: str, key: str, prefix: str = "convladder-ray-") -> None:
        import ray

        self.key = key
        self.collector = ray.get_actor(collector_name)
        self.path = tempfile.mkdtemp(prefix=f"{prefix}{token}-{key[:8]}-")
        where = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                 "path": self.path, "pid": os.getpid(), "t": time.time()}
        self.attempt, self.shipped = ray.get(self.collector.start.remote(key, where))

    def ship(self, result: dict[str, Any]) -> None:
        """Hand the run(s) in this store and `result` to the collector; returns once they are on its node."""
        import ray

        ray.get(self.collector.put.remote({**result, "attempt": self.attempt}, pack_runs(self.path)))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# -- driver side --------------------------------------------------------------------------------------------
class Collected:
    """The driver's end: starts the collector on this node, imports shipped runs, explains retries and losses."""

    def __init__(self, ray, runs_root: str | Path) -> None:
        self.ray, self.runs_root = ray, runs_root
        self.token = uuid.uuid4().hex[:10]
        self.name = f"convladder-collector-{self.token}"
        self.actor = _collector_class().options(name=self.name, **_on_this_node(ray)).remote()
        self.results: dict[str, dict[str, Any]] = {}  # job key -> result of its shipped run (driver's run id)
        self.attempts: dict[str, list[Attempt]] = {}

    def drain(self) -> list[dict[str, Any]]:
        """Import the runs shipped since the last call; their results (run ids are the driver's)."""
        items, self.attempts = self.ray.get(self.actor.take.remote())
        return [self._import(result, bundles) for result, bundles in items]

    def _import(self, result: dict[str, Any], bundles: list[dict[str, Any]]) -> dict[str, Any]:
        result = dict(result)
        key = result["key"]
        done = find_completed(self.runs_root, key) if result.get("status") == "completed" else None
        if done:  # a second completed run of the same job (cannot happen unless an attempt raced): not written again
            result["run_id"] = done
        else:
            ids = {b["record"]["id"]: import_run(self.runs_root, b) for b in bundles}
            # a stopped or crashed run's result does not know its temporary id: the store's one run is it
            result["run_id"] = ids.get(result.get("run_id")) or (next(iter(ids.values())) if len(ids) == 1 else None)
        if result.get("status") == "completed" or key not in self.results:
            self.results[key] = result
        return result

    def retry_note(self, key: str, causes: list[str | None] | None = None) -> str | None:
        """Why each earlier attempt of a retried job was lost (`retry_note`); None when it ran once."""
        tries = self.attempts.get(key) or []
        return retry_note(tries, self._alive(), causes) if len(tries) > 1 else None

    def loss_cause(self, key: str) -> str:
        """Where the last attempt of a job without a shipped run was, and whether its node died."""
        tries = self.attempts.get(key) or []
        if not tries:
            return "it never started on a worker"
        node = tries[-1].get("node_id") or ""
        state = ("its node died" if self._alive().get(node) is False else
                 "its worker ended without shipping the run (its node not reported dead)")
        return f"attempt {len(tries)} on {tries[-1].get('host')} (node {node[:8]}): {state}"

    def _alive(self) -> dict[str, bool]:
        try:
            return {n["NodeID"]: bool(n["Alive"]) for n in self.ray.nodes()}
        except Exception:  # noqa: BLE001 - the cause is then unknown, not an error
            return {}

    def recover_leftovers(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Temporary folders of attempts that never shipped: those on this machine are imported (completed runs
        of jobs the store lacks) and removed; returns (recovered results, paths left on other machines)."""
        self.drain()
        return recover_leftovers(self.attempts, self.runs_root, self.results)

    def close(self) -> None:
        try:
            self.ray.kill(self.actor)
        except Exception:  # noqa: BLE001 - already gone with its node
            pass


def retry_note(tries: list[Attempt], alive: dict[str, bool], causes: list[str | None] | None = None) -> str | None:
    """'attempt 1 on HOST (node 0123abcd) lost: its node died' for each attempt but the last; `causes[n]`
    (Tune's error of attempt n+1) where known, else whether the attempt's node is still alive."""
    notes = []
    for n, attempt in enumerate(tries[:-1]):
        node = attempt.get("node_id") or ""
        why = (causes[n] if causes and len(causes) > n else None) or (
            "its node died" if alive.get(node) is False else "its worker process died (its node not reported dead)")
        notes.append(f"attempt {n + 1} on {attempt.get('host')} (node {node[:8]}) lost: {why}")
    return "; ".join(notes) or None


def recover_leftovers(attempts: dict[str, list[Attempt]], runs_root: str | Path,
                      results: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The folders in `attempts` still on disk: a completed run in one whose job has no completed run in the store
    is imported (result added to `results`); every folder on this machine is removed; those of lost attempts on
    other machines are listed ('host:path', maybe left there)."""
    host = socket.gethostname()
    recovered, elsewhere = [], []
    for key, tries in attempts.items():
        for n, attempt in enumerate(tries, 1):
            path = Path(attempt.get("path") or "")
            if attempt.get("host") != host:  # an attempt lost on another machine may have left its folder there
                if n < len(tries) or key not in results:
                    elsewhere.append(f"{attempt.get('host')}:{path}")
                continue
            if not path.is_dir():
                continue
            for bundle in pack_runs(path):
                record = bundle["record"]
                if record.get("status") == "completed" and not find_completed(runs_root, key):
                    run_id = import_run(runs_root, bundle)
                    res = {"key": key, **_summary(runs_root, run_id), "error": None,
                           "recovered": f"imported from {path} after its worker was lost"}
                    results[key] = res
                    recovered.append(res)
            shutil.rmtree(path, ignore_errors=True)
    return recovered, elsewhere


def _on_this_node(ray) -> dict[str, Any]:
    """Actor options that pin it to the driver's node (a worker node may die; the driver's node is the one that must not)."""
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}
    except Exception:  # noqa: BLE001 - Ray Client mode: no node of our own; Ray places it
        return {}
