"""Data parallel on the CPU (train/parallel.py): the step equals one step over the whole batch, replicas stay
equal, runs are reproducible and resume bit for bit, bad settings are user errors (tiny generated data)."""

from __future__ import annotations

import copy

import pytest
import torch

from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData, synthetic_splits
from convladder.train.loop import resume, run_to_end, train_epochs, train_seeds
from convladder.train.optim import schedule_tables
from convladder.train.parallel import ParallelStep, check_data_parallel, threads
from convladder.train.runenv import build_model
from convladder.train.step import TrainStep

# no BatchNorm: a replica's share then gives exactly its images' part of the whole batch's gradient
PLAIN = ("c1[conv3x3(8, bias=false) relu] t1[maxpool2x2 conv1x1(8, bias=false) relu] "
         "c2[conv3x3(16, bias=false) relu] out[gap conv1x1(10, bias=false) logsoftmax]")
DROP = ("c1[conv3x3(8, bias=false) relu bn dropout(0.1)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn dropout(0.1)] out[gap conv1x1(10, bias=false) logsoftmax]")


def config(model: str = DROP, **kw) -> TrainConfig:
    base = dict(model=model, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3,
                threads=1, clean_train_eval=256, data_parallel=2)
    return TrainConfig(**{**base, **kw})


def _steps(cfg: TrainConfig):
    data = DeviceData(synthetic_splits(), cfg, torch.device("cpu"))
    model = build_model(cfg.model, data.image_shape, cfg.seed)[0].train()
    lrs, moms = schedule_tables(cfg, data.steps_per_epoch(cfg.batch_size))
    cpu = torch.device("cpu")
    single_model = copy.deepcopy(model)
    parallel = ParallelStep(model, data, cfg, cpu, torch.Generator().manual_seed(1), lrs, moms, cfg.data_parallel)
    single = TrainStep(single_model, data, cfg, cpu, [torch.Generator().manual_seed(1)], lrs, moms)
    return parallel, single


@pytest.mark.parametrize("replicas", [2, 4])
def test_a_data_parallel_step_equals_one_step_over_the_whole_batch(replicas):
    """Same images (the whole batch's order and augmentation, split), the mean gradient, one optimiser step."""
    cfg = config(PLAIN, data_parallel=replicas, label_smoothing=0.1)
    parallel, single = _steps(cfg)
    parallel.new_epoch()
    single.new_epoch()
    for _ in range(5):
        parallel()
        single()
    for (name, p), q in zip(parallel.models[0].state_dict().items(), single.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    for m in parallel.models[1:]:  # every replica holds replica 0's weights after the step
        assert all(torch.equal(a, b) for a, b in zip(m.parameters(), parallel.models[0].parameters()))
    assert float(parallel.loss_sum[0]) == pytest.approx(float(single.loss_sum[0]), rel=1e-5)
    assert int(parallel.correct[0]) == int(single.correct[0])
    assert float(parallel.main.lr) == pytest.approx(float(single.lr))


def test_batchnorm_statistics_are_averaged_over_the_replicas_at_the_end_of_an_epoch():
    parallel, _ = _steps(config())
    parallel.new_epoch()
    for _ in range(3):
        parallel()
    means = [m.c1[2].running_mean.clone() for m in parallel.models]
    assert not torch.equal(means[0], means[1])  # each replica tracked its own share
    parallel.read_epoch()
    torch.testing.assert_close(parallel.models[0].c1[2].running_mean, (means[0] + means[1]) / 2)


def test_a_data_parallel_run_is_reproducible_and_resumes_bit_for_bit(tmp_path):
    store = RunStore(tmp_path / "runs")
    cfg = config(epochs=3)
    epochs = train_epochs(cfg, store)
    next(epochs)
    epochs.close()
    resumed = resume(store.list_runs()[0].id, store)
    straight = run_to_end(train_epochs(cfg))
    again = run_to_end(train_epochs(cfg))
    assert straight.final == again.final  # dropout on threads, each replica from its own generator
    assert resumed.final == straight.final
    one = run_to_end(train_epochs(cfg.replace(data_parallel=1)))
    assert one.final["test_acc"] == pytest.approx(straight.final["test_acc"], abs=15)  # it learns like one model
    assert straight.final["test_acc"] > 30


def test_threads_during_training_and_evaluation(monkeypatch):
    seen: list[int] = []
    original = ParallelStep.__call__

    def step(self):
        seen.append(torch.get_num_threads())
        original(self)

    monkeypatch.setattr(ParallelStep, "__call__", step)
    before = torch.get_num_threads()
    with threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    run_to_end(train_epochs(config(epochs=1, threads=0)))
    assert set(seen) == {1}


@pytest.mark.parametrize("kw, words", [
    ({"batch_size": 63}, "does not split into 2 equal shares"),
    ({"data_parallel": 0}, "data_parallel must be at least 1"),
    ({"seeds": 2, "batched": "on"}, "one seed at a time"),
    ({"compile": True}, "drop compile"),
    ({"channels_last": "on"}, "drop channels_last=on"),
])
def test_bad_data_parallel_settings_are_user_errors(tmp_path, kw, words):
    store = RunStore(tmp_path / "runs")
    with pytest.raises(UserError, match=words):
        train_seeds(config(**kw), store)
    assert store.list_runs() == []


def test_data_parallel_needs_a_spec_network_on_the_cpu(tmp_path):
    cfg = config()
    spec_net = build_model(DROP, (1, 28, 28), 1)[0]
    with pytest.raises(UserError, match="on cuda use data_parallel=1"):
        check_data_parallel(spec_net, cfg, torch.device("cuda"))
    own = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(UserError, match="built from a spec"):
        check_data_parallel(own, cfg, torch.device("cpu"))
