"""Progress reporting: a rich bar per epoch on a terminal, a live HTML block in a notebook, plain lines otherwise,
JSON lines, or nothing."""

from __future__ import annotations

import html
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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


_OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adadelta": "Adadelta"}


def recipe_text(config: Any, n_val: int | None = None, distilled: dict[str, Any] | None = None) -> str:
    """The training recipe in one line: optimizer and lr, schedule, batch, epochs, augmentation, validation.

    `config` is a TrainConfig (read by attribute: keys another version lacks are left out); `n_val` the
    validation images the run holds out; `distilled` the teacher's record (train/distill.py) of config teacher.
    """
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    opt = str(get("optimizer", "sgd"))
    lr = get("lr")
    lr_text = f"{lr:g}" if isinstance(lr, (int, float)) else str(lr)
    optim = f"{_OPTIMIZER_NAMES.get(opt, opt)} lr {lr_text}"
    if opt == "sgd":
        optim += f", momentum {get('momentum'):g}" + (" Nesterov" if get("nesterov") else "")
    elif opt in ("adam", "adamw"):
        optim += f", beta1 {get('momentum'):g}"
    if get("weight_decay"):
        optim += f", weight decay {get('weight_decay'):g}"
    sched = str(get("schedule", "none"))
    schedule = {"none": "constant lr", "cosine": "cosine decay",
                "step": f"step (lr x{get('gamma', 0):g} every {get('step_size')} epoch(s))",
                "onecycle": f"onecycle (lr {lr_text} is the peak, warm-up {100 * get('pct_start', 0):.0f}%)"}
    parts = [optim, schedule.get(sched, sched), f"batch {get('batch_size')}", f"{get('epochs')} epochs"]
    if get("label_smoothing"):
        parts.append(f"label smoothing {get('label_smoothing'):g}")
    if get("ema"):
        parts.append(f"EMA weights (decay {get('ema'):g} per step) evaluated, selected and saved")
    if get("lookahead"):
        parts.append(lookahead_text(get("lookahead"), get("lookahead_alpha", 0.5)))
    parts += lever_texts(get)
    if get("teacher"):
        from convladder.train.distill import config_record, distilled_text

        record = distilled or config_record({k: get(k) for k in ("teacher", "distill_temperature", "distill_weight")})
        parts.append(distilled_text(record, params=False) + " (train loss = (1 - weight) cross-entropy + weight "
                     "T² KL to the teacher)")
    aug = []
    if get("augment"):
        aug += [f"rotate ±{get('rotate'):g}°", f"shift ±{get('translate'):g} px", f"scale ±{100 * get('scale'):g}%"]
    if get("pad_crop"):
        aug.append(f"pad {get('pad_crop')} + random crop")
    if get("flip"):
        aug.append("horizontal flip")
    if get("erase"):
        aug.append(f"random erasing p {get('erase'):g}")
    if get("crop") and get("crop_epochs"):
        aug.append(f"first {get('crop_epochs')} epoch(s) on a {get('crop')}x{get('crop')} centre crop")
    parts.append("augmentation " + ", ".join(aug) if aug else "no augmentation")
    val = get("val_size") if n_val is None else n_val
    parts.append(f"validation {val:,} images held out (best epoch by {get('select_on')})" if val
                 else "no validation split" + (" (best epoch by test)" if get("select_on") == "test" else ""))
    return "recipe: " + "; ".join(parts)


def train_loss_terms(config: dict[str, Any]) -> str | None:
    """What a run's train loss holds beyond the plain cross-entropy that val/test loss are, e.g. 'label smoothing
    0.1 and distillation (weight 0.5, T 4)'; None when nothing (then the three losses compare on one scale)."""
    terms = []
    smoothing = config.get("label_smoothing")
    if isinstance(smoothing, (int, float)) and smoothing > 0:
        terms.append(f"label smoothing {smoothing:g}")
    if config.get("teacher"):  # train/distill.py: (1 - w) CE + w T^2 KL to the teacher's soft targets
        from convladder.train.config import TrainConfig  # torch-free; its defaults, not copies of them

        w = config.get("distill_weight", TrainConfig.distill_weight)
        t = config.get("distill_temperature", TrainConfig.distill_temperature)
        terms.append(f"distillation (weight {w:g}, T {t:g})" if isinstance(w, (int, float))
                     and isinstance(t, (int, float)) else "distillation")
    return " and ".join(terms) or None


def lookahead_text(k: int, alpha: float) -> str:
    """'lookahead k=5, alpha 0.5 (fast weights evaluated and saved)' (config lookahead; train/lookahead.py)."""
    return f"lookahead k={k}, alpha {alpha:g} (fast weights evaluated and saved)"


