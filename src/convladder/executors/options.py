"""The executor options, declared once for every command that runs jobs (`train --seeds`, `sweep`, `ladder run`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

PANEL = "Executor"
ExecutorOpt = Annotated[str, typer.Option("--executor", help="where jobs run: inprocess (default, one after another) "
                                          "or ray (side by side)", rich_help_panel=PANEL)]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="join a Ray cluster: host:port (the GCS port `ray start --head --port` opened, default "
    "6379, e.g. 127.0.0.1:6379), auto (the cluster this machine runs a node of) or ray://host:10001 (Ray Client, "
    "needs ray[client]); default: start a local Ray. A head with token authentication needs RAY_AUTH_TOKEN",
    rich_help_panel=PANEL)]
CpusOpt = Annotated[float, typer.Option("--cpus-per-trial", help="CPUs per job on Ray (also its torch threads)",
                                        rich_help_panel=PANEL)]
GpusOpt = Annotated[float, typer.Option("--gpus-per-trial", help="GPU share per job on Ray, e.g. 0.25 = 4 jobs per GPU",
                                        rich_help_panel=PANEL)]
MaxRetriesOpt = Annotated[Optional[int], typer.Option(
    "--max-retries", min=0, help="on Ray: times a job is run again when its worker or node is lost (default 1; "
    "errors in the job itself are not retried). A retry trains into a fresh private store, so it never writes "
    "a second run", rich_help_panel=PANEL)]
RayVerboseOpt = Annotated[bool, typer.Option(
    "--ray-verbose", help="show Ray's own log lines (kept in Ray's session log folder otherwise)",
    rich_help_panel=PANEL)]
