"""CLI: `convladder train` and `convladder runs list|show|compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from convladder.errors import UserError
from convladder.train.config import TrainConfig, build_config

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add `train` and the `runs` sub-app."""
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                help="Train a network (name, spec file, spec text or file.py:ClassName); trailing key=value args override the config.")(
        train_command)
    runs = typer.Typer(help="List, show and compare stored runs.", no_args_is_help=True)
    runs.command("list")(runs_list)
    runs.command("show")(runs_show)
    runs.command("compare")(runs_compare)
    app.add_typer(runs, name="runs")


RunsOpt = Annotated[Optional[Path], Opt("--runs", help="run store folder (default $CONVLADDER_RUNS or ./runs)")]


def train_command(
    ctx: typer.Context,
    model: Annotated[Optional[str], Opt("--model", "-m", help="registered name, spec file, spec text, or "
                                        "path/to/file.py:ClassName (your nn.Module; importing it runs that file)")] = None,
    model_args: Annotated[Optional[str], Opt("--model-args", help="""JSON object of your class's constructor """
                                             """arguments, e.g. '{"width": 16}'""")] = None,
    dataset: Annotated[Optional[str], Opt(help="mnist (default) or synthetic")] = None,
    data_root: Annotated[Optional[str], Opt(help="folder with the data set's files")] = None,
    epochs: Annotated[Optional[int], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    optimizer: Annotated[Optional[str], Opt(help="sgd, adam, adamw, adadelta")] = None,
    lr: Annotated[Optional[str], Opt(help="learning rate (max lr for onecycle), or 'auto' for the LR range test's suggestion")] = None,
    momentum: Annotated[Optional[float], Opt()] = None,
    nesterov: Annotated[Optional[bool], Opt("--nesterov/--no-nesterov")] = None,
    weight_decay: Annotated[Optional[float], Opt()] = None,
    schedule: Annotated[Optional[str], Opt(help="none, step, onecycle, cosine")] = None,
    label_smoothing: Annotated[Optional[float], Opt()] = None,
    augment: Annotated[Optional[bool], Opt("--augment/--no-augment", help="rotation/translation/scale on the device")] = None,
    erase: Annotated[Optional[float], Opt(help="random-erasing probability")] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    seeds: Annotated[Optional[int], Opt(help="train this many seeds and report min/median/max")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda, mps")] = None,
    threads: Annotated[Optional[int], Opt(help="torch CPU threads (0 = the cores other work leaves free, at least 1)")] = None,
    compile: Annotated[Optional[bool], Opt("--compile/--no-compile", help="torch.compile the model")] = None,
    eval_every: Annotated[Optional[int], Opt("--eval-every", "--val-every", help="evaluate every N epochs")] = None,
    val_size: Annotated[Optional[int], Opt(help="validation images held out of the training set (0 = none)")] = None,
    select_on: Annotated[Optional[str], Opt(help="val (default) or test: which split picks the best epoch")] = None,
    subset: Annotated[Optional[int], Opt(help="use only the first N training images")] = None,
    target: Annotated[Optional[float], Opt(help="target test accuracy %% for the verdict")] = None,
    name: Annotated[Optional[str], Opt(help="a name for the run")] = None,
    tag: Annotated[Optional[list[str]], Opt("--tag", help="tag the run (repeatable)")] = None,
    runs: RunsOpt = None,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML file of config keys")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="override key=value (repeatable)")] = None,
    print_config: Annotated[bool, Opt("--print-config", help="print the resolved config as YAML and exit")] = False,
    resume: Annotated[Optional[str], Opt("--resume", help="continue an interrupted or early-stopped run (id or prefix)")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
    json_lines: Annotated[bool, Opt("--json", help="JSON lines per epoch and the final result")] = False,
    executor: Annotated[str, Opt("--executor", help="where --seeds runs: inprocess (default) or ray")] = "inprocess",
    ray_address: Annotated[Optional[str], Opt("--ray-address", help="join a Ray cluster (auto, host:port, ray://...)")] = None,
    cpus_per_trial: Annotated[float, Opt("--cpus-per-trial", help="CPUs per seed on Ray")] = 1.0,
    gpus_per_trial: Annotated[float, Opt("--gpus-per-trial", help="GPU share per seed on Ray, e.g. 0.25")] = 0.0,
) -> None:
    """Train; print per-epoch metrics and an honest result (final, best-epoch, gap, potential, verdict)."""
    from convladder.train.loop import resume as resume_run
    from convladder.train.loop import train, train_seeds
    from convladder.train.progress import make_progress
    from convladder.train.store import RunStore

    store = RunStore(runs)
    progress = make_progress(quiet, json_lines)
    try:
        if resume:
            resume_run(resume, store, progress)
            return
        options: dict[str, Any] = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
        options["tags"] = tag or None
        lr_auto = isinstance(lr, str) and lr.strip().lower() == "auto"
        if lr_auto:
            options["lr"] = None
        extra = list(ctx.args)
        bad = [a for a in extra if "=" not in a]
        if bad:
            raise UserError(f"unexpected argument(s) {' '.join(bad)}: options start with --, overrides look like key=value")
        cfg = build_config(config, options, (set_ or []) + extra)
        if lr_auto:
            cfg = _with_found_lr(cfg, quiet or json_lines)
        if print_config:
            typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
            return
        if executor != "inprocess" or ray_address or gpus_per_trial:
            _train_seeds_on_executor(cfg, store, executor, ray_address, cpus_per_trial, gpus_per_trial,
                                     quiet, json_lines)
            return
        if cfg.seeds == 1:
            result = train(cfg, store, progress)
            if not (quiet or json_lines) and result.run_id:
                typer.echo(f"run folder: {store.root / result.run_id}  (convladder runs show {result.run_id}; "
                           f"convladder report {result.run_id})")
            return
        _, stats = train_seeds(cfg, store, progress)
        _print_seed_stats(stats, quiet, json_lines)
    except KeyboardInterrupt:
        typer.secho("interrupted: the last finished epoch is saved; continue with `convladder train --resume <run id>` "
                    "(see `convladder runs list`)", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130)


def _print_seed_stats(stats: dict[str, Any], quiet: bool, json_lines: bool) -> None:
    if json_lines:
        typer.echo(json.dumps({"event": "seeds", **stats}))
    elif not quiet:
        for key in ("final_test_acc", "best_epoch_test_acc"):
            s = stats[key]
            if s:
                typer.echo(f"{key.replace('_', ' ')} over seeds {stats['seeds']}: "
                           f"min {s['min']:.2f}  median {s['median']:.2f}  max {s['max']:.2f}")
        typer.echo(f"all seeds >= {stats['target']}: {'yes' if stats['all_seeds_reach_target'] else 'no'}")


def _train_seeds_on_executor(cfg: TrainConfig, store, executor: str, ray_address: str | None, cpus: float,
                             gpus: float, quiet: bool, json_lines: bool) -> None:
    """Each seed is a job on the executor (e.g. Ray, side by side); the driver writes the store as they end."""
    from convladder.executors.base import job_line, make_job
    from convladder.executors.commands import make_executor
    from convladder.train.result import RunResult, seed_stats

    runner = make_executor(executor, ray_address, cpus, gpus)
    jobs = [make_job(cfg.replace(seed=cfg.seed + i, seeds=1).to_dict(), label=f"seed {cfg.seed + i}")
            for i in range(cfg.seeds)]

    def line(res: dict[str, Any]) -> None:
        if not (quiet or json_lines):
            typer.echo(job_line(res))

    results = runner.map(jobs, store.root, on_done=line)
    done = [RunResult.from_dict(store.read_result(r["run_id"])) for r in results
            if r["status"] in ("completed", "skipped") and r.get("run_id")]
    if done:
        _print_seed_stats(seed_stats(done), quiet, json_lines)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} seed(s) failed: {failed[0]['label']}: {failed[0]['error']}")


def _with_found_lr(cfg: TrainConfig, quiet: bool) -> TrainConfig:
    """Run the LR range test on the training set (weights are restored) and take its suggestion."""
    from convladder.executors.lrfind import suggest_lr

    found = suggest_lr(cfg)
    if found.suggested_lr is None:
        raise UserError(f"--lr auto: the LR range test found no suggestion ({found.suggestion}); give --lr explicitly")
    if not quiet:
        typer.echo(f"lr auto: the LR range test suggests {found.suggested_lr:.4g} ({found.suggestion})")
    return cfg.replace(lr=found.suggested_lr)


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" + ("%" if pct else "")
    return str(value)


def runs_list(
    runs: RunsOpt = None,
    status: Annotated[Optional[str], Opt(help="completed, running, interrupted, stopped, failed")] = None,
    model: Annotated[Optional[str], Opt()] = None,
    tag: Annotated[Optional[str], Opt()] = None,
    limit: Annotated[int, Opt(help="at most N runs (0 = all)")] = 50,
    json_out: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Runs in the store, newest first."""
    from dataclasses import asdict

    from convladder.train.store import RunStore

    filters = {k: v for k, v in {"status": status, "model": model}.items() if v}
    records = RunStore(runs).list_runs(limit=limit or None, tag=tag, **filters)
    if json_out:
        typer.echo(json.dumps([asdict(r) for r in records], indent=1))
        return
    if not records:
        typer.echo("no runs")
        return
    typer.echo(f"{'id':24} {'status':11} {'model':16} {'seed':>4} {'params':>8} {'ep':>3} {'final test':>10} "
               f"{'best val':>8} {'best ep':>7}")
    for r in records:
        model_name = (r.model or "-") if len(r.model or "") <= 16 else (r.model or "")[:13] + "..."
        typer.echo(f"{r.id:24} {r.status:11} {model_name:16} {_fmt(r.seed):>4} {_fmt(r.params):>8} {_fmt(r.epochs):>3} "
                   f"{_fmt(r.final_test_acc, True):>10} {_fmt(r.best_val_acc, True):>8} {_fmt(r.best_epoch):>7}")


def runs_show(run: Annotated[str, typer.Argument(help="run id, prefix, or 'latest'")], runs: RunsOpt = None,
              json_out: Annotated[bool, Opt("--json")] = False) -> None:
    """A run's config, environment, per-epoch metrics and result."""
    from convladder.train.store import RunStore

    store = RunStore(runs)
    record = store.get(run)
    config, metrics = store.read_config(record.id), store.read_metrics(record.id)
    try:
        result = store.read_result(record.id)
    except UserError:
        result = None
    if json_out:
        typer.echo(json.dumps({"id": record.id, "status": record.status, "config": config,
                               "env": store.read_env(record.id), "metrics": metrics, "result": result}, indent=1))
        return
    typer.echo(f"run {record.id} ({record.status})  {record.path}")
    typer.echo(f"model: {config.get('model_spec')}")
    from convladder.train.models import read_record, source_status

    own = read_record(store.root / record.id)
    if own is not None:
        rebuild = "the command line rebuilds it" if own.rebuild == "file" else "rebuilt in Python only"
        typer.echo(f"own class {own.cls}({json.dumps(own.args) if own.args is not None else 'arguments unknown'}) "
                   f"from {own.file or own.module}, output {own.output}, sha256 {str(own.sha256)[:12]}; "
                   f"source recorded in {'model_source.py' if own.sha256 else '(none)'}; {rebuild}")
        changed = source_status(store.root / record.id)
        if changed:
            typer.secho(f"warning: {changed}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"params {_fmt(record.params)}  dataset {config['dataset']}  seed {config['seed']}  "
               f"epochs {config['epochs']}  batch {config['batch_size']}  {config['optimizer']} lr {config['lr']} "
               f"{config['schedule']}  augment {config['augment']}")
    typer.echo(f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'train acc*':>10} {'val acc':>8} {'test acc':>8} {'time':>6}")
    for m in metrics:
        typer.echo(f"{m['epoch']:>5} {m['lr']:>9.4g} {m['train_loss']:>10.4f} {_fmt(m['train_acc']):>10} "
                   f"{_fmt(m.get('val_acc')):>8} {_fmt(m.get('test_acc')):>8} {m['epoch_time_s']:>5.1f}s")
    typer.echo("* train acc as seen while training (dropout/augmentation on)")
    if result:
        from convladder.train.result import RunResult

        typer.echo(RunResult.from_dict(result).summary())
        if result.get("message"):
            typer.echo(result["message"])


def runs_compare(run_ids: Annotated[list[str], typer.Argument(help="two or more run ids or prefixes")],
                 runs: RunsOpt = None) -> None:
    """Side by side: results and the config keys that differ."""
    from convladder.train.store import RunStore

    store = RunStore(runs)
    records = [store.get(r) for r in run_ids]
    configs = [store.read_config(r.id) for r in records]
    results = []
    for r in records:
        try:
            results.append(store.read_result(r.id))
        except UserError:
            results.append({})
    rows: list[tuple[str, list[str]]] = [
        ("status", [r.status for r in records]),
        ("params", [_fmt(r.params) for r in records]),
        ("final test", [_fmt((x.get("final") or {}).get("test_acc"), True) for x in results]),
        ("best-epoch test", [_fmt((x.get("best") or {}).get("test_acc"), True) + f" (ep {(x.get('best') or {}).get('epoch')},"
                             f" {(x.get('best') or {}).get('selected_by')})" for x in results]),
        ("gap", [_fmt(x.get("gap")) for x in results]),
        ("potential", [_fmt(x.get("potential")) for x in results]),
        ("verdict", [_fmt(x.get("verdict")) for x in results]),
        ("wall time s", [_fmt(x.get("wall_time_s")) for x in results]),
    ]
    keys = [k for k in configs[0] if k not in ("name",) and len({json.dumps(c.get(k)) for c in configs}) > 1]
    rows += [(k, [_fmt(c.get(k)) for c in configs]) for k in keys]
    width = max(len(r.id) for r in records) + 2
    typer.echo(f"{'':18}" + "".join(f"{r.id:<{width}}" for r in records))
    for label, values in rows:
        typer.echo(f"{label:18}" + "".join(f"{v[:width - 1]:<{width}}" for v in values))
