"""Trainer: smoke run, config/overrides, bad input, augmentation, verdict, NaN stop (tiny generated data)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from convladder.cli import build_app
from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.train.augment import AugmentParams, augment
from convladder.train.config import TrainConfig, build_config, parse_overrides
from convladder.train.loop import TrainingDiverged, train
from convladder.train.models import create_model
from convladder.train.result import potential, seed_stats, verdict

TINY = ("c1[conv3x3(8, bias=false) relu bn dropout(0.05)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")


def tiny_config(**kw) -> TrainConfig:
    base = dict(model=TINY, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3,
                threads=1, clean_train_eval=512)
    return TrainConfig(**{**base, **kw})


def test_smoke_run_learns_and_writes_the_run_folder(tmp_path):
    store = RunStore(tmp_path)
    result = train(tiny_config(epochs=3, augment=False), store)
    assert result.status == "completed" and result.epochs_done == 3
    assert result.final["test_acc"] > 50  # chance is 10 %: the loop really trains
    assert result.best["selected_by"] == "val" and result.best["epoch"] in (1, 2, 3)
    assert result.train_acc_source.startswith("clean")
    assert result.gap == pytest.approx(result.final["train_acc"] - result.final["test_acc"])
    run = tmp_path / result.run_id
    for name in ("config.json", "env.json", "metrics.jsonl", "result.json", "model.safetensors", "best.safetensors",
                 "resume.pt"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "epoch_time_s"} <= set(rows[0])
    assert json.loads((run / "config.json").read_text())["model_spec"].startswith("c1[conv3x3(8")
    assert store.get(result.run_id).status == "completed"


def test_no_validation_split_and_select_on_test(tmp_path):
    r = train(tiny_config(epochs=1, val_size=0))
    assert "val_acc" not in r.final or r.final["val_acc"] is None
    assert r.best["selected_by"].startswith("final epoch")
    r = train(tiny_config(epochs=1, select_on="test"))
    assert r.best["selected_by"] == "test"


def test_config_yaml_overrides_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.2\nepochs: 4\nbatch-size: 32\naugment: false\n")
    cfg = build_config(path, {"epochs": 6, "lr": None}, ["lr=0.3", "tags=a,b", "nesterov=false"])
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.augment, cfg.tags, cfg.nesterov) == (0.3, 6, 32, False, ["a", "b"], False)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert parse_overrides(["--lr=1"]) == {"lr": "1"}


@pytest.mark.parametrize("override, words", [
    ("lr=-1", "lr"), ("epochs=0", "epochs"), ("optimizer=rmsprop", "optimizer"), ("schedule=poly", "schedule"),
    ("batch_size=abc", "batch_size"), ("bogus=1", "bogus"), ("device=tpu", "device"), ("label_smoothing=1.5", "label_smoothing"),
    ("lr", "key=value"),
])
def test_bad_values_are_user_errors(override, words):
    with pytest.raises(UserError, match=words):
        build_config(None, {}, [override])


@pytest.mark.parametrize("args, words", [
    (["--batch-size", "100000"], "batch_size"),
    (["--lr", "-0.1"], "lr"),
    (["--epochs", "0"], "epochs"),
    (["--optimizer", "rmsprop"], "optimizer"),
    (["--model", "c1[conv29x29(10, bias=false)] out[gap conv1x1(10, bias=false) logsoftmax]"], "too small"),
    (["--model", "c1[conv3x3(8)] out[gap conv1x1(7) logsoftmax]"], "classes"),
    (["--crop", "24"], "crop_epochs"),
    (["--crop", "20", "--crop-epochs", "1"], "crop_epochs must be less than epochs"),
    (["--epochs", "2", "--crop", "28", "--crop-epochs", "1"], "smaller than the 28x28"),
    (["--epochs", "2", "--crop", "20", "--crop-epochs", "1", "--model",
      "c1[conv3x3(8) relu maxpool2x2] head[flatten fc(10) logsoftmax]"], "does not run on 20x20 images"),
])
def test_cli_bad_input_exits_nonzero_and_writes_nothing(tmp_path, args, words):
    runner = CliRunner()
    from convladder.cli import main

    base = ["train", "--dataset", "synthetic", "--model", TINY, "--epochs", "1", "--runs", str(tmp_path), "-q"]
    with pytest.raises(SystemExit) as exc:
        main(base + args)
    assert exc.value.code == 2
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "no run folder for a rejected run"
    assert runner  # keep the import used


def test_cli_train_print_config_and_runs_commands(tmp_path):
    runner = CliRunner()
    app = build_app()
    out = runner.invoke(app, ["train", "--dataset", "synthetic", "--model", TINY, "--print-config", "epochs=5", "--set", "lr=0.3"])
    assert out.exit_code == 0, out.output
    assert "epochs: 5" in out.output and "lr: 0.3" in out.output
    out = runner.invoke(app, ["train", "--dataset", "synthetic", "--model", TINY, "--epochs", "1", "--val-size", "256",
                              "--batch-size", "64", "--runs", str(tmp_path), "--json", "threads=1"])
    assert out.exit_code == 0, out.output
    events = [json.loads(line)["event"] for line in out.output.splitlines() if line.startswith("{")]
    assert events == ["start", "epoch", "result"]
    run_id = RunStore(tmp_path).list_runs()[0].id
    for cmd in (["runs", "list"], ["runs", "show", run_id[:17]], ["runs", "compare", run_id, run_id]):
        out = runner.invoke(app, [*cmd, "--runs", str(tmp_path)])
        assert out.exit_code == 0, out.output
        assert run_id in out.output


def test_augmentation_keeps_shape_dtype_and_is_seeded():
    x = torch.rand(16, 1, 28, 28)
    params = AugmentParams(rotate=10, translate=2, scale=0.1, erase=0.5)
    a = augment(x, params, torch.Generator().manual_seed(0))
    b = augment(x, params, torch.Generator().manual_seed(0))
    c = augment(x, params, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x) and a.min() >= 0 and a.max() <= 1.0001
    # identity parameters leave images (almost) unchanged
    same = augment(x, AugmentParams(rotate=0, translate=0, scale=0, erase=0), torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    # translation moves a single bright pixel by at most 2 pixels
    img = torch.zeros(64, 1, 28, 28)
    img[:, :, 14, 14] = 1
    moved = augment(img, AugmentParams(rotate=0, translate=2, scale=0), torch.Generator().manual_seed(0))
    ys, xs = (moved[:, 0] > 0.3).nonzero()[:, 1:].float().T
    assert ((ys - 14).abs() <= 2.5).all() and ((xs - 14).abs() <= 2.5).all()


def test_verdict_rules():
    assert potential(99.8, 99.05) == pytest.approx(99.25)  # the notes' fifth network
    assert verdict(99.8, 99.05, [99.0, 99.0, 99.05, 99.05]) == "overfitting"
    assert verdict(99.33, 98.84, [98.8, 98.84, 98.84, 98.84]) == "underfitting"
    assert verdict(99.7, 99.45, [99.3, 99.4, 99.45, 99.45]) == "healthy"
    assert verdict(99.0, 98.9, [98.0, 98.3, 98.6, 98.9]) == "still improving"
    assert verdict(99.7, 99.5, [98.0, 98.3, 98.6, 99.5]) == "healthy"  # reached the target: not "still improving"
    assert verdict(99.9, 99.3, [99.3] * 4, target=99.0) == "healthy"


def test_seed_stats():
    class R:  # minimal stand-in with the fields seed_stats reads
        def __init__(self, seed, acc):
            self.seed, self.run_id, self.final, self.best, self.target, self.wall_time_s = (
                seed, None, {"test_acc": acc}, {"test_acc": acc + 0.01}, 99.4, 1.0)

    s = seed_stats([R(1, 99.41), R(2, 99.5), R(3, 99.45)])
    assert s["final_test_acc"] == {"min": 99.41, "median": 99.45, "max": 99.5}
    assert s["all_seeds_reach_target"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    calls = {"n": 0}
    real = F.cross_entropy
    steps_per_epoch = (2048 - 256) // 64

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > steps_per_epoch + 3 and kwargs.get("reduction") != "sum" else loss

    monkeypatch.setattr("convladder.train.step.F.cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN/inf in epoch 2") as exc:
        train(tiny_config(epochs=3), store)
    run = store.list_runs()[0]
    assert run.status == "failed" and exc.value.result.epochs_done == 1
    assert json.loads((tmp_path / run.id / "result.json").read_text())["status"] == "failed"
    model = create_model(store.root / run.id)  # epoch 1 weights, all finite
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    assert len(store.read_metrics(run.id)) == 1


def test_a_run_that_ends_between_evaluations_says_which_epoch_its_final_numbers_are_of(tmp_path, monkeypatch):
    """eval_every=2, the loss NaN in epoch 4: epochs 1-3 trained, test last measured after epoch 2. The final
    numbers are epoch 2's and say so (they were labelled 'epoch 3', the last one trained, before)."""
    store = RunStore(tmp_path)
    calls = {"n": 0}
    real = F.cross_entropy
    steps_per_epoch = (2048 - 256) // 64

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        if "reduction" in kwargs:  # evaluation's per-image losses: left alone
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 3 * steps_per_epoch + 2 else loss

    monkeypatch.setattr("convladder.train.step.F.cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN/inf in epoch 4") as exc:
        train(tiny_config(epochs=6, eval_every=2, clean_train_eval=0), store)
    result = exc.value.result
    rows = store.read_metrics(store.list_runs()[0].id)
    assert result.epochs_done == 3 and [r["epoch"] for r in rows if "test_acc" in r] == [2]
    assert result.final["epoch"] == 2 and result.final["test_acc"] == rows[1]["test_acc"]
    assert result.final["train_acc"] == rows[1]["train_acc"]  # the gap compares one epoch's train and test
    label, value = result.lines()[0]
    assert label == "final (last evaluated epoch)" and value.startswith("epoch 2: test")
    assert "training stopped after epoch 3" in value and "(epoch 2 of 3 trained)" in result.summary()
    from convladder.report.html import result_block
    from convladder.report.rundata import load_run

    assert "final (epoch 2, the last evaluated of 3 trained) — test accuracy" in result_block(
        load_run(tmp_path / store.list_runs()[0].id))


