"""Diagnostics the notes name, per trained network; all plain dicts (the report plots them).

- BN health: "If beta = 0 and gamma = 1, great job; if beta = 10 and gamma = 4, horrendous job."
  Rule per BN layer, on the medians over channels of |gamma| and |beta|:
  healthy if 0.5 <= |gamma| <= 2 and |beta| <= 1; horrendous if |gamma| >= 3 or <= 1/3, or |beta| >= 3;
  drifting otherwise. A BN that has to scale or shift hard is compensating for the layer before it.
- Dead ReLU: on a batch of test images, the fraction of a ReLU's channels that are never positive
  (and of its units, channel x position); a dead channel costs parameters and carries nothing.
- Parameter share per layer (the notes: in VGG "90% parameters are used by FC").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convladder.data.normalise import normalise_images

GOOD_GAMMA = (0.5, 2.0)
GOOD_BETA = 1.0
BAD_GAMMA = (1 / 3, 3.0)
BAD_BETA = 3.0

def bn_verdict(gamma_abs_median: float, beta_abs_median: float) -> str:
    """healthy / drifting / horrendous (rule in the module docstring)."""
    if gamma_abs_median >= BAD_GAMMA[1] or gamma_abs_median <= BAD_GAMMA[0] or beta_abs_median >= BAD_BETA:
        return "horrendous"
    if GOOD_GAMMA[0] <= gamma_abs_median <= GOOD_GAMMA[1] and beta_abs_median <= GOOD_BETA:
        return "healthy"
    return "drifting"


def bn_health(model: nn.Module) -> list[dict[str, Any]]:
    """gamma/beta statistics and a verdict per BatchNorm layer."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
            g, b = mod.weight.detach().float().cpu(), mod.bias.detach().float().cpu()
            ga, ba = float(g.abs().median()), float(b.abs().median())
            out.append({"layer": name, "channels": int(g.numel()),
                        "gamma": {"mean": float(g.mean()), "min": float(g.min()), "max": float(g.max()),
                                  "abs_median": ga, "values": g.tolist()},
                        "beta": {"mean": float(b.mean()), "min": float(b.min()), "max": float(b.max()),
                                 "abs_median": ba, "values": b.tolist()},
                        "verdict": bn_verdict(ga, ba)})
    return out


@torch.no_grad()
def dead_relu(model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
    """Per ReLU (module or functional call): fraction of channels (and units) never positive on `images`."""
    from convladder.analysis.trace import capture

    was_training = model.training
    try:
        model.eval()
        _, records = capture(model, images, lambda node: node.kind == "relu")
    finally:
        model.train(was_training)
    out = []
    for record in records:
        alive_units = (record.output > 0).any(dim=0)  # (C,H,W) or (C,)
        alive_ch = alive_units.flatten(1).any(dim=1) if alive_units.dim() > 1 else alive_units
        out.append({"layer": record.node.name, "channels": int(alive_ch.numel()),
                    "dead_channels": int((~alive_ch).sum()),
                    "dead_channel_fraction": float((~alive_ch).float().mean()),
                    "dead_unit_fraction": float((~alive_units).float().mean())})
    return out


def parameter_share(model_or_spec: Any, input_shape: tuple[int, int, int] | None = None) -> list[dict[str, Any]]:
    """Parameters and share of the total per layer (from the network table), largest first."""
    from convladder.analysis.table import summarize

    table = summarize(model_or_spec, input_shape)
    rows = [{"layer": r.name, "kind": r.kind, "params": r.params, "share": r.share} for r in table.layers if r.params]
    return sorted(rows, key=lambda r: -r["params"])


def diagnose_run(run: str, store: Any, n_images: int = 512, which: str = "final") -> dict[str, Any]:
    """All three diagnostics for one stored run, on the first `n_images` test images of its data set."""
    from convladder.train.config import TrainConfig
    from convladder.train.device_data import load_splits
    from convladder.train.models import create_model

    record = store.get(run)
    config = TrainConfig.from_dict(store.read_config(record.id))
    model = create_model(store.root / record.id, which=which)
    splits = load_splits(config)
    x = normalise_images(torch.as_tensor(splits.x_test[:n_images]), splits.mean, splits.std)  # per channel for colour
    bn = bn_health(model)
    relu = dead_relu(model, x)
    return {"run_id": record.id, "model": config.model if len(config.model) < 40 else "custom spec",
            "dataset": config.dataset, "images": int(len(x)), "bn": bn, "relu": relu,
            "params": parameter_share(model, tuple(x.shape[1:])),
            "summary": {"bn_flagged": [b["layer"] for b in bn if b["verdict"] != "healthy"],
                        "dead_channels": sum(r["dead_channels"] for r in relu),
                        "relu_channels": sum(r["channels"] for r in relu)}}


def format_diagnostics(d: dict[str, Any]) -> str:
    """Plain-text rendering for `convladder diagnose`."""
    out = [f"run {d['run_id']} ({d['model']}, {d['dataset']}; ReLU on {d['images']} test images)", "", "BN health "
           "(beta 0, gamma 1 = great; beta 10, gamma 4 = horrendous):"]
    for b in d["bn"]:
        out.append(f"  {b['layer']:<14} C={b['channels']:<4} gamma mean {b['gamma']['mean']:+.2f} "
                   f"[{b['gamma']['min']:+.2f}, {b['gamma']['max']:+.2f}]  beta mean {b['beta']['mean']:+.2f} "
                   f"[{b['beta']['min']:+.2f}, {b['beta']['max']:+.2f}]  {b['verdict']}")
    if not d["bn"]:
        out.append("  (no BatchNorm layers)")
    out += ["", "dead ReLU (never positive on the batch):"]
    for r in d["relu"]:
        out.append(f"  {r['layer']:<14} {r['dead_channels']}/{r['channels']} channels dead "
                   f"({100 * r['dead_channel_fraction']:.0f} %), {100 * r['dead_unit_fraction']:.0f} % of units")
    out += ["", "parameter share (largest first):"]
    for p in d["params"]:
        out.append(f"  {p['layer']:<14} {p['kind']:<12} {p['params']:>9,}  {100 * p['share']:5.1f} %")
    return "\n".join(out)
