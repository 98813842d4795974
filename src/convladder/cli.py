"""The `convladder` command: a thin layer that parses options and calls the library.

Each area of the pipeline keeps its commands in `<area>/commands.py` with a
`register(app)` function; this module only assembles them and turns a
`UserError` into one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib
import sys

import typer

from convladder.errors import UserError

# Areas whose commands.py registers sub-commands, in the order `--help` lists them.
COMMAND_AREAS = (
    "convladder.data",
    "convladder.analysis",
    "convladder.train",
    "convladder.ladder",
    "convladder.report",
    "convladder.serve",
    "convladder.executors",
)


def build_app() -> typer.Typer:
    """Create the Typer app with every area's commands."""
    app = typer.Typer(
        name="convladder",
        help="Design compact CNNs under a parameter budget, one change at a time.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for area in COMMAND_AREAS:
        importlib.import_module(f"{area}.commands").register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and `python -m convladder`."""
    app = build_app()
    try:
        # standalone mode: typer prints usage errors itself and exits 2; only our errors reach here.
        app(args=argv, prog_name="convladder")
    except UserError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(err.exit_code)
