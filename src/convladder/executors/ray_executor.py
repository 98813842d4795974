"""The Ray executor: jobs run as Ray tasks (local Ray, or a cluster via `--ray-address`); the driver writes the store.

Why the driver writes: workers may be on other machines with no access to the driver's run store, and SQLite
over a network file system is unsafe. So a worker trains into a private temporary store, packs the run
folder it produced (every file's bytes plus the index row) and hands it to a collector actor on the
driver's node before its task returns (`ray_runs.py`: a node lost after that loses no finished run); the
driver imports each run into the real store with `convladder.runs.pack.import_run`, which gives a folder
identical in layout to an in-process run (config.json, env.json, metrics.jsonl, result.json,
model/best.safetensors, resume.pt). Only the run id differs from the worker's temporary one (the driver's
store picks it, so ids stay unique), and env.json says where the run really ran (the worker's hostname and
device). A job whose worker or node is lost is retried (`max_retries`); the result says which attempt was
lost and why. Joining a cluster and Ray's log lines: `ray_connect.py`.

Ray is imported lazily, inside functions, so `convladder` works without it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.fileio import DiskFull
from convladder.executors.base import EXECUTORS, Job, OnDone, find_completed, run_job
from convladder.executors.ray_connect import RayLog, check_reachable, parse_address  # noqa: F401 - check_reachable re-exported
from convladder.executors.ray_runs import Collected, PrivateStore, first_sentence, job_base

INSTALL_HINT = "Ray is not installed: pip install 'convladder[ray]' (or use --executor inprocess)"
JOIN_TIMEOUT_S = 45.0  # ray.init against something that accepts TCP but is not Ray retries for minutes
# Retries of a job whose worker or node was lost (Ray task max_retries, Tune max_failures). Measured on a
# 2-node loopback cluster (docs/scaling.md): a lost job costs Ray's node-death detection (14.9 s with its
# default health checks) plus one run; 1 retry survives one lost node per job, and a job that kills its
# worker every time (out of memory) costs at most 2 runs. Application errors are never retried.
DEFAULT_MAX_RETRIES = 1
POLL_S = 1.0  # how often the driver imports shipped runs while jobs run
STOP_WAIT_S = 10.0  # on Ctrl-C/SIGTERM: how long to wait for cancelled tasks' workers to be gone


def import_ray():
    """The `ray` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


# -- worker side --------------------------------------------------------------------------------------------
def run_job_shipped(job: Job, threads: int, collector: str, token: str) -> dict[str, Any]:
    """Run `job` into a private temporary store, ship the run to the driver's collector, return the result.

    `threads` pins torch's CPU threads to the trial's CPU share (Ray also sets OMP_NUM_THREADS, but a
    reused worker process keeps whatever an earlier task set). A retried attempt of a job an earlier attempt
    already shipped trains nothing.
    """
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    store = PrivateStore(collector, token, job.key)
    try:
        if store.shipped is not None:
            return store.shipped
        result = run_job(job, store.path)
        store.ship(result)
        return result
    finally:
        store.remove()


