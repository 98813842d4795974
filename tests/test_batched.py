"""Batched copies: packing and unpacking, the first steps equal N separate runs, --seeds N stores N ordinary runs."""

from __future__ import annotations

import copy

import pytest
import torch

from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.train.batched import unpack_optimizer_state, unpack_state, why_not_batchable, widen
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, synthetic_splits
from convladder.train.loop import resume, train_seeds
from convladder.train.models import create_model
from convladder.train.optim import schedule_tables
from convladder.train.progress import Progress
from convladder.train.runenv import build_model
from convladder.train.step import TrainStep, evaluate_copies, recalibrate_bn

# no dropout: one mask over the batched tensor cannot equal N separate masks (see train/batched.py)
CONV = ("c1[conv3x3(8, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")
FC = "c1[conv3x3(6) relu bn maxpool2x2] c2[conv3x3(8, groups=2) relu] head[flatten fc(16) relu bn fc(10) logsoftmax]"
SEEDS = [3, 4, 5]


def config(model: str = CONV, **kw) -> TrainConfig:
    base = dict(model=model, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3, threads=1,
                erase=0.3, clean_train_eval=256)
    return TrainConfig(**{**base, **kw})


def models(spec: str):
    return [build_model(spec, (1, 28, 28), s)[0] for s in SEEDS]


@pytest.mark.parametrize("spec", [CONV, FC])
def test_widen_then_unpack_gives_each_copy_back_and_the_same_outputs(spec):
    nets = models(spec)
    batched = widen(nets)
    assert sum(p.numel() for p in batched.parameters()) == 3 * sum(p.numel() for p in nets[0].parameters())
    for i, net in enumerate(nets):
        back = unpack_state(batched.state_dict(), i, 3)
        assert back.keys() == net.state_dict().keys()
        assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    x = torch.randn(5, 1, 28, 28)
    batched.eval()
    out = batched.logits(x.repeat(1, 3, 1, 1))
    assert out.shape == (5, 3, 10)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[:, i], net.eval().logits(x), rtol=1e-4, atol=1e-5)


def test_what_cannot_be_batched_says_why():
    assert why_not_batchable(models(CONV)[0]) is None
    prelu, _ = build_model("c1[conv3x3(8) prelu] out[gap conv1x1(10)]", (1, 28, 28), 1)
    assert "prelu" in why_not_batchable(prelu)
    assert "not a network built from a spec" in why_not_batchable(torch.nn.Sequential(torch.nn.Flatten()))


@pytest.mark.parametrize("spec, optimizer, crop", [(CONV, "sgd", 0), (FC, "sgd", 0), (CONV, "adam", 0), (CONV, "sgd", 20)])
def test_first_steps_of_a_batched_run_equal_separate_runs(spec, optimizer, crop):
    cfg = config(spec, optimizer=optimizer, lr=0.1 if optimizer == "sgd" else 0.003, label_smoothing=0.05)
    data = DeviceData(synthetic_splits(), cfg, torch.device("cpu"))
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    nets = models(spec)
    batched = widen([copy.deepcopy(n) for n in nets])
    cpu = torch.device("cpu")
    step = TrainStep(batched, data, cfg, cpu, [torch.Generator().manual_seed(s) for s in SEEDS], lrs, moms)
    singles = [TrainStep(n, data, cfg, cpu, [torch.Generator().manual_seed(s)], lrs, moms) for n, s in zip(nets, SEEDS)]
    for s in [step, *singles]:
        s.model.train()
        s.new_epoch(crop)
        for _ in range(6):
            s()
    for i, single in enumerate(singles):
        mine = unpack_state(batched.state_dict(), i, 3)
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(mine[k], v, rtol=2e-4, atol=2e-5, msg=f"copy {i} {k}")
        opt = unpack_optimizer_state(step.optimizer.state_dict(), i, 3)
        for j, state in single.optimizer.state_dict()["state"].items():
            for name, v in state.items():
                # In norm, not per element: the optimiser state sums every step's gradient, and a max-pool tie or
                # a ReLU at 0 decided the other way by a float's last bit moves single elements (the same run on 1
                # and 2 threads: 6e-4 of the norm after 6 steps, up to 1.5e-2 of one element, on a Xeon with
                # AVX-512). A wrong seed, shard or grouping is off by far more.
                diff = float((opt["state"][j][name] - v).norm())
                assert diff <= 2e-3 * float(v.norm()) + 1e-6, (i, j, name, diff, float(v.norm()))
    loss, acc, _ = step.read_epoch()
    for i, single in enumerate(singles):
        l1, a1, _ = single.read_epoch()
        assert loss[i] == pytest.approx(l1[0], rel=1e-4) and acc[i] == pytest.approx(a1[0], abs=0.2)
    evals = evaluate_copies(batched, data.x_test, data.y_test, data, 500, copies=3)
    for i, single in enumerate(singles):
        (l1, a1), = evaluate_copies(single.model, data.x_test, data.y_test, data, 500)
        assert evals[i][0] == pytest.approx(l1, rel=1e-3) and evals[i][1] == pytest.approx(a1, abs=0.3)


