"""Labels say what the numbers are (issue 29): the lr of an epoch, one median rule, one clock for time to target,
the benchmarks' seed lists and tables, label smoothing in the loss plot, the split that picked the best epoch.

Each test failed on the code before it (said in its docstring). Tiny generated data, CPU, seconds.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError
from convladder.runs.store import RunStore
from convladder.train import result as results
from convladder.train.config import TrainConfig
from convladder.train.loop import train, train_batched
from convladder.train.progress import PlainProgress
from convladder.train.result import RunResult, SeedResults, min_median_max

# the labels the tables name (getattr: on the code before, each test fails on its own assertion, not on import)
MEDIAN_RULE = getattr(results, "MEDIAN_RULE", "median: of an even number of seeds the lower of the middle two")
TIME_TO_TARGET = getattr(results, "TIME_TO_TARGET", "time to target = training + evaluation seconds")

TINY = ("c1[conv3x3(8, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")
BENCH = Path(__file__).resolve().parent.parent / "bench"


def tiny(**kw) -> TrainConfig:
    base = dict(model=TINY, dataset="synthetic", epochs=2, batch_size=64, val_size=256, lr=0.1, seed=3, threads=1,
                clean_train_eval=256, augment=False)
    return TrainConfig(**{**base, **kw})


def _metrics(root: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (root / run_id / "metrics.jsonl").read_text().splitlines()]


# -- 1. the lr of an epoch ----------------------------------------------------------------------------------

def test_an_epochs_lr_is_the_rate_it_trained_at_under_a_step_schedule(tmp_path: Path) -> None:
    """--schedule step --set gamma=0.5: epoch 1 trains at 0.1 and epoch 2 at 0.05. Before, epoch 1 was recorded
    (metrics.jsonl and the progress line) as 0.05: the rate of the step after it."""
    out = io.StringIO()
    result = train(tiny(schedule="step", step_size=1, gamma=0.5), RunStore(tmp_path), PlainProgress(out))
    rows = _metrics(tmp_path, result.run_id)
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.05])
    assert [r["lr_last"] for r in rows] == pytest.approx([0.1, 0.05])  # constant within each epoch
    lines = [line for line in out.getvalue().splitlines() if line.startswith("epoch ")]
    assert "lr 0.1 " in lines[0] and "lr 0.05 " in lines[1]  # the progress line says what metrics.jsonl says


def test_batched_seeds_record_the_same_epoch_lr_as_single_runs(tmp_path: Path) -> None:
    """Two seeds trained as one grouped model record the lr a single run records (both were lr_at(epoch*steps))."""
    config = tiny(schedule="step", step_size=1, gamma=0.5, seeds=2, batched="grouped", clean_train_eval=0)
    results = train_batched(config, RunStore(tmp_path))
    for r in results:
        assert [row["lr"] for row in _metrics(tmp_path, r.run_id)] == pytest.approx([0.1, 0.05])


def test_onecycle_records_the_first_and_last_rate_of_each_epoch(tmp_path: Path) -> None:
    """Under onecycle the rate moves within an epoch: lr is its first step's, lr_last its last step's."""
    from convladder.train.optim import schedule_tables

    config = tiny(schedule="onecycle", epochs=2, val_size=0)
    result = train(config, RunStore(tmp_path))
    rows = _metrics(tmp_path, result.run_id)
    per_epoch = 2048 // 64  # synthetic data: 2,048 training images, none held out
    table, _ = schedule_tables(config, per_epoch)
    assert rows[0]["lr"] == pytest.approx(table[0]) and rows[1]["lr"] == pytest.approx(table[per_epoch])
    assert rows[0]["lr_last"] == pytest.approx(table[per_epoch - 1])


# -- 2. one median ------------------------------------------------------------------------------------------

def test_min_median_max_takes_the_lower_middle_value_of_an_even_count() -> None:
    """The median value was the mean of the middle two (98.5 of 97/98/99/99.5), a number no run had; the
    median run (median_item) was the lower one (98.0)."""
    assert min_median_max([99.5, 97.0, 99.0, 98.0]) == {"min": 97.0, "median": 98.0, "max": 99.5}
    assert min_median_max([3.0, None, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert "lower of the middle two" in MEDIAN_RULE


def test_the_recorders_median_epoch_is_the_lower_middle_one(tmp_path: Path) -> None:
    """The recorder's median epoch throughput was sorted(...)[n // 2], the upper middle of an even count."""
    result = train(tiny(epochs=2, val_size=0, clean_train_eval=0), RunStore(tmp_path))
    ips = sorted(r["train_images_per_s"] for r in _metrics(tmp_path, result.run_id))
    assert result.extra["train_images_per_s"] == ips[0]


