"""The CLI's commands as Python functions: check, ladder, sweep, frontier, doctor, lr_find, predict, export.

Each calls the same library functions as its command, with the command's defaults and errors (UserError), and
returns an object that prints the command's text and shows as HTML in Jupyter. Long work (ladder, sweep,
frontier, doctor) prints a line per finished job unless quiet=True.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convladder.api.display import ListShown, Shown, table_html
from convladder.errors import UserError


def _root(runs: str | Path | None) -> Path:
    from convladder.paths import runs_dir

    return Path(runs).expanduser() if runs else runs_dir()


def _loaded(run: Any, runs: str | Path | None, which: str) -> Any:
    """The run's network and records as predict/export/serve load them (serve.predict.load_run)."""
    from convladder.api.run import ref_of, store_of
    from convladder.serve.predict import load_run

    root = store_of([run], runs)
    return load_run(ref_of(run), Path(root).expanduser() if root else None, which)


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda line: None) if quiet else (lambda line: print(line, flush=True))


def check(model: Any, input_shape: tuple[int, ...] | None = None, *, budget: int | str | None = "20k",
          args: dict[str, Any] | None = None, classes: int = 10) -> ListShown:
    """The design checks of `convladder check` (budget 20k by default): a list of findings, `.ok` when none is
    an error (the command's exit 0)."""
    from convladder import summarize
    from convladder.analysis.commands import parse_budget
    from convladder.analysis.render import findings_html, print_findings

    limit = parse_budget(budget) if isinstance(budget, str) else budget
    findings = summarize(model, input_shape, args=args, classes=classes, budget=limit).findings or []

    def text() -> str:
        import io

        from rich.console import Console

        buf = io.StringIO()
        # as wide as the findings need (a REPL wraps itself); force_jupyter=False: write here, not to the kernel
        print_findings(findings, Console(file=buf, width=400, color_system=None, force_terminal=False,
                                         force_jupyter=False, highlight=False, emoji=False))
        return buf.getvalue().rstrip()

    shown = ListShown(findings, text, lambda: findings_html(findings))
    shown.ok = not any(f.severity == "error" for f in findings)  # type: ignore[attr-defined]
    return shown


def ladder(name_or_file: str, *, steps: str | list[int] | None = None, seeds: int = 1,
           runs: str | Path | None = None, executor: str = "inprocess", quiet: bool = False,
           handin: str | Path | None = None, **config: Any) -> Shown:
    """Run a ladder's steps x seeds (finished jobs are skipped), then its comparison table, as `ladder run` and
    `ladder report` do. config: the keys `ladder run` overrides for every step (epochs, subset, dataset, device).
    handin: also write the Markdown hand-in there (`ladder report --markdown -o`): README.md and its figures."""
    from convladder.ladder.compare import format_table, ladder_summary
    from convladder.ladder.ladder import load_ladder
    from convladder.ladder.run import run_ladder
    from convladder.runs.store import RunStore

    allowed = ("epochs", "subset", "dataset", "device")
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise UserError(f"ladder() takes {', '.join(allowed)} as config keys, not {', '.join(unknown)} — a step's "
                        "other settings belong in the ladder file")
    lad = load_ladder(name_or_file)
    store = RunStore(runs)
    readme = None
    if handin is not None:
        from convladder.report.markdown import handin_path, write_ladder_handin

        readme = handin_path(handin, lad.name, [store.root])  # checked before the work
    results = run_ladder(lad, store.root, steps=steps, seeds=seeds, executor=executor, echo=_say(quiet), **config)
    failed = [r for r in results if r["status"] == "failed"]
    if failed and len(failed) == len(results):
        raise UserError(f"every job of ladder {lad.name} failed, e.g. {failed[0].get('label')}: {failed[0].get('error')}")
    rows = ladder_summary(lad, store)
    text = format_table(rows, lad)
    if failed:
        text += f"\nwarning: {len(failed)} of {len(results)} job(s) failed; rerun to retry only those"
    data: dict[str, Any] = {"jobs": results, "steps": rows}
    if readme is not None:
        data["handin"] = write_ladder_handin(lad, store, readme, rows)
    return Shown(text, data, title=f"ladder {lad.name}")