def test_train_seeds_batched_stores_ordinary_runs_like_separate_training(tmp_path):
    stores = {mode: RunStore(tmp_path / mode) for mode in ("on", "off")}
    out = {mode: train_seeds(config(seeds=3, batched=mode), stores[mode]) for mode in stores}
    for (a, b) in zip(out["on"][0], out["off"][0]):
        assert a.seed == b.seed and a.status == b.status == "completed"
        assert a.final["test_acc"] == pytest.approx(b.final["test_acc"], abs=1.0)
        assert a.final["train_acc"] == pytest.approx(b.final["train_acc"], abs=1.0)
    store = stores["on"]
    runs = store.list_runs()
    assert sorted(r.seed for r in runs) == SEEDS and all(r.status == "completed" for r in runs)
    for r in runs:
        assert store.read_config(r.id)["seed"] == r.seed and len(store.read_metrics(r.id)) == 2
        model = create_model(store.root / r.id)  # the ordinary single-network state_dict
        assert model.logits(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert store.read_env(r.id)["batched_with_seeds"] == SEEDS
    assert out["on"][1]["seeds"] == SEEDS


class StopAt(Progress):
    def __init__(self, n: int):
        self.n = n

    def epoch_start(self, epoch, epochs, steps):
        if epoch == self.n:
            raise KeyboardInterrupt


def test_an_interrupted_batched_run_resumes_each_seed_as_an_ordinary_run(tmp_path):
    cfg = config(seeds=3, batched="on", epochs=3)
    full, _ = train_seeds(cfg, RunStore(tmp_path / "full"))
    store = RunStore(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train_seeds(cfg, store, StopAt(2))
    runs = store.list_runs(status="interrupted")
    assert sorted(r.seed for r in runs) == SEEDS
    for r in runs:
        resumed = resume(r.id, store)
        want = next(f for f in full if f.seed == r.seed)
        assert resumed.status == "completed" and resumed.epochs_done == 3
        assert resumed.final["test_acc"] == pytest.approx(want.final["test_acc"], abs=1.0)


def test_batched_on_for_a_network_that_cannot_be_batched_is_a_user_error():
    spec = "c1[conv3x3(8) prelu bn] out[gap conv1x1(10) logsoftmax]"
    with pytest.raises(UserError, match="prelu"):
        train_seeds(config(spec, seeds=2, batched="on", epochs=1))
    results, stats = train_seeds(config(spec, seeds=2, batched="auto", epochs=1))  # CPU: one by one
    assert [r.seed for r in results] == [3, 4]


# -- streams: N ordinary models stepped together (one CUDA graph on CUDA; one after another elsewhere) ---------

DROP = ("c1[conv3x3(8, bias=false) relu bn dropout(0.1)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn dropout(0.1)] out[gap conv1x1(10, bias=false) logsoftmax]")
OWN_NET = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 10, 3)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        x = self.drop(F.max_pool2d(F.relu(self.conv1(x)), 2))
        return F.log_softmax(F.adaptive_avg_pool2d(self.conv2(x), 1).flatten(1), dim=1)
'''
TIMING = ("epoch_time_s", "train_time_s", "train_images_per_s")


def _same_runs(store_a: RunStore, store_b: RunStore) -> None:
    """Every seed's metrics (timing aside) and final weights are identical in the two stores."""
    a = {r.seed: r for r in store_a.list_runs()}
    b = {r.seed: r for r in store_b.list_runs()}
    assert a.keys() == b.keys() and len(a) > 1
    for seed in a:
        ra, rb = a[seed], b[seed]
        assert ra.status == rb.status == "completed"
        ma, mb = store_a.read_metrics(ra.id), store_b.read_metrics(rb.id)
        assert len(ma) == len(mb)
        for x, y in zip(ma, mb):
            assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}
        wa = create_model(store_a.root / ra.id).state_dict()
        wb = create_model(store_b.root / rb.id).state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wb)


@pytest.mark.parametrize("model", ["spec", "own"])
def test_streams_on_cpu_equals_sequential_runs_seed_by_seed(tmp_path, model):
    # dropout and augmentation on: each copy must draw exactly its own seed's random streams
    spec = DROP
    if model == "own":
        (tmp_path / "net.py").write_text(OWN_NET)
        spec = f"{tmp_path / 'net.py'}:Net"
    stores = {mode: RunStore(tmp_path / mode) for mode in ("streams", "off")}
    out = {mode: train_seeds(config(spec, seeds=3, batched=mode), stores[mode]) for mode in stores}
    for a, b in zip(out["streams"][0], out["off"][0]):
        assert a.seed == b.seed and a.final["test_acc"] == b.final["test_acc"]
        assert a.final == b.final
    _same_runs(stores["streams"], stores["off"])
    env = stores["streams"].read_env(stores["streams"].list_runs()[0].id)
    assert env["batched_with_seeds"] == SEEDS and env["batched_mode"] == "streams"
    # the copies really differ (own seeds): not one run stored three times
    finals = {r.final["train_acc_seen"] for r in out["streams"][0]}
    assert len(finals) == 3


def test_crop_epochs_in_streams_equal_sequential_runs(tmp_path):
    stores = {mode: RunStore(tmp_path / mode) for mode in ("streams", "off")}
    for mode, store in stores.items():
        train_seeds(config(DROP, seeds=2, batched=mode, crop=20, crop_epochs=1), store)
    _same_runs(stores["streams"], stores["off"])


def test_streams_seeds_differ_from_a_shared_dropout_stream(tmp_path):
    # the equivalence above fails when the copies share one dropout stream (each copy's RNG state is its own)
    from convladder.train import batched

    class Shared(batched.CopyRng):
        def own(self, i):
            return batched.contextlib.nullcontext()

    stores = {m: RunStore(tmp_path / m) for m in ("shared", "off")}
    cfg = config(DROP, seeds=2, batched="streams", epochs=1)
    orig = batched.CopyRng
    batched.CopyRng = Shared
    try:
        train_seeds(cfg, stores["shared"])
    finally:
        batched.CopyRng = orig
    train_seeds(cfg.replace(batched="off"), stores["off"])
    with pytest.raises(AssertionError):
        _same_runs(stores["shared"], stores["off"])


def test_an_interrupted_streams_run_resumes_each_seed_to_its_sequential_result(tmp_path):
    cfg = config(DROP, seeds=3, epochs=3)
    full = RunStore(tmp_path / "full")
    train_seeds(cfg.replace(batched="off"), full)
    store = RunStore(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train_seeds(cfg.replace(batched="streams"), store, StopAt(3))
    runs = store.list_runs(status="interrupted")
    assert sorted(r.seed for r in runs) == SEEDS
    for r in runs:
        assert len(store.read_metrics(r.id)) == 2
        assert resume(r.id, store).status == "completed"
    _same_runs(store, full)  # bit for bit on CPU: each copy's resume.pt holds its own RNG states


def test_batched_mode_choices():
    from convladder.train.loop import batched_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object only: no GPU needed
    assert batched_mode(config(seeds=3), cuda) == "streams"
    assert batched_mode(config(seeds=3), cpu) is None  # auto: one after another on the CPU
    assert batched_mode(config(seeds=1), cuda) is None
    assert batched_mode(config(seeds=3, batched="streams"), cpu) == "streams"
    assert batched_mode(config(seeds=3, batched="on"), cuda) == "grouped"
    assert batched_mode(config(seeds=3, batched="grouped"), cpu) == "grouped"
    assert batched_mode(config(seeds=3, batched="off"), cuda) is None
    with pytest.raises(UserError, match="batched 'parallel' is not one of"):
        train_seeds(config(seeds=2, batched="parallel"))


@pytest.mark.parametrize("mode", ["on", "streams"])
def test_precise_bn_recalibrates_each_copy_of_a_batched_run(tmp_path, mode):
    store = RunStore(tmp_path / mode)
    train_seeds(config(DROP, seeds=2, batched=mode, precise_bn=400), store)
    data = DeviceData(synthetic_splits(), config(), torch.device("cpu"))
    runs = store.list_runs()
    assert len(runs) == 2 and store.read_env(runs[0].id)["batched_mode"] == ("grouped" if mode == "on" else mode)
    for r in runs:
        stored = create_model(store.root / r.id)
        again = copy.deepcopy(stored)
        recalibrate_bn(again, data.x_train[:400], data, 500)
        for (k, a), b in zip(stored.state_dict().items(), again.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), k  # already recalibrated
        assert store.read_config(r.id)["precise_bn"] == 400
