"""int8 export (serve/quantize.py): accuracy checked by an independent onnxruntime loop, calibration on training
images only, the record beside the run, the loud drop, and one-line errors. Generated data, CPU, seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from convladder.cli import build_app
from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.spec.build import build_module
from convladder.spec.notation import format_spec, parse_spec

pytest.importorskip("onnxruntime.quantization", reason="int8 export needs pip install 'convladder[export]'")

# c1's BN sits before a padded convolution (it cannot fold: padded zeros are not shifted), the others fold
SPEC = ("c1[conv3x3(8) relu bn] c2[conv3x3(8, padding=1) relu bn] t[maxpool2x2 conv1x1(8) relu bn] "
        "out[conv13x13(10) flatten softmax]")
VAL = 200  # validation images the run holds out of the synthetic set's 2,048 training images


def _run(store_root: Path, model: nn.Module | None = None, weights: bool = True) -> str:
    """A run folder on the synthetic data set, its network trained for a few steps (BN statistics learnt, so folding
    matters)."""
    from convladder.train.device_data import synthetic_splits

    torch.manual_seed(0)
    spec = parse_spec(SPEC)
    net = model or build_module(spec)
    splits = synthetic_splits()
    # A few steps only: a network right on some images and wrong on others, so accuracies are not 0 or 100 %
    opt = torch.optim.Adam(net.parameters(), lr=0.003)
    x = (splits.x_train[VAL:VAL + 4 * 32, None].float() / 255 - splits.mean) / splits.std  # ~94 % on test
    for i in range(0, len(x), 32):
        opt.zero_grad()
        nn.functional.nll_loss(torch.log(net(x[i:i + 32]) + 1e-9), splits.y_train[VAL + i:VAL + i + 32]).backward()
        opt.step()
    store = RunStore(store_root)
    handle = store.create_run({"model": SPEC, "model_spec": format_spec(spec), "dataset": "synthetic",
                               "val_size": VAL, "split_seed": 0},
                              {"input_shape": [1, 28, 28], "data_mean": splits.mean, "data_std": splits.std})
    if weights:
        handle.save_weights("model", net.state_dict())
    return handle.id


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-int8")
    run_id = _run(root)
    out = tmp_path_factory.mktemp("out") / "m.int8.onnx"
    result = CliRunner().invoke(build_app(), ["export", run_id, "--int8", "--calibration", "300", "--threads", "1",
                                              "-o", str(out), "--runs", str(root)])
    assert result.exit_code == 0, result.output
    return root, run_id, out, result


def test_int8_accuracy_matches_an_independent_onnxruntime_loop(exported):
    import onnxruntime as ort

    from convladder.train.device_data import synthetic_splits

    root, run_id, out, result = exported
    record = json.loads((root / run_id / "export-int8.json").read_text())
    splits = synthetic_splits()
    x = splits.x_test.numpy()[:, None].astype(np.float32) / 255
    y = splits.y_test.numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    preds = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 64]})[0].argmax(1)
                            for i in range(0, len(x), 64)])
    assert record["test_images"] == len(x) == 512 and 20 < record["int8_acc"] < 99
    assert record["int8_acc"] == pytest.approx(float((preds == y).mean() * 100))
    # fp32: the torch network itself, in eval mode, normalised as the run was
    net = build_module(parse_spec(SPEC))
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(root / run_id / "model.safetensors")))
    with torch.no_grad():
        logits = net.eval()((torch.from_numpy(x) - splits.mean) / splits.std)
    assert record["fp32_acc"] == pytest.approx(float((logits.argmax(1).numpy() == y).mean() * 100))
    assert record["drop"] == pytest.approx(record["fp32_acc"] - record["int8_acc"])
    assert record["int8_bytes"] == out.stat().st_size < record["fp32_bytes"]
    assert record["calibration_images"] == 300 and record["quant_format"] == "qoperator"
    assert record["int8_images_per_s"] > 0 and record["versions"]["onnxruntime"]
    assert f"int8 {record['int8_acc']:.2f}%" in result.stdout and "all 512 test images" in result.stdout
    ops = {node.op_type for node in __import__("onnx").load(str(out)).graph.node}
    assert "QLinearConv" in ops and "BatchNormalization" not in ops  # quantised, no fp32 BN left
    assert (record["bn_folded"], record["bn_as_conv"], record["bn_left"]) == (2, 1, 0)
    assert "BatchNorm: 2 folded into convolutions, 1 as 1x1 depthwise convolutions" in result.stdout


def test_bn_as_conv_is_the_same_map_in_an_own_class():
    from convladder.serve.quantize import bn_as_conv

    class Own(nn.Module):  # the notes' order, in a class: nothing for serve/fuse.py to fold
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4))
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.block(x)).mean((2, 3))

    torch.manual_seed(0)
    net = Own()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.2, 3), m.weight.data.uniform_(-2, 2)
    swapped, count = bn_as_conv(net)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert count == 2 and torch.allclose(swapped(x), net.eval()(x), atol=1e-6)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in swapped.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2  # the run's own network is untouched


def test_calibration_reads_the_training_split_only(exported):
    from convladder.serve.predict import load_run
    from convladder.serve.quantize import calibration_sample, run_data
    from convladder.train.device_data import synthetic_splits

    root, run_id, _, _ = exported
    pool, test, name = run_data(load_run(run_id, root))
    splits = synthetic_splits()
    assert name == "synthetic" and len(pool.x) == 2048 - VAL and len(test.x) == 512
    held_out = {bytes(img) for img in splits.x_test.numpy()}
    from convladder.data.split import train_val_split

    val_idx = train_val_split(2048, VAL, 0)[1].numpy()
    held_out |= {bytes(img) for img in splits.x_train.numpy()[val_idx]}
    assert not {bytes(img[0]) for img in pool.x} & held_out  # no test or validation image can calibrate
    sample = calibration_sample(pool, 100)
    assert sample.shape == (100, 1, 28, 28) and sample.dtype == np.float32 and 0 <= sample.min() <= sample.max() <= 1


def test_a_drop_over_the_limit_is_loud_and_still_written(exported, tmp_path, monkeypatch):
    from convladder.serve import quantize

    root, run_id, _, _ = exported
    monkeypatch.setattr(quantize, "DROP_LIMIT", -101.0)  # any drop (even a gain) is over it
    out = tmp_path / "loud.onnx"
    result = CliRunner().invoke(build_app(), ["export", run_id, "--int8", "--calibration", "50", "-o", str(out),
                                              "--runs", str(root)])
    assert result.exit_code == 0, result.output
    assert "WARNING: int8 loses" in result.stderr and out.is_file()
    assert json.loads((root / run_id / "export-int8.json").read_text())["drop_over_limit"] is True


class DataDependent(nn.Module):
    """A branch on the values: torch.export cannot write it as one ONNX graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x):
        y = self.conv(x).flatten(1)
        return y if float(y.sum()) > 0 else -y


