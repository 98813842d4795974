"""`RunReport`: one run's HTML report as an object — inline in Jupyter, a path or a size elsewhere.

What `result.report()` (train/result.py) and `Run.report()` (api/run.py) return. It lives here, in report/,
because it draws the report; train/ never imports report/ (docs/ARCHITECTURE.md): the root package hands
`report_of_run` to `RunResult.report` (`train.result.set_report_maker`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from convladder.report.html import render
from convladder.report.rundata import load_run


class RunReport:
    """A run's HTML report: inline in Jupyter (in an iframe, so its styles stay inside), a path or size elsewhere."""

    def __init__(self, html_text: str, name: str, path: Path | None = None, height: int = 720):
        self.html = html_text
        self.name = name
        self.path = path
        self.height = height

    @classmethod
    def of_run(cls, folder: Path, out: str | Path | None = None, *, model: Any = None) -> RunReport:
        """The report of the run in `folder`; with `out` also written there. `model`: the class it trained, for a
        class the report cannot import itself (one defined in a notebook); the weight figures need it."""
        run = load_run(folder)
        if model is not None:
            _give_models(run, folder, model)
        report = cls(render("run", run.id, [run]), folder.name)
        if out is not None:
            report.save(out)
        return report

    def save(self, out: str | Path) -> Path:
        """Write the report to `out` (one self-contained HTML file), atomically."""
        from convladder.fileio import atomic_write_text

        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.html)
        self.path = path
        return path

    def _repr_html_(self) -> str:
        # srcdoc keeps the report's CSS and sorting script inside the frame; no network, no scripts in the page
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:{self.height}px;'
                f'border:1px solid #ccc" sandbox="allow-scripts"></iframe>')

    def __repr__(self) -> str:
        where = f"written to {self.path}" if self.path else "not written; .save('report.html') writes it"
        return f"<RunReport of run {self.name}: {len(self.html) / 1e6:.1f} MB of HTML, {where}>"


def report_of_run(folder: Path, out: str | Path | None = None, *, model: Any = None) -> RunReport:
    """`RunReport.of_run`, as a function: what the root package hands to `train.result.set_report_maker`."""
    return RunReport.of_run(folder, out, model=model)


def _give_models(run: Any, folder: Path, model: Any) -> None:
    """Hand the report the trained networks rebuilt from `model` (the person's class), so it need not import it.

    RunData caches its networks in `_models`; filling that cache is how a caller supplies them.
    """
    from convladder.train.models import create_model

    for which, name in (("final", "model.safetensors"), ("best", "best.safetensors")):
        if (folder / name).is_file():
            run._models[which] = create_model(folder, model=model, which=which)
