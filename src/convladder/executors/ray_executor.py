"""The Ray executor: jobs run as Ray tasks (local Ray, or a cluster via `--ray-address`); the driver writes the store.

Why the driver writes: workers may be on other machines with no access to the driver's run store, and SQLite
over a network file system is unsafe. So a worker trains into a private temporary store, packs the run
folder(s) it produced (every file's bytes plus the index row) and returns them; the driver imports each run
into the real store with `convladder.runs.pack.import_run`, which gives a folder identical in layout to an in-process run
(config.json, env.json, metrics.jsonl, result.json, model/best.safetensors, resume.pt). Only the run id
differs from the worker's temporary one (the driver's store picks it, so ids stay unique), and env.json says
where the run really ran (the worker's hostname and device).

Ray is imported lazily, inside functions, so `convladder` works without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors.base import EXECUTORS, Job, OnDone, find_completed, run_job
from convladder.runs.pack import RunBundle, import_run, pack_runs

INSTALL_HINT = "Ray is not installed: pip install 'convladder[ray]' (or use --executor inprocess)"
CONNECT_TIMEOUT_S = 10.0  # how long to wait for a cluster's address before saying it is unreachable
JOIN_TIMEOUT_S = 45.0  # ray.init against something that accepts TCP but is not Ray retries for minutes

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def import_ray():
    """The `ray` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


# -- worker side --------------------------------------------------------------------------------------------
def run_job_packed(job: Job, threads: int = 0) -> tuple[dict[str, Any], list[RunBundle]]:
    """Run `job` into a temporary store and return (result dict, packed runs); runs on a Ray worker.

    `threads` pins torch's CPU threads to the trial's CPU share (Ray also sets OMP_NUM_THREADS, but a
    reused worker process keeps whatever an earlier task set).
    """
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    tmp = tempfile.mkdtemp(prefix="convladder-ray-")
    try:
        result = run_job(job, tmp)
        return result, pack_runs(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RayExecutor:
    """Each job is a Ray task with `cpus_per_trial` CPUs and `gpus_per_trial` GPUs (fractions share a GPU).

    address: None starts a local Ray with this machine's CPUs/GPUs (no dashboard); 'auto' joins the cluster
    this machine belongs to; 'host:port' or 'ray://host:port' joins that cluster (checked with a short
    TCP timeout first, so a wrong address is an error, not a hang). Workers need convladder installed.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 num_cpus: int | None = None, num_gpus: int | None = None, shutdown: bool = False) -> None:
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise UserError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0 "
                            f"(got {cpus_per_trial}, {gpus_per_trial})")
        self.address, self.cpus, self.gpus = address, cpus_per_trial, gpus_per_trial
        self.num_cpus, self.num_gpus, self.shutdown = num_cpus, num_gpus, shutdown
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
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # no C++ retry warnings on the user's terminal
        quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                 "logging_level": "ERROR"}
        if self.address:
            check_reachable(self.address)
            try:
                _init_within(ray, JOIN_TIMEOUT_S, address=self.address,
                             **({} if self.address.startswith("ray://") else quiet))
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, grpc errors ...
                hint = ("pip install 'ray[client]' for ray:// addresses" if "ray[client]" in str(exc) else
                        "check the address (`ray status` on the head node) or drop --ray-address to start a local Ray")
                raise UserError(f"cannot join the Ray cluster at {self.address!r} "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); {hint}") from None
        else:
            num_gpus = self.num_gpus if self.num_gpus is not None else _local_gpus()
            if self.gpus > 0 and num_gpus == 0:
                raise UserError(f"--gpus-per-trial {self.gpus} but this machine has no CUDA GPU for a local Ray; "
                                "use --gpus-per-trial 0 or join a GPU cluster with --ray-address")
            # a small object store: results are a few hundred KB per run; Ray's default takes 30 % of RAM
            ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
                     object_store_memory=100 * 1024 * 1024, **quiet)
        self.init_time_s = time.perf_counter() - t0
        return ray

    def map(self, jobs: list[Job], runs_root: str | Path, on_done: OnDone | None = None) -> list[dict[str, Any]]:
        """Submit all jobs, import each finished run into the store as it arrives; results in the jobs' order."""
        ray = self.connect()
        threads = self.torch_threads
        task = ray.remote(run_job_packed).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        pending: dict[Any, int] = {}
        try:
            for i, job in enumerate(jobs):
                done = find_completed(runs_root, job.key)
                if done:  # same shortcut as run_job: the store already has it, nothing to ship
                    results[i] = self._finish(run_job(job, runs_root), on_done)
                else:
                    pending[task.remote(job, threads)] = i
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    results[i] = self._finish(self._collect(ray, ref, jobs[i], runs_root), on_done)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            if self.shutdown:
                ray.shutdown()
        return [r for r in results if r is not None]

    @staticmethod
    def _finish(result: dict[str, Any], on_done: OnDone | None) -> dict[str, Any]:
        if on_done:
            on_done(result)
        return result

    @staticmethod
    def _collect(ray, ref, job: Job, runs_root: str | Path) -> dict[str, Any]:
        """The worker's result with its runs imported; a lost worker becomes a failed result, not an exception."""
        try:
            result, bundles = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - worker died, task error, node lost: record and go on
            return {"key": job.key, "label": job.label, **job.meta, "run_id": None, "status": "failed",
                    "error": f"ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        ids = {b["record"]["id"]: import_run(runs_root, b) for b in bundles}
        result = dict(result)
        result["run_id"] = ids.get(result.get("run_id"), result.get("run_id"))
        result["executor"] = "ray"
        return result


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to host:port of the address (not for 'auto'), so a wrong address fails in seconds."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address {address!r} must be 'auto', 'host:port' or 'ray://host:port'")
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise UserError(f"Ray cluster at {address!r} is unreachable ({exc}) after {timeout:g}s; check the address "
                        "and that the head node runs (`ray start --head`), or drop --ray-address for a local Ray") from None
    # Ray's head (GCS) and client server speak gRPC: an HTTP/2 server answers our preface with a SETTINGS frame.
    # Anything else (a web server, a closed proxy) would make ray.init retry for minutes.
    try:
        with conn:
            conn.sendall(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + empty SETTINGS
            head = conn.recv(9)
    except OSError:
        head = b""
    if len(head) < 4 or head[3] != 0x04:
        raise UserError(f"{address!r} answers but is not a Ray head (no gRPC there): give the GCS port of "
                        "`ray start --head` (default 6379) or ray://host:10001 for Ray Client")


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


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return 0


EXECUTORS["ray"] = RayExecutor  # so base.get_executor("ray") finds it once this module is imported
