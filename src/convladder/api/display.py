"""How what the Python API returns shows: the CLI's text in a terminal (`str`/`repr`), HTML in Jupyter.

No torch and no matplotlib here: `import convladder` stays light.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

E = html.escape


def pre(text: str) -> str:
    """Text as a monospaced HTML block (tables the CLI aligns by spaces keep their columns)."""
    return f'<pre style="font-size:12px;line-height:1.3">{E(text)}</pre>'


class Shown:
    """A result with its CLI text: `str()`/`repr()` give the text the command prints, `_repr_html_` the same
    in Jupyter; `.data` holds the values (a dict or list, as `--json` prints them where the command has it)."""

    def __init__(self, text: str, data: Any = None, html_text: str | None = None, title: str = ""):
        self.text, self.data, self._html, self.title = text, data, html_text, title

    def __getattr__(self, name: str) -> Any:
        # the values' own attributes (a DoctorResult's .ok, .checks; an ExportReport's .path) read through
        if name.startswith("_") or name in ("text", "data", "title"):
            raise AttributeError(name)
        return getattr(self.data, name)

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = f"<b>{E(self.title)}</b>" if self.title else ""
        return f"<div>{head}{self._html if self._html is not None else pre(self.text)}</div>"


class ListShown(list):
    """A list (of runs, findings, predictions) that shows as the CLI's text / HTML."""

    def __init__(self, items: list[Any], text: Callable[[], str], html_text: Callable[[], str] | None = None):
        super().__init__(items)
        self._text, self._html = text, html_text

    def __str__(self) -> str:
        return self._text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self._html() if self._html is not None else pre(self._text())


class FigureView:
    """One report figure: inline in Jupyter (SVG for line charts, PNG for images), its caption as text;
    `.save(path)` writes PNG or SVG by the file's suffix."""

    def __init__(self, figure: Any):
        self.figure = figure
        self.name, self.caption = figure.name, figure.caption

    def _repr_html_(self) -> str:
        return f"<figure>{self.figure.html()}<figcaption>{E(self.caption)}</figcaption></figure>"

    def __repr__(self) -> str:
        return f"<figure {self.name}: {self.caption}; .save('{self.name}.png') writes it>"

    def save(self, path: str | Path) -> Path:
        from convladder.fileio import atomic_write_bytes

        out = Path(path)
        data = self.figure.svg().encode() if out.suffix.lower() == ".svg" else self.figure.png()
        atomic_write_bytes(out, data)
        return out


def table_html(header: list[str], rows: list[list[Any]], right: set[int] | None = None) -> str:
    """A small HTML table (header row, then rows) in the notebook's plain style."""
    right = right or set()

    def cell(tag: str, i: int, v: Any) -> str:
        align = "right" if i in right else "left"
        return f'<{tag} style="text-align:{align};padding:1px 8px">{E("-" if v is None else str(v))}</{tag}>'

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<table style="border-collapse:collapse"><tr>{head}</tr>{body}</table>'