def lever_texts(get: Any) -> list[str]:
    """The recipe's words for bn_lr, bn_weight and first_layer (nothing at their defaults)."""
    bn_lr, bn_weight, first = get("bn_lr", 1.0), get("bn_weight", "learn"), get("first_layer", "learn")
    out = []
    if bn_lr == 0:
        out.append("BN weight and bias frozen (BN lr x0)")
    elif bn_lr != 1:
        out.append(f"BN lr x{bn_lr:g}")
    if bn_weight == "frozen" and bn_lr != 0:
        out.append("BN weight frozen at 1")
    if first in ("whiten", "whiten-frozen"):
        out.append("first layer whitened" + (" (frozen)" if first == "whiten-frozen" else ""))
    return out


def _epoch_line(row: dict[str, Any], epochs: int | None = None) -> str:
    total = f"/{epochs}" if epochs else ""
    parts = [f"epoch {row['epoch']}{total}", f"lr {row['lr']:.4g}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% (seen while training)"]
    if row.get("val_acc") is not None:
        parts.append(f"val {row['val_loss']:.4f} {row['val_acc']:.2f}%")
    if row.get("test_acc") is not None:
        parts.append(f"test {row['test_loss']:.4f} {row['test_acc']:.2f}%")
    if row.get("live_test_acc") is not None:  # config ema: val/test above are the EMA weights'
        live = f"val {row['live_val_acc']:.2f}% " if row.get("live_val_acc") is not None else ""
        parts[-1] += f" (EMA weights; live weights {live}test {row['live_test_acc']:.2f}%)"
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
        teacher = f", the student's only; teacher {info['teacher_params']:,}" if info.get("teacher_params") else ""
        self._print(f"run {info['run_id']}: {info['model']} ({info['params']:,} params{teacher}) on {info['device']}, "
                    f"{info['n_train']:,} train / {info['n_val']:,} val / {info['n_test']:,} test images, seed {info['seed']}")
        if info.get("recipe"):
            self._print(info["recipe"])

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


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, classic, VS Code, Colab); False in a terminal IPython or python.

    Looks only at an IPython that is already imported: convladder never imports IPython itself.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


DisplayFn = Callable[[dict[str, str], str, bool], None]  # (mime bundle, display id, update?)


def _ipython_display(bundle: dict[str, str], display_id: str, update: bool) -> None:
    from IPython.display import display

    display(bundle, raw=True, display_id=display_id, update=update)


E = html.escape
_CELL = "padding:1px 8px;text-align:right;white-space:nowrap;"
_COLUMNS = [("epoch", "epoch", "{}"), ("lr", "lr", "{:.4g}"), ("train loss", "train_loss", "{:.4f}"),
            ("train acc % (seen)", "train_acc", "{:.2f}"), ("val loss", "val_loss", "{:.4f}"),
            ("val acc %", "val_acc", "{:.2f}"), ("test loss", "test_loss", "{:.4f}"),
            ("test acc %", "test_acc", "{:.2f}"), ("time s", "epoch_time_s", "{:.1f}")]


@dataclass
class _Run:
    """One run inside a notebook block."""

    header: str
    run_id: str | None
    seed: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    result_line: str = ""
    recipe: str = ""


