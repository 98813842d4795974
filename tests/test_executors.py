"""Executors (in-process, Ray), sweeps and the LR range test, on tiny synthetic data (whole file < 90 s)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError
from convladder.executors.base import InProcessExecutor, make_job
from convladder.executors.sweep import make_trials, run_sweep, sweep_summary
from convladder.executors.sweepspec import load_sweep
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.lrfind import range_test, steepest, suggest_lr, valley

SPEC = ("c1[conv3x3({c1}, bias=false) relu bn dropout({drop})] c2[conv3x3(16, bias=false) relu bn] "
        "t[maxpool2x2 conv1x1(8)] out[gap conv1x1(10)]")
# threads=1: results are bit-identical across executors only when torch uses the same number of threads
TINY = {"dataset": "synthetic", "subset": 256, "epochs": 1, "val_size": 0, "batch_size": 64, "threads": 1,
        "clean_train_eval": 0, "augment": False, "lr": 0.2}
RUN_FILES = {"config.json", "env.json", "metrics.jsonl", "result.json", "model.safetensors", "resume.pt"}


def write_sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def sweep_text(c1=(4, 8), drop=(0.0,), budget=5000, extra_params="", extra="") -> str:
    return (f'name: t\nmodel: "{SPEC}"\nbudget: {budget}\nsearch: grid\nseeds: 1\n'
            f"base: {json.dumps(TINY)}\n{extra}params:\n"
            f"  c1: {{role: studied, values: {list(c1)}}}\n  drop: {{role: nuisance, values: {list(drop)}}}\n"
            + extra_params)


def metrics(root: Path, run_id: str) -> list[dict]:
    rows = RunStore(root).read_metrics(run_id)
    timing = ("_time_s", "_per_s")  # wall-clock fields differ between any two runs
    return [{k: v for k, v in r.items() if not k.endswith(timing)} for r in rows]


# -- in-process ---------------------------------------------------------------------------------------------
def test_inprocess_sweep_trains_ranks_and_isolates(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, sweep_text(c1=(4, 8), drop=(0.0, 0.1))), seeds=2)
    result = run_sweep(spec, tmp_path / "runs", InProcessExecutor())
    summary = sweep_summary(result)
    assert summary["counts"] == {"completed": 4, "stopped": 0, "failed": 0, "rejected": 0}
    ranked = [r for r in summary["trials"] if r["status"] == "completed"]
    keys = [(-r["test_acc"]["min"], r["params"]) for r in ranked]
    assert keys == sorted(keys)  # val_size 0: min-over-seeds test accuracy, then fewer parameters
    assert summary["ranked_on"] == "test" and all(r["val_acc"] is None for r in ranked)
    assert all(len(r["runs"]) == 2 for r in ranked)  # one run per seed
    assert [row["value"] for row in summary["isolation"]] == [4, 8]
    assert all(row["best_trial"] and row["nuisance"].keys() == {"drop"} for row in summary["isolation"])
    store = RunStore(tmp_path / "runs")
    assert len(store.list_runs(status="completed", tag="sweep:t")) == 8
    # rerunning the sweep reuses the stored runs (jobs are keyed by their config)
    again = sweep_summary(run_sweep(spec, tmp_path / "runs", InProcessExecutor()))
    assert again["counts"]["completed"] == 4 and len(store.list_runs()) == 8


def _set_final(root: Path, run_id: str, val: float, test: float) -> None:
    """Overwrite a stored run's final-epoch val/test accuracy (to make the two splits disagree)."""
    path = RunStore(root).run_path(run_id) / "result.json"
    data = json.loads(path.read_text())
    data["final"].update(val_acc=val, test_acc=test)
    path.write_text(json.dumps(data))


