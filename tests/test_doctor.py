"""`convladder doctor`: a healthy network passes every check; each deliberately broken setup fails the check
meant for it (issue 15). Generated data (synthetic_splits) and small networks keep this to seconds."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convladder.doctor.probes import good_range
from convladder.doctor.result import DoctorResult
from convladder.doctor.run import doctor
from convladder.train.config import TrainConfig
from convladder.train.device_data import synthetic_splits
from convladder.train.models import create_model

SMALL_SPEC = ("c1[conv3x3(8, bias=false) relu bn] c2[conv3x3(8, bias=false) relu bn] t1[maxpool2x2] "
              "c3[conv3x3(16, bias=false) relu bn] c4[conv3x3(16, bias=false) relu bn] "
              "out[gap conv1x1(10, bias=false) logsoftmax]")
FAST = dict(lr_steps=60, learn_steps=60, overfit_steps=200)


class Small(nn.Module):
    """Four conv-ReLU-BN blocks, GAP, 1x1 to the classes; `relu_out` puts a ReLU right before the softmax."""

    def __init__(self, relu_out: bool = False, width: int = 8):
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(o))

        self.body = nn.Sequential(block(1, width), block(width, width), nn.MaxPool2d(2), block(width, 2 * width),
                                  block(2 * width, 2 * width))
        self.head = nn.Conv2d(2 * width, 10, 1)
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(F.adaptive_avg_pool2d(self.body(x), 1)).flatten(1)
        if self.relu_out:
            x = F.relu(x)  # the bug: scores cannot go negative
        return F.log_softmax(x, dim=1)


class ReluBeforeSoftmax(Small):
    def __init__(self):
        super().__init__(relu_out=True)


class DeepSigmoid(nn.Module):
    """Eight 3x3 convolutions with sigmoid and no BN (the notes: 'never going to use Sigmoid')."""

    def __init__(self, depth: int = 8, width: int = 8):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.Sigmoid(), nn.MaxPool2d(2)]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(F.adaptive_avg_pool2d(self.body(x), 1)).flatten(1), dim=1)


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits()


@pytest.fixture(scope="module")
def config():
    return TrainConfig(dataset="synthetic", val_size=400, batch_size=64, seed=1)


@pytest.fixture(scope="module")
def healthy(splits, config) -> DoctorResult:
    return doctor(SMALL_SPEC, splits, config, **FAST)


def status(result: DoctorResult) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def test_healthy_network_passes_every_check(healthy):
    assert status(healthy) == {name: "pass" for name in
                               ("data", "init", "activations", "gradients", "lr", "overfit", "learning")}
    assert healthy.ok and not healthy.failed
    init = healthy.check("init").measured
    assert abs(init["loss"] - init["expected"]) < 0.3  # ~ln(10) = 2.303
    assert healthy.check("overfit").measured["reached_at"] <= 200
    assert healthy.check("learning").measured["accuracy"] > 55


def test_result_round_trips_through_json(healthy):
    data = json.loads(healthy.to_json())
    assert data["ok"] is True and data["failed"] == []
    again = DoctorResult.from_dict(data)
    assert [c.status for c in again.checks] == [c.status for c in healthy.checks]
    assert again.check("gradients").details == healthy.check("gradients").details
    assert "PASS" in healthy.format_text() and "every check passed" in healthy.format_text()


def test_zero_weights_fail_activations_and_gradients(splits, config):
    model = create_model(SMALL_SPEC, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.zero_()
    res = doctor(model, splits, config, only=("init", "activations", "gradients"))
    s = status(res)
    assert s["activations"] == "fail" and s["gradients"] == "fail"
    assert res.check("activations").measured["constant"]  # layers with a constant output are named
    assert "zero" in res.check("gradients").advice
    assert s["init"] == "fail"  # every image gets the same scores
    # the doctor trains copies: the given instance keeps its (zero) weights
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters() if p.dim() > 1)


def test_unnormalised_data_fails_the_data_check(splits, config):
    raw = dataclasses.replace(splits, mean=0.0, std=1 / 255)  # the step then feeds pixels in 0..255
    res = doctor(SMALL_SPEC, raw, config, only=("data",))
    data = res.check("data")
    assert data.status == "fail" and data.measured["mean"] > 10 and data.measured["std"] > 10
    assert "normalise" in data.advice


def test_shuffled_labels_fail_the_short_run_but_not_overfitting(splits, config):
    g = torch.Generator().manual_seed(0)
    shuffled = dataclasses.replace(splits, y_train=splits.y_train[torch.randperm(len(splits.y_train), generator=g)])
    res = doctor(SMALL_SPEC, shuffled, config, only=("data", "overfit", "learning"), **FAST)
    s = status(res)
    assert s["learning"] == "fail" and res.check("learning").measured["accuracy"] < 25
    assert s["data"] == "pass"  # the labels are still balanced: only learning shows it
    assert s["overfit"] == "pass"  # 32 images can be memorised whatever their labels


def test_lr_100x_too_high_fails_the_lr_check(splits, config, healthy):
    res = doctor(SMALL_SPEC, splits, config.replace(lr=100 * config.lr), only=("lr", "overfit"), **FAST)
    lr = res.check("lr")
    assert lr.status == "fail"
    assert lr.measured["too_high"] is not None and lr.measured["lr"] >= lr.measured["too_high"]
    assert lr.measured["probe_lr"] < 1  # the other probes ran at the suggestion instead...
    assert res.check("overfit").status == "pass"  # ...so the network itself still shows healthy
    assert healthy.check("lr").measured["low"] <= config.lr <= healthy.check("lr").measured["high"]


def test_relu_before_softmax_fails_the_initial_predictions_check(splits, config):
    res = doctor(ReluBeforeSoftmax, splits, config, only=("init",))
    init = res.check("init")
    assert init.status == "fail" and init.measured["clipped"] > 0.2
    assert "ReLU" in init.advice
    ok = doctor(Small, splits, config, only=("init",)).check("init")
    assert ok.status == "pass" and ok.measured["clipped"] == 0


def test_deep_sigmoid_without_bn_fails_the_gradient_check(splits, config):
    res = doctor(DeepSigmoid, splits, config, only=("activations", "gradients"))
    grads = res.check("gradients")
    assert grads.status == "fail" and grads.measured["direction"] == "vanishing"
    assert grads.measured["spread"] > 1e3
    assert "sigmoid" in grads.advice


def test_one_epoch_gives_train_val_and_the_notes_verdict(splits, config):
    res = doctor(SMALL_SPEC, splits, config.replace(epochs=12), epochs=1, only=("epoch",))
    ep = res.check("epoch")
    assert ep.status in ("pass", "warn") and ep.measured["epochs"] == 1
    assert ep.measured["verdict"] in ("still improving", "underfitting", "overfitting", "healthy")
    m = ep.measured
    assert abs(m["gap"] - (m["train_acc"] - m["test_acc"])) < 1e-6  # train/result.py's gap
    assert m["val_acc"] > 50


def test_good_range_reads_a_ramp():
    lrs = [10 ** (-5 + i / 10) for i in range(60)]  # 1e-5 .. ~8
    loss = [2.3 if lr < 1e-3 else max(0.3, 2.3 - 0.6 * (torch.tensor(lr / 1e-3).log10().item())) for lr in lrs]
    loss = [v if lr < 1 else 0.3 + (lr - 1) * 2 for v, lr in zip(loss, lrs)]
    r = good_range(lrs, loss, "diverged (test)")
    assert 1e-3 < r["low"] < r["high"] <= 1.0 + 1e-9 and r["too_high"] > r["high"]
    flat = good_range(lrs, [2.3] * len(lrs), "max lr reached")
    assert flat["low"] is None and flat["too_high"] is None


def test_unknown_check_is_a_user_error(splits, config):
    from convladder.errors import UserError

    with pytest.raises(UserError, match="unknown doctor check"):
        doctor(SMALL_SPEC, splits, config, only=("spleen",))


def test_cli_exit_status_and_json(tmp_path):
    from typer.testing import CliRunner

    from convladder.cli import build_app
    from convladder.errors import UserError

    runner = CliRunner()
    base = ["doctor", SMALL_SPEC, "--data", "synthetic", "--set", "val_size=400", "--batch-size", "64"]
    ok = runner.invoke(build_app(), base + ["--only", "data,init,gradients", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["ok"] and [c["name"] for c in data["checks"]] == ["data", "init", "gradients"]
    bad = runner.invoke(build_app(), base + ["--lr", "30", "--only", "lr"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.stdout and "learning rate" in bad.stdout
    wrong = runner.invoke(build_app(), ["doctor", SMALL_SPEC, "--data", "synthetic", "--only", "kidneys"])
    assert isinstance(wrong.exception, UserError)  # cli.main prints it as one line, exit 2


def test_html_page_shows_checks_and_figures(healthy, tmp_path):
    from convladder.report.doctorpage import write_page

    path = write_page(json.loads(healthy.to_json()), tmp_path / "doctor.html")
    text = path.read_text()
    for title in ("overfit one batch", "learning rate (LR range test)", "why it matters", "fig-doctor_samples"):
        assert title in text
    assert text.count("<svg") >= 5 and "data:image/png;base64," in text  # curves inline, images as PNG
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # self-contained: nothing fetched
