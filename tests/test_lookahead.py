"""Lookahead (config `lookahead`, `lookahead_alpha`; train/lookahead.py): off changes nothing, the step equals a
hand-written loop, resume, data parallel, batched copies, bad values, labels (generated data, CPU, seconds)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from cli_util import run_cli
from convladder.cli import build_app
from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.train.batched import unpack_state, widen
from convladder.train.config import build_config
from convladder.train.device_data import DeviceData, synthetic_splits
from convladder.train.lookahead import Lookahead
from convladder.train.loop import resume, run_to_end, train, train_epochs, train_seeds
from convladder.train.optim import schedule_tables
from convladder.train.parallel import ParallelStep
from convladder.train.runenv import build_model
from convladder.train.step import TrainStep
from run_util import metrics_rows
from test_ema import BEFORE_EMA, tiny_config

CPU = torch.device("cpu")
# no BatchNorm, no dropout: a data-parallel replica's share is then exactly its part of the whole batch's gradient
PLAIN = ("c1[conv3x3(8, bias=false) relu] t1[maxpool2x2 conv1x1(8, bias=false) relu] "
         "c2[conv3x3(16, bias=false) relu] out[gap conv1x1(10, bias=false) logsoftmax]")
CONV = ("c1[conv3x3(8, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")


def _step(cfg, seed: int = 1, model=None) -> TrainStep:
    data = DeviceData(synthetic_splits(), cfg, CPU)
    model = model if model is not None else build_model(cfg.model, data.image_shape, cfg.seed)[0]
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    step = TrainStep(model.train(), data, cfg, CPU, [torch.Generator().manual_seed(seed)], lrs, moms)
    step.new_epoch()
    return step


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lookahead_off_leaves_a_fixed_seed_run_bit_identical(tmp_path):
    """lookahead=0 (and its alpha at the default) moves no bit of the run recorded before the key existed."""
    store = RunStore(tmp_path)
    result = train(tiny_config(lookahead=0), store)
    assert metrics_rows(store, result.run_id) == BEFORE_EMA
    assert "lookahead" not in result.extra and "lookahead" not in result.summary()
    assert _step(tiny_config(lookahead=0)).lookahead is None


@pytest.mark.parametrize("k, alpha", [(3, 0.5), (4, 0.8)])
def test_the_class_equals_a_plain_torch_loop(k, alpha):
    """SGD with momentum, then every k steps slow += alpha * (fast - slow), fast = slow; momentum buffers kept."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ref = copy.deepcopy(net)
    xs, ys = torch.randn(14, 16, 6), torch.randint(0, 3, (14, 16))

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)

    opt, ref_opt = sgd(net), sgd(ref)
    la = Lookahead(net, k, alpha)
    slow = [p.detach().clone() for p in ref.parameters()]
    for t, (x, y) in enumerate(zip(xs, ys)):
        for model, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            o.step()
        la.update(torch.tensor(t))
        if (t + 1) % k == 0:
            with torch.no_grad():
                for s, p in zip(slow, ref.parameters()):
                    s += alpha * (p - s)
                    p.copy_(s)
    for (name, p), q, s in zip(net.named_parameters(), ref.parameters(), slow):
        assert torch.equal(p, q), name
        assert torch.equal(la.state_dict()[name], s), name
    # the steps since the last sync (14 = 4 k + 2 at k 3, 3 k + 2 at k 4) left fast and slow apart
    assert any(not torch.equal(p, s) for p, s in zip(ref.parameters(), slow))
    for p, q in zip(net.parameters(), ref.parameters()):  # the momentum survived every sync, as in the reference
        assert torch.equal(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"])


def test_the_training_step_syncs_after_the_optimiser_and_before_the_ema():
    """TrainStep with lookahead = the same step without it and the sync by hand after each step; the EMA averages
    the weights the model holds after the sync."""
    k, alpha = 3, 0.6
    cfg = tiny_config(model=CONV, lookahead=k, lookahead_alpha=alpha, ema=0.9)
    step = _step(cfg)
    plain = _step(cfg.replace(lookahead=0, lookahead_alpha=0.5, ema=0.0), model=copy.deepcopy(step.model))
    slow = _params(plain.model)
    ema = {n: v.detach().clone().double() for n, v in step.model.state_dict().items()}
    for t in range(11):
        step()
        plain()
        if (t + 1) % k == 0:
            with torch.no_grad():
                for name, p in plain.model.named_parameters():
                    slow[name] += alpha * (p - slow[name])
                    p.copy_(slow[name])
        d = min(0.9, (1 + t) / (10 + t))
        for n, v in step.model.state_dict().items():
            ema[n] = d * ema[n] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    for (name, p), q in zip(step.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(p, q), name
        assert torch.equal(step.lookahead.state_dict()[name], slow[name]), name
    for n, v in step.ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), ema[n], rtol=1e-5, atol=1e-6, msg=n)
    # BatchNorm's running statistics are the model's own: the lookahead holds trainable parameters only
    assert set(step.lookahead.state_dict()) == {n for n, p in step.model.named_parameters() if p.requires_grad}


