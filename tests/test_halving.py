"""Successive halving for the frontier (executors/halving.py): rungs, the rank check, resuming, the dry run.

Synthetic data, 1- and 3-epoch rungs: the end-to-end test trains 11 tiny runs (a few seconds on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError
from convladder.executors import frontier
from convladder.executors.base import InProcessExecutor
from convladder.executors.frontierspec import load_frontier
from convladder.executors.halving import (HalvingSpec, average_ranks, fidelity, rank_flag, rung_sizes, spearman,
                                          train_pool)
from convladder.runs.store import RunStore
from cli_util import run_cli

BASE = {"dataset": "synthetic", "subset": 1024, "val_size": 200, "epochs": 3, "batch_size": 32, "threads": 1,
        "clean_train_eval": 0, "augment": False}
SPACE = {"before": [2], "after": [2], "first": [4], "width1": [4, 8], "squeeze": [4], "width2": [6, 8, 12]}
# 2 networks x 3 learning rates = 6 trials; eta 3 promotes 2, the rank check adds 2: 4 full-fidelity trials
HALVING = {"name": "halving", "screen_epochs": 1, "screen_subset": 512, "reduction_factor": 3, "correlation_sample": 2}
FILE = {"name": "sh", "budgets": ["1500"], "trials": 2, "near": 0.3, "seeds": 1, "base": BASE, "space": SPACE,
        "recipe": {"lr": [0.2, 0.05, 0.00001]}, "scheduler": HALVING}


def write(tmp_path: Path, data: dict, name: str = "sh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1))  # JSON is YAML; indent: one key a line, so lines can be named
    return path


# -- the rank check ---------------------------------------------------------------------------------------
def test_spearman_averages_ties_and_is_undefined_without_spread():
    assert average_ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2 / (4*15)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: x ranks 1.5 1.5 3 4 against 1 2 3 4 -> 4.5 / sqrt(4.5 * 5)
    assert spearman([7, 7, 8, 9], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([5, 5, 5], [1, 2, 3]) is None and spearman([1], [2]) is None
    assert rank_flag(0.9, 4) is None
    assert "too few to judge" in rank_flag(0.9, 3) and "ranks poorly" in rank_flag(0.49, 8)
    assert "no rank correlation" in rank_flag(None, 5)


def test_rungs_shrink_by_eta_and_grow_geometrically_to_the_full_recipe():
    h = HalvingSpec(screen_epochs=1, screen_subset=100, reduction_factor=3, rungs=3)
    assert rung_sizes(27, h) == [27, 9, 3] and rung_sizes(4, h) == [4, 1, 1]
    assert rung_sizes(6, HalvingSpec(screen_epochs=1)) == [6, 2]
    assert [fidelity(h, r, 9, 8100) for r in range(3)] == [(1, 100), (3, 900), (9, 0)]  # 0: all images
    assert fidelity(h, 0, 9, 50) == (1, 0)  # a subset as large as the data is all of it
    assert fidelity(HalvingSpec(screen_epochs=20), 0, 12, None) == (12, 0)  # never more than the full recipe


# -- the screen keeps the full runs' validation split -------------------------------------------------------
def test_train_images_cuts_training_images_after_the_split_so_validation_is_unchanged():
    from convladder.train.config import TrainConfig
    from convladder.train.device_data import DeviceData, synthetic_splits

    splits = synthetic_splits()
    full = DeviceData(splits, TrainConfig(dataset="synthetic", subset=1024, val_size=200), torch.device("cpu"))
    cut = DeviceData(splits, TrainConfig(dataset="synthetic", subset=1024, val_size=200, train_images=300),
                     torch.device("cpu"))
    assert torch.equal(cut.x_val, full.x_val) and torch.equal(cut.y_val, full.y_val)
    assert cut.n_train == 300 and torch.equal(cut.x_train, full.x_train[:300]) and full.n_train == 1024 - 102
    assert train_pool(TrainConfig(dataset="synthetic", subset=1024, val_size=200).to_dict()) == full.n_train
    with pytest.raises(UserError, match="train_images 5000 is more than the 922 training images"):
        DeviceData(splits, TrainConfig(dataset="synthetic", subset=1024, val_size=200, train_images=5000),
                   torch.device("cpu"))


# -- bad keys ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler, message", [
    ({**HALVING, "screen_epoch": 2}, r"sh.yaml:\d+: unknown halving key 'screen_epoch' \(did you mean 'screen_epochs'"),
    ({"name": "halving"}, r"sh.yaml:\d+: scheduler: halving needs screen_epochs"),
    ("halving", "scheduler: halving needs its screen"),
    ({**HALVING, "reduction_factor": 1}, r"sh.yaml:\d+: reduction_factor must be a number > 1"),
    ({**HALVING, "rungs": 1}, r"sh.yaml:\d+: rungs: expected a whole number >= 2"),
    ({**HALVING, "screen_epochs": 0}, r"sh.yaml:\d+: screen_epochs: expected a whole number >= 1"),
    ({**HALVING, "screen_subset": 16}, r"sh.yaml:\d+: screen_subset 16 is smaller than a batch \(32 images\)"),
    ({**HALVING, "correlation_sample": -1}, r"sh.yaml:\d+: correlation_sample: expected a whole number >= 0"),
])
def test_bad_halving_keys_are_one_line_naming_file_and_line(tmp_path, scheduler, message):
    with pytest.raises(UserError, match=message) as exc:
        load_frontier(write(tmp_path, {**FILE, "scheduler": scheduler}))
    assert "\n" not in str(exc.value)


def test_halving_and_asha_are_told_apart(tmp_path):
    spec = load_frontier(write(tmp_path, FILE))
    assert spec.halving.screen_subset == 512 and spec.scheduler is None
    asha = load_frontier(write(tmp_path, {**FILE, "scheduler": {"name": "asha", "grace_period": 1}}))
    assert asha.halving is None and asha.scheduler.name == "asha"


# -- end to end -------------------------------------------------------------------------------------------
class Poison:
    """A test accuracy that fails whatever reads it: comparing, converting or printing it."""

    def _read(self, *args, **kwargs):
        raise AssertionError("the search read a test accuracy")

    __float__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __format__ = __bool__ = __add__ = __radd__ = _read
    __hash__ = None


class Counting(InProcessExecutor):
    """The in-process executor, counting the jobs it trains (not those the store already holds); the search's
    results carry poisoned test accuracies (the re-training's, the reported numbers, stay real)."""

    def __init__(self):
        self.trained, self.jobs = 0, []

    def map(self, jobs, runs_root, on_done=None):
        out = super().map(jobs, runs_root, on_done)
        self.trained += sum(r["status"] != "skipped" for r in out)
        self.jobs += jobs
        search = [not any(t == "frontier-final" for t in j.config["tags"]) for j in jobs]
        return [{**r, "final_test_acc": Poison(), "best_test_acc": Poison()} if s else r for r, s in zip(out, search)]


def test_halving_screens_promotes_on_val_checks_the_rank_and_resumes_without_training(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    path = write(tmp_path, FILE)
    real = frontier._final
    monkeypatch.setattr(frontier, "_final", lambda root, run_id, key, notes=None: real(root, run_id, key, notes) if key == "val_acc"
                        else pytest.fail("the search read a test accuracy"))
    store = RunStore(runs)

    def stop_after_three(res):  # Ctrl-C in the middle of rung 0
        if len(store.list_runs()) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        frontier.run_frontier(load_frontier(path), runs, Counting(), on_done=stop_after_three)
    ex = Counting()  # started again: the three measured jobs are not trained again
    summary = frontier.run_frontier(load_frontier(path), runs, ex)
    b = summary["budgets"][0]
    s = b["screening"]
    assert ex.trained == 6 + 4 + 1 - 3 and len(store.list_runs()) == 11  # screen, full, the winner's fresh seed
    assert s["jobs_trained"] == 6 + 4 - 3
    # rung 0: every trial, 1 epoch on 512 of the 922 training images, validated on the full runs' split
    screen = [j for j in ex.jobs if " rung 0 " in j.label]
    assert len(screen) == 6 and {(j.config["epochs"], j.config["train_images"]) for j in screen} == {(1, 512)}
    assert {j.config["val_size"] for j in ex.jobs} == {102} and {j.config["subset"] for j in ex.jobs} == {1024}
    val = {t["trial"]: t["rungs"] for t in b["trials"]}
    for t in b["trials"]:  # each rung's score is the run's stored final validation accuracy
        run0 = next(j for j in screen if j.meta["trial"] == t["trial"])
        stored = store.read_result(store.list_runs(tag=f"job:{run0.key}")[0].id)["final"]["val_acc"]
        assert t["rungs"]["0"] == stored
    assert [r["trials"] for r in s["rungs"]] == [6, 2] and s["rungs"][1]["rank_check"] == 2
    params = {t["trial"]: t["params"] for t in b["trials"]}
    best2 = sorted(val, key=lambda k: (-val[k]["0"], params[k], k))[:2]  # ties: fewer parameters
    assert sorted(s["rungs"][0]["promoted"]) == sorted(best2)
    assert not set(s["rank_check_sample"]) & set(best2) and len(s["rank_check_sample"]) == 2
    full = [t for t in b["trials"] if t["status"] == "completed"]
    assert len(full) == 4 and all(t["val_acc"] == t["rungs"]["1"] for t in full)
    assert {t["status"] for t in b["trials"]} == {"completed", "stopped"}
    # the winner: the best full-fidelity validation accuracy; the rank check over all four full-fidelity trials
    assert b["winner"]["trial"] == min(full, key=lambda t: (-t["val_acc"], t["params"], t["trial"]))["trial"]
    assert s["n"] == 4 and s["spearman"] == pytest.approx(spearman([t["rungs"]["0"] for t in full],
                                                                   [t["rungs"]["1"] for t in full]))
    assert s["epoch_equivalents"] == {"halving": round(6 * 512 / 922 + 4 * 3, 2), "grid": 18}
    assert b["final"]["seeds"] == [2] and b["final"]["completed"] == 1  # fresh seed after search seed 1
    table = frontier.format_table(summary)
    assert "halving 6 x 1 ep on 512 img -> 2+2 x 3 ep" in table and "n=4" in table
    assert ("WARNING" in table) == (s["flag"] is not None)
    from convladder.report.frontierreport import frontier_rows  # the report's table shows the rank check too

    head, rows = frontier_rows(summary)
    assert rows[0][head.index("screen vs full: spearman (n)")].startswith(f"{s['spearman']:+.2f} (n=4)")
    # once more: every job is in the store, so nothing trains and the decisions are the same
    again = Counting()
    summary2 = frontier.run_frontier(load_frontier(path), runs, again)
    assert again.trained == 0 and len(again.jobs) == 11 and len(store.list_runs()) == 11
    assert summary2["budgets"][0]["screening"]["spearman"] == s["spearman"]
    assert summary2["budgets"][0]["winner"]["trial"] == b["winner"]["trial"]


def test_dry_run_shows_rungs_and_cost_against_a_grid(tmp_path, capsys):
    code, out, err = run_cli(capsys, "frontier", str(write(tmp_path, FILE)), "--dry-run")
    assert code == 0, err
    assert "successive halving, 6 trials x 1 search seed(s):" in out
    assert "rung 0:    6 trial(s), 1 epoch(s), 512 training images" in out
    assert "rung 1:    2 trial(s) + 2 not promoted (the rank check), 3 epoch(s), all training images = the full" in out
    assert f"search: {6 * 512 / 922 + 12:.1f} epoch-equivalents" in out and "against 18.0 for the plain grid" in out
    assert not RunStore(tmp_path / "runs").list_runs()


def test_a_flagged_rank_check_is_loud_in_the_table():
    s = {"rungs": [{"trials": 6, "epochs": [1], "train_images": ["all"]},
                   {"trials": 2, "rank_check": 1, "epochs": [2], "train_images": ["all"]}],
         "spearman": 0.2, "n": 3, "flag": rank_flag(0.2, 3), "epoch_equivalents": {"halving": 12, "grid": 24},
         "rank_check_sample": ["t001"]}
    summary = {"name": "x", "dataset": "synthetic", "selected_on": "val", "seeds": 1,
               "budgets": [{"budget": 1000, "candidates": {}, "trials": [], "winner": None, "final": None,
                            "screening": s}]}
    assert "WARNING: TOO FEW TO JUDGE: 3 FULL-FIDELITY TRIAL(S)" in frontier.format_table(summary)
    assert "rank-check sample" not in frontier.format_table(summary)
    s["winner_from"] = "rank-check sample"  # the 5k MNIST search's winner: the screen had ranked it 8th of 13
    assert "the winner came from the rank-check sample (the screen had not promoted it)" in frontier.format_table(summary)
