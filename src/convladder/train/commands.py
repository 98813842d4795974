"""CLI: `convladder train`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# commands.py modules are the CLI layer (docs/ARCHITECTURE.md): the shared options are declared once, in cliopts
from convladder.cliopts import (CpusOpt, DataAliasOpt, ExecutorOpt, GpusOpt, MaxRetriesOpt, RayAddressOpt,
                                RayVerboseOpt, RunsOpt, dataset_alias, reject_stray_args, with_config_options)
from convladder.errors import UserError
from convladder.executors.base import Executor, make_executor
from convladder.train.config import TrainConfig, build_config, resolve_words

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add `train` (the `runs` sub-app is convladder.runs.commands)."""
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                help="Train a network (name, spec file, spec text or file.py:ClassName); trailing key=value args "
                     "override the config (any TrainConfig key, e.g. gamma=0.5).")(
        with_config_options(train_command))


def train_command(
    ctx: typer.Context,
    tag: Annotated[Optional[list[str]], Opt("--tag", help="tag the run (repeatable)", rich_help_panel="Run")] = None,
    runs: RunsOpt = None,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML file of config keys")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="override key=value (repeatable)")] = None,
    print_config: Annotated[bool, Opt("--print-config", help="print the resolved config as YAML and exit")] = False,
    resume: Annotated[Optional[str], Opt("--resume", help="continue an interrupted or early-stopped run (id or prefix)")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
    json_lines: Annotated[bool, Opt("--json", help="JSON lines per epoch and the final result")] = False,
    executor: ExecutorOpt = "inprocess",
    ray_address: RayAddressOpt = None,
    cpus_per_trial: CpusOpt = 1.0,
    gpus_per_trial: GpusOpt = 0.0,
    max_retries: MaxRetriesOpt = None,
    ray_verbose: RayVerboseOpt = False,
    data: DataAliasOpt = None,
    tensorboard: Annotated[Optional[Path], Opt("--tensorboard", help="also write the run to TensorBoard under DIR",
                                               rich_help_panel="Run")] = None,
    mlflow: Annotated[Optional[str], Opt("--mlflow", help="also log the run to this MLflow tracking URI",
                                         rich_help_panel="Run")] = None,
    **options: Any,
) -> None:
    """Train; print per-epoch metrics and an honest result (final, best-epoch, gap, potential, verdict)."""
    from convladder.train.loop import resume as resume_run
    from convladder.train.loop import train, train_seeds
    from convladder.train.progress import make_progress
    from convladder.runs.store import RunStore

    store = RunStore(runs)
    progress = make_progress(quiet, json_lines)
    exported = functools.partial(_export, store, tensorboard, mlflow, quiet or json_lines)
    if tensorboard or mlflow:
        from convladder.report.exporters import require

        require(tensorboard, mlflow)  # a missing extra is said before training, not after it
    try:
        if resume:
            exported([resume_run(resume, store, progress).run_id])
            return
        options["dataset"] = dataset_alias(options.get("dataset"), data)
        options["tags"] = tag or None
        extra = reject_stray_args(ctx)
        cfg = build_config(config, options, (set_ or []) + extra)
        # lr: auto (option, --set or config file) found here, once, so --print-config shows the number
        cfg = resolve_words(cfg, None if quiet or json_lines else typer.echo)
        from convladder.train.distill import resolve as resolve_teacher

        cfg = resolve_teacher(cfg, store)  # teacher: the full run id, which job keys and config.json hold
        if print_config:
            import yaml

            typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
            return
        if executor != "inprocess" or ray_address or gpus_per_trial or max_retries is not None or ray_verbose:
            _train_seeds_on_executor(cfg, store, make_executor(executor, ray_address, cpus_per_trial, gpus_per_trial,
                                                               max_retries, ray_verbose), quiet, json_lines, exported)
            return
        if cfg.seeds == 1:
            result = train(cfg, store, progress)
            if not (quiet or json_lines) and result.run_id:
                typer.echo(f"run folder: {store.root / result.run_id}  (convladder runs show {result.run_id}; "
                           f"convladder report {result.run_id})")
            exported([result.run_id])
            return
        results, stats = train_seeds(cfg, store, progress)
        _print_seed_stats(stats, quiet, json_lines, _picked_by(results))
        exported([r.run_id for r in results])
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the runs it cut are marked interrupted already
        from convladder import interrupts

        typer.secho(interrupts.resume_line(stop), err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(interrupts.exit_code(stop))


def _export(store: Any, tensorboard: Path | None, mlflow: str | None, quiet: bool, run_ids: list[str | None]) -> None:
    """--tensorboard/--mlflow: the finished runs, read back from the store (report/exporters.py)."""
    if not (tensorboard or mlflow) or not any(run_ids):
        return
    from convladder.report.exporters import export_runs
    from convladder.report.rundata import load_run

    for line in export_runs([load_run(store.root / rid) for rid in run_ids if rid], tensorboard, mlflow):
        if not quiet:
            typer.echo(line)


def _picked_by(results: Iterable[Any]) -> str:
    """How the seeds' best epochs were picked, in words: on val, on the TEST set, or = the final epoch."""
    picks = sorted({str(r.best.get("selected_by") or "?") for r in results})
    words = {"val": "best epoch picked on val",
             "test": "best epoch picked on the TEST set (select_on test): optimistic, not a held-out estimate"}
    return "; ".join(words.get(p, f"best epoch = {p}") for p in picks)


def _print_seed_stats(stats: dict[str, Any], quiet: bool, json_lines: bool, picked_by: str) -> None:
    """min/median/max over seeds, each line saying what it is: the final epoch's test accuracy, or the test
    accuracy of the best epoch and which split picked that epoch (`picked_by`, from `_picked_by`)."""
    if json_lines:
        typer.echo(json.dumps({"event": "seeds", **stats, "best_epoch_picked_by": picked_by}))
    elif not quiet:
        labels = {"final_test_acc": ("final test acc (last epoch)", ""),
                  "best_epoch_test_acc": ("best-epoch test acc", f"  — {picked_by}")}
        for key, (label, note) in labels.items():
            s = stats[key]
            if s:
                typer.echo(f"{label} over seeds {stats['seeds']}: "
                           f"min {s['min']:.2f}  median {s['median']:.2f}  max {s['max']:.2f}{note}")
        reach, left = stats["all_seeds_reach_target"], len(stats.get("left_out") or [])
        answer = "no" if reach is False else "yes" if reach else \
            f"unknown (yes for the {len(stats['seeds'])} read; {left} left out, see the note above)"
        typer.echo(f"every seed's final test acc >= {stats['target']:g}: {answer}")
        from convladder.train.result import MEDIAN_RULE

        typer.echo(f"({MEDIAN_RULE})")


def _readable_results(store: Any, results: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
    """The RunResults of finished jobs, each result.json read tolerantly (as `runs list` reads it), and one note
    per run whose result.json is missing, damaged or not a result: those are left out, never the whole summary."""
    from convladder.runs.reader import read_result
    from convladder.train.result import RunResult

    done, notes = [], []
    for res in results:
        found: list[str] = []
        data = read_result(store.root / store.get(res["run_id"]).id, found)
        run = None
        if data:
            try:
                run = RunResult.from_dict(data)
            except (TypeError, ValueError):
                found.append("result.json lacks the fields of a result")
        elif not found:
            found.append("result.json is an empty object")
        if run is not None and not found:
            done.append(run)
        elif found:  # a result read with a note (e.g. an accuracy out of range) is left out too: it is not whole
            notes.append(f"run {res['run_id']} ({res.get('label')}): {'; '.join(found)}")
    return done, notes


def _train_seeds_on_executor(cfg: TrainConfig, store, runner: Executor, quiet: bool, json_lines: bool,
                             exported: Callable[[list[str | None]], None] = lambda ids: None) -> None:
    """Each seed is a job on the executor (e.g. Ray, side by side); the driver writes the store as they end."""
    from convladder.executors.base import job_line, make_job
    from convladder.train.result import seed_stats

    jobs = [make_job(cfg.replace(seed=cfg.seed + i, seeds=1).to_dict(), label=f"seed {cfg.seed + i}")
            for i in range(cfg.seeds)]

    def line(res: dict[str, Any]) -> None:
        if not (quiet or json_lines):
            typer.echo(job_line(res))

    results = runner.map(jobs, store.root, on_done=line)
    done, left_out = _readable_results(store, [r for r in results
                                               if r["status"] in ("completed", "skipped") and r.get("run_id")])
    for note in left_out:  # said even when quiet: the figures below leave these seeds out
        typer.echo(json.dumps({"event": "note", "note": note}) if json_lines
                   else f"note: {note} — left out of the figures below")
    if done:
        stats = seed_stats(done)
        if left_out:
            stats["left_out"] = left_out
            if stats["all_seeds_reach_target"]:
                stats["all_seeds_reach_target"] = None  # unknown: an unread seed may miss the target
        _print_seed_stats(stats, quiet, json_lines, _picked_by(done))
        exported([r.run_id for r in done])
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} seed(s) failed: {failed[0]['label']}: {failed[0]['error']}")
