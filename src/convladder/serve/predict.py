"""Load a trained run and classify images in its input form (MNIST form, or colour) with it, batched, on CPU."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convladder.data.normalise import Stat, as_stat, normalise, stat_channels, stat_ok
from convladder.data.normalise import to_unit as _pixels_to_unit
from convladder.errors import UserError
from convladder.serve.fuse import inference_logits

# Train-set pixel statistics (exact, as convladder.data computes them) of the pinned data sets,
# for runs that did not record their own. The trainer normalises with these.
DATASET_STATS: dict[str, tuple[float, float]] = {"mnist": (0.1306604762738429, 0.3081078038564627)}
DEFAULT_STATS = DATASET_STATS["mnist"]
DEFAULT_SHAPE = (1, 28, 28)


def _find_stats(*sources: dict[str, Any]) -> tuple[Stat, Stat] | None:
    """The normalisation a run recorded: `data_mean`/`data_std` (or `mean`/`std`) in any of its JSON files;
    numbers, or lists of one number per channel (colour runs)."""
    for src in sources:
        for mean_key, std_key in (("data_mean", "data_std"), ("mean", "std")):
            mean, std = as_stat(src.get(mean_key)), as_stat(src.get(std_key))
            if mean is not None and std is not None:
                return mean, std
        data = src.get("data")
        if isinstance(data, dict):
            found = _find_stats(data)
            if found:
                return found
    return None


def dataset_stats(name: str) -> tuple[Stat, Stat]:
    """The statistics the trainer used for data set `name`: the cache's meta.json, else the table, else MNIST's."""
    try:
        from convladder.data.datasets import cache_dir

        meta = json.loads((cache_dir(name) / "meta.json").read_text())
        mean, std = as_stat(meta["mean"]), as_stat(meta["std"])
        if mean is not None and std is not None:
            return mean, std
    except (ImportError, OSError, ValueError, KeyError, TypeError):
        pass
    return DATASET_STATS.get(name, DEFAULT_STATS)


@dataclass
class LoadedRun:
    """A run's network in eval mode plus what inference needs from its records."""

    run_id: str
    path: Path
    model: nn.Module
    mean: Stat  # one float, or one per channel (colour runs)
    std: Stat
    config: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    which: str = "final"
    input_shape: tuple[int, int, int] = DEFAULT_SHAPE  # (C, H, W) the network was trained on (env.json)

    @property
    def weights_file(self) -> str:
        return "model.safetensors" if self.which == "final" else "best.safetensors"

    @property
    def weights_label(self) -> str:
        """' (EMA weights)' for a run trained with config ema (its saved weights are the average), else ''."""
        return " (EMA weights)" if self.config.get("ema") else ""

    @property
    def weights_text(self) -> str | None:
        """'EMA weights (decay 0.999 per step)' for a run trained with config ema, else None (/api/info's weights)."""
        ema = self.config.get("ema")
        if not ema:
            return None
        return f"EMA weights (decay {ema:g} per step)" if isinstance(ema, (int, float)) else "EMA weights"

    @property
    def test_acc(self) -> float | None:
        """The test accuracy (percent) the run recorded for these weights (final or best), if it finished."""
        acc = (self.result.get(self.which) or {}).get("test_acc")
        return float(acc) if isinstance(acc, (int, float)) else None


def load_run(run: str, runs_root: Path | None = None, which: str = "final") -> LoadedRun:
    """A run by id, unique id prefix, 'latest' or 'latest:<model/name/tag>' in the run store
    (`--runs`/$CONVLADDER_RUNS/./runs); its config.json, env.json and result.json go through the tolerant reader."""
    from convladder.runs.reader import read_json
    from convladder.runs.store import RunStore
    from convladder.train.models import create_model

    store = RunStore(runs_root)
    record = store.get(run)
    folder = store.root / record.id
    config = store.read_config(record.id)  # first: a damaged config.json is one clear error before any building
    notes: list[str] = []  # result.json/env.json are optional here: a missing or damaged one counts as empty
    result, env = (read_json(folder / name, notes) for name in ("result.json", "env.json"))
    # the (C, H, W) the network trained on (written by the trainer; runs from before it recorded one are MNIST's)
    shape = env.get("input_shape") or DEFAULT_SHAPE
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise UserError(f"run {record.id} recorded input_shape {shape!r} in env.json: it must be [channels, height, "
                        "width], positive whole numbers — the run's JSON files were changed or damaged")
    model = create_model(folder, which=which)
    stats = _find_stats(config, env, result) or dataset_stats(str(config.get("dataset") or "mnist"))
    if not stat_ok(*stats) or stat_channels(stats[0]) not in (None, shape[0]):
        raise UserError(f"run {record.id} recorded normalisation mean {stats[0]}, std {stats[1]}: std must be a "
                        f"positive finite number, one for all channels or one per channel ({shape[0]}) — the run's "
                        "JSON files were changed or damaged")
    return LoadedRun(record.id, folder, model.eval(), stats[0], stats[1], config, result, which, tuple(shape))


