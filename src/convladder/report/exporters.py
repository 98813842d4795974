"""Stored runs written to the dashboards people watch: TensorBoard event files and an MLflow tracking store.

Both exporters read a run folder only (`report.rundata.load_run`): `convladder train --tensorboard/--mlflow` calls
them when a run ends, `convladder runs export` calls them after the fact, so a dashboard shows exactly what
metrics.jsonl and result.json hold. Names kept from metrics.jsonl (MLflow) or grouped by split (TensorBoard):

- per epoch (step = epoch): train/val/test loss and accuracy (%), lr (the epoch's first step), gap = train
  accuracy as seen while training (dropout/augmentation on) minus test accuracy, in points;
- the config as hyperparameters (TensorBoard's HParams, MLflow params), with the final numbers beside them;
- the network table as text; MLflow also gets the whole run folder as artifacts.

A ladder's steps and a sweep's trials are separate runs side by side: TensorBoard subfolders
`ladder-<name>/step03-<step>-seed1-<run id>`, MLflow runs of one experiment named after the ladder or sweep.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.report.rundata import RunData, load_run
from convladder.runs.store import RunStore

# (metrics.jsonl key, TensorBoard tag); gap is computed per epoch, not stored
SCALARS = (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("test_loss", "loss/test"),
           ("train_acc", "accuracy/train_seen"), ("val_acc", "accuracy/val"), ("test_acc", "accuracy/test"),
           ("lr", "lr"))
GAP_TAG = "gap/train_seen_minus_test"
GAP_NOTE = ("gap = train accuracy as seen while training (dropout/augmentation on) - test accuracy, in "
            "percentage points; accuracies in %")
RESULT_KEYS = {"final_test_acc": ("final", "test_acc"), "final_train_acc": ("final", "train_acc"),
               "final_val_acc": ("final", "val_acc"), "best_test_acc": ("best", "test_acc"),
               "best_val_acc": ("best", "val_acc")}
EXTRA = {"tensorboard": ("tensorboard", "pip install 'convladder[tensorboard]'"),
         "mlflow": ("mlflow", "pip install 'convladder[mlflow]' (the light mlflow-skinny client)")}


def require(tensorboard: Any = None, mlflow: Any = None) -> None:
    """One UserError line when an asked-for writer's package is missing, or (given a URI) its MLflow store cannot
    be reached: checked before any training, not after it."""
    import importlib.util

    for asked, name in ((tensorboard, "tensorboard"), (mlflow, "mlflow")):
        module, how = EXTRA[name]
        if asked and importlib.util.find_spec(module) is None:
            raise UserError(f"--{name} needs the {module} package, which is not installed — {how}")
    if isinstance(mlflow, str):
        probe_mlflow(mlflow)
    if isinstance(tensorboard, (str, Path)):
        _writable(Path(tensorboard).expanduser())


def _writable(folder: Path) -> None:
    """A log folder one cannot write is one line now, not after the training."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise UserError(f"--tensorboard {folder}: cannot write there ({exc.strerror or exc}) — give a folder you "
                        "may write") from None


def probe_mlflow(uri: str) -> None:
    """A tracking server that does not answer, or a store this install cannot write, is one line now: MLflow itself
    retries a dead server for minutes (measured: 4 min 13 s against a closed port)."""
    import importlib.util
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "localhost", port), timeout=5).close()
        except OSError as exc:
            raise UserError(f"--mlflow {uri}: no tracking server answers at {parts.hostname}:{port} "
                            f"({exc.strerror or exc}) — start it (mlflow server) or give a file:DIR store") from None
    elif parts.scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")) and \
            importlib.util.find_spec("sqlalchemy") is None:
        raise UserError(f"--mlflow {uri}: a database store needs the full MLflow package (pip install mlflow); "
                        "mlflow-skinny writes file:DIR stores and talks to tracking servers (http://)")