def test_sweep_ranks_and_isolates_on_validation_not_test(tmp_path):
    """Validation and test disagree: the least-over-seeds *val* accuracy orders the trials and picks the studied
    value's best nuisance setting; test accuracy is reported beside it and the output says val ranked."""
    from convladder.executors.sweep import format_table
    from convladder.report.sweepreport import isolation_rows, sweep_rows

    text = sweep_text(c1=(4,), drop=(0.0, 0.1)).replace('"val_size": 0', '"val_size": 64')
    spec = load_sweep(write_sweep(tmp_path, text), seeds=2)
    root = tmp_path / "runs"
    first = run_sweep(spec, root, InProcessExecutor())
    assert [t.status for t in first.trials] == ["completed", "completed"] and all(t.val for t in first.trials)
    # t000 wins on test (90 vs 70) and on its best val seed (95), but its worst val seed (60) is below t001's (80)
    fake = {"t000": [(60.0, 90.0), (95.0, 91.0)], "t001": [(80.0, 70.0), (81.0, 71.0)]}
    for t in first.trials:
        for res, (val, test) in zip(t.runs, fake[t.id]):
            _set_final(root, res["run_id"], val, test)
    summary = sweep_summary(run_sweep(spec, root, InProcessExecutor()))  # the store's runs, read again
    assert summary["ranked_on"] == "val" and summary["ranked_on_why"] is None
    assert [(r["trial"], r["rank"]) for r in summary["trials"]] == [("t001", 1), ("t000", 2)]
    top = summary["trials"][0]
    assert top["val_acc"] == {"min": 80.0, "median": 80.0, "max": 81.0}
    assert top["test_acc"] == {"min": 70.0, "median": 70.0, "max": 71.0}  # reported, not used to choose
    iso = summary["isolation"][0]
    assert iso["best_trial"] == "t001" and iso["nuisance"] == {"drop": 0.1} and iso["val_acc"]["min"] == 80.0
    table = format_table(summary)
    ranking = [line for line in table.splitlines() if "ranked on" in line]
    assert ranking == [summary["ranking"]] and ranking[0].startswith("ranked on VAL") and "TEST" not in table
    assert "min final val" in table and "min final test" in table
    assert "c1=4: t001 min final val 80.00, test min/median/max 70.00/70.00/71.00" in table
    head, rows = sweep_rows(summary)
    assert "min val % (ranks)" in head and rows[0][head.index("min val % (ranks)")] == 80.0
    assert isolation_rows(summary)[0][1] == "t001 (chosen on val, min val 80.00 %)"


def test_sweep_without_validation_split_ranks_on_test_and_says_so(tmp_path):
    from convladder.executors.sweep import SweepResult, _settle, format_table

    spec = load_sweep(write_sweep(tmp_path, sweep_text(c1=(4, 8))))  # val_size: 0
    trials = make_trials(spec)
    for trial, acc in zip(trials, (91.0, 95.0)):
        trial.runs = [{"status": "completed", "final_test_acc": acc, "label": "x"}]
        _settle(trial)
    summary = sweep_summary(SweepResult(spec, trials, "inprocess", 1.0, str(tmp_path)))
    assert summary["ranked_on"] == "test" and "val_size: 0" in summary["ranked_on_why"]
    assert [r["trial"] for r in summary["trials"]] == ["t001", "t000"]
    assert json.loads(json.dumps(summary))["ranking"] == summary["ranking"]
    lines = format_table(summary).splitlines()
    ranking = [line for line in lines if "ranked on" in line]
    assert ranking == [summary["ranking"]] and lines.index(ranking[0]) == 0
    assert ranking[0].startswith("WARNING ranked on TEST") and "no validation split (val_size: 0)" in ranking[0]
    assert "min final test" in lines[1] and "min final val" not in lines[1]
    assert "by the least final-epoch TEST accuracy" in format_table(summary).split("isolation of c1")[1]


