"""The training configuration: one dataclass, YAML files, `key=value` overrides and validation.

Precedence when the CLI builds a config: defaults < `--config FILE` < explicit options < `--set k=v`.
Each field's `metadata` describes the key once: its help and panel, which commands show it as an option
(cliopts.py generates them), whether it is part of the experiment (the job key, the report's experiment key),
its value for runs stored before it existed, and words it takes besides its type (`lr: auto`). Every key list
elsewhere is derived from these fields, so a new key is one field here (+ its use) with no second list to keep.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.safeparse import load as load_yaml
from convladder.safeparse import clip, close_names, read_text

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
SCHEDULES = ("none", "step", "onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
SELECT_ON = ("val", "test")
TRISTATE = ("auto", "on", "off")
BATCHED = ("auto", "on", "off", "grouped", "streams")
PRECISIONS = ("auto", "fp32", "bf16")
INITS = ("torch", "glorot", "kaiming")  # train/init.py implements them
BN_WEIGHTS = ("learn", "frozen")  # train/init.py freezes, train/optim.py groups the BN lr
FIRST_LAYERS = ("learn", "whiten", "whiten-frozen")  # train/whiten.py
# choice-valued keys, compared in lower case (`optimizer: SGD` in a YAML file means sgd)
CHOICES: dict[str, tuple[str, ...]] = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES,
                                       "select_on": SELECT_ON, "channels_last": TRISTATE, "cuda_graphs": TRISTATE,
                                       "batched": BATCHED, "init": INITS, "precision": PRECISIONS,
                                       "bn_weight": BN_WEIGHTS, "first_layer": FIRST_LAYERS}
SUBSET_HELP = ("train on the first N training images only (0 = all); the validation split is held out of "
               "these N: val_size images, at most N/10 (--subset 10000: 9,000 train, 1,000 validate)")


TRAIN, LR_FIND, LADDER_RUN = "train", "lr-find", "ladder run"  # commands whose options are generated from fields
ALWAYS = "always"  # `older=`: the key is as old as stored runs, so there is no value to assume for them


def _f(default: Any, help: str, panel: str, *, cli: bool = True, also: tuple[str, ...] = (),
       aliases: tuple[str, ...] = (), cli_type: type | None = None, job_key: bool = True, experiment: bool = True,
       older: Any = ALWAYS, words: dict[str, str] | None = None) -> Any:
    """A dataclass field that describes its key.

    help/panel: the option's help and its group in `--help`; cli=False: a config key only; the option is on
    `train`, and on the commands in `also`. job_key=False: how or where a run executes, not what it computes
    (left out of the job key, so a job moved to another machine keeps it). experiment=False: not what makes two
    runs the same experiment in the report (seeds, names, where it ran). older: the value runs stored before the
    key existed had (a job key leaves the key out at that value, so those jobs keep their key). words: text
    values beside the field's type, each resolved before training (`resolve_words`).
    """
    meta = {"help": help, "panel": panel, "cli": cli, "commands": (TRAIN, *also) if cli else (), "aliases": aliases,
            "cli_type": cli_type, "job_key": job_key, "experiment": experiment, "older": older,
            "words": words or {}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


MODEL, DATA, OPTIM, AUG, EVAL, RUN = "Model", "Data", "Optimiser and schedule", "Augmentation", "Evaluation", "Run"


@dataclass
class TrainConfig:
    """Everything that decides a training run. Accuracies are percentages (0-100).

    The defaults train the `frontier15k` reference network (14,523 params, the assignment's 15k budget) to >= 99.4 %
    MNIST test accuracy: final 99.50-99.60 % on each of the fresh seeds 6-10 (bench/results/train-cpu-frontier15k-seeds6-10.md);
    `tiny8k` on the same recipe passed 4 of those 5.
    """

    model: str = _f("frontier15k", "registered name, spec file, spec text, or path/to/file.py:ClassName (your "
                    "nn.Module; importing it runs that file)", MODEL, aliases=("-m",), also=(LR_FIND,))
    model_spec: str | None = _f(None, "resolved spec text (filled in by the trainer; what a run rebuilds from)",
                                MODEL, cli=False)
    model_args: dict | None = _f(None, """constructor arguments of your class as a JSON object, e.g. '{"width": 16}'""",
                                 MODEL, cli_type=str, also=(LR_FIND,), older=None)
    dataset: str = _f("mnist", "mnist, fashion-mnist, a name imported with `data fetch --from`, or synthetic "
                      "(generated, for tests and smoke runs)", DATA, also=(LR_FIND, LADDER_RUN))
    data_root: str | None = _f(None, "folder with the data set's files", DATA)
    subset: int = _f(0, SUBSET_HELP, DATA, also=(LR_FIND, LADDER_RUN))
    # after the split, unlike subset: a screened run validates on the very images the full runs do
    train_images: int = _f(0, "train on the first N of the training images left after the validation split is held "
                           "out (0 = all); the validation split stays the full run's (successive halving's screen)",
                           DATA, cli=False, older=0)
    val_size: int = _f(5000, "validation images held out of the training set for model selection (0 = no split)",
                       DATA)
    split_seed: int = _f(0, "seed of the validation split (fixed across seeds so seeds are comparable)", DATA)
    epochs: int = _f(12, "passes over the training images", OPTIM, also=(LADDER_RUN,))
    batch_size: int = _f(128, "images per training step", OPTIM, also=(LR_FIND,))
    optimizer: str = _f("sgd", "sgd, adam, adamw, adadelta", OPTIM, also=(LR_FIND,))
    lr: float = _f(0.1, "learning rate (max lr for onecycle), or 'auto' for the LR range test's suggestion", OPTIM,
                   cli_type=str, words={"auto": "the LR range test's suggestion"})
    momentum: float = _f(0.9, "momentum (sgd) or beta1 (adam, adamw); onecycle cycles it +-0.05 around this value",
                         OPTIM)
    nesterov: bool = _f(True, "Nesterov momentum (sgd)", OPTIM)
    weight_decay: float = _f(0.0, "L2 weight decay", OPTIM)
    schedule: str = _f("onecycle", "none, step, onecycle, cosine", OPTIM)
    step_size: int = _f(1, "epochs between lr drops (schedule step)", OPTIM)
    gamma: float = _f(0.7, "lr factor per drop (schedule step)", OPTIM)
    pct_start: float = _f(0.2, "onecycle warm-up fraction", OPTIM)
    div_factor: float = _f(10.0, "onecycle: initial lr = lr / div_factor", OPTIM)
    final_div_factor: float = _f(100.0, "onecycle: final lr = initial lr / final_div_factor", OPTIM)
    label_smoothing: float = _f(0.0, "label smoothing in [0, 1)", OPTIM)
    precise_bn: int = _f(0, "after the last epoch, recompute BatchNorm's running mean/var on N training images "
                         "without augmentation or dropout (0 = off; docs/training.md)", OPTIM)
    ema: float = _f(0.0, "weight EMA: decay per optimiser step, e.g. 0.999 (0 = off); the average is evaluated beside "
                    "the live weights each epoch, and selected, saved, exported and predicted with (docs/training.md)",
                    OPTIM, older=0.0)
    lookahead: int = _f(0, "Lookahead: every k optimiser steps the slow weights move lookahead_alpha of the way to the "
                        "trained (fast) ones, which restart from them (0 = off; docs/training.md)", OPTIM, older=0)
    lookahead_alpha: float = _f(0.5, "Lookahead's step: slow += alpha * (fast - slow), alpha in (0, 1] (with "
                                "lookahead k > 0)", OPTIM, older=0.5)
    # distillation (train/distill.py): a stored run's soft targets beside the labels
    teacher: str | None = _f(None, "distil from a stored run: its id, unique prefix or latest:<model, name or tag>, in "
                             "the same run store (--runs); recorded as the full run id (docs/training.md)",
                             "Distillation", older=None)
    distill_temperature: float = _f(4.0, "distillation temperature T: soft targets softmax(teacher logits / T)",
                                    "Distillation", older=4.0)
    distill_weight: float = _f(0.5, "weight of the soft loss T^2 KL(teacher || student); the hard cross-entropy "
                               "gets 1 - weight", "Distillation", older=0.5)
    # where the teacher was found (set with teacher): a worker whose own store lacks it reads it there
    teacher_runs: str | None = _f(None, "the run store the teacher was found in (filled in by the trainer)",
                                  "Distillation", cli=False, job_key=False, experiment=False, older=None)
    augment: bool = _f(True, "rotation/translation/scale on the device", AUG)
    rotate: float = _f(7.0, "degrees, uniform in [-rotate, rotate]", AUG)
    translate: float = _f(2.0, "pixels, uniform in [-translate, translate]", AUG)
    scale: float = _f(0.1, "uniform in [1 - scale, 1 + scale]", AUG)
    erase: float = _f(0.0, "random-erasing probability per image", AUG)
    crop: int = _f(0, "train the first crop_epochs epochs on the central crop x crop pixels of each (augmented) "
                   "image, a faster step on the CPU; needs a network that runs at that size (GAP); evaluation "
                   "always sees whole images (0 = off; docs/training.md)", AUG)
    crop_epochs: int = _f(0, "epochs trained on the crop (with crop > 0); later epochs train on whole images", AUG)
    pad_crop: int = _f(0, "natural images: pad each side with N black pixels, then crop a random image-sized "
                       "window (a shift of up to N pixels; CIFAR-10: 4); 0 = off (docs/data.md)", AUG, older=0)
    flip: bool = _f(False, "natural images: mirror half the training images left-right (not for digits or text)", AUG, older=False)
    init: str = _f("torch", "weight init: torch (PyTorch defaults), glorot (Keras' defaults), kaiming (He normal)",
                   OPTIM)
    first_layer: str = _f("learn", "first conv: learn (as init gives it), whiten (filters from the training images' "
                          "patch covariance, then trained), whiten-frozen (the same, not trained) (docs/training.md)",
                          OPTIM, older="learn")
    bn_lr: float = _f(1.0, "multiplier on the lr of BatchNorm's weight and bias (the schedule shapes it alike; 0 "
                      "freezes them)", OPTIM, older=1.0)
    bn_weight: str = _f("learn", "BatchNorm's weight (gamma): learn, or frozen at its initial 1", OPTIM, older="learn")
    seed: int = _f(1, "random seed of the run", RUN, also=(LR_FIND,), experiment=False)
    seeds: int = _f(1, "train seeds seed, seed+1, ... and report min/median/max", RUN, experiment=False)
    device: str = _f("auto", "auto, cpu, cuda, mps", RUN, also=(LR_FIND, LADDER_RUN), job_key=False, experiment=False)
    threads: int = _f(0, "torch CPU threads (0 = the cores other work leaves free, at least 1)", RUN, job_key=False,
                      experiment=False)
    channels_last: str = _f("auto", "auto, on, off (auto: on for CUDA only; slower on a 2-core CPU)", RUN,
                            job_key=False)
    precision: str = _f("auto", "the training step's arithmetic: auto, fp32, bf16 (auto: bf16 autocast on CUDA, fp32 "
                        "on the CPU; bf16 on the CPU pays off with AMX, Intel Xeon 4th gen and later; evaluation on "
                        "the CPU stays fp32; docs/training.md)", RUN, older="auto")
    data_parallel: int = _f(1, "CPU: split each batch across N model replicas stepped on N threads, one core each "
                            "(as nn.DataParallel: gradients averaged, BatchNorm sees batch/N images); 1 = off "
                            "(docs/training.md)", RUN)
    # how a run executes, not what it computes (cuda_graphs, batched: the same metrics to float tolerance)
    compile: bool = _f(False, "torch.compile the model", RUN, job_key=False)
    cuda_graphs: str = _f("auto", "auto, on, off: capture the training step once as a CUDA graph (CUDA only)", RUN,
                          job_key=False)
    batched: str = _f("auto", "seeds > 1 at once: auto, on, off, grouped, streams (auto: streams on CUDA)", RUN,
                      job_key=False)
    eval_every: int = _f(1, "evaluate val/test every N epochs (the last epoch always)", EVAL,
                         aliases=("--val-every",))
    eval_batch_size: int = _f(500, "images per evaluation batch", EVAL, job_key=False)
    clean_train_eval: int = _f(10000, "at the end, train accuracy without dropout/augmentation on N images", EVAL)
    shift_eval: int = _f(0, "at the end, test accuracy with the images shifted by 1..N pixels (up/down/left/right, "
                         "background fill; the notes' GAP vs non-GAP question); 0 = off", EVAL)
    select_on: str = _f("val", "val or test: which split picks the best epoch", EVAL)
    target: float = _f(99.4, "target test accuracy in percent, for the verdict", EVAL)
    name: str | None = _f(None, "a name for the run", RUN, job_key=False, experiment=False)
    # tags are in the job key (but for the job:/source: tags the executor adds), not in the experiment
    tags: list[str] = _f([], "tag the run (repeatable)", RUN, cli=False, experiment=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - set(field_names())
        if unknown:
            raise UserError(unknown_keys_message(unknown))  # a few named, never 10^6
        config = cls()
        for key, value in data.items():
            setattr(config, key, _coerce(key, value))
        return config

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def cli_keys(command: str = TRAIN) -> list[str]:
    """The keys `command` (train, lr-find, ladder run) takes as options, in the fields' order."""
    return [f.name for f in dataclasses.fields(TrainConfig) if command in f.metadata["commands"]]


def _keys_where(flag: str, value: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata[flag] == value)


# Derived from the fields' metadata; executors/base.py (job keys) and report/rundata.py (experiments) read these.
KEY_EXCLUDED = _keys_where("job_key", False)  # where/how a run executes: not in the job key
NOT_THE_EXPERIMENT = _keys_where("experiment", False)  # seeds, names, where it ran: not the report's experiment
# keys newer than some stored runs, with the value those runs had: at that value a key is left out of job and
# experiment keys, so the runs stored before it existed keep theirs
ADDED_LATER = {f.name: f.metadata["older"] for f in dataclasses.fields(TrainConfig) if f.metadata["older"] != ALWAYS}


def word_of(key: str, value: Any) -> str | None:
    """The word (e.g. 'auto' for lr) `value` is, if the key takes words and it is one; else None."""
    words = _field(key).metadata["words"]
    if words and isinstance(value, str) and value.strip().lower() in words:
        return value.strip().lower()
    return None


def resolve_words(config: TrainConfig, note: Any = None, *, data: Any = None) -> TrainConfig:
    """The config with each word replaced by the value it stands for (lr: auto -> the LR range test's suggestion).

    Every way into training calls this before it trains, so `lr: auto` works the same from the CLI, Python and
    ladder/sweep files; a config without words comes back as it is. `note(text)` says what was found.
    """
    for f in dataclasses.fields(TrainConfig):
        word = word_of(f.name, getattr(config, f.name))
        if word is not None:
            config = _RESOLVERS[(f.name, word)](config, note, data)
    return config


def _lr_from_range_test(config: TrainConfig, note: Any, data: Any) -> TrainConfig:
    from convladder.train.lrfind import suggest_lr  # same layer, imported late: it needs torch

    # the range test ramps its own lr; the field's default only stands in for 'auto' while it runs
    found = suggest_lr(config.replace(lr=_field("lr").default), data=data)
    if found.suggested_lr is None:
        raise UserError(f"lr auto: the LR range test found no suggestion ({found.suggestion}); give lr explicitly")
    if note is not None:
        note(f"lr auto: the LR range test suggests {found.suggested_lr:.4g} ({found.suggestion})")
    return config.replace(lr=found.suggested_lr)


_RESOLVERS = {("lr", "auto"): _lr_from_range_test}  # (key, word) -> what finds its value


# other libraries' names for a key, which neither spelling nor words relate to ours
def unknown_key(key: str, names: list[str] | None = None, what: str = "config key") -> str:
    """"unknown config key 'epoch' — did you mean 'epochs'?": a few close names, never the whole list."""
    close = close_names(key[:100], names or field_names())
    hint = (", did you mean " + " or ".join(repr(c) for c in close) + "?" if close
            else " — `convladder train --help` lists the keys (TrainConfig in Python)")
    return f"unknown {what} {clip(key, 60)}{hint}"


def unknown_keys_message(unknown: Any, names: list[str] | None = None, what: str = "config key",
                         shown: int = 3) -> str:
    """unknown_key for the first `shown` of several unknown keys, then how many more."""
    keys = sorted(str(k) for k in unknown)
    if len(keys) == 1:
        return unknown_key(keys[0], names, what)
    parts = []
    for key in keys[:shown]:
        close = close_names(key[:100], names or field_names())
        parts.append(clip(key, 60) + (" (did you mean " + " or ".join(map(repr, close)) + "?)" if close else ""))
    more = f" and {len(keys) - shown:,} more" if len(keys) > shown else ""
    return f"unknown {what}s {', '.join(parts)}{more} — `convladder train --help` lists the keys (TrainConfig in Python)"


def val_images(config: TrainConfig) -> int:
    """Validation images a run holds out: val_size, and with a subset of N at most N // 10 of them."""
    return min(config.val_size, config.subset // 10) if config.subset else config.val_size


def crop_at(config: TrainConfig, epoch: int) -> int:
    """The crop size training epoch `epoch` (1-based) uses: config.crop during the first crop_epochs, else 0 (whole)."""
    return config.crop if config.crop and epoch <= config.crop_epochs else 0


def _field(key: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == key)


def _field_type(key: str) -> str:
    return str(_field(key).type)


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type; strings like '0.1' or 'true' are parsed."""
    kind = _field_type(key)
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"config key {key!r} cannot be empty")
    if kind.startswith("dict"):
        return _coerce_dict(key, value)
    word = word_of(key, value)
    if word is not None:  # e.g. lr: auto, kept as the word until training resolves it (resolve_words)
        return word
    try:
        if kind.startswith("list"):
            if isinstance(value, str):
                return [v for v in (s.strip() for s in value.split(",")) if v]
            return [str(v) for v in value]
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind == "float":
            return float(value)
        return str(value).lower() if key in CHOICES else str(value)
    except (TypeError, ValueError):
        words = "".join(f" or {w!r}" for w in _field(key).metadata["words"])  # lr: a float or 'auto'
        raise UserError(f"config key {key!r}: {clip(value)} is not a valid {kind.replace(' | None', '')}{words}") from None


def _coerce_dict(key: str, value: Any) -> dict:
    """A mapping, or its JSON text (e.g. --model-args '{"width": 16}')."""
    from convladder.spec.own import parse_model_args

    return parse_model_args(value, f"config key {key!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"config file {p} does not exist")
    try:
        data = load_yaml(read_text(p, "config file"), f"config file {p}")[0] or {}  # bounded: aliases, depth, size
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"config file {p}{f' line {mark.line + 1}' if mark else ''} is not valid YAML: "
                        f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of key: value lines")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['lr=0.1', 'epochs=3'] -> {'lr': '0.1', 'epochs': '3'} (values are coerced later)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise UserError(f"override {clip(item)} must look like key=value (e.g. lr=0.1)")
        if key not in field_names():
            raise UserError(f"override {clip(item)}: {unknown_key(key[:100])}")
        out[key] = value
    return out


def build_config(file: str | Path | None = None, options: dict[str, Any] | None = None,
                 overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then explicit options (None = not given), then overrides; validated."""
    data: dict[str, Any] = {}
    if file:
        data.update(load_config_file(file))
    data.update({k: v for k, v in (options or {}).items() if v is not None})
    data.update(parse_overrides(overrides or []))
    config = TrainConfig.from_dict(data)
    validate(config)
    return config.replace(val_size=val_images(config))  # record the validation split the run really uses


def validate(config: TrainConfig) -> None:
    """Raise UserError for values that cannot work (before any run folder exists); never changes `config`."""
    for key, allowed in CHOICES.items():
        value = getattr(config, key)
        if value not in allowed:
            raise UserError(f"{key} {value!r} is not one of: {', '.join(allowed)}")
    if config.model_args is not None and not isinstance(config.model_args, dict):
        raise UserError(f"model_args must be a mapping of constructor arguments (got {type(config.model_args).__name__}); "
                        "TrainConfig.from_dict reads JSON text")
    positive = {"epochs": config.epochs, "batch_size": config.batch_size, "seeds": config.seeds,
                "data_parallel": config.data_parallel,
                "eval_every": config.eval_every, "eval_batch_size": config.eval_batch_size, "step_size": config.step_size}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be at least 1 (got {value})")
    for key in ("lr", "momentum", "weight_decay", "gamma", "div_factor", "final_div_factor", "rotate", "translate",
                "scale", "target"):
        value = getattr(config, key)
        if word_of(key, value) is not None:
            continue
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{key} must be a finite number >= 0 (got {value})")
    if config.lr == 0:
        raise UserError("lr must be > 0")
    if config.momentum >= 1:
        raise UserError(f"momentum (SGD's momentum, Adam's beta1) must be < 1 (got {config.momentum}): e.g. momentum=0.9")
    if not 0 <= config.shift_eval <= 8:
        raise UserError(f"shift_eval is the largest shift in pixels, 0 (off) to 8 (got {config.shift_eval})")
    for key in ("subset", "train_images", "val_size", "clean_train_eval", "threads", "precise_bn", "crop", "crop_epochs"):
        if getattr(config, key) < 0:
            raise UserError(f"{key} must be >= 0 (got {getattr(config, key)})")
    if not 0 <= config.ema < 1:
        raise UserError(f"ema is the weight average's decay per step, in [0, 1): 0 = off (got {config.ema}): e.g. ema=0.999")
    check_distill(config)
    check_lookahead(config)
    if not 0 <= config.label_smoothing < 1:
        raise UserError(f"label_smoothing must be in [0, 1) (got {config.label_smoothing})")
    if not (math.isfinite(config.bn_lr) and config.bn_lr >= 0):
        raise UserError(f"bn_lr multiplies BatchNorm's lr, a finite number >= 0 (got {config.bn_lr}): e.g. bn_lr=0.5, "
                        "0 freezes BatchNorm")
    if not 0 <= config.pad_crop <= 64:
        raise UserError(f"pad_crop is pixels of padding before the random crop, 0 (off) to 64 (got {config.pad_crop}): "
                        "e.g. pad_crop=4 for 32x32 images")
    if not 0 <= config.erase <= 1:
        raise UserError(f"erase is a probability in [0, 1] (got {config.erase})")
    if not 0 < config.pct_start < 1:
        raise UserError(f"pct_start must be in (0, 1) (got {config.pct_start})")
    if config.scale >= 1:
        raise UserError(f"scale must be < 1 (images would shrink to nothing; got {config.scale})")
    if bool(config.crop) != bool(config.crop_epochs):
        raise UserError(f"crop and crop_epochs go together (got crop={config.crop}, crop_epochs={config.crop_epochs}): "
                        "e.g. crop=24 crop_epochs=5, or both 0")
    if config.crop and config.crop_epochs >= config.epochs:
        raise UserError(f"crop_epochs must be less than epochs ({config.crop_epochs} >= {config.epochs}): the last "
                        "epochs train on whole images, the size evaluation and the test use")
    if config.nesterov and config.optimizer == "sgd" and config.momentum == 0:
        raise UserError("nesterov needs momentum > 0: set momentum=0.9 or nesterov=false")
    # select_on val with val_size 0 is allowed: best = final epoch, and the result says no split selected it


def check_distill(config: TrainConfig) -> None:
    """The distillation keys' bounds; temperature or weight without a teacher would do nothing, so it is refused."""
    if not (math.isfinite(config.distill_temperature) and config.distill_temperature > 0):
        raise UserError(f"distill_temperature must be a finite number > 0 (got {config.distill_temperature}): e.g. "
                        "distill_temperature=4")
    if not 0 <= config.distill_weight <= 1:
        raise UserError(f"distill_weight is the soft loss's share, in [0, 1] (got {config.distill_weight}): e.g. "
                        "distill_weight=0.5")
    if config.teacher is not None and not str(config.teacher).strip():
        raise UserError("teacher is empty — give a run id, a unique prefix or latest:<model, name or tag>, or leave "
                        "teacher out")
    if not config.teacher and any(getattr(config, k) != _field(k).default for k in ("distill_temperature",
                                                                                  "distill_weight")):
        raise UserError("distill_temperature/distill_weight set without a teacher: they would change nothing — "
                        "add teacher=<run> or leave them at their defaults")


def check_lookahead(config: TrainConfig) -> None:
    """lookahead is a whole number of steps >= 0, its alpha in (0, 1]; alpha without lookahead would do nothing."""
    k, alpha = config.lookahead, config.lookahead_alpha
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise UserError(f"lookahead is the optimiser steps between syncs, a whole number >= 0 (got {k!r}): e.g. "
                        "lookahead=5, 0 = off")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 < alpha <= 1):
        raise UserError(f"lookahead_alpha is the slow weights' step towards the fast ones, in (0, 1] (got {alpha!r}): "
                        "e.g. lookahead_alpha=0.5")
    if not k and alpha != _field("lookahead_alpha").default:
        raise UserError(f"lookahead_alpha={alpha:g} set without lookahead: it would change nothing — add lookahead=K "
                        "(e.g. 5) or leave lookahead_alpha at its default")
