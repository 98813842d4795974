"""Where convladder keeps data and runs on disk."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The cache root: $CONVLADDER_HOME, else ~/.cache/convladder."""
    env = os.environ.get("CONVLADDER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convladder"


def data_dir() -> Path:
    """Folder holding one sub-folder of IDX files per data set."""
    return home_dir() / "data"


def runs_dir() -> Path:
    """The default run store: $CONVLADDER_RUNS, else ./runs in the working directory."""
    env = os.environ.get("CONVLADDER_RUNS")
    return Path(env).expanduser() if env else Path.cwd() / "runs"
