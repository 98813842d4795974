"""Concept figures computed (not drawn by hand): GAP vs flatten+dense, 2×2 vs 3×3 max-pooling,
activation functions and their derivatives. No training needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convladder.report.plot import Figure, plt


def head_params(c: int, h: int, w: int, classes: int = 10) -> dict[str, int]:
    """Parameters of the two ways to go from a C×H×W map to `classes` outputs, counted from real modules."""
    flatten = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))
    gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, classes, 1))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"flatten + dense": count(flatten), "GAP + 1×1 conv": count(gap)}


def gap_vs_flatten(shapes: list[tuple[str, tuple[int, int, int]]], classes: int = 10) -> Figure:
    """Bars of head parameters for each (label, C×H×W) — e.g. the network at hand and the notes' 7×7×512."""
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 2.8), squeeze=False)
    for ax, (label, (c, h, w)) in zip(axes[0], shapes):
        counts = head_params(c, h, w, classes)
        bars = ax.bar(list(counts), list(counts.values()), color=["tab:red", "tab:green"])
        ax.bar_label(bars, [f"{v:,}" for v in counts.values()], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(1, max(counts.values()) * 8)
        ratio = counts["flatten + dense"] / counts["GAP + 1×1 conv"]
        ax.set_title(f"{label}: {h}×{w}×{c} → {classes}\nflatten needs {ratio:.0f}× the parameters", fontsize=9)
    fig.tight_layout()
    return Figure("gap_vs_flatten", "GAP vs flatten + dense: parameters of the head, counted from real PyTorch "
                  "modules (the notes: 7×7×512 → 10 without GAP is huge)", fig, vector=True)


def maxpool_2x2_vs_3x3(seed: int = 0) -> Figure:
    """A real 6×6 array max-pooled with 2×2/stride 2 and 3×3/stride 3 (torch max_pool2d)."""
    # 36 distinct values, so every output visibly comes from one input pixel
    x = torch.randperm(36, generator=torch.Generator().manual_seed(seed)).reshape(1, 1, 6, 6).float()
    outs = {"2×2, stride 2": F.max_pool2d(x, 2, 2), "3×3, stride 3": F.max_pool2d(x, 3, 3)}
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 2.9))
    for ax, (title, arr) in zip(axes, [("input 6×6 (36 values)", x), *outs.items()]):
        a = arr[0, 0].numpy()
        ax.imshow(a, cmap="viridis", vmin=0, vmax=35)
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 20 else "black", fontsize=9)
        n = a.size
        ax.set_title(title if arr is x else f"{title}: {a.shape[0]}×{a.shape[1]} = {n} values\nkeeps {n}/36 = {100 * n / 36:.0f} %",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Why 2×2 max-pooling: 3×3 keeps too little (the notes write ~9 %; 4/36 is 11 %)", fontsize=9)
    fig.tight_layout()
    return Figure("maxpool_2x2_vs_3x3", "2×2 vs 3×3 max-pooling on a 6×6 input, computed with torch max_pool2d: "
                  "25 % of the values survive vs 11 %", fig, vector=True)


ACTIVATION_FUNCTIONS = {
    "ReLU": F.relu, "LeakyReLU(0.1)": lambda x: F.leaky_relu(x, 0.1), "ELU": F.elu, "SELU": F.selu,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "Swish (SiLU)": F.silu, "GELU": F.gelu,
}


def activations() -> Figure:
    """Each activation function and its derivative (autograd), on [-4, 4]."""
    x = torch.linspace(-4, 4, 401, requires_grad=True)
    fig, axes = plt.subplots(2, 4, figsize=(10, 4.4), sharex=True)
    for ax, (name, fn) in zip(axes.flat, ACTIVATION_FUNCTIONS.items()):
        y = fn(x)
        (dy,) = torch.autograd.grad(y.sum(), x)  # elementwise functions: d(sum)/dx_i = f'(x_i)
        ax.plot(x.detach(), y.detach(), label="f(x)")
        ax.plot(x.detach(), dy, "--", label="f′(x)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-2.2, 4.2)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return Figure("activations", "Activation functions (solid) and their derivatives via autograd (dashed)", fig, vector=True)


def head_shape(table: Any) -> tuple[int, int, int] | None:
    """The last feature map that is still spatial (H·W > 1): what a head turns into class scores."""
    shape = None
    for row in table.layers:
        if len(row.output) == 3 and row.output[1] * row.output[2] > 1:
            shape = tuple(row.output)
    return shape  # type: ignore[return-value]


def concept_figures(table: Any | None = None, classes: int = 10) -> list[Figure]:
    """The three concept figures; GAP vs flatten includes the network at hand when a table is given."""
    shapes: list[tuple[str, tuple[int, int, int]]] = []
    shape = head_shape(table) if table is not None else None
    if shape:
        shapes.append(("this network's last map", shape))
    shapes.append(("the notes' example", (512, 7, 7)))
    return [gap_vs_flatten(shapes, classes), maxpool_2x2_vs_3x3(), activations()]


def write_concepts(out: Path, table: Any | None = None) -> list[Path]:
    """Render the concept figures as PNG and SVG into `out`."""
    paths: list[Path] = []
    for fig in concept_figures(table):
        paths += fig.save(out)
        fig.close()
    return paths