def nonfinite_weights(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or infinite values."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def nonfinite_message(run: LoadedRun, where: str) -> str:
    """One line for network outputs that are NaN/infinite on `where`: the cause found and what to do."""
    bad = nonfinite_weights(run.model)
    other = "--which best (the best epoch's weights)" if run.which == "final" else "--which final"
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        cause = (f"its {run.which} weights ({run.weights_file}) hold NaN/infinite values in {names} (the run diverged, "
                 "or the file was damaged)")
    else:
        cause = f"its {run.which} weights ({run.weights_file}) are finite, but the activations overflow"
    fix = f"use {other}, or retrain with a lower learning rate"
    return f"run {run.run_id} gives NaN/infinite probabilities for {where}: {cause} — {fix}"


def check_finite(probs: np.ndarray, names: list[str], run: LoadedRun) -> None:
    """UserError (one line) unless every row of `probs` is finite; names the first bad image."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(nonfinite_message(run, f"{int(bad.sum())} of {len(probs)} image(s) (first: {names[first]})"))


def to_unit(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Pixels (uint8 0..255, or float 0..1), (N, H, W) or (N, C, H, W) -> float32 tensor (N, C, H, W) in [0, 1]."""
    x = _pixels_to_unit(pixels)
    return x.unsqueeze(1) if x.dim() == 3 else x


class Predictor:
    """Normalise and classify batches; always returns probabilities, whatever the spec's output layer."""

    def __init__(self, model: nn.Module, mean: Stat, std: Stat, batch_size: int = 512,
                 input_shape: tuple[int, int, int] = DEFAULT_SHAPE):
        # channels_last: oneDNN's fast path for convs with few channels (measured 2-3x on CPU for these nets).
        # Note: this converts the given module's parameters in place.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.mean, self.std = as_stat(mean), as_stat(std)
        self.input_shape = tuple(input_shape)
        # Moderate batches keep the activations of small-channel nets in cache; 4096+ runs from RAM and is slower.
        self.batch_size = batch_size
        # A copy with BatchNorm folded into the convs, returning logits (no trailing softmax): same numbers
        # within float rounding, less memory traffic. Other modules answer through their logits().
        self._logits = inference_logits(self.model).to(memory_format=torch.channels_last)

    @classmethod
    def from_run(cls, run: LoadedRun) -> Predictor:
        return cls(run.model, run.mean, run.std, input_shape=run.input_shape)

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        """x01: float (N, C, H, W) in [0, 1], (C, H, W) = the network's input shape."""
        if tuple(x01.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise UserError(f"images of shape {tuple(x01.shape[1:])} given to a network that takes {c}x{h}x{w} inputs")
        with torch.inference_mode():
            out = [self._logits(normalise(chunk, self.mean, self.std).contiguous(memory_format=torch.channels_last))
                   for chunk in x01.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 10)

    def probs(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, H, W) or (N, C, H, W) pixels -> (N, classes) probabilities (float32 numpy)."""
        return torch.softmax(self.logits(to_unit(pixels)), dim=1).numpy()


def top_k(probs: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per row, the k most probable (label, probability) pairs, best first; UserError for NaN/infinite rows
    (they have no order: a NaN row used to come out as label 0 with probability nan)."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise UserError(f"{int(bad.sum())} of {len(probs)} row(s) of probabilities are NaN/infinite (first: row "
                        f"{int(np.flatnonzero(bad)[0])}): the network's weights or activations are not finite")
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs)]


def feature_maps(model: nn.Module, x: torch.Tensor, layers: int = 2) -> tuple[torch.Tensor, list[tuple[str, np.ndarray]]]:
    """Logits for one normalised input (1, C, H, W) and what the first `layers` conv layers see:
    (name, (C, H, W) activations) each, read by the one tracer (functional calls included).

    Each conv's output is taken after the BN/activation that directly follow it, so the maps
    show what the next layer receives (ReLU zeros included), not the raw filter response.
    """
    from convladder.analysis.trace import capture

    from convladder.spec.kinds import FOLLOWERS as followers  # bn and every activation (spec/kinds.py)

    with torch.inference_mode():
        logits = getattr(model, "logits", model)(x)
        _, records = capture(model, x, lambda node: node.visible and node.output is not None and len(node.output) == 3)
    maps: list[tuple[str, np.ndarray]] = []
    for i, record in enumerate(records):
        if not record.node.kind.startswith("conv"):
            continue
        j = i  # take the map after the BN/activation that directly follow the convolution
        while j + 1 < len(records) and records[j + 1].node.kind in followers and records[j + 1].node.reads_one_of(
                records[j].node.name):
            j += 1
        maps.append((record.node.name, records[j].output[0].float().contiguous().numpy()))
        if len(maps) == layers:
            break
    return logits, maps
