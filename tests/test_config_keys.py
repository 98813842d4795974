"""Config keys describe themselves (issue 32): the key lists are derived from TrainConfig's field metadata,
stored runs keep their job keys, and `lr: auto` works the same in the CLI, Python and sweep/ladder files."""

from __future__ import annotations

import json

import pytest
import yaml

import convladder
from convladder.errors import UserError
from convladder.executors.base import InProcessExecutor, job_key
from convladder.executors.sweep import run_sweep
from convladder.executors.sweepspec import load_sweep
from convladder.report.rundata import experiment_key
from convladder.runs.store import RunStore
from convladder.train.config import (ADDED_LATER, KEY_EXCLUDED, LADDER_RUN, LR_FIND, TrainConfig, build_config,
                                     cli_keys)
from convladder.train.lrfind import suggest_lr
from cli_util import run_cli

# A config as stored by the code before the keys described themselves (TrainConfig().to_dict() at a9f48cb),
# and the job keys that code gave these configs: runs and ladder/sweep jobs stored with them must keep them.
STORED = json.loads(
    '{"model": "frontier15k", "model_spec": null, "model_args": null, "dataset": "mnist", "data_root": null, '
    '"subset": 0, "val_size": 5000, "split_seed": 0, "epochs": 12, "batch_size": 128, "optimizer": "sgd", '
    '"lr": 0.1, "momentum": 0.9, "nesterov": true, "weight_decay": 0.0, "schedule": "onecycle", "step_size": 1, '
    '"gamma": 0.7, "pct_start": 0.2, "div_factor": 10.0, "final_div_factor": 100.0, "label_smoothing": 0.0, '
    '"precise_bn": 0, "augment": true, "rotate": 7.0, "translate": 2.0, "scale": 0.1, "erase": 0.0, "crop": 0, '
    '"crop_epochs": 0, "pad_crop": 0, "flip": false, "init": "torch", "seed": 1, "seeds": 1, "device": "auto", '
    '"threads": 0, "channels_last": "auto", "precision": "auto", "data_parallel": 1, "compile": false, '
    '"cuda_graphs": "auto", "batched": "auto", "eval_every": 1, "eval_batch_size": 500, "clean_train_eval": 10000, '
    '"shift_eval": 0, "select_on": "val", "target": 99.4, "name": null, "tags": []}')
CASES = {
    "default": (STORED, "12ce77fdff33fb87"),
    "ladder step": ({**STORED, "model": "tiny8k", "model_spec": "c1[conv3x3(8)]", "lr": 0.05, "epochs": 2,
                     "subset": 10000, "seed": 3, "name": "ladder:eip4-s2:step 3", "device": "cpu", "threads": 2,
                     "tags": ["ladder:eip4-s2", "job:0123456789abcdef", "source:/x/y.yaml"]}, "68f3891973f52518"),
    "newer keys set": ({**STORED, "precision": "bf16", "pad_crop": 4, "flip": True, "model_args": {"width": 16}},
                       "928a0cc42f2d66fb"),
    "how it runs": ({**STORED, "compile": True, "channels_last": "on", "cuda_graphs": "off", "batched": "off",
                     "eval_batch_size": 1000}, "12ce77fdff33fb87"),
    "stored before the newer keys": ({k: v for k, v in STORED.items()
                                      if k not in ("precision", "pad_crop", "flip", "model_args")},
                                     "12ce77fdff33fb87"),
}
# the lists as they were written by hand before (executors/base.py, report/rundata.py, the commands)
OLD_KEY_EXCLUDED = {"name", "device", "threads", "eval_batch_size", "compile", "channels_last", "cuda_graphs",
                    "batched"}
OLD_ADDED_LATER = {"model_args": None, "precision": "auto", "pad_crop": 0, "flip": False}
OLD_NOT_THE_EXPERIMENT = {"seed", "seeds", "name", "tags", "threads", "device", "step_name", "change", "handout"}
OLD_LR_FIND_KEYS = {"model", "model_args", "dataset", "subset", "batch_size", "optimizer", "seed", "device"}
OLD_RUN_KEYS = {"epochs", "subset", "dataset", "device"}


