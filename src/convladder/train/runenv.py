"""Preparing a run before anything is written: data on the device, the model built and checked; env.json."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convladder.errors import UserError
from convladder.version import __version__
from convladder.train.config import TrainConfig
from convladder.train.device_data import DeviceData
from convladder.train.init import start_levers
from convladder.train.models import OwnModel, build


@dataclass
class Setup:
    data: DeviceData
    model: torch.nn.Module
    spec_text: str  # config.model_spec: spec text, an absolute file.py:ClassName, or python:<name>
    params: int
    own: OwnModel | None = None  # what the run records about an own model (None for a spec)
    levers: dict[str, Any] | None = None  # what env.json records about first_layer (train/init.start_levers)


def build_model(model: Any, input_shape: tuple[int, ...], seed: int, init: str = "torch", *,
                args: dict[str, Any] | None = None, classes: int | None = None) -> tuple[torch.nn.Module, str]:
    """Build a name/file/spec text/own class with seeded initial weights (scheme `init`); return (module, model_spec)."""
    built = build(model, args=args, input_shape=tuple(input_shape), seed=seed, init=init, classes=classes)
    return built.module, built.spec_text


def prepare(config: TrainConfig, splits, device: torch.device) -> Setup:
    """Put the data on the device and build the model; raise UserError if they do not fit together.

    Nothing is written here: a network that cannot be built or run leaves no run folder behind.
    """
    data = DeviceData(splits, config, device)
    built = build(config.model_spec or config.model, args=config.model_args, input_shape=data.image_shape,
                  seed=config.seed, init=config.init, classes=data.classes)
    model = built.module
    if built.own is None:  # own models were checked on this input size while building
        with torch.no_grad():
            model.eval()
            out = model.logits(torch.zeros(2, *data.image_shape))
        if out.shape != (2, data.classes):
            raise UserError(f"network {config.model!r} outputs {tuple(out.shape[1:])} per image but {data.name} has "
                            f"{data.classes} classes: end it with gap and a 1x1 conv to {data.classes} channels")
    if config.crop:
        check_crop(model, config, data.image_shape, data.classes)
    torch.manual_seed(config.seed)  # the dummy forward used no RNG, but keep the stream identical on resume
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # the network's, before any freezing
    levers = start_levers(model, config, data)  # whitening reads training images only; frozen: requires_grad off
    return Setup(data, model.to(device), built.spec_text, params, built.own, levers)


def check_crop(model: torch.nn.Module, config: TrainConfig, image_shape: tuple[int, ...], classes: int) -> None:
    """Raise UserError unless `model` gives `classes` outputs per image on config.crop x config.crop inputs."""
    c, h, w = image_shape
    where = f"crop={config.crop}"
    if config.crop >= min(h, w):
        raise UserError(f"{where}: the crop must be smaller than the {h}x{w} images; e.g. crop={min(h, w) - 4}")
    try:
        with torch.no_grad():
            model.eval()
            out = model.logits(torch.zeros(2, c, config.crop, config.crop))
    except Exception as exc:  # noqa: BLE001 - any failure at the smaller size: the network cannot train on crops
        raise UserError(f"{where}: network {config.model!r} does not run on {config.crop}x{config.crop} images "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); crop needs a network whose "
                        "output does not depend on the image size (gap before the classes), or a larger crop") from None
    if tuple(out.shape) != (2, classes):
        raise UserError(f"{where}: network {config.model!r} outputs {tuple(out.shape[1:])} per image on "
                        f"{config.crop}x{config.crop} images instead of {classes} classes; crop needs a network "
                        "that ends in gap and a 1x1 conv to the classes")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "amx_bf16": "AMX-BF16"}  # what decides fp32/bf16 speed here


def cpu_model() -> str:
    """The CPU's name and the vector units that decide its speed, e.g. "Intel(R) Xeon(R) Processor (AVX2,
    AVX-512, AMX-BF16)": a virtual machine's name alone ("Intel(R) Xeon(R) Processor") does not tell them apart."""
    name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name is None:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    features = [label for flag, label in CPU_FEATURES.items() if flag in flags]
    return f"{name} ({', '.join(features)})" if features else name


def environment(device: torch.device, input_shape: tuple[int, ...], data_mean: float | None = None,
                data_std: float | None = None) -> dict[str, Any]:
    """Versions, commit, machine and device of this run, and the normalisation it used (env.json)."""
    env: dict[str, Any] = {
        "convladder": __version__, "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": _git_commit(), "device": str(device),
        "hostname": socket.gethostname(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "input_shape": list(input_shape),
        "data_mean": data_mean, "data_std": data_std,  # predict/export/serve normalise the same way
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
