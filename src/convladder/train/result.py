"""Reading a run honestly: final vs best-epoch accuracy, gap, potential, verdict, and multi-seed statistics;
how a result shows in a REPL (`str`/`repr`) and in Jupyter (`_repr_html_`), and its report inline.

The verdict rule (also in docs/training.md), with T = target (default 99.4) and accuracies in %:
1. still improving — final test < T and test accuracy rose by more than RISE (0.1) over the last 3 evaluations;
2. underfitting — train accuracy < T (the network cannot even fit the training set to the target);
3. overfitting — potential = test + (100 - train) < T (no amount of closing the gap reaches the target);
4. healthy — otherwise.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# RunResult.report() draws the run's HTML report, which is report/'s work, a later layer than train/. This module
# imports nothing from it (docs/ARCHITECTURE.md: no upward imports, no import circle); the root package, which
# may import any area, hands the function in when convladder is imported (report.runreport.report_of_run).
_report_maker: Callable[..., Any] | None = None


def set_report_maker(make: Callable[..., Any]) -> None:
    """Set what `RunResult.report` calls: make(folder, out, *, model) -> the report object."""
    global _report_maker
    _report_maker = make


RISE = 0.1  # percentage points over the last 3 evaluations that count as "still improving"
WINDOW = 3


def gap(train_acc: float, test_acc: float) -> float:
    """train - test, in percentage points (the notes' overfitting measure)."""
    return train_acc - test_acc


POTENTIAL_CAP = 100.0  # no accuracy exceeds 100 %
POTENTIAL_NOTE = ("* potential = test + (100 − train) passes 100 when the train accuracy is below the test accuracy "
                  "(a negative gap: train measured with dropout/augmentation on, or on a sample of the training "
                  "set); no accuracy exceeds 100, so it is shown capped at 100, with the formula's raw value. "
                  "Read it as: nothing is lost to overfitting.")


def potential_text(value: float, raw: bool = True) -> str:
    """The potential as printed: '99.25', or '100.00*' (+ ' (raw 101.25)') where the formula passes 100."""
    if value <= POTENTIAL_CAP:
        return f"{value:.2f}"
    return f"{POTENTIAL_CAP:.2f}*" + (f" (raw {value:.2f})" if raw else "")


# The potential assumes a network that learned: with train accuracy near chance both accuracies sit near 100/K,
# the gap is ~0 and test + (100 - train) is ~100 whatever the network (1,000 images, 1 epoch: test 9.82 %,
# train 10.78 % -> "potential 99.04 %"). It is shown only once train accuracy has come LEARNED_FRACTION of the
# way from chance to 100 % (10 classes: 32.5 %).
LEARNED_FRACTION = 0.25


def potential_meaningful(train_acc: float | None, classes: int | None = None) -> bool:
    """Whether a potential computed from `train_acc` means anything (the rule above; classes None = 10; an
    unknown train accuracy gives no potential, so nothing to judge: True)."""
    if train_acc is None:
        return True
    chance = 100.0 / (classes or 10)
    return train_acc >= chance + LEARNED_FRACTION * (100.0 - chance)


def potential_shown(value: float | None, train_acc: float | None, classes: int | None = None, raw: bool = True,
                    unit: str = "") -> str:
    """The potential as printed everywhere: potential_text(value) + unit, '-' when there is none, or
    'not meaningful (train 10.78% is near chance, 10%)' where train accuracy is near chance."""
    if value is None:
        return "-"
    if train_acc is not None and not potential_meaningful(train_acc, classes):
        return f"not meaningful (train {train_acc:.2f}% is near chance, {100.0 / (classes or 10):g}%)"
    return potential_text(value, raw) + unit


def shifted_text(shifted: dict[str, float]) -> str:
    """'0 px 99.41 · 1 px 99.30 · 2 px 98.72 ...' (mean over the 4 directions)."""
    return " · ".join(f"{k} px {v:.2f}" for k, v in sorted(shifted.items(), key=lambda kv: int(kv[0])))


def potential(train_acc: float, test_acc: float) -> float:
    """test + (100 - train): what test could reach if the network fitted the training set fully."""
    return test_acc + (100.0 - train_acc)


def verdict(train_acc: float, test_acc: float, test_history: list[float], target: float = 99.4,
            rise: float = RISE, window: int = WINDOW) -> str:
    """One of 'still improving', 'underfitting', 'overfitting', 'healthy' (rule in the module docstring)."""
    if test_acc < target and len(test_history) > window and test_history[-1] - test_history[-1 - window] > rise:
        return "still improving"
    if train_acc < target:
        return "underfitting"
    if potential(train_acc, test_acc) < target:
        return "overfitting"
    return "healthy"


@dataclass
class RunResult:
    """What `train()` returns and what result.json holds (accuracies in %)."""

    run_id: str | None
    status: str  # completed / interrupted / failed
    params: int
    epochs_done: int
    final: dict[str, float | None]  # train_acc (the one used for gap), train_acc_seen, train_acc_clean, val_acc, test_acc,
    # epoch (the epoch they are of)
    best: dict[str, Any]  # epoch, val_acc, test_acc, selected_by
    gap: float | None
    potential: float | None
    verdict: str | None
    train_acc_source: str  # which train accuracy gap/potential use
    wall_time_s: float
    # the process's wall clock until test acc first reached the target (incl. data loading, model build,
    # saving; None: never) -- kept with its old meaning; the figure reported is train_time_to_target_s
    time_to_target_s: float | None
    warmup_s: float = 0.0  # first step (compile/allocation), counted in wall time but reported apart
    # time to target by TIME_TO_TARGET (training + evaluation, warm-up excluded; None: never, or an older run)
    train_time_to_target_s: float | None = None
    message: str = ""
    seed: int | None = None
    target: float = 99.4
    extra: dict[str, Any] = field(default_factory=dict)
    # final model's test accuracy with images shifted k pixels ("0".."N", mean over 4 directions; shift_eval)
    shifted_test: dict[str, float] | None = None
    # config teacher: {run, model, params, temperature, weight}; `params` above stays the student's alone
    distilled_from: dict[str, Any] | None = None
    # where the run's folder is (set by whoever holds the store; never written to result.json)
    run_dir: str | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("run_dir")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        """One line: final test, best-epoch, gap, potential, verdict."""
        f, b = self.final, self.best
        parts = [f"{self.status}", f"final test{self._weights()} {_pct(f.get('test_acc'))}"
                 + (f" (epoch {f['epoch']} of {self.epochs_done} trained)"
                    if f.get("epoch") and f["epoch"] != self.epochs_done else "")]
        if b.get("epoch"):
            parts.append(f"best-epoch ({b['selected_by']}) {b['epoch']}: test {_pct(b.get('test_acc'))}")
        if self.gap is not None:
            parts.append(f"gap {self.gap:+.2f} potential {potential_shown(self.potential, f.get('train_acc'))} "
                         f"({self.train_acc_source} train acc)")
        if self.verdict:
            parts.append(self.verdict)
        if self.distilled_from:
            parts.append(self._distilled())
        if self.extra.get("lookahead"):  # config lookahead: 'lookahead k=5, alpha 0.5 (fast weights ...)'
            parts.append(str(self.extra["lookahead"]))
        return ", ".join(parts)

    # -- display: a plain REPL, print(), and Jupyter -------------------------------------------------------

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) pairs in reading order: final vs best epoch, gap, potential, verdict, time."""
        f, b = self.final, self.best
        val = f", val {_pct(f.get('val_acc'))}" if f.get("val_acc") is not None else ""
        evaluated = f.get("epoch") or self.epochs_done  # results written before the key existed: the last epoch
        label = "final (last epoch)" if evaluated == self.epochs_done else "final (last evaluated epoch)"
        out = [(label + self._weights(),
                f"epoch {evaluated}: test {_pct(f.get('test_acc'))}, train {_pct(f.get('train_acc'))}{val}"
                + (f" (training stopped after epoch {self.epochs_done})" if evaluated != self.epochs_done else ""))]
        if b.get("epoch"):
            sel = str(b.get("selected_by") or "?")
            label = f"best epoch (by {sel})" if sel in ("val", "test") else f"best epoch ({sel})"
            out.append((label + self._weights(), f"epoch {b['epoch']}: test {_pct(b.get('test_acc'))}"
                        + (f", val {_pct(b.get('val_acc'))}" if b.get("val_acc") is not None else "")))
        if self.gap is not None:
            out.append(("gap = train - test", f"{self.gap:+.2f} points; train accuracy {self.train_acc_source}"))
            out.append(("potential = test + (100 - train)",
                        f"{potential_shown(self.potential, f.get('train_acc'), unit='%')} (target {self.target:g}%)"))
        out.append(("verdict", self.verdict or "-"))
        if self.shifted_test:
            out.append(("test, images shifted", shifted_text(self.shifted_test)))
        out.append(("time", f"{self.wall_time_s:.1f} s wall, whole process (data loading, model build, training, "
                    f"evaluation, saving); warm-up (first step) {self.warmup_s:.2f} s"))
        out.append((f"time to {self.target:g}%", target_time_text(self.train_time_to_target_s, self.time_to_target_s)))
        if self.distilled_from:
            out.append(("distillation", self._distilled()))
        if self.extra.get("lookahead"):
            out.append(("lookahead", str(self.extra["lookahead"])))
        if self.message:
            out.append(("note", self.message))
        return out

    def _distilled(self) -> str:
        """'distilled from <run> (<model>, T 4, weight 0.5); teacher N params, ...' (config teacher)."""
        from convladder.train.distill import distilled_text

        return distilled_text(self.distilled_from or {})

    def _weights(self) -> str:
        """' (EMA weights)' when the accuracies are a weight average's (config ema), else ''."""
        return " (EMA weights)" if self.extra.get("weights") else ""

    def _title(self) -> str:
        run = f"run {self.run_id}" if self.run_id else "run (not stored)"
        seed = f", seed {self.seed}" if self.seed is not None else ""
        student = " (the student's; distilled)" if self.distilled_from else ""
        return f"{run}: {self.status}, {self.epochs_done} epoch(s), {self.params:,} params{student}{seed}"

    def __str__(self) -> str:
        rows = self.lines()
        width = max(len(k) for k, _ in rows)
        return "\n".join([self._title()] + [f"  {k:<{width}}  {v}" for k, v in rows])

    __repr__ = __str__  # a REPL shows the readable block, not a dataclass dump

    def _repr_html_(self) -> str:
        body = "".join(f'<tr><th style="{_TH}">{E(k)}</th><td style="{_TD}">'
                       + (f"<b>{E(v)}</b>" if k == "verdict" else E(v)) + "</td></tr>" for k, v in self.lines())
        return f'<div><b>{E(self._title())}</b><table style="border-collapse:collapse">{body}</table></div>'

    def report(self, runs_root: str | Path | None = None, out: str | Path | None = None, *, model: Any = None) -> Any:
        """The run's HTML report (the one `convladder report RUN` writes), shown inline in Jupyter: a
        `convladder.report.runreport.RunReport`.

        Reads the run store only; with `out` the report is also written to that file. The run folder is
        `run_dir` when the trainer set it, else `<runs_root or the default run store>/<run_id>`. `model`: the
        class the run trained, for a class the report cannot import itself (one defined in a notebook); the
        weight figures (mistakes, confusion, BN, feature maps) need it.
        """
        folder = self.folder(runs_root)
        if _report_maker is None:  # the root package hands it in on import: this is a broken install
            raise RuntimeError("no report maker: convladder's root package sets it (train.result.set_report_maker)")
        return _report_maker(folder, out, model=model)

    def folder(self, runs_root: str | Path | None = None) -> Path:
        """The run's folder in the store (UserError when the run was not stored)."""
        from convladder.errors import UserError
        from convladder.paths import runs_dir

        if self.run_dir and runs_root is None:
            return Path(self.run_dir)
        if not self.run_id:
            raise UserError("this run was not stored (no run id): train with a run store to get a report")
        root = Path(runs_root).expanduser() if runs_root else runs_dir()
        path = root / self.run_id
        if not path.is_dir():
            raise UserError(f"run {self.run_id} is not in {root} — pass runs_root= (the store it was trained in)")
        return path