def gap_rows(metrics: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(epoch, train_acc - test_acc) of every epoch that has both."""
    return [(int(r["epoch"]), float(r["train_acc"]) - float(r["test_acc"])) for r in metrics
            if isinstance(r.get("train_acc"), (int, float)) and isinstance(r.get("test_acc"), (int, float))]


def epoch_clock(run: RunData) -> dict[int, float]:
    """When each epoch ended, in seconds since 1970: the run's start (its id, local time) plus the epochs' own
    times (training + evaluation); a dashboard's wall-time axis then spans the run, not 1970."""
    import time

    try:
        clock = time.mktime(time.strptime(run.id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:  # a folder not named by a run id: its files' time
        clock = run.path.stat().st_mtime if run.path.exists() else 0.0
    out = {}
    for row in run.metrics:
        clock += float(row.get("epoch_time_s") or 0.0)
        out[int(row["epoch"])] = clock
    return out


def hparams(run: RunData) -> dict[str, str | int | float | bool]:
    """The run's config as flat hyperparameters: numbers, text and flags as they are, anything else as JSON."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in run.config.items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is not None:
            out[key] = json.dumps(value, sort_keys=True)
    return out


def result_numbers(run: RunData) -> dict[str, float]:
    """final/best accuracies and gap/potential from result.json (only those recorded)."""
    out = {}
    for name, (part, key) in RESULT_KEYS.items():
        value = (run.result.get(part) or {}).get(key) if isinstance(run.result.get(part), dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    for key in ("gap", "potential"):
        if isinstance(run.result.get(key), (int, float)) and not isinstance(run.result.get(key), bool):
            out[key] = float(run.result[key])
    return out


def table_text(run: RunData) -> str:
    """The network table as the CLI prints it, or the note saying why there is none."""
    from convladder.analysis.render import table_text as render

    table = run.table()
    if table is None:
        return "no network table: " + ("; ".join(run.notes) or "the network could not be rebuilt")
    return render(table, table.findings)


def run_name(run: RunData) -> str:
    """A run's name in a dashboard: ladder step, sweep trial or name/model, then seed and run id."""
    c = run.config
    if c.get("ladder") is not None and c.get("step") is not None:
        head = f"step{int(c['step']):02d}-{c.get('step_name') or ''}"
    else:
        trial = next((t[6:] for t in run.tags if t.startswith("trial:")), None)
        head = trial or str(c.get("name") or (c.get("model") if len(str(c.get("model"))) <= 40 else "spec"))
    return _safe(f"{head}-seed{run.seed}-{run.id}")


def group_of(run: RunData) -> str | None:
    """'ladder-NAME' or 'sweep-NAME' for a run of a ladder or sweep, else None."""
    for prefix in ("ladder:", "sweep:"):
        name = next((t[len(prefix):] for t in run.tags if t.startswith(prefix)), None)
        if name:
            return _safe(f"{prefix[:-1]}-{name}")
    return None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_.")[:120] or "run"


# -- which runs ---------------------------------------------------------------------------------------------

def select_runs(store: RunStore, targets: Iterable[str] = ()) -> list[RunData]:
    """Runs named by targets: run ids/prefixes/latest, `ladder:NAME` or a ladder's name, `sweep:NAME`; none
    named: every run of the store. Oldest first, each once."""
    targets = list(targets)
    if not targets:
        records = store.list_runs()
    else:
        records = []
        for target in targets:
            tagged = store.list_runs(tag=target) if target.startswith(("ladder:", "sweep:")) else \
                store.list_runs(tag=f"ladder:{target}")
            if target.startswith(("ladder:", "sweep:")) and not tagged:
                raise UserError(f"no runs tagged {target!r} in {store.root} — see `convladder runs list --runs "
                                f"{store.root}` (a ladder's runs carry ladder:NAME, a sweep's sweep:NAME)")
            records += tagged or [store.get(target)]
    seen: dict[str, Any] = {}
    for r in records:
        seen.setdefault(r.id, r)
    if not seen:
        raise UserError(f"no runs in {store.root} to export — train one first, or give --runs DIR")
    return [load_run(store.root / rid) for rid in sorted(seen)]


# -- TensorBoard ----------------------------------------------------------------------------------------------

def write_tensorboard(run: RunData, logdir: str | Path) -> Path:
    """Write one run's event file under `logdir` (its own subfolder; an older export of it is replaced)."""
    require(tensorboard=True)
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    group = group_of(run)
    folder = Path(logdir).expanduser() / (group or "") / run_name(run)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):  # a second export of the run replaces the first
        old.unlink()
    writer = SummaryWriter(log_dir=str(folder))
    clock = epoch_clock(run)
    try:
        for row in run.metrics:
            for key, tag in SCALARS:
                if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool):
                    writer.add_scalar(tag, float(row[key]), int(row["epoch"]), walltime=clock[int(row["epoch"])])
        for epoch, value in gap_rows(run.metrics):
            writer.add_scalar(GAP_TAG, value, epoch, walltime=clock[epoch])
        numbers = {f"result/{k}": v for k, v in result_numbers(run).items()}
        for exp in hparams_summary(hparams(run), numbers):
            writer.file_writer.add_summary(exp)
        last = max((int(r["epoch"]) for r in run.metrics), default=0)
        for tag, value in numbers.items():  # the HParams table reads these as its metric columns
            writer.add_scalar(tag, value, last)
        writer.add_text("network", _markdown_code(table_text(run)), 0)
        writer.add_text("notes", f"run {run.id}, status {run.status}. {GAP_NOTE}."
                        + "".join(f"\n\nnote: {n}" for n in run.notes), 0)
    finally:
        writer.close()
    return folder


def _markdown_code(text: str) -> str:
    # TensorBoard renders text as Markdown: four spaces keep the table's columns
    return "\n".join("    " + line for line in text.splitlines())


# -- MLflow ---------------------------------------------------------------------------------------------------

def mlflow_client(uri: str) -> Any:
    """An MlflowClient of `uri`; a local `file:` store is taken as asked for (MLflow 3 refuses it unless
    MLFLOW_ALLOW_FILE_STORE is set: the person named that store, so it is set for this process)."""
    require(mlflow=True)
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("sqlite:")):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # noqa: BLE001 - MLflow's own error, cut to one line
        raise UserError(f"--mlflow {uri}: MLflow cannot open that tracking store ({_first(exc)}) — give a "
                        "file:DIR store or a tracking server's http(s):// URI") from None


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def write_mlflow(run: RunData, client: Any, experiment: str | None = None) -> str:
    """Log one run (params, per-epoch metrics, results, the table, the run folder) as an MLflow run; an older
    export of the same convladder run in that experiment is replaced. Returns the MLflow run id."""
    from mlflow.entities import Metric, Param, RunTag

    name = experiment or group_of(run) or "convladder"
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found is not None else client.create_experiment(name)
    for old in client.search_runs([exp_id], filter_string=f"tags.`convladder.run_id` = '{run.id}'"):
        client.delete_run(old.info.run_id)
    created = client.create_run(exp_id, run_name=run_name(run),
                                tags={"convladder.run_id": run.id, "convladder.status": run.status})
    mid = created.info.run_id
    try:
        # MLflow keeps a param value to 6000 characters: a long spec keeps its start, the folder has it whole
        params = [Param(k, str(v)[:6000]) for k, v in hparams(run).items()]
        ms = {epoch: int(seconds * 1000) for epoch, seconds in epoch_clock(run).items()}  # MLflow: milliseconds
        metrics = [Metric(key, float(row[key]), ms[int(row["epoch"])], int(row["epoch"])) for row in run.metrics
                   for key, _ in SCALARS if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)]
        metrics += [Metric("gap", value, ms[epoch], epoch) for epoch, value in gap_rows(run.metrics)]
        end = max(ms.values(), default=0)
        metrics += [Metric(k, v, end, 0) for k, v in result_numbers(run).items() if k != "gap"]
        for start in range(0, max(len(params), len(metrics)), 100):  # log_batch takes at most 100 params
            client.log_batch(mid, metrics=metrics[start:start + 100], params=params[start:start + 100],
                             tags=[RunTag("convladder.gap_note", GAP_NOTE)] if start == 0 else [])
        client.log_text(mid, table_text(run), "network_table.txt")
        client.log_artifacts(mid, str(run.path), "run")
    except Exception:
        client.set_terminated(mid, "FAILED")
        raise
    client.set_terminated(mid, "FINISHED" if run.status == "completed" else "KILLED")
    return mid


# -- both, for the CLI --------------------------------------------------------------------------------------

def export_runs(runs: list[RunData], tensorboard: str | Path | None = None, mlflow: str | None = None,
                experiment: str | None = None) -> list[str]:
    """Write each run to the asked-for dashboards; one line per run and writer, saying where."""
    if not tensorboard and not mlflow:
        raise UserError("say where to export: --tensorboard DIR and/or --mlflow URI")
    require(tensorboard, mlflow)
    client = mlflow_client(mlflow) if mlflow else None
    lines = []
    for run in runs:
        if tensorboard:
            lines.append(f"tensorboard: run {run.id} -> {write_tensorboard(run, tensorboard)}")
        if client is not None:
            from mlflow.exceptions import MlflowException

            try:
                lines.append(f"mlflow: run {run.id} -> {mlflow} run {write_mlflow(run, client, experiment)}")
            except MlflowException as exc:  # MLflow's own error, one line (what was written before stays)
                raise UserError(f"--mlflow {mlflow}: run {run.id}: {_first(exc)}") from None
    return lines
