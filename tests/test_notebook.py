"""Notebook and REPL display: the network table as HTML/text, RunResult and seed results, the notebook progress
block, and `result.report()` reading the run store."""

from __future__ import annotations

import html
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from convladder.analysis.checks import Finding
from convladder.analysis.render import findings_html, table_html, table_text
from convladder.analysis.table import summarize
from convladder.errors import UserError
from convladder.spec.registry import resolve_spec
from convladder.train.config import TrainConfig
from convladder.train.loop import train
from convladder.train.progress import (
    JsonProgress,
    NotebookProgress,
    PlainProgress,
    Progress,
    in_notebook,
    make_progress,
    resolve_progress,
)
from convladder.runs.store import RunStore
from convladder.train.result import RunResult, SeedResults

torch.set_num_threads(1)  # the test machine is shared; tiny nets gain nothing from more threads

FAST = dict(model="tiny8k", dataset="synthetic", epochs=2, val_size=256, subset=1024, batch_size=128,
            clean_train_eval=512)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    root = tmp_path_factory.mktemp("runs")
    return root, train(TrainConfig(**FAST), RunStore(root))


def _table_with_unknown():
    """eip4-3rd with row 5's field marked unknown, as the tracer marks a size change it cannot explain."""
    table = summarize(resolve_spec("eip4-3rd"))
    row = table.layers[4]
    row.rf = row.rf_hw = None
    row.jump = row.jump_hw = None
    row.note = "size changed 24->22 between observed modules for an unseen reason"
    return table, row


def _result(**over) -> RunResult:
    data = dict(run_id="20250101-000000-abcdef", status="completed", params=7944, epochs_done=12,
                final={"train_acc": 99.61, "test_acc": 99.47, "val_acc": 99.30},
                best={"epoch": 10, "val_acc": 99.38, "test_acc": 99.52, "selected_by": "val"},
                gap=0.14, potential=99.86, verdict="healthy", train_acc_source="clean (first 10000 images)",
                wall_time_s=197.4, time_to_target_s=150.2, warmup_s=0.31, seed=3)
    data.update(over)
    return RunResult(**data)


# -- network table ------------------------------------------------------------------------------------------

def test_table_html_has_every_row_and_question_marks() -> None:
    table, row = _table_with_unknown()
    page = table_html(table)
    assert page.count("<tr>") == len(table.layers) + 1  # header + one per layer
    for r in table.layers:
        assert html.escape(r.op) in page
    assert "10,890" in page and "RF at output 28" in page
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells.count("?") == 2  # RF and jump of the one unknown row, never a number
    assert f'title="{html.escape(row.note)}">?</td>' in page  # the reason as a tooltip on the ?
    assert ">note</th>" in page and html.escape(row.note) in page
    assert "cannot be determined exactly (1 row(s))" in page
    assert "<script" not in page and "<style" not in page  # inline styles only: it sits inside a notebook


def test_table_html_without_notes_has_no_note_column() -> None:
    table = summarize(resolve_spec("eip4-3rd"))
    page = table_html(table)
    assert ">note</th>" not in page and "?" not in re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert "design checks" not in page  # findings only when given


def test_rows_reading_other_rows_name_them_by_number() -> None:
    """A multi-path row names the rows it reads ('#3, #6'), the model input as 'input'; the column only then."""
    table = summarize(resolve_spec("eip4-3rd"))
    rows = table.layers
    rows[6].reads_from = [rows[2].name, rows[5].name]
    rows[0].reads_from = ["input"]
    rows[2].block = "b&"
    table.rf_out, table.rf_note = None, "add of inputs with different jumps"
    page = table_html(table)
    assert ">from</th>" in page and ">#3, #6</td>" in page and ">input</td>" in page and "b&amp;" in page
    assert "RF at output ? (add of inputs with different jumps)" in page
    text = table_text(table)
    line = next(ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("7 "))
    assert line.rstrip("│ ").endswith("#3, #6")
    assert ">from</th>" not in table_html(summarize(resolve_spec("eip4-3rd")))


