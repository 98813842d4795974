"""Figures about the network itself: parameter share, receptive field, BN γ/β, dead ReLUs,
feature maps, and the "1×1 is a feature merger" picture."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from convladder.report.plot import Figure, cmap_with_gaps, mosaic, normalise_tiles, plt
from convladder.spec import kinds

# The ReLU-like kinds (positive passes, negative shrinks to zero or near it) of the registry, live
ACTIVATIONS = kinds.SIGN_KEPT


def param_share(table: Any) -> Figure:
    """Share of the parameters per layer (layers with parameters only)."""
    rows = [r for r in table.layers if r.params > 0]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(rows) + 0.9))
    names = [f"{r.name} {r.kind}" for r in rows]
    shares = [100.0 * r.share for r in rows]
    ax.barh(names, shares, color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(shares[i], i, f" {r.params:,}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="% of parameters", title=f"parameter share per layer ({table.total_params:,} in all)")
    ax.set_xlim(0, max(shares + [1]) * 1.25)
    fig.tight_layout()
    return Figure("param_share", "Where the parameters are: share per layer", fig, vector=True)


def _rf_span(row: Any) -> tuple[int, int] | None:
    """(smallest, largest) over the positions of the larger side of a row's field; None for '?'."""
    if row.rf is not None:
        return row.rf, row.rf
    if getattr(row, "rf_range", None):
        (h0, h1), (w0, w1) = row.rf_range
        return max(h0, w0), max(h1, w1)
    return (max(row.rf_hw),) * 2 if row.rf_hw else None


def rf_growth(table: Any) -> Figure:
    """Receptive field after each layer against the input size; where it varies by position (after upsampling)
    the point is the largest field and a bar spans smallest to largest; a field per axis is its larger side."""
    rows = [(r, _rf_span(r)) for r in table.layers if _rf_span(r) is not None]
    size = max(table.input[1:]) if len(table.input) == 3 else None
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(range(len(rows)), [span[1] for _, span in rows], "-o", ms=3, label="receptive field (larger side)")
    ranged = [(i, span) for i, (_, span) in enumerate(rows) if span[0] != span[1]]
    if ranged:
        ax.vlines([i for i, _ in ranged], [s[0] for _, s in ranged], [s[1] for _, s in ranged], color="tab:orange",
                  lw=3, label="varies by position (smallest-largest)")
    if size:
        ax.axhline(size, color="tab:red", ls="--", lw=1, label=f"input {size}×{size}")
    ax.set_xticks(range(len(rows)), [f"{r.name} {r.kind}" for r, _ in rows], rotation=70, fontsize=6.5)
    out = getattr(table, "rf_out_text", table.rf_out)
    ax.set(ylabel="pixels", title=f"receptive field layer by layer (output RF {out})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure("rf_growth", "Receptive-field growth layer by layer, against the input size", fig, vector=True)


def bn_gamma_beta(model: nn.Module) -> Figure | None:
    """Every BN channel's γ and β per layer; the notes: β≈0, γ≈1 is a great job, β=10, γ=4 horrendous."""
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine]
    if not bns:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    for ax, attr, ref in ((axes[0], "weight", 1.0), (axes[1], "bias", 0.0)):
        for i, (_, m) in enumerate(bns):
            v = getattr(m, attr).detach().numpy()
            ax.plot(np.full(len(v), i) + np.linspace(-0.2, 0.2, len(v)), v, ".", ms=3, alpha=0.6)
            ax.plot([i - 0.3, i + 0.3], [v.mean()] * 2, color="black", lw=1.5)
        ax.axhline(ref, color="tab:red", ls="--", lw=1)
        ax.set_xticks(range(len(bns)), [n for n, _ in bns], rotation=45, fontsize=7)
    axes[0].set_title("BN γ (scale) per channel; ideal ≈ 1")
    axes[1].set_title("BN β (shift) per channel; ideal ≈ 0")
    fig.tight_layout()
    return Figure("bn_gamma_beta", "BatchNorm γ and β per layer (black bar: mean). The notes: "
                  "β = 0 and γ = 1 is a great job; β = 10 and γ = 4 is horrendous", fig, vector=True)


