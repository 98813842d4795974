"""Distillation (config teacher, distill_temperature, distill_weight): the loss, the teacher's set-up and refusals,
the labels, the job key (generated data, a tiny teacher trained for one epoch)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli_util import run_cli
from convladder.errors import UserError
from convladder.executors.base import JOB_TAG, job_key
from convladder.runs.store import RunStore
from convladder.train import distill
from convladder.train.config import TrainConfig
from convladder.train.device_data import DataSplits, DeviceData, synthetic_splits
from convladder.train.loop import resume, run_to_end, train, train_epochs
from convladder.train.optim import schedule_tables
from convladder.train.progress import PlainProgress
from convladder.train.runenv import build_model
from convladder.data.normalise import to_unit
from convladder.train.step import TrainStep
from run_util import metrics_rows

# no dropout: one step's loss can be recomputed by hand from the same weights and batch
PLAIN = ("c1[conv3x3(8, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
         "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")
DROPOUT = PLAIN.replace("relu bn] t1", "relu bn dropout(0.05)] t1")


def cfg(**kw) -> TrainConfig:
    base = dict(model=DROPOUT, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3,
                threads=1, clean_train_eval=512, device="cpu")
    return TrainConfig(**{**base, **kw})



@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[RunStore, str]:
    """A store with one completed teacher run (1 epoch, a wider network), tagged 'teacher'."""
    store = RunStore(tmp_path_factory.mktemp("distill") / "runs")
    result = train(cfg(model=PLAIN.replace("(16,", "(24,"), epochs=1, seed=7, tags=["teacher"]), store)
    return store, result.run_id


def folders(store: RunStore) -> set[str]:
    return {p.name for p in store.root.iterdir() if p.is_dir()}


# -- the loss ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_log_probabilities_and_logits_give_the_same_soft_loss(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g) * 3, torch.randn(6, 10, generator=g) * 3
    reference = temperature ** 2 * F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1),
                                            reduction="none").sum(1)
    for student in (s, F.log_softmax(s, 1)):  # log_softmax: a per-row shift, which softmax does not see
        for taught in (t, F.log_softmax(t, 1)):
            assert torch.allclose(distill.soft_loss(student, taught, temperature), reference, atol=1e-5)


def test_each_copy_gets_its_own_teacher_targets():
    g = torch.Generator().manual_seed(1)
    b, n, k = 5, 3, 10
    student, taught = torch.randn(b, n, k, generator=g), torch.randn(n * b, k, generator=g)  # taught: copy-major
    hard = torch.rand(n, generator=g)
    t = distill.Teacher(None, {"run": "x", "temperature": 2.0, "weight": 0.25})
    mixed = t.loss(hard, student, taught)
    for i in range(n):
        soft = distill.soft_loss(student[:, i], taught[i * b:(i + 1) * b], 2.0).mean()
        assert torch.allclose(mixed[i], 0.75 * hard[i] + 0.25 * soft)


def _hand_loss(model, teacher_net, x, y, config) -> torch.Tensor:
    """(1 - w) * CE (label smoothing in it) + w * T^2 * KL(teacher || student), written out with torch's kl_div."""
    s = copy.deepcopy(model).train().logits(x)
    with torch.no_grad():
        t = teacher_net.logits(x)
    T, w = config.distill_temperature, config.distill_weight
    ce = F.cross_entropy(s, y, label_smoothing=config.label_smoothing)
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return (1 - w) * ce + w * kl