def test_stopping_the_epoch_generator_records_a_stopped_run_that_resumes_to_full_length(tmp_path):
    from convladder.train.loop import resume, run_to_end, train_epochs
    store = RunStore(tmp_path / "runs")
    config = tiny_config(epochs=3, device="cpu")
    epochs = train_epochs(config, store)
    first = next(epochs)
    assert first["epoch"] == 1 and "val_acc" in first
    epochs.close()  # what a scheduler does to a weak trial
    [record] = store.list_runs()
    assert record.status == "stopped"
    result = json.loads((store.root / record.id / "result.json").read_text())
    assert result["status"] == "stopped" and result["epochs_done"] == 1 and "--resume" in result["message"]
    resumed = resume(record.id, store)
    straight = run_to_end(train_epochs(config))
    assert resumed.status == "completed" and resumed.epochs_done == 3
    assert resumed.final["test_acc"] == straight.final["test_acc"]  # bit for bit on CPU, as an unbroken run


def test_a_run_with_crop_epochs_resumes_across_the_switch_to_whole_images(tmp_path):
    from convladder.train.loop import resume, run_to_end, train_epochs
    store = RunStore(tmp_path / "runs")
    config = tiny_config(epochs=3, device="cpu", crop=20, crop_epochs=2)
    epochs = train_epochs(config, store)
    next(epochs)  # epoch 1 of 2 on crops
    epochs.close()
    resumed = resume(store.list_runs()[0].id, store)
    straight = run_to_end(train_epochs(config))
    whole = run_to_end(train_epochs(config.replace(crop=0, crop_epochs=0)))
    assert resumed.final["test_acc"] == straight.final["test_acc"]  # bit for bit on CPU, as an unbroken run
    assert resumed.final == straight.final
    assert straight.final["train_acc_seen"] != whole.final["train_acc_seen"]  # the crops really changed training


