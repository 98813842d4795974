"""The hand-in: a ladder's or one run's report as README.md, its figures as PNG files beside it.

It renders on GitHub as it is: pipe tables (`analysis.render.pipe_table`), images by relative links to files
written next to it, no HTML. Per ladder step: the change, why, the target, parameters, final and best-epoch
train/test accuracy as min / median / max over seeds (`train.result.min_median_max`, the one median rule), gap,
potential, the verdict (judged on the least seed), one paragraph of analysis (the reading of the numbers and
the trained network's diagnostics, `ladder.diagnostics`), the network table and the training curves.
The numbers are those `convladder ladder report` prints (`ladder.compare.ladder_summary`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convladder.analysis.checks import run_checks
from convladder.analysis.render import md_text, pipe_table, table_markdown
from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes, atomic_write_text
from convladder.ladder.compare import ladder_summary, reading
from convladder.ladder.diagnostics import bn_health, dead_relu
from convladder.ladder.ladder import CLASSES, Ladder
from convladder.report import figures
from convladder.report.plot import PNG_DPI, Figure
from convladder.report.rundata import RunData, final_numbers, load_run
from convladder.runs.reader import check_output
from convladder.runs.store import RunStore
from convladder.train.distill import distilled_text
from convladder.train.result import (MEDIAN_RULE, POTENTIAL_NOTE, gap, min_median_max, potential, potential_meaningful,
                                     potential_shown)

README = "README.md"
DIAG_IMAGES = 512  # test images the dead-ReLU count reads (as `convladder diagnose`)


def handin_path(out: str | Path | None, name: str, store_roots: list[Path]) -> Path:
    """The README the hand-in writes: `out/README.md` (or `out` itself when it ends in .md; default folder
    `handin-<name>`), checked before any work as every `-o` is (`runs.reader.check_output`: not into the run
    store, a place one may write)."""
    folder = Path(out) if out is not None else Path(f"handin-{Path(name.replace(':', '-')).name or 'report'}")
    target = folder if folder.suffix.lower() == ".md" else folder / README
    for root in store_roots:
        target = check_output(target, README, root)
    return target


def _fmt(v: float | None, decimals: int = 2) -> str:
    return "-" if v is None else f"{v:.{decimals}f}"


def _spread_cells(values: list[float | None]) -> list[str]:
    s = min_median_max(values)
    return [_fmt(s["min"]), _fmt(s["median"]), _fmt(s["max"])] if s else ["-", "-", "-"]


def _mmm(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{stats['min']:.2f} / {stats['median']:.2f} / {stats['max']:.2f}"


def _write_figures(builders: list[tuple[str, Callable[[], Figure]]], folder: Path, notes: list[str],
                   alt: dict[str, str] | None = None) -> list[str]:
    """Each figure drawn in its own guard and written as PNG beside the README; Markdown image lines (the text
    of each is the figure's caption, or `alt[filename]`)."""
    lines = []
    for filename, build in builders:
        try:
            fig = build()
            try:
                atomic_write_bytes(folder / filename, fig.png(PNG_DPI))
            finally:
                fig.close()
        except Exception as exc:  # noqa: BLE001 - one figure that cannot be drawn is a note, not a lost hand-in
            notes.append(f"figure {filename} could not be drawn ({type(exc).__name__}: {str(exc)[:160]})")
            continue
        lines += [f"![{md_text((alt or {}).get(filename) or fig.caption)}]({filename})", ""]
    return lines


def run_diagnostics(run: RunData, n_images: int = DIAG_IMAGES) -> dict[str, Any] | None:
    """BN health and dead ReLUs of the run's final network on its first test images; None (a note in run.notes)
    when the weights or the test images are not here."""
    model = run.model("final")
    data = figures.load_test_data(run) if model is not None else None
    if model is None or data is None:
        return None
    x = figures.normalised(data, slice(0, n_images))
    return {"images": int(len(x)), "bn": bn_health(model), "relu": dead_relu(model, x)}


def analysis_text(read: str, diag: dict[str, Any] | None, table: Any, whose: str,
                  handout: dict[str, Any] | None = None, missing: list[str] | None = None) -> str:
    """One paragraph: the reading of the numbers, then what the diagnostics of `whose` network say."""
    parts = [read.rstrip(".") + "."]
    if handout and handout.get("test") is not None:
        parts.append(f"The handout reports test {float(handout['test']):.2f} %"
                     + (f" with {int(handout['params']):,} parameters" if handout.get("params") else "") + ".")
    if diag is None:
        why = "; ".join(dict.fromkeys(missing or [])) or "no trained weights or test images here"
        parts.append(f"No diagnostics ({why}).")
    else:
        parts.append(f"Diagnostics of {whose}:")
        bn = diag["bn"]
        flagged = [b for b in bn if b["verdict"] != "healthy"]
        if not bn:
            parts.append("no BatchNorm layers;")
        elif not flagged:
            parts.append(f"all {len(bn)} BatchNorm layers healthy (median |gamma| within 0.5-2 and |beta| <= 1: "
                         "the notes' 'great job');")
        else:
            worst = ", ".join(f"{b['layer']} {b['verdict']} (median |gamma| {b['gamma']['abs_median']:.2f}, |beta| "
                              f"{b['beta']['abs_median']:.2f})" for b in flagged[:3])
            parts.append(f"{len(flagged)} of {len(bn)} BatchNorm layers not healthy: {worst}"
                         f"{' and more' if len(flagged) > 3 else ''} -- a BN that has to scale or shift hard "
                         "compensates for the layer before it;")
        relu = diag["relu"]
        dead, channels = sum(r["dead_channels"] for r in relu), sum(r["channels"] for r in relu)
        if relu:
            most = max(relu, key=lambda r: r["dead_channels"])
            parts.append(f"{dead} of {channels} ReLU channels never positive on {diag['images']} test images"
                         + (f" (most in {most['layer']}: {most['dead_channels']} of {most['channels']}): a dead "
                            "channel costs parameters and carries nothing;" if dead else ";"))
        else:
            parts.append("no ReLU layers;")
    if table is not None and table.total_params:
        top = max(table.layers, key=lambda r: r.params)
        parts.append(f"the largest share of the {table.total_params:,} parameters is {top.name} ({top.kind}, "
                     f"{top.share:.1%}).")
    text = " ".join(parts)
    return text[:-1] + "." if text.endswith(";") else text


def network_section(table: Any, spec_text: str | None, budget: int | None = None) -> list[str]:
    """The network as text (a code block) and as the Markdown network table with its design checks."""
    out = []
    if spec_text:
        out += ["```", spec_text, "```", ""]
    if table is None:
        return out + ["(the network table cannot be built here)", ""]
    findings = run_checks(table, budget=budget, classes=CLASSES)
    return out + [table_markdown(table, findings)]


# -- a ladder ------------------------------------------------------------------------------------------------

def _step_numbers(store: RunStore, row: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, RunData]]:
    """The completed seeds of a step (as ladder_summary chose them), each with its best epoch's train accuracy
    from metrics.jsonl; and their run folders, read by the report's tolerant reader."""
    done = [s for s in row["seeds"] if s["status"] == "completed"]
    runs = {s["run_id"]: load_run(store.root / s["run_id"]) for s in done}
    out = []
    for s in done:
        epoch_row = next((m for m in runs[s["run_id"]].metrics if m["epoch"] == s.get("best_epoch")), {})
        source = runs[s["run_id"]].result.get("train_acc_source")
        out.append({**s, "best_train": epoch_row.get("train_acc"), "train_source": source})
    return out, runs


