"""Issue 33's levers bn_lr, bn_weight and first_layer (generated data, CPU, seconds each)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from cli_util import run_cli
from convladder.data.normalise import to_unit
from convladder.errors import UserError
from convladder.runs.reader import read_weights
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig, build_config
from convladder.train.device_data import DeviceData, split_indices, synthetic_splits
from convladder.train.models import handing_over
from convladder.train.loop import resume, run_to_end, train, train_epochs, train_seeds
from convladder.train.optim import schedule_tables
from convladder.train.progress import recipe_text
from convladder.train.runenv import prepare
from convladder.train.step import TrainStep
from convladder.train.whiten import WHITEN_EPS, conv_patches, first_conv, whiten_first_layer
from run_util import metrics_rows

TINY = ("c1[conv3x3(8, bias=false) relu bn dropout(0.05)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")
NO_BN = "c1[conv3x3(8) relu] t1[maxpool2x2 conv1x1(8) relu] out[gap conv1x1(10) logsoftmax]"
CPU = torch.device("cpu")
OPTIMIZERS = [("sgd", 0.05), ("adam", 0.01), ("adamw", 0.01), ("adadelta", 1.0)]


def cfg(**kw) -> TrainConfig:
    base = dict(model=TINY, dataset="synthetic", epochs=1, batch_size=64, val_size=256, lr=0.05, seed=5,
                threads=1, clean_train_eval=512, device="cpu")
    return TrainConfig(**{**base, **kw})



def stepped(config: TrainConfig, steps: int):
    """(initial state_dict, model after `steps` training steps, the TrainStep) of a fresh prepared model."""
    setup = prepare(config, synthetic_splits(), CPU)
    start = {k: v.clone() for k, v in setup.model.state_dict().items()}
    lrs, moms = schedule_tables(config, setup.data.steps_per_epoch(config.batch_size))
    step = TrainStep(setup.model, setup.data, config, CPU, [torch.Generator().manual_seed(config.seed)], lrs, moms)
    step.new_epoch()
    for _ in range(steps):
        step()
    return start, setup.model, step


def bn_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(BatchNorm weight names, bias names) of `model`'s state_dict."""
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return [f"{n}.weight" for n in bns], [f"{n}.bias" for n in bns]


# -- the defaults change nothing ---------------------------------------------------------------------------

# Written by the code before bn_lr/bn_weight/first_layer existed (commit 498878a, this machine's CPU, 1 thread):
# at their defaults a fixed-seed run must not move a single bit.
BEFORE = {
    "sgd": [{"epoch": 1, "lr": 0.0049999999999999975, "lr_last": 5e-05, "train_loss": 2.1869137627737865,
             "train_acc": 34.654017857142854, "val_loss": 2.1416800022125244, "val_acc": 32.03125,
             "test_loss": 2.1658287048339844, "test_acc": 24.609375}],
    "adam": [{"epoch": 1, "lr": 0.0009999999999999992, "lr_last": 1e-05, "train_loss": 1.9937406267438615,
              "train_acc": 47.433035714285715, "val_loss": 1.8471369743347168, "val_acc": 46.875,
              "test_loss": 1.8723405599594116, "test_acc": 43.5546875}],
}


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adam", 0.01)])
def test_the_defaults_leave_a_fixed_seed_run_bit_identical(tmp_path, optimizer, lr):
    store = RunStore(tmp_path)
    config = TrainConfig.from_dict({**cfg(optimizer=optimizer, lr=lr).to_dict(), "bn_lr": 1.0, "bn_weight": "learn",
                                    "first_layer": "learn"})
    result = train(config, store)
    assert metrics_rows(store, result.run_id) == BEFORE[optimizer]
    assert "first_layer" not in store.read_env(result.run_id)


# -- BN learning rate and freezing ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_bn_lr_scales_the_bn_step_of_every_optimiser(optimizer, lr):
    plain = cfg(optimizer=optimizer, lr=lr, schedule="none")
    start, one, _ = stepped(plain, 1)
    _, half, step = stepped(plain.replace(bn_lr=0.5), 1)
    weights, biases = bn_names(one)
    a, b = one.state_dict(), half.state_dict()
    for name in weights + biases:
        moved = a[name] - start[name]
        assert moved.abs().max() > 0
        torch.testing.assert_close(b[name] - start[name], 0.5 * moved, rtol=1e-4, atol=1e-7)
    assert torch.equal(a["c1.0.weight"], b["c1.0.weight"])  # the other parameters step exactly as before
    if optimizer != "sgd":  # torch's optimisers: the BN group's own lr tensor follows the schedule's
        assert float(step.optimizer.param_groups[1]["lr"]) == pytest.approx(0.5 * step.lr_at(0))


