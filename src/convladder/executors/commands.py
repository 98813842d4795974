"""CLI: `convladder sweep FILE`, `convladder frontier [FILE]` and `convladder lr-find`.

The executor and config options are declared once in cliopts.py; `make_executor` is executors/base.py's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convladder.errors import UserError
from convladder.cliopts import (CpusOpt, ExecutorOpt, GpusOpt, MaxRetriesOpt, RayAddressOpt, RayVerboseOpt,
                                RunsOpt, reject_stray_args, with_config_options)
from convladder.train.config import LR_FIND

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add `sweep` and `lr-find`."""
    app.command("sweep", help="Run a hyperparameter sweep from a YAML file; rank trials by min-over-seeds accuracy. "
                              "Exit 0 when some trials failed (their error is listed; the others are ranked and kept, "
                              "and a rerun trains only what is missing), 1 when none trained; --strict: 1 when any "
                              "failed.")(
        sweep_command)
    app.command("lr-find", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                help="LR range test: ramp the lr over mini-batches and suggest one (weights are left unchanged); "
                     "trailing key=value args override the config.")(
        with_config_options(lr_find_command, LR_FIND))  # the keys whose field says lr-find
    app.command("frontier", help="The frontier: the best network under each parameter budget, chosen on the "
                                 "validation split, re-trained over seeds (docs/frontier.md).")(frontier_command)