def _stats_table(seeds: list[dict[str, Any]]) -> str:
    picked = ", ".join(sorted({str(s.get("selected_by") or "?") for s in seeds}))
    sources = ", ".join(sorted({str(s["train_source"]) for s in seeds if s.get("train_source")}))
    rows = [["final train accuracy %" + (f", {sources}" if sources else ""), *_spread_cells([s["train"] for s in seeds])],
            ["final test accuracy %", *_spread_cells([s["test"] for s in seeds])],
            [f"best-epoch train accuracy % (as seen in training that epoch)",
             *_spread_cells([s["best_train"] for s in seeds])],
            [f"best-epoch test accuracy % (epoch picked by {picked})", *_spread_cells([s["best_test"] for s in seeds])]]
    return pipe_table(["over seeds", "min", "median", "max"], rows, [False, True, True, True])


def _summary_table(rows: list[dict[str, Any]]) -> str:
    head = ["step", "name", "change", "params", "RF", "epochs", "final test % min / median / max",
            "best-epoch test % min / median / max", "train % (median seed)", "gap", "potential",
            "verdict (least seed)", "seeds"]
    body = []
    for r in rows:
        ts, bs = r.get("test_stats"), r.get("best_stats")
        body.append([r["step"], r["name"], r["change"], f"{r['params']:,}", r.get("rf_out_text") or (r["rf_out"] if r["rf_out"] is not None else "?"),
                     r["epochs"], _mmm(ts), _mmm(bs),
                     _fmt(r.get("train")), _fmt(r.get("gap")),
                     potential_shown(r.get("potential"), r.get("train"), r.get("classes"), raw=False),
                     r.get("verdict") or "-", f"{r['n_completed']}" + (f" ({r['n_failed']} failed)" if r["n_failed"] else "")])
    right = [True, False, False, True, True, True, True, True, True, True, True, False, True]
    return pipe_table(head, body, right)


