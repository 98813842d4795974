"""The recorder: one run's bookkeeping, and the outcomes of a run turned into run statuses.

It holds what changes from epoch to epoch (rows, best epoch, time to target), writes the run folder after
every epoch (weights, metrics, resume state), and ends the run with one of:

| outcome | status | when |
|---|---|---|
| completed | completed | every epoch trained |
| stopped | stopped | the caller closed the epoch generator (a scheduler such as ASHA); resumable |
| interrupted | interrupted | Ctrl-C (KeyboardInterrupt); resumable |
| diverged | failed | the loss became NaN/inf; the last good epoch's checkpoint is kept, the best epoch stays selected |
| failed | failed | any other exception after the run folder exists |
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from convladder.interrupts import deferred, record
from convladder.errors import UserError
from convladder.fileio import DiskFull
from convladder.runs.store import RunHandle, RunStore, notice
from convladder.train.config import TrainConfig
from convladder.train.models import write_record
from convladder.train.progress import lookahead_text
from convladder.train.result import RunResult, gap, median_value, potential, time_to, verdict


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run is marked failed and its last good checkpoint kept."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


@dataclass
class RunState:
    """What changes from epoch to epoch (saved in resume.pt)."""

    epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "val_acc": None, "test_acc": None})
    elapsed_s: float = 0.0
    time_to_target_s: float | None = None
    warmup_s: float = 0.0


class Recorder:
    """One run: its config, optional store folder, state and clock (wall time carries over a resume)."""

    def __init__(self, config: TrainConfig, store: RunStore | None, params: int, t0: float, select: str | None,
                 own: Any = None):
        # own: the OwnModel record of a person's network, written into the run folder with the config
        self.config, self.store, self.params, self.t0, self.select = config, store, params, t0, select
        self.own = own
        self.distilled: dict[str, Any] | None = None  # config teacher: the teacher's record (train/distill.py)
        self.state = RunState()
        self.handle: RunHandle | None = None
        self._carried = 0.0  # wall time from earlier processes of a resumed run

    # -- opening ----------------------------------------------------------------------------------------
    def create(self, env: dict[str, Any]) -> None:
        if self.store is not None:
            own = self.own
            prepare = None if own is None else (lambda folder: write_record(folder, own))
            self.handle = self.store.create_run(self.config.to_dict(), env, prepare=prepare, params=self.params)

    def reopen(self, run_id: str) -> dict[str, Any]:
        """Load resume.pt of `run_id`, restore the state and mark the run running; return the saved dict."""
        assert self.store is not None
        self.handle = self.store.handle(run_id)
        try:
            saved = self.handle.load_resume()
        except UserError as err:
            if not (self.handle.path / "resume.pt").is_file():
                raise
            saved = self._last_epoch(err)
        self.state = RunState(**saved["state"])
        self._carried = self.state.elapsed_s - (time.perf_counter() - self.t0)
        self.handle.update(status="running")
        return saved

    def _last_epoch(self, err: UserError) -> dict[str, Any]:
        """When resume.pt is damaged: the last epoch's weights (model.safetensors) and metrics.jsonl instead.

        What is lost: the optimiser's state (momentum) and the random-number state, so the epochs still to
        train will not match an uninterrupted run; the learning-rate schedule continues where it was.
        """
        from convladder.runs.reader import read_weights

        assert self.handle is not None
        rows = self.store.read_metrics(self.handle.id) if self.store else []
        saved_at = self.handle.weights_epoch("final")
        if saved_at is not None:
            rows = [r for r in rows if r["epoch"] <= saved_at]
        if not rows or (saved_at is not None and rows[-1]["epoch"] != saved_at):
            raise UserError(f"{err}; the last epoch's weights and metrics do not match either, so the run cannot "
                            "continue — start a new run") from None
        try:
            weights = read_weights(self.handle.path, "final")
        except UserError as lost:
            raise UserError(f"{err}; and {lost} — start a new run") from None
        state = RunState(epoch=rows[-1]["epoch"], rows=rows, elapsed_s=sum(r.get("epoch_time_s", 0.0) for r in rows))
        key = f"{self.select}_acc" if self.select else None
        for row in rows:
            if key and key in row and (state.best["epoch"] is None or row[key] > state.best[key]):
                state.best = {"epoch": row["epoch"], "val_acc": row.get("val_acc"), "test_acc": row.get("test_acc")}
        notice(f"resume.pt of run {self.handle.id} is damaged: continuing from epoch {state.epoch}'s weights "
               "(model.safetensors) and metrics.jsonl; lost: the optimiser's momentum and the random-number state, "
               "so the remaining epochs will differ from an uninterrupted run")
        return {"model": weights, "state": dict(state.__dict__)}

    @property
    def run_id(self) -> str | None:
        return self.handle.id if self.handle else None

    def clock(self) -> float:
        """Wall time of the run so far, including earlier processes of a resumed run."""
        return self._carried + time.perf_counter() - self.t0

    # -- each epoch ---------------------------------------------------------------------------------------
    def epoch_done(self, row: dict[str, Any], weights: dict[str, torch.Tensor] | None, resume: dict[str, Any] | None) -> bool:
        """Add the epoch's row, update best and time to target, save; returns whether the epoch is the new best.

        state.time_to_target_s is the process's wall clock (from the start of training, data loading included);
        the time to target reported (TIME_TO_TARGET: training + evaluation, warm-up apart) is made from the rows.
        """
        state = self.state
        if state.time_to_target_s is None and row.get("test_acc") is not None and row["test_acc"] >= self.config.target:
            state.time_to_target_s = self.clock()
        state.rows.append(row)
        state.epoch = row["epoch"]
        key = f"{self.select}_acc" if self.select else None
        improved = key is not None and key in row and (state.best["epoch"] is None or row[key] > state.best[key])
        if improved:
            state.best = {"epoch": row["epoch"], "val_acc": row.get("val_acc"), "test_acc": row.get("test_acc")}
        state.elapsed_s = self.clock()
        if self.handle is not None and weights is not None:
            with deferred():  # a SIGTERM/Ctrl-C here waits: the epoch's files are saved together
                self.handle.save_weights("model", weights, state.epoch)
                if improved:
                    self.handle.save_weights("best", weights, state.epoch)
                self.handle.write_metrics(state.rows)
                if resume is not None:  # written last: a resume.pt always matches the files beside it
                    self.handle.save_resume({**resume, "state": dict(state.__dict__)})
        return improved

    # -- outcomes -----------------------------------------------------------------------------------------
    def completed(self, clean: tuple[float, int] | None, shifted: dict[str, float] | None = None) -> RunResult:
        return self._end("completed", clean, shifted=shifted)

    def stopped(self) -> RunResult:
        return self._end("stopped", None, f"stopped early after epoch {self.state.epoch} of {self.config.epochs}; "
                                          f"continue with: convladder train --resume {self.run_id}")

    def interrupted(self) -> RunResult:
        result = self._end("interrupted", None, f"interrupted after epoch {self.state.epoch}; "
                                                f"resume with: convladder train --resume {self.run_id}")
        if self.run_id:
            record(self.run_id, self.state.epoch)  # the command's one line names it
        return result

    def failed(self, exc: BaseException) -> RunResult:
        try:
            return self._end("failed", None, f"{type(exc).__name__}: {exc}")
        except DiskFull:  # no room for result.json either: `exc` (the first write that failed) is what to show;
            # the folder then has no result.json and the store settles the run as interrupted (resumable)
            return make_result(self.config, self.state, self.run_id, self.params, self.clock(), "failed",
                               self.select, None, f"{type(exc).__name__}: {exc}")

    def diverged(self, epoch: int) -> TrainingDiverged:
        where = f"run {self.run_id}" if self.handle else "the run"
        message = (f"loss became NaN/inf in epoch {epoch} ({where} stopped; the checkpoint of epoch {self.state.epoch} "
                   f"is kept): lower the learning rate (lr={self.config.lr:g}) or check the data")
        # The best epoch stays the one selected so far: its weights are in best.safetensors (epoch_done saved
        # them when it improved), so result.json's best and `--which best` describe the same network.
        return TrainingDiverged(message, self._end("failed", None, message))

    def _end(self, status: str, clean: tuple[float, int] | None, message: str = "",
             shifted: dict[str, float] | None = None) -> RunResult:
        result = make_result(self.config, self.state, self.run_id, self.params, self.clock(), status,
                             self.select, clean, message)
        result.shifted_test = shifted
        result.distilled_from = self.distilled
        if self.handle is not None:
            with deferred():  # a second signal must not leave result.json and the index disagreeing
                self.handle.write_json("result.json", result.to_dict())
                self.handle.update(status=result.status, final_test_acc=result.final.get("test_acc"),
                                   best_val_acc=result.best.get("val_acc"), best_epoch=result.best.get("epoch"))
        return result


def make_result(config: TrainConfig, state: RunState, run_id: str | None, params: int, wall: float, status: str,
                select: str | None, clean: tuple[float, int] | None, message: str = "") -> RunResult:
    """The RunResult of a run's state: final, best epoch, gap, potential, verdict."""
    clean_train, clean_n = clean if clean is not None else (None, 0)
    rows = state.rows
    last = rows[-1] if rows else {}
    evaluated = [r for r in rows if "test_acc" in r]
    final_test = evaluated[-1]["test_acc"] if evaluated else None
    seen = (evaluated[-1] if evaluated else last).get("train_acc")  # the gap compares one epoch's two numbers
    train_acc = clean_train if clean_train is not None else seen
    best = dict(state.best)
    best["selected_by"] = select or "final epoch (no validation split)"
    if select is None and evaluated:
        best.update(epoch=evaluated[-1]["epoch"], val_acc=evaluated[-1].get("val_acc"), test_acc=final_test)
    ok = train_acc is not None and final_test is not None
    return RunResult(
        run_id=run_id, status=status, params=params, epochs_done=state.epoch,
        final={"train_acc": train_acc, "train_acc_seen": seen, "train_acc_clean": clean_train,
               "val_acc": evaluated[-1].get("val_acc") if evaluated else None, "test_acc": final_test,
               # the epoch those accuracies are of: the last one, except in a run that ended early between
               # two evaluations (eval_every > 1)
               "epoch": evaluated[-1]["epoch"] if evaluated else None},
        best=best,
        gap=gap(train_acc, final_test) if ok else None,
        potential=potential(train_acc, final_test) if ok else None,
        verdict=verdict(train_acc, final_test, [r["test_acc"] for r in evaluated], config.target) if ok else None,
        train_acc_source=(f"clean (no dropout/augmentation, first {clean_n} training images)"
                          if clean_train is not None else "seen while training (dropout/augmentation on)"),
        wall_time_s=wall, time_to_target_s=state.time_to_target_s, warmup_s=state.warmup_s,
        train_time_to_target_s=time_to(rows, config.target, state.warmup_s),
        message=message, seed=config.seed, target=config.target,
        # the median epoch's throughput, by the one median rule (the lower of the middle two)
        extra={"train_images_per_s": median_value([r.get("train_images_per_s") for r in rows]),
               # config ema: every accuracy above is the weight average's (train/ema.py); the labels say so
               **({"weights": f"EMA weights (decay {config.ema:g} per step)"} if config.ema else {}),
               # config lookahead: which weights the accuracies are (train/lookahead.py)
               **({"lookahead": lookahead_text(config.lookahead, config.lookahead_alpha)} if config.lookahead else {})})