def test_an_interrupted_and_resumed_run_equals_an_unbroken_one(tmp_path):
    """28 steps per epoch and k = 5: the slow weights at the break (last synced at step 25) must be restored."""
    store = RunStore(tmp_path / "runs")
    cfg = tiny_config(lookahead=5, lookahead_alpha=0.5, epochs=3, device="cpu")
    epochs = train_epochs(cfg, store)
    next(epochs)
    epochs.close()  # stopped after epoch 1
    [record] = store.list_runs()
    saved = torch.load(store.root / record.id / "resume.pt", weights_only=True)
    assert set(saved["lookahead"]) == {n for n, p in build_model(cfg.model, (1, 28, 28), 3)[0].named_parameters()}
    resumed = resume(record.id, store)
    straight_store = RunStore(tmp_path / "straight")
    straight = run_to_end(train_epochs(cfg, straight_store))
    assert resumed.final == straight.final
    assert metrics_rows(store, resumed.run_id) == metrics_rows(straight_store, straight.run_id)
    a = torch.load(store.root / resumed.run_id / "resume.pt", weights_only=True)
    b = torch.load(straight_store.root / straight.run_id / "resume.pt", weights_only=True)
    assert all(torch.equal(a[w][n], b[w][n]) for w in ("model", "lookahead") for n in a[w])


