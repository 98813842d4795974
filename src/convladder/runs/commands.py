"""CLI: `convladder runs list|show|compare|reindex|export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convladder.cliopts import RunsOpt  # declared once for every command that reads the store
from convladder.errors import UserError

Opt = typer.Option
RUN_HELP = "run id, unique prefix, 'latest', or 'latest:<model, name or tag>'"


def register(app: typer.Typer) -> None:
    """Add the `runs` sub-app."""
    runs = typer.Typer(help="List, show and compare stored runs; rebuild the index.", no_args_is_help=True)
    runs.command("list")(runs_list)
    runs.command("show")(runs_show)
    runs.command("compare")(runs_compare)
    runs.command("reindex")(runs_reindex)
    runs.command("export")(runs_export)
    app.add_typer(runs, name="runs")


def _fmt(value: Any, pct: bool = False) -> str:
    """A value as printed: accuracies (`pct`) at 2 decimals with %, other floats with their significant digits
    (lr 0.001, weight decay 0.0005: never '0.00'), anything else as it is."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}%" if pct else _sig(value)
    return str(value)


def _sig(value: float) -> str:
    """A float that is not a percentage: 3 significant digits below 1 (0.001, 0.0005, 1e-05), 2 decimals above."""
    if value == 0 or value != value or abs(value) == float("inf"):
        return f"{value:g}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _pts(value: Any) -> str:
    """Accuracies and percentage points (gap, potential) without the % sign: 2 decimals."""
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _fmt(value)


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
    store = RunStore(runs)
    records = store.list_runs(limit=limit or None, tag=tag, **filters)
    if json_out:
        typer.echo(json.dumps([asdict(r) for r in records], indent=1))
        return
    typer.echo(list_text(store, records))


def list_text(store: Any, records: list[Any]) -> str:
    """`runs list`'s table of these records (also `convladder.runs()` in Python)."""
    if not records:
        return "no runs"
    shown = [(r, _progress(store.root / r.id, r)) for r in records]
    configs = {r.id: _config_of(store.root / r.id) for r in records}
    taught = {i: str(c["teacher"]) if c.get("teacher") else None for i, c in configs.items()}  # distilled runs
    ema = {i: bool(c.get("ema")) for i, c in configs.items()}  # config ema: the accuracies are the average's
    # step/name last and whole: a ladder run's name says its ladder, step and step name ("my-dropout 2. dropout-0.05")
    lines = [f"{'id':24} {'status':11} {'model':{MODEL_WIDTH}} {'seed':>4} {'params':>8} {'ep':>7} "
             f"{'final test':>10} {'best on split':>13} {'best ep':>7} step/name"]
    for r, (ep, best) in shown:
        lines.append(f"{r.id:24} {r.status:11} {model_cell(r.model):{MODEL_WIDTH}} {_fmt(r.seed):>4} "
                     f"{_fmt(r.params):>8} {ep:>7} {_fmt(r.final_test_acc, True):>10} {best:>13} "
                     f"{_fmt(r.best_epoch):>7} {r.name or '-'}"
                     + (f" (distilled from {taught[r.id]})" if taught[r.id] else "")
                     + (" (EMA weights)" if ema[r.id] else ""))
    lines.append("ep: done/configured for a run that did not finish; final test: the last epoch's; "
                 "best on split: the best epoch's accuracy on the split that picked it; model: an own class as "
                 "file.py:Class (`runs show` gives its folder), a long spec with its middle left out")
    if any(taught.values()):
        lines.append("distilled: trained on a teacher run's soft targets; params are the student's only (`runs show` "
                     "gives the teacher's)")
    if any(ema.values()):
        lines.append("(EMA weights): final test and best on split are the weight average's (config ema), the "
                     "weights that were evaluated, selected and saved; `runs show` gives the decay")
    if any(best.endswith("test*") for _, (_, best) in shown):
        lines.append("* best epoch picked on the test set (select_on: test): an optimistic figure, not a held-out "
                     "estimate — the final test accuracy is the honest one")
    return "\n".join(lines)


MODEL_WIDTH = 22


def model_cell(model: str | None, width: int = MODEL_WIDTH) -> str:
    """A run's model in `width` characters: an own class as `file.py:Class` (its folder left out), anything
    longer with its middle left out, so the end that names the class or the head stays."""
    from convladder.spec.ownref import OWN_REF

    text = (model or "-").strip()
    own = OWN_REF.match(text)
    if own:
        text = f"{Path(own['file']).name}:{own['cls']}"
    if len(text) <= width:
        return text
    keep = width - 3
    return f"{text[:keep - keep // 2]}...{text[len(text) - keep // 2:]}"