def test_table_html_escapes_names_and_lists_findings() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    table = summarize(model, (1, 28, 28))
    table.layers[0].block = "<b>x</b>"
    findings = [Finding("fc-2d-to-1d", "warning", "3", "dense layer reads <a flattened> map", "the notes say so",
                        "use GAP")]
    page = table_html(table, findings)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "design checks: 1 finding(s)" in page and "fc-2d-to-1d" in page and "&lt;a flattened&gt;" in page
    assert "use GAP" in page and "warning" in page
    assert "no findings" in table_html(table, [])
    assert "no findings" in findings_html([])


def test_table_text_is_plain_and_shows_question_marks() -> None:
    table, row = _table_with_unknown()
    text = table_text(table)
    assert "\x1b[" not in text  # no colour codes in a REPL repr
    line = next(ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("5 "))
    cells = [c.strip() for c in line.split("│")]
    assert cells.count("?") == 2 and "size changed 24->22" in line
    assert text.splitlines()[-2].startswith("params 10,890")  # the counts, then the bytes on their own line
    assert text.splitlines()[-1].startswith("memory: weights ")
    for r in table.layers:
        assert r.op in text
    with_findings = table_text(table, [Finding("budget", "error", None, "over budget", "why", "try")])
    assert "design checks: 1 finding(s)" in with_findings and "over budget" in with_findings


# -- run results ----------------------------------------------------------------------------------------

def test_run_result_repr_is_readable() -> None:
    r = _result()
    text = repr(r)
    assert text == str(r) and "RunResult(" not in text  # not the dataclass dump
    assert text.splitlines()[0] == "run 20250101-000000-abcdef: completed, 12 epoch(s), 7,944 params, seed 3"
    assert re.search(r"final \(last epoch\)\s+epoch 12: test 99\.47%, train 99\.61%, val 99\.30%", text)
    assert re.search(r"best epoch \(by val\)\s+epoch 10: test 99\.52%, val 99\.38%", text)
    assert re.search(r"gap = train - test\s+\+0\.14 points", text)
    assert re.search(r"potential = test \+ \(100 - train\)\s+99\.86% \(target 99\.4%\)", text)
    assert re.search(r"verdict\s+healthy", text)
    assert "197.4 s wall" in text and "reached after 150.2 s" in text


def test_run_result_html_and_missing_values() -> None:
    page = _result()._repr_html_()
    for label in ("final (last epoch)", "best epoch (by val)", "gap = train - test", "potential", "verdict", "time"):
        assert html.escape(label) in page
    assert "<b>healthy</b>" in page
    failed = _result(status="failed", final={"train_acc": None, "test_acc": None}, best={"epoch": None},
                     gap=None, potential=None, verdict=None, time_to_target_s=None, message="loss became NaN",
                     run_id=None)
    text = str(failed)
    assert "run (not stored): failed" in text and "test -" in text and "gap" not in text
    assert "not reached" in text and "loss became NaN" in text and "best epoch" not in text
    assert "loss became NaN" in failed._repr_html_()


def test_run_dir_is_not_written_to_result_json() -> None:
    r = _result(run_dir="/somewhere/20250101-000000-abcdef")
    data = r.to_dict()
    assert "run_dir" not in data
    back = RunResult.from_dict(data)
    assert back.run_dir is None and back == r  # run_dir takes no part in equality


def test_seed_results_show_spread() -> None:
    runs = SeedResults([_result(seed=1, final={"train_acc": 99.6, "test_acc": 99.38}, run_id="a"),
                        _result(seed=2, final={"train_acc": 99.6, "test_acc": 99.50}, run_id="b"),
                        _result(seed=3, final={"train_acc": 99.6, "test_acc": 99.44}, run_id="c")])
    text = repr(runs)
    assert text.startswith("3 seed(s), 7,944 params")
    assert re.search(r"final test \(last epoch\) min / median / max\s+99\.38 / 99\.44 / 99\.50%", text)
    assert re.search(r"every seed >= 99\.4%\s+no", text)
    assert runs.median.run_id == "c" and len(runs) == 3 and runs[0].seed == 1
    page = runs._repr_html_()
    assert page.count("<tr>") == 1 + 3 + 4 and "99.38 / 99.44 / 99.50%" in page
    with pytest.raises(ValueError):
        SeedResults([])