@pytest.mark.parametrize("replicas", [2, 4])
def test_data_parallel_steps_like_one_model_as_the_baseline_does(replicas):
    """The baseline's data-parallel step equals one model's to a tolerance; with lookahead it must too."""
    for lookahead in (0, 2):
        cfg = tiny_config(model=PLAIN, lookahead=lookahead, data_parallel=replicas)
        data = DeviceData(synthetic_splits(), cfg, CPU)
        model = build_model(cfg.model, data.image_shape, cfg.seed)[0].train()
        lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
        single = TrainStep(copy.deepcopy(model), data, cfg, CPU, [torch.Generator().manual_seed(1)], lrs, moms)
        parallel = ParallelStep(model, data, cfg, CPU, torch.Generator().manual_seed(1), lrs, moms, replicas)
        parallel.new_epoch()
        single.new_epoch()
        for _ in range(7):
            parallel()
            single()
        for (name, p), q in zip(parallel.models[0].named_parameters(), single.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"lookahead {lookahead} {name}")
        for m in parallel.models[1:]:  # every replica holds replica 0's (synced) weights after the step
            assert all(torch.equal(a, b) for a, b in zip(m.parameters(), parallel.models[0].parameters()))
        if lookahead:
            slow, want = parallel.main.lookahead.state_dict(), single.lookahead.state_dict()
            assert all(r.lookahead is None for r in parallel.replicas[1:])  # they copy replica 0 after each step
            for name in want:
                torch.testing.assert_close(slow[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_batched_copies_each_run_their_own_lookahead():
    """Grouped copies: the lookahead is elementwise, so copy i's slow and fast weights are its single run's."""
    seeds = [3, 4]
    cfg = tiny_config(model=CONV, lookahead=2, lookahead_alpha=0.7)
    nets = [build_model(cfg.model, (1, 28, 28), s)[0] for s in seeds]
    data = DeviceData(synthetic_splits(), cfg, CPU)
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    batched = TrainStep(widen([copy.deepcopy(n) for n in nets]).train(), data, cfg, CPU,
                        [torch.Generator().manual_seed(s) for s in seeds], lrs, moms)
    singles = [TrainStep(n.train(), data, cfg, CPU, [torch.Generator().manual_seed(s)], lrs, moms)
               for n, s in zip(nets, seeds)]
    for s in [batched, *singles]:
        s.new_epoch()
        for _ in range(5):
            s()
    for i, single in enumerate(singles):
        for which, mine, theirs in (("fast", batched.model.state_dict(), single.model.state_dict()),
                                    ("slow", batched.lookahead.state_dict(), single.lookahead.state_dict())):
            part = unpack_state(mine, i, len(seeds))
            for name, v in theirs.items():
                if v.is_floating_point():
                    torch.testing.assert_close(part[name], v, rtol=2e-4, atol=2e-5, msg=f"copy {i} {which} {name}")


@pytest.mark.parametrize("mode", ["on", "streams"])
def test_batched_seeds_save_each_copys_slow_weights_for_resume(tmp_path, mode):
    """resume.pt of every seed trained together holds that seed's slow weights, as a seed trained alone does."""
    cfg = tiny_config(model=CONV, lookahead=5, epochs=1, seeds=2, batched=mode, clean_train_eval=0)
    store = RunStore(tmp_path / mode)
    train_seeds(cfg, store)
    alone = RunStore(tmp_path / "alone")
    for run in store.list_runs():
        solo = train(cfg.replace(seeds=1, seed=run.seed), alone)
        got = torch.load(store.root / run.id / "resume.pt", weights_only=True)
        want = torch.load(alone.root / solo.run_id / "resume.pt", weights_only=True)
        assert got["lookahead"].keys() == want["lookahead"].keys()
        for name, v in want["lookahead"].items():
            slow_off = float((got["lookahead"][name] - v).norm())
            if mode == "streams":  # on the CPU each copy steps alone under its own RNG: bit for bit
                assert slow_off == 0, (run.seed, name)
            else:  # grouped kernels sum in another order: the slow weights may drift as far as the fast ones do
                fast_off = float((got["model"][name] - want["model"][name]).norm())
                assert slow_off <= 2 * fast_off + 1e-6 * float(v.norm()), (run.seed, name, slow_off, fast_off)


def test_bad_values_are_one_line_user_errors(capsys):
    assert build_config(None, {}, ["lookahead=5", "lookahead_alpha=0.8"]).lookahead == 5
    for bad, words in [("lookahead=-1", "whole number >= 0"), ("lookahead=2.5", "not a valid int"),
                       ("lookahead_alpha=0", r"\(0, 1\]"), ("lookahead_alpha=1.5", r"\(0, 1\]"),
                       ("lookahead_alpha=nan", r"\(0, 1\]")]:
        with pytest.raises(UserError, match=words):
            build_config(None, {"lookahead": 5}, [bad])
    with pytest.raises(UserError, match="without lookahead"):
        build_config(None, {}, ["lookahead_alpha=0.3"])
    assert build_config(None, {}, ["lookahead=3", "lookahead_alpha=1"]).lookahead_alpha == 1.0
    out = CliRunner().invoke(build_app(), ["train", "--help"], terminal_width=200)
    assert "--lookahead " in out.output and "--lookahead-alpha" in out.output
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "lookahead=-2")
    assert code == 2 and "lookahead" in err and len(err.strip().splitlines()) == 1


def test_recipe_and_result_say_lookahead(tmp_path):
    from convladder.train.progress import recipe_text

    assert "lookahead k=5, alpha 0.5 (fast weights evaluated and saved)" in recipe_text(tiny_config(lookahead=5))
    assert "lookahead" not in recipe_text(tiny_config())
    result = train(tiny_config(lookahead=4, lookahead_alpha=0.8, epochs=1), RunStore(tmp_path))
    assert "lookahead k=4, alpha 0.8" in result.summary() and "lookahead k=4, alpha 0.8" in str(result)
    saved = json.loads((tmp_path / result.run_id / "result.json").read_text())
    assert saved["extra"]["lookahead"].startswith("lookahead k=4, alpha 0.8")
