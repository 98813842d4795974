"""CLI: `convladder doctor MODEL`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from convladder.errors import UserError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add `doctor`."""
    app.command("doctor", help="Sanity-check a network before training: data, initial loss, activations and "
                               "gradients per layer, overfit one batch, LR range, a short run; exit 1 when a "
                               "check fails.")(doctor_command)


def doctor_command(
    model: Annotated[str, typer.Argument(help="registered name, spec text, spec file, or path/to/file.py:ClassName")],
    data: Annotated[Optional[str], Opt("--data", help="mnist (default), fashion-mnist or synthetic")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="the learning rate to check (default: the config's, 0.1)")] = None,
    optimizer: Annotated[Optional[str], Opt("--optimizer", help="sgd, adam, adamw, adadelta")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size")] = None,
    seed: Annotated[Optional[int], Opt("--seed", help="initial weights and batch order")] = None,
    model_args: Annotated[Optional[str], Opt("--model-args", help="JSON constructor arguments of your class")] = None,
    config: Annotated[Optional[Path], Opt("--config", help="a training config YAML (as for convladder train)")] = None,
    overrides: Annotated[Optional[list[str]], Opt("--set", help="key=value config override (repeatable)")] = None,
    device: Annotated[Optional[str], Opt("--device", help="auto, cpu, cuda, mps")] = None,
    epochs: Annotated[int, Opt("--epochs", help="also train this many epochs (1: train vs validation and the "
                                                "notes' verdict; 0: skip)")] = 0,
    json_out: Annotated[bool, Opt("--json", help="print the result as JSON")] = False,
    html: Annotated[Optional[Path], Opt("--html", help="also write the result as one self-contained HTML page")] = None,
    only: Annotated[Optional[str], Opt("--only", help="run just these checks, comma-separated: data, init, "
                                                      "activations, gradients, lr, overfit, learning, epoch")] = None,
    brief: Annotated[bool, Opt("--brief", help="one block per check, without the per-layer rows")] = False,
) -> None:
    """Run the doctor's checks and print them; exit 1 when any check fails."""
    from convladder.doctor.run import doctor
    from convladder.train.config import build_config

    if epochs < 0:
        raise UserError(f"--epochs must be 0 or more (got {epochs})")
    options = {"model": model, "dataset": data, "lr": lr, "optimizer": optimizer, "batch_size": batch_size,
               "seed": seed, "model_args": model_args, "device": device}
    cfg = build_config(config, options, overrides or [])

    def say(text: str) -> None:
        typer.secho(f"doctor: {text} …", err=True, dim=True)

    chosen = None if only is None else tuple(n.strip() for n in only.split(",") if n.strip())
    result = doctor(cfg.model, None, cfg, epochs=epochs, only=chosen, progress=say)
    if html is not None:
        from convladder.report.doctorpage import write_page  # the page (matplotlib) lives in report/

        path = write_page(result, html)
        typer.secho(f"doctor: wrote {path}", err=True, dim=True)
    if json_out:
        typer.echo(result.to_json())
    else:
        typer.echo(result.format_text(verbose=not brief))
    if not result.ok:
        raise typer.Exit(1)
