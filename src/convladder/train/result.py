"""Reading a run honestly: final vs best-epoch accuracy, gap, potential, verdict, and multi-seed statistics.

The verdict rule (also in docs/training.md), with T = target (default 99.4) and accuracies in %:
1. still improving — final test < T and test accuracy rose by more than RISE (0.1) over the last 3 evaluations;
2. underfitting — train accuracy < T (the network cannot even fit the training set to the target);
3. overfitting — potential = test + (100 - train) < T (no amount of closing the gap reaches the target);
4. healthy — otherwise.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

RISE = 0.1  # percentage points over the last 3 evaluations that count as "still improving"
WINDOW = 3


def gap(train_acc: float, test_acc: float) -> float:
    """train - test, in percentage points (the notes' overfitting measure)."""
    return train_acc - test_acc


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
    final: dict[str, float | None]  # train_acc (the one used for gap), train_acc_seen, train_acc_clean, val_acc, test_acc
    best: dict[str, Any]  # epoch, val_acc, test_acc, selected_by
    gap: float | None
    potential: float | None
    verdict: str | None
    train_acc_source: str  # which train accuracy gap/potential use
    wall_time_s: float
    time_to_target_s: float | None  # wall time until test acc first reached the target (None: never)
    warmup_s: float = 0.0  # first step (compile/allocation), counted in wall time but reported apart
    message: str = ""
    seed: int | None = None
    target: float = 99.4
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        """One line: final test, best-epoch, gap, potential, verdict."""
        f, b = self.final, self.best
        parts = [f"{self.status}", f"final test {_pct(f.get('test_acc'))}"]
        if b.get("epoch"):
            parts.append(f"best-epoch ({b['selected_by']}) {b['epoch']}: test {_pct(b.get('test_acc'))}")
        if self.gap is not None:
            parts.append(f"gap {self.gap:+.2f} potential {self.potential:.2f} ({self.train_acc_source} train acc)")
        if self.verdict:
            parts.append(self.verdict)
        return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def seed_stats(results: list[RunResult]) -> dict[str, Any]:
    """min/median/max over seeds of final test accuracy and best-epoch test accuracy, plus params and seeds."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}

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