def sweep(file: str | Path, *, seeds: int | None = None, runs: str | Path | None = None,
          executor: str = "inprocess", dry_run: bool = False, quiet: bool = False) -> Shown:
    """A hyperparameter sweep from its YAML file, as `convladder sweep`: the ranked table (its summary is
    written to <runs>/sweeps/ like the command's)."""
    from convladder.executors.base import job_line, make_executor
    from convladder.executors.sweep import SweepResult, format_table, make_trials, run_sweep, sweep_summary, write_summary
    from convladder.executors.sweepspec import load_sweep

    if seeds is not None and seeds < 1:
        raise UserError(f"seeds must be at least 1 (got {seeds})")
    spec, root = load_sweep(file, seeds), _root(runs)
    if dry_run:
        summary = sweep_summary(SweepResult(spec, make_trials(spec), "dry-run", 0.0, str(root)))
        return Shown(format_table(summary), summary, title=f"sweep {spec.name} (dry run)")
    say, t0 = _say(quiet), time.perf_counter()
    result = run_sweep(spec, root, make_executor(executor),
                       on_done=lambda res: say(f"[{time.perf_counter() - t0:6.1f}s] {job_line(res)}"))
    summary = sweep_summary(result)
    path = write_summary(summary, root)
    c = summary["counts"]
    if c["failed"] and not c["completed"] and not c["stopped"]:
        raise UserError(f"every trial of sweep {spec.name} failed or was over budget ({c['failed']} failed, "
                        f"{c['rejected']} over budget); summary: {path}")
    text = format_table(summary) + f"\nsummary: {path}"
    if c["failed"]:  # the command's warning (it exits 0): the others are ranked and kept
        text += (f"\nwarning: {c['failed']} of {sum(c.values())} trial(s) failed; the ranking holds the others "
                 "(a rerun trains only what is missing)")
    return Shown(text, summary, title=f"sweep {spec.name}")


def frontier_plan(spec: Any) -> str:
    """`frontier --dry-run`: each budget's candidate networks (counted, none trained) and the rejected ones."""
    from convladder.executors.families import family_of
    from convladder.executors.frontier import candidates

    lines = []
    for budget in spec.budgets:
        cands, stats = candidates(spec, budget)
        if spec.trials:
            lines.append(f"budget {budget:,}: {stats['in_budget']} of {stats['generated']} networks fit, "
                         f"{stats['near']} within {spec.near:.0%} of it; trying {len(cands)}")
            lines += [f"  family {fam}: {n['generated']:,} generated, {n['in_budget']:,} fit, {n['near']:,} near, "
                      f"{n['chosen']} chosen" for fam, n in stats["families"].items()]
        else:
            lines.append(f"budget {budget:,}: the file's candidates only; trying {len(cands)}"
                         + (" (one trial: no search, its seeds are the reported ones)" if len(cands) == 1 else ""))
        lines += [f"  {c.params:>7,}  {family_of({'shape': c.shape}):<9}  {c.text}" for c in cands]
        lines += [f"  rejected {r['params']:>7,}  {r['reason']}: {r['model'][:60]}..." for r in stats["rejected"]]
        if spec.halving and cands:  # the rungs: trials, epochs and images each, the cost against a plain grid
            from convladder.executors.halving import plan_lines

            lines += plan_lines(spec, budget, cands)
    return "\n".join(lines)