def _progress(folder: Path, r: Any) -> tuple[str, str]:
    """(the 'ep' cell, the 'best on split' cell) of a run, from its metrics.jsonl and result.json.

    ep: the configured epochs for a completed run, 'done/configured' for any other (running, interrupted,
    stopped, failed). best: the best epoch's accuracy on the split that picked it — 'val', or 'test*' when
    the test set picked it (select_on: test); '-' where no split picked one (best = final epoch).
    """
    from convladder.runs.reader import read_json, read_metrics

    notes: list[str] = []  # tolerant: a damaged file shows as '-' here, `runs show` names the problem
    rows = read_metrics(folder / "metrics.jsonl", notes)
    result = read_json(folder / "result.json", notes) if (folder / "result.json").is_file() else {}
    done = max((row["epoch"] for row in rows), default=None)
    if done is None and isinstance(result.get("epochs_done"), int):
        done = result["epochs_done"]
    if r.status == "completed" and (done is None or done == r.epochs):
        ep = _fmt(r.epochs)
    else:
        ep = f"{done or 0}/{_fmt(r.epochs)}"
    best = result.get("best") if isinstance(result.get("best"), dict) else {}
    picked = best.get("selected_by")
    if picked == "test":
        return ep, _fmt(best.get("test_acc"), True) + " test*"
    if picked == "val" or (picked is None and r.best_val_acc is not None):  # no result.json: the index's val pick
        return ep, _fmt(r.best_val_acc, True) + " val"
    return ep, "-"


def _config_of(folder: Path) -> dict[str, Any]:
    """A run's config.json for the list's labels (teacher, ema); {} where it is missing or damaged."""
    from convladder.runs.reader import read_json

    config = read_json(folder / "config.json", []) if (folder / "config.json").is_file() else {}
    return config if isinstance(config, dict) else {}


def _own_line(folder: Path) -> str | None:
    """What a run of a person's own class records (own_model.json), in one line; None for a spec run."""
    from convladder.runs.reader import OWN_JSON, read_json

    if not (folder / OWN_JSON).is_file():
        return None
    own = read_json(folder / OWN_JSON)
    rebuild = {"file": "the command line rebuilds it",
               "recorded": "the command line rebuilds it from model_source.py"}.get(own.get("rebuild"),
                                                                                 "rebuilt in Python only")
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
    changed = source_status(folder) if _own_line(folder) else None
    if changed:
        typer.secho(f"warning: {changed}", fg=typer.colors.YELLOW, err=True)
    typer.echo(show_text(record, folder, config, metrics, result))


def show_text(record: Any, folder: Path, config: dict[str, Any], metrics: list[dict[str, Any]],
              result: dict[str, Any] | None) -> str:
    """`runs show`'s text of one run (also a loaded run's text in Python: `convladder.load(run)`)."""
    lines = [f"run {record.id} ({record.status})  {record.path}", f"model: {config.get('model_spec')}"]
    own = _own_line(folder)
    if own:
        lines.append(own)
    c = {k: _fmt(config.get(k)) for k in ("dataset", "seed", "epochs", "batch_size", "optimizer", "lr", "schedule",
                                          "augment")}
    lines.append(f"params {_fmt(record.params)}  dataset {c['dataset']}  seed {c['seed']}  epochs {c['epochs']}  "
                 f"batch {c['batch_size']}  {c['optimizer']} lr {c['lr']} {c['schedule']}  augment {c['augment']}")
    lines.append(f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'train acc*':>10} {'val acc':>8} {'test acc':>8} "
                 f"{'time':>6}")
    for m in metrics:
        lines.append(f"{m['epoch']:>5} {_num(m.get('lr'), '>9.4g')} {_num(m.get('train_loss'), '>10.4f')} "
                     f"{_pts(m.get('train_acc')):>10} {_pts(m.get('val_acc')):>8} {_pts(m.get('test_acc')):>8} "
                     f"{_num(m.get('epoch_time_s'), '>5.1f')}s")
    lines.append("* train acc as seen while training (dropout/augmentation on)")
    from convladder.train.progress import train_loss_terms  # torch-free; the figure's caption says the same

    extra = train_loss_terms(config)
    if extra:
        lines.append(f"train loss includes {extra}; val and test loss are plain cross-entropy, so the two do not "
                     "compare as a gap")
    if config.get("teacher"):  # train/distill.py: the parameter count above is the student's alone
        from convladder.train.distill import config_record, distilled_text

        taught = (result or {}).get("distilled_from") or config_record(config)
        lines.append(f"{distilled_text(taught)} — params above are the student's only")
    if config.get("ema"):  # train/ema.py: evaluated, selected and saved in place of the live weights
        lines.append(f"val acc, test acc: EMA weights (decay {config['ema']:g} per step); the live weights' are "
                     "live_val_acc / live_test_acc in metrics.jsonl")
    if result:
        from convladder.train.result import RunResult  # the one place the result line is worded (CLI glue only)

        try:
            lines.append(RunResult.from_dict(result).summary())
        except (TypeError, KeyError, ValueError, AttributeError):
            lines.append(f"result.json of run {record.id} has an unexpected shape; status {result.get('status')}")
        if result.get("message"):
            lines.append(str(result["message"]))
    return "\n".join(lines)


