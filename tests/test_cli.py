"""The command line as a user meets it: generated train options, one --subset, did-you-mean, flags, exits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from cli_util import run_cli
from convladder.cli import build_command
from convladder.train.config import SUBSET_HELP, TrainConfig, build_config, validate

# every option `convladder train` had before its options were generated (README, docs/training.md use them)
OLD_TRAIN_OPTIONS = (
    "--model -m --model-args --dataset --data-root --epochs --batch-size --optimizer --lr --momentum --nesterov "
    "--no-nesterov --weight-decay --schedule --label-smoothing --augment --no-augment --erase --seed --seeds --device "
    "--threads --compile --no-compile --eval-every --val-every --val-size --select-on --subset --target --name --tag "
    "--runs --config -c --set --print-config --resume --quiet -q --json --executor --ray-address --cpus-per-trial "
    "--gpus-per-trial").split()
TINY = ["--dataset", "synthetic", "--epochs", "1", "--threads", "1", "--batch-size", "64", "--no-augment",
        "--val-size", "0"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


def options_of(*path: str) -> dict[str, object]:
    """Every option string of a (sub)command -> its parameter."""
    command = build_command()
    for name in path:
        command = command.commands[name]
    return {o: p for p in command.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]}


def printed_config(capsys, *args: str) -> dict:
    code, out, err = cli(capsys, "train", *args, "--print-config")
    assert code == 0, err
    return yaml.safe_load(out)


# -- options generated from TrainConfig ---------------------------------------------------------------------
def test_train_options_come_from_config_fields_and_old_names_still_work(capsys) -> None:
    opts = options_of("train")
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["cli"]:
            continue
        param = opts["--" + f.name.replace("_", "-")]
        assert param.name == f.name and param.help.startswith(f.metadata["help"])  # help from the field
    # a field with no hand-written option before (schedule step's gamma) is an option now, typed
    code, _, err = cli(capsys, "train", "--gamma", "half", "--print-config")
    assert code == 2 and "--gamma" in err
    missing = [o for o in OLD_TRAIN_OPTIONS if o not in opts]
    assert not missing, missing


def test_train_options_overrides_and_precedence(capsys, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 7\nlr: 0.3\noptimizer: SGD\n")
    cfg = printed_config(capsys, "-m", "tiny8k", "--config", str(recipe), "--epochs", "3", "--no-nesterov",
                         "--val-every", "2", "--gamma", "0.5", "--tag", "a", "--tag", "b", "--set", "batch_size=32",
                         "weight_decay=0.001", "--model-args", "{}")
    assert (cfg["epochs"], cfg["lr"], cfg["optimizer"], cfg["nesterov"]) == (3, 0.3, "sgd", False)
    assert (cfg["eval_every"], cfg["gamma"], cfg["batch_size"], cfg["weight_decay"]) == (2, 0.5, 32, 0.001)
    assert cfg["tags"] == ["a", "b"] and cfg["model_args"] == {}


def test_shared_options_declared_once() -> None:
    """--runs and the executor options are the same declarations in train, sweep and ladder run."""
    shared = ("--runs", "--executor", "--ray-address", "--cpus-per-trial", "--gpus-per-trial")
    commands = [options_of("train"), options_of("sweep"), options_of("ladder", "run")]
    for opt in shared:
        helps = {c[opt].help for c in commands}
        assert len(helps) == 1, (opt, helps)


# -- did you mean -------------------------------------------------------------------------------------------
def test_mistyped_option_says_did_you_mean(capsys) -> None:
    code, out, err = cli(capsys, "train", "--epoch", "3")
    assert code == 2 and "No such option --epoch, did you mean --epochs?" in err and "Traceback" not in err
    code, _, err = cli(capsys, "lr-find", "--batchsize", "3")
    assert code == 2 and "did you mean --batch-size?" in err


def test_unknown_config_key_says_did_you_mean(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "train", "epoch=3", "--print-config")
    assert code == 2 and "unknown config key 'epoch', did you mean 'epochs'?" in err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lable_smoothing: 0.1\n")
    code, _, err = cli(capsys, "train", "--config", str(recipe), "--print-config")
    assert code == 2 and "did you mean 'label_smoothing'?" in err


# -- one name, --version, completion, help text -------------------------------------------------------------
def test_dataset_is_one_name_with_data_as_hidden_alias(capsys) -> None:
    for path in (("train",), ("ladder", "run")):
        opts = options_of(*path)
        assert not opts["--dataset"].hidden and opts["--data"].hidden
    assert printed_config(capsys, "--data", "synthetic")["dataset"] == "synthetic"
    code, _, err = cli(capsys, "train", "--data", "mnist", "--dataset", "synthetic", "--print-config")
    assert code == 2 and "disagree" in err


def test_version_and_completion(capsys, monkeypatch) -> None:
    from convladder import __version__

    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"convladder {__version__}"
    assert "--install-completion" in options_of()
    monkeypatch.setenv("_CONVLADDER_COMPLETE", "complete_bash")  # what the installed bash completion sends
    monkeypatch.setenv("COMP_WORDS", "convladder train --epo")
    monkeypatch.setenv("COMP_CWORD", "2")
    code, out, _ = cli(capsys)
    assert code == 0 and out.split() == ["--epochs"]


def _all_commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _all_commands(sub, (*path, name))


def test_help_shows_flags_as_flags_and_no_doubled_percent(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for path, _ in _all_commands(build_command()):
        code, out, err = cli(capsys, *path, "--help")
        assert code == 0, (path, err)
        assert "<bool>" not in out and "%%" not in out, (path, out)
    code, out, _ = cli(capsys, "data", "info", "--help")
    assert "--json " in out


# -- --subset: one meaning ----------------------------------------------------------------------------------
def test_subset_means_the_same_everywhere(capsys) -> None:
    from convladder.ladder.ladder import parse_ladder
    from convladder.ladder.run import step_config
    from convladder.train.device_data import DeviceData, synthetic_splits

    cfg = printed_config(capsys, "--dataset", "synthetic", "--subset", "2000")  # was an error (val 5000 >= 2000)
    assert cfg["subset"] == 2000 and cfg["val_size"] == 200
    data = DeviceData(synthetic_splits(), TrainConfig.from_dict(cfg), torch.device("cpu"))
    assert (data.n_train, len(data.y_val)) == (1800, 200)
    # the Python API (no CLI normalising) holds out the same: the rule lives in the data's one place
    raw = TrainConfig(dataset="synthetic", subset=1000)
    assert (DeviceData(synthetic_splits(), raw, torch.device("cpu")).n_train, raw.val_size) == (900, 5000)
    assert printed_config(capsys, "--subset", "10000", "--val-size", "500")["val_size"] == 500  # smaller is kept
    ladder = parse_ladder("name: s\nbase:\n  model: tiny8k\n  config: {val_size: 5000}\nsteps:\n"
                          "  - name: a\n    change: start\n", "s.yaml")
    assert step_config(ladder, ladder.step(1), subset=2000)["val_size"] == 200  # was 2000 // 10 only if val >= subset
    for path in (("train",), ("ladder", "run"), ("lr-find",)):
        assert options_of(*path)["--subset"].help.startswith(SUBSET_HELP)


# -- failures are not success -------------------------------------------------------------------------------
SPEC = "c1[conv3x3(4) relu] t[maxpool2x2] out[gap conv1x1(10) logsoftmax]"


def _sweep(tmp_path: Path, lrs: list[float]) -> Path:
    base = {"dataset": "synthetic", "subset": 256, "epochs": 1, "val_size": 0, "batch_size": 64, "threads": 1,
            "clean_train_eval": 0, "augment": False}
    path = tmp_path / "sweep.yaml"
    path.write_text(f'name: s\nmodel: "{SPEC}"\nbase: {json.dumps(base)}\n'
                    f"params:\n  lr: {{role: studied, values: {json.dumps(lrs)}}}\n")
    return path


def test_sweep_where_every_trial_failed_exits_non_zero(capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "sweep", str(_sweep(tmp_path, [-1.0, -2.0])), "--runs", str(tmp_path / "runs"))
    assert code == 1 and "every trial failed" in err and "0 completed, 2 failed" in out
    code, _, _ = cli(capsys, "sweep", str(_sweep(tmp_path, [-1.0])), "--runs", str(tmp_path / "runs"), "--json")
    assert code == 1


def test_sweep_with_some_failed_trials_says_so(capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "sweep", str(_sweep(tmp_path, [-1.0, 0.05])), "--runs", str(tmp_path / "runs"))
    assert code == 0 and "1 completed" in out and "warning: 1 of 2 trial(s) failed" in err


def test_ladder_where_every_job_failed_exits_non_zero(capsys, tmp_path: Path) -> None:
    lad = tmp_path / "l.yaml"
    lad.write_text(f'name: l\nbase:\n  model: "{SPEC}"\n  config: {{epochs: 1, val_size: 0}}\nsteps:\n'
                   "  - name: a\n    change: start\n")
    code, out, err = cli(capsys, "ladder", "run", str(lad), "--dataset", "no-such-data", "--runs", str(tmp_path / "r"))
    assert code == 1 and "1 failed" in out and "every job failed" in err


# -- the house ----------------------------------------------------------------------------------------------
def test_validate_checks_without_changing_the_config() -> None:
    cfg = TrainConfig(model_args={"width": 4})
    before = dataclasses.asdict(cfg)
    assert validate(cfg) is None and dataclasses.asdict(cfg) == before
    assert TrainConfig.from_dict({"optimizer": "AdamW", "schedule": "Cosine"}).optimizer == "adamw"
    with pytest.raises(Exception, match="optimizer 'SGD' is not one of"):
        validate(TrainConfig(optimizer="SGD"))  # only from_dict reads user text; validate does not fix it up
    assert build_config(options={"optimizer": "Adam"}).optimizer == "adam"


def test_executor_factory_and_lrfind_live_below_the_cli() -> None:
    import importlib

    import convladder.executors.commands as ex_cli
    from convladder.executors.base import InProcessExecutor, make_executor

    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    assert not hasattr(ex_cli, "make_executor")
    assert importlib.import_module("convladder.train.lrfind").suggest_lr
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("convladder.executors.lrfind")


def test_dead_code_is_gone() -> None:
    import convladder.executors.sweep as sweep
    import convladder.ladder.run as ladder_run

    assert not hasattr(sweep, "trial_dicts") and not hasattr(ladder_run, "OPTION_KEYS")


# -- what the numbers are: final or best epoch, and which split picked the best ------------------------------
def test_train_seeds_summary_says_final_epoch_and_which_split_picked_the_best(capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "train", "--model", SPEC, *TINY[:-2], "--epochs", "2", "--subset", "640",
                         "--val-size", "64", "--select-on", "test", "--seeds", "2", "--runs", str(tmp_path / "runs"))
    assert code == 0, err
    lines = [line for line in out.splitlines() if "over seeds [1, 2]" in line]
    assert len(lines) == 2, out
    assert lines[0].startswith("final test acc (last epoch) over seeds [1, 2]: min")
    assert "best epoch picked on the TEST set (select_on test)" in lines[1]  # was 'best epoch test acc over seeds'
    assert "every seed's final test acc >= 99.4" in out


def test_sweep_ranking_says_it_is_the_final_test_accuracy(capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "sweep", str(_sweep(tmp_path, [0.05, 0.1])), "--runs", str(tmp_path / "runs"))
    assert code == 0, err
    assert "min acc" not in out  # which split, which epoch?
    head = next(line for line in out.splitlines() if line.split()[:2] == ["rank", "trial"])
    assert "min final test" in head
    assert "ranked by the least final-epoch TEST accuracy over 1 seed(s): the test set orders the trials" in out
