"""Labels that mean the same everywhere: a run trained with weight EMA says 'EMA weights' wherever its accuracy
shows (runs list, the HTML report, the Markdown hand-in, the server's /api/info, the ladder table), and the ladder's reading judges
'near chance' on the run's own class count and holds no near-chance potential against the target
(generated data, two tiny runs of one epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_util import run_cli
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.loop import train

TINY = ("c1[conv3x3(8, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")


def tiny_config(**kw) -> TrainConfig:
    base = dict(model=TINY, dataset="synthetic", epochs=1, batch_size=64, val_size=256, lr=0.1, seed=3,
                threads=1, clean_train_eval=512, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[RunStore, str, str]:
    """A store with one run trained with ema 0.9 and one without: (store, ema run id, plain run id)."""
    store = RunStore(tmp_path_factory.mktemp("ema-labels") / "runs")
    averaged = train(tiny_config(ema=0.9, name="averaged"), store)
    plain = train(tiny_config(name="plain"), store)
    return store, averaged.run_id, plain.run_id


def _line_of(text: str, run_id: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(run_id))


# -- EMA weights ---------------------------------------------------------------------------------------------

def test_runs_list_marks_the_ema_run_and_explains_the_mark(runs, capsys):
    store, averaged, plain = runs
    code, out, _ = run_cli(capsys, "runs", "list", "--runs", str(store.root))
    assert code == 0
    assert _line_of(out, averaged).endswith("(EMA weights)")
    assert "EMA" not in _line_of(out, plain)
    assert "(EMA weights): final test and best on split are the weight average's" in out
    from convladder.runs.commands import list_text

    text = list_text(store, [r for r in store.list_runs(limit=None) if r.id == plain])
    assert "EMA" not in text  # no mark, no legend where no listed run averaged


def test_html_result_block_labels_the_ema_accuracies(runs):
    from convladder.report.html import result_block
    from convladder.report.rundata import load_run

    store, averaged, plain = runs
    block = result_block(load_run(store.root / averaged))
    assert "test accuracy (EMA weights)" in block and "validation accuracy (EMA weights)" in block
    assert "(selected by val) (EMA weights)" in block
    assert "EMA weights (decay 0.9 per step): the test, validation and best-epoch accuracies" in block
    assert "EMA" not in result_block(load_run(store.root / plain))


def test_markdown_handin_labels_the_ema_accuracies(runs, tmp_path):
    from convladder.report.markdown import run_markdown
    from convladder.report.rundata import load_run

    store, averaged, plain = runs
    text = run_markdown(load_run(store.root / averaged), tmp_path / "a")
    assert "test accuracy % (EMA weights)" in text and "validation accuracy % (EMA weights)" in text
    assert "best-epoch test accuracy % (EMA weights)" in text
    assert "EMA weights (decay 0.9 per step): the test, validation and best-epoch accuracies" in text
    assert "EMA" not in run_markdown(load_run(store.root / plain), tmp_path / "p")


def test_html_result_block_labels_a_running_ema_run_from_its_config(runs, tmp_path):
    from convladder.report.html import result_block
    from convladder.report.rundata import load_run
    from run_util import copy_run

    store, averaged, _ = runs
    running = copy_run(store.root / averaged, "20260101-000000-aaaaaa", drop_result=True)
    assert "test accuracy (EMA weights)" in result_block(load_run(running))


def test_api_info_says_which_weights(runs):
    pytest.importorskip("PIL")
    from convladder.serve.predict import load_run
    from convladder.serve.server import DigitApp

    store, averaged, plain = runs
    info = DigitApp(load_run(averaged, store.root)).info()
    assert info["weights"] == "EMA weights (decay 0.9 per step)" and info["test_acc"] is not None
    assert json.loads(json.dumps(info))["weights"] == info["weights"]  # what the endpoint sends
    assert DigitApp(load_run(plain, store.root)).info()["weights"] is None
    page = (Path(__import__("convladder.serve", fromlist=["x"]).__file__).parent / "page.html").read_text()
    assert "info.weights" in page  # the page shows it beside the test accuracy


def test_ladder_table_labels_an_ema_step(runs):
    from convladder.ladder.compare import format_table, ladder_summary
    from convladder.ladder.ladder import parse_ladder
    from convladder.ladder.run import run_ladder

    store, _, _ = runs
    text = f"""