@pytest.mark.parametrize("replicas", [1, 2])
def test_one_step_loss_is_the_hand_computed_distillation_loss(teacher, replicas):
    store, tid = teacher
    config = distill.resolve(cfg(model=PLAIN, augment=False, label_smoothing=0.1, teacher=tid, distill_weight=0.3,
                                 distill_temperature=3.0, data_parallel=replicas), store)
    device = torch.device("cpu")
    data = DeviceData(synthetic_splits(), config, device)
    model, _ = build_model(PLAIN, data.image_shape, 3)
    taught = distill.load(config, data, device)
    lrs, moms = schedule_tables(config, data.steps_per_epoch(config.batch_size))
    gen = torch.Generator().manual_seed(3)
    if replicas == 1:
        step = TrainStep(model, data, config, device, [gen], lrs, moms, teacher=taught)
        steps = [step]
    else:
        from convladder.train.parallel import ParallelStep

        step = ParallelStep(model, data, config, device, gen, lrs, moms, replicas, teacher=taught)
        steps = step.replicas
    step.new_epoch()
    hands = []
    for s in steps:  # each replica's share of the batch, as the step picks it
        idx = s.order[0, 0]
        x = data.normalise(to_unit(data.x_train[idx]))
        hands.append(_hand_loss(s.model, taught.module, x, data.y_train[idx], config))
    step()
    for s, hand in zip(steps, hands):
        assert torch.allclose(s.last_loss[0], hand.detach(), rtol=1e-5), (s.last_loss, hand)


def test_weight_zero_is_bit_identical_to_no_teacher(teacher):
    store, tid = teacher
    plain = train(cfg(), store)
    zero = train(cfg(teacher=tid, distill_weight=0.0), store)
    assert metrics_rows(store, zero.run_id) == metrics_rows(store, plain.run_id)
    half = train(cfg(teacher=tid), store)  # and the teacher does change something at weight 0.5
    assert metrics_rows(store, half.run_id) != metrics_rows(store, plain.run_id)


def test_resume_reloads_the_teacher(teacher, tmp_path):
    store, tid = teacher
    epochs = train_epochs(cfg(teacher=tid), store)
    next(epochs)
    epochs.close()  # stopped after epoch 1, as a scheduler stops a trial
    stopped = store.list_runs(status="stopped")[0]
    resumed = resume(stopped.id, store)
    straight = run_to_end(train_epochs(cfg(teacher=tid), store))
    assert metrics_rows(store, resumed.run_id) == metrics_rows(store, straight.run_id)
    assert resumed.distilled_from == straight.distilled_from and resumed.distilled_from["run"] == tid


# -- labels ------------------------------------------------------------------------------------------------------

def test_labels_say_distilled_everywhere(teacher, capsys):
    store, tid = teacher
    out = io.StringIO()
    result = train(cfg(epochs=1, teacher="latest:teacher"), store, PlainProgress(out))
    printed = out.getvalue()
    assert f"recipe: " in printed and f"distilled from {tid} (custom spec, T 4, weight 0.5)" in printed
    assert "params, the student's only; teacher " in printed.splitlines()[0]
    saved = json.loads((store.root / result.run_id / "result.json").read_text())
    teacher_params = saved["distilled_from"]["params"]
    assert saved["distilled_from"] == {"run": tid, "model": PLAIN.replace("(16,", "(24,"), "params": teacher_params,
                                       "temperature": 4.0, "weight": 0.5}
    assert saved["params"] < teacher_params  # the student's own count, the teacher's beside it
    assert json.loads((store.root / result.run_id / "config.json").read_text())["teacher"] == tid
    code, listed, _ = run_cli(capsys, "runs", "list", "--runs", str(store.root))
    assert code == 0 and f"(distilled from {tid})" in listed and "params are the student's only" in listed
    code, shown, _ = run_cli(capsys, "runs", "show", result.run_id, "--runs", str(store.root))
    assert code == 0 and f"teacher {teacher_params:,} params" in shown and "params above are the student's only" in shown
    from convladder.report.html import result_block
    from convladder.report.markdown import run_markdown
    from convladder.report.rundata import load_run

    run = load_run(store.root / result.run_id)
    assert f"distilled from {tid}" in result_block(run) and "(the student's only)" in result_block(run)
    assert f"| distillation | distilled from {tid}" in run_markdown(run, store.root.parent / "handin")
    # the train loss is the mixed loss, val/test loss plain cross-entropy: no shared axis, said in the table too
    assert "train loss includes distillation (weight 0.5, T 4); val and test loss are plain" in shown
    from convladder.report import figures

    fig = figures.curves(run)
    by_label = {line.get_label(): ax for ax in fig.fig.axes for line in ax.get_lines()}
    assert by_label["train, with distillation (weight 0.5, T 4) (right scale)"] is not by_label["test"]
    assert "train loss includes distillation (weight 0.5, T 4) and val/test loss do not" in fig.caption


