"""CLI: `report` (HTML report of a run or ladder) and `concepts` (teaching figures, no training)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from convladder.cliopts import RunsOpt


def register(app: typer.Typer) -> None:
    """Add report and concepts."""

    @app.command()
    def report(
        target: str = typer.Argument(..., help="run id (or unique prefix, 'latest', a run folder), ladder name, sweep (sweep:NAME or its summary .json) or frontier (frontier:NAME or its summary .json)"),
        runs: RunsOpt = None,
        output: Path = typer.Option(None, "--output", "-o", help="HTML file to write (default report-<target>.html); "
                                    "with --markdown the folder (default handin-<target>) or the .md file"),
        markdown: bool = typer.Option(False, "--markdown", help="write the hand-in of a run or ladder instead: "
                                      "README.md with the curves as PNG files beside it (renders on GitHub)"),
    ) -> None:
        """Write one self-contained HTML report (tables, checks, result, figures) of a run, a ladder or a sweep."""
        from convladder.paths import runs_dir

        t0 = time.perf_counter()
        name = Path(target).stem if target.endswith((".yaml", ".yml", ".json")) else target.replace(":", "-")
        run_folder = (Path(target) / "config.json").is_file()  # a run folder given as target: its store too
        stores = [runs or runs_dir()] + ([Path(target).resolve().parent] if run_folder else [])
        if markdown:
            from convladder.report.markdown import handin_path, write_handin

            readme = handin_path(output, Path(name).name, stores)  # checked before the work, as -o below
            out = write_handin(target, readme, runs)
            typer.echo(f"wrote {out} and its figures in {time.perf_counter() - t0:.1f} s")
            return
        from convladder.report.html import write_report  # matplotlib loads only when this command runs

        if output is not None:  # checked before the work: not into the run store; a folder takes a default name
            from convladder.runs.reader import check_output

            default = f"report-{Path(name).name or 'report'}.html"
            for store in stores:
                output = check_output(output, default, store)
            from convladder.fileio import check_space

            check_space(output.parent, 2_000_000, "an HTML report (one run's measured 1.3 MB)")
        out = write_report(target, output, runs)
        size = out.stat().st_size / 1e6
        typer.echo(f"wrote {out} ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s")

    @app.command()
    def concepts(
        out: Path = typer.Option(Path("concepts"), "--out", help="folder for the PNG and SVG files"),
        model: str = typer.Option(None, "--model", help="also compare GAP vs flatten for this network (name, file or spec)"),
    ) -> None:
        """Render the concept figures (GAP vs flatten, 2x2 vs 3x3 max-pool, activations) without training."""
        from convladder.report.concepts import write_concepts

        table = None
        if model:
            from convladder.analysis.table import summarize
            from convladder.spec.registry import resolve_spec

            table = summarize(resolve_spec(model))
        for path in write_concepts(out, table):
            typer.echo(str(path))
