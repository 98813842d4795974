"""`convladder frontier`: candidates under each budget, selection on validation, re-training over seeds, the report.

Tiny synthetic data: the end-to-end test trains 8 runs of 2 epochs on 1,024 images (a few seconds on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from convladder.errors import UserError
from convladder.executors import frontier
from convladder.executors.frontier import candidates, family_text, select
from convladder.executors.frontierspec import load_frontier, parse_budget, parse_frontier, spec_params
from convladder.executors.sweep import Trial
from convladder.runs.store import RunStore

BASE = {"dataset": "synthetic", "subset": 1024, "val_size": 200, "epochs": 2, "batch_size": 64, "threads": 1,
        "clean_train_eval": 0, "augment": False}
SPACE = {"before": [2], "after": [2, 3], "first": [4], "width1": [4, 6, 8], "squeeze": [4], "width2": [4, 6, 8, 12, 16]}


def write(tmp_path: Path, data: dict, name: str = "fr.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def cli(*args: str):
    from convladder.cli import build_app

    return CliRunner().invoke(build_app(), list(args))


# -- candidates -------------------------------------------------------------------------------------------
def test_budgets_parse_and_bad_budgets_are_one_clear_error():
    assert [parse_budget(b) for b in ("5k", "1.5k", 2000, "20_000")] == [5000, 1500, 2000, 20000]
    for bad in ("5m", "abc", 0, "0.5", True, "-3k"):
        with pytest.raises(UserError, match="not a parameter count"):
            parse_budget(bad)


def test_candidates_fit_the_budget_sit_close_under_it_and_match_pytorch_counts():
    from convladder.spec.build import build_module
    from convladder.spec.notation import parse_spec

    spec = parse_frontier({"trials": 4, "near": 0.8, "candidates": ["tiny8k"]})
    cands, stats = candidates(spec, 5000)
    assert len(cands) == 4 + 0  # four architectures x one dropout; tiny8k (7,944) does not fit
    assert stats["rejected"] == [{"model": "tiny8k", "params": 7944, "reason": "7,944 parameters > budget 5,000"}]
    assert stats["over_budget"] > 0 and stats["in_budget"] > len(cands)
    assert all(4000 <= c.params <= 5000 for c in cands)
    assert len({(c.shape["before"], c.shape["after"]) for c in cands}) == 4  # the shapes take turns
    for c in cands[:2]:  # the spec's count is PyTorch's count of the built network
        assert c.params == sum(p.numel() for p in build_module(parse_spec(c.text)).parameters())
        assert "bias=false" in c.text and "fc(" not in c.text and "dropout(0.05)" in c.text
    # a budget nothing fits gives no candidate, and the budget's row says why instead of training anything
    none, stats = candidates(spec, 300)
    assert none == [] and stats["in_budget"] == 0


def test_family_text_places_the_transition_and_pads_the_last_conv():
    text = family_text(before=2, after=3, first=4, width1=8, squeeze=6, width2=12, dropout=0.0)
    assert text.index("trans1[maxpool2x2 conv1x1(6, bias=false) relu bn]") > text.index("conv2[")
    assert text.index("trans1") < text.index("conv3[") and "conv5[conv3x3(12, padding=1" in text
    assert "dropout" not in text and text.endswith("out[gap conv1x1(10, bias=false) logsoftmax]")


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"budget": [5000]}, r"fr.yaml:1: unknown frontier key 'budget'"),
    ({"recipe": {"lrr": [0.1]}}, "recipe key 'lrr' is not a searchable config key"),
    ({"space": {"width3": [4]}}, "unknown space key 'width3'"),
    ({"space": {"dropout": [0.5, 2]}}, "dropout rates in"),
    ({"base": {"val_size": 0}}, "selects on the validation split"),
    ({"base": {"model": "tiny8k"}}, "base: may not set model"),
    ({"candidates": ["no-such-net"]}, "candidate 'no-such-net'"),
    ({"budgets": ["5k", "lots"]}, "budget 'lots' is not a parameter count"),
    ({"near": 1.5}, "near must be a fraction"),
])
def test_bad_frontier_files_are_one_clear_error(tmp_path, data, message):
    with pytest.raises(UserError, match=message):
        load_frontier(write(tmp_path, data))


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from convladder.cli import main

    for args, message in (([str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
                          (["--budgets", "5m"], "--budgets: budget '5m' is not a parameter count"),
                          (["--seeds", "0"], "--seeds must be at least 1"),
                          (["--epochs", "ten"], "--epochs (e.g. 10,15): expected a whole number")):
        with pytest.raises(SystemExit) as exc:
            main(["frontier", *args, "--dry-run"])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and "\n" not in err and "Traceback" not in err
    res = cli("frontier", "--budgets", "3k", "--trials", "2", "--dry-run")  # lists, trains nothing
    assert res.exit_code == 0 and "budget 3,000:" in res.output and res.output.count("conv1x1(10, bias=false)") == 2


# -- selection --------------------------------------------------------------------------------------------
def test_selection_reads_validation_never_test(monkeypatch):
    # a: best test, worst val; b and c tie on val, c is smaller: c wins; the stopped/failed ones never count
    finals = {"a": {"val_acc": 90.0, "test_acc": 99.9}, "b": {"val_acc": 95.0, "test_acc": 50.0},
              "c": {"val_acc": 95.0, "test_acc": 40.0}, "d": {"val_acc": 99.0, "test_acc": 99.0}}
    monkeypatch.setattr(frontier, "_final", lambda root, run_id, key, notes=None:
                        finals[run_id][key] if key == "val_acc" else
                        pytest.fail("selection read the test accuracy"))
    trials = [Trial(i, {"model": f"net-{i}", "lr": 0.1}, {}, params=p, status=s, runs=[{"run_id": i}])
              for i, p, s in (("a", 900, "completed"), ("b", 1000, "completed"), ("c", 950, "completed"),
                              ("d", 100, "stopped"))]
    winner, rows = select(trials, "unused")
    assert winner.id == "c"
    assert [r["val_acc"] for r in rows] == [90.0, 95.0, 95.0, None]
    assert rows[0]["recipe"] == {"lr": 0.1} and rows[0]["model"] == "net-a"


# -- end to end -------------------------------------------------------------------------------------------
def test_frontier_searches_selects_on_val_retrains_over_seeds_and_reports(tmp_path):
    from convladder.report.html import write_report

    runs = tmp_path / "runs"
    path = write(tmp_path, {"name": "tiny", "budgets": ["1k", "2k"], "trials": 1, "seeds": 2, "near": 0.5,
                            "candidates": ["tiny8k"], "base": BASE, "space": SPACE,
                            "recipe": {"lr": [0.2, 0.00001]}})  # per budget: 1 network x 2 lrs = 2 trials
    res = cli("frontier", str(path), "--runs", str(runs), "--quiet")
    assert res.exit_code == 0, res.output
    assert "  1,000 " in res.output and "  2,000 " in res.output and "frontier:tiny" in res.output
    summary = json.loads(next((runs / "frontiers").glob("tiny-*.json")).read_text())
    store = RunStore(runs)
    # nothing over budget trained: tiny8k was rejected, and every run of a budget fits it
    assert not [r for r in store.list_runs() if r.model == "tiny8k"]
    for b in summary["budgets"]:
        budget = b["budget"]
        assert b["candidates"]["rejected"][0]["model"] == "tiny8k" and b["candidates"]["over_budget"] > 0
        tagged = store.list_runs(tag=f"budget:{budget}")
        assert len(tagged) == 4 and all(r.params <= budget for r in tagged)  # 2 search runs + 2 seeds
        # the winner has the best validation accuracy; the lr 1e-5 trial stays near chance and loses
        trials = [t for t in b["trials"] if t["status"] == "completed"]
        assert len(trials) == 2 and b["winner"]["val_acc"] == max(t["val_acc"] for t in trials)
        assert b["winner"]["recipe"] == {"lr": 0.2}
        win_run = b["winner"]["runs"][0]
        assert b["winner"]["val_acc"] == store.read_result(win_run)["final"]["val_acc"]
        # re-trained over 2 fresh seeds (the search used seed 1): min/median/max of the final test accuracy
        final = b["final"]
        assert final["status"] == "completed" and final["seeds"] == [2, 3] and len(final["test_accs"]) == 2
        accs = [store.read_result(r)["final"]["test_acc"] for r in final["runs"]]
        assert final["test_accs"] == accs
        assert final["test_acc"] == {"min": min(accs), "median": min(accs), "max": max(accs)}
        assert {store.get(r).model for r in final["runs"]} == {b["winner"]["model"]}
    assert summary["environment"]["torch"] == torch.__version__
    # rerunning finds every job in the store: nothing trains again
    before = len(store.list_runs())
    assert cli("frontier", str(path), "--runs", str(runs), "--quiet").exit_code == 0
    assert len(store.list_runs()) == before
    # the report: the frontier figure (inline SVG) and the table beside it
    page = write_report("frontier:tiny", tmp_path / "f.html", runs).read_text()
    assert "Frontier tiny: 2 budget(s)" in page and 'id="fig-frontier"' in page and "<svg" in page
    lo = summary["budgets"][1]["final"]["test_acc"]["min"]
    assert f"{lo:.2f}" in page and "over budget (never trained)" in page
    summary_file = next((runs / "frontiers").glob("tiny-*.json"))  # the summary's path works too
    assert 'id="fig-frontier"' in write_report(str(summary_file), tmp_path / "g.html", runs).read_text()
    with pytest.raises(UserError, match="no summary of frontier 'nope'"):
        write_report("frontier:nope", tmp_path / "e.html", runs)


def test_base_seed_moves_the_search_seed_and_the_fresh_seeds_follow_it(tmp_path):
    """`base: seed: 5` searches on seed 5 and re-trains on 6, 7, ...: the reported seeds can be 6-10, fresh for
    every choice made on seeds 1-5 before the search (issue 33's rule)."""
    runs = tmp_path / "runs"
    path = write(tmp_path, {"name": "s5", "budgets": ["2k"], "trials": 1, "seeds": 2, "near": 0.5,
                            "base": BASE | {"seed": 5}, "space": SPACE, "recipe": {"lr": [0.2, 0.00001]}})
    res = cli("frontier", str(path), "--runs", str(runs), "--quiet")
    assert res.exit_code == 0, res.output
    b = json.loads(next((runs / "frontiers").glob("s5-*.json")).read_text())["budgets"][0]
    store = RunStore(runs)
    searched = {store.read_config(r)["seed"] for t in b["trials"] for r in t["runs"]}
    assert searched == {5} and b["final"]["seeds"] == [6, 7]
    assert [store.read_config(r)["seed"] for r in b["final"]["runs"]] == [6, 7]


def test_only_your_candidates_one_per_budget_train_their_seeds_without_a_search(tmp_path):
    """trials: 0 tries the file's networks only; a budget left with one trial runs no search (nothing to select):
    its seeds start at the base seed and are the reported ones."""
    runs = tmp_path / "runs"
    small = family_text(before=2, after=2, first=4, width1=4, squeeze=4, width2=6, dropout=0.0)
    big = family_text(before=2, after=2, first=4, width1=8, squeeze=4, width2=12, dropout=0.0)
    path = write(tmp_path, {"name": "own", "budgets": ["1k", "3k"], "trials": 0, "seeds": 2, "near": 0.5,
                            "candidates": [small, big], "base": BASE})
    sizes = [spec_params(t) for t in (small, big)]
    assert sizes[0] < 1000 < 1500 < sizes[1] <= 3000  # each belongs to one budget only
    spec = load_frontier(path)
    cands, stats = candidates(spec, 3000)
    assert [c.text for c in cands] == [big] and stats["generated"] == 0  # the space is not used
    assert stats["rejected"] == [{"model": small, "params": sizes[0],
                                  "reason": f"{sizes[0]:,} parameters < near 0.5 x budget 3,000"}]
    res = cli("frontier", str(path), "--runs", str(runs), "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output.count("no search") == 2
    summary = json.loads(next((runs / "frontiers").glob("own-*.json")).read_text())
    store = RunStore(runs)
    assert len(store.list_runs()) == 4  # 2 budgets x 2 seeds, no search runs
    for b, text in zip(summary["budgets"], (small, big)):
        assert b["selected_on"].startswith("the only trial") and b["trials"][0]["status"] == "not searched"
        assert b["winner"]["model"] == text and b["final"]["seeds"] == [1, 2] and b["final"]["completed"] == 2
        assert {store.get(r).model for r in b["final"]["runs"]} == {text}
    with pytest.raises(UserError, match="trials: 0 tries only your candidates"):
        parse_frontier({"trials": 0})


def test_the_bench_frontier_files_parse_and_each_budget_has_a_network():
    files = sorted((Path(__file__).parents[1] / "bench").glob("frontier-*.yaml"))
    assert len(files) >= 2
    for path in files:
        spec = load_frontier(path)
        assert spec.seeds == 5 and spec.base["val_size"] > 0
        for budget in spec.budgets:
            cands, _ = candidates(spec, budget)
            assert cands and all(c.params <= budget for c in cands), (path.name, budget)


def test_frontier_figure_marks_references_with_seed_counts_on_mnist():
    from convladder.report.frontierreport import frontier_figure

    def budget(b, params, lo, mid, hi):
        return {"budget": b, "winner": {"params": params}, "final": {"test_acc": {"min": lo, "median": mid, "max": hi},
                                                                      "test_accs": [lo, mid, hi, hi, lo]}}

    summary = {"name": "m", "dataset": "mnist", "budgets": [budget(2000, 1990, 98.9, 99.0, 99.1),
                                                            budget(5000, 4990, 99.3, 99.4, 99.5)]}
    fig = frontier_figure(summary)
    ax = fig.fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert ax.get_xscale() == "log" and "least of 5 seeds (this frontier)" in labels
    assert "median" in labels and "max" in labels
    assert any("6,260" in t and "(1 seed" in t for t in labels) and any("tiny6k" in t and "(5 seeds" in t for t in labels)
    fig.close()
    other = frontier_figure({**summary, "dataset": "synthetic"})  # MNIST figures do not belong on other data
    assert not any("public" in t for t in other.fig.axes[0].get_legend_handles_labels()[1])
    other.close()
    assert frontier_figure({"name": "e", "budgets": [{"budget": 2000, "winner": None, "final": None}]}) is None


def test_a_scheduler_needs_ray_and_says_so_before_training(tmp_path):
    from convladder.executors.frontier import run_frontier

    spec = load_frontier(write(tmp_path, {"budgets": ["2k"], "trials": 1, "base": BASE, "space": SPACE,
                                          "scheduler": "asha"}))
    with pytest.raises(UserError, match="add --executor ray"):
        run_frontier(spec, tmp_path / "runs")
    assert not RunStore(tmp_path / "runs").list_runs()


def test_bad_values_name_their_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: {dataset: synthetic}\nrecipe:\n  lr: [0.1, abc]\n")
    with pytest.raises(UserError, match=r"bad.yaml:3: config key 'lr': 'abc' is not a valid float"):
        load_frontier(path)
    path.write_text("budgets: [2k\n")
    with pytest.raises(UserError, match=r"bad.yaml:2: frontier file is not valid YAML"):
        load_frontier(path)
    for text, message in (("base: 5\n", "base: must be a mapping"), ("space: {classes: 1}\n", "classes takes"),
                          ("name: 'a b'\n", "may hold letters")):
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            load_frontier(path)


def test_the_best_measured_frontier_copies_its_figures_from_the_tables_it_names(tmp_path):
    """bench/results/frontier-best.json is typed by hand from the result tables: every reporting seed's figure
    must be in the table the entry names, one figure per seed, and the written table and figure follow from it."""
    import importlib.util
    import sys as _sys

    root = Path(__file__).resolve().parent.parent
    data = json.loads((root / "bench" / "results" / "frontier-best.json").read_text())
    for e in data["entries"]:
        source = (root / e["source"]).read_text()
        assert len(e["finals"]) == len(e["seeds"]) == 5, e["network"]
        missing = [f"{v:.2f}" for v in e["finals"] if f"{v:.2f}" not in source]
        assert not missing, f"{e['network']}: {missing} not in {e['source']}"
        assert e["params"] <= e["budget"]
    spec = importlib.util.spec_from_file_location("_bench_frontier_best", root / "bench" / "frontier_best.py")
    bench = importlib.util.module_from_spec(spec)
    _sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    assert bench.verdict(2000, {"min": 99.17, "median": 99.28}, 20) == "met (least +0.07)"
    assert bench.verdict(5000, {"min": 99.41, "median": 99.44}, 15) == "not met (least +0.01, median -0.01)"
    assert bench.verdict(2000, {"min": 99.20, "median": 99.3}, 25) .startswith("not met")  # too many epochs
    assert bench.main(["--table", str(tmp_path / "f.md"), "--figure", str(tmp_path / "f.svg")]) == 0
    text = (tmp_path / "f.md").read_text()
    assert text.count("\n| 2,000 |") == sum(e["budget"] == 2000 for e in data["entries"])
    assert "<svg" in (tmp_path / "f.svg").read_text()
    assert (tmp_path / "f.md").read_text() == (root / "bench" / "results" / "frontier.md").read_text()
