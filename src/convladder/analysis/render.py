"""Print the network table and findings in the terminal (rich), in the notes' layout."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from convladder.analysis.checks import Finding
from convladder.analysis.table import NetworkTable

def make_console() -> Console:
    """A console that never squeezes the table: wide when output goes to a file or pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def format_size(shape: list[int]) -> str:
    """[C, H, W] -> 'HxWxC' (the notes write sizes this way); [N] -> 'N'."""
    return f"{shape[1]}x{shape[2]}x{shape[0]}" if len(shape) == 3 else "x".join(map(str, shape))


def format_count(n: int) -> str:
    return f"{n:,}"


def network_table(table: NetworkTable, title: str | None = None) -> Table:
    """The table as a rich Table: input | operation | output | RF | jump | params | MACs | share."""
    out = Table(title=title, header_style="bold", show_lines=False, pad_edge=False)
    for name, justify in [("#", "right"), ("block", "left"), ("layer", "left"), ("input", "right"),
                          ("operation", "left"), ("output", "right"), ("RF", "right"), ("jump", "right"),
                          ("params", "right"), ("MACs", "right"), ("share", "right")]:
        out.add_column(name, justify=justify)
    previous_block = None
    for row in table.layers:
        block = row.block if row.block != previous_block else ""
        previous_block = row.block
        out.add_row(
            str(row.index + 1), block, row.kind, format_size(row.input), row.op, format_size(row.output),
            "?" if row.rf is None else str(row.rf), "?" if row.jump is None else str(row.jump),
            format_count(row.params) if row.params else "", format_count(row.macs) if row.macs else "",
            f"{row.share:.1%}" if row.params else "",
        )
    return out


def totals_line(table: NetworkTable) -> str:
    frozen = table.total_params - table.trainable_params
    parts = [
        f"params {table.total_params:,} (trainable {table.trainable_params:,}"
        + (f", frozen {frozen:,}" if frozen else "") + ")",
        f"BN buffers {table.total_buffers:,} (Keras would count them as params: {table.total_params + table.total_buffers:,})",
        f"MACs {table.total_macs:,}",
        f"RF at output {table.rf_out if table.rf_out is not None else '?'}",
    ]
    return " | ".join(parts)


def print_table(table: NetworkTable, console: Console, title: str | None = None) -> None:
    console.print(network_table(table, title))
    console.print(totals_line(table))


def print_findings(findings: list[Finding], console: Console) -> None:
    if not findings:
        console.print("[green]design checks: no findings[/green]")
        return
    console.print(f"[bold]design checks: {len(findings)} finding(s)[/bold]")
    for f in findings:
        where = f" at {f.layer}" if f.layer else ""
        console.print(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/] [bold]{f.rule}[/]{where}: {f.message}")
        console.print(f"    why: {f.why}", highlight=False)
        console.print(f"    try: {f.suggestion}", highlight=False)