@pytest.mark.parametrize("name", CASES)
def test_job_keys_of_stored_configs_do_not_change(name: str) -> None:
    config, key = CASES[name]
    assert job_key(config) == key


def test_a_fresh_default_config_keys_as_the_stored_one() -> None:
    """Keys added since (at the value older runs had) leave the key alone: a default job is not trained again."""
    assert job_key(TrainConfig().to_dict()) == CASES["default"][1]


def test_the_derived_lists_are_the_hand_written_ones() -> None:
    # teacher_runs: the store a distilled run's teacher was found in, a path on one machine (train/distill.py)
    assert set(KEY_EXCLUDED) == OLD_KEY_EXCLUDED | {"teacher_runs"}
    assert ADDED_LATER.items() >= OLD_ADDED_LATER.items()  # newer keys may join; none of these may change
    assert all(getattr(TrainConfig(), k) == v for k, v in ADDED_LATER.items())  # at its default, an old run's value
    assert set(cli_keys(LR_FIND)) == OLD_LR_FIND_KEYS and set(cli_keys(LADDER_RUN)) == OLD_RUN_KEYS


@pytest.mark.parametrize("name", CASES)
def test_experiment_keys_follow_the_old_rule(name: str) -> None:
    config = {**CASES[name][0], "step_name": "3", "change": "add BN", "handout": {"test": 99.0}}
    old = {k: v for k, v in config.items()
           if k not in OLD_NOT_THE_EXPERIMENT and not (k in OLD_ADDED_LATER and v == OLD_ADDED_LATER[k])}
    assert experiment_key(config) == old


# -- lr: auto, the same everywhere -----------------------------------------------------------------------------

SPEC = "c1[conv3x3({c1}, bias=false) relu bn] t[maxpool2x2 conv1x1(8, bias=false)] out[gap conv1x1(10, bias=false)]"
SMALL = {"dataset": "synthetic", "subset": 640, "epochs": 1, "val_size": 0, "batch_size": 64, "threads": 1,
         "clean_train_eval": 0, "augment": False}


@pytest.fixture(scope="module")
def suggested() -> float:
    """What the LR range test suggests for the small config (deterministic for its seed)."""
    found = suggest_lr(TrainConfig.from_dict({**SMALL, "model": SPEC.format(c1=4)}))
    assert found.suggested_lr is not None
    return found.suggested_lr


def test_lr_auto_is_a_word_of_the_lr_key_only() -> None:
    assert TrainConfig.from_dict({"lr": " Auto "}).lr == "auto"
    with pytest.raises(UserError, match=r"'lr': 'fast' is not a valid float or 'auto'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(UserError, match="'momentum'"):
        TrainConfig.from_dict({"momentum": "auto"})
    build_config(options={"lr": "auto"})  # validates: the word passes until training resolves it


def test_lr_auto_in_python_trains_with_the_suggestion(tmp_path, suggested: float) -> None:
    result = convladder.train(SPEC.format(c1=4), lr="auto", runs=tmp_path, quiet=True, **SMALL)
    assert RunStore(tmp_path).read_config(result.run_id)["lr"] == suggested


def test_lr_auto_in_a_sweep_file_trains_with_the_suggestion(tmp_path, suggested: float) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "auto", "model": SPEC, "budget": 5000, "search": "grid", "seeds": 1,
                                    "base": {**SMALL, "lr": "auto"},
                                    "params": {"c1": {"role": "studied", "values": [4]}}}))
    result = run_sweep(load_sweep(path), tmp_path / "runs", InProcessExecutor())
    (trial,) = result.trials
    assert trial.status == "completed", trial.runs
    assert RunStore(tmp_path / "runs").read_config(trial.runs[0]["run_id"])["lr"] == suggested


def test_lr_auto_by_set_on_the_command_line(capsys, suggested: float) -> None:
    """`--set lr=auto` (and `lr: auto` in a --config file) as `--lr auto`: the number is found before training."""
    args = [f"{k}={v}" for k, v in SMALL.items()]
    code, out, err = run_cli(capsys, "train", "--model", SPEC.format(c1=4), "--set", "lr=auto", "--print-config",
                             *args)
    assert code == 0, err
    assert yaml.safe_load(out)["lr"] == suggested