def test_seed_results_name_the_median_rule(tmp_path: Path) -> None:
    """SeedResults printed a median without saying which."""
    results = [RunResult(run_id=None, status="completed", params=1, epochs_done=1,
                         final={"test_acc": t, "train_acc": 99.9}, best={}, gap=None, potential=None, verdict=None,
                         train_acc_source="", wall_time_s=1.0, time_to_target_s=None, seed=i)
               for i, t in enumerate((99.0, 99.6, 99.2, 99.5))]
    text = str(SeedResults(results))
    assert "99.00 / 99.20 / 99.60" in text and MEDIAN_RULE in text


LADDER = """\
name: labels
base:
  model: "c1[conv3x3(4) relu] c2[conv3x3(8) relu] t[maxpool2x2 conv1x1(4) relu] out[conv12x12(10) flatten softmax]"
  config: {dataset: synthetic, epochs: 1, val_size: 256, augment: false, schedule: none, lr: 0.05,
           clean_train_eval: 256, batch_size: 64}
steps:
  - name: first
    change: start, the test set picks the best epoch
    config: {select_on: test}
  - name: val
    change: the validation split picks the best epoch
    config: {select_on: val}
"""


@pytest.fixture(scope="module")
def ladder2(tmp_path_factory: pytest.TempPathFactory):
    """Two steps, two seeds each (an even count), trained for real on synthetic data; step 1 selects on test."""
    from convladder.ladder.ladder import parse_ladder
    from convladder.ladder.run import run_ladder

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ladder2")
    ladder = parse_ladder(LADDER, "labels.yaml")
    res = run_ladder(ladder, root, seeds=2, echo=lambda line: None)
    assert [r["status"] for r in res] == ["completed"] * 4
    # step 1's two seeds, far apart: the mean of the middle two is no run's train/test/gap
    store = RunStore(root)
    for rec in store.list_runs(tag="step:1"):
        path = root / rec.id / "result.json"
        res = json.loads(path.read_text())
        train_acc, test = {1: (99.9, 99.5), 2: (98.7, 99.1)}[rec.seed]
        res["final"].update(train_acc=train_acc, test_acc=test)
        res.update(gap=train_acc - test, potential=test + 100 - train_acc)
        path.write_text(json.dumps(res))
    return ladder, root


def test_ladder_report_and_the_html_page_print_one_median_seeds_numbers(ladder2) -> None:
    """`ladder report` averaged the middle two (train 99.30, test 99.30, gap 0.00, potential 100.00) where the HTML
    page showed seed 2's run (98.70 / 99.10 / -0.40 / 100.40): two answers for one step."""
    from convladder.ladder.compare import format_table, ladder_summary
    from convladder.report.rundata import ladder_selection, ladder_steps, resolve_target

    ladder, root = ladder2
    rows = ladder_summary(ladder, RunStore(root))
    kind, runs = resolve_target("labels", root)
    assert kind == "ladder"
    chosen, _ = ladder_selection("labels", runs)
    page = {s["step"]: s for s in ladder_steps(chosen)}
    for row in rows:
        html_row = page[row["step"]]
        for ours, theirs in (("train", "train_acc"), ("test", "test_acc"), ("gap", "gap"), ("potential", "potential")):
            assert row[ours] == pytest.approx(html_row[theirs]), (row["step"], ours)
    assert rows[0]["test"] == pytest.approx(99.1) and rows[0]["train"] == pytest.approx(98.7)
    assert MEDIAN_RULE in format_table(rows, ladder)


# -- 6. the split that picked the best epoch ------------------------------------------------------------

def test_the_html_ladder_page_names_the_test_set_where_it_picked_the_best_epoch(ladder2) -> None:
    """The page said 'the selection split' for every step, also where the test set picked the epoch."""
    from convladder.report.html import ladder_body
    from convladder.report.rundata import resolve_target

    _, root = ladder2
    _, runs = resolve_target("labels", root)
    page = ladder_body("labels", runs)
    assert "selection split" not in page
    assert "step 1: the epoch the test set picked (optimistic" in page
    assert "step 2: the epoch the validation split picked" in page
    assert MEDIAN_RULE.split(" — ")[0] in page


# -- 3. one clock -------------------------------------------------------------------------------------------

