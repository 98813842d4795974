"""Progress reporting: a rich bar per epoch on a terminal, plain lines otherwise, JSON lines, or nothing."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from convladder.train.result import RunResult

StatsFn = Callable[[], tuple[float, float]]  # reads running (loss, acc %) from the device: call rarely


class Progress:
    """Silent base class; the trainer calls these hooks."""

    def start(self, info: dict[str, Any]) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, done: int, stats: StatsFn) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...
    def finish(self, result: RunResult) -> None: ...
    def note(self, text: str) -> None: ...


def _epoch_line(row: dict[str, Any], epochs: int | None = None) -> str:
    total = f"/{epochs}" if epochs else ""
    parts = [f"epoch {row['epoch']}{total}", f"lr {row['lr']:.4g}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% (seen while training)"]
    if row.get("val_acc") is not None:
        parts.append(f"val {row['val_loss']:.4f} {row['val_acc']:.2f}%")
    if row.get("test_acc") is not None:
        parts.append(f"test {row['test_loss']:.4f} {row['test_acc']:.2f}%")
    parts.append(f"{row['epoch_time_s']:.1f}s")
    return "  ".join(parts)


class PlainProgress(Progress):
    """One line per epoch (for logs and pipes)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.epochs: int | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, info: dict[str, Any]) -> None:
        self._print(f"run {info['run_id']}: {info['model']} ({info['params']:,} params) on {info['device']}, "
                    f"{info['n_train']:,} train / {info['n_val']:,} val / {info['n_test']:,} test images, seed {info['seed']}")

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs

    def epoch_end(self, row: dict[str, Any]) -> None:
        self._print(_epoch_line(row, self.epochs))

    def finish(self, result: RunResult) -> None:
        self._print(result.summary())

    def note(self, text: str) -> None:
        self._print(text)


class RichProgress(PlainProgress):
    """A live bar per epoch with running loss, accuracy and ETA; the epoch line stays afterwards."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console

        self.console = Console()
        self.bar = None
        self.last_read = 0.0

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

        self.epochs = epochs
        self.bar = Bar(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps, stats="")

    def step(self, done: int, stats: StatsFn) -> None:
        now = time.monotonic()
        fields = {}
        if now - self.last_read > 0.5:  # reading device values syncs: at most twice a second
            loss, acc = stats()
            fields["stats"] = f"loss {loss:.4f} acc {acc:.2f}%"
            self.last_read = now
        self.bar.update(self.task, completed=done, **fields)

    def _stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def epoch_end(self, row: dict[str, Any]) -> None:
        self._stop_bar()
        super().epoch_end(row)

    def finish(self, result: RunResult) -> None:
        self._stop_bar()
        super().finish(result)

    def note(self, text: str) -> None:
        self._stop_bar()
        super().note(text)


class JsonProgress(Progress):
    """JSON lines on stdout: {"event": "start"|"epoch"|"result", ...}."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        print(json.dumps({"event": event, **data}), file=self.stream, flush=True)

    def start(self, info: dict[str, Any]) -> None:
        self._emit("start", info)

    def epoch_end(self, row: dict[str, Any]) -> None:
        self._emit("epoch", row)

    def finish(self, result: RunResult) -> None:
        self._emit("result", result.to_dict())

    def note(self, text: str) -> None:
        self._emit("note", {"text": text})


def make_progress(quiet: bool = False, json_lines: bool = False) -> Progress:
    """JSON lines if asked, nothing if quiet, a rich bar on a terminal, plain lines otherwise."""
    if json_lines:
        return JsonProgress()
    if quiet:
        return Progress()
    return RichProgress() if sys.stdout.isatty() else PlainProgress()