# -- report, reading the store only ---------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_report_inline_reads_the_store_only(stored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, result = stored
    before = _snapshot(root)
    monkeypatch.chdir(tmp_path)  # a stray file would land here
    rep = result.report(runs_root=root)
    assert result.run_id in rep.html and "final (last epoch)" in rep.html and 'id="fig-curves"' in rep.html
    frame = rep._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in frame
    assert html.unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1)) == rep.html  # quotes escaped, lossless
    assert "not written" in repr(rep) and rep.path is None
    assert _snapshot(root) == before and list(tmp_path.iterdir()) == []
    out = rep.save(tmp_path / "r.html")
    assert out.read_text() == rep.html and str(out) in repr(rep)
    # run_dir (set by the trainer's caller) and $CONVLADDER_RUNS find the folder without runs_root
    monkeypatch.setenv("CONVLADDER_RUNS", str(root))
    assert result.folder() == root / result.run_id
    moved = RunResult.from_dict(result.to_dict())
    moved.run_dir = str(root / result.run_id)
    monkeypatch.setenv("CONVLADDER_RUNS", str(tmp_path))
    assert moved.folder() == root / result.run_id
    assert _snapshot(root) == before


def test_report_of_a_class_defined_in_a_notebook(tmp_path: Path) -> None:
    """A class the report cannot import (defined in a cell; here: in a function) is handed over with model=."""
    import convladder

    class CellNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, 10, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1)).flatten(1)

    result = convladder.train(CellNet, dataset="synthetic", epochs=1, val_size=256, subset=1024, runs=tmp_path,
                              quiet=True, clean_train_eval=256)
    with_class = result.report(runs_root=tmp_path, model=CellNet)
    for fig in ("curves", "misclassified", "confusion", "bn_gamma_beta", "feature_maps", "rf_growth"):
        assert f'id="fig-{fig}"' in with_class.html, fig
    assert result.run_id in result.report(runs_root=tmp_path).html  # without it: a report of what is there


def test_report_errors_name_what_to_do(stored, tmp_path: Path) -> None:
    root, result = stored
    with pytest.raises(UserError, match="not in .* pass runs_root="):
        result.folder(tmp_path)
    with pytest.raises(UserError, match="not stored"):
        _result(run_id=None).report()


# -- progress -------------------------------------------------------------------------------------------

