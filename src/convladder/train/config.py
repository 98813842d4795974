"""The training configuration: one dataclass, YAML files, `key=value` overrides and validation.

Precedence when the CLI builds a config: defaults < `--config FILE` < explicit options < `--set k=v`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError
from convladder.train.init import INITS

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
SCHEDULES = ("none", "step", "onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
SELECT_ON = ("val", "test")
TRISTATE = ("auto", "on", "off")
BATCHED = ("auto", "on", "off", "grouped", "streams")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Accuracies are percentages (0-100).

    The defaults train the `tiny8k` reference network to >= 99.4 % MNIST test accuracy.
    """

    model: str = "tiny8k"  # registered name, spec file, spec text, or path/to/file.py:ClassName (own class)
    model_spec: str | None = None  # resolved spec text (filled in by the trainer; what a run rebuilds from)
    model_args: dict | None = None  # constructor arguments of an own class (a JSON object on the command line)
    dataset: str = "mnist"  # or "synthetic" (generated, learnable; for tests and smoke runs)
    data_root: str | None = None
    subset: int = 0  # use only the first N training images (0 = all)
    val_size: int = 5000  # held out of the training set for model selection (0 = no validation split)
    split_seed: int = 0  # the split is fixed across seeds so seeds are comparable
    epochs: int = 12
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1  # max lr for onecycle
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    step_size: int = 1  # epochs between lr drops (schedule=step)
    gamma: float = 0.7  # lr factor per drop (schedule=step)
    pct_start: float = 0.2  # onecycle warm-up fraction
    div_factor: float = 10.0  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = 100.0  # onecycle: final lr = initial lr / final_div_factor
    label_smoothing: float = 0.0
    augment: bool = True
    rotate: float = 7.0  # degrees, uniform in [-rotate, rotate]
    translate: float = 2.0  # pixels, uniform in [-translate, translate]
    scale: float = 0.1  # uniform in [1 - scale, 1 + scale]
    erase: float = 0.0  # probability of random erasing per image
    init: str = "torch"  # weight init: torch (PyTorch defaults), glorot (Keras' defaults), kaiming (He normal)
    seed: int = 1
    seeds: int = 1  # train seeds seed, seed+1, ... and report min/median/max
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = torch's choice less the cores other work keeps busy, at least 1)
    channels_last: str = "auto"  # auto: on for CUDA only; on 2 CPU cores training was measured slower with it
    compile: bool = False
    cuda_graphs: str = "auto"  # auto/on: capture the training step once as a CUDA graph and replay it (CUDA only)
    batched: str = "auto"  # seeds > 1 at once: streams (N models, one CUDA graph), grouped/on, off; auto: streams on CUDA
    eval_every: int = 1  # evaluate val/test every N epochs (the last epoch always)
    eval_batch_size: int = 500
    clean_train_eval: int = 10000  # at the end, evaluate train accuracy without dropout/augmentation on N images
    select_on: str = "val"  # which split picks the best epoch: val, or test if the user insists
    target: float = 99.4
    name: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(sorted(unknown))}; known: {', '.join(field_names())}")
        config = cls()
        for key, value in data.items():
            setattr(config, key, _coerce(key, value))
        return config

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_type(key: str) -> str:
    return str({f.name: f.type for f in dataclasses.fields(TrainConfig)}[key])


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type; strings like '0.1' or 'true' are parsed."""
    kind = _field_type(key)
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"config key {key!r} cannot be empty")
    if kind.startswith("dict"):
        return _coerce_dict(key, value)
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
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"config key {key!r}: {value!r} is not a valid {kind.replace(' | None', '')}") from None


def _coerce_dict(key: str, value: Any) -> dict:
    """A mapping, or its JSON text (e.g. --model-args '{"width": 16}')."""
    from convladder.spec.own import parse_model_args

    return parse_model_args(value, f"config key {key!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {p} is not valid YAML: {exc}") from None
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
            raise UserError(f"override {item!r} must look like key=value (e.g. lr=0.1)")
        if key not in field_names():
            raise UserError(f"override {item!r}: unknown key {key!r}; known: {', '.join(field_names())}")
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
    return config


def validate(config: TrainConfig) -> None:
    """Raise UserError for values that cannot work (before any run folder exists)."""
    def choice(key: str, allowed: tuple[str, ...]) -> None:
        value = getattr(config, key)
        if value not in allowed:
            raise UserError(f"{key} {value!r} is not one of: {', '.join(allowed)}")

    if config.model_args is not None:
        config.model_args = _coerce_dict("model_args", config.model_args)
    config.optimizer = config.optimizer.lower()
    config.schedule = config.schedule.lower()
    choice("optimizer", OPTIMIZERS)
    choice("schedule", SCHEDULES)
    choice("device", DEVICES)
    choice("select_on", SELECT_ON)
    choice("channels_last", TRISTATE)
    choice("cuda_graphs", TRISTATE)
    choice("batched", BATCHED)
    choice("init", INITS)
    positive = {"epochs": config.epochs, "batch_size": config.batch_size, "seeds": config.seeds,
                "eval_every": config.eval_every, "eval_batch_size": config.eval_batch_size, "step_size": config.step_size}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be at least 1 (got {value})")
    for key in ("lr", "momentum", "weight_decay", "gamma", "div_factor", "final_div_factor", "rotate", "translate",
                "scale", "target"):
        value = getattr(config, key)
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{key} must be a finite number >= 0 (got {value})")
    if config.lr == 0:
        raise UserError("lr must be > 0")
    for key in ("subset", "val_size", "clean_train_eval", "threads"):
        if getattr(config, key) < 0:
            raise UserError(f"{key} must be >= 0 (got {getattr(config, key)})")
    if not 0 <= config.label_smoothing < 1:
        raise UserError(f"label_smoothing must be in [0, 1) (got {config.label_smoothing})")
    if not 0 <= config.erase <= 1:
        raise UserError(f"erase is a probability in [0, 1] (got {config.erase})")
    if not 0 < config.pct_start < 1:
        raise UserError(f"pct_start must be in (0, 1) (got {config.pct_start})")
    if config.scale >= 1:
        raise UserError(f"scale must be < 1 (images would shrink to nothing; got {config.scale})")
    if config.nesterov and config.optimizer == "sgd" and config.momentum == 0:
        raise UserError("nesterov needs momentum > 0: set momentum=0.9 or nesterov=false")
    if config.select_on == "val" and config.val_size == 0:
        pass  # allowed: best = final epoch, and the result says no split selected it
