"""CLI: `convladder sweep FILE` and `convladder lr-find`.

The executor options (`--executor`, `--ray-address`, `--cpus-per-trial`, `--gpus-per-trial`) and
`make_executor` are shared: other commands that run jobs (ladder, seeds) can import them from here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

import convladder.executors.ray_executor  # noqa: F401 - registers EXECUTORS["ray"] (Ray itself loads lazily)
from convladder.errors import UserError

Opt = typer.Option

ExecutorOpt = Annotated[str, Opt("--executor", help="inprocess (default) or ray")]
RayAddressOpt = Annotated[Optional[str], Opt("--ray-address", help="join a Ray cluster: auto or ray://host:port "
                                                                     "(default: start a local Ray)")]
CpusOpt = Annotated[float, Opt("--cpus-per-trial", help="CPUs per trial on Ray (also its torch threads)")]
GpusOpt = Annotated[float, Opt("--gpus-per-trial", help="GPU share per trial on Ray, e.g. 0.25 = 4 trials per GPU")]
RunsOpt = Annotated[Optional[Path], Opt("--runs", help="run store folder (default $CONVLADDER_RUNS or ./runs)")]


def register(app: typer.Typer) -> None:
    """Add `sweep` and `lr-find`."""
    app.command("sweep", help="Run a hyperparameter sweep from a YAML file; rank trials by min-over-seeds accuracy.")(
        sweep_command)
    app.command("lr-find", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                help="LR range test: ramp the lr over mini-batches and suggest one (weights are left unchanged).")(
        lr_find_command)


def make_executor(name: str = "inprocess", ray_address: str | None = None, cpus_per_trial: float = 1.0,
                  gpus_per_trial: float = 0.0):
    """An executor from the CLI options; Ray options without --executor ray are an error, not ignored."""
    from convladder.executors.base import InProcessExecutor

    if name == "inprocess":
        if ray_address or gpus_per_trial:
            raise UserError("--ray-address/--gpus-per-trial need --executor ray")
        return InProcessExecutor()
    if name == "ray":
        from convladder.executors.ray_executor import RayExecutor

        return RayExecutor(address=ray_address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    raise UserError(f"unknown executor {name!r}: use inprocess or ray")


def sweep_command(
    file: Annotated[Path, typer.Argument(help="sweep YAML (format: docs/scaling.md)")],
    executor: ExecutorOpt = "inprocess",
    ray_address: RayAddressOpt = None,
    cpus_per_trial: CpusOpt = 1.0,
    gpus_per_trial: GpusOpt = 0.0,
    runs: RunsOpt = None,
    seeds: Annotated[Optional[int], Opt("--seeds", help="seeds per trial (overrides the file)")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="list the trials and their parameter counts; train nothing")] = False,
    json_out: Annotated[bool, Opt("--json", help="print the summary as JSON")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
) -> None:
    """Expand the search space, reject over-budget networks, train the rest, print the ranked table."""
    from convladder.executors.base import job_line
    from convladder.executors.sweep import (SweepResult, format_table, load_sweep, make_trials, run_sweep,
                                            sweep_summary, write_summary)
    from convladder.paths import runs_dir

    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be at least 1 (got {seeds})")
    spec = load_sweep(file, seeds)
    root = Path(runs).expanduser() if runs else runs_dir()
    if dry_run:
        summary = sweep_summary(SweepResult(spec, make_trials(spec), "dry-run", 0.0, str(root)))
        typer.echo(json.dumps(summary, indent=1) if json_out else format_table(summary))
        return
    ex = make_executor(executor, ray_address, cpus_per_trial, gpus_per_trial)
    t0 = time.perf_counter()

    def progress(res: dict[str, Any]) -> None:
        if quiet or json_out:
            return
        typer.echo(f"[{time.perf_counter() - t0:6.1f}s] {job_line(res)}")

    try:
        result = run_sweep(spec, root, ex, on_done=progress)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished trials are in the store; rerunning the sweep skips them",
                    err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130)
    summary = sweep_summary(result)
    path = write_summary(summary, root)
    if json_out:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(format_table(summary))
    c = summary["counts"]
    typer.echo(f"\n{c['completed']} completed, " + (f"{c['stopped']} stopped early, " if c["stopped"] else "")
               + f"{c['failed']} failed, {c['rejected']} over budget; "
               f"{summary['wall_time_s']:.1f}s on {summary['executor']}; summary: {path}\n"
               f"report with the isolation plot: convladder report sweep:{summary['name']} --runs {root}")


def lr_find_command(
    ctx: typer.Context,
    model: Annotated[Optional[str], Opt("--model", "-m", help="registered name, spec file, spec text, or "
                                        "path/to/file.py:ClassName (imports that file)")] = None,
    model_args: Annotated[Optional[str], Opt("--model-args", help="JSON constructor arguments of your class")] = None,
    dataset: Annotated[Optional[str], Opt(help="mnist (default), fashion-mnist or synthetic")] = None,
    subset: Annotated[Optional[int], Opt(help="use only the first N training images")] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    optimizer: Annotated[Optional[str], Opt(help="sgd, adam, adamw, adadelta")] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda, mps")] = None,
    min_lr: Annotated[float, Opt("--min", help="first lr of the ramp")] = 1e-5,
    max_lr: Annotated[float, Opt("--max", help="last lr of the ramp")] = 1.0,
    steps: Annotated[int, Opt("--steps", help="mini-batches (one lr each)")] = 100,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML file of config keys")] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="write OUT.json and OUT.csv "
                                                              "(default <runs>/lrfind/<time>)")] = None,
    runs: RunsOpt = None,
    json_out: Annotated[bool, Opt("--json", help="print the result as JSON")] = False,
) -> None:
    """Ramp the lr from --min to --max over --steps mini-batches; print the curve and the suggestions."""
    from convladder.executors.lrfind import format_result, suggest_lr, write_result
    from convladder.paths import runs_dir
    from convladder.train.config import build_config

    extra = list(ctx.args)
    bad = [a for a in extra if "=" not in a]
    if bad:
        raise UserError(f"unexpected argument(s) {' '.join(bad)}: options start with --, overrides look like key=value")
    options = {"model": model, "model_args": model_args, "dataset": dataset, "subset": subset, "batch_size": batch_size,
               "optimizer": optimizer, "seed": seed, "device": device}
    cfg = build_config(config, options, extra)
    res = suggest_lr(cfg, min_lr=min_lr, max_lr=max_lr, steps=steps)
    target = out or (Path(runs).expanduser() if runs else runs_dir()) / "lrfind" / time.strftime("%Y%m%d-%H%M%S")
    json_path, csv_path = write_result(res, target)
    if json_out:
        typer.echo(json.dumps({**res.to_dict(), "files": [str(json_path), str(csv_path)]}))
        return
    typer.echo(format_result(res))
    typer.echo(f"curve: {json_path} and {csv_path}")
