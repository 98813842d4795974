"""The doctor's result: one `Check` per finding, and the `DoctorResult` that holds them (plain data, JSON-able)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)


@dataclass
class Check:
    """One check: its status, the measured value in one line, why it matters (the notes' terms), what to try."""

    name: str  # data, init, activations, gradients, overfit, lr, learning, epoch
    title: str
    status: str  # pass / warn / fail / skip
    value: str  # the measured figure(s), one line
    why: str
    advice: str  # what to try (when the check warns or fails; the reading of a pass otherwise)
    measured: dict[str, Any] = field(default_factory=dict)  # the numbers behind `value`
    details: list[dict[str, Any]] = field(default_factory=list)  # per-layer rows or curve points (for the page)
    seconds: float = 0.0  # how long the check took

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def worst(*statuses: str) -> str:
    """The worst of the statuses (fail > warn > pass > skip)."""
    order = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}
    return max(statuses, key=order.__getitem__) if statuses else SKIP


@dataclass
class DoctorResult:
    """Everything the doctor found about one network + data + config."""

    model: str  # as given (name, spec text, file.py:Class, python:Class)
    params: int
    dataset: str
    classes: int
    device: str
    config: dict[str, Any]  # the few config keys the checks used: optimizer, lr, batch_size, schedule, augment, seed
    checks: list[Check]
    wall_time_s: float
    torch: str
    samples: dict[str, Any] = field(default_factory=dict)  # a few training images: shape, labels, uint8 as base64
    notes: list[str] = field(default_factory=list)  # what the doctor changed or could not do

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed): the exit status of `convladder doctor`."""
        return not self.failed

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; NaN/inf (a diverged loss) become None, numpy/torch scalars floats."""
        return _clean({**asdict(self), "ok": self.ok, "failed": [c.name for c in self.failed]})

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DoctorResult:
        known = set(cls.__dataclass_fields__)
        kept = {k: v for k, v in data.items() if k in known}
        kept["checks"] = [Check(**{k: v for k, v in c.items() if k in Check.__dataclass_fields__})
                          for c in data.get("checks", [])]
        return cls(**kept)

    def format_text(self, verbose: bool = True) -> str:
        """The terminal form: one block per check (status, value, why, what to try), per-layer rows if verbose."""
        cfg = self.config
        head = (f"doctor: {self.model} ({self.params:,} params) on {self.dataset}, {cfg.get('optimizer')} lr "
                f"{cfg.get('lr'):g}, batch {cfg.get('batch_size')}, {self.device}")
        lines = [head]
        for c in self.checks:
            took = f" [{c.seconds:.1f} s]" if c.seconds >= 0.05 else ""
            lines.append(f" {c.status.upper():<4}  {c.title}: {c.value}{took}")
            if c.status in (WARN, FAIL) or verbose:
                lines.append(f"       why: {c.why}")
            if c.advice and c.status != SKIP:
                lines.append(f"       {'try' if c.status in (WARN, FAIL) else 'so'}: {c.advice}")
            if verbose and c.name in ("activations", "gradients") and c.details:
                lines += [f"         {row['text']}" for row in c.details if row.get("text")]
        for note in self.notes:
            lines.append(f" note: {note}")
        verdict = "every check passed" if not self.failed and not any(c.status == WARN for c in self.checks) else (
            f"{len(self.failed)} check(s) failed: {', '.join(c.name for c in self.failed)}" if self.failed
            else "no check failed; read the warnings")
        lines.append(f"{verdict} ({self.wall_time_s:.1f} s)")
        return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
