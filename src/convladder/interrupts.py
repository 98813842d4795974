"""SIGTERM handled like Ctrl-C: both raise KeyboardInterrupt (SIGTERM as its subclass `Terminated`).

Every `except KeyboardInterrupt` of the trainer and the executors (mark the run interrupted, cancel Ray
tasks, remove temporary stores) then runs for a `kill` or a container stop as it does for Ctrl-C, and the
command exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).

The CLI installs the handlers (`install`); library code only uses `deferred()` around writes that must
not be cut in half (an epoch's files, a run's final status) and `record()` when it marks a run interrupted,
so the command's one line can say which run holds which epoch — or that no run was made at all.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a container stop, a scheduler's preemption), raised where Ctrl-C would be."""

    signum = signal.SIGTERM


_state: dict[str, Any] = {"depth": 0, "pending": None, "installed": False, "last": None}
_saved: list[tuple[str, int]] = []  # (run id, epoch saved) of each run this process marked interrupted


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: Any) -> None:
    _state["last"] = signum  # Ray turns the exception raised here into a plain KeyboardInterrupt: keep the number
    if _state["depth"]:  # inside a write that must finish: raise when it has
        _state["pending"] = signum
        return
    raise _exception(signum)


def install() -> None:
    """Route SIGINT and SIGTERM to `_handler` (main thread only; again after a library replaced them).

    Ray's driver start installs its own SIGTERM handlers (a Python one that calls sys.exit, and a C++
    one that prints `*** SIGTERM received ... PC:` and aborts): calling this after `ray.init` takes
    SIGTERM back, so the executor's cleanup runs.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    _state["installed"] = True


def installed() -> bool:
    """Whether the CLI routes the signals here (it then prints the one line; the trainer need not)."""
    return bool(_state["installed"])


def reinstall() -> None:
    """`install` again, only if the CLI installed the handlers (library use in Python keeps its own)."""
    if _state["installed"]:
        install()


@contextmanager
def deferred() -> Iterator[None]:
    """A signal arriving inside this block is raised at its end: files written together stay together."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if not _state["depth"] and pending is not None:
            _state["pending"] = None
            raise _exception(pending)


def record(run_id: str, epoch: int) -> None:
    """Note that run `run_id` was marked interrupted with epoch `epoch` saved (0: none finished)."""
    _saved.append((run_id, epoch))


def forget() -> None:
    """Start a command afresh: runs cut by an earlier command of this process (tests, a notebook) are not its own."""
    _saved.clear()
    _state.update(last=None, pending=None)


def recorded() -> list[tuple[str, int]]:
    """The runs this process marked interrupted, in order."""
    return list(_saved)


def _terminated(exc: BaseException | None) -> bool:
    return isinstance(exc, Terminated) or _state["last"] == signal.SIGTERM


def exit_code(exc: BaseException | None = None) -> int:
    """128 + the signal's number: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + int(signal.SIGTERM if _terminated(exc) else signal.SIGINT)


def what(exc: BaseException | None) -> str:
    """'terminated (SIGTERM)' or 'interrupted' — the first words of the command's line."""
    return "terminated (SIGTERM)" if _terminated(exc) else "interrupted"


def resume_line(exc: BaseException | None, again: str | None = None) -> str:
    """The one line a command prints when stopped: which runs hold which epoch and how to go on.

    `again`: how to continue a batch (ladder, sweep, frontier), e.g. 'rerun the same command: finished runs
    are skipped'; without it, the `train --resume` of each run. No run: says that nothing was saved.
    """
    head = what(exc)
    runs = recorded()
    if not runs:  # no run of this process was cut (before training began, or its runs were on Ray workers)
        return f"{head}: {again}" if again else f"{head} before any run was made: nothing saved"
    saved = ", ".join(f"run {rid} (epoch {epoch} saved)" if epoch else f"run {rid} (no epoch finished)"
                      for rid, epoch in runs)
    if again:
        return f"{head}: {saved}; {again}"
    if len(runs) == 1:
        rid, epoch = runs[0]
        go_on = f"resume with: convladder train --resume {rid}" if epoch else "nothing to resume; start it again"
        return f"{head}: {saved}; {go_on}"
    return f"{head}: {saved}; resume each with: convladder train --resume <run id>"


def stopped_line(exc: BaseException | None) -> str:
    """The line of a command that does not handle the stop itself: its cut runs if any, else that it stopped."""
    if recorded():
        return resume_line(exc)
    return f"{what(exc)}: stopped; no file was left half-written (every write is atomic)"