def frontier(file: str | Path | None = None, *, budgets: str | None = None, seeds: int | None = None,
             trials: int | None = None, epochs: str | None = None, dataset: str | None = None,
             runs: str | Path | None = None, executor: str = "inprocess", dry_run: bool = False,
             quiet: bool = False) -> Shown:
    """The frontier, as `convladder frontier`: the best network under each budget, chosen on validation and
    re-trained over seeds (5 by default); the summary is written to <runs>/frontiers/ after each budget.
    dry_run: each budget's candidate networks, nothing trained."""
    from convladder.executors.base import job_line, make_executor
    from convladder.executors.frontier import format_table, run_frontier, write_summary
    from convladder.executors.frontierspec import load_frontier

    for name, value, least in (("seeds", seeds, 1), ("trials", trials, 0)):
        if value is not None and value < least:
            raise UserError(f"{name} must be at least {least} (got {value})")
    spec = load_frontier(file, budgets=budgets, seeds=seeds, trials=trials, epochs=epochs, dataset=dataset)
    if dry_run:
        return Shown(frontier_plan(spec), spec, title="frontier (dry run)")
    root, say, t0, path = _root(runs), _say(quiet), time.perf_counter(), []

    def save(summary: dict[str, Any]) -> None:  # after each budget: an interrupted frontier keeps what it measured
        path[:] = [write_summary(summary, root, path[0] if path else None)]

    summary = run_frontier(spec, root, make_executor(executor), on_budget=save,
                           on_done=lambda res: say(f"[{time.perf_counter() - t0:6.1f}s] {job_line(res)}"))
    save(summary)
    return Shown(format_table(summary) + f"\nsummary: {path[0]}", summary, title="frontier")


def doctor(model: Any, *, epochs: int = 0, only: str | list[str] | None = None, brief: bool = False,
           quiet: bool = False, html: str | Path | None = None, **config: Any) -> Shown:
    """`convladder doctor`: data, initial loss, activations, gradients, overfit one batch, LR range (and a short
    run with epochs=1). model: a name, spec, file.py:Class, or an nn.Module class/instance. config: TrainConfig
    keys (dataset, lr, optimizer, batch_size, seed, ...). `.ok` is False when a check failed (the command's
    exit 1); `.data` is the DoctorResult."""
    from convladder.doctor.run import doctor as run_doctor
    from convladder.train.config import build_config

    if epochs < 0:
        raise UserError(f"epochs must be 0 or more (got {epochs})")
    if "model" in config:
        raise UserError("give the network as the first argument of convladder.doctor, not as model=")
    cfg = build_config(None, {**config, "model": model if isinstance(model, str) else None})
    chosen = None if only is None else tuple(n.strip() for n in (only.split(",") if isinstance(only, str) else only))
    result = run_doctor(None if isinstance(model, str) else model, None, cfg, epochs=epochs, only=chosen,
                        progress=None if quiet else (lambda text: print(f"doctor: {text} …", flush=True)))
    if html is not None:
        from convladder.report.doctorpage import write_page

        write_page(result, html)
    return Shown(result.format_text(verbose=not brief), result, title="doctor")


def lr_find(model: Any = None, *, min_lr: float = 1e-5, max_lr: float = 1.0, steps: int = 100,
            out: str | Path | None = None, runs: str | Path | None = None, **config: Any) -> Shown:
    """The LR range test of `convladder lr-find` (weights are left unchanged); writes OUT.json and OUT.csv
    (default <runs>/lrfind/<time>) like the command. `.suggested_lr` is its suggestion."""
    from convladder.train.config import build_config
    from convladder.train.lrfind import format_result, suggest_lr, write_result

    cfg = build_config(None, {**config, **({"model": model} if model is not None else {})})
    res = suggest_lr(cfg, min_lr=min_lr, max_lr=max_lr, steps=steps)
    target = out or _root(runs) / "lrfind" / time.strftime("%Y%m%d-%H%M%S")
    json_path, csv_path = write_result(res, target)
    return Shown(format_result(res) + f"\ncurve: {json_path} and {csv_path}", res, title="LR range test")


def prediction_rows(names: list[str], probs: Any, top: int) -> list[dict[str, Any]]:
    """One dict per image: source, label, probability, top-k and every class's probability (`predict --json`)."""
    from convladder.serve.predict import top_k

    return [{"source": name, "label": t[0][0], "probability": round(t[0][1], 6),
             "top": [[c, round(p, 6)] for c, p in t], "probs": [round(float(p), 6) for p in row]}
            for name, t, row in zip(names, top_k(probs, top), probs)]


