"""The doctor's result as one self-contained HTML page: the checks, a few training images with their labels,
activations and gradients per layer, the LR range test with its good range, the overfit and short-run curves.

Reads a `DoctorResult` (or its JSON); draws with matplotlib like the rest of the report.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from convladder.doctor.result import DoctorResult
from convladder.errors import UserError
from convladder.fileio import atomic_write_text
from convladder.report import assets
from convladder.report.plot import Figure, cmap_with_gaps, mosaic, plt

E = html.escape
COLOURS = {"pass": "#2b8a3e", "warn": "#b85c00", "fail": "#c92a2a", "skip": "#666"}


def load_result(source: DoctorResult | dict[str, Any] | str | Path) -> DoctorResult:
    """A DoctorResult from itself, its dict, or a JSON file written by `convladder doctor --json`."""
    if isinstance(source, DoctorResult):
        return source
    if isinstance(source, dict):
        return DoctorResult.from_dict(source)
    path = Path(source).expanduser()
    try:
        return DoctorResult.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{path} is not a doctor result ({exc}) — write one with convladder doctor MODEL --json "
                        "> result.json") from None


# -- figures ----------------------------------------------------------------------------------------------

def samples_figure(samples: dict[str, Any]) -> Figure | None:
    if not samples or not samples.get("uint8_base64"):
        return None
    shape = samples["shape"]
    x = np.frombuffer(base64.b64decode(samples["uint8_base64"]), dtype=np.uint8).reshape(shape)
    if x.ndim == 4:  # (N, C, H, W): the first channel
        x = x[:, 0]
    n, h, w = x.shape
    cols, top = 8, 10
    fig, ax = plt.subplots(figsize=(cols * 0.8, -(-n // cols) * 0.95 + 0.3))
    ax.imshow(mosaic(x.astype(np.float32) / 255.0, cols, top=top), cmap=cmap_with_gaps(), interpolation="nearest")
    for i, label in enumerate(samples.get("labels", [])[:n]):
        r, c = divmod(i, cols)
        ax.text(c * (w + 2), r * (h + 2 + top) + top - 1, f"label {label}", fontsize=7, va="bottom")
    ax.axis("off")
    ax.set_title("the first training images with their labels (do the labels match the images?)", fontsize=8)
    fig.tight_layout()
    return Figure("doctor_samples", "Training images as the doctor saw them, with their labels", fig)


def activations_figure(rows: list[dict[str, Any]]) -> Figure | None:
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = np.arange(len(rows))
    std = [max(r["std"] or 0.0, 1e-12) for r in rows]
    colours = [COLOURS.get(r.get("status", "pass"), "#333") for r in rows]
    ax.bar(xs, std, color=colours, alpha=0.75)
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{r['layer']} {r['kind']}" for r in rows], rotation=70, fontsize=6)
    ax.set_ylabel("std of the layer's output")
    dead = [(i, r["dead_channels"]) for i, r in enumerate(rows) if r.get("dead_channels")]
    for i, d in dead:
        ax.text(i, std[i], f"{100 * d:.0f}% dead", fontsize=6, ha="center", va="bottom", color=COLOURS["fail"])
    ax.set_title("activations at initialisation (train mode): std per layer; red = constant or dead, "
                 "orange = fading/saturated", fontsize=8)
    fig.tight_layout()
    return Figure("doctor_activations", "Activation std per layer at initialisation", fig, vector=True, wide=True)


def gradients_figure(rows: list[dict[str, Any]]) -> Figure | None:
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.0))
    xs = np.arange(len(rows))
    rel = [max(r["relative"] or 0.0, 1e-12) for r in rows]
    ax.bar(xs, rel, color="tab:blue", alpha=0.7)
    ax.set_yscale("log")
    ax.set_xticks(xs, [r["layer"] for r in rows], rotation=70, fontsize=6)
    ax.set_ylabel("|grad| / |weight|")
    ax.set_title("gradients at initialisation, input side left: a falling staircase = vanishing gradients",
                 fontsize=8)
    fig.tight_layout()
    return Figure("doctor_gradients", "Relative gradient per weight tensor at initialisation", fig, vector=True,
                  wide=True)


def lr_figure(curve: list[dict[str, Any]], m: dict[str, Any]) -> Figure | None:
    if not curve:
        return None
    lrs = [p["lr"] for p in curve]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(lrs, [p["loss"] for p in curve], color="#bbb", lw=0.8, label="loss per mini-batch")
    ax.plot(lrs, [p["smoothed"] for p in curve], color="tab:blue", lw=1.5, label="smoothed")
    if m.get("low") is not None and m.get("high") is not None:
        ax.axvspan(m["low"], m["high"], color="tab:green", alpha=0.12, label="good range")
    if m.get("too_high") is not None:
        ax.axvline(m["too_high"], color=COLOURS["fail"], ls=":", lw=1, label="too high")
    if m.get("suggested") is not None:
        ax.axvline(m["suggested"], color="tab:green", ls="--", lw=1, label=f"suggested {m['suggested']:.3g}")
    ax.axvline(m["lr"], color="black", lw=1.2, label=f"configured {m['lr']:g}")
    ax.set_xscale("log")
    start = curve[0]["smoothed"]
    ax.set_ylim(top=max(start * 1.6, min(p["smoothed"] for p in curve) + 0.1))
    ax.set(xlabel="learning rate", ylabel="training loss", title="LR range test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure("doctor_lr", "LR range test: loss while the lr rises, the good range and the configured lr", fig,
                  vector=True)


def steps_figure(points: list[dict[str, Any]], name: str, title: str, caption: str) -> Figure | None:
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = [p["step"] for p in points]
    ax.plot(steps, [p["loss"] for p in points], color="tab:blue", label="loss")
    ax.set(xlabel="step", ylabel="training loss", title=title)
    if "acc" in points[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [p["acc"] for p in points], color="tab:orange", label="batch accuracy")
        ax2.set_ylabel("accuracy on the batch (%)")
        ax2.set_ylim(0, 101)
    fig.tight_layout()
    return Figure(name, caption, fig, vector=True)


# -- the page ----------------------------------------------------------------------------------------------

def _figure(fig: Figure | None) -> str:
    if fig is None:
        return ""
    body = fig.html()
    fig.close()
    cls = ' class="wide"' if fig.wide else ""
    return f'<figure id="fig-{E(fig.name)}"{cls}>{body}<figcaption>{E(fig.caption)}</figcaption></figure>'


def _check_block(c: Any) -> str:
    colour = COLOURS.get(c.status, "#333")
    advice = (f"<p><b>{'what to try' if c.status in ('warn', 'fail') else 'reading'}:</b> {E(c.advice)}</p>"
              if c.advice else "")
    return (f'<li style="border-left:5px solid {colour}"><span class="sev" style="color:{colour}">{E(c.status)}</span>'
            f"<b>{E(c.title)}</b> — {E(c.value)}<p><b>why it matters:</b> {E(c.why)}</p>{advice}</li>")


def _layer_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    head = "".join(f"<th>{E(k)}</th>" for k in keys)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td data-v="{v}">{v:.3g}</td>'
        return f"<td>{E(str(v if v is not None else '–'))}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(k)) for k in keys) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def render(source: DoctorResult | dict[str, Any] | str | Path) -> str:
    """The page's HTML text."""
    r = load_result(source)
    by = {c.name: c for c in r.checks}
    figs = [samples_figure(r.samples)]
    if "activations" in by:
        figs.append(activations_figure(by["activations"].details))
    if "gradients" in by:
        figs.append(gradients_figure(by["gradients"].details))
    if "lr" in by:
        figs.append(lr_figure(by["lr"].details, by["lr"].measured))
    if "overfit" in by:
        figs.append(steps_figure(by["overfit"].details, "doctor_overfit", "overfitting one batch",
                                 "Overfitting one batch: loss and accuracy on the batch per step"))
    if "learning" in by:
        figs.append(steps_figure(by["learning"].details, "doctor_short_run", "short run",
                                 "The short run: training loss per step"))
    cfg = r.config
    failed = [c.name for c in r.checks if c.status == "fail"]
    verdict = (f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else
               "no check failed; read the warnings" if any(c.status == "warn" for c in r.checks) else
               "every check passed")
    tables = ""
    if "activations" in by and by["activations"].details:
        tables += ("<details><summary>activations per layer</summary>"
                   + _layer_table(by["activations"].details,
                                  ["layer", "kind", "mean", "std", "dead_channels", "saturated", "status"])
                   + "</details>")
    if "gradients" in by and by["gradients"].details:
        tables += ("<details><summary>gradients per weight tensor</summary>"
                   + _layer_table(by["gradients"].details, ["layer", "grad_norm", "weight_norm", "relative"])
                   + "</details>")
    notes = "".join(f"<li>{E(n)}</li>" for n in r.notes)
    body = (f"<section><h2>{E(verdict)} <small>{r.wall_time_s:.1f} s</small></h2>"
            f"<p class='meta'>{E(r.model)} · {r.params:,} params · {E(r.dataset)} ({r.classes} classes) · "
            f"{E(str(cfg.get('optimizer')))} lr {cfg.get('lr')} · batch {cfg.get('batch_size')} · "
            f"{E(str(cfg.get('schedule')))} · augment {cfg.get('augment')} · seed {cfg.get('seed')} · "
            f"{E(r.device)} · torch {E(r.torch)}</p>"
            f"<ul class='checks'>{''.join(_check_block(c) for c in r.checks)}</ul>"
            + (f"<div class='notes'><ul>{notes}</ul></div>" if notes else "")
            + f"<div class='figs'>{''.join(_figure(f) for f in figs)}</div>{tables}</section>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>convladder doctor — {E(r.model)}</title><style>{assets.CSS}</style></head><body>"
            f"<header><h1>convladder doctor — {E(r.model)}</h1><p class='meta'>written "
            f"{time.strftime('%Y-%m-%d %H:%M')}. How do we verify the model is learning? These checks, before "
            f"training.</p></header><main>{body}</main><script>{assets.JS}</script></body></html>")


def write_page(source: DoctorResult | dict[str, Any] | str | Path, out: str | Path) -> Path:
    """Write the doctor's page to `out` (one self-contained HTML file), atomically."""
    path = Path(out).expanduser()
    text = render(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