@pytest.mark.parametrize("scheme", ["glorot", "kaiming"])
def test_init_schemes_redraw_conv_weights_and_zero_biases(scheme):
    from convladder.train.init import init_weights
    from convladder.train.runenv import build_model

    spec = "c1[conv3x3(16) relu] c2[conv3x3(32) relu bn] out[gap conv1x1(10)]"
    torch_init, _ = build_model(spec, (1, 28, 28), seed=1)
    model, _ = build_model(spec, (1, 28, 28), seed=1, init=scheme)
    again, _ = build_model(spec, (1, 28, 28), seed=1, init=scheme)
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    base = [m for m in torch_init.modules() if isinstance(m, torch.nn.Conv2d)]
    for m, b in zip(conv, base):
        assert float(m.bias.detach().abs().max()) == 0
        fan_in, fan_out = m.weight[0].numel(), m.weight.shape[0] * m.weight[0, 0].numel()
        want = 2 / (fan_in + fan_out) if scheme == "glorot" else 2 / fan_in
        assert abs(float(m.weight.detach().var()) / want - 1) < 0.35  # the scheme's variance, not torch's 1/(3 fan_in)
        assert not torch.equal(m.weight, b.weight)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError):
        init_weights(model, "lecun")
    with pytest.raises(UserError, match="init"):
        train(tiny_config(init="lecun"))


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    import convladder.train.runner as runner  # the one setup of every way into training

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runner, "_TORCH_THREADS", 2)
    for busy, expected in [(0.0, 2), (0.2, 2), (1.0, 1), (1.9, 1), (2.0, 1), (None, 2)]:
        runner.default_threads.cache_clear()
        monkeypatch.setattr(runner, "_busy_cores", lambda busy=busy: busy)
        assert runner.default_threads() == expected, busy
    runner.default_threads.cache_clear()
    assert runner._busy_cores(0.05) is not None  # /proc/stat here; the load average elsewhere


