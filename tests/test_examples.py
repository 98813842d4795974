"""The example notebooks run from top to bottom in a fresh Jupyter kernel (nbclient + ipykernel), offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient, ipykernel)")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CELL_TIMEOUT_S = 240  # generous for a shared 2-core CI machine; the whole notebook takes well under a minute


def _outputs(nb) -> list[tuple[int, dict]]:
    return [(i, out) for i, cell in enumerate(nb.cells) if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _html(out: dict) -> str:
    return "".join(out.get("data", {}).get("text/html", ""))


@pytest.mark.slow
def test_own_model_notebook_runs(tmp_path: Path) -> None:
    path = EXAMPLES / "own_model.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    env_runs = os.environ.pop("CONVLADDER_RUNS", None)  # the notebook must pick its own temporary store
    before = sorted(p.name for p in EXAMPLES.iterdir())
    try:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(EXAMPLES)}})
        client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails
    finally:
        if env_runs is not None:
            os.environ["CONVLADDER_RUNS"] = env_runs
    outs = _outputs(nb)
    assert not [o for _, o in outs if o.get("output_type") == "error"]
    html = "\n".join(_html(o) for _, o in outs)
    assert "RF at output 28" in html  # the network table, as HTML, with the functional pool seen
    table_cell = next(c for c in nb.cells if c.source.startswith("table = convladder.summarize"))
    assert [o["output_type"] for o in table_cell.outputs] == ["execute_result"]  # nothing printed beside it
    assert "RF at output 28" in table_cell.outputs[0]["data"]["text/plain"]  # its text twin is filled
    assert "design checks" in html
    assert "final (last epoch)" in html and "best epoch" in html and "verdict" in html  # the RunResult
    assert 'class="convladder-progress"' in html and "test acc %" in html  # the progress block, last state
    assert html.count("<svg") >= 1  # training curves (inline SVG from convladder.report)
    assert "misclassified" in html and "data:image/png;base64," in html  # the mistake grid (PNG)
    assert "id=&quot;fig-misclassified&quot;" in html and "fig-feature_maps" in html  # weight figures in the report
    assert "<iframe srcdoc=" in html  # result.report() inline
    assert sorted(p.name for p in EXAMPLES.iterdir()) == before  # no runs/ or report files left behind
