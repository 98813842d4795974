"""The command line's shared options, declared once: the options generated from TrainConfig's fields (train,
lr-find, ladder run), the executor options (train --seeds, sweep, frontier, ladder run) and --runs.

Layer: the command line (docs/ARCHITECTURE.md). Nothing here imports torch: `train --help` builds its command
from these declarations, and the commands that compute nothing answer without loading it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convladder.errors import UserError

# train.config and safeparse (which import yaml, ~0.03 s) are imported where used: `runs list|show` read only
# RunsOpt from here.

Opt = typer.Option

RunsOpt = Annotated[Optional[Path], Opt("--runs", help="run store folder (default $CONVLADDER_RUNS or ./runs)")]

# -- executor options ---------------------------------------------------------------------------------------

PANEL = "Executor"
ExecutorOpt = Annotated[str, Opt("--executor", help="where jobs run: inprocess (default, one after another) "
                                 "or ray (side by side)", rich_help_panel=PANEL)]
RayAddressOpt = Annotated[Optional[str], Opt(
    "--ray-address", help="join a Ray cluster: host:port (the GCS port `ray start --head --port` opened, default "
    "6379, e.g. 127.0.0.1:6379), auto (the cluster this machine runs a node of) or ray://host:10001 (Ray Client, "
    "needs ray[client]); default: start a local Ray. A head with token authentication needs RAY_AUTH_TOKEN",
    rich_help_panel=PANEL)]
CpusOpt = Annotated[float, Opt("--cpus-per-trial", help="CPUs per job on Ray (also its torch threads)",
                               rich_help_panel=PANEL)]
GpusOpt = Annotated[float, Opt("--gpus-per-trial", help="GPU share per job on Ray, e.g. 0.25 = 4 jobs per GPU",
                               rich_help_panel=PANEL)]
MaxRetriesOpt = Annotated[Optional[int], Opt(
    "--max-retries", min=0, help="on Ray: times a job is run again when its worker or node is lost (default 1; "
    "errors in the job itself are not retried). A retry trains into a fresh private store, so it never writes "
    "a second run", rich_help_panel=PANEL)]
RayVerboseOpt = Annotated[bool, Opt(
    "--ray-verbose", help="show Ray's own log lines (kept in Ray's session log folder otherwise)",
    rich_help_panel=PANEL)]

# `--data` was `ladder run`'s name for --dataset; kept working, not shown
DataAliasOpt = Annotated[Optional[str], Opt("--data", hidden=True)]

# -- options generated from TrainConfig -----------------------------------------------------------------------


def config_options(command: str | None = None, defaults: bool = True) -> list[inspect.Parameter]:
    """One typer option per TrainConfig field that `command` shows (train, lr-find, ladder run: the field's
    metadata says), generated from the dataclass: the field's type, its help and panel, its default in the help.
    Every option defaults to None (= not given), so a `--config` file or the defaults decide what the command
    line leaves out. command: default `train`."""
    from convladder.train.config import TRAIN, TrainConfig

    command = command or TRAIN
    params = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if command not in meta["commands"]:
            continue
        flag = "--" + f.name.replace("_", "-")
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")  # 'int', 'str | None'
        kind = {"bool": bool, "int": int, "float": float}.get(type_name.split(" ")[0], str)
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag, *meta.get("aliases", ())]
        # the config's default in the help (the option's own default is None: "not given")
        value = str(f.default).lower() if kind is bool else f.default
        shown = "" if f.default is None or not defaults else f" (default {value})"
        option = Opt(*decls, help=meta["help"] + shown, rich_help_panel=meta.get("panel"), show_default=False)
        value_type = meta.get("cli_type") or kind
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[value_type], option]))
    return params


def with_config_options(func: Callable[..., None], command: str | None = None,
                        defaults: bool = True) -> Callable[..., None]:
    """`func(ctx, <its own options>, **config)` as typer sees it: ctx, the options `command` takes from
    TrainConfig (`config_options`; command: default `train`), its own."""
    own = list(inspect.signature(func, eval_str=True).parameters.values())  # the real Annotated[...] objects
    head = [p for p in own if p.name == "ctx"]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own
            if p.name != "ctx" and p.kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        return func(*args, **kwargs)

    wrapped.__signature__ = inspect.Signature(head + config_options(command, defaults) + rest)  # type: ignore[attr-defined]
    return wrapped


def reject_stray_args(ctx: typer.Context) -> list[str]:
    """The trailing key=value overrides; a mistyped option gets 'No such option --epoch, did you mean --epochs?'."""
    from convladder.safeparse import close_names

    extra = list(ctx.args)
    for arg in extra:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            known = [o for p in ctx.command.params if not getattr(p, "hidden", False)
                     for o in [*p.opts, *getattr(p, "secondary_opts", [])] if o.startswith("--")]
            # the same matcher as config keys: prefixes and words before spellings (--lr-rate is --lr, not --rotate)
            close = close_names(name.lstrip("-").replace("-", "_"), [o[2:].replace("-", "_") for o in known], n=1)
            hint = (f", did you mean --{close[0].replace('_', '-')}?" if close
                    else f" (see `{ctx.command_path} --help`)")
            raise UserError(f"No such option {name}{hint}")
    bad = [a for a in extra if "=" not in a]
    if bad:
        raise UserError(f"unexpected argument(s) {' '.join(bad)}: options start with --, overrides look like key=value")
    return extra


def dataset_alias(dataset: str | None, data: str | None) -> str | None:
    """--dataset, or its old spelling --data (`ladder run`); both at once must agree."""
    if data is not None and dataset is not None and data != dataset:
        raise UserError(f"--data {data} and --dataset {dataset} disagree: give --dataset once")
    return dataset if dataset is not None else data