@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_bn_lr_0_leaves_bn_weight_and_bias_unchanged_while_convs_change(optimizer, lr):
    start, model, _ = stepped(cfg(optimizer=optimizer, lr=lr, bn_lr=0.0), 5)
    weights, biases = bn_names(model)
    now = model.state_dict()
    assert all(torch.equal(now[n], start[n]) for n in weights + biases)
    assert not torch.equal(now["c1.0.weight"], start["c1.0.weight"])
    assert not torch.equal(now["c2.0.weight"], start["c2.0.weight"])


def test_bn_weight_frozen_keeps_gamma_at_1_in_the_saved_and_ema_weights(tmp_path):
    store = RunStore(tmp_path)
    result = train(cfg(bn_weight="frozen", ema=0.9, epochs=2), store)
    folder = store.root / result.run_id
    start, _, _ = stepped(cfg(), 0)
    for which in ("final", "best"):  # the EMA's weights are what is saved with ema
        saved = read_weights(folder, which)
        weights = [k for k in saved if k.endswith(".weight") and saved[k].dim() == 1]
        assert weights and all(torch.equal(saved[k], torch.ones_like(saved[k])) for k in weights)
        biases = [k[: -len("weight")] + "bias" for k in weights]
        assert any(not torch.equal(saved[k], start[k]) for k in biases)  # the biases trained


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adam", 0.01)])
def test_resume_with_bn_groups_continues_bit_for_bit(tmp_path, optimizer, lr):
    config = cfg(optimizer=optimizer, lr=lr, bn_lr=0.5, epochs=2)
    store = RunStore(tmp_path / "cut")
    epochs = train_epochs(config, store)
    next(epochs)
    epochs.close()  # stopped after epoch 1
    [record] = store.list_runs()
    resumed = resume(record.id, store)
    straight_store = RunStore(tmp_path / "straight")
    straight = run_to_end(train_epochs(config, straight_store))
    assert metrics_rows(store, resumed.run_id) == metrics_rows(straight_store, straight.run_id)
    saved = torch.load(store.root / record.id / "resume.pt", weights_only=True)
    groups = saved["optimizer"]["param_groups"] if "optimizer" in saved else None
    if groups is not None:
        assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 0.5]


def test_data_parallel_and_batched_seeds_keep_frozen_parameters_frozen(tmp_path):
    start, _, _ = stepped(cfg(), 0)
    weights, biases = bn_names(stepped(cfg(), 0)[1])
    parallel = train(cfg(bn_lr=0.0, data_parallel=2), RunStore(tmp_path / "dp"))
    saved = read_weights(RunStore(tmp_path / "dp").root / parallel.run_id)
    assert all(torch.equal(saved[n], start[n]) for n in weights + biases)
    results, _ = train_seeds(cfg(model=TINY.replace(" dropout(0.05)", ""), first_layer="whiten-frozen", seeds=2,
                                 batched="on", seed=5), RunStore(tmp_path / "b"))
    for r in results:
        begin, _, _ = stepped(cfg(model=TINY.replace(" dropout(0.05)", ""), first_layer="whiten-frozen", seed=r.seed), 0)
        saved = read_weights(RunStore(tmp_path / "b").root / r.run_id)
        assert torch.equal(saved["c1.0.weight"], begin["c1.0.weight"])
        assert not torch.equal(saved["c2.0.weight"], begin["c2.0.weight"])


def test_bn_levers_on_a_network_without_batchnorm_are_refused():
    with pytest.raises(UserError, match="no BatchNorm") as err:
        train(cfg(model=NO_BN, bn_lr=0.5))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="bn_lr"):
        build_config(options={"bn_lr": -1})
    with pytest.raises(UserError, match="bn_weight"):
        build_config(options={"bn_weight": "fixed"})


# -- first-layer whitening -----------------------------------------------------------------------------------

def training_images(data: DeviceData) -> torch.Tensor:
    return data.normalise(to_unit(data.x_train))


@pytest.mark.parametrize("width", [8, 12])
def test_whitened_filters_decorrelate_the_training_patches(width):
    spec = TINY.replace("conv3x3(8,", f"conv3x3({width},", 1)
    config = cfg(model=spec, first_layer="whiten")
    setup = prepare(config, synthetic_splits(), CPU)
    record = setup.levers["first_layer"]
    conv = setup.model.c1[0]
    assert record["layer"] == "c1.0" and record["images"] == setup.data.n_train  # all 1,792: fewer than 5,000
    patches = conv_patches(conv, training_images(setup.data))
    responses = (patches - patches.mean(0)) @ conv.weight.double().reshape(width, -1).T
    cov = responses.T @ responses / len(responses)
    values = torch.tensor(record["eigenvalues"], dtype=torch.float64)
    kept = min(width, 9)
    assert record["components"] == kept and record["whitened_channels"] == width
    expected = torch.diag(values / (values + WHITEN_EPS))[:kept, :kept]
    torch.testing.assert_close(cov[:kept, :kept], expected, atol=2e-3, rtol=2e-3)
    assert (torch.diag(cov[:kept, :kept]) > 0.95).all()  # ~identity: every kept component is far above eps
    if width > 9:  # channels 9.. are the negated leading components
        assert torch.equal(conv.weight[9:], -conv.weight[: width - 9])