def test_old_summary_without_ranked_on_reads_as_test_ranked(tmp_path):
    """A summary written before sweeps ranked on validation has no ranked_on (nor val_acc): it was ranked on
    test, and the text table and the report's tables say so."""
    from convladder.executors.sweep import format_table, ranking_line
    from convladder.report.sweepreport import isolation_figure, isolation_rows, load_summary, sweep_rows

    old = {"name": "t", "file": None, "executor": "inprocess", "search": "grid", "seeds": 2, "budget": 5000,
           "scheduler": None, "model_template": SPEC, "roles": {"c1": "studied", "drop": "nuisance"}, "studied": "c1",
           "trials": [{"rank": 1, "trial": "t001", "status": "completed", "values": {"c1": 8, "drop": 0.0},
                       "params": 3000, "test_acc": {"min": 95.0, "median": 95.5, "max": 96.0}, "error": None,
                       "runs": ["a", "b"]}],
           "isolation": [{"value": 8, "best_trial": "t001", "test_acc": {"min": 95.0, "median": 95.5, "max": 96.0},
                          "params": 3000, "nuisance": {"drop": 0.0}, "trials": 1, "completed": 1, "rejected": 0}],
           "counts": {"completed": 1, "stopped": 0, "failed": 0, "rejected": 0}, "wall_time_s": 1.0,
           "runs_root": str(tmp_path)}
    path = tmp_path / "t-20240101-000000.json"
    path.write_text(json.dumps(old))
    summary = load_summary(path)
    table = format_table(summary)
    assert table.splitlines()[0].startswith("WARNING ranked on TEST: ranked by the least final-epoch TEST accuracy")
    assert "written before sweeps ranked on validation" in table.splitlines()[0]
    assert ranking_line(summary) == table.splitlines()[0]
    assert "1 t001  completed" in table and "95.00" in table
    head, rows = sweep_rows(summary)
    assert "min test % (ranks)" in head and not any("val" in h for h in head)
    assert isolation_rows(summary)[0][:3] == ["8", "t001 (chosen on TEST)", 95.0]
    assert "TEST" in isolation_figure(summary).fig.axes[0].get_title()


def test_seed_jobs_train_as_one_batched_run_where_the_trainer_batches_and_match_separate_runs(tmp_path):
    """Jobs differing only in the seed go to train_batched as one run of N seeds when batched_mode says so
    (CUDA by default; `batched: streams` here, which on a CPU is each seed's sequential run, bit-identical)."""
    from convladder.executors.base import seed_groups

    spec = SPEC.format(c1=4, drop=0.1)
    cfg = {**TINY, "model": spec, "augment": True}
    jobs = [make_job({**cfg, "seed": s, "batched": "streams"}, label=f"seed {s}") for s in (1, 2, 3)]
    other = make_job({**cfg, "seed": 4, "lr": 0.1, "batched": "streams"})  # another config: its own group
    gap = make_job({**cfg, "seed": 9, "lr": 0.1, "batched": "streams"})  # seeds must count up by one
    assert [len(g) for g in seed_groups(jobs + [other, gap])] == [3, 1, 1]
    out = InProcessExecutor().map(jobs, tmp_path / "b")
    assert [r["status"] for r in out] == ["completed"] * 3 and all(r["batched_with"] == 3 for r in out)
    store = RunStore(tmp_path / "b")
    for job, res in zip(jobs, out):  # one run per seed, with its own job tag: a rerun skips it
        assert store.get(res["run_id"]).tags[-1] == f"job:{job.key}"
        assert store.read_env(res["run_id"])["batched_with_seeds"] == [1, 2, 3]
    seq = InProcessExecutor().map([make_job({**cfg, "seed": s, "batched": "off"}) for s in (1, 2, 3)], tmp_path / "s")
    assert "batched_with" not in seq[0]  # batched: off trains them one by one
    for a, b in zip(out, seq):
        assert a["final_test_acc"] == b["final_test_acc"]
        assert metrics(tmp_path / "b", a["run_id"]) == metrics(tmp_path / "s", b["run_id"])
    assert [r["status"] for r in InProcessExecutor().map(jobs, tmp_path / "b")] == ["skipped"] * 3
    # on a CPU with batched: auto (the default) nothing changes: one job after another
    auto = InProcessExecutor().map([make_job({**cfg, "seed": s}) for s in (1, 2)], tmp_path / "a")
    assert all("batched_with" not in r for r in auto)


def test_over_budget_networks_are_rejected_before_training(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, sweep_text(c1=(4, 64), budget=2000)))
    trials = make_trials(spec)
    by_c1 = {t.values["c1"]: t for t in trials}
    assert by_c1[4].status == "pending" and by_c1[4].params < 2000
    assert by_c1[64].status == "rejected" and "budget" in by_c1[64].error
    result = run_sweep(spec, tmp_path / "runs")
    assert {t.values["c1"]: t.status for t in result.trials} == {4: "completed", 64: "rejected"}
    assert len(RunStore(tmp_path / "runs").list_runs()) == 1  # nothing was trained for the rejected one


