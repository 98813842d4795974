"""The `convladder` command: a thin layer that parses options and calls the library.

Each area of the pipeline keeps its commands in `<area>/commands.py` with a
`register(app)` function; this module only assembles them and turns a
`UserError` into one clear line on stderr and a non-zero exit.

The console script builds the command tree lazily (click's LazyGroup pattern): an area's commands.py is imported
only when one of its commands runs or is completed; `--help` lists the names and short help from `COMMANDS`, a
static table that tests/test_startup.py keeps equal to what the areas register.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
import typer.core
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

# Every top-level command: (name, area, first paragraph of its help), in typer's order (each area's commands, then
# the sub-apps). `--help` and completion read this instead of importing every area (~0.1 s each call).
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("summary", "convladder.analysis",
     "The network table: sizes, receptive field, jump, parameters, MACs; design checks below it."),
    ("check", "convladder.analysis",
     "Design checks from the notes. Exits 1 when a check finds an error (e.g. over budget)."),
    ("models", "convladder.analysis", "The registered networks with their parameter counts."),
    ("train", "convladder.train",
     "Train a network (name, spec file, spec text or file.py:ClassName); trailing key=value args override the "
     "config (any TrainConfig key, e.g. gamma=0.5)."),
    ("diagnose", "convladder.ladder", "BN health, dead ReLUs and parameter share of a trained network."),
    ("doctor", "convladder.doctor",
     "Sanity-check a network before training: data, initial loss, activations and gradients per layer, overfit "
     "one batch, LR range, a short run; exit 1 when a check fails."),
    ("report", "convladder.report",
     "Write one self-contained HTML report (tables, checks, result, figures) of a run, a ladder or a sweep."),
    ("concepts", "convladder.report",
     "Render the concept figures (GAP vs flatten, 2x2 vs 3x3 max-pool, activations) without training."),
    ("predict", "convladder.serve",
     "Classify images with a trained run (photos/scans of digits are put into MNIST form first; a colour run "
     "keeps\npictures in colour, resized to its input)."),
    ("export", "convladder.serve",
     "Export a run's network to one ONNX file: input float32 pixels in [0,1] (N,1,28,28: the run's input "
     "shape),\noutput probabilities."),
    ("serve", "convladder.serve", "Serve a draw-a-digit page and a JSON API (POST /predict) for a run."),
    ("sweep", "convladder.executors",
     "Run a hyperparameter sweep from a YAML file; rank trials by min-over-seeds accuracy. Exit 0 when some "
     "trials failed (their error is listed; the others are ranked and kept, and a rerun trains only what is "
     "missing), 1 when none trained; --strict: 1 when any failed."),
    ("lr-find", "convladder.executors",
     "LR range test: ramp the lr over mini-batches and suggest one (weights are left unchanged); trailing "
     "key=value args override the config."),
    ("frontier", "convladder.executors",
     "The frontier: the best network under each parameter budget, chosen on the validation split, re-trained "
     "over seeds (docs/frontier.md)."),
    ("data", "convladder.data", "Get data sets (MNIST, Fashion-MNIST, your own) into the cache."),
    ("runs", "convladder.runs", "List, show and compare stored runs; rebuild the index."),
    ("ladder", "convladder.ladder", "Ladders: a base network and ordered one-change steps, run and compared."),
)
_AREA_OF = {name: area for name, area, _ in COMMANDS}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("convladder")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from convladder import __version__ as text
        typer.echo(f"convladder {text}")
        raise typer.Exit()


class LazyGroup(typer.core.TyperGroup):
    """The root group: an area's click commands are made when a command of that area is resolved (run, its
    --help, completing its options); listing (--help, completing a name) shows stubs made from `COMMANDS`."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [name for name, _, _ in COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in _AREA_OF:
            # only name and short help are read from a listed command; the stub is never invoked
            command = typer.core.TyperCommand(name=cmd_name, help=_short_help(cmd_name))
        return command

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        area = _AREA_OF.get(args[0]) if args else None
        # an unknown name loads every area, so "No such command ... Did you mean" suggests from all, as before
        for name in [area] if area else COMMAND_AREAS:
            self.load_area(name)
        return super().resolve_command(ctx, args)

    def load_area(self, area: str) -> None:
        """Import `area`'s commands.py and add the click commands it registers (once)."""
        if any(self.commands.get(name) is not None for name, owner, _ in COMMANDS if owner == area):
            return
        sub = typer.Typer(pretty_exceptions_enable=False)
        importlib.import_module(f"{area}.commands").register(sub)
        for name, command in typer.main.get_group(sub).commands.items():
            _show_flags_as_flags(command)
            self.commands[name] = command


