"""The network table and findings, in the notes' layout: rich in the terminal, plain text in a REPL, HTML in Jupyter.

All three read the same cells (`_cells`), so a `?` with its reason looks the same everywhere. A row whose
receptive field or jump cannot be determined exactly carries the reason in `row.note`; a row that reads from a
node other than the row above names it in `row.reads_from` (both optional: read with getattr).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from typing import Any

from rich.console import Console
from rich.table import Table

from convladder.analysis.checks import Finding
from convladder.analysis.memory import format_bytes
from convladder.analysis.table import LayerRow, NetworkTable


def make_console() -> Console:
    """A console that never squeezes the table: wide when output goes to a file or pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_COLOUR = {"error": "#c62828", "warning": "#b26a00", "info": "#00838f"}  # the HTML twin of SEVERITY_STYLE

# (header, right-aligned); "from" and "note" are added only when some row has one
COLUMNS = [("#", True), ("block", False), ("layer", False), ("input", True), ("operation", False), ("output", True),
           ("RF", True), ("jump", True), ("params", True), ("MACs", True), ("share", True),
           ("weights fp32", True), ("weights int8", True), ("live RAM fp32", True)]


def format_size(shape: list[int]) -> str:
    """[C, H, W] -> 'HxWxC' (the notes write sizes this way); [N] -> 'N'."""
    return f"{shape[1]}x{shape[2]}x{shape[0]}" if len(shape) == 3 else "x".join(map(str, shape))


def format_count(n: int) -> str:
    return f"{n:,}"


def _note(row: LayerRow) -> str:
    return str(getattr(row, "note", "") or "")


def _reads_from(row: LayerRow, numbers: dict[str, int] | None = None) -> str:
    """What a row reads when that is not the row above (multi-path networks), as row numbers ('#5, #6') or
    'input'; '' otherwise."""
    value = getattr(row, "reads_from", None)
    if not value:
        return ""
    names = list(value) if isinstance(value, (list, tuple)) else [value]
    numbers = numbers or {}
    return ", ".join(f"#{numbers[n]}" if n in numbers else str(n) for n in names)


def _unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _params_text(row: LayerRow, numbers: dict[str, int]) -> str:
    """The row's parameter count; a later call of shared weights names the row that counted them ('shared #3')."""
    shared = getattr(row, "shared_with", "")
    if shared and not row.params:
        return f"shared #{numbers[shared]}" if shared in numbers else f"shared {shared}"
    return format_count(row.params) if row.params else ""


def _macs_text(row: LayerRow) -> str:
    if not getattr(row, "macs_known", True):
        return "?"  # the layer computes, but convladder has no exact count for it
    return format_count(row.macs) if row.macs else ""


def _columns(table: NetworkTable) -> tuple[list[tuple[str, bool]], bool, bool]:
    with_from = any(_reads_from(r) for r in table.layers)
    with_note = any(_note(r) for r in table.layers)
    cols = list(COLUMNS) + ([("from", False)] if with_from else []) + ([("note", False)] if with_note else [])
    return cols, with_from, with_note


def _cells(table: NetworkTable) -> list[list[str]]:
    """One list of display strings per row, in the order of `_columns`; a block name only where it starts."""
    _, with_from, with_note = _columns(table)
    numbers = {row.name: row.index + 1 for row in table.layers}
    out, previous_block = [], None
    for row in table.layers:
        block = row.block if row.block != previous_block else ""
        previous_block = row.block
        cells = [str(row.index + 1), block, row.kind, format_size(row.input), row.op, format_size(row.output),
                 row.rf_text, row.jump_text, _params_text(row, numbers),
                 _macs_text(row), f"{row.share:.1%}" if row.params else "",
                 format_bytes(row.weight_bytes) if row.weight_bytes else "",
                 format_bytes(row.weight_bytes_int8) if row.weight_bytes_int8 else "", format_bytes(row.live_bytes)]
        if with_from:
            cells.append(_reads_from(row, numbers))
        if with_note:
            cells.append(_note(row))
        out.append(cells)
    return out


def network_table(table: NetworkTable, title: str | None = None) -> Table:
    """The table as a rich Table: input | operation | output | RF | jump | params | MACs | share (| from | note)."""
    out = Table(title=title, header_style="bold", show_lines=False, pad_edge=False)
    cols, _, _ = _columns(table)
    for name, right in cols:
        # a long reason wraps instead of being cut: it is the only place the "?" is explained
        wrap = name in ("note", "from")
        out.add_column(name, justify="right" if right else "left", overflow="fold" if wrap else "ellipsis",
                       max_width=48 if wrap else None)
    for cells in _cells(table):
        out.add_row(*cells)
    return out


def totals_line(table: NetworkTable) -> str:
    return " | ".join(totals_parts(table))