def test_time_to_target_is_training_and_evaluation_with_warm_up_apart(tmp_path: Path) -> None:
    """The CPU trainer's time to target was the process clock (data loading, thread probe, model build, saving
    included); bench_gpu summed epoch times less the warm-up. Both now use train.result.time_to."""
    result = train(tiny(epochs=3, target=10.0), RunStore(tmp_path))  # 10 %: reached in epoch 1
    rows = _metrics(tmp_path, result.run_id)
    assert result.train_time_to_target_s == pytest.approx(rows[0]["epoch_time_s"] - result.warmup_s)
    assert result.time_to_target_s > result.train_time_to_target_s  # the process clock is kept, apart
    stored = json.loads((tmp_path / result.run_id / "result.json").read_text())
    assert stored["train_time_to_target_s"] == pytest.approx(result.train_time_to_target_s)
    text = str(result)
    assert "training + evaluation (warm-up excluded)" in text and "process's wall clock" in text
    from convladder.train.result import time_to

    assert time_to([{"epoch_time_s": 2.0}, {"epoch_time_s": 1.0, "test_acc": 99.5}], 99.4, 0.5) == 2.5
    assert time_to([{"epoch_time_s": 2.0, "test_acc": 99.0}], 99.4) is None
    assert "warm-up" in TIME_TO_TARGET


def test_bench_gpu_uses_the_trainers_time_to_target() -> None:
    """bench_gpu.py had its own `_times_to`; it now calls train.result.time_to and says the same definition."""
    gpu = _bench("bench_gpu")
    from convladder.train.result import time_to

    assert not hasattr(gpu, "_times_to") and gpu.time_to is time_to
    text = gpu.render([], [], "cpu", True, 1.0, [6, 7])
    assert TIME_TO_TARGET in text and "seeds 6-7" in text


# -- 4. benchmarks: seed lists, run store, val split, (k/N), potential -----------------------------------

def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_seed_lists() -> None:
    from convladder.train.loop import parse_seed_list

    assert parse_seed_list("6-10") == [6, 7, 8, 9, 10]
    assert parse_seed_list("1,3,7") == [1, 3, 7] and parse_seed_list("1-3,2,9") == [1, 2, 3, 9]
    for bad in ("", "3-1", "a", "1-", "-2"):
        with pytest.raises(UserError, match="6-10"):
            parse_seed_list(bad)