def _short_help(name: str) -> str:
    return next(text for listed, _, text in COMMANDS if listed == name)


def _root_app(cls: type | None = None) -> typer.Typer:
    app = typer.Typer(
        name="convladder",
        help="Design compact CNNs under a parameter budget, one change at a time.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        **({"cls": cls} if cls else {}),
    )

    @app.callback()
    def root(version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                          callback=_version)) -> None:
        """Design compact CNNs under a parameter budget, one change at a time."""

    return app


def build_app() -> typer.Typer:
    """Create the Typer app with every area's commands."""
    app = _root_app()
    for area in COMMAND_AREAS:
        importlib.import_module(f"{area}.commands").register(app)
    return app


def build_command(lazy: bool = False) -> Any:
    """The click command tree of the app, with boolean flags shown as flags in `--help` (no `<bool>` value).
    lazy: the root is a `LazyGroup` holding no command until one is resolved (what the console script runs)."""
    command = typer.main.get_command(_root_app(LazyGroup) if lazy else build_app())
    _show_flags_as_flags(command)
    return command


def _show_flags_as_flags(command: Any) -> None:
    # Recent typer versions print a flag's type (`--json <bool>`) as if it took a value; an empty metavar
    # leaves the type column blank. The help option is made lazily, so it is made here to reach it too.
    help_option = command.get_help_option(typer.Context(command))
    for param in [*command.params, *([help_option] if help_option else [])]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        _defer_coercion(param)
    for sub in getattr(command, "commands", {}).values():
        _show_flags_as_flags(sub)


try:  # typer's coercion of one parameter (typer >= 0.26); with another typer nothing is deferred
    from typer._coercion import RuntimeParam, build_runtime_param
except ImportError:  # pragma: no cover - depends on the installed typer
    RuntimeParam = None


if RuntimeParam is not None:
    class _Deferred(RuntimeParam):  # type: ignore[misc, valid-type]
        """typer's coercion, built on the first value it must convert: typer builds it (importing pydantic,
        ~0.1 s) on a parameter's first value, even None (an option not given, --help, the completion options),
        which `RuntimeParam.coerce` returns untouched before any conversion; the same checks run here."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if _as_is(self.annotation, self.parameter_info, value):
                return value
            param._runtime_param = build_runtime_param(param.type_descriptor)  # typer's own from now on
            return param._runtime_param._coerce_value(value, param=param, ctx=ctx)


def _as_is(annotation: Any, info: Any, value: Any) -> bool:
    """Whether typer's coercion would return `value` unchanged: a str for a plain str parameter (its validator
    passes a str through), an int for an int one without bounds (the default of `--limit 50`); no parser."""
    if getattr(info, "parser", True) is not None or type(value) is not annotation:
        return False
    return annotation is str or (annotation is int and info.min is None and info.max is None and not info.clamp)


def _defer_coercion(param: Any) -> None:
    if RuntimeParam is None or getattr(param, "_runtime_param", False) is not None \
            or not hasattr(param, "type_descriptor"):
        return
    desc = param.type_descriptor
    param._runtime_param = _Deferred(parameter_info=desc.parameter_info, annotation=desc.annotation)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and `python -m convladder`."""
    from convladder import interrupts

    interrupts.forget()  # the line a stop prints names this command's runs only
    interrupts.install()  # SIGTERM raises like Ctrl-C: runs are marked interrupted, exit 143 (Ctrl-C: 130)
    command = build_command(lazy=True)
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