def totals_lines(table: NetworkTable) -> list[str]:
    """The totals as printed under the text table: counts on one line, bytes on the next (one line wrapped at 200+)."""
    parts = totals_parts(table)
    counts = parts[:4]
    lines = [" | ".join(counts)]
    if parts[4:]:
        lines.append("memory: " + " | ".join(parts[4:]))
    return lines


def totals_parts(table: NetworkTable) -> list[str]:
    """The totals under the table, one text per quantity (params, BN buffers, MACs, RF at the output)."""
    frozen = table.total_params - table.trainable_params
    parts = [
        f"params {table.total_params:,} (trainable {table.trainable_params:,}"
        + (f", frozen {frozen:,}" if frozen else "") + ")",
        f"BN buffers {table.total_buffers:,} (Keras would count them as params: {table.total_params + table.total_buffers:,})",
        _macs_total(table),
        f"RF at output {table.rf_out_text}"
        + (f" ({table.rf_note})" if table.rf_out is None and getattr(table, "rf_note", "") else ""),
    ]
    return parts + (bytes_parts(table) if getattr(table, "memory", None) is not None else [])


def bytes_parts(table: NetworkTable) -> list[str]:
    """['weights X KiB fp32 / Y KiB int8', 'peak RAM A KiB fp32 / B KiB int8 at layer N (kind)'] (analysis.memory)."""
    plan = table.memory
    at = next((row for row in table.layers if row.name == table.peak_row), None)
    where = f" at layer {at.index + 1} ({at.kind})" if at is not None else ""
    note = f" ({plan.note})" if plan.note else ""
    return [f"weights {format_bytes(plan.weights_fp32)} fp32 / {format_bytes(plan.weights_int8)} int8",
            f"peak RAM {format_bytes(plan.peak_fp32)} fp32 / {format_bytes(plan.peak_int8)} int8{where}{note}"]


def _macs_total(table: NetworkTable) -> str:
    uncounted = getattr(table, "macs_uncounted", None)
    if uncounted:  # a partial sum is a lower bound, and says what it leaves out
        return f"MACs >= {table.total_macs:,} (not counted: {', '.join(uncounted)})"
    return f"MACs {table.total_macs:,}"


def print_table(table: NetworkTable, console: Console, title: str | None = None) -> None:
    console.print(network_table(table, title))
    for line in totals_lines(table):
        console.print(line)
    if getattr(table, "notice", ""):
        console.print(f"note: {table.notice}", highlight=False)
    if getattr(table, "input_note", ""):
        console.print(f"note: {table.input_note}", highlight=False)


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


# -- plain text (a REPL's repr) ------------------------------------------------------------------------------

def table_text(table: NetworkTable, findings: list[Finding] | None = None) -> str:
    """The table, its totals and (if given) the findings as plain text without colour codes."""
    buf = io.StringIO()
    # as wide as the table needs: a REPL wraps long lines itself, a squeezed table would hide columns
    # force_jupyter=False: inside a kernel rich would otherwise display the table itself and write nothing here
    console = Console(file=buf, width=400, color_system=None, force_terminal=False, force_jupyter=False,
                      highlight=False, emoji=False)
    print_table(table, console)
    if findings is not None:
        print_findings(findings, console)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


# -- HTML (Jupyter's _repr_html_) ----------------------------------------------------------------------------

E = html.escape
_CELL = "padding:1px 8px;border-bottom:1px solid rgba(128,128,128,.25);white-space:nowrap;"


def _td(text: str, right: bool, title: str = "") -> str:
    align = "text-align:right;" if right else "text-align:left;"
    tip = f' title="{E(title)}"' if title else ""
    return f'<td style="{_CELL}{align}"{tip}>{E(text)}</td>'


def findings_html(findings: list[Finding]) -> str:
    """The design checks as a list: severity, rule, layer, message, and the notes' why and what to try."""
    if not findings:
        return '<p style="color:#2e7d32;margin:4px 0">design checks: no findings</p>'
    items = []
    for f in findings:
        colour = SEVERITY_COLOUR.get(f.severity, "inherit")
        where = f" at <code>{E(f.layer)}</code>" if f.layer else ""
        items.append(f'<li style="margin:2px 0"><span style="color:{colour};font-weight:bold">{E(f.severity)}</span> '
                     f"<b>{E(f.rule)}</b>{where}: {E(f.message)}<br><small>why: {E(f.why)}<br>"
                     f"try: {E(f.suggestion)}</small></li>")
    return (f'<p style="margin:6px 0 2px"><b>design checks: {len(findings)} finding(s)</b></p>'
            f'<ul style="margin:0;padding-left:1.4em">{"".join(items)}</ul>')