class RayExecutor:
    """Each job is a Ray task with `cpus_per_trial` CPUs and `gpus_per_trial` GPUs (fractions share a GPU).

    address: None starts a local Ray with this machine's CPUs/GPUs (no dashboard); 'auto' joins the cluster
    this machine belongs to; 'host:port' (the GCS port of `ray start --head`) or 'ray://host:port' (Ray
    Client) joins that cluster, checked first so that a wrong address or a missing token is one line in
    seconds. `max_retries`: attempts after a lost worker or node. `verbose`: Ray's own log lines on the
    terminal (else in its log folder). Workers need convladder installed.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 num_cpus: int | None = None, num_gpus: int | None = None, shutdown: bool = False,
                 max_retries: int = DEFAULT_MAX_RETRIES, verbose: bool = False) -> None:
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise UserError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0 "
                            f"(got {cpus_per_trial}, {gpus_per_trial})")
        if max_retries < 0:
            raise UserError(f"--max-retries must be 0 or more (got {max_retries})")
        if address:
            parse_address(address)  # a wrong form fails before anything starts
        self.address, self.cpus, self.gpus = address, cpus_per_trial, gpus_per_trial
        self.num_cpus, self.num_gpus, self.shutdown = num_cpus, num_gpus, shutdown
        self.max_retries = max_retries
        self.log = RayLog(verbose)
        self.left_elsewhere: list[str] = []  # temporary folders of lost attempts on machines the driver cannot reach
        self.init_time_s = 0.0

    @property
    def torch_threads(self) -> int:
        """torch CPU threads per trial: its CPU share on CPU trials, torch's choice (0) on GPU trials."""
        return max(1, int(self.cpus)) if self.gpus == 0 else 0

    def connect(self):
        """Start or join Ray (once per process); returns the ray module."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        t0 = time.perf_counter()
        self.log.start()
        try:
            self._init(ray)
        except BaseException:
            self.log.discard_if_empty()
            raise
        self.log.settle(ray)
        # ray.init replaced the SIGTERM handler (a Python sys.exit and a C++ one that dumps `*** SIGTERM received
        # ... PC:` and aborts): take it back, so SIGTERM runs the same cleanup as Ctrl-C (`_stop`)
        from convladder.interrupts import reinstall

        reinstall()
        self.init_time_s = time.perf_counter() - t0
        return ray

    def _init(self, ray) -> None:
        """ray.init for this executor: join `address` (checked first) or start a local Ray."""
        _reread_auth_mode()
        level = "INFO" if self.log.verbose else "WARNING"  # quiet: warnings go to the log file, not the terminal
        opts = {"include_dashboard": False, "log_to_driver": self.log.verbose, "configure_logging": True,
                "logging_level": level}
        if self.address:
            check_reachable(self.address)
            try:
                _init_within(ray, JOIN_TIMEOUT_S, address=self.address,
                             **({} if self.address.startswith("ray://") else opts))
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, grpc errors ...
                hint = ("pip install 'ray[client]' for ray:// addresses" if "ray[client]" in str(exc) else
                        "check the address (`ray status` on the head node) or drop --ray-address to start a local Ray")
                raise UserError(f"cannot join the Ray cluster at {self.address!r} "
                                f"({first_sentence(exc)}); {hint}{self.log.note()}") from None
        else:
            num_gpus = self.num_gpus if self.num_gpus is not None else _local_gpus()
            if self.gpus > 0 and num_gpus == 0:
                raise UserError(f"--gpus-per-trial {self.gpus} but this machine has no CUDA GPU for a local Ray; "
                                "use --gpus-per-trial 0 or join a GPU cluster with --ray-address")
            # a small object store: results are a few hundred KB per run; Ray's default takes 30 % of RAM
            ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
                     object_store_memory=100 * 1024 * 1024, **opts)

    def map(self, jobs: list[Job], runs_root: str | Path, on_done: OnDone | None = None) -> list[dict[str, Any]]:
        """Submit all jobs, import each finished run into the store as it arrives; results in the jobs' order.

        A job whose worker or node is lost is retried up to `max_retries` times (its result says so in
        `retried`); a run that finished is imported even when Ray then reports its task failed.
        """
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        todo = []
        for i, job in enumerate(jobs):
            if find_completed(runs_root, job.key):  # same shortcut as run_job: the store already has it
                results[i] = self._finish(run_job(job, runs_root), on_done)
            else:
                todo.append(i)
        if not todo:  # a rerun with nothing left to train does not start or join Ray
            return [r for r in results if r is not None]
        ray = self.connect()
        pending: dict[Any, int] = {}
        collected = None
        try:
            collected = Collected(ray, runs_root)
            task = ray.remote(run_job_shipped).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                       max_retries=self.max_retries, retry_exceptions=False)
            queue = list(todo)
            while queue or pending:
                # submitted only while the cluster has a free slot: a job queued at a busy node's raylet stays
                # there while another node idles (measured: 3 of 4 jobs on the head, 1 on the second node)
                while queue and len(pending) < self._slots(ray):
                    i = queue.pop(0)
                    pending[task.remote(jobs[i], self.torch_threads, collected.name, collected.token)] = i
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                collected.drain()  # a run is shipped before its task returns: import first, then read the outcome
                for ref in ready:
                    i = pending.pop(ref)
                    results[i] = self._finish(self._outcome(ray, ref, jobs[i], collected), on_done)
            recovered, self.left_elsewhere = collected.recover_leftovers()
            for res in recovered:  # a run finished on disk whose worker died before shipping it
                i = next(i for i in todo if jobs[i].key == res["key"])
                results[i] = self._finish({**(results[i] or {}), **job_base(jobs[i]), **res, "executor": "ray"},
                                          on_done)
        except (KeyboardInterrupt, DiskFull):  # a stop, or no room to import runs: no worker or store left behind
            if collected is not None:
                from convladder.interrupts import deferred

                with deferred():  # a second Ctrl-C must not leave workers and their temporary stores behind
                    self._stop(ray, pending, collected)
            raise
        finally:
            if collected:
                collected.close()
            if self.shutdown:
                ray.shutdown()
        return [r for r in results if r is not None]

    def _stop(self, ray, pending: dict[Any, int], collected: Collected) -> None:
        """Ctrl-C, SIGTERM or a full disk: cancel the running tasks (their workers are killed), wait until they are
        gone, then import what finished meanwhile and remove the killed workers' temporary stores on this machine."""
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its node gone
                pass
        deadline = time.monotonic() + STOP_WAIT_S
        left = list(pending)
        while left and time.monotonic() < deadline:  # a killed worker's task ends with TaskCancelledError
            _, left = ray.wait(left, num_returns=len(left), timeout=max(0.1, deadline - time.monotonic()))
        try:
            _, self.left_elsewhere = collected.recover_leftovers()
        except Exception:  # noqa: BLE001 - the collector went with the cluster: nothing more to import
            pass
        if not self.address:  # a Ray this process started: its workers stop with it now, not at exit
            ray.shutdown()

    def _slots(self, ray) -> int:
        """Jobs the cluster can run at once now (its CPUs and GPUs over a job's share); at least 1."""
        total = ray.cluster_resources()
        slots = int(total.get("CPU", 0) // self.cpus)
        if self.gpus:
            slots = min(slots, int(total.get("GPU", 0) // self.gpus))
        return max(1, slots)

    @staticmethod
    def _finish(result: dict[str, Any], on_done: OnDone | None) -> dict[str, Any]:
        if on_done:
            on_done(result)
        return result

    def _outcome(self, ray, ref, job: Job, collected: Collected) -> dict[str, Any]:
        """The job's result: its shipped run (even when the task then failed), else a failure naming the cause."""
        error = None
        try:
            ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - worker died, node lost, retries used up: record and go on
            error = first_sentence(exc)
        shipped = collected.results.get(job.key)
        result = {**job_base(job), "run_id": None, "status": "failed", **(shipped or {}), "executor": "ray"}
        if shipped is None:
            result["error"] = (f"ray task failed after {len(collected.attempts.get(job.key) or [1])} attempt(s): "
                               f"{error or 'no run shipped'}; {collected.loss_cause(job.key)}{self.log.note()}")
        elif error:
            result["recovered"] = f"its run was shipped before Ray reported the task failed ({error})"
        note = collected.retry_note(job.key)
        if note:
            result["retried"] = note
        return result


def _init_within(ray, timeout: float, **kwargs: Any) -> None:
    """ray.init in a daemon thread: a TimeoutError instead of a hang when the address is not a Ray head."""
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer from a Ray head within {timeout:g}s")
    if "error" in box:
        raise box["error"]


def _reread_auth_mode() -> None:
    """Make this process's Ray auth mode the one RAY_AUTH_MODE says now, before a (second) ray.init.

    Ray caches the mode of its first init (a local Ray turns token mode on by itself) in the process. A later
    init with RAY_AUTH_MODE=disabled then starts a Ray without tokens while this driver's own server still
    demands one: the GCS's calls to the driver are refused, so it takes the driver for dead and cancels the
    actors it owns (the collector died 'never started', measured: a second local init in one process).
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication caches no mode
        return
    Config.initialize("")  # re-reads RAY_* settings (RAY_AUTH_MODE) from the environment
    AuthenticationTokenLoader.instance().reset_cache()


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return 0


EXECUTORS["ray"] = RayExecutor  # so base.get_executor("ray") finds it once this module is imported