def test_bench_train_table_reads_the_runs_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_train.py printed 'val split 5000' with --subset (the runs held out a tenth of the subset), kept no
    runs, spread the time column over the seeds that reached the target without saying so, and printed a
    potential above 100 raw."""
    bench = _bench("bench_train")
    store = RunStore(tmp_path / "runs")
    results = [train(tiny(seed=s, epochs=1, val_size=5000, subset=1000, target=t), store)
               for s, t in ((6, 10.0), (7, 100.0))]  # seed 6 reaches its target, seed 7 cannot
    results[1].potential = 100.75  # train below test: the formula passes 100
    results[1].final["train_acc"] = 98.0  # (a 1-epoch run's own train accuracy may sit near chance: not meaningful)

    class Args:
        seeds, chosen_on = "6-7", "seeds 1-5"

    text = bench.render(Args, tiny(subset=1000), torch.device("cpu"), results, store,
                        tmp_path / "runs", 0.0, (results[0], 1.0, "x", None))
    assert "val split 100 (images held out" in text  # --subset 1000 keeps 1000 // 10
    assert "(1/2)" in text  # the time column says one of two seeds reached the target
    # ...and apart from it, how many ended at the table's target (a seed can pass it at one epoch and end below)
    assert "final >= 99.4 % |" in text and "| 0/2 |" in text and "seeds that reached it at some epoch" in text
    assert "100.75" not in text and "100.00*" in text
    assert "seeds: 6-7 (recipe chosen on seeds 1-5" in text and str(tmp_path / "runs") in text
    assert all(r.run_id in text for r in results)  # each row names its run in the store
    assert TIME_TO_TARGET in text and MEDIAN_RULE in text


# -- 5. label smoothing in the loss plot --------------------------------------------------------------------

def test_with_label_smoothing_the_train_loss_is_drawn_on_its_own_scale(tmp_path: Path) -> None:
    """The train loss (with the smoothing term) and the test loss (without) shared one axis: a false gap."""
    from convladder.report import figures
    from convladder.report.rundata import load_run

    result = train(tiny(epochs=1, label_smoothing=0.1), RunStore(tmp_path))
    fig = figures.curves(load_run(tmp_path / result.run_id))
    by_label = {line.get_label(): ax for ax in fig.fig.axes for line in ax.get_lines()}
    train_line = next(k for k in by_label if k.startswith("train, with label smoothing 0.1"))
    assert by_label[train_line] is not by_label["test"]  # not one scale
    assert "train loss includes label smoothing 0.1 and val/test loss do not" in fig.caption
    plain = train(tiny(epochs=1), RunStore(tmp_path))
    fig = figures.curves(load_run(tmp_path / plain.run_id))
    by_label = {line.get_label(): ax for ax in fig.fig.axes for line in ax.get_lines()}
    assert by_label["train"] is by_label["test"]  # without smoothing both are cross-entropy: one scale


# -- 6. the frontier table records threads -------------------------------------------------------------

def test_frontier_results_record_threads(tmp_path: Path) -> None:
    """bench/frontier_results.py gave no thread count: runs of 1 and 2 threads read as one machine setting."""
    bench = _bench("frontier_results")
    store = RunStore(tmp_path)
    runs = [train(tiny(seed=s, epochs=1, threads=1), store) for s in (1, 2)]
    summary = {"name": "t", "dataset": "synthetic", "seeds": 2, "environment": {},
               "budgets": [{"budget": 9000, "winner": {"params": runs[0].params, "model": TINY,
                                                       "config": {"epochs": 1}},
                            "final": {"runs": [r.run_id for r in runs]}, "selected_on": "val"}]}
    text = bench.table(summary, store)
    assert "threads" in text and "| 1 |" in text


def test_frontier_results_say_the_whole_wall_its_executor_and_which_seeds_chose_and_report() -> None:
    """The search line said '(one process)' for a search run on Ray, and no line named the seeds on either side."""
    bench = _bench("frontier_results")
    screening = {"screen_epochs": 4, "screen_subset": 10000, "reduction_factor": 3, "rungs": [],
                 "epoch_equivalents": {"halving": 82.4, "grid": 180}, "spearman": 0.8, "n": 4, "flag": None}
    budget = {"budget": 5000, "screening": screening, "search_wall_s": 1500.0, "retrain_wall_s": 1200.0,
              "winner": {"config": {"seed": 5}}, "final": {"seeds": [6, 7, 8, 9, 10]}, "trials": []}
    text = "\n".join(bench.screening(budget, "ray", 1))
    assert "wall (executor ray): search 25.0 min + the winner's re-training 20.0 min = **45.0 min" in text
    assert "ran on seed(s) 5; the winner's reported (fresh) seeds: 6, 7, 8, 9, 10" in text
    assert "one process" not in text
    screening["rungs"] = [{"rung": 0, "trials": 13, "epochs": [4], "train_images": [10000]},
                          {"rung": 1, "trials": 4, "epochs": [8], "train_images": [23452]},
                          {"rung": 2, "trials": 1, "rank_check": 3, "epochs": [15], "train_images": ["all"]}]
    screening["jobs_trained"] = 21
    assert "**45.0 min for the whole budget**" in "\n".join(bench.screening(budget, "ray", 1))
    screening["jobs_trained"] = 3  # a widened rank check: the rest came from the store
    text = "\n".join(bench.screening(budget, "ray", 1))
    assert "whole budget" not in text and "45.0 min for THIS CALL ONLY: it trained 3 of the search's 21 jobs" in text


def test_frontier_results_render_the_summary_named_not_only_the_newest(tmp_path: Path, capsys) -> None:
    """A widened rank check writes a newer summary of the same name; the whole search's table must stay remakable."""
    bench = _bench("frontier_results")
    (tmp_path / "frontiers").mkdir()
    for stamp, seeds in (("20261207-142413", 5), ("20261207-150636", 7)):
        (tmp_path / "frontiers" / f"f-{stamp}.json").write_text(json.dumps(
            {"name": "f", "dataset": "mnist", "seeds": seeds, "environment": {}, "selected_on": "val",
             "budgets": [{"budget": 2000, "winner": None, "final": None}]}))
    older = tmp_path / "frontiers" / "f-20261207-142413.json"
    out = tmp_path / "t.md"
    assert bench.main(["--runs", str(tmp_path), "--summary", str(older), "-o", str(out)]) == 0
    assert "trained over 5 seeds" in out.read_text()
    assert bench.main(["--runs", str(tmp_path), "--summary", str(tmp_path / "nope.json"), "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err and "trained over 5 seeds" in out.read_text()


def test_the_sweep_and_frontier_tables_name_the_median_rule() -> None:
    """The frontier's terminal table printed medians without saying which (now lower-middle, named)."""
    from convladder.executors.frontier import format_table

    summary = {"name": "f", "dataset": "mnist", "selected_on": "val", "seeds": 2,
               "budgets": [{"budget": 2000, "candidates": {}, "winner": None, "final": None, "trials": []}]}
    assert format_table(summary).splitlines()[-1] == f"({MEDIAN_RULE})"
