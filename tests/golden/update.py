"""Golden files of the network table: `python tests/golden/update.py` rewrites them all.

Each case is a network a user reads through `convladder summary`: every registered network, the own-model
test nets of tests/nets.py, and two nets that use every layer kind (spec and torch) once. For each, two files:

- `<name>.txt`: the table, totals, notes and design checks as `convladder summary` prints them to a pipe
  (the same `print_table` / `print_findings`, 200 columns, no colour);
- `<name>.json`: the table and its findings as `convladder summary --json` prints them.

tests/test_golden.py compares them; `pytest tests/test_golden.py --update-golden` rewrites them too. A change
to what a user reads then shows as a diff of these files, to be read and committed with the change.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

GOLDEN = Path(__file__).resolve().parent
TESTS = GOLDEN.parent
if str(TESTS) not in sys.path:  # `python tests/golden/update.py` runs from anywhere: nets.py sits in tests/
    sys.path.insert(0, str(TESTS))

import nets  # noqa: E402  (tests/nets.py, after the path above)

# Every kind the spec notation knows, once; the pointwise kinds after the last weight layer, so the
# "extras on the last layer" check names each one that it counts.
SPEC_KINDS = ("c1[conv3x3(8, bias=false) relu bn dropout(0.05)] c2[conv3x3(8) leakyrelu(negative_slope=0.1) bn] "
              "c3[conv3x3(8, padding=1, stride=2) prelu] c4[conv3x3(8, dilation=2) elu(alpha=0.5)] "
              "t1[avgpool2x2 conv1x1(8) selu] "
              "t2[maxpool3x3(stride=1, padding=1, ceil_mode=true) conv1x1(16, groups=2)] "
              "c5[conv3x3(8) tanh sigmoid silu gelu] "
              "out[gap conv1x1(10, bias=false) relu leakyrelu prelu elu selu tanh sigmoid silu gelu bn dropout(0.1) "
              "logsoftmax]")
SPEC_DENSE = "c1[conv3x3(8) relu] head[flatten fc(32) relu dropout(0.5) fc(10) bn softmax]"


class KindsNet(nn.Module):
    """Every torch activation, norm and dropout module the tracer names, then functional activations, all after
    the last convolution, so each row's kind and its design-check verdict are pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3, bias=False)
        self.mods = nn.Sequential(
            nn.ReLU(), nn.LeakyReLU(), nn.PReLU(), nn.ELU(), nn.SELU(), nn.CELU(), nn.Tanh(), nn.Sigmoid(), nn.SiLU(),
            nn.GELU(), nn.ReLU6(), nn.Hardswish(), nn.Hardsigmoid(), nn.Hardtanh(), nn.Mish(), nn.Softplus(),
            nn.Softsign(), nn.LogSigmoid(), nn.Tanhshrink(), nn.Threshold(0.1, 0.0), nn.BatchNorm2d(10),
            nn.GroupNorm(2, 10), nn.Dropout(0.1), nn.Dropout2d(0.1), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mods(F.max_pool2d(self.conv(x), 2))
        x = F.relu6(F.hardswish(F.gelu(F.silu(torch.sigmoid(torch.tanh(F.selu(F.elu(F.leaky_relu(F.relu(x))))))))))
        x = F.dropout(F.mish(F.softplus(x)), 0.1, self.training)
        return F.log_softmax(F.adaptive_avg_pool2d(x, 1).flatten(1), dim=1)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], tuple[object, str | None]]  # -> (table with findings, title)


def _registered(name: str) -> Callable[[], tuple[object, str | None]]:
    def make() -> tuple[object, str | None]:
        from convladder.analysis.commands import table_for

        return table_for(name, None, None)  # what `convladder summary NAME` shows
    return make


def _spec(text: str, title: str) -> Callable[[], tuple[object, str | None]]:
    def make() -> tuple[object, str | None]:
        from convladder.analysis.commands import table_for

        table, _ = table_for(text, None, None)
        return table, title
    return make


def _own(factory: Callable[[], nn.Module], shape: tuple[int, int, int], title: str,
         classifier: bool = True) -> Callable[[], tuple[object, str | None]]:
    """An own class as `convladder summary nets.py:Class` reads it; a net that returns no score vector per image
    (the CLI refuses it) as `analysis.table.summarize` plus the design checks."""
    def make() -> tuple[object, str | None]:
        from convladder.analysis.checks import run_checks
        from convladder.analysis.table import network_verdict, summarize

        torch.manual_seed(0)
        module = factory()
        if classifier:
            return network_verdict(module, shape, where=title), title
        table = summarize(module, shape)
        table.findings = run_checks(table, classes=10)
        return table, title
    return make


def cases() -> list[Case]:
    """Every golden case, registered networks first."""
    from convladder.spec.registry import list_models

    out = [Case(name, _registered(name)) for name in list_models()]
    out += [Case("spec-kinds", _spec(SPEC_KINDS, "spec-kinds")), Case("spec-dense", _spec(SPEC_DENSE, "spec-dense"))]
    mnist = (1, 28, 28)
    out += [
        Case("own-ExamplesNet", _own(nets.ExamplesNet, mnist, "nets.py:ExamplesNet")),
        Case("own-CourseNet", _own(nets.CourseNet, mnist, "nets.py:CourseNet")),
        Case("own-ResNet18", _own(lambda: nets.ResNet18(num_classes=10), (3, 32, 32), "nets.py:ResNet18")),
        Case("own-ConcatNet", _own(nets.ConcatNet, mnist, "nets.py:ConcatNet", classifier=False)),
        Case("own-MisalignedNet", _own(nets.MisalignedNet, mnist, "nets.py:MisalignedNet", classifier=False)),
        Case("own-GatedNet", _own(nets.GatedNet, mnist, "nets.py:GatedNet", classifier=False)),
        Case("own-DataDependentNet", _own(nets.DataDependentNet, mnist, "nets.py:DataDependentNet")),
        Case("own-KindsNet", _own(KindsNet, mnist, "golden/update.py:KindsNet")),
    ]
    return out


def render(case: Case) -> tuple[str, str]:
    """(text, json) of one case, as `convladder summary` and `convladder summary --json` print them to a pipe."""
    from convladder.analysis.render import print_findings, print_table

    table, title = case.make()
    buf = io.StringIO()
    # the console `make_console` gives when output is not a terminal, with colour and markup codes left out
    console = Console(file=buf, width=200, color_system=None, force_terminal=False, force_jupyter=False)
    print_table(table, console, title=title)
    print_findings(table.findings or [], console)
    return buf.getvalue(), json.dumps(table.to_dict(), indent=2) + "\n"


def paths(case: Case) -> tuple[Path, Path]:
    return GOLDEN / f"{case.name}.txt", GOLDEN / f"{case.name}.json"


def update() -> list[str]:
    """Rewrite every golden file (atomically); return the names of those whose content changed."""
    from convladder.fileio import atomic_write_text

    changed = []
    for case in cases():
        for path, text in zip(paths(case), render(case)):
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)
                changed.append(path.name)
    return changed


if __name__ == "__main__":
    names = update()
    print(f"{len(names)} golden file(s) rewritten" + (": " + ", ".join(names) if names else ""))