def ladder_markdown(ladder: Ladder, store: RunStore, folder: Path, rows: list[dict[str, Any]] | None = None) -> str:
    """The hand-in text of a ladder; its figures are written into `folder` on the way."""
    rows = ladder_summary(ladder, store) if rows is None else rows
    datasets = sorted({str(r["dataset"]) for r in rows if r.get("dataset")})
    opts = " ".join(f"{k}={v}" for k, v in sorted((rows[0].get("options") or {}).items())) if rows else ""
    out = [f"# {md_text(ladder.title or ladder.name)}", "",
           f"Ladder `{ladder.name}` on {md_text(', '.join(datasets) or 'mnist')}, one change per step. "
           f"**Target: test accuracy >= {ladder.target:g} % on every seed.** "
           f"Runs: the newest `ladder run` options ({md_text(opts or 'the defaults')}). Written {time.strftime('%Y-%m-%d')}.",
           "",
           "How to read the numbers: accuracies in %; *final* = the last epoch; *best epoch* = the epoch each run "
           "picked (the split that picked it is named); min / median / max over seeds "
           f"({md_text(MEDIAN_RULE)}); gap = train − test and potential = test + (100 − train), of the median seed; "
           "the verdict and *on target* are judged on the least seed (the lowest final test accuracy).", "",
           "## Steps", "", _summary_table(rows), ""]
    if any((r.get("potential") or 0) > 100 and potential_meaningful(r.get("train"), r.get("classes")) for r in rows):
        out += [md_text(POTENTIAL_NOTE), ""]
    notes: list[str] = []
    medians: list[RunData] = []
    sections: list[str] = []
    for r in rows:
        sections += _step_section(ladder, store, r, folder, medians, notes)
    if medians:
        out += _write_figures([("ladder-curves.png", lambda: figures.overlay(medians)),
                               ("ladder-gap.png", lambda: figures.gap_per_epoch(medians, "ladder_gap"))], folder, notes,
                              {"ladder-curves.png": "Test accuracy and loss per epoch, the median seed of each step",
                               "ladder-gap.png": "Gap = train - test per epoch (train accuracy as seen during training), "
                                                 "the median seed of each step"})
    out += sections
    if notes:
        out += ["## Notes", "", *[f"- {md_text(n)}" for n in dict.fromkeys(notes)], ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _step_section(ladder: Ladder, store: RunStore, r: dict[str, Any], folder: Path, medians: list[RunData],
                  notes: list[str]) -> list[str]:
    step = ladder.step(r["step"])
    out = [f"## Step {r['step']}: {md_text(r['name'])}", "", f"**Change:** {md_text(r['change'])}", ""]
    if r.get("why"):
        out += [f"**Why:** {md_text(r['why'])}", ""]
    out += [f"**Target:** test accuracy >= {r['target']:g} % on every seed (the ladder's target).", ""]
    handout = r.get("handout") or {}
    facts = f"**Parameters:** {r['params']:,}" + (f" (handout: {int(handout['params']):,})" if handout.get("params") else "")
    if r.get("distilled"):  # config teacher: the step's count is the student's alone
        facts += f" (the student's; {distilled_text(r['distilled'])})"
    facts += f" · **RF at the output:** {r.get('rf_out_text') or (r['rf_out'] if r['rf_out'] is not None else '?')} · **epochs:** {r['epochs']}"
    out += [facts, ""]
    seeds, runs = _step_numbers(store, r)
    if not seeds:
        out += [f"**Result:** {md_text(r['reading'])}", ""]
    else:
        median = next(s for s in seeds if s["seed"] == r.get("median_seed"))
        least = r.get("least") or {}
        out += [_stats_table(seeds), "",
                f"**Gap** (median seed {median['seed']}): {_fmt(r.get('gap'))} points · **potential:** "
                f"{md_text(potential_shown(r.get('potential'), r.get('train'), r.get('classes')))} · **verdict** (least seed "
                f"{least.get('seed')}): **{md_text(r.get('verdict') or '-')}**", "",
                "Runs: " + ", ".join(f"seed {s['seed']} `{s['run_id']}`" for s in seeds) + ".", ""]
        run = runs[median["run_id"]]
        diag = run_diagnostics(run)
        whose = f"the median seed's network (seed {median['seed']}, final weights)"
        out += [f"**Analysis.** {md_text(analysis_text(r['reading'], diag, run.table(), whose, handout, run.notes))}", ""]
        medians.append(run)
        out += _write_figures([(f"step{r['step']}-curves.png", lambda: figures.curves(run))], folder, notes,
                              {f"step{r['step']}-curves.png": f"Step {r['step']}: accuracy, loss and learning rate per "
                                                              f"epoch of the median seed (seed {median['seed']})"})
        for s in seeds:
            notes += [f"step {r['step']}, run {s['run_id']}: {n}" for n in s.get("notes") or []]
    try:
        table = step.table()
    except Exception as exc:  # noqa: BLE001 - an own class that no longer imports: the rest of the hand-in stays
        table = None
        notes.append(f"step {r['step']}: the network table cannot be built ({str(exc)[:200]})")
    out += ["### Network", "", *network_section(table, step.spec_text), ""]
    return out


def write_ladder_handin(ladder: Ladder, store: RunStore, readme: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write a ladder's hand-in: `readme` (checked by `handin_path`) and its PNG figures beside it, atomically."""
    readme.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(readme, ladder_markdown(ladder, store, readme.parent, rows))
    return readme


# -- one run -------------------------------------------------------------------------------------------------

def _run_reading(n: dict[str, Any], done: bool, target: float) -> str:
    """The reading `ladder report` gives a step, for one run; an unfinished run or one without a verdict says so."""
    train, test = n["train_acc"], n["test_acc"]
    if not done:
        return f"status {n['status']}: no verdict (the numbers are those of the last recorded epoch)"
    if test is None or train is None or not n["verdict"]:
        return f"train {_fmt(train)} / test {_fmt(test)}: no verdict recorded"
    return reading({"train": train, "test": test, "target": target, "n_completed": 1, "verdict": n["verdict"],
                    "classes": n["classes"],  # chance = 100/classes (None: 10)
                    "gap": gap(train, test) if n["gap"] is None else n["gap"],
                    "potential": potential(train, test) if n["potential"] is None else n["potential"]})


def run_markdown(run: RunData, folder: Path) -> str:
    """The hand-in text of one run; its figures are written into `folder` on the way."""
    from convladder.report.html import seed_siblings  # the HTML result block's seeds: the same runs here
    from convladder.report.rundata import spread

    n = final_numbers(run)
    c = run.config
    train, test, target = n["train_acc"], n["test_acc"], float(n["target"] or 99.4)
    best_row = next((m for m in run.metrics if m["epoch"] == n["best_epoch"]), {})
    facts = " · ".join(md_text(f"{k} {c[k]}") for k in ("dataset", "epochs", "optimizer", "lr", "schedule", "seed")
                       if c.get(k) is not None)
    done = run.status == "completed"
    final = ("final (last epoch)" if n["final_epoch"] == n["epochs"] else f"final (epoch {n['final_epoch']})") if done \
        else f"last recorded epoch ({n['final_epoch'] or '-'})"  # an unfinished run has no final numbers yet
    ema = " (EMA weights)" if n["weights"] else ""  # config ema: test/val/best are the weight average's
    rows = [["status", str(n["status"])], [f"{final} train accuracy %, {n['train_acc_source']}", _fmt(train)],
            [f"{final} test accuracy %{ema}", _fmt(test)], [f"{final} validation accuracy %{ema}", _fmt(n["val_acc"])],
            [f"best epoch (picked by {n['selected_by'] or '?'}){ema}", str(n["best_epoch"] or "-")],
            [f"best-epoch test accuracy %{ema}", _fmt(n["best_test_acc"])],
            ["best-epoch train accuracy % (as seen in training that epoch)", _fmt(best_row.get("train_acc"))],
            ["gap = train − test (points)", _fmt(n["gap"])],
            ["potential = test + (100 − train) %", potential_shown(n["potential"], train, n["classes"])],
            [f"verdict (target {target:g} %)", n["verdict"] or "-"],
            ["parameters" + (" (the student's only)" if n["distilled_from"] else ""),
             f"{n['params']:,}" if n["params"] is not None else "-"],
            ["wall time s", _fmt(n["wall_time_s"], 1)]]
    if n["distilled_from"]:  # config teacher (train/distill.py)
        rows.append(["distillation", distilled_text(n["distilled_from"])])
    if n["weights"]:  # train/ema.py: the average was evaluated, selected and saved in place of the live weights
        rows.append(["weights", f"{n['weights']}: the test, validation and best-epoch accuracies are the average's"])
    sibs = [r for r in seed_siblings(run) if r.status == "completed"]
    s = spread([final_numbers(r)["test_acc"] for r in sibs])
    if s:
        rows.append([f"final test accuracy % over seeds, min / median / max ({s['n']} seed(s), completed runs, one "
                     "per seed)", f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}"])
    read = _run_reading(n, done, target)
    notes: list[str] = []
    out = [f"# {md_text(run.label)}", "", f"Run `{run.id}` · {facts}. Written {time.strftime('%Y-%m-%d')}.", "",
           "## Result", "", pipe_table(["quantity", "value"], rows, [False, True]), ""]
    if s:
        out += [f"({md_text(MEDIAN_RULE)})", ""]
    if (n["potential"] or 0) > 100 and potential_meaningful(train, n["classes"]):
        out += [md_text(POTENTIAL_NOTE), ""]
    diag = run_diagnostics(run) if test is not None else None
    whose = "the final network" if done else "the weights the unfinished run saved (model.safetensors)"
    table = run.table()
    out += [f"**Analysis.** {md_text(analysis_text(read, diag, table, whose, None, run.notes))}", ""]
    out += ["## Figures", ""]
    if run.metrics:
        out += _write_figures([("curves.png", lambda: figures.curves(run)),
                               ("gap.png", lambda: figures.gap_per_epoch([run]))], folder, notes)
    else:
        out += ["(no epoch was recorded: no curves)", ""]
    spec = None if run.own else c.get("model_spec")
    out += ["## Network", "", *network_section(table, str(spec) if spec else None, c.get("budget")), ""]
    notes += run.notes
    if notes:
        out += ["## Notes", "", *[f"- {md_text(n)}" for n in dict.fromkeys(notes)], ""]
    return "\n".join(out).rstrip("\n") + "\n"


def write_handin(target: str, readme: Path, runs_root: str | Path | None = None) -> Path:
    """`convladder report RUN|LADDER --markdown`: the hand-in of a run (id, prefix, 'latest', folder) or a ladder
    (name or file) written to `readme` (checked by `handin_path`) with its PNG figures beside it, atomically."""
    from convladder.ladder.ladder import load_ladder, load_ladder_of
    from convladder.report.rundata import ladder_file_of, resolve_target

    if target.startswith(("sweep:", "frontier:")) or target.endswith(".json"):
        raise UserError(f"report {target} --markdown: the Markdown hand-in is of a run or a ladder; a sweep's or "
                        "frontier's report is HTML — drop --markdown")
    kind, runs = resolve_target(target, runs_root)
    readme.parent.mkdir(parents=True, exist_ok=True)
    if kind == "run":
        atomic_write_text(readme, run_markdown(runs[0], readme.parent))
        return readme
    store = RunStore(runs_root)
    file = ladder_file_of(target)
    name = str(runs[0].config.get("ladder") or target)
    ladder = load_ladder(file) if file is not None else load_ladder_of(name, store.list_runs(tag=f"ladder:{name}"))
    return write_ladder_handin(ladder, store, readme)
