"""The training step: schedule tables, TensorSGD, the step against a hand-written reference, static batches,
the CUDA-graph fallback (tiny generated data, CPU)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from convladder.train.augment import AugmentParams, augment_from, centre_crop
from convladder.errors import UserError
from convladder.train.config import TrainConfig, validate
from convladder.data.normalise import to_unit
from convladder.train.device_data import DeviceData, synthetic_splits
from convladder.train.optim import TensorSGD, momentum_cycle, schedule_tables
from convladder.train.runenv import build_model
from convladder.train.step import StepRunner, TrainStep, recalibrate_bn


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's own schedulers for the config (none, step, onecycle, cosine): the reference schedule_tables is
    checked against (training reads the tables; this lived in train/optim.py, used by these tests only)."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        cycle = momentum_cycle(config)
        high, low = cycle or (0.95, 0.85)  # torch's defaults; unused when the momentum is not cycled
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=config.pct_start,
            div_factor=config.div_factor, final_div_factor=config.final_div_factor, cycle_momentum=cycle is not None,
            base_momentum=low, max_momentum=high)
    if config.schedule == "step":
        every = config.step_size * steps_per_epoch
        factor = lambda step: config.gamma ** (step // every)  # noqa: E731
    elif config.schedule == "cosine":
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


SPEC = ("c1[conv3x3(8, bias=false) relu bn dropout(0.1)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")


def config(**kw) -> TrainConfig:
    base = dict(model=SPEC, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3, threads=1,
                erase=0.3)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [{}, {"optimizer": "adam"}, {"optimizer": "adadelta"}, {"schedule": "step"},
                                {"schedule": "cosine"}, {"schedule": "none"}, {"momentum": 0.0, "nesterov": False},
                                {"epochs": 3, "pct_start": 0.3, "div_factor": 25.0}, {"momentum": 0.8},
                                {"optimizer": "adam", "momentum": 0.8}, {"optimizer": "adam", "schedule": "none",
                                                                          "momentum": 0.7}])
def test_schedule_tables_are_torchs_schedulers(kw):
    cfg, steps = TrainConfig(**kw), 37
    lrs, moms = schedule_tables(cfg, steps)
    p = [torch.zeros(1, requires_grad=True)]
    opt = torch.optim.SGD(p, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(p, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    elif cfg.optimizer == "adadelta":
        opt = torch.optim.Adadelta(p, lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps)
    group = opt.param_groups[0]
    total = cfg.epochs * steps
    assert len(lrs) == len(moms) == total + 1
    for t in range(total + 1):
        assert lrs[t] == pytest.approx(group["lr"], rel=1e-12, abs=1e-15)
        want = group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
        assert moms[t] == pytest.approx(want, rel=1e-12)
        if t < total:
            opt.step()
            sched.step()


def test_onecycle_cycles_the_configured_momentum_and_keeps_the_default_cycle():
    # torch's OneCycleLR cycles 0.95 -> 0.85 whatever the optimiser's momentum: momentum=0.8 changed nothing
    default = schedule_tables(TrainConfig(), 10)[1]
    assert (max(default), min(default), default[0]) == (0.95, 0.85, 0.95)
    for optimizer in ("sgd", "adam"):
        moms = schedule_tables(TrainConfig(momentum=0.8, optimizer=optimizer), 10)[1]
        assert (max(moms), min(moms)) == pytest.approx((0.85, 0.75))
    top = schedule_tables(TrainConfig(momentum=0.98), 10)[1]
    assert (max(top), min(top)) == pytest.approx((0.999, 0.93))  # never 1 or above: the update would not decay
    # the optimiser's own momentum when nothing cycles it: Adam's beta1 is `momentum`, not a fixed 0.9
    assert set(schedule_tables(TrainConfig(optimizer="adam", schedule="none", momentum=0.7), 10)[1]) == {0.7}


def test_momentum_of_one_or_more_is_refused():
    with pytest.raises(UserError, match="momentum .* must be < 1"):
        validate(TrainConfig(momentum=1.0))


@pytest.mark.parametrize("nesterov, wd, mom", [(True, 0.0, 0.9), (False, 5e-4, 0.9), (False, 0.0, 0.0)])
def test_tensor_sgd_matches_torch_sgd_with_changing_lr_and_momentum(nesterov, wd, mom):
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = copy.deepcopy(a)
    lr, m = torch.tensor(0.1), torch.tensor(mom)
    ours = TensorSGD(a.parameters(), lr, m, nesterov=nesterov, weight_decay=wd, use_momentum=mom > 0)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=mom, nesterov=nesterov, weight_decay=wd)
    for step in range(6):
        x = torch.randn(8, 5)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        new_lr, new_m = 0.1 / (step + 2), (mom - 0.01 * step if mom else 0.0)
        lr.fill_(new_lr)
        m.fill_(new_m)
        ref.param_groups[0]["lr"], ref.param_groups[0]["momentum"] = new_lr, new_m
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_tensor_sgd_state_dict_is_torchs_format_and_a_reload_continues_exactly():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    lr, m = torch.tensor(0.05), torch.tensor(0.9)
    opt = TensorSGD(a.parameters(), lr, m, nesterov=True, weight_decay=1e-4)
    xs = [torch.randn(8, 5) for _ in range(6)]

    def step(model, optimiser, x):
        optimiser.zero_grad()
        model(x).pow(2).mean().backward()
        optimiser.step()

    for x in xs[:3]:
        step(a, opt, x)
    saved = copy.deepcopy(opt.state_dict())
    # what torch.optim.Optimizer.state_dict gave for this class (resume.pt files written before stay readable)
    assert saved["param_groups"] == [{"weight_decay": 1e-4, "nesterov": True, "params": [0, 1, 2, 3]}]
    assert sorted(saved["state"]) == [0, 1, 2, 3] and all(set(s) == {"momentum_buffer"} for s in saved["state"].values())
    assert saved["state"][0]["momentum_buffer"].abs().sum() > 0
    b = copy.deepcopy(a)
    other = TensorSGD(b.parameters(), lr, m, nesterov=True, weight_decay=1e-4)
    buffer = other.state[next(iter(b.parameters()))]["momentum_buffer"]
    other.load_state_dict(saved)
    assert other.state[next(iter(b.parameters()))]["momentum_buffer"] is buffer  # copied in place
    for x in xs[3:]:
        step(a, opt, x)
        step(b, other, x)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="doesn't match"):
        TensorSGD(torch.nn.Linear(5, 4).parameters(), lr, m).load_state_dict(saved)


def test_training_does_not_import_torchs_compiler():
    """torch.optim.Optimizer's first construction imports torch._dynamo (seconds); the step's optimiser avoids it."""
    import subprocess
    import sys

    code = ("import sys; from convladder.train.config import TrainConfig; from convladder.train.loop import train; "
            "train(TrainConfig(dataset='synthetic', subset=600, val_size=60, epochs=1, batch_size=64, threads=1, "
            "clean_train_eval=0)); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _setup(cfg: TrainConfig):
    data = DeviceData(synthetic_splits(), cfg, torch.device("cpu"))
    model, _ = build_model(cfg.model, data.image_shape, cfg.seed)
    return data, model


@pytest.mark.parametrize("crop", [0, 20])
def test_the_step_equals_a_hand_written_reference_step(crop):
    """augmentation -> (centre crop) -> forward -> loss -> backward -> SGD (torch's) -> OneCycleLR (torch's)."""
    cfg = config(label_smoothing=0.1)
    data, model = _setup(cfg)
    ref_model = copy.deepcopy(model)
    steps = data.steps_per_epoch(cfg.batch_size)
    lrs, moms = schedule_tables(cfg, steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = TrainStep(model, data, cfg, torch.device("cpu"), [gen], lrs, moms)
    torch.manual_seed(11)  # dropout's stream
    model.train()
    step.new_epoch(crop)
    order, noise = step.order[0].clone(), step.noise[0].clone()
    n_steps = 5
    for _ in range(n_steps):
        step()
    losses = step.loss_sum.clone()

    opt = torch.optim.SGD(ref_model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = make_scheduler(opt, cfg, steps)
    aug = AugmentParams(cfg.rotate, cfg.translate, cfg.scale, cfg.erase)
    torch.manual_seed(11)
    ref_model.train()
    ref_sum = 0.0
    for k in range(n_steps):
        idx = order[k]
        x = augment_from(to_unit(data.x_train[idx]), aug, noise[k])
        x = data.normalise(centre_crop(x, crop) if crop else x)
        loss = F.cross_entropy(ref_model.logits(x), data.y_train[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ref_sum += float(loss.detach()) * cfg.batch_size
    for (name, p), q in zip(model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert float(losses[0]) == pytest.approx(ref_sum, rel=1e-5)
    assert step.lr_at(n_steps) == pytest.approx(opt.param_groups[0]["lr"])
    assert float(step.lr) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
    assert float(step.momentum) == pytest.approx(opt.param_groups[0]["momentum"], rel=1e-6)


def test_bf16_precision_trains_in_bf16_on_the_cpu_and_evaluates_the_fp32_weights():
    """precision=bf16: the step's convolutions run in bf16 (AMX CPUs train faster), the weights and optimiser
    state stay fp32, and evaluation runs in fp32; auto and fp32 change nothing on the CPU."""
    from convladder.train.step import evaluate

    seen: list[torch.dtype] = []
    for precision in ("auto", "fp32", "bf16"):
        cfg = config(precision=precision)
        data, model = _setup(cfg)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
        step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(1)], lrs, moms)
        model.train()
        step.new_epoch()
        for _ in range(3):
            step()
        trained, seen[:] = seen[:], []
        loss, acc = evaluate(model, data.x_test, data.y_test, data, 256)
        hook.remove()
        assert set(trained) == {torch.bfloat16 if precision == "bf16" else torch.float32}, precision
        assert set(seen) == {torch.float32} and 0 <= acc <= 100 and loss == loss, precision  # evaluation: fp32
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert torch.isfinite(torch.tensor(step.read_epoch()[0][0]))
        seen.clear()
    from convladder.train.epochs import run_info

    cpu = torch.device("cpu")  # the run's header line says when the step is bf16
    assert run_info(config(precision="bf16"), None, 1, cpu, data)["device"] == "cpu (bf16 training step)"
    assert run_info(config(), None, 1, cpu, data)["device"] == "cpu"
    with pytest.raises(UserError, match="precision=bf16 runs on cuda and cpu, not meta"):
        TrainStep(model, data, config(precision="bf16"), torch.device("meta"), [torch.Generator()], lrs, moms)


def test_unknown_precision_is_refused():
    with pytest.raises(UserError, match="precision"):
        validate(TrainConfig(precision="fp16"))


def test_batches_have_a_static_shape_and_the_remainder_is_left_out():
    cfg = config(batch_size=100, val_size=248)  # 1800 training images: 18 batches, none partial
    data, _ = _setup(cfg.replace(batch_size=100))
    assert data.steps_per_epoch(100) == 18
    cfg = config(batch_size=128)
    data, _ = _setup(cfg)
    order = data.epoch_order(128, torch.Generator().manual_seed(0))
    assert order.shape == (data.n_train // 128, 128)
    assert len(set(order.flatten().tolist())) == order.numel()  # no image twice in an epoch
    again = data.epoch_order(128, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_epoch_sums_are_read_once_and_a_nan_shows_up_at_the_end():
    cfg = config(augment=False)
    data, model = _setup(cfg)
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(1)], lrs, moms)
    step.new_epoch()
    for _ in range(step.steps):
        step()
    loss, acc, seen = step.read_epoch()
    assert seen == step.steps * cfg.batch_size and 0 < loss[0] < 5 and 0 <= acc[0] <= 100
    assert int(step.t) == step.steps and int(step.k) == step.steps
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    step.new_epoch()
    for _ in range(3):
        step()
    assert not torch.isfinite(torch.tensor(step.read_epoch()[0][0]))


def test_graph_capture_failure_falls_back_to_eager_with_a_notice(monkeypatch):
    """The CUDA path's control flow on the CPU: warm-up steps, a capture that raises, eager from then on."""
    cfg = config(augment=False)
    runs = []
    for mode in ("eager", "graph"):
        data, model = _setup(cfg)
        lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
        step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(1)], lrs, moms)
        notes: list[str] = []
        runner = StepRunner(step, mode, notes.append)
        monkeypatch.setattr(runner, "_eager_on_side_stream", step)
        monkeypatch.setattr(runner, "_capture", lambda: (_ for _ in ()).throw(RuntimeError("capture refused\nmore")))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "set_stream", lambda *a, **k: None)
        torch.manual_seed(5)
        step.new_epoch()
        for _ in range(step.steps):
            runner()
        runs.append((model.state_dict(), notes, runner))
    (eager_sd, eager_notes, _), (graph_sd, graph_notes, graph_runner) = runs
    assert eager_notes == [] and len(graph_notes) == 1
    assert "capture failed" in graph_notes[0] and "capture refused" in graph_notes[0] and "\n" not in graph_notes[0]
    assert graph_runner.mode == "eager" and not graph_runner.captured
    for k in eager_sd:
        assert torch.equal(eager_sd[k], graph_sd[k]), k  # every step ran exactly once, in order


