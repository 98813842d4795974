"""`convladder data fetch|info`: get data sets into the cache and show what is there."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from convladder.errors import UserError


def image_form(shape: tuple[int, ...]) -> str:
    """'28x28 grey' or '32x32 colour (3 channels)' for an image shape (H, W) or (C, H, W)."""
    h, w = shape[-2:]
    return f"{h}x{w} grey" if len(shape) == 2 else f"{h}x{w} colour ({shape[0]} channels)"


def register(app: typer.Typer) -> None:
    """Add the `data` sub-commands to the app."""
    data = typer.Typer(help="Get data sets (MNIST, Fashion-MNIST, your own) into the cache.",
                       no_args_is_help=True)  # fmt: skip

    @data.command("fetch")
    def fetch(
        name: Optional[str] = typer.Argument(None, help="mnist, fashion-mnist (fashion), or a name for --from data."),
        source: Optional[Path] = typer.Option(None, "--from", help="Import a folder of IDX files or an .npz "
                                              "(images (N,H,W), (N,H,W,C) or (N,C,H,W), C = 1 or 3)."),
        as_name: Optional[str] = typer.Option(None, "--name", help="Cache name for --from data (e.g. custom)."),
        force: bool = typer.Option(False, "--force", help="Fetch again even if the cache verifies."),
    ) -> None:
        """Fetch NAME into the cache (cache, mirrors, fallbacks), or import one with --from."""
        from convladder.data import datasets
        from convladder.data.normalise import stat_text

        if name and as_name and name != as_name:
            raise UserError(f"give the data set name once: {name!r} or --name {as_name!r}")
        target = as_name or name
        if target is None:
            raise UserError("which data set? e.g. `convladder data fetch mnist` or `... --from PATH --name custom`")
        t0 = time.perf_counter()
        if source is not None:
            splits, meta = datasets.import_dataset(target, source, log=typer.echo)
        else:
            splits, meta = datasets.fetch_dataset(target, force=force, log=typer.echo)
        typer.echo(
            f"{splits.name}: {len(splits.x_train)} train + {len(splits.x_test)} test images "
            f"{image_form(tuple(splits.x_train.shape[1:]))}, mean {stat_text(splits.mean)} std {stat_text(splits.std)} "
            f"({time.perf_counter() - t0:.1f}s)"
        )

    @data.command("info")
    def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """Show each data set: cached or not, path, counts, verified, mean/std."""
        from convladder.data import datasets

        rows = [datasets.dataset_info(n) for n in datasets.list_cached()]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        from convladder.data.normalise import as_stat, stat_text

        console = Console()
        # Every data set lives in <data dir>/<name>, so the title carries the path.
        table = Table(title=f"data sets in {datasets.data_dir()}/<name>")
        for col in ("name", "cached", "verified", "train", "test", "mean", "std", "source"):
            table.add_column(col, no_wrap=col != "source")
        for r in rows:
            verified = "sha256" if r["verified"] else ("shapes only" if r["cached"] and "error" not in r else "no")
            table.add_row(
                r["name"], "yes" if r["cached"] else "no", verified,
                str(r.get("train", "")), str(r.get("test", "")),
                stat_text(as_stat(r["mean"])) if "mean" in r else "", stat_text(as_stat(r["std"])) if "std" in r else "",
                r.get("source") or "",
            )  # fmt: skip
        console.print(table)
        for r in rows:
            if r.get("error") and r["cached"]:
                console.print(f"[red]{r['name']}[/red]: {r['error']}", markup=True, highlight=False)
            elif not r["cached"]:
                console.print(f"{r['name']}: not cached — `convladder data fetch {r['name']}`", highlight=False)

    app.add_typer(data, name="data")
