"""The checks at initialisation: data, initial loss and predictions, activations per layer, gradients per layer.

Each takes a `Patient` (the network as built, its data on the device, the config) and returns a `Check`.
None of them changes the patient's network: they run on a copy (a forward pass in train mode updates BN's
running statistics). Thresholds, and why, are in docs/doctor.md; the constants below are those thresholds.
"""

from __future__ import annotations

import base64
import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convladder.analysis.trace import capture
from convladder.doctor.result import FAIL, PASS, WARN, Check, worst
from convladder.spec import kinds
from convladder.train.config import TrainConfig
from convladder.data.normalise import stat_text, to_unit
from convladder.train.device_data import DeviceData

DATA_BATCH = 1024  # images whose normalised mean/std the data check measures
INIT_BATCH = 256  # images of the forward/backward pass at initialisation
MEAN_OK, MEAN_WARN = 0.2, 1.0  # |batch mean| after normalisation
STD_OK, STD_WARN = (0.7, 1.4), (0.3, 3.0)  # batch std after normalisation
BALANCE_OK, BALANCE_WARN = 0.5, 0.1  # smallest class count / largest class count
LOSS_OK, LOSS_WARN = (0.8, 1.25), (0.5, 2.0)  # initial loss / ln(classes)
CLIPPED_FAIL = 0.2  # share of class scores stuck at the image's lowest score (beyond the one lowest)
CONFIDENT_WARN = 0.5  # mean top-class probability at initialisation
FLAT = 1e-6  # a std or norm at or below this carries no signal
STD_LOW, STD_HIGH = 1e-2, 1e2  # activation std outside this: the signal is fading or blowing up
DEAD_WARN, DEAD_FAIL = 0.1, 0.5  # share of a ReLU's channels never positive on the batch
SATURATED_WARN = 0.5  # share of sigmoid/tanh outputs within 2 % of their limits
SPREAD_WARN, SPREAD_FAIL = 1e2, 1e3  # max/min over layers of |grad| / |weight|
SAMPLES = 16  # training images kept for the HTML page

# From the registry (spec/kinds.py), live: "dead" means never positive (relu, relu6; leaky variants never die);
# squashing kinds saturate in a range (sigmoid (0, 1), tanh (-1, 1), ...); every activation is watched.
RELUS = kinds.DIES
ACTIVATIONS = kinds.ACTIVATIONS