class NotebookProgress(Progress):
    """One live output block in a Jupyter notebook: per run a header, a table of finished epochs and the result
    line; a bar for the current epoch with running loss/accuracy and time left; notes.

    Plain HTML updated in place through IPython display handles (no widgets, no JavaScript), with a text/plain
    twin for front ends that show text only. Updates are throttled: reading the running loss syncs the device.
    Runs that start together (seeds trained side by side) share a block; a run started after the last one
    finished gets a new block.
    """

    def __init__(self, display_fn: DisplayFn | None = None, every_s: float = 0.5):
        self.display_fn = display_fn or _ipython_display
        self.every_s = every_s
        self._reset()

    def _reset(self) -> None:
        self.display_id: str | None = None
        self.runs: list[_Run] = []
        self.epoch = self.epochs = self.steps = self.done = 0
        self.running = ""
        self.epoch_t0 = 0.0
        self.last_shown = 0.0
        self.notes: list[str] = []

    def _show(self) -> None:
        bundle = {"text/plain": self.text(), "text/html": self.html()}
        update = self.display_id is not None
        if not update:
            self.display_id = uuid.uuid4().hex
        self.display_fn(bundle, self.display_id, update)
        self.last_shown = time.monotonic()

    def _open(self) -> list[_Run]:
        return [r for r in self.runs if not r.result_line]

    def start(self, info: dict[str, Any]) -> None:
        if self.runs and not self._open():
            self._reset()  # the block's runs are over: the next run gets its own block
        run = f"run {info['run_id']}" if info.get("run_id") else "run (not stored)"
        header = (f"{run}: {info['model']} ({info['params']:,} params) on {info['device']}, "
                  f"{info['n_train']:,} train / {info['n_val']:,} val / {info['n_test']:,} test images, "
                  f"seed {info['seed']}")
        self.runs.append(_Run(header, info.get("run_id"), info.get("seed"), recipe=info.get("recipe") or ""))
        self.epochs = int(info.get("epochs") or 0)
        self._show()

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs, self.steps, self.done = epoch, epochs, steps, 0
        self.running = ""
        self.epoch_t0 = time.monotonic()
        self._show()

    def step(self, done: int, stats: StatsFn) -> None:
        self.done = done
        if time.monotonic() - self.last_shown >= self.every_s:
            loss, acc = stats()
            self.running = f"loss {loss:.4f} acc {acc:.2f}%"
            self._show()

    def _run_of_row(self, row: dict[str, Any]) -> _Run | None:
        """The open run a metrics row belongs to: by seed when the row says it, else the first open run that has
        not had this epoch yet (side-by-side seeds report their rows in start order)."""
        open_runs = self._open()
        if row.get("seed") is not None:
            return next((r for r in open_runs if r.seed == row["seed"]), None)
        epoch = row.get("epoch", 0)
        return next((r for r in open_runs if not r.rows or r.rows[-1].get("epoch", 0) < epoch), None)

    def epoch_end(self, row: dict[str, Any]) -> None:
        run = self._run_of_row(row)
        if run is None:  # a row for no run this block knows of: show it rather than lose it
            run = _Run("run (started elsewhere)", None, row.get("seed"))
            self.runs.append(run)
        run.rows.append(row)
        self.done = self.steps
        self._show()

    def finish(self, result: RunResult) -> None:
        open_runs = self._open()
        run = next((r for r in open_runs if result.run_id and r.run_id == result.run_id), None) or next(
            (r for r in open_runs if r.seed == result.seed), None) or (open_runs[0] if open_runs else None)
        if run is None:
            run = _Run(f"run {result.run_id}", result.run_id, result.seed)
            self.runs.append(run)
        run.result_line = result.summary()
        if not self._open():
            self.epoch = 0  # no bar once every run of the block is over
        self._show()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._show()

    def _left(self) -> str:
        if not self.done or not self.steps:
            return ""
        elapsed = time.monotonic() - self.epoch_t0
        return f"{elapsed:.0f} s, ~{elapsed * (self.steps - self.done) / self.done:.0f} s left in this epoch"

    def _bar_shown(self) -> bool:
        return bool(self.epoch) and self.done < self.steps and bool(self._open())

    def text(self) -> str:
        lines = []
        for run in self.runs:
            lines += [run.header] + [run.recipe] * bool(run.recipe) + [_epoch_line(r, self.epochs) for r in run.rows]
            lines += [run.result_line] if run.result_line else []
        if self._bar_shown():
            lines.append(f"epoch {self.epoch}/{self.epochs}: step {self.done}/{self.steps} {self.running} "
                         f"{self._left()}")
        return "\n".join(lines + self.notes)

    def _table(self, rows: list[dict[str, Any]]) -> str:
        keys = [c for c in _COLUMNS if any(r.get(c[1]) is not None for r in rows)]
        head = "".join(f'<th style="{_CELL}">{E(name)}</th>' for name, _, _ in keys)
        body = "".join("<tr>" + "".join(f'<td style="{_CELL}">' + ("" if r.get(k) is None else E(fmt.format(r[k])))
                                        + "</td>" for _, k, fmt in keys) + "</tr>" for r in rows)
        return (f'<table style="border-collapse:collapse;font-size:90%"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    def html(self) -> str:
        parts = []
        for run in self.runs:
            parts.append(f"<div><b>{E(run.header)}</b></div>"
                         + (f'<div style="color:#555">{E(run.recipe)}</div>' if run.recipe else ""))
            if run.rows:
                parts.append(self._table(run.rows))
            if run.result_line:
                parts.append(f"<div><b>{E(run.result_line)}</b></div>")
        if self._bar_shown():
            parts.append(f'<div>epoch {self.epoch}/{self.epochs} <progress value="{self.done}" max="{self.steps}" '
                         f'style="width:16em;vertical-align:middle"></progress> {self.done}/{self.steps} '
                         f"{E(self.running)} <small>{E(self._left())}</small></div>")
        parts += [f'<div style="color:#b26a00">{E(n)}</div>' for n in self.notes]
        return '<div class="convladder-progress">' + "".join(parts) + "</div>"


def make_progress(quiet: bool = False, json_lines: bool = False) -> Progress:
    """JSON lines if asked, nothing if quiet, a live block in a Jupyter notebook, a rich bar on a terminal,
    plain lines otherwise."""
    if json_lines:
        return JsonProgress()
    if quiet:
        return Progress()
    if in_notebook():
        return NotebookProgress()
    return RichProgress() if sys.stdout.isatty() else PlainProgress()


def resolve_progress(progress: Progress | bool | str | None = None) -> Progress:
    """What the Python API's `progress=` means: None/True -> shown (as `make_progress` picks), False -> silent,
    "json" -> JSON lines, "plain" -> plain lines, a Progress -> itself."""
    if isinstance(progress, Progress):
        return progress
    if progress is None or progress is True:
        return make_progress()
    if progress is False:
        return Progress()
    if progress == "json":
        return JsonProgress()
    if progress == "plain":
        return PlainProgress()
    from convladder.errors import UserError

    raise UserError(f"progress={progress!r}: use True, False, 'plain', 'json' or a convladder.train.progress.Progress")