def test_centre_crop_takes_the_middle_pixels():
    x = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 1, 6, 7)
    out = centre_crop(x, 4)
    assert out.shape == (2, 1, 4, 4)
    assert torch.equal(out, x[..., 1:5, 1:5])  # rows (6 - 4) // 2 = 1.., columns (7 - 4) // 2 = 1..


def test_crop_steps_run_eagerly_and_the_graph_path_starts_on_whole_images(monkeypatch):
    """'graph' mode on crops: no warm-up or capture until the images are whole again (the CUDA path on the CPU)."""
    cfg = config(augment=False)
    data, model = _setup(cfg)
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    step = TrainStep(model, data, cfg, torch.device("cpu"), [torch.Generator().manual_seed(1)], lrs, moms)
    runner = StepRunner(step, "graph", lambda text: None)
    warm: list[int] = []
    captures: list[int] = []
    seen: list[tuple[int, int]] = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    monkeypatch.setattr(runner, "_eager_on_side_stream", lambda: (warm.append(1), step()))
    monkeypatch.setattr(runner, "_capture", lambda: captures.append(1) or (_ for _ in ()).throw(RuntimeError("no")))
    for name in ("synchronize", "current_stream", "set_stream"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    step.new_epoch(20)
    for _ in range(5):
        runner()
    assert seen == [(20, 20)] * 5 and warm == [] and captures == [] and runner.calls == 0
    step.new_epoch()
    for _ in range(5):
        runner()
    assert seen[5:] == [(28, 28)] * 5 and len(warm) == 3 and captures == [1]  # 3 warm-up steps, then capture


@pytest.mark.parametrize("batch", [300, 100])
def test_recalibrate_bn_sets_the_plain_mean_and_variance_of_clean_images(batch):
    cfg = config()
    data = DeviceData(synthetic_splits(), cfg, torch.device("cpu"))
    model = build_model(SPEC, data.image_shape, 3)[0]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # stale statistics, as a moving average over augmented batches leaves them
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = data.x_train[:300]
    # the reference: each BatchNorm normalises with its batch's statistics, dropout is off, the images are clean
    reference = copy.deepcopy(model).eval()
    ref_bns = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in ref_bns}
    hooks = [m.register_forward_hook(lambda mod, inp, out: inputs[mod].append(inp[0])) for m in ref_bns]
    for m in ref_bns:
        m.train()
    with torch.no_grad():
        for i in range(0, 300, batch):
            reference.logits(data.normalise(to_unit(x[i:i + batch])))
    for h in hooks:
        h.remove()
    assert recalibrate_bn(model, x, data, batch) == len(bns)
    for m, ref in zip(bns, ref_bns):
        seen = inputs[ref]
        mean = torch.stack([t.mean((0, 2, 3)) for t in seen]).mean(0)
        var = torch.stack([t.var((0, 2, 3), unbiased=True) for t in seen]).mean(0)
        assert torch.allclose(m.running_mean, mean, atol=1e-5)  # equal batches: the plain average over batches
        assert torch.allclose(m.running_var, var, rtol=1e-4, atol=1e-5)
        assert m.momentum == 0.1 and m.training
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # only the statistics change