@pytest.mark.parametrize("text, key, line", [
    (sweep_text(extra_params="  widht: {role: nuisance, values: [1]}\n"), "widht", 10),
    (sweep_text(extra="shedule: onecycle\n"), "shedule", 7),
    (sweep_text(extra_params="  lr: {role: nuisance, valuse: [0.1]}\n"), "valuse", 10),
])
def test_unknown_key_names_key_and_line(tmp_path, text, key, line):
    path = write_sweep(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert repr(key) in str(err.value) and f"{path}:{line}" in str(err.value)


def test_crashing_trial_is_recorded_and_sweep_goes_on(tmp_path):
    # batch_size 100000 passes config validation but cannot train on 256 images: that trial crashes
    spec = load_sweep(write_sweep(tmp_path, sweep_text(
        c1=(4,), extra_params="  batch_size: {role: nuisance, values: [64, 100000]}\n")))
    summary = sweep_summary(run_sweep(spec, tmp_path / "runs"))
    status = {r["values"]["batch_size"]: r for r in summary["trials"]}
    assert status[64]["status"] == "completed"
    assert status[100000]["status"] == "failed" and "batch_size" in status[100000]["error"]


# -- LR range test ------------------------------------------------------------------------------------------
def test_range_test_restores_weights_and_bn_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = iter(lambda: (torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)), None)
    lrs, raw, smooth, _ = range_test(model, opt, batches, [1e-4 * 10 ** (i / 10) for i in range(50)])
    assert len(lrs) == len(raw) == len(smooth) > 5
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not opt.state  # no momentum buffers left behind


def test_suggest_lr_is_finite_on_synthetic_data():
    cfg = TrainConfig.from_dict({**TINY, "model": SPEC.format(c1=8, drop=0.0), "subset": 512, "batch_size": 32})
    res = suggest_lr(cfg, min_lr=1e-4, max_lr=10, steps=40)
    assert res.suggested_lr is not None and 1e-4 <= res.suggested_lr <= 10
    assert all(torch.isfinite(torch.tensor(res.smoothed)))
    assert res.valley_lr is not None


def test_valley_and_steepest_on_a_made_up_curve():
    lrs = [10 ** (-5 + i / 10) for i in range(50)]
    losses = [2.3] * 20 + [2.3 - 0.1 * i for i in range(20)] + [0.3 + i for i in range(10)]
    assert lrs[20] <= valley(lrs, losses) <= lrs[39]
    assert lrs[19] <= steepest(lrs, losses) <= lrs[39]


# -- Ray ------------------------------------------------------------------------------------------------------
def test_missing_ray_is_a_clear_error(monkeypatch):
    from convladder.executors import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install 'convladder\[ray\]'"):
        ray_executor.import_ray()


def test_unreachable_ray_address_fails_fast():
    from convladder.executors.ray_executor import check_reachable

    t0 = time.perf_counter()
    with pytest.raises(UserError, match="unreachable"):
        check_reachable("ray://127.0.0.1:9", timeout=2)  # port 9 (discard): nothing listens there
    with pytest.raises(UserError, match="host:port"):
        check_reachable("not-an-address")
    assert time.perf_counter() - t0 < 10


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'convladder[ray]' to run the Ray tests")
    from convladder.executors.ray_executor import RayExecutor

    executor = RayExecutor(cpus_per_trial=1, num_cpus=2)
    executor.connect()
    yield executor
    ray.shutdown()


def test_ray_sweep_matches_inprocess(tmp_path, local_ray):
    spec = load_sweep(write_sweep(tmp_path, sweep_text(c1=(4, 8))))
    local = sweep_summary(run_sweep(spec, tmp_path / "a", InProcessExecutor()))
    remote = sweep_summary(run_sweep(spec, tmp_path / "b", local_ray))
    assert remote["executor"] == "ray" and remote["counts"]["completed"] == 2
    for a, b in zip(local["trials"], remote["trials"]):
        assert (a["trial"], a["test_acc"], a["params"]) == (b["trial"], b["test_acc"], b["params"])
        run_a, run_b = a["runs"][0], b["runs"][0]
        assert metrics(tmp_path / "a", run_a) == metrics(tmp_path / "b", run_b)  # same numbers, bit for bit
        # the driver wrote the store: same files, row and result as an in-process run
        assert {p.name for p in (tmp_path / "b" / run_b).iterdir()} == RUN_FILES
        rec = RunStore(tmp_path / "b").get(run_b)
        assert rec.status == "completed" and rec.final_test_acc == b["test_acc"]["min"]
        assert RunStore(tmp_path / "b").read_result(run_b)["run_id"] == run_b
        sd_a = RunStore(tmp_path / "a").load_state_dict(run_a)
        sd_b = RunStore(tmp_path / "b").load_state_dict(run_b)
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_ray_records_a_crashing_job(tmp_path, local_ray):
    good = make_job({**TINY, "model": SPEC.format(c1=4, drop=0.0)}, label="good")
    bad = make_job({**TINY, "model": SPEC.format(c1=4, drop=0.0), "batch_size": 100000}, label="bad")
    done = []
    results = local_ray.map([good, bad], tmp_path / "runs", on_done=done.append)
    assert [r["label"] for r in results] == ["good", "bad"] and len(done) == 2
    assert results[0]["status"] == "completed" and results[1]["status"] == "failed"
    assert "batch_size" in results[1]["error"]