def test_shift_images_moves_pixels_and_fills_the_border_with_black():
    from convladder.train.augment import shift_images

    x = torch.arange(1, 17, dtype=torch.uint8).reshape(1, 4, 4)
    right = shift_images(x, 1, 0)
    assert right[0, :, 0].tolist() == [0, 0, 0, 0] and right[0, :, 1:].tolist() == x[0, :, :3].tolist()
    up = shift_images(x, 0, -2)
    assert up[0, :2].tolist() == x[0, 2:].tolist() and up[0, 2:].sum() == 0
    assert shift_images(x, 4, 0).sum() == 0 and torch.equal(shift_images(x, 0, 0), x)
    assert shift_images(x.unsqueeze(1), -1, 1).shape == (1, 1, 4, 4)


def test_shift_eval_records_test_accuracy_per_shift_and_the_ladder_shows_it(tmp_path):
    """shift_eval=N: result.json holds the final model's test accuracy at 0..N pixels; 0 equals the final test."""
    store = RunStore(tmp_path)
    result = train(tiny_config(epochs=2, augment=False, shift_eval=3), store)
    shifted = result.shifted_test
    assert list(shifted) == ["0", "1", "2", "3"]
    assert shifted["0"] == pytest.approx(result.final["test_acc"])
    assert shifted["3"] < shifted["0"]  # the synthetic digits are not where training saw them: accuracy falls
    saved = json.loads((tmp_path / result.run_id / "result.json").read_text())
    assert saved["shifted_test"] == shifted
    assert "images shifted" in str(result) and "3 px" in str(result)
    assert train(tiny_config(epochs=1), None).shifted_test is None  # off by default
    with pytest.raises(UserError, match="shift_eval"):
        train(tiny_config(shift_eval=20), None)