E = html.escape
_TH = "text-align:left;padding:1px 12px 1px 0;font-weight:normal;color:#555;white-space:nowrap;vertical-align:top"
_TD = "text-align:left;padding:1px 0"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


MEDIAN_RULE = ("median: of an even number of seeds the lower of the middle two — a number one run had "
               "(its train, test and gap belong together), never the mean of two runs")


def median_item(items: list[Any], value: Callable[[Any], float | None]) -> Any:
    """The item whose value is the median: the lower one of the middle two for an even count (an item that
    exists, not an average); items without a value rank last. The project's one median rule (MEDIAN_RULE):
    `min_median_max` takes its median value by it too."""
    ranked = sorted(items, key=lambda item: (value(item) is None, value(item) or 0.0))
    return ranked[(len(ranked) - 1) // 2]


class SeedResults:
    """The results of one configuration over several seeds, with min/median/max (the notes report the least)."""

    def __init__(self, results: list[RunResult]):
        if not results:
            raise ValueError("SeedResults needs at least one result")
        self.results = list(results)

    def __iter__(self) -> Iterator[RunResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> RunResult:
        return self.results[i]

    @property
    def stats(self) -> dict[str, Any]:
        return seed_stats(self.results)

    @property
    def median(self) -> RunResult:
        """The run whose final test accuracy is the median (the lower one of the middle two)."""
        return median_item(self.results, lambda r: r.final.get("test_acc"))

    def report(self, runs_root: str | Path | None = None, out: str | Path | None = None, *, model: Any = None) -> Any:
        """The median run's report; its result block gives the spread over every seed run in the store."""
        return self.median.report(runs_root, out, model=model)

    def summary_lines(self) -> list[tuple[str, str]]:
        s = self.stats
        out = []
        for label, key in (("final test (last epoch)", "final_test_acc"), ("best-epoch test", "best_epoch_test_acc")):
            v = s[key]
            if v:
                out.append((f"{label} min / median / max", f"{v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f}%"))
        out.append((f"every seed >= {s['target']:g}%", "yes" if s["all_seeds_reach_target"] else "no"))
        w = s["wall_time_s"]
        out.append(("wall time min / median / max", f"{w['min']:.1f} / {w['median']:.1f} / {w['max']:.1f} s "
                    "(whole process)"))
        times = [r.train_time_to_target_s for r in self.results]
        t = min_median_max(times)
        if t:
            out.append((f"time to {s['target']:g}% min / median / max",
                        f"{t['min']:.1f} / {t['median']:.1f} / {t['max']:.1f} s training + evaluation, warm-up "
                        f"excluded ({sum(v is not None for v in times)}/{len(times)} seeds reached it)"))
        return out

    def _per_seed(self) -> list[list[str]]:
        return [[str(r.seed), r.run_id or "-", r.status, _pct(r.final.get("test_acc")),
                 f"{r.best.get('epoch') or '-'}: {_pct(r.best.get('test_acc'))}",
                 "-" if r.gap is None else f"{r.gap:+.2f}", potential_shown(r.potential, r.final.get("train_acc"), raw=False),
                 r.verdict or "-", f"{r.wall_time_s:.1f}"] for r in self.results]

    _HEAD = ["seed", "run", "status", "final test", "best epoch: test", "gap", "potential", "verdict", "time s"]

    def __str__(self) -> str:
        rows = [self._HEAD] + self._per_seed()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines = self.summary_lines()
        kw = max(len(k) for k, _ in lines)
        return "\n".join([f"{len(self)} seed(s), {self.results[0].params:,} params"] + table
                         + [f"  {k:<{kw}}  {v}" for k, v in lines] + [f"  ({MEDIAN_RULE})"])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="{_TH}">{E(h)}</th>' for h in self._HEAD)
        body = "".join("<tr>" + "".join(f'<td style="{_TD};padding-right:12px">{E(c)}</td>' for c in r) + "</tr>"
                       for r in self._per_seed())
        summary = "".join(f'<tr><th style="{_TH}">{E(k)}</th><td style="{_TD}"><b>{E(v)}</b></td></tr>'
                          for k, v in self.summary_lines())
        return (f"<div><b>{len(self)} seed(s), {self.results[0].params:,} params</b>"
                f'<table style="border-collapse:collapse"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
                f'<table style="border-collapse:collapse;margin-top:4px">{summary}</table>'
                f'<small>{E(MEDIAN_RULE)}</small></div>')


TIME_TO_TARGET = ("time to target = training + evaluation seconds of the epochs up to the end of the first epoch "
                  "whose test accuracy reached the target, the one-time warm-up (first step, or warm-up steps + "
                  "CUDA graph capture) taken out and shown apart; not inside: process start, data loading, model "
                  "build, saving the run")


def time_to(rows: list[dict[str, Any]], level: float, warmup_s: float = 0.0) -> float | None:
    """Time to `level` % test accuracy by TIME_TO_TARGET, from a run's epoch rows (epoch_time_s = the epoch's
    training + evaluation); None when no evaluated epoch reached it."""
    total = 0.0
    for row in rows:
        total += float(row.get("epoch_time_s") or 0.0)
        if row.get("test_acc") is not None and row["test_acc"] >= level:
            return max(0.0, total - warmup_s)
    return None


def target_time_text(train_s: float | None, wall_s: float | None) -> str:
    """'reached after 12.3 s of training + evaluation (warm-up excluded); 15.0 s on the process's wall clock',
    or 'not reached'."""
    if train_s is None and wall_s is None:
        return "not reached"
    if train_s is None:  # result.json of an older convladder: only the process clock was recorded
        return (f"reached after {wall_s:.1f} s on the process's wall clock (from its start; training + evaluation "
                "time not recorded by the convladder that ran it)")
    return (f"reached after {train_s:.1f} s of training + evaluation (warm-up excluded)"
            + ("" if wall_s is None else f"; {wall_s:.1f} s on the process's wall clock (from its start)"))


def min_median_max(values: list[float | None]) -> dict[str, float] | None:
    """{min, median, max} of the values given (None skipped; the median of an even count is the lower of the
    middle two, as `median_item` picks: MEDIAN_RULE); None when there is none. The one spread over seeds."""
    vals = [float(v) for v in values if v is not None]
    return {"min": min(vals), "median": median_item(vals, float), "max": max(vals)} if vals else None


def median_value(values: list[float | None]) -> float | None:
    """The median of the values given by MEDIAN_RULE (None skipped); None when there is none."""
    s = min_median_max(values)
    return None if s is None else s["median"]


def seed_stats(results: list[RunResult]) -> dict[str, Any]:
    """min/median/max over seeds of final test accuracy and best-epoch test accuracy, plus params and seeds."""
    def stats(values: list[float]) -> dict[str, float]:
        return min_median_max(values) or {}

    finals = [r.final["test_acc"] for r in results if r.final.get("test_acc") is not None]
    bests = [r.best["test_acc"] for r in results if r.best.get("test_acc") is not None]
    target = results[0].target if results else 99.4
    return {
        "seeds": [r.seed for r in results],
        "runs": [r.run_id for r in results],
        "final_test_acc": stats(finals),
        "best_epoch_test_acc": stats(bests),
        "all_seeds_reach_target": bool(finals) and min(finals) >= target,
        "target": target,
        "wall_time_s": stats([r.wall_time_s for r in results]),
    }