def _capture(model: nn.Module, x: torch.Tensor, select) -> list[tuple[str, nn.Module | None, torch.Tensor, torch.Tensor]]:
    """(name, module, input, output) of every selected node of the one tracer, in call order, for one forward pass."""
    from convladder.analysis.trace import capture

    with torch.no_grad():
        _, records = capture(model, x, select)
    return [(r.node.name, r.node.module, r.inputs[0].detach() if r.inputs else r.output, r.output.detach())
            for r in records]


def _is_activation(node) -> bool:
    return node.kind in ACTIVATIONS


def _is_conv(node) -> bool:
    return node.kind.startswith("conv") and node.category == "window"


def dead_relu(model: nn.Module, x: torch.Tensor) -> Figure | None:
    """Per activation layer: channels never positive on the batch (dead) and zeros overall (sparsity)."""
    caps = [c for c in _capture(model, x, _is_activation) if c[3].dim() >= 2]
    if not caps:
        return None
    names, dead, zero = [], [], []
    for name, _, _, out in caps:
        per_channel = out.transpose(0, 1).reshape(out.shape[1], -1)  # (C, N*H*W)
        names.append(name)
        dead.append(100.0 * float((per_channel <= 0).all(1).float().mean()))
        zero.append(100.0 * float((out <= 0).float().mean()))
    fig, ax = plt.subplots(figsize=(7, 2.8))
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, dead, 0.4, label="dead channels (never > 0 on the batch)", color="tab:red")
    ax.bar(pos + 0.2, zero, 0.4, label="outputs ≤ 0 (sparsity)", color="tab:grey")
    ax.set_xticks(pos, names, rotation=45, fontsize=7)
    ax.set(ylabel="%", ylim=(0, 100), title=f"dead ReLU fraction per layer ({len(x)} test images)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure("dead_relu", f"Dead-ReLU fraction per activation layer, on a batch of {len(x)} test images", fig, vector=True)


def feature_maps(model: nn.Module, x1: torch.Tensor, max_channels: int = 16) -> Figure | None:
    """Each convolution's output channels for one image (each channel scaled to its own range)."""
    caps = [c for c in _capture(model, x1, _is_conv) if c[3].dim() == 4 and c[3].shape[-1] > 1]
    if not caps:
        return None
    fig, axes = plt.subplots(len(caps) + 1, 1, figsize=(8, 1.1 * (len(caps) + 1)),
                             gridspec_kw={"height_ratios": [1] * (len(caps) + 1)})
    axes = np.atleast_1d(axes)
    if x1.shape[1] == 3:  # colour: the normalised image scaled to [0, 1] as a whole, shown as RGB
        img = x1[0].permute(1, 2, 0).numpy()
        axes[0].imshow((img - img.min()) / max(float(img.max() - img.min()), 1e-12))
        axes[0].set_title("input (colour, as normalised)", fontsize=8, loc="left")
    else:
        axes[0].imshow(x1[0, 0].numpy(), cmap="viridis")
        axes[0].set_title("input", fontsize=8, loc="left")
    for ax, (name, m, _, out) in zip(axes[1:], caps):
        maps = normalise_tiles(out[0, :max_channels].numpy())
        ax.imshow(mosaic(maps, len(maps), pad=max(1, maps.shape[-1] // 12)), cmap=cmap_with_gaps(), interpolation="nearest")
        k = m.kernel_size[0] if isinstance(m, nn.Conv2d) else "?"
        ax.set_title(f"{name} conv{k}x{k} → {out.shape[2]}×{out.shape[3]}×{out.shape[1]}"  # H×W×C, as the tables
                     + (f" (first {max_channels})" if out.shape[1] > max_channels else ""), fontsize=8, loc="left")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout(h_pad=0.3)
    return Figure("feature_maps", "Feature maps of each convolution for one test image", fig)


def one_by_one_merger(model: nn.Module, x1: torch.Tensor, outputs: int = 3, inputs: int = 8) -> Figure | None:
    """Input channels of the first 1×1 conv on one image, its weights, and the merged output channels.

    Row k shows out_k = Σ_i w[k,i]·in_i (+ b_k where the layer has a bias): the largest-|w| input channels multiplied
    by their weights, then the sum — recomputed here with einsum and checked against the layer's real output.
    The labels name a bias only where the layer has one (no-bias networks are the notes' norm before BN).
    """
    caps = [c for c in _capture(model, x1, lambda n: n.kind == "conv1x1" and isinstance(n.module, nn.Conv2d))
            if c[1].groups == 1 and c[1].in_channels > 1 and c[2].shape[-1] > 1]
    if not caps:
        return None
    name, conv, inp, out = caps[0]
    w = conv.weight.detach()[:, :, 0, 0]  # (out, in)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
    merged = torch.einsum("oi,ihw->ohw", w, inp[0]) + b[:, None, None]
    assert torch.allclose(merged, out[0], atol=1e-4), "1x1 recomputation disagrees with the layer"
    n_out, n_in = min(outputs, w.shape[0]), min(inputs, w.shape[1])
    fig = plt.figure(figsize=(10, 1.45 * (n_out + 1) + 2.0))
    grid = fig.add_gridspec(n_out + 2, 1, height_ratios=[1.5] + [1] * (n_out + 1))
    ax_w = fig.add_subplot(grid[0])
    lim = float(w.abs().max())
    im = ax_w.imshow(w.numpy(), cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    has_bias = conv.bias is not None
    ax_w.set(xlabel="input channel i", ylabel="output k",
             title=f"{name}: 1×1 weights w[k,i] ({w.shape[0]}×{w.shape[1]}); each output = weighted sum of input channels"
             + (" + bias b[k]" if has_bias else " (no bias)"))
    fig.colorbar(im, ax=ax_w, fraction=0.02)
    side = inp.shape[-1] + 3
    ax_in = fig.add_subplot(grid[1])
    n_show = min(16, w.shape[1])
    ax_in.imshow(mosaic(normalise_tiles(inp[0, :n_show].numpy()), n_show, pad=3), cmap=cmap_with_gaps(), interpolation="nearest")
    ax_in.set_title(f"input channels in_i ({inp.shape[1]} in all" + (f", first {n_show} shown)" if w.shape[1] > n_show else ")"),
                    fontsize=8, loc="left", pad=12)
    for i in range(n_show):
        ax_in.text(i * side, -1, f"in{i}", fontsize=7)
    ax_in.axis("off")
    for k in range(n_out):
        ax = fig.add_subplot(grid[k + 2])
        top = torch.argsort(w[k].abs(), descending=True)[:n_in]  # the inputs this output leans on most
        terms = (w[k, top, None, None] * inp[0, top]).numpy()
        # one scale per row so the terms' sizes compare honestly; a high percentile, not the max,
        # so one bright pixel does not wash out the rest
        tscale = float(np.percentile(abs(terms), 99)) or 1.0
        oscale = float(np.percentile(abs(merged[k].numpy()), 99)) or 1.0
        tiles = np.clip(np.concatenate([terms / tscale, merged[k:k + 1].numpy() / oscale]), -1, 1)
        ax.imshow(mosaic(tiles, len(tiles), pad=3), cmap=cmap_with_gaps("coolwarm"), vmin=-1, vmax=1, interpolation="nearest")
        for j, i in enumerate(top.tolist()):
            ax.text(j * side, -1, f"{w[k, i]:+.2f}·in{i}" + (" +" if j < n_in - 1 else ""), fontsize=7)
        bias = f"+ b{k} ({float(b[k]):+.2f}) " if has_bias else ""  # the layer's own bias, only where it has one
        more = f" (sum of all {w.shape[1]} terms{' + bias' if has_bias else ''})" if w.shape[1] > n_in else ""
        ax.text(n_in * side, -1, f"{bias}= out{k}{more}", fontsize=7, weight="bold")
        ax.axis("off")
    fig.tight_layout()
    return Figure("one_by_one", "1×1 as a feature merger: for one image, each output channel of the first 1×1 "
                  "convolution is the weighted sum of the input channels (weights on top)", fig, wide=True)