def test_bad_input_is_one_line(exported, tmp_path):
    from convladder.serve.predict import LoadedRun, load_run
    from convladder.serve.quantize import export_int8

    root, run_id, _, _ = exported
    no_weights = _run(root, weights=False)
    result = CliRunner().invoke(build_app(), ["export", no_weights, "--int8", "--runs", str(root)])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert "\n" not in str(result.exception)
    run = load_run(run_id, root)
    odd = LoadedRun(run.run_id, run.path, DataDependent().eval(), run.mean, run.std, run.config, {}, "final",
                    run.input_shape)
    with pytest.raises(UserError, match="ONNX export failed") as caught:
        export_int8(odd, tmp_path / "odd.onnx", calibration=10)
    assert "\n" not in str(caught.value) and not (tmp_path / "odd.onnx").exists()
    with pytest.raises(UserError, match="quant_format"):
        export_int8(run, tmp_path / "x.onnx", quant_format="int4")


def test_python_api_export_int8(exported, tmp_path):
    import convladder

    root, run_id, _, _ = exported
    shown = convladder.export(run_id, int8=True, calibration=40, out=tmp_path / "api.onnx", runs=root)
    record = json.loads((root / run_id / "export-int8.json").read_text())
    assert shown.calibration_images == record["calibration_images"] == 40 and (tmp_path / "api.onnx").is_file()
    assert f"int8 {record['int8_acc']:.2f}%" in str(shown)
