"""The self-contained HTML report of a run or a ladder.

One file: images are base64 PNG or inline SVG, the CSS and the few lines of JS that sort tables are
inline, and nothing refers to the network. Every figure is built inside its own guard, so a run
that lacks weights, data or files still gives a report of what is there, with notes of what is not.
"""

from __future__ import annotations

import functools
import html
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from convladder.analysis.render import bytes_parts, format_size
from convladder.fileio import atomic_write_text
from convladder.train.result import (MEDIAN_RULE, POTENTIAL_CAP, POTENTIAL_NOTE, potential_meaningful, potential_shown,
                                     potential_text, shifted_text)
from convladder.train.distill import distilled_text
from convladder.report import assets, concepts, figures, netfigs
from convladder.report.plot import Figure
from convladder.report.rundata import (
    RunData,
    final_numbers,
    is_path_like,
    ladder_file_of,
    ladder_selection,
    ladder_steps,
    load_run,
    output_classes,
    resolve_target,
    spread,
)
from convladder.runs.reader import read_json

E = html.escape


def _num(v: Any, decimals: int = 2) -> str:
    """A cell's text: ints with thousands separators, floats with `decimals` decimals -- or three significant
    digits where those decimals would leave fewer than two (an lr of 0.001 is '0.001', not '0.00')."""
    if v is None:
        return "–"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and math.isfinite(v) and abs(v) < 10.0 ** (1 - decimals):
            return f"{v:.3g}"
        return f"{v:.{decimals}f}"
    return E(str(v))


def _size(shape: Any) -> str:
    """[C, H, W] -> 'H×W×C', the notes' order, as the terminal table writes it."""
    return format_size(list(shape)).replace("x", "×")


def _potential(v: Any, raw: bool = True) -> str:
    """The potential, capped at 100 with a '*' where the formula passes it (POTENTIAL_NOTE says why)."""
    return E(potential_text(float(v), raw)) if isinstance(v, (int, float)) else _num(v)


def _over_cap(v: Any) -> bool:
    return isinstance(v, (int, float)) and v > POTENTIAL_CAP


def _td(v: Any, decimals: int = 2) -> str:
    """A cell; numbers carry data-v so the sort is numeric."""
    key = f' data-v="{v}"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f"<td{key}>{_num(v, decimals)}</td>"