def test_whitening_reads_training_images_only_and_is_the_same_for_every_seed():
    splits = synthetic_splits()
    config = cfg(first_layer="whiten")
    _, val_idx = split_indices(len(splits.x_train), config.val_size, config.split_seed)
    changed = splits.x_train.clone()
    changed[val_idx] = 255 - changed[val_idx]  # the validation images only
    other = type(splits)(splits.name, changed, splits.y_train, 255 - splits.x_test, splits.y_test, splits.classes,
                         splits.mean, splits.std)
    a = prepare(config, splits, CPU).model.c1[0].weight
    b = prepare(config.replace(seed=9), other, CPU).model.c1[0].weight
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # only the summation order may differ


def test_whiten_frozen_keeps_the_filters_and_whiten_trains_them(tmp_path):
    store = RunStore(tmp_path)
    for mode, kept in (("whiten-frozen", True), ("whiten", False)):
        start, _, _ = stepped(cfg(first_layer=mode), 0)
        result = train(cfg(first_layer=mode, ema=0.9), store)
        saved = read_weights(store.root / result.run_id)
        assert torch.equal(saved["c1.0.weight"], start["c1.0.weight"]) is kept
        assert not torch.equal(saved["c2.0.weight"], start["c2.0.weight"])
        env = store.read_env(result.run_id)["first_layer"]
        assert env["scheme"] == mode and env["frozen"] is kept and env["image_seed"] == 0
        assert result.params == 1512  # the network's count: freezing does not shrink it


class FunctionalFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, bias=False)
        self.out = nn.Conv2d(8, 10, 1, bias=False)

    def forward(self, x):
        x = torch.relu(self.conv(x * 2.0))  # something runs on the image before the conv
        return self.out(x).mean((2, 3))


@pytest.mark.parametrize("model,words", [
    ("c0[maxpool2x2] c1[conv3x3(8, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]",
     "is a MaxPool2d, not a 2-D convolution"),
    (FunctionalFirst, "does not see the image as it is"),
])
def test_whitening_where_it_cannot_apply_is_one_line(model, words):
    with handing_over(model) if not isinstance(model, str) else contextlib.nullcontext(model) as ref:
        with pytest.raises(UserError, match=words) as err:
            train(cfg(model=ref, first_layer="whiten"))
    assert "\n" not in str(err.value) and "first_layer=learn" in str(err.value)


def test_a_grouped_first_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU())
    with pytest.raises(UserError, match="grouped"):
        first_conv(model, (2, 8, 8), "first_layer=whiten")


def test_strided_dilated_padded_first_convs_take_their_own_patches():
    conv = nn.Conv2d(1, 4, 3, stride=2, dilation=2, padding=1, padding_mode="reflect", bias=False)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    patches = conv_patches(conv, x)  # (N*L, 9): the conv as a matrix product over them
    with torch.no_grad():
        out = conv.double()(x)
    mine = (patches @ conv.weight.reshape(4, -1).T).reshape(3, -1, 4).transpose(1, 2).reshape(out.shape)
    torch.testing.assert_close(mine, out)


def test_the_cli_refusal_and_the_recipe_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--model", NO_BN, "--dataset", "synthetic", "--epochs", "1",
                             "--val-size", "256", "--bn-weight", "frozen", "--runs", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no BatchNorm" in err
    text = recipe_text(cfg(bn_lr=0.5, first_layer="whiten-frozen"))
    assert "BN lr x0.5" in text and "first layer whitened (frozen)" in text
    assert "BN weight frozen at 1" in recipe_text(cfg(bn_weight="frozen"))
    assert "BN" not in recipe_text(cfg()) and "whitened" not in recipe_text(cfg())


def test_a_biased_same_padded_conv_gets_zero_mean_whitened_responses():
    model = nn.Sequential(nn.Conv2d(1, 20, 3, padding="same", bias=True), nn.ReLU())
    images = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
                                            3, 1, 1) + 0.5  # correlated neighbours, like strokes; mean not 0
    before = model[0].weight.detach().clone()
    record = whiten_first_layer(model, images, frozen=False, where="first_layer=whiten", image_seed=0)
    conv = model[0]
    with torch.no_grad():
        out = conv(images).transpose(0, 1).reshape(20, -1).double()  # (channels, responses)
    assert out[:18].mean(1).abs().max() < 1e-4  # bias = -W @ mean patch
    assert (out[:18] - conv.bias[:18, None].double()).mean(1).abs().max() > 0.1  # which it had to correct
    cov = torch.cov(out[:9])
    values = torch.tensor(record["eigenvalues"], dtype=torch.float64)
    torch.testing.assert_close(cov, torch.diag(values / (values + WHITEN_EPS)), atol=5e-3, rtol=5e-3)
    assert record["negated_pairs"] == 9 and record["kept_init_channels"] == 2
    assert torch.equal(conv.weight[18:], before[18:])  # beyond 2d the init stays