class _Shown:
    """Collects what NotebookProgress sends to the display: (bundle, display id, update?)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str, bool]] = []

    def __call__(self, bundle: dict[str, str], display_id: str, update: bool) -> None:
        self.calls.append((bundle, display_id, update))


def test_notebook_progress_updates_one_block_per_run(tmp_path: Path) -> None:
    shown = _Shown()
    progress = NotebookProgress(display_fn=shown, every_s=0.0)  # every step shown: the bar is exercised
    store = RunStore(tmp_path)
    config = TrainConfig(**FAST)
    first = train(config, store, progress)
    second = train(config.replace(seed=2, epochs=1), store, progress)
    ids = [d for _, d, _ in shown.calls]
    assert len(set(ids)) == 2  # one block per run trained after the other
    for run_id in set(ids):
        updates = [u for _, d, u in shown.calls if d == run_id]
        assert updates[0] is False and all(updates[1:]) and len(updates) > 3  # created once, then updated in place
    bars = [b["text/html"] for b, _, _ in shown.calls if "<progress" in b["text/html"]]
    assert bars and re.search(r'<progress value="\d+" max="\d+"', bars[0]) and "acc" in bars[-1]
    last = shown.calls[ids.index(ids[-1]) - 1][0]  # the first run's final state
    assert first.run_id in last["text/html"] and "<progress" not in last["text/html"]
    assert last["text/html"].count("<tr>") == 1 + 2  # header + the two epochs
    assert html.escape(first.summary()) in last["text/html"] and first.summary() in last["text/plain"]
    final_text = shown.calls[-1][0]["text/plain"]
    assert second.run_id in final_text and "epoch 1/1" in final_text and "test" in final_text


def test_notebook_progress_seeds_side_by_side() -> None:
    """Seeds trained together start together, then report each epoch's rows in start order: one block, each
    row under its own run."""
    shown = _Shown()
    progress = NotebookProgress(display_fn=shown, every_s=0.0)
    info = dict(model="m", params=10, device="cpu", n_train=100, n_val=0, n_test=50, epochs=2)
    progress.note("a notice before the runs start")
    for seed in (1, 2):
        progress.start({**info, "run_id": f"run-{seed}", "seed": seed})
    for epoch in (1, 2):
        progress.epoch_start(epoch, 2, 4)
        progress.step(2, lambda: (0.5, 75.0))
        for seed in (1, 2):
            progress.epoch_end({"epoch": epoch, "lr": 0.1, "train_loss": 0.1, "train_acc": 90.0 + seed,
                                "test_loss": 0.2, "test_acc": 80.0 + seed, "epoch_time_s": 1.0})
    for seed in (2, 1):  # finished in any order: matched by run id
        progress.finish(_result(run_id=f"run-{seed}", seed=seed, final={"train_acc": 91.0, "test_acc": 80.0 + seed}))
    assert len({d for _, d, _ in shown.calls}) == 1
    text = shown.calls[-1][0]["text/plain"].splitlines()
    first, second = text.index(next(t for t in text if t.startswith("run run-1"))), text.index(
        next(t for t in text if t.startswith("run run-2")))
    assert all("acc 91.00%" in t for t in text[first + 1:first + 3])  # seed 1's two epochs under seed 1
    assert all("acc 92.00%" in t for t in text[second + 1:second + 3])
    assert "final test 81.00%" in text[first + 3] and "final test 82.00%" in text[second + 3]
    assert text[-1] == "a notice before the runs start"
    assert "<progress" not in shown.calls[-1][0]["text/html"]
    progress.start({**info, "run_id": "run-3", "seed": 3})  # after every run finished: a new block
    assert shown.calls[-1][2] is False and "run-1" not in shown.calls[-1][0]["text/plain"]


def test_notebook_progress_with_train_seeds(tmp_path: Path) -> None:
    from convladder.train.loop import train_seeds

    shown = _Shown()
    results, _ = train_seeds(TrainConfig(**{**FAST, "epochs": 1, "seeds": 2, "batched": "on"}), RunStore(tmp_path),
                             NotebookProgress(display_fn=shown, every_s=0.0))
    final = shown.calls[-1][0]["text/plain"]
    for r in results:  # every run's header, its epoch line with its own test accuracy, and its result line
        assert f"run {r.run_id}" in final and r.summary() in final
        assert re.search(rf"run {r.run_id}.*\nrecipe: .*\nepoch 1/1 .*test \S+ {r.final['test_acc']:.2f}%", final)


def test_progress_choice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_notebook() and isinstance(make_progress(), PlainProgress)  # pytest's stdout is no terminal
    terminal = types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace())  # a terminal IPython: no kernel
    monkeypatch.setitem(sys.modules, "IPython", terminal)
    assert not in_notebook()
    kernel = types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace(kernel=object()))
    monkeypatch.setitem(sys.modules, "IPython", kernel)
    assert in_notebook() and isinstance(make_progress(), NotebookProgress)
    assert type(make_progress(quiet=True)) is Progress and isinstance(make_progress(json_lines=True), JsonProgress)
    assert isinstance(resolve_progress(None), NotebookProgress) and isinstance(resolve_progress(True), NotebookProgress)
    assert type(resolve_progress(False)) is Progress
    assert isinstance(resolve_progress("plain"), PlainProgress) and isinstance(resolve_progress("json"), JsonProgress)
    mine = PlainProgress()
    assert resolve_progress(mine) is mine
    with pytest.raises(UserError, match="progress='loud'"):
        resolve_progress("loud")


def test_plain_progress_prints_by_default(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What `convladder.train` from a script gets (resolve_progress(None) outside a notebook): one line per epoch."""
    result = train(TrainConfig(**FAST), RunStore(tmp_path), resolve_progress(None))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"run {result.run_id}: tiny8k") and out[2].startswith("epoch 1/2")
    assert out[3].startswith("epoch 2/2") and out[-1] == result.summary()
    # the recipe in one line, under the header: what config.json holds, said where the student looks
    assert out[1] == ("recipe: SGD lr 0.1, momentum 0.9 Nesterov; onecycle (lr 0.1 is the peak, warm-up 20%); "
                      "batch 128; 2 epochs; augmentation rotate ±7°, shift ±2 px, scale ±10%; validation 102 images "
                      "held out (best epoch by val)")


