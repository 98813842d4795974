"""Load a trained run and classify MNIST-form images with it, batched, on CPU."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convladder.data.normalise import normalise
from convladder.data.normalise import to_unit as _pixels_to_unit
from convladder.serve.fuse import inference_logits

# Train-set pixel statistics (exact, as convladder.data computes them) of the pinned data sets,
# for runs that did not record their own. The trainer normalises with these.
DATASET_STATS: dict[str, tuple[float, float]] = {"mnist": (0.1306604762738429, 0.3081078038564627)}
DEFAULT_STATS = DATASET_STATS["mnist"]


def _find_stats(*sources: dict[str, Any]) -> tuple[float, float] | None:
    """The normalisation a run recorded: `data_mean`/`data_std` (or `mean`/`std`) in any of its JSON files."""
    for src in sources:
        for mean_key, std_key in (("data_mean", "data_std"), ("mean", "std")):
            if isinstance(src.get(mean_key), (int, float)) and isinstance(src.get(std_key), (int, float)):
                return float(src[mean_key]), float(src[std_key])
        data = src.get("data")
        if isinstance(data, dict):
            found = _find_stats(data)
            if found:
                return found
    return None


def dataset_stats(name: str) -> tuple[float, float]:
    """The statistics the trainer used for data set `name`: the cache's meta.json, else the table, else MNIST's."""
    try:
        from convladder.data.datasets import cache_dir

        meta = json.loads((cache_dir(name) / "meta.json").read_text())
        return float(meta["mean"]), float(meta["std"])
    except (ImportError, OSError, ValueError, KeyError, TypeError):
        return DATASET_STATS.get(name, DEFAULT_STATS)


@dataclass
class LoadedRun:
    """A run's network in eval mode plus what inference needs from its records."""

    run_id: str
    path: Path
    model: nn.Module
    mean: float
    std: float
    config: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    which: str = "final"

    @property
    def test_acc(self) -> float | None:
        """The test accuracy (percent) the run recorded for these weights (final or best), if it finished."""
        acc = (self.result.get(self.which) or {}).get("test_acc")
        return float(acc) if isinstance(acc, (int, float)) else None


def load_run(run: str, runs_root: Path | None = None, which: str = "final") -> LoadedRun:
    """A run by id, unique id prefix, 'latest' or 'latest:<model/name/tag>' in the run store
    (`--runs`/$CONVLADDER_RUNS/./runs); its config.json, env.json and result.json go through the tolerant reader."""
    from convladder.errors import UserError
    from convladder.runs.reader import read_json
    from convladder.runs.store import RunStore
    from convladder.train.models import create_model

    store = RunStore(runs_root)
    record = store.get(run)
    folder = store.root / record.id
    config = store.read_config(record.id)  # first: a damaged config.json is one clear error before any building
    model = create_model(folder, which=which)
    notes: list[str] = []  # result.json/env.json are optional here: a missing or damaged one counts as empty
    result, env = (read_json(folder / name, notes) for name in ("result.json", "env.json"))
    stats = _find_stats(config, env, result) or dataset_stats(str(config.get("dataset") or "mnist"))
    if not (stats[1] > 0 and all(map(math.isfinite, stats))):
        raise UserError(f"run {record.id} recorded normalisation mean {stats[0]}, std {stats[1]}: std must be a "
                        "positive finite number — the run's JSON files were changed or damaged")
    return LoadedRun(record.id, folder, model.eval(), stats[0], stats[1], config, result, which)


def to_unit(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """MNIST-form pixels (uint8 0..255, or float 0..1) -> float32 tensor (N, 1, 28, 28) in [0, 1]."""
    x = _pixels_to_unit(pixels)
    return x.reshape(x.shape[0], 1, *x.shape[-2:])


class Predictor:
    """Normalise and classify batches; always returns probabilities, whatever the spec's output layer."""

    def __init__(self, model: nn.Module, mean: float, std: float, batch_size: int = 512):
        # channels_last: oneDNN's fast path for convs with few channels (measured 2-3x on CPU for these nets).
        # Note: this converts the given module's parameters in place.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.mean, self.std = float(mean), float(std)
        # Moderate batches keep the activations of small-channel nets in cache; 4096+ runs from RAM and is slower.
        self.batch_size = batch_size
        # A copy with BatchNorm folded into the convs, returning logits (no trailing softmax): same numbers
        # within float rounding, less memory traffic. Other modules answer through their logits().
        self._logits = inference_logits(self.model).to(memory_format=torch.channels_last)

    @classmethod
    def from_run(cls, run: LoadedRun) -> Predictor:
        return cls(run.model, run.mean, run.std)

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        """x01: float (N, 1, 28, 28) in [0, 1]."""
        with torch.inference_mode():
            out = [self._logits(normalise(chunk, self.mean, self.std).contiguous(memory_format=torch.channels_last))
                   for chunk in x01.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 10)

    def probs(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 28, 28) MNIST-form pixels -> (N, classes) probabilities (float32 numpy)."""
        return torch.softmax(self.logits(to_unit(pixels)), dim=1).numpy()


def top_k(probs: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per row, the k most probable (label, probability) pairs, best first."""
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs)]


def feature_maps(model: nn.Module, x: torch.Tensor, layers: int = 2) -> tuple[torch.Tensor, list[tuple[str, np.ndarray]]]:
    """Logits for one normalised input (1, 1, 28, 28) and what the first `layers` conv layers see:
    (name, (C, H, W) activations) each, read by the one tracer (functional calls included).

    Each conv's output is taken after the BN/activation that directly follow it, so the maps
    show what the next layer receives (ReLU zeros included), not the raw filter response.
    """
    from convladder.analysis.trace import capture

    followers = {"bn", "relu", "leakyrelu", "prelu", "elu", "selu", "silu", "gelu", "tanh", "sigmoid"}
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