# -- CLI ------------------------------------------------------------------------------------------------------
def test_cli_sweep_dry_run_and_lr_find(tmp_path):
    from typer.testing import CliRunner

    from convladder.cli import build_app

    runner = CliRunner()
    path = write_sweep(tmp_path, sweep_text(c1=(4, 64), budget=2000))
    res = runner.invoke(build_app(), ["sweep", str(path), "--dry-run", "--runs", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "rejected" in res.output and "isolation of c1" in res.output
    res = runner.invoke(build_app(), ["sweep", str(path), "--gpus-per-trial", "0.25"])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    out = tmp_path / "lr"
    res = runner.invoke(build_app(), ["lr-find", "--model", SPEC.format(c1=4, drop=0.0), "--dataset", "synthetic",
                                      "--steps", "20", "--max", "10", "--out", str(out), "val_size=0", "threads=1"])
    assert res.exit_code == 0, res.output
    assert "suggested lr" in res.output
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["lrs"]) == len(data["smoothed"]) > 0 and out.with_suffix(".csv").is_file()


# -- Ray Tune scheduler (ASHA) --------------------------------------------------------------------------------
SCHEDULED = {**TINY, "subset": 1200, "val_size": 200, "epochs": 2, "model": SPEC.format(c1=8, drop=0.0)}


def test_scheduler_block_is_checked(tmp_path):
    ok = load_sweep(write_sweep(tmp_path, sweep_text(extra="scheduler: {name: asha, grace_period: 2}\n")
                                .replace('"val_size": 0', '"val_size": 64')))
    assert ok.scheduler.grace_period == 2 and ok.scheduler.reduction_factor == 2
    with pytest.raises(UserError, match=r"sweep.yaml:\d+: unknown scheduler key 'patience'"):
        load_sweep(write_sweep(tmp_path, sweep_text(extra="scheduler: {name: asha, patience: 2}\n")))
    with pytest.raises(UserError, match="validation accuracy.*val_size: 0"):
        load_sweep(write_sweep(tmp_path, sweep_text(extra="scheduler: asha\n")))
    with pytest.raises(UserError, match="hyperband.*not supported"):
        load_sweep(write_sweep(tmp_path, sweep_text(extra="scheduler: hyperband\n")))
    with pytest.raises(UserError, match="--executor ray"):
        run_sweep(ok, tmp_path / "runs", InProcessExecutor())


def test_asha_stops_weak_trials_and_the_store_gets_every_run(tmp_path, local_ray):
    from convladder.executors.ray_executor import RayExecutor
    from convladder.executors.scheduled import SchedulerSpec, map_scheduled

    one_at_a_time = RayExecutor(cpus_per_trial=2)  # trials run in order on the 2-CPU Ray: ASHA's choices are fixed
    jobs = [make_job({**SCHEDULED, "lr": 0.2}, label="good"), make_job({**SCHEDULED, "lr": 1e-5}, label="weak"),
            make_job({**SCHEDULED, "lr": 2e-5}, label="weaker"),
            make_job({**SCHEDULED, "batch_size": 100000}, label="crash")]
    done = []
    results = map_scheduled(one_at_a_time, jobs, tmp_path / "ray", SchedulerSpec("asha", 1, 2), on_done=done.append)
    by = {r["label"]: r for r in results}
    assert [r["label"] for r in results] == ["good", "weak", "weaker", "crash"] and len(done) == 4
    assert by["good"]["status"] == "completed" and by["crash"]["status"] == "failed"
    assert "batch_size" in by["crash"]["error"]
    store = RunStore(tmp_path / "ray")
    for label in ("weak", "weaker"):  # below the good trial's val accuracy at the epoch-1 rung
        r = by[label]
        assert r["status"] == "stopped" and r["epochs_done"] == 1, r
        assert store.get(r["run_id"]).status == "stopped"
        assert store.read_result(r["run_id"])["epochs_done"] == 1 and len(store.read_metrics(r["run_id"])) == 1
    # a completed trial is the same run as in-process (threads 1): same metrics, bit for bit
    local = InProcessExecutor().map([jobs[0]], tmp_path / "local")[0]
    assert metrics(tmp_path / "local", local["run_id"]) == metrics(tmp_path / "ray", by["good"]["run_id"])
    assert {p.name for p in (tmp_path / "ray" / by["good"]["run_id"]).iterdir()} >= RUN_FILES
    # a rerun skips what the store already has and trains only what did not complete
    again = map_scheduled(one_at_a_time, jobs[:1], tmp_path / "ray", SchedulerSpec())
    assert again[0]["status"] == "skipped"


def test_cli_train_seeds_on_ray(tmp_path, local_ray):
    from typer.testing import CliRunner

    from convladder.cli import build_app

    args = ["train", "--model", SPEC.format(c1=4, drop=0.0), "--dataset", "synthetic", "--subset", "256",
            "--epochs", "1", "--val-size", "0", "--batch-size", "64", "--no-augment", "--seeds", "2",
            "--threads", "1", "--runs", str(tmp_path / "runs"), "--executor", "ray"]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert "seed 1: completed" in res.output and "seed 2: completed" in res.output
    assert "final test acc (last epoch) over seeds [1, 2]: min" in res.output
    runs = RunStore(tmp_path / "runs").list_runs(status="completed")
    assert sorted(r.seed for r in runs) == [1, 2]
    again = CliRunner().invoke(build_app(), args)  # the store has both: nothing trains again
    assert again.exit_code == 0 and again.output.count(": skipped") == 2, again.output


def test_stopped_trials_are_listed_unranked_after_completed_ones(tmp_path):
    from convladder.executors.sweep import SweepResult, _settle, format_table

    spec = load_sweep(write_sweep(tmp_path, sweep_text(c1=(4, 8, 12), extra="scheduler: asha\n")
                                  .replace('"val_size": 0', '"val_size": 64')))
    trials = make_trials(spec)[:3]
    outcomes = [[{"status": "completed", "final_test_acc": 91.0, "label": "a"}],
                [{"status": "stopped", "epochs_done": 1, "last_val_acc": 40.0, "label": "b"}],
                [{"status": "completed", "final_test_acc": 95.0, "label": "c"},
                 {"status": "stopped", "epochs_done": 2, "last_val_acc": 90.0, "label": "c2"}]]
    for trial, runs in zip(trials, outcomes):
        trial.runs = runs
        _settle(trial)
    assert [t.status for t in trials] == ["completed", "stopped", "stopped"]  # one stopped seed stops the trial
    assert trials[1].error == "stopped by the scheduler after epoch 1 (val 40.00 %)" and not trials[1].acc
    summary = sweep_summary(SweepResult(spec, trials, "ray", 1.0, str(tmp_path)))
    assert [(r["trial"], r["rank"]) for r in summary["trials"]] == [("t000", 1), ("t001", None), ("t002", None)]
    assert summary["counts"]["stopped"] == 2 and summary["scheduler"].startswith("asha on val_acc")
    assert format_table(summary).startswith("scheduler: asha on val_acc")


def test_a_config_key_added_later_keeps_older_runs_keys_at_its_default():
    """`precision` is newer than stored runs: at its default (auto) a job key and the report's experiment key
    are those of a config without it, so `ladder run` does not retrain and reports do not call old runs stale."""
    from convladder.executors.base import job_key
    from convladder.report.rundata import experiment_key

    old = {"model": SPEC, "epochs": 2, "lr": 0.1, "tags": ["ladder:x"]}
    assert job_key({**old, "precision": "auto"}) == job_key(old)
    assert experiment_key({**old, "precision": "auto"}) == experiment_key(old)
    assert job_key({**old, "precision": "bf16"}) != job_key(old)  # another arithmetic: another job
    assert experiment_key({**old, "precision": "bf16"}) != experiment_key(old)