def table_html(table: NetworkTable, findings: list[Finding] | None = None) -> str:
    """The table as one self-contained HTML fragment (inline styles only: it sits inside a notebook page).

    A `?` cell carries its reason as a tooltip and in the note column; `findings` (if given) follow the totals.
    """
    cols, _, with_note = _columns(table)
    head = "".join(f'<th style="{_CELL}text-align:{"right" if right else "left"}">{E(name)}</th>'
                   for name, right in cols)
    body = []
    for row, cells in zip(table.layers, _cells(table)):
        reason = _note(row)
        tds = []
        for (name, right), text in zip(cols, cells):
            unknown = name in ("RF", "jump") and text == "?"
            tds.append(_td(text, right, reason if unknown else ""))
        body.append("<tr>" + "".join(tds) + "</tr>")
    unknown_rows = sum(1 for r in table.layers if r.rf_text == "?" or r.jump_text == "?")
    caveat = (f'<p style="margin:2px 0"><small>? = cannot be determined exactly ({unknown_rows} row(s)); '
              f'{"the note column says why" if with_note else "no reason was recorded"}.</small></p>'
              if unknown_rows else "")
    parts = [
        '<div class="convladder-table" style="overflow-x:auto">',
        f'<table style="border-collapse:collapse;font-size:90%"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>',
        f'<p style="margin:4px 0">{E(totals_line(table))}</p>',
        f'<p style="margin:4px 0"><b>note:</b> {E(table.notice)}</p>' if getattr(table, "notice", "") else "",
        f'<p style="margin:4px 0"><b>note:</b> {E(table.input_note)}</p>' if getattr(table, "input_note", "") else "",
        caveat,
        findings_html(findings) if findings is not None else "",
        "</div>",
    ]
    return "".join(parts)


# -- Markdown and CSV (a hand-in that renders on GitHub; a spreadsheet) --------------------------------------

_MD_PUNCT = re.compile(r"([\\|*_`\[\]])")


def md_text(value: Any) -> str:
    """Text that shows as itself in GitHub Markdown, on one line: characters that would format (| * _ ` [ ] \\)
    are backslash-escaped, a `<` that could open an HTML tag is written &lt; and an `&` that starts an entity
    &amp; (a `|` would split a table cell)."""
    text = re.sub(r"&(?=#?\w+;)", "&amp;", " ".join(str(value).split()))  # '&amp;' shows as itself, not '&'
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", _MD_PUNCT.sub(r"\\\1", text))


def pipe_table(headers: list[str], rows: list[list[Any]], right: list[bool] | None = None) -> str:
    """A GitHub pipe table: header, alignment row, one line per row, every cell escaped by `md_text` (so each line
    has exactly len(headers) cells); `right` marks right-aligned columns."""
    right = right or [False] * len(headers)
    lines = [[md_text(h) for h in headers], ["---:" if r else "---" for r in right]]
    for row in rows:
        if len(row) != len(headers):  # a row with a missing cell would shift every cell after it
            raise ValueError(f"pipe_table: a row has {len(row)} cells for {len(headers)} columns")
        lines.append(["" if c is None else md_text(c) for c in row])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def findings_markdown(findings: list[Finding]) -> str:
    """The design checks as a Markdown list: severity, rule, layer, message, the notes' why and what to try."""
    if not findings:
        return "**design checks: no findings**"
    out = [f"**design checks: {len(findings)} finding(s)**", ""]
    for f in findings:
        where = f" at {md_text(f.layer)}" if f.layer else ""
        out += [f"- **{md_text(f.severity)}** {md_text(f.rule)}{where}: {md_text(f.message)}",
                f"  - why: {md_text(f.why)}", f"  - try: {md_text(f.suggestion)}"]
    return "\n".join(out)


def table_markdown(table: NetworkTable, findings: list[Finding] | None = None, title: str | None = None) -> str:
    """The network table as GitHub Markdown: the text table's columns and cells (`_columns`, `_cells`) as a pipe
    table, the totals and notes as a list below it, then (if given) the design checks."""
    cols, _, _ = _columns(table)
    out = [f"**{md_text(title)}**", ""] if title else []
    out += [pipe_table([name for name, _ in cols], _cells(table), [right for _, right in cols]), ""]
    out += [f"- {md_text(part)}" for part in totals_parts(table)]
    out += [f"- note: {md_text(text)}" for text in (getattr(table, "notice", ""), getattr(table, "input_note", ""))
            if text]
    if findings is not None:
        out += ["", findings_markdown(findings)]
    return "\n".join(out) + "\n"


def _csv_value(value: Any) -> str:
    """A machine-readable cell: numbers as Python writes them (no thousands separators), None empty, booleans
    true/false, lists as compact JSON (a shape [1,28,28] is C,H,W)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def table_csv(table: NetworkTable) -> str:
    """One header row and one row per layer, the columns being the fields of the table's rows as `to_dict()` gives
    them (so a field added to the rows is a column here too)."""
    layers = table.to_dict()["layers"]
    columns = list(dict.fromkeys(key for row in layers for key in row))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in layers:
        writer.writerow([_csv_value(row.get(key)) for key in columns])
    return buf.getvalue()
