"""CLI: `convladder ladder check|run|report|list` and `convladder diagnose RUN`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convladder.cliopts import (CpusOpt, DataAliasOpt, ExecutorOpt, GpusOpt, MaxRetriesOpt, RayAddressOpt,
                                RayVerboseOpt, RunsOpt, dataset_alias, with_config_options)
from convladder.train.config import LADDER_RUN

ladder_app = typer.Typer(help="Ladders: a base network and ordered one-change steps, run and compared.",
                         no_args_is_help=True)

LADDER_ARG = typer.Argument(..., help="built-in ladder name (see `ladder list`) or a ladder YAML file")


def _store(runs: Optional[str]):
    from convladder.runs.store import RunStore

    return RunStore(runs)


@ladder_app.command("list")
def list_cmd() -> None:
    """List the built-in ladders."""
    from convladder.ladder.ladder import builtin_names, load_ladder

    for name in builtin_names():
        lad = load_ladder(name)
        typer.echo(f"{name:<12} {len(lad.steps):>2} steps  {lad.title}")


@ladder_app.command("check")
def check_cmd(ladder: str = LADDER_ARG) -> None:
    """Print each step's diff against the previous one; fail on a step that changes more than one thing
    without `because:` (or nothing)."""
    from convladder.ladder.diff import check_ladder
    from convladder.ladder.ladder import load_ladder
    from convladder.spec.size import estimate_size

    lad = load_ladder(ladder)
    diffs = check_ladder(lad)
    for step, d in zip(lad.steps, diffs):
        # a spec's count from the spec alone (no torch; tests/test_startup.py checks it against the traced
        # table's); an own class is imported and traced
        params = estimate_size(step.spec).params if step.spec is not None else step.table().total_params
        things = "; ".join(d.things) or ("the starting point" if step.index == 1 else "-")
        typer.echo(f"{step.index}. {step.name} ({params:,} params): {step.change}")
        typer.echo(f"   thing(s): {things}" + (f"  because: {step.because}" if len(d.things) > 1 else ""))
        if step.index > 1:
            for line in d.lines():
                typer.echo(f"  {line}")
    typer.echo(f"ok: {len(lad.steps)} steps, each changes one thing or says why")




def run_cmd(
    ladder: str = LADDER_ARG,
    steps: Annotated[Optional[str], typer.Option("--steps", help="e.g. 3-6 or 1,3,5 (default: all)")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="seeds per step")] = 1,
    runs: RunsOpt = None,
    executor: ExecutorOpt = "inprocess",
    ray_address: RayAddressOpt = None,
    cpus_per_trial: CpusOpt = 1.0,
    gpus_per_trial: GpusOpt = 0.0,
    max_retries: MaxRetriesOpt = None,
    ray_verbose: RayVerboseOpt = False,
    data: DataAliasOpt = None,
    **options: Any,
) -> None:
    """Run every step x seed as an independent job; finished jobs are skipped (resumable). --epochs, --subset,
    --dataset and --device override every step's config."""
    from convladder.executors.base import make_executor
    from convladder.ladder.ladder import load_ladder
    from convladder.ladder.run import run_ladder

    lad = load_ladder(ladder)
    store = _store(runs)
    runner = make_executor(executor, ray_address, cpus_per_trial, gpus_per_trial, max_retries, ray_verbose)
    options["dataset"] = dataset_alias(options.get("dataset"), data)
    try:
        results = run_ladder(lad, store.root, steps=steps, seeds=seeds, executor=runner, **options)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the cut run is marked interrupted already
        from convladder import interrupts

        typer.secho(interrupts.resume_line(stop, "rerun the same `ladder run`: finished steps are skipped, "
                                                 "a cut step trains again"), err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(interrupts.exit_code(stop))
    failed = [r for r in results if r["status"] == "failed"]
    typer.echo(f"{len(results)} job(s): {sum(r['status'] == 'completed' for r in results)} trained, "
               f"{sum(r['status'] == 'skipped' for r in results)} skipped, {len(failed)} failed; "
               f"see `convladder ladder report {ladder} --runs {store.root}`")
    if failed and len(failed) == len(results):
        typer.secho(f"error: every job failed, e.g. {failed[0].get('label')}: {failed[0].get('error')}", err=True,
                    fg=typer.colors.RED)
    elif failed:
        typer.secho(f"warning: {len(failed)} of {len(results)} job(s) failed; rerun to retry only those", err=True,
                    fg=typer.colors.YELLOW)
    if failed:
        raise typer.Exit(1)


# the TrainConfig keys whose field says `ladder run` (epochs, subset, ...) override every step
ladder_app.command("run")(with_config_options(run_cmd, LADDER_RUN, defaults=False))


@ladder_app.command("report")
def report_cmd(
    ladder: str = typer.Argument("eip4-s2", help="built-in ladder name, ladder YAML file, or the name of a ladder "
                                 "whose runs are in the store (its file is found from them)"),
    runs: RunsOpt = None,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    markdown: bool = typer.Option(False, "--markdown", help="write the hand-in: README.md with a section per step "
                                  "and the curves as PNG files beside it (renders on GitHub)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="with --markdown: the folder to write "
                                          "(default handin-<ladder>), or the .md file"),
) -> None:
    """One table of the ladder's steps with the handout's figures beside ours, and a reading per step."""
    from convladder.ladder.compare import format_table, ladder_summary
    from convladder.ladder.ladder import load_ladder_of

    from convladder.errors import UserError

    if markdown and as_json:
        raise UserError("--markdown and --json ask for two outputs — give one of them")
    if output is not None and not markdown:
        raise UserError(f"-o {output}: ladder report writes a file only with --markdown — add --markdown, or use "
                        f"`convladder report {ladder} -o page.html` for the HTML page")
    store = _store(runs)
    lad = load_ladder_of(ladder, store.list_runs(tag=f"ladder:{ladder}"))
    if markdown:
        from convladder.report.markdown import handin_path, write_ladder_handin

        readme = handin_path(output, lad.name, [store.root])  # checked before the work
        out = write_ladder_handin(lad, store, readme)
        typer.echo(f"wrote {out} and its figures")
        return
    rows = ladder_summary(lad, store)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        typer.echo(format_table(rows, lad))


def diagnose_cmd(
    run: str = typer.Argument(..., help="run id, unique prefix, or 'latest'"),
    runs: RunsOpt = None,
    images: int = typer.Option(512, "--images", help="test images for the dead-ReLU count"),
    which: str = typer.Option("final", "--which", help="final or best weights"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """BN health, dead ReLUs and parameter share of a trained network."""
    from convladder.ladder.diagnostics import diagnose_run, format_diagnostics

    d = diagnose_run(run, _store(runs), images, which)
    typer.echo(json.dumps(d, indent=2) if as_json else format_diagnostics(d))


def register(app: typer.Typer) -> None:
    """Add `ladder ...` and `diagnose` to the app."""
    app.add_typer(ladder_app, name="ladder")
    app.command("diagnose")(diagnose_cmd)
