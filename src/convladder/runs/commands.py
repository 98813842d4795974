"""CLI: `convladder runs list|show|compare|reindex`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convladder.errors import UserError

Opt = typer.Option
RunsOpt = Annotated[Optional[Path], Opt("--runs", help="run store folder (default $CONVLADDER_RUNS or ./runs)")]
RUN_HELP = "run id, unique prefix, 'latest', or 'latest:<model, name or tag>'"


def register(app: typer.Typer) -> None:
    """Add the `runs` sub-app."""
    runs = typer.Typer(help="List, show and compare stored runs; rebuild the index.", no_args_is_help=True)
    runs.command("list")(runs_list)
    runs.command("show")(runs_show)
    runs.command("compare")(runs_compare)
    runs.command("reindex")(runs_reindex)
    app.add_typer(runs, name="runs")


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" + ("%" if pct else "")
    return str(value)


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


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

    from convladder.runs.store import RunStore

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


def _own_line(folder: Path) -> str | None:
    """What a run of a person's own class records (own_model.json), in one line; None for a spec run."""
    from convladder.runs.reader import OWN_JSON, read_json

    if not (folder / OWN_JSON).is_file():
        return None
    own = read_json(folder / OWN_JSON)
    rebuild = "the command line rebuilds it" if own.get("rebuild") == "file" else "rebuilt in Python only"
    args = json.dumps(own["args"]) if own.get("args") is not None else "arguments unknown"
    return (f"own class {own.get('cls')}({args}) from {own.get('file') or own.get('module')}, output "
            f"{own.get('output')}, sha256 {str(own.get('sha256'))[:12]}; source recorded in "
            f"{'model_source.py' if own.get('sha256') else '(none)'}; {rebuild}")


def runs_show(run: Annotated[str, typer.Argument(help=RUN_HELP)], runs: RunsOpt = None,
              json_out: Annotated[bool, Opt("--json")] = False) -> None:
    """A run's config, environment, per-epoch metrics and result."""
    from convladder.runs.reader import source_status
    from convladder.runs.store import RunStore

    store = RunStore(runs)
    record = store.get(run)
    config, metrics = store.read_config(record.id), store.read_metrics(record.id)
    try:
        result = store.read_result(record.id)
    except UserError:
        result = None
    if json_out:
        try:
            env = store.read_env(record.id)
        except UserError:
            env = None
        typer.echo(json.dumps({"id": record.id, "status": record.status, "config": config,
                               "env": env, "metrics": metrics, "result": result}, indent=1))
        return
    folder = store.root / record.id
    typer.echo(f"run {record.id} ({record.status})  {record.path}")
    typer.echo(f"model: {config.get('model_spec')}")
    own = _own_line(folder)
    if own:
        typer.echo(own)
        changed = source_status(folder)
        if changed:
            typer.secho(f"warning: {changed}", fg=typer.colors.YELLOW, err=True)
    c = {k: _fmt(config.get(k)) for k in ("dataset", "seed", "epochs", "batch_size", "optimizer", "lr", "schedule",
                                          "augment")}
    typer.echo(f"params {_fmt(record.params)}  dataset {c['dataset']}  seed {c['seed']}  epochs {c['epochs']}  "
               f"batch {c['batch_size']}  {c['optimizer']} lr {c['lr']} {c['schedule']}  augment {c['augment']}")
    typer.echo(f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'train acc*':>10} {'val acc':>8} {'test acc':>8} {'time':>6}")
    for m in metrics:
        typer.echo(f"{m['epoch']:>5} {_num(m.get('lr'), '>9.4g')} {_num(m.get('train_loss'), '>10.4f')} "
                   f"{_fmt(m.get('train_acc')):>10} {_fmt(m.get('val_acc')):>8} {_fmt(m.get('test_acc')):>8} "
                   f"{_num(m.get('epoch_time_s'), '>5.1f')}s")
    typer.echo("* train acc as seen while training (dropout/augmentation on)")
    if result:
        from convladder.train.result import RunResult  # the one place the result line is worded (CLI glue only)

        try:
            typer.echo(RunResult.from_dict(result).summary())
        except (TypeError, KeyError, ValueError, AttributeError):
            typer.echo(f"result.json of run {record.id} has an unexpected shape; status {result.get('status')}")
        if result.get("message"):
            typer.echo(result["message"])


def runs_compare(run_ids: Annotated[list[str], typer.Argument(help="two or more run ids or prefixes")],
                 runs: RunsOpt = None) -> None:
    """Side by side: results and the config keys that differ."""
    from convladder.runs.store import RunStore

    store = RunStore(runs)
    records = [store.get(r) for r in run_ids]
    configs = [store.read_config(r.id) for r in records]
    results = []
    for r in records:
        try:
            results.append(store.read_result(r.id))
        except UserError:
            results.append({})

    def part(x: dict[str, Any], key: str) -> dict[str, Any]:
        return x.get(key) if isinstance(x.get(key), dict) else {}

    rows: list[tuple[str, list[str]]] = [
        ("status", [r.status for r in records]),
        ("params", [_fmt(r.params) for r in records]),
        ("final test", [_fmt(part(x, "final").get("test_acc"), True) for x in results]),
        ("best-epoch test", [_fmt(part(x, "best").get("test_acc"), True) + f" (ep {part(x, 'best').get('epoch')},"
                             f" {part(x, 'best').get('selected_by')})" for x in results]),
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


def runs_reindex(runs: RunsOpt = None) -> None:
    """Rebuild the index (index.sqlite) from the run folders — after it was damaged, deleted or copied."""
    from convladder.runs.store import RunStore

    store = RunStore(runs)
    if not store.root.is_dir():
        raise UserError(f"no run store at {store.root}; give --runs the folder that holds the runs")
    n = store.reindex()
    typer.echo(f"indexed {n} run(s) in {store.db_path}")