LADDER = """\
name: taught
base:
  model: "{model}"
  config: {{dataset: synthetic, epochs: 1, val_size: 256, batch_size: 64, threads: 1, clean_train_eval: 512,
           device: cpu, seed: 3}}
steps:
  - name: alone
    change: start
  - name: taught
    change: distil from the teacher
    config: {{teacher: "latest:teacher"}}
"""


def test_ladder_table_says_distilled_and_keys_hold_the_resolved_id(teacher):
    from convladder.ladder.compare import format_table, ladder_summary
    from convladder.ladder.ladder import parse_ladder
    from convladder.ladder.run import ladder_jobs, run_ladder

    store, tid = teacher
    ladder = parse_ladder(LADDER.format(model=DROPOUT), "taught.yaml")
    res = run_ladder(ladder, store.root, echo=lambda line: None)
    assert [r["status"] for r in res] == ["completed", "completed"], res
    config = store.read_config(res[1]["run_id"])
    assert config["teacher"] == tid and f"{JOB_TAG}{res[1]['key']}" in config["tags"]
    unresolved = ladder_jobs(ladder)[1]  # the job as the file writes it: teacher latest:teacher
    assert res[1]["key"] == job_key({**unresolved.config, "teacher": tid}) != unresolved.key
    again = run_ladder(ladder, store.root, echo=lambda line: None)  # a rerun is the same job: skipped
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    table = format_table(ladder_summary(ladder, store), ladder)
    assert "taught (distilled)" in table and "alone (distilled)" not in table