def test_recipe_line_names_what_differs() -> None:
    from convladder.train.progress import recipe_text

    line = recipe_text(TrainConfig(optimizer="adam", lr=0.001, schedule="step", gamma=0.5, augment=False,
                                   weight_decay=5e-4, label_smoothing=0.1, val_size=0), 0)
    assert "\n" not in line and line.startswith("recipe: Adam lr 0.001, beta1 0.9, weight decay 0.0005; ")
    assert "step (lr x0.5 every 1 epoch(s))" in line and "label smoothing 0.1" in line
    assert "no augmentation" in line and line.endswith("no validation split")


# -- examples/cell_class.ipynb: a class from a cell, used from the command line after its kernel is gone ------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PUBLIC = {"torch", "torch.nn", "torch.nn.functional", "convladder", "IPython.display", "json"}


def _public_api_only(nb) -> None:
    """The notebook imports only torch, convladder and IPython.display, and calls only convladder's public API."""
    import ast

    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name for a in node.names} <= PUBLIC, cell.source
            elif isinstance(node, ast.ImportFrom):
                assert node.module in PUBLIC, cell.source
            elif isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "convladder":
                assert node.attr in ("train", "summarize", "create_model"), node.attr


@pytest.mark.slow
def test_cell_class_notebook_outlives_its_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import subprocess

    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient, ipykernel)")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(EXAMPLES / "cell_class.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    _public_api_only(nb)
    runs = tmp_path / "runs"
    monkeypatch.setenv("CONVLADDER_RUNS", str(runs))  # the kernel inherits it: the notebook writes to ./runs otherwise
    monkeypatch.delenv("CONVLADDER_OWN_SOURCE", raising=False)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails
    assert client.kc is None  # the kernel, and every cell it kept, is gone
    text = "\n".join(str(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                     + "".join(o.get("data", {}).get("text/html", "")) for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    assert "recipe: SGD lr" in text and "'rebuild': 'recorded'" in text and "Net (4, 10)" in text
    assert "<iframe srcdoc=" in text and "cannot be rebuilt" not in text and "cannot rebuild" not in text
    (run,) = [p.name for p in runs.iterdir() if p.is_dir()]

    from PIL import Image

    Image.fromarray(((torch.rand(28, 28) > 0.8) * 255).to(torch.uint8).numpy()).save(tmp_path / "digit.png")
    env = {k: v for k, v in os.environ.items() if k != "CONVLADDER_OWN_SOURCE"}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "convladder", *args, "--runs", str(runs)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout + done.stderr

    report = cli("report", run, "-o", str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert "wrote" in report and 'id="fig-misclassified"' in page and 'id="fig-feature_maps"' in page
    assert "cannot be rebuilt" not in page
    predicted = json.loads(cli("predict", run, str(tmp_path / "digit.png"), "--json"))
    assert len(predicted["images"]) == 1 and abs(sum(predicted["images"][0]["probs"]) - 1) < 1e-4
    pytest.importorskip("onnx")
    exported = cli("export", run, "--format", "onnx", "-o", str(tmp_path / "net.onnx"))
    assert (tmp_path / "net.onnx").stat().st_size > 1000 and "max |onnxruntime - torch|" in exported
