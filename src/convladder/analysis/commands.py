"""CLI: `summary`, `check`, `models`."""

from __future__ import annotations

import json
import re

import typer

from convladder.errors import UserError


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'28x28x1' (H x W x C, as the notes write sizes) or '28x28' -> (C, H, W)."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*(?:x\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserError(f"--input {text!r}: write height x width x channels, e.g. 28x28x1 or 224x224x3")
    h, w, c = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1)
    return (c, h, w)


def parse_budget(text: str | None) -> int | None:
    """'20k', '15000', '1.2M' -> parameter count."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise UserError(f"--budget {text!r}: write a parameter count such as 20k, 15000 or 1.2M")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


BYTE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024 ** 2, "kb": 1000, "mb": 1000 ** 2, "k": 1024, "m": 1024 ** 2}


def parse_bytes(text: str | None, option: str) -> int | None:
    """'16KiB', '8KB', '16k', '32768' -> bytes (KiB and a bare k: 1024; KB: 1000)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in BYTE_UNITS:
        raise UserError(f"{option} {text!r}: write a size in bytes such as 16KiB, 8KB, 512k or 32768 (KiB = 1024 bytes)")
    return int(float(match.group(1)) * BYTE_UNITS[match.group(2).lower()])


def table_for(model: str, input: str | None, model_args: str | None, *, classes: int = 10,
              budget: int | None = None, flash: int | None = None, ram: int | None = None):
    """(table with its design checks, title) for a name, spec text/file, or an own class `file.py:ClassName`
    (imports that file): `network_verdict`, the one verdict `convladder.summarize` gives too."""
    from convladder.analysis.table import DEFAULT_INPUT, network_verdict
    from convladder.spec.ownref import is_own_ref  # (spec.own, the loader, only for an own class)

    shape = parse_input_size(input) if input else None
    if is_own_ref(model):
        from convladder.spec.own import load_own, parse_model_args

        args = parse_model_args(model_args) if model_args else None
        module, _, _ = load_own(model, args, shape or DEFAULT_INPUT)
        return network_verdict(module, shape, classes=classes, budget=budget, where=model, flash=flash, ram=ram), model
    if model_args:
        raise UserError("--model-args applies to your own class (path/to/file.py:ClassName), not to a spec")
    from convladder.spec.registry import resolve_spec

    spec = resolve_spec(model, shape)
    return network_verdict(spec, classes=classes, budget=budget, flash=flash, ram=ram), spec.name or None


SUMMARY_FORMATS = ("text", "markdown", "csv", "json")


def summary_format(fmt: str, as_json: bool = False) -> str:
    """The `summary --format` asked for (`--json` is the same as `--format json`), checked before any work."""
    fmt = fmt.strip().lower()
    if fmt == "md":
        fmt = "markdown"
    if fmt not in SUMMARY_FORMATS:
        raise UserError(f"--format {fmt!r} is not a format of summary — use one of {', '.join(SUMMARY_FORMATS)}")
    if as_json and fmt not in ("text", "json"):
        raise UserError(f"--json and --format {fmt} ask for two formats — give one of them")
    return "json" if as_json else fmt


def register(app: typer.Typer) -> None:
    """Add summary, check and models."""

    @app.command()
    def summary(
        model: str = typer.Argument(..., help="registered name, spec file (.yaml/.txt), spec text, or "
                                    "path/to/file.py:ClassName (your nn.Module; importing it runs that file)"),
        input: str = typer.Option(None, "--input", "-i", help="input size HxWxC, e.g. 28x28x1 (default: the spec's)"),
        model_args: str = typer.Option(None, "--model-args", help="JSON constructor arguments of your class"),
        budget: str = typer.Option(None, help="parameter budget for the checks, e.g. 20k"),
        flash: str = typer.Option(None, "--flash", help="flash budget for the int8 weights, e.g. 16KiB"),
        ram: str = typer.Option(None, "--ram", help="RAM budget for the peak int8 activation memory, e.g. 8KiB"),
        classes: int = typer.Option(10, help="number of classes the output must give"),
        as_json: bool = typer.Option(False, "--json", help="print the table as JSON (the same as --format json)"),
        fmt: str = typer.Option("text", "--format", "-f", help="text, markdown (a GitHub pipe table), csv (one row "
                                "per layer, plain numbers) or json"),
    ) -> None:
        """The network table: sizes, receptive field, jump, parameters, MACs; design checks below it."""
        from convladder.analysis.render import make_console, print_findings, print_table

        fmt = summary_format(fmt, as_json)
        table, title = table_for(model, input, model_args, classes=classes, budget=parse_budget(budget),
                                 flash=parse_bytes(flash, "--flash"), ram=parse_bytes(ram, "--ram"))
        if fmt != "text":
            typer.echo({"json": lambda: json.dumps(table.to_dict(), indent=2),  # the table and its findings
                        "markdown": table.to_markdown, "csv": table.to_csv}[fmt]().rstrip("\n"))
            return
        console = make_console()
        print_table(table, console, title=title)
        print_findings(table.findings or [], console)

    @app.command()
    def check(
        model: str = typer.Argument(..., help="registered name, spec file, spec text or path/to/file.py:ClassName"),
        budget: str = typer.Option("20k", help="parameter budget, e.g. 20k (the lesson's target)"),
        flash: str = typer.Option(None, "--flash", help="flash budget for the int8 weights, e.g. 16KiB"),
        ram: str = typer.Option(None, "--ram", help="RAM budget for the peak int8 activation memory, e.g. 8KiB"),
        input: str = typer.Option(None, "--input", "-i", help="input size HxWxC"),
        model_args: str = typer.Option(None, "--model-args", help="JSON constructor arguments of your class"),
        classes: int = typer.Option(10, help="number of classes"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Design checks from the notes. Exits 1 when a check finds an error (e.g. over budget)."""
        from convladder.analysis.render import make_console, print_findings

        table, _ = table_for(model, input, model_args, classes=classes, budget=parse_budget(budget),
                             flash=parse_bytes(flash, "--flash"), ram=parse_bytes(ram, "--ram"))
        findings = table.findings or []
        if as_json:
            typer.echo(json.dumps([f.__dict__ for f in findings], indent=2))
        else:
            print_findings(findings, make_console())
        if any(f.severity == "error" for f in findings):
            raise typer.Exit(1)

    @app.command()
    def models(as_json: bool = typer.Option(False, "--json")) -> None:
        """The registered networks with their parameter counts."""
        from rich.console import Console
        from rich.table import Table

        # the zoo's recorded counts (tests check them against the built networks): nothing is built, no torch
        from convladder.spec.zoo import ZOO

        entries = dict(ZOO)
        if as_json:
            typer.echo(json.dumps({name: {"params": e.params, "description": e.description, "input": list(e.input_shape),
                                          "spec": e.text} for name, e in entries.items()}, indent=2))
            return
        table = Table(header_style="bold")
        for col in ("name", "params", "input", "description"):
            table.add_column(col, justify="right" if col == "params" else "left")
        for name, e in entries.items():
            c, h, w = e.input_shape
            table.add_row(name, f"{e.params:,}", f"{h}x{w}x{c}", e.description)
        console = Console()  # as analysis.render.make_console (which imports torch): never squeezed when piped
        (console if console.is_terminal else Console(width=200)).print(table)
