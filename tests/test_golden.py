"""The network table of every registered network and own-model test net against its committed golden files.

A failure here means what a user reads changed. If the change is intended, rewrite the files with
`python tests/golden/update.py` (or `pytest tests/test_golden.py --update-golden`), read the diff, commit it.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parent / "golden" / "update.py"
_SPEC = importlib.util.spec_from_file_location("golden_update", _PATH)
golden = importlib.util.module_from_spec(_SPEC)
sys.modules["golden_update"] = golden
_SPEC.loader.exec_module(golden)

CASES = golden.cases()


def _diff(expected: str, actual: str, path: Path) -> str:
    lines = difflib.unified_diff(expected.splitlines(), actual.splitlines(), f"{path.name} (committed)",
                                 f"{path.name} (this code)", lineterm="", n=1)
    return "\n".join(list(lines)[:60])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table_matches_golden(case, request: pytest.FixtureRequest) -> None:
    rendered = golden.render(case)
    if request.config.getoption("--update-golden"):
        from convladder.fileio import atomic_write_text

        for path, text in zip(golden.paths(case), rendered):
            atomic_write_text(path, text)
        return
    for path, text in zip(golden.paths(case), rendered):
        assert path.exists(), f"{path.name} is missing: run python tests/golden/update.py and commit it"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, ("the table a user reads changed; if intended, run python tests/golden/update.py "
                                  "and commit the diff:\n" + _diff(expected, text, path))


def test_every_case_has_files_and_no_stray_files() -> None:
    """Each case has its two files, and no file is left from a case that is gone (a renamed network)."""
    expected = {p.name for case in CASES for p in golden.paths(case)}
    present = {p.name for p in _PATH.parent.iterdir() if p.suffix in (".txt", ".json")}
    assert present == expected, f"missing: {sorted(expected - present)}, stray: {sorted(present - expected)}"


def test_golden_registers_every_network() -> None:
    from convladder.spec.registry import list_models

    assert set(list_models()) <= {case.name for case in CASES}