def table_html(headers: list[str], rows: list[list[Any]], cls: str = "sortable") -> str:
    head = "".join(f'<th scope="col" tabindex="0">{E(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(c if isinstance(c, str) and c.startswith("<td") else _td(c) for c in row) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _notes_html(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{E(n)}</li>" for n in dict.fromkeys(notes))
    return f'<div class="notes"><strong>Missing or incomplete — the report shows what is there:</strong><ul>{items}</ul></div>'


def _figure_html(fig: Figure) -> str:
    body = fig.html()
    fig.close()
    cls = ' class="wide"' if fig.wide else ""
    return f'<figure id="fig-{E(fig.name)}"{cls}>{body}<figcaption>{E(fig.caption)}</figcaption></figure>'


def _figures(builders: list[tuple[str, Callable[[], Figure | None]]], notes: list[str]) -> str:
    """Build each figure in its own guard: one failing figure becomes a note, not a missing report."""
    parts = []
    for name, build in builders:
        try:
            fig = build()
        except Exception as exc:  # noqa: BLE001
            notes.append(f"figure {name} could not be drawn ({type(exc).__name__}: {str(exc)[:160]})")
            continue
        if fig is not None:
            parts.append(_figure_html(fig))
    return '<div class="figs">' + "".join(parts) + "</div>"


# -- blocks ----------------------------------------------------------------------------------------------

def seed_siblings(run: RunData) -> list[RunData]:
    """This run, then for every other seed of the same experiment (the same config but for the seed; for a ladder
    run, the same step) the newest completed run of that seed: one run per seed, never an unfinished one."""
    from convladder.ladder.compare import one_run_per_seed
    from convladder.report.rundata import _with_ladder_step, experiment_key

    key = experiment_key(run.config)
    if not key or not run.path.parent.is_dir():
        return [run]
    same = []
    for folder in sorted(run.path.parent.iterdir(), key=lambda f: f.name, reverse=True):  # newest first
        if folder == run.path or not (folder / "config.json").is_file():
            continue
        cfg = read_json(folder / "config.json", [])  # tolerant: a damaged sibling is skipped
        # read as load_run reads run.config: a ladder run's ladder and step come from its tags
        if cfg and cfg.get("seed") != run.seed and experiment_key(_with_ladder_step(cfg)) == key:
            same.append(load_run(folder))
    return [run, *(r for r in one_run_per_seed(same) if r.status == "completed")]


def result_block(run: RunData, siblings: list[RunData] | None = None) -> str:
    n = final_numbers(run)
    sel = n["selected_by"] or "?"
    final = ("final (last epoch)" if n["final_epoch"] == n["epochs"]
             else f"final (epoch {n['final_epoch']}, the last evaluated of {n['epochs']} trained)")
    ema = " (EMA weights)" if n["weights"] else ""  # config ema: test/val/best are the weight average's
    rows = [
        ("status", E(str(n["status"]))),
        (f"{final} — test accuracy{ema}", f"{_num(n['test_acc'])} %"),
        (f"{final} — train accuracy", f"{_num(n['train_acc'])} % <small>({E(str(n['train_acc_source']))})</small>"),
        (f"{final} — validation accuracy{ema}", f"{_num(n['val_acc'])} %"),
        (f"best epoch (selected by {E(sel)}){ema}",
         f"epoch {_num(n['best_epoch'])}: test {_num(n['best_test_acc'])} %, val {_num(n['best_val_acc'])} %"),
        ("gap = train − test", f"{_num(n['gap'])} points"),
        ("potential = test + (100 − train)", (f"{_potential(n['potential'])} %"
                                              if potential_meaningful(n["train_acc"], n["classes"])
                                              else E(potential_shown(n["potential"], n["train_acc"], n["classes"])))
         + f" <small>(target {_num(n['target'])})</small>"
         + (f"<br><small>{E(POTENTIAL_NOTE)}</small>"
            if _over_cap(n["potential"]) and potential_meaningful(n["train_acc"], n["classes"]) else "")),
        ("verdict", f"<strong>{E(str(n['verdict'] or '–'))}</strong>"),
        ("parameters", _num(n["params"]) + (" <small>(the student's only)</small>" if n["distilled_from"] else "")),
        ("wall time", f"{_num(n['wall_time_s'], 1)} s"),
    ]
    if n["distilled_from"]:  # config teacher: said beside the numbers it produced, as the EMA label is
        rows.append(("distillation", E(distilled_text(n["distilled_from"]))))
    if n["weights"]:  # train/ema.py: the average was evaluated, selected and saved in place of the live weights
        rows.append(("weights", E(f"{n['weights']}: the test, validation and best-epoch accuracies (and the train "
                                  "accuracy where it was measured clean at the end) are the average's, the weights "
                                  "that were selected and saved; the live weights' are live_val_acc / live_test_acc "
                                  "in metrics.jsonl")))
    if n["shifted"]:
        rows.append(("test accuracy, images shifted (mean of 4 directions)", E(shifted_text(n["shifted"])) + " %"))
    # completed runs only, one per seed (seed_siblings gives one per seed; this run counts when it completed)
    sibs = [r for r in (siblings or [run]) if r.status == "completed"]
    s = spread([final_numbers(r)["test_acc"] for r in sibs])
    if s:
        skipped = "" if run.status == "completed" else f"; this run ({E(run.status)}) is not counted"
        rows.append(("final test over seeds (min / median / max)",
                     f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} % <small>({s['n']} seed(s), "
                     f"completed runs, one per seed{skipped}; {E(MEDIAN_RULE)})</small>"))
    body = "".join(f"<tr><th scope='row'>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<div class="scroll"><table class="kv">{body}</table></div>'


def network_table(table: Any) -> str:
    rows = [[r.index, r.name, r.kind, r.op, _size(r.input), _size(r.output), r.rf_text, r.jump_text,
             # a later call of shared weights counts none: say whose they are, not a bare 0
             f"shared with {r.shared_with}" if getattr(r, "shared_with", "") and not r.params else r.params,
             round(100 * r.share, 2), r.macs if getattr(r, "macs_known", True) else "?",
             getattr(r, "weight_bytes", None), getattr(r, "weight_bytes_int8", None), getattr(r, "live_bytes", None)]
            for r in table.layers]
    head = ["#", "layer", "kind", "op", "input (H×W×C)", "output (H×W×C)", "RF", "jump", "params", "share %", "MACs",
            "weights fp32 (bytes)", "weights int8 (bytes)", "live RAM fp32 (bytes)"]
    uncounted = getattr(table, "macs_uncounted", None)
    macs = (f"at least {table.total_macs:,} MACs per image (not counted: {E(', '.join(uncounted))})" if uncounted
            else f"{table.total_macs:,} MACs per image")  # a partial sum is a lower bound, said as one
    rf = table.rf_out_text if table.rf_out_text != "?" else "unknown"  # a field that varies: "3-4"
    summary = (f"<p>{table.trainable_params:,} trainable parameters, {macs}, "
               f"output receptive field {rf} on a {_size(table.input)} input"
               + (f"; {E('; '.join(bytes_parts(table)))} (docs/analysis.md: how bytes are counted)"
                  if getattr(table, "memory", None) is not None else "") + ".</p>")
    return summary + table_html(head, rows)


def checks_block(run: RunData, table: Any) -> str:
    try:
        from convladder.analysis.checks import run_checks

        # the classes the network scores: training refused any other count than the data's (config has none)
        found = run_checks(table, budget=run.config.get("budget"), classes=output_classes(table) or 10)
    except Exception as exc:  # noqa: BLE001
        return f"<p>design checks unavailable ({E(str(exc)[:160])})</p>"
    if not found:
        return "<p>No design check fired.</p>"
    items = "".join(f'<li class="{E(f.severity)}"><span class="sev">{E(f.severity)}</span> '
                    f'<strong>{E(f.layer or "network")}</strong>: {E(f.message)}<br><small>why: {E(f.why)} — '
                    f'try: {E(f.suggestion)}</small></li>' for f in found)
    return f'<ul class="checks">{items}</ul>'


def run_figures(run: RunData, notes: list[str], with_concepts: bool = True) -> str:
    table = run.table()
    model = run.model("final")
    data = figures.load_test_data(run) if model is not None else None
    pred = figures.predict(model, data) if (model is not None and data is not None) else None
    one = figures.normalised(data, slice(0, 1)) if data is not None else None
    batch = figures.normalised(data, slice(0, 256)) if data is not None else None
    builders: list[tuple[str, Callable[[], Figure | None]]] = []
    if run.metrics:
        builders += [("curves", lambda: figures.curves(run)), ("gap", lambda: figures.gap_per_epoch([run]))]
    if data is not None:
        builders.append(("samples", lambda: figures.sample_grid(data)))
    if pred is not None:
        builders += [("misclassified", lambda: figures.misclassified(data, *pred)),
                     ("confusion", lambda: figures.confusion(data, pred[0]))]
    if table is not None:
        builders += [("param_share", lambda: netfigs.param_share(table)), ("rf_growth", lambda: netfigs.rf_growth(table))]
    if model is not None:
        builders.append(("bn_gamma_beta", lambda: netfigs.bn_gamma_beta(model)))
        if data is not None:
            builders += [("dead_relu", lambda: netfigs.dead_relu(model, batch)),
                         ("one_by_one", lambda: netfigs.one_by_one_merger(model, one)),
                         ("feature_maps", lambda: netfigs.feature_maps(model, one))]
    if with_concepts:
        shape = concepts.head_shape(table) if table is not None else None
        shapes = ([("this network's last map", shape)] if shape else []) + [("the notes' example", (512, 7, 7))]
        builders.append(("gap_vs_flatten", lambda: concepts.gap_vs_flatten(shapes)))
    html_figs = _figures(builders, notes)
    if with_concepts:
        html_figs = html_figs[:-len("</div>")] + _static_concepts() + "</div>"
    return html_figs


@functools.lru_cache(maxsize=1)
def _static_concepts() -> str:
    """The concept figures that do not depend on the run, rendered once per process."""
    return "".join(_figure_html(f) for f in (concepts.maxpool_2x2_vs_3x3(), concepts.activations()))


def run_section(run: RunData, detailed: bool = True, with_concepts: bool = True) -> str:
    notes = run.notes  # figures append to the run's notes; they are rendered after the figures are built
    c = run.config
    title = f"{E(run.label)} <small>{E(run.id)}</small>" if run.label != f"run {run.id}" else E(run.label)
    meta = " · ".join(E(f"{k}: {c[k]}") for k in ("dataset", "epochs", "optimizer", "lr", "schedule", "seed")
                      if c.get(k) is not None)
    parts = [f"<h2>{title}</h2><p class='meta'>{meta}</p>"]
    parts.append("<h3>Result</h3>" + result_block(run, seed_siblings(run) if detailed else [run]))
    table = run.table()
    if table is not None:
        parts.append("<h3>Network table</h3>" + network_table(table))
        parts.append("<h3>Design checks</h3>" + checks_block(run, table))
    if detailed:
        parts.append("<h3>Figures</h3>" + run_figures(run, notes, with_concepts))
        if c.get("model_spec") and run.own:  # a class, not a spec: say which, with the arguments it was built with
            args = json.dumps(c.get("model_args") or {})
            parts.append(f"<h3>Network: your own class</h3><pre>{E(str(c['model_spec']))}  arguments {E(args)}</pre>")
        elif c.get("model_spec"):
            parts.append(f"<h3>Network spec</h3><pre>{E(str(c['model_spec']))}</pre>")
        parts.append("<details><summary>config.json and env.json</summary><pre>"
                     + E(json.dumps({"config": c, "env": run.env}, indent=1, default=str)) + "</pre></details>")
    parts.insert(1, _notes_html(notes))
    return "<section>" + "".join(parts) + "</section>"


def _handout(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        return "; ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


_PICKED = {"val": "the epoch the validation split picked",
           "test": "the epoch the test set picked (optimistic: that epoch is then scored on the set that picked it)"}


def _picked_by(steps: list[dict[str, Any]]) -> str:
    """Which split picked each step's best epoch, from the runs' result.json (`best.selected_by`): 'the epoch
    the validation split picked', or per step where the steps differ (eip4-s2 steps 1-8 select on test)."""
    by_split: dict[str, list[str]] = {}
    for s in steps:
        picked = sorted({str((r.result.get("best") or {}).get("selected_by") or "?") for r in s["runs"]})
        for split in picked:
            by_split.setdefault(split, []).append(str(s["step"]))

    def name(split: str) -> str:
        if split in _PICKED:
            return _PICKED[split]
        return "not picked: the final epoch" if split.startswith("final epoch") else f"picked by {split}"

    if len(by_split) <= 1:
        return name(next(iter(by_split), "?"))
    return "; ".join(f"step{'s' if len(st) > 1 else ''} {', '.join(st)}: {name(split)}"
                     for split, st in by_split.items())


def ladder_body(name: str, runs: list[RunData], source: str | Path | None = None) -> str:
    """`runs`: every run of the ladder, newest first; the ones shown are those `ladder report` shows. `source`:
    the ladder file when the report was asked for by it (else the one the runs record, or the built-in)."""
    runs, left_out = ladder_selection(name, runs, source)
    steps = ladder_steps(runs)
    head = ["step", "name", "change", "params", "RF", "train final %", "test final %", "best epoch", "best-epoch test %",
            "final test min / median / max", "seeds", "gap", "potential", "verdict", "handout"]
    rows = []
    for s in steps:
        sp = s["final_spread"]
        rows.append([s["step"], s["step_name"] + (" (EMA weights)" if s["weights"] else ""),  # config ema
                     s["change"], s["params"], s["rf"], s["train_acc"], s["test_acc"],
                     s["best_epoch"], s["best_test_acc"],
                     f"<td data-v='{sp['median']}'>{sp['min']:.2f} / {sp['median']:.2f} / {sp['max']:.2f}</td>" if sp else "–",
                     s["seeds"], s["gap"],
                     "not meaningful (train near chance)" if s["potential"] is not None
                     and not potential_meaningful(s["train_acc"], s["classes"])
                     else f"<td data-v='{s['potential']}'>{_potential(s['potential'], raw=False)}</td>"
                     if _over_cap(s["potential"]) else s["potential"], s["verdict"], _handout(s["handout"])])
    if any(s["shifted"] for s in steps):  # shift_eval ran: test accuracy with the images shifted
        head.append("test, images shifted")
        for row, s in zip(rows, steps):
            row.append(shifted_text(s["shifted"]) if s["shifted"] else "–")
    medians = [s["median_run"] for s in steps]
    notes: list[str] = list(left_out)
    figs = _figures([("ladder_curves", lambda: figures.overlay(medians)),
                     ("ladder_gap", lambda: figures.gap_per_epoch(medians, "ladder_gap")),
                     ("ladder_steps", lambda: figures.steps_bar(steps))]
                    + ([("ladder_shifted", lambda: figures.shifted_lines(steps))] if any(s["shifted"] for s in steps)
                       else []), notes)
    per_step = "".join(f"<details><summary>{E(r.label)} — {E(r.id)}</summary>{run_section(r, detailed=False)}</details>"
                       for r in runs)
    last = steps[-1]["median_run"] if steps else None
    return (f"<section><h2>Ladder {E(name)}: {len(steps)} steps, {len(runs)} runs</h2>"
            "<p>Each row is one step (one change); numbers are the median-seed run's, the spread is over seeds "
            "(completed runs of the current ladder file, one per seed, as <code>convladder ladder report</code> "
            "picks them); a target is judged on the min, the least seed. "
            f"<em>final</em> = last epoch, <em>best epoch</em> = {E(_picked_by(steps))}.</p>"
            f"<p class='meta'>{E(MEDIAN_RULE)}</p>"
            + table_html(head, rows)
            + (f"<p class='meta'>{E(POTENTIAL_NOTE)}</p>" if any(_over_cap(s["potential"]) for s in steps) else "")
            + _notes_html(notes) + "<h3>Across steps</h3>" + figs
            + "<h3>Every run</h3>" + per_step + "</section>"
            + (f"<h2 class='sub'>Last step in detail</h2>{run_section(last)}" if last else ""))


def sweep_body(summary: dict[str, Any]) -> str:
    """The ranked trial table, the isolation plot and table of the studied parameter, and how it ran."""
    from convladder.executors.sweep import ranking_line
    from convladder.report import sweepreport

    head, rows = sweepreport.sweep_rows(summary)
    notes: list[str] = []
    figs = _figures([("isolation", lambda: sweepreport.isolation_figure(summary))], notes)
    c = summary.get("counts") or {}
    facts = (f"{summary.get('search', '?')} search, {summary.get('seeds', 1)} seed(s) per trial, budget "
             f"{_num(summary.get('budget'))} parameters, executor {E(str(summary.get('executor')))}"
             + (f", scheduler {E(summary['scheduler'])}" if summary.get("scheduler") else "")
             + f"; {c.get('completed', 0)} completed, {c.get('stopped', 0)} stopped early, {c.get('failed', 0)} failed, "
             f"{c.get('rejected', 0)} over budget; {_num(summary.get('wall_time_s'), 1)} s")
    iso = ""
    if summary.get("studied"):
        iso = (f"<h3>Isolation of {E(summary['studied'])}</h3>" + figs
               + table_html(["value", "best trial", "min test %", "params", "nuisance values", "trials"],
                            sweepreport.isolation_rows(summary)))
    return (f"<section><h2>Sweep {E(str(summary.get('name')))}: {len(summary['trials'])} trials</h2>"
            f"<p>{facts}. {E(ranking_line(summary))}; ties: fewer parameters; "
            "stopped, failed and over-budget trials follow unranked.</p>"
            + (f"<p class='meta'>model template: <code>{E(summary['model_template'])}</code></p>"
               if summary.get("model_template") else "")
            + table_html(head, rows) + f"<p class='meta'>{E(MEDIAN_RULE)}</p>" + iso + _notes_html(notes)
            + "</section>")


def render(kind: str, name: str, runs: list[RunData], summary: dict[str, Any] | None = None,
           source: str | Path | None = None) -> str:
    from convladder.report.frontierreport import frontier_body

    body = (frontier_body(summary) if kind == "frontier" and summary is not None else
            sweep_body(summary) if kind == "sweep" and summary is not None else
            ladder_body(name, runs, source) if kind == "ladder" else run_section(runs[0]))
    css, js = assets.CSS, assets.JS
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>convladder report — {E(name)}</title><style>{css}</style></head><body>"
            f"<header><h1>convladder report — {E(kind)} {E(name)}</h1><p class='meta'>written {stamp}, "
            f"torch {E(torch.__version__)}. Click a table header to sort.</p></header><main>{body}</main>"
            f"<script>{js}</script></body></html>")


def write_report(target: str, out: str | Path | None = None, runs_root: str | Path | None = None) -> Path:
    """Write the report of a run (id, prefix, 'latest' or folder), ladder (name) or sweep (`sweep:NAME` or its
    summary file) to `out`, atomically."""
    from convladder.errors import UserError
    from convladder.paths import runs_dir
    from convladder.report.sweepreport import SWEEP_PREFIX, find_summary, load_summary

    root = Path(runs_root).expanduser() if runs_root else runs_dir()
    from convladder.report.frontierreport import find_frontier, load_frontier_summary

    frontier_path = find_frontier(target, root)  # `frontier:NAME` or a frontier summary .json
    if frontier_path is not None:
        summary = load_frontier_summary(frontier_path)
        name = str(summary.get("name") or frontier_path.stem)
        out = Path(out) if out else Path(f"report-frontier-{name}.html")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, render("frontier", name, [], summary))
        return out
    summary_path = find_summary(target, root) if target.startswith(SWEEP_PREFIX) or target.endswith(".json") else None
    if summary_path is None:
        try:
            kind, runs = resolve_target(target, runs_root)
        except UserError:
            if is_path_like(target):  # a path that is no run: no sweep name either
                raise
            summary_path = find_summary(target, root)  # a sweep's name
            if summary_path is None:
                raise
    if summary_path is not None:
        summary = load_summary(summary_path)
        kind, runs, name = "sweep", [], str(summary.get("name") or summary_path.stem)
    else:
        summary = None
        # a ladder is named by its name, also when asked for by its file (`report my-ladder.yaml`)
        name = runs[0].id if kind == "run" else str(runs[0].config.get("ladder") or target)
    out = Path(out) if out else Path(f"report-{name}.html")
    text = render(kind, name, runs, summary, ladder_file_of(target) if kind == "ladder" else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out