def runs_compare(run_ids: Annotated[list[str], typer.Argument(help="two or more run ids or prefixes")],
                 runs: RunsOpt = None) -> None:
    """Side by side: results and the config keys that differ."""
    from convladder.runs.store import RunStore

    typer.echo(compare_text(RunStore(runs), run_ids))


def compare_text(store: Any, run_ids: list[str]) -> str:
    """`runs compare`'s table (also `convladder.compare(...)` in Python)."""
    from convladder.train.result import potential_shown

    if len(run_ids) < 2:
        raise UserError(f"compare needs two or more runs (got {len(run_ids)}) — give run ids, prefixes or 'latest'")
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
        ("gap", [_pts(x.get("gap")) for x in results]),
        ("potential", [potential_shown(x.get("potential"), part(x, "final").get("train_acc"), raw=False)
                       for x in results]),
        ("verdict", [_fmt(x.get("verdict")) for x in results]),
        ("wall time s", [_fmt(x.get("wall_time_s")) for x in results]),
    ]
    keys = [k for k in configs[0] if k not in ("name",) and len({json.dumps(c.get(k)) for c in configs}) > 1]
    rows += [(k, [_fmt(c.get(k)) for c in configs]) for k in keys]
    width = max(len(r.id) for r in records) + 2
    lines = [f"{'':18}" + "".join(f"{r.id:<{width}}" for r in records)]
    lines += [f"{label:18}" + "".join(f"{v[:width - 1]:<{width}}" for v in values) for label, values in rows]
    return "\n".join(lines)


def runs_export(
    targets: Annotated[Optional[list[str]], typer.Argument(help="run ids/prefixes/latest, ladder:NAME (or a "
                                                            "ladder's name), sweep:NAME; none: every run")] = None,
    tensorboard: Annotated[Optional[Path], Opt("--tensorboard", help="write TensorBoard event files under DIR "
                                                                     "(pip install 'convladder[tensorboard]')")] = None,
    mlflow: Annotated[Optional[str], Opt("--mlflow", help="log to this MLflow tracking URI, e.g. file:./mlruns or "
                                                         "http://host:5000 (pip install 'convladder[mlflow]')")] = None,
    experiment: Annotated[Optional[str], Opt("--experiment", help="MLflow experiment (default: the ladder's or "
                                                                  "sweep's name, else convladder)")] = None,
    runs: RunsOpt = None,
) -> None:
    """Write stored runs, ladders and sweeps to TensorBoard and/or MLflow (a ladder's steps side by side)."""
    from convladder.report.exporters import export_runs, require, select_runs
    from convladder.runs.store import RunStore

    require(tensorboard, mlflow)
    for line in export_runs(select_runs(RunStore(runs), targets or []), tensorboard, mlflow, experiment):
        typer.echo(line)


def runs_reindex(runs: RunsOpt = None) -> None:
    """Rebuild the index (index.sqlite) from the run folders — after it was damaged, deleted or copied."""
    from convladder.runs.store import RunStore

    store = RunStore(runs)
    if not store.root.is_dir():
        raise UserError(f"no run store at {store.root}; give --runs the folder that holds the runs")
    n = store.reindex()
    typer.echo(f"indexed {n} run(s) in {store.db_path}")