def prediction_text(rows: list[dict[str, Any]]) -> str:
    """`convladder predict`'s lines: source, label (probability), top-k."""
    width = max((len(r["source"]) for r in rows), default=0)
    return "\n".join(f"{r['source']:<{width}}  {r['label']}  ({r['probability'] * 100:5.1f}%)  top-{len(r['top'])}: "
                     + "  ".join(f"{c}:{p:.3f}" for c, p in r["top"]) for r in rows)


def predict(run: Any, images: Any, *, top_k: int = 3, which: str = "final", runs: str | Path | None = None) -> ListShown:
    """Classify image files, folders, .npy or IDX batches with a trained run, as `convladder predict`: a list of
    dicts (source, label, probability, top, probs)."""
    from convladder.serve.predict import Predictor, check_finite
    from convladder.serve.preprocess import load_inputs

    if top_k < 1:
        raise UserError(f"top_k must be at least 1 (got {top_k})")
    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    loaded = _loaded(run, runs, which)
    batch = load_inputs(paths, input_shape=loaded.input_shape)
    probs = Predictor.from_run(loaded).probs(batch.pixels)
    check_finite(probs, batch.names, loaded)
    rows = prediction_rows(batch.names, probs, top_k)
    header = ["image", "label", "probability", f"top-{top_k}"]
    return ListShown(rows, lambda: prediction_text(rows),
                     lambda: table_html(header, [[r["source"], r["label"], f"{r['probability'] * 100:.1f}%",
                                                  "  ".join(f"{c}:{p:.3f}" for c, p in r["top"])] for r in rows]))


def export_lines(report: Any, dataset: str, check: bool, weights_label: str = "") -> list[str]:
    """What `convladder export` prints about the file it wrote and how it was checked."""
    lines = [f"wrote {report.path} ({report.bytes / 1024:.1f} KiB, one file, dynamic batch)"]
    if check:
        lines.append(f"checked on {report.images} images ({report.source}): max |onnxruntime - torch| = "
                     f"{report.max_abs_diff:.1e}")
    if report.onnx_acc is not None:
        recorded = f", run recorded {report.run_acc:.2f}%" if report.run_acc is not None else ""
        recorded += weights_label  # config ema: the exported weights are the average
        lines.append(f"{report.dataset} test accuracy: onnx {report.onnx_acc:.2f}%, torch {report.torch_acc:.2f}%"
                     f"{recorded}")
    elif check:
        lines.append(f"the {dataset} test set is not cached (or does not fit the network's input), so accuracy was "
                     f"not compared (run `convladder data fetch {dataset}` to enable it)")
    return lines


def export(run: Any, *, format: str = "onnx", out: str | Path | None = None, which: str = "final",
           check: bool = True, runs: str | Path | None = None, int8: bool = False, **int8_options: Any) -> Shown:
    """One verified ONNX file of a run's network, as `convladder export` (default <run id>.onnx); `.path`.
    int8=True: `export --int8` (calibration=1000, quant_format='qoperator', threads=0): an Int8Report."""
    if format.lower() != "onnx":
        raise UserError(f"format {format} is not supported; use format='onnx'")
    from convladder.serve.export import export_onnx, require_onnx

    require_onnx()  # before loading anything, so a missing extra is the first thing said
    loaded = _loaded(run, runs, which)
    if int8:
        from convladder.serve.quantize import report_lines, warning_line

        report = export_onnx(loaded, Path(out) if out else Path(f"{loaded.run_id}.int8.onnx"), int8=True,
                             **int8_options)
        lines = report_lines(report) + [line for line in [warning_line(report)] if line]
        return Shown("\n".join(lines), report, title=f"int8 export of run {loaded.run_id}")
    report = export_onnx(loaded, Path(out) if out else Path(f"{loaded.run_id}.onnx"), check=check)
    lines = export_lines(report, str(loaded.config.get("dataset") or "mnist"), check,
                         getattr(loaded, "weights_label", ""))
    return Shown("\n".join(lines), report, title=f"export of run {loaded.run_id}")
