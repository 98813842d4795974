"""TensorBoard and MLflow exporters: what each dashboard reads back (with its own reader) is metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_util import run_cli
from run_util import copy_run
from convladder.errors import UserError
from convladder.report import exporters
from convladder.report.rundata import load_run
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.loop import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="pip install -e '.[tensorboard]'")
mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="pip install -e '.[mlflow]'")

torch.set_num_threads(1)
FAST = dict(model="tiny8k", dataset="synthetic", epochs=3, val_size=128, subset=512, batch_size=128,
            clean_train_eval=256)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("runs")
    return root, train(TrainConfig(**FAST), RunStore(root)).run_id


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _epoch_ends(run_id: str, rows: list[dict]) -> list[float]:
    """When each epoch ended: the run's start (its id, local time) plus the epochs' times — the run's own clock."""
    import time

    started = time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    return [started + sum(r["epoch_time_s"] for r in rows[:i + 1]) for i in range(len(rows))]


def _events(folder: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_hparams_and_table_read_back(stored, tmp_path: Path) -> None:
    root, run_id = stored
    rows = _metrics(root / run_id)
    folder = exporters.write_tensorboard(load_run(root / run_id), tmp_path / "tb")
    acc = _events(folder)
    for key, tag in exporters.SCALARS:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["epoch"] for r in rows], tag
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6), tag
    assert [e.wall_time for e in acc.Scalars("accuracy/test")] == pytest.approx(_epoch_ends(run_id, rows))
    gap = acc.Scalars(exporters.GAP_TAG)
    assert [e.value for e in gap] == pytest.approx([r["train_acc"] - r["test_acc"] for r in rows], rel=1e-5)
    result = json.loads((root / run_id / "result.json").read_text())
    assert acc.Scalars("result/final_test_acc")[0].value == pytest.approx(result["final"]["test_acc"])
    # the network table as text, and the config as TensorBoard's hparams (its own plugin's protobuf)
    text = acc.Tensors("network/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "RF at output" in text and "conv3x3" in text
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    session = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info
                   for c in content.values() if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    config = json.loads((root / run_id / "config.json").read_text())
    assert session.hparams["lr"].number_value == pytest.approx(config["lr"])
    assert session.hparams["model"].string_value == config["model"]
    # a second export replaces the first: one event file, the same values once
    exporters.write_tensorboard(load_run(root / run_id), tmp_path / "tb")
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert len(_events(folder).Scalars("accuracy/test")) == len(rows)


def test_mlflow_params_metrics_table_and_folder_read_back(stored, tmp_path: Path) -> None:
    root, run_id = stored
    rows = _metrics(root / run_id)
    uri = f"file:{tmp_path / 'mlruns'}"
    lines = exporters.export_runs([load_run(root / run_id)], mlflow=uri)
    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("convladder").experiment_id])
    assert found.data.tags["convladder.run_id"] == run_id and found.info.run_id in lines[0]
    config = json.loads((root / run_id / "config.json").read_text())
    assert float(found.data.params["lr"]) == pytest.approx(config["lr"])
    assert found.data.params["model"] == config["model"]
    for key in ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc", "lr"):
        history = sorted(client.get_metric_history(found.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [r["epoch"] for r in rows], key
        assert [m.value for m in history] == pytest.approx([r[key] for r in rows], rel=1e-9), key
        assert [m.timestamp for m in history] == [int(s * 1000) for s in _epoch_ends(run_id, rows)], key
    gap = sorted(client.get_metric_history(found.info.run_id, "gap"), key=lambda m: m.step)
    assert [m.value for m in gap] == pytest.approx([r["train_acc"] - r["test_acc"] for r in rows])
    files = {f.path for f in client.list_artifacts(found.info.run_id)}
    assert "network_table.txt" in files and "run" in files
    inside = {Path(f.path).name for f in client.list_artifacts(found.info.run_id, "run")}
    assert {"config.json", "metrics.jsonl", "result.json", "model.safetensors"} <= inside
    assert found.info.status == "FINISHED"
    # exporting again replaces the MLflow run of that convladder run (one active run, not two)
    exporters.export_runs([load_run(root / run_id)], mlflow=uri)
    assert len(client.search_runs([found.info.experiment_id])) == 1


def test_runs_export_puts_a_ladders_steps_side_by_side(stored, capsys, tmp_path: Path) -> None:
    root, run_id = stored
    for step in (1, 2):
        copy_run(root / run_id, f"20990101-00000{step}-abcde{step}",
                 config={"tags": ["ladder:mini", f"step:{step}"], "name": f"mini {step}. step{step}"})
    RunStore(root).reindex()
    code, out, err = run_cli(capsys, "runs", "export", "ladder:mini", "--runs", str(root),
                             "--tensorboard", str(tmp_path / "tb"), "--mlflow", f"file:{tmp_path / 'ml'}")
    assert code == 0, err
    steps = sorted(p.name for p in (tmp_path / "tb" / "ladder-mini").iterdir())
    assert [s[:7] for s in steps] == ["step01-", "step02-"] and len(out.splitlines()) == 4
    client = mlflow_tracking.MlflowClient(tracking_uri=f"file:{tmp_path / 'ml'}")
    found = client.search_runs([client.get_experiment_by_name("ladder-mini").experiment_id])
    assert sorted(r.data.tags["convladder.run_id"] for r in found) == ["20990101-000001-abcde1", "20990101-000002-abcde2"]
    copy_run(root / run_id, "20990101-000003-abcde3", config={"tags": ["sweep:lr", "trial:t001"]})
    RunStore(root).reindex()
    code, out, err = run_cli(capsys, "runs", "export", "sweep:lr", "--runs", str(root), "--tensorboard", str(tmp_path / "tb"))
    assert code == 0, err
    assert [p.name for p in (tmp_path / "tb" / "sweep-lr").iterdir()] == ["t001-seed1-20990101-000003-abcde3"]
    code, _, err = run_cli(capsys, "runs", "export", "ladder:nothere", "--runs", str(root), "--tensorboard", "x")
    assert code == 2 and "no runs tagged 'ladder:nothere'" in err and len(err.strip().splitlines()) == 1


def test_train_writes_both_when_asked(capsys, tmp_path: Path) -> None:
    runs, tb, ml = tmp_path / "runs", tmp_path / "tb", f"file:{tmp_path / 'ml'}"
    code, out, err = run_cli(capsys, "train", "--model", "tiny8k", "--dataset", "synthetic", "--epochs", "1",
                             "--subset", "256", "--val-size", "64", "--runs", str(runs), "--tensorboard", str(tb),
                             "--mlflow", ml)
    assert code == 0, err
    (run_id,) = [r.id for r in RunStore(runs).list_runs()]
    (folder,) = tb.iterdir()
    assert folder.name.endswith(run_id) and "tensorboard: run" in out and "mlflow: run" in out
    acc = _events(folder)
    assert acc.Scalars("accuracy/test")[0].value == pytest.approx(_metrics(runs / run_id)[0]["test_acc"])


def test_a_missing_extra_is_one_line_before_training(monkeypatch, capsys, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'convladder\[mlflow\]'"):
        exporters.require(mlflow="file:x")
    code, _, err = run_cli(capsys, "train", "--model", "tiny8k", "--dataset", "synthetic", "--epochs", "1",
                           "--runs", str(tmp_path / "runs"), "--mlflow", "file:x")
    assert code == 2 and "convladder[mlflow]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not RunStore(tmp_path / "runs").list_runs()  # nothing trained


def test_python_train_writes_tensorboard_too(tmp_path: Path) -> None:
    import convladder

    result = convladder.train("tiny8k", runs=tmp_path / "runs", quiet=True, tensorboard=tmp_path / "tb",
                              dataset="synthetic", epochs=1, subset=256, val_size=64)
    (folder,) = (tmp_path / "tb").iterdir()
    assert folder.name.endswith(result.run_id)
    assert _events(folder).Scalars("accuracy/test")[0].value == pytest.approx(result.final["test_acc"])
    with pytest.raises(UserError, match="leave runs=False out"):
        convladder.train("tiny8k", runs=False, tensorboard=tmp_path / "tb2", dataset="synthetic", epochs=1)


def test_an_mlflow_store_that_cannot_be_used_is_one_line_before_training(capsys, tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "--model", "tiny8k", "--dataset", "synthetic", "--epochs", "1",
                           "--runs", str(tmp_path / "runs"), "--mlflow", f"http://127.0.0.1:{port}")
    assert code == 2 and f"no tracking server answers at 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - start < 30  # MLflow's own retries took 4 min against a closed port
    assert not (tmp_path / "runs").exists() or not RunStore(tmp_path / "runs").list_runs()
    import importlib.util

    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write there"):
        exporters.require(tensorboard=tmp_path / "file" / "tb")  # under a file: no folder can be made
    if importlib.util.find_spec("sqlalchemy") is None:  # mlflow-skinny: no database stores
        with pytest.raises(UserError, match="needs the full MLflow package"):
            exporters.require(mlflow=f"sqlite:///{tmp_path / 'm.db'}")