@dataclass
class Patient:
    """What the doctor examines: the network as built (never trained here), its data on the device, the config."""

    model: nn.Module  # has logits(x)
    data: DeviceData
    config: TrainConfig
    device: torch.device

    @property
    def classes(self) -> int:
        return self.data.classes

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n training images, normalised exactly as the training step does, and their labels."""
        return self.data.normalise(to_unit(self.data.x_train[:n])), self.data.y_train[:n]

    def copy(self) -> nn.Module:
        return copy.deepcopy(self.model)


def _band(value: float, ok: tuple[float, float], warn: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return FAIL
    if ok[0] <= value <= ok[1]:
        return PASS
    return WARN if warn[0] <= value <= warn[1] else FAIL


# -- data --------------------------------------------------------------------------------------------------

def check_data(p: Patient) -> Check:
    """Normalised batch mean/std (the step's own normalisation) and label balance of the training split."""
    x, _ = p.batch(DATA_BATCH)
    mean, std = float(x.mean()), float(x.std())
    counts = torch.bincount(p.data.y_train.cpu(), minlength=p.classes)
    extra = counts[p.classes:].sum().item() if len(counts) > p.classes else 0
    counts = counts[: p.classes]
    balance = float(counts.min() / counts.max()) if counts.max() > 0 else 0.0
    s_mean = _band(abs(mean), (0.0, MEAN_OK), (0.0, MEAN_WARN))
    s_std = _band(std, STD_OK, STD_WARN)
    s_lab = FAIL if extra or counts.min() == 0 else (PASS if balance >= BALANCE_OK else WARN if balance >= BALANCE_WARN
                                                      else FAIL)
    status = worst(s_mean, s_std, s_lab)
    tries = []
    if s_mean != PASS or s_std != PASS:
        tries.append(f"normalise with the training set's own statistics: x = (x/255 - {stat_text(p.data.mean)}) / "
                     f"{stat_text(p.data.std)} per pixel, as convladder.data computes them (the images reach the network "
                     f"with mean {mean:+.3g} and std {std:.3g} now)")
    if s_lab != PASS:
        missing = [i for i, c in enumerate(counts.tolist()) if c == 0]
        tries.append(f"check the labels: {f'classes {missing} have no image; ' if missing else ''}"
                     f"{f'{extra} labels are >= {p.classes}; ' if extra else ''}smallest class has {balance:.2f} of "
                     "the largest's images — rebalance (oversample or weight the loss) or collect more")
    return Check(
        "data", "data", status,
        f"batch mean {mean:+.3f}, std {std:.3f} (want 0, 1); smallest class {balance:.2f} of the largest "
        f"({int(counts.min())}/{int(counts.max())} images)",
        "the first layer's weights start small and the same for every input; inputs far from mean 0 / std 1 make "
        "the first activations huge or tiny, the initial loss wrong and the learning rate fit no layer; a class "
        "the network rarely sees is one it learns to ignore",
        "; ".join(tries) or "the images arrive centred and scaled, every class is well represented",
        {"mean": mean, "std": std, "images": int(len(x)), "data_mean": p.data.mean, "data_std": p.data.std,
         "class_counts": counts.tolist(), "balance": balance, "labels_out_of_range": int(extra)})


def samples(p: Patient, n: int = SAMPLES) -> dict[str, Any]:
    """A few training images with their labels, for the HTML page (uint8, base64)."""
    x = p.data.x_train[:n].cpu().contiguous()
    return {"shape": list(x.shape), "labels": p.data.y_train[:n].cpu().tolist(),
            "uint8_base64": base64.b64encode(x.numpy().tobytes()).decode()}


# -- initial loss and predictions --------------------------------------------------------------------------

@torch.no_grad()
def check_init(p: Patient) -> Check:
    """Initial loss against -ln(1/classes), the spread of the initial predictions, scores clipped at a floor."""
    model = p.copy().train()
    x, y = p.batch(INIT_BATCH)
    logits = model.logits(x).float()
    expected = math.log(p.classes)
    finite = bool(torch.isfinite(logits).all())
    loss = float(F.cross_entropy(logits, y)) if finite else float("nan")
    probs = logits.softmax(1)
    spread = float(logits.std(0).mean()) if finite else float("nan")  # how much each class's score varies per image
    top = float(probs.max(1).values.mean())
    predicted = torch.bincount(logits.argmax(1), minlength=p.classes)
    # Scores tied at the image's lowest value: a ReLU (or a clamp) before the softmax floors every score it
    # turns off at the same number; healthy scores never tie. 0 = none beyond the one lowest, 1 = all tie.
    low = logits.min(1, keepdim=True).values
    clipped = float(((logits <= low + 1e-6 * (1 + low.abs())).sum(1) - 1).float().mean() / max(1, p.classes - 1))
    ratio = loss / expected
    status, tries = _band(ratio, LOSS_OK, LOSS_WARN), []
    if status != PASS:
        tries.append(f"an initial loss of {loss:.3g} (not {expected:.3f}) means the network is confidently wrong "
                     "before it learned anything: check the normalisation, scale down the last layer's initial "
                     "weights, and see that the output is logits or log-softmax, not probabilities")
    if not finite or spread <= FLAT:
        status = FAIL
        tries.append("every image gets the same scores: nothing from the image reaches the output — "
                     "look for weights initialised to zero or a layer that outputs a constant (see activations)")
    if clipped > CLIPPED_FAIL:
        status = FAIL
        tries.append(f"{100 * clipped:.0f} % of the class scores sit at the same floor: an activation (ReLU) before "
                     "the softmax cuts off the negative scores; the last layer must be free to say 'NOT this "
                     "class' — end with the 1x1 conv (or FC) and the softmax only")
    if top > CONFIDENT_WARN and status == PASS:
        status = WARN
        tries.append(f"the network already gives its top class {100 * top:.0f} % on average: shrink the last "
                     "layer's initial weights so it starts unsure")
    return Check(
        "init", "initial loss and predictions", status,
        f"loss {loss:.3f} vs -ln(1/{p.classes}) = {expected:.3f} ({ratio:.2f}x); scores vary by {spread:.3g} "
        f"across images, "
        f"top-class probability {100 * top:.0f} %, scores at the floor {100 * clipped:.0f} %",
        f"before training the network knows nothing, so it should give every class about 1/{p.classes}: loss "
        f"{expected:.3f}. The notes: a negative number in the last layer says 'NOT a dog' — the scores need both "
        "signs",
        "; ".join(tries) or "the network starts unsure, as it should, and its scores differ per image",
        {"loss": loss, "expected": expected, "ratio": ratio, "spread": spread, "top_probability": top,
         "clipped": clipped, "predicted_counts": predicted.tolist(), "images": int(len(x))})


# -- activations ---------------------------------------------------------------------------------------------

def _watched(node: Any) -> bool:
    return (node.kind.startswith("conv") or node.kind in ("fc", "bn") or node.kind in ACTIVATIONS) \
        and node.visible


@torch.no_grad()
def check_activations(p: Patient) -> Check:
    """Mean/std of every conv, BN and activation output at initialisation (train mode), dead ReLU channels."""
    model = p.copy().train()
    x, _ = p.batch(INIT_BATCH)
    _, records = capture(model, x, _watched)
    rows, statuses = [], []
    for rec in records:
        out = rec.output.detach().float()
        mean, std = float(out.mean()), float(out.std()) if out.numel() > 1 else 0.0
        row: dict[str, Any] = {"layer": rec.node.name, "kind": rec.node.kind, "mean": mean, "std": std}
        status = PASS if math.isfinite(std) and STD_LOW <= std <= STD_HIGH else WARN
        if not math.isfinite(std) or std <= FLAT:
            status = FAIL
        note = ""
        if rec.node.kind in RELUS and out.dim() >= 2:
            alive_units = (out > 0).any(dim=0)  # the ladder's definition: never positive on the batch
            alive_ch = alive_units.flatten(1).any(dim=1) if alive_units.dim() > 1 else alive_units
            dead = float((~alive_ch).float().mean())
            row.update(dead_channels=dead, dead_units=float((~alive_units).float().mean()))
            status = worst(status, FAIL if dead >= DEAD_FAIL else WARN if dead >= DEAD_WARN else PASS)
            note = f" dead {100 * dead:.0f} % of channels"
        squash = kinds.get(rec.node.kind).squashes if rec.node.kind in kinds.ACTIVATIONS else None
        if squash:
            lo, hi = squash
            margin = 0.02 * (hi - lo)
            sat = float(((out < lo + margin) | (out > hi - margin)).float().mean())
            row["saturated"] = sat
            status = worst(status, WARN if sat >= SATURATED_WARN else PASS)
            note = f" saturated {100 * sat:.0f} %"
        row["status"] = status
        row["text"] = f"{status.upper():<4} {rec.node.name:<14} {rec.node.kind:<9} mean {mean:+.3f} std {std:.3g}{note}"
        rows.append(row)
        statuses.append(status)
    flat = [r["layer"] for r in rows if r["std"] <= FLAT or not math.isfinite(r["std"])]
    dead = [r["layer"] for r in rows if r.get("dead_channels", 0) >= DEAD_WARN]
    fading = [r["layer"] for r in rows if r["layer"] not in flat and r["status"] == WARN and r["layer"] not in dead]
    status = worst(*statuses) if statuses else WARN
    stds = [r["std"] for r in rows]
    tries = []
    if flat:
        more = " …" if len(flat) > 4 else ""
        tries.append(f"{', '.join(flat[:4])}{more} output a constant: weights initialised to zero (or a dead "
                     "layer) — every unit of such a layer gets the same gradient and they never differ")
    if dead:
        tries.append(f"dead ReLU channels in {', '.join(dead[:4])}: a channel that is never positive carries nothing "
                     "and learns nothing; lower the lr, use BN before/after the ReLU, or LeakyReLU")
    if fading:
        tries.append(f"activations in {', '.join(fading[:4])} have std outside [{STD_LOW:g}, {STD_HIGH:g}] or "
                     "saturate: add BN after the layer, or use ReLU with kaiming init (the notes: never Sigmoid)")
    return Check(
        "activations", "activations per layer at initialisation", status,
        (f"{len(rows)} layers; std {min(stds):.3g} .. {max(stds):.3g}; " if rows else "no layer seen; ")
        + f"{len(flat)} constant, {len(dead)} with dead ReLU channels",
        "every layer should pass on a signal of similar size (BN keeps it near mean 0, std 1: 'beta 0, gamma 1, "
        "great job'); a constant layer or a dead ReLU carries nothing, and a fading signal starves the layers after it",
        "; ".join(tries) or "the signal keeps its size through the network",
        {"layers": len(rows), "constant": flat, "dead_relu": dead, "fading": fading,
         "std_min": min(stds) if stds else None, "std_max": max(stds) if stds else None},
        rows)


# -- gradients ---------------------------------------------------------------------------------------------

def check_gradients(p: Patient) -> Check:
    """|grad| and |grad|/|weight| of every conv/linear weight after one backward pass at initialisation."""
    model = p.copy().train()
    x, y = p.batch(INIT_BATCH)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model.logits(x).float(), y).backward()
    rows = []
    for name, param in model.named_parameters():
        if param.dim() < 2 or not param.requires_grad:
            continue  # weights of conv/linear layers; biases and BN's gamma/beta follow them
        g = float(param.grad.norm()) if param.grad is not None else 0.0
        w = float(param.detach().norm())
        rel = g / w if w > FLAT else g  # a zero weight: its gradient alone
        rows.append({"layer": name, "grad_norm": g, "weight_norm": w, "relative": rel})
    model.zero_grad(set_to_none=True)
    finite = all(math.isfinite(r["grad_norm"]) for r in rows)
    live = [r for r in rows if r["grad_norm"] > 1e-12]
    zero = [r["layer"] for r in rows if r["grad_norm"] <= 1e-12]
    spread, direction = 1.0, ""
    if live and finite:
        alive = [i for i, r in enumerate(rows) if r["grad_norm"] > 1e-12]
        lo = min(alive, key=lambda i: rows[i]["relative"])
        hi = max(alive, key=lambda i: rows[i]["relative"])
        spread = rows[hi]["relative"] / rows[lo]["relative"]
        direction = "vanishing" if lo < hi else "exploding"  # small early, large late = vanishing
    if not rows:
        status = WARN
    elif not finite or not live or zero:
        status = FAIL
    else:
        status = FAIL if spread >= SPREAD_FAIL else WARN if spread >= SPREAD_WARN else PASS
    for r in rows:
        r["text"] = f"{r['layer']:<22} |grad| {r['grad_norm']:.2e}  |grad|/|w| {r['relative']:.2e}"
    tries = []
    if not finite:
        tries.append("a gradient is NaN/inf at the very first step: look for a log of 0, a division, or huge inputs")
    if rows and not live:
        tries.append("no gradient reaches any weight: weights initialised to zero (every unit computes the same "
                     "thing and gets the same update) — use the default (kaiming) initialisation")
    elif zero:
        tries.append(f"{', '.join(zero[:4])} get no gradient: a constant layer after them, or weights set to zero")
    if status != PASS and live and finite and spread >= SPREAD_WARN:
        tries.append(f"the first layers get {spread:.0e}x less gradient (relative to their weights) than the last: "
                     "vanishing gradients — a deep stack of sigmoid/tanh without BN does this; use ReLU, BN after "
                     "every layer but the last, or fewer layers" if direction == "vanishing" else
                     f"the first layers get {spread:.0e}x more gradient than the last: exploding gradients — lower "
                     "the init scale, add BN, or clip gradients")
    kind = f", {direction}" if spread >= SPREAD_WARN else ""
    return Check(
        "gradients", "gradients per layer at initialisation", status,
        f"{len(rows)} weight tensors; |grad|/|w| from {min((r['relative'] for r in rows), default=0):.2e} to "
        f"{max((r['relative'] for r in rows), default=0):.2e} (spread {spread:.3g}x{kind}); "
        f"{len(zero)} without gradient",
        "SGD moves each weight by lr x gradient; if the first layers get a gradient thousands of times smaller "
        "(relative to their size) than the last, one lr cannot train both — the early layers that find edges and "
        "gradients never learn",
        "; ".join(tries) or "every layer gets a gradient of a similar relative size: one lr suits them all",
        {"spread": spread, "direction": direction, "zero_grad": zero, "finite": finite}, rows)