name: averaged
base:
  model: "{TINY}"
  config: {{dataset: synthetic, epochs: 1, batch_size: 64, val_size: 256, lr: 0.1, seed: 3, threads: 1,
           clean_train_eval: 512, device: cpu}}
steps:
  - name: live
    change: "the baseline"
  - name: average
    change: "weight EMA 0.9"
    config: {{ema: 0.9}}
"""
    ladder = parse_ladder(text, "averaged.yaml")
    res = run_ladder(ladder, store.root, echo=lambda line: None)
    assert [r["status"] for r in res] == ["completed", "completed"], res
    table = format_table(ladder_summary(ladder, store), ladder)
    assert "average (EMA weights)" in table and "live (EMA weights)" not in table
    assert "(EMA weights): the step trained with config ema" in table


# -- the near-chance rule and the '>= target' tail ---------------------------------------------------------

def _row(train: float, test: float, classes: int | None, target: float = 99.4) -> dict:
    from convladder.train.result import gap, potential, verdict

    return {"train": train, "test": test, "target": target, "n_completed": 1, "classes": classes,
            "gap": gap(train, test), "potential": potential(train, test), "verdict": verdict(train, test, [], target)}


def test_a_near_chance_reading_holds_no_potential_against_the_target():
    from convladder.ladder.compare import reading

    text = reading(_row(23.45, 22.0, 10))
    assert "potential not meaningful (train 23.45% is near chance, 10%) -> underfitting" in text, text
    assert "target" not in text.split("->")[0]


def test_near_chance_is_judged_on_the_run_s_class_count():
    from convladder.ladder.compare import reading

    # 100 classes: chance 1 %, train 30 % has come well past it: the potential is a figure, held against the target
    many = reading(_row(30.0, 29.0, 100))
    assert "potential 99.00 < target 99.4 -> underfitting" in many, many
    # 2 classes: chance 50 %, train 60 % is near it (a 10-class rule would call 60 % learned)
    two = reading(_row(60.0, 58.0, 2))
    assert "potential not meaningful (train 60.00% is near chance, 50%)" in two, two
    # no class count known: the 10-class rule, as before
    assert "near chance, 10%" in reading(_row(23.45, 22.0, None))


def test_output_classes_of_a_table():
    from convladder.analysis.table import summarize
    from convladder.ladder.compare import output_classes
    from convladder.spec.notation import parse_spec

    assert output_classes(summarize(parse_spec(TINY))) == 10
    assert output_classes(summarize(parse_spec(TINY.replace("conv1x1(10,", "conv1x1(2,")))) == 2
    head = TINY.replace("out[gap conv1x1(10, bias=false) logsoftmax]", "out[conv1x1(10, bias=false)]")
    assert head != TINY
    assert output_classes(summarize(parse_spec(head))) is None  # a map, not one score per class
    assert output_classes(None) is None


def test_ladder_rows_and_report_read_the_class_count(runs):
    from convladder.report.html import result_block
    from convladder.report.rundata import final_numbers, load_run
    from run_util import copy_run

    store, _, plain = runs
    # the same run's records with a 2-class network and train 60 % / test 58 %: near chance for 2 classes
    two = copy_run(store.root / plain, "20260101-000000-bbbbbb",
                   config={"model_spec": TINY.replace("conv1x1(10,", "conv1x1(2,")},
                   result={"final": {"train_acc": 60.0, "test_acc": 58.0}, "gap": 2.0, "potential": 98.0})
    run = load_run(two)
    block = result_block(run)
    assert "not meaningful (train 60.00% is near chance, 50%)" in block, block
    assert "98.00 %" not in block
    assert final_numbers(run)["classes"] == 2  # what ladder_steps hands the HTML ladder table
