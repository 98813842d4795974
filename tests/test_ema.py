"""Weight EMA (config `ema`): the average, what is evaluated, saved and resumed, and ema=0 unchanged (generated data)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli_util import run_cli
from convladder.cli import build_app
from convladder.errors import UserError
from convladder.runs.reader import read_weights
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig, build_config
from convladder.train.device_data import DeviceData, synthetic_splits
from convladder.train.ema import ema_decay
from convladder.train.loop import resume, run_to_end, train, train_epochs
from convladder.train.models import create_model
from convladder.train.optim import schedule_tables
from convladder.train.runenv import build_model
from convladder.train.step import TrainStep, evaluate
from run_util import metrics_rows

TINY = ("c1[conv3x3(8, bias=false) relu bn dropout(0.05)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")


def tiny_config(**kw) -> TrainConfig:
    base = dict(model=TINY, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3,
                threads=1, clean_train_eval=512)
    return TrainConfig(**{**base, **kw})



# Written from the code before `ema` existed (commit 669a197, this machine's CPU, 1 thread): ema=0 must not move
# a single bit of a fixed-seed run.
BEFORE_EMA = [
    {"epoch": 1, "lr": 0.009999999999999995, "lr_last": 0.06916503744663625, "train_loss": 2.0563039779663086,
     "train_acc": 34.207589285714285, "val_loss": 1.726230502128601, "val_acc": 37.109375,
     "test_loss": 1.7921500205993652, "test_acc": 30.2734375},
    {"epoch": 2, "lr": 0.06588460358684353, "lr_last": 0.0001, "train_loss": 1.4376730237688338,
     "train_acc": 62.779017857142854, "val_loss": 1.3795267343521118, "val_acc": 46.875,
     "test_loss": 1.4732568264007568, "test_acc": 41.40625},
]


def test_ema_off_leaves_a_fixed_seed_run_bit_identical(tmp_path):
    store = RunStore(tmp_path)
    result = train(tiny_config(ema=0.0), store)
    assert metrics_rows(store, result.run_id) == BEFORE_EMA
    assert "weights" not in result.extra and "EMA" not in result.summary()


def test_the_ema_equals_a_hand_computed_average_after_k_steps():
    cfg = tiny_config(ema=0.9, epochs=4)
    data = DeviceData(synthetic_splits(), cfg, torch.device("cpu"))
    model, _ = build_model(cfg.model, data.image_shape, cfg.seed)
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(1)], lrs, moms)
    model.train()
    expected = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    for n in range(90):  # (1 + n) / (10 + n) reaches 0.9 at n = 80: the warm-up, then the fixed decay
        if n % step.steps == 0:
            step.new_epoch()
        step()
        d = ema_decay(cfg.ema, n)
        for k, v in model.state_dict().items():
            if v.is_floating_point():  # weights and BN running mean/var: averaged
                expected[k] = d * expected[k] + (1 - d) * v.double()
            else:  # num_batches_tracked: copied
                expected[k] = v.clone()
    got = step.ema.state_dict()
    assert ema_decay(0.9, 24) == pytest.approx(25 / 34) and ema_decay(0.9, 85) == 0.9
    for k, v in got.items():
        if v.is_floating_point():
            assert torch.allclose(v.double(), expected[k], rtol=1e-5, atol=1e-6), k
        else:
            assert torch.equal(v, expected[k]), k
    # the average is not the live model (a copy of it would fail the comparison above, but say it outright)
    live = model.state_dict()
    assert any(not torch.equal(got[k], live[k]) for k in got if got[k].is_floating_point())


def test_the_decay_caps_at_ema_after_the_warm_up():
    assert [ema_decay(0.999, n) for n in (0, 8)] == [0.1, 0.5]
    assert ema_decay(0.99, 10_000) == 0.99


def test_saved_selected_and_reported_weights_are_the_ema_ones(tmp_path):
    store = RunStore(tmp_path)
    cfg = tiny_config(ema=0.95, epochs=2)
    result = train(cfg, store)
    run = tmp_path / result.run_id
    saved = read_weights(run, "final")
    state = torch.load(run / "resume.pt", weights_only=True)
    for k, v in saved.items():
        assert torch.equal(v, state["ema"][k]), k
    assert any(not torch.equal(v, state["model"][k]) for k, v in saved.items() if v.is_floating_point())
    # the final test accuracy reported is the saved (EMA) weights' own
    data = DeviceData(synthetic_splits(), cfg, torch.device("cpu"))
    model = create_model(run)
    _, acc = evaluate(model, data.x_test, data.y_test, data, 500)
    assert acc == result.final["test_acc"]
    rows = store.read_metrics(result.run_id)
    assert {"live_val_acc", "live_test_acc", "live_val_loss", "live_test_loss"} <= set(rows[-1])
    assert rows[-1]["test_acc"] == acc and rows[-1]["live_test_acc"] != rows[-1]["test_acc"]
    # the average never feeds back into training: the live weights' figures are the ema=0 run's, bit for bit
    assert [(r["train_loss"], r["live_val_acc"], r["live_test_loss"]) for r in rows] == \
        [(r["train_loss"], r["val_acc"], r["test_loss"]) for r in BEFORE_EMA]
    # the best epoch is picked on the EMA's val accuracy, and its weights are the EMA's of that epoch
    best = max(rows, key=lambda r: r["val_acc"])
    assert result.best["epoch"] == best["epoch"] and result.best["test_acc"] == best["test_acc"]
    # labelled wherever the result shows
    assert "final test (EMA weights)" in result.summary()
    assert "(EMA weights)" in str(result)
    saved_result = json.loads((run / "result.json").read_text())
    assert saved_result["extra"]["weights"].startswith("EMA weights (decay 0.95")


def test_resume_continues_the_same_ema(tmp_path):
    store = RunStore(tmp_path / "runs")
    cfg = tiny_config(ema=0.9, epochs=3, device="cpu")
    epochs = train_epochs(cfg, store)
    next(epochs)
    epochs.close()  # stopped after epoch 1, as a scheduler stops a trial
    [record] = store.list_runs()
    resumed = resume(record.id, store)
    straight_store = RunStore(tmp_path / "straight")
    straight = run_to_end(train_epochs(cfg, straight_store))
    assert resumed.final == straight.final
    assert metrics_rows(store, resumed.run_id) == metrics_rows(straight_store, straight.run_id)
    a, b = read_weights(store.root / resumed.run_id), read_weights(straight_store.root / straight.run_id)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_ema_option_and_bad_values(capsys):
    assert build_config(None, {"ema": 0.999}).ema == 0.999
    for bad in ("ema=1", "ema=-0.1", "ema=nan"):
        with pytest.raises(UserError, match="ema"):
            build_config(None, {}, [bad])
    out = CliRunner().invoke(build_app(), ["train", "--help"], terminal_width=200)
    assert "--ema" in out.output
    code, _, err = run_cli(capsys, "train", "--ema", "1.5", "--dataset", "synthetic")
    assert code == 2 and "ema" in err and len(err.strip().splitlines()) == 1


def test_epoch_lines_and_recipe_say_which_weights():
    from convladder.train.progress import _epoch_line, recipe_text

    row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 50.0, "val_loss": 1.0, "val_acc": 60.0,
           "test_loss": 1.0, "test_acc": 61.0, "live_val_acc": 55.0, "live_test_acc": 56.0, "epoch_time_s": 1.0}
    assert "test 1.0000 61.00% (EMA weights; live weights val 55.00% test 56.00%)" in _epoch_line(row)
    assert "EMA weights (decay 0.999 per step)" in recipe_text(tiny_config(ema=0.999))
    assert "EMA" not in recipe_text(tiny_config())


def test_runs_show_predict_and_export_say_ema_weights(tmp_path, capsys):
    from PIL import Image

    store = RunStore(tmp_path / "runs")
    result = train(tiny_config(ema=0.9, epochs=1), store)
    code, out, _ = run_cli(capsys, "runs", "show", result.run_id, "--runs", str(store.root))
    assert code == 0 and "val acc, test acc: EMA weights (decay 0.9 per step)" in out
    assert "final test (EMA weights)" in out
    digit = Image.new("L", (28, 28))
    digit.paste(255, (12, 4, 16, 24))  # a white stroke on black: a "1"
    digit.save(tmp_path / "digit.png")
    code, _, err = run_cli(capsys, "predict", result.run_id, str(tmp_path / "digit.png"), "--runs", str(store.root))
    assert code == 0 and f"run {result.run_id} (EMA weights)" in err, err