def sweep_command(
    file: Annotated[Path, typer.Argument(help="sweep YAML (format: docs/scaling.md)")],
    executor: ExecutorOpt = "inprocess",
    ray_address: RayAddressOpt = None,
    cpus_per_trial: CpusOpt = 1.0,
    gpus_per_trial: GpusOpt = 0.0,
    max_retries: MaxRetriesOpt = None,
    ray_verbose: RayVerboseOpt = False,
    runs: RunsOpt = None,
    seeds: Annotated[Optional[int], Opt("--seeds", help="seeds per trial (overrides the file)")] = None,
    strict: Annotated[bool, Opt("--strict", help="exit 1 when any trial failed (for scripts and CI). Without it a "
                                "sweep in which some trials failed exits 0 with a warning: the others are trained, "
                                "ranked and kept, and a rerun trains only what is missing")] = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="list the trials and their parameter counts; train nothing")] = False,
    json_out: Annotated[bool, Opt("--json", help="print the summary as JSON")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
) -> None:
    """Expand the search space, reject over-budget networks, train the rest, print the ranked table."""
    from convladder.executors.base import job_line, make_executor
    from convladder.executors.sweep import (SweepResult, format_table, make_trials, run_sweep, sweep_summary,
                                            write_summary)
    from convladder.executors.sweepspec import load_sweep
    from convladder.paths import runs_dir

    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be at least 1 (got {seeds})")
    spec = load_sweep(file, seeds)
    root = Path(runs).expanduser() if runs else runs_dir()
    if dry_run:
        summary = sweep_summary(SweepResult(spec, make_trials(spec), "dry-run", 0.0, str(root)))
        typer.echo(json.dumps(summary, indent=1) if json_out else format_table(summary))
        return
    ex = make_executor(executor, ray_address, cpus_per_trial, gpus_per_trial, max_retries, ray_verbose)
    t0 = time.perf_counter()

    def progress(res: dict[str, Any]) -> None:
        if quiet or json_out:
            return
        typer.echo(f"[{time.perf_counter() - t0:6.1f}s] {job_line(res)}")

    try:
        result = run_sweep(spec, root, ex, on_done=progress)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM
        from convladder import interrupts

        typer.secho(interrupts.resume_line(stop, "finished trials are in the store; rerunning the sweep skips them"),
                    err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(interrupts.exit_code(stop))
    summary = sweep_summary(result)
    path = write_summary(summary, root)
    c = summary["counts"]
    if json_out:
        typer.echo(json.dumps(summary, indent=1))
    else:
        typer.echo(format_table(summary))
        typer.echo(f"\n{c['completed']} completed, " + (f"{c['stopped']} stopped early, " if c["stopped"] else "")
                   + f"{c['failed']} failed, {c['rejected']} over budget; "
                   f"{summary['wall_time_s']:.1f}s on {summary['executor']}; summary: {path}\n"
                   f"report with the isolation plot: convladder report sweep:{summary['name']} --runs {root}")
    for line in _ray_notes(summary, ex):
        typer.secho(line, err=True, fg=typer.colors.YELLOW)
    _exit_on_failures(c, strict)


def _ray_notes(summary: dict[str, Any], executor: Any) -> list[str]:
    """Retried jobs (which, and why), temporary folders a lost node kept, where Ray's own log lines are."""
    lines = [f"retried: {r}" for row in summary["trials"] for r in row.get("retried") or []]
    lines += [f"left on a lost node (remove by hand): {p}" for p in getattr(executor, "left_elsewhere", [])]
    log = getattr(executor, "log", None)
    if lines and log is not None and log.path:
        lines.append(f"Ray's own log lines: {log.path}")
    return lines


def _exit_on_failures(counts: dict[str, int], strict: bool = False) -> None:
    """Exit 1 when no trial trained (every one failed or was over budget), or with `strict` when any failed;
    else say on stderr that some failed (partial results are kept: the others are ranked and in the store)."""
    tried = sum(counts.values())
    if counts["failed"] and not counts["completed"] and not counts["stopped"]:
        typer.secho(f"error: every trial failed or was rejected ({counts['failed']} failed, {counts['rejected']} over "
                    "budget): see the errors above", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    if counts["failed"] and strict:
        typer.secho(f"error: {counts['failed']} of {tried} trial(s) failed (--strict); the others are in the store "
                    "and a rerun trains only what is missing", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    if counts["failed"]:
        typer.secho(f"warning: {counts['failed']} of {tried} trial(s) failed; the ranking holds the others "
                    "(--strict makes this exit 1)", err=True, fg=typer.colors.YELLOW)


def lr_find_command(
    ctx: typer.Context,
    min_lr: Annotated[float, Opt("--min", help="first lr of the ramp")] = 1e-5,
    max_lr: Annotated[float, Opt("--max", help="last lr of the ramp")] = 1.0,
    steps: Annotated[int, Opt("--steps", help="mini-batches (one lr each)")] = 100,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML file of config keys")] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="write OUT.json and OUT.csv "
                                                              "(default <runs>/lrfind/<time>)")] = None,
    runs: RunsOpt = None,
    json_out: Annotated[bool, Opt("--json", help="print the result as JSON")] = False,
    **options: Any,
) -> None:
    """Ramp the lr from --min to --max over --steps mini-batches; print the curve and the suggestions."""
    from convladder.paths import runs_dir
    from convladder.train.config import build_config
    from convladder.train.lrfind import format_result, suggest_lr, write_result

    cfg = build_config(config, options, reject_stray_args(ctx))
    res = suggest_lr(cfg, min_lr=min_lr, max_lr=max_lr, steps=steps)
    target = out or (Path(runs).expanduser() if runs else runs_dir()) / "lrfind" / time.strftime("%Y%m%d-%H%M%S")
    json_path, csv_path = write_result(res, target)
    if json_out:
        typer.echo(json.dumps({**res.to_dict(), "files": [str(json_path), str(csv_path)]}))
        return
    typer.echo(format_result(res))
    typer.echo(f"curve: {json_path} and {csv_path}")


def frontier_command(
    file: Annotated[Optional[Path], typer.Argument(help="frontier YAML (format: docs/frontier.md); "
                                                        "without it, the default space")] = None,
    budgets: Annotated[Optional[str], Opt("--budgets", help="parameter budgets, e.g. 2k,5k,8k (overrides the file)")] = None,
    seeds: Annotated[Optional[int], Opt("--seeds", help="re-train seeds of each budget's winner (default 5)")] = None,
    trials: Annotated[Optional[int], Opt("--trials", help="architectures of the space searched per budget "
                                         "(0: only the file's candidates)")] = None,
    epochs: Annotated[Optional[str], Opt("--epochs", help="epoch values searched, e.g. 10,15")] = None,
    dataset: Annotated[Optional[str], Opt("--dataset", help="data set (overrides base: dataset)")] = None,
    executor: ExecutorOpt = "inprocess",
    ray_address: RayAddressOpt = None,
    cpus_per_trial: CpusOpt = 1.0,
    gpus_per_trial: GpusOpt = 0.0,
    max_retries: MaxRetriesOpt = None,
    ray_verbose: RayVerboseOpt = False,
    runs: RunsOpt = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="list each budget's candidate networks; train nothing")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
) -> None:
    """Search each budget, select on validation, re-train the winners over seeds, print the frontier table."""
    from convladder.executors.base import job_line, make_executor
    from convladder.executors.frontier import format_table, run_frontier, write_summary
    from convladder.executors.frontierspec import load_frontier
    from convladder.paths import runs_dir

    for flag, value, least in (("--seeds", seeds, 1), ("--trials", trials, 0)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be at least {least} (got {value})")
    spec = load_frontier(file, budgets=budgets, seeds=seeds, trials=trials, epochs=epochs, dataset=dataset)
    root = Path(runs).expanduser() if runs else runs_dir()
    if dry_run:
        from convladder.api.tasks import frontier_plan  # one wording for the CLI and Python

        typer.echo(frontier_plan(spec))
        return
    ex = make_executor(executor, ray_address, cpus_per_trial, gpus_per_trial, max_retries, ray_verbose)
    t0 = time.perf_counter()
    path: list[Path] = []

    def progress(res: dict[str, Any]) -> None:
        if not quiet:
            typer.echo(f"[{time.perf_counter() - t0:6.1f}s] {job_line(res)}")

    def save(summary: dict[str, Any]) -> None:  # after each budget: an interrupted frontier keeps what it measured
        path[:] = [write_summary(summary, root, path[0] if path else None)]

    try:
        summary = run_frontier(spec, root, ex, on_done=progress, on_budget=save)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM
        from convladder import interrupts

        typer.secho(interrupts.resume_line(stop, "finished runs are in the store; rerunning the frontier skips them"),
                    err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(interrupts.exit_code(stop))
    save(summary)
    typer.echo(format_table(summary))
    typer.echo(f"\n{summary['wall_time_s']:.1f}s on {summary['executor']}; summary: {path[0]}\n"
               f"report with the frontier figure: convladder report frontier:{summary['name']} --runs {root}")
    if not any(b["final"] and b["final"]["test_acc"] for b in summary["budgets"]):
        typer.secho("error: no budget has a measured winner: see the notes above", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
