"""The `convladder` command: a thin layer that parses options and calls the library.

Each area of the pipeline keeps its commands in `<area>/commands.py` with a
`register(app)` function; this module only assembles them and turns a
`UserError` into one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
import typer.main

from convladder.errors import UserError

# Areas whose commands.py registers sub-commands, in the order `--help` lists them.
COMMAND_AREAS = (
    "convladder.data",
    "convladder.analysis",
    "convladder.train",
    "convladder.runs",
    "convladder.ladder",
    "convladder.doctor",
    "convladder.report",
    "convladder.serve",
    "convladder.executors",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("convladder")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from convladder import __version__ as text
        typer.echo(f"convladder {text}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Create the Typer app with every area's commands."""
    app = typer.Typer(
        name="convladder",
        help="Design compact CNNs under a parameter budget, one change at a time.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def root(version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                          callback=_version)) -> None:
        """Design compact CNNs under a parameter budget, one change at a time."""

    for area in COMMAND_AREAS:
        importlib.import_module(f"{area}.commands").register(app)
    return app


def build_command() -> Any:
    """The click command tree of the app, with boolean flags shown as flags in `--help` (no `<bool>` value)."""
    command = typer.main.get_command(build_app())
    _show_flags_as_flags(command)
    return command


def _show_flags_as_flags(command: Any) -> None:
    # Recent typer versions print a flag's type (`--json <bool>`) as if it took a value; an empty metavar
    # leaves the type column blank. The help option is made lazily, so it is made here to reach it too.
    help_option = command.get_help_option(typer.Context(command))
    for param in [*command.params, *([help_option] if help_option else [])]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _show_flags_as_flags(sub)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and `python -m convladder`."""
    from convladder import interrupts

    interrupts.forget()  # the line a stop prints names this command's runs only
    interrupts.install()  # SIGTERM raises like Ctrl-C: runs are marked interrupted, exit 143 (Ctrl-C: 130)
    command = build_command()
    try:
        # standalone mode: typer prints usage errors itself and exits 2; only our errors reach here.
        command(args=argv, prog_name="convladder")
    except UserError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(err.exit_code)
    except SystemExit as done:
        # typer turns a KeyboardInterrupt no command caught into a silent exit 130: say what was saved, and
        # give SIGTERM its own code (a command that caught it printed its line and chose the code itself)
        stop = getattr(done.__context__, "__cause__", None)
        if not isinstance(stop, KeyboardInterrupt):
            raise
        typer.secho(interrupts.stopped_line(stop), err=True, fg=typer.colors.YELLOW)
        sys.exit(interrupts.exit_code(stop))
