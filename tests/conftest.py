"""Options of the test suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # tests/test_golden.py: rewrite the golden files instead of comparing them (an intended change of the table)
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.txt|json from the current code (then read the diff and commit it)")
