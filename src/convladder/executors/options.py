"""The executor options, declared once for every command that runs jobs (`train --seeds`, `sweep`, `ladder run`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

PANEL = "Executor"
ExecutorOpt = Annotated[str, typer.Option("--executor", help="where jobs run: inprocess (default, one after another) "
                                          "or ray (side by side)", rich_help_panel=PANEL)]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="join a Ray cluster: auto or "
                                                      "ray://host:port (default: start a local Ray)",
                                                      rich_help_panel=PANEL)]
CpusOpt = Annotated[float, typer.Option("--cpus-per-trial", help="CPUs per job on Ray (also its torch threads)",
                                        rich_help_panel=PANEL)]
GpusOpt = Annotated[float, typer.Option("--gpus-per-trial", help="GPU share per job on Ray, e.g. 0.25 = 4 jobs per GPU",
                                        rich_help_panel=PANEL)]