def test_the_job_key_holds_the_resolved_teacher(teacher, tmp_path, capsys):
    from convladder.executors.sweep import run_sweep
    from convladder.executors.sweepspec import load_sweep

    store, tid = teacher
    code, out, _ = run_cli(capsys, "train", "--model", DROPOUT, "--dataset", "synthetic", "--val-size", "256",
                           "--teacher", "latest:teacher", "--runs", str(store.root), "--print-config")
    assert code == 0 and f"teacher: {tid}" in out
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: taught\nbase: {{model: '{DROPOUT}', dataset: synthetic, epochs: 1, val_size: 256, "
                    "batch_size: 64, threads: 1, device: cpu, teacher: 'latest:teacher'}\nparams: {lr: [0.1]}\n")
    result = run_sweep(load_sweep(spec), store.root)
    trial = result.trials[0]
    config = store.read_config(trial.runs[0]["run_id"])
    key = job_key({**trial.config, "seed": config["seed"], "seeds": 1})
    assert trial.config["teacher"] == config["teacher"] == tid and f"{JOB_TAG}{key}" in config["tags"]


# -- refusals ----------------------------------------------------------------------------------------------------

def _refused(capsys, store: RunStore, *args: str) -> str:
    before = folders(store)
    code, _, err = run_cli(capsys, "train", "--model", DROPOUT, "--dataset", "synthetic", "--val-size", "256",
                           "--epochs", "1", "--runs", str(store.root), *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert folders(store) == before  # nothing written
    return err


def test_refusals_are_one_line_and_write_nothing(teacher, capsys):
    store, tid = teacher
    err = _refused(capsys, store, "--teacher", "20990101-000000-abcdef")
    assert "teacher: no run '20990101-000000-abcdef'" in err
    epochs = train_epochs(cfg(epochs=2, tags=["unfinished"]), store)
    next(epochs)
    epochs.close()
    unfinished = store.list_runs(tag="unfinished")[0].id
    assert f"teacher run {unfinished} is stopped, not completed" in _refused(capsys, store, "--teacher", unfinished)
    weightless = train(cfg(epochs=1, tags=["weightless"]), store).run_id
    (store.root / weightless / "model.safetensors").unlink()
    assert "saved no weights" in _refused(capsys, store, "--teacher", weightless)
    err = _refused(capsys, store, "--teacher", tid, "--dataset", "fashion-mnist")
    assert "trained on 'synthetic', the student trains on 'fashion-mnist'" in err
    err = _refused(capsys, store, "--teacher", tid, "--val-size", "128")
    assert "held out another validation split (val_size 256 vs the student's 128)" in err
    err = _refused(capsys, store, "--teacher", tid, "--split-seed", "1")
    assert "(split_seed 0 vs the student's 1)" in err and "validates on" in err


def test_other_shapes_and_classes_are_refused_before_a_folder_exists(teacher):
    store, tid = teacher
    syn = synthetic_splits()
    padded = DataSplits("synthetic", F.pad(syn.x_train, (2, 2, 2, 2)), syn.y_train, F.pad(syn.x_test, (2, 2, 2, 2)),
                        syn.y_test, syn.classes, syn.mean, syn.std)
    five = synthetic_splits(classes=5)
    for data, said in ((padded, "trained on 1x28x28 inputs, the student's are 1x32x32"),
                       (five, "gives (10,) scores per image, the student's data set has 5 classes")):
        before = folders(store)
        with pytest.raises(UserError, match=r"teacher run .*") as err:
            train(cfg(model=PLAIN.replace("(10,", f"({data.classes},"), epochs=1, teacher=tid), store, data=data)
        assert said in str(err.value) and "\n" not in str(err.value)
        assert folders(store) == before


def test_a_worker_reads_the_teacher_where_it_was_found(teacher, tmp_path):
    store, tid = teacher
    elsewhere = RunStore(tmp_path / "worker")  # a Ray worker's private store: the teacher is not in it
    result = train(cfg(epochs=1, teacher=tid, teacher_runs=str(store.root)), elsewhere)
    assert result.distilled_from["run"] == tid
    with pytest.raises(UserError, match="not readable on .* a Ray worker needs the teacher's run folder"):
        train(cfg(epochs=1, teacher=tid, teacher_runs=str(tmp_path / "gone")), elsewhere)


def test_bad_values_are_refused():
    for bad, said in (({"distill_temperature": 0.0}, "distill_temperature"), ({"distill_weight": 1.5}, "distill_weight"),
                      ({"teacher": None, "distill_weight": 0.2}, "without a teacher")):
        with pytest.raises(UserError, match=said):
            from convladder.train.config import validate

            validate(cfg(**{"teacher": "x", **bad}))


def test_the_frontier_table_says_distilled(teacher, tmp_path):
    from convladder.executors.frontier import format_table, run_frontier
    from convladder.executors.frontierspec import load_frontier, spec_params

    store, tid = teacher
    path = tmp_path / "fr.yaml"
    budget = spec_params(DROPOUT) + 10
    path.write_text(json.dumps({"name": "taught", "budgets": [budget], "trials": 0, "seeds": 1, "near": 0.1,
                                "candidates": [DROPOUT],
                                "base": {**{k: v for k, v in cfg(epochs=1).to_dict().items()
                                            if k in ("dataset", "val_size", "epochs", "batch_size", "threads",
                                                     "device", "clean_train_eval")},
                                         "teacher": "latest:teacher"}}))
    summary = run_frontier(load_frontier(path), store.root)
    run_id = summary["budgets"][0]["final"]["runs"][0]
    assert store.read_config(run_id)["teacher"] == tid  # resolved before the job keys were made
    assert "(distilled from latest:teacher: params are the student's only)" in format_table(summary)
