"""Report: figures, HTML, bad run folders, CLI, and a headless-Chromium check of the page."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError
from convladder.report import concepts
from convladder.report.demo import make_ladder, make_run
from convladder.report.html import write_report
from convladder.report.rundata import resolve_target

torch.set_num_threads(1)  # the test machine is shared; tiny nets gain nothing from more threads


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run store made by hand in the documented layout: one single run and a 3-step ladder."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root, epochs=2)
    make_ladder(root, "demo", steps=3, seeds=1, epochs=2)
    return root


def _single(store: Path) -> Path:
    return next(p for p in sorted(store.iterdir()) if p.is_dir() and "ladder" not in json.loads((p / "config.json").read_text()))


def _broken_copy(store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / _single(store).name
    shutil.copytree(_single(store), dst)
    return dst


# -- concept arithmetic ---------------------------------------------------------------------------------

def test_concept_numbers() -> None:
    assert concepts.head_params(512, 7, 7, 10) == {"flatten + dense": 7 * 7 * 512 * 10 + 10, "GAP + 1×1 conv": 512 * 10 + 10}
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.nn.functional.max_pool2d(x, 2, 2).numel() / 36 == 0.25
    assert round(torch.nn.functional.max_pool2d(x, 3, 3).numel() / 36, 3) == 0.111


# -- reports of good and bad runs -----------------------------------------------------------------------

def test_run_report_has_everything(store: Path, tmp_path: Path) -> None:
    out = write_report(_single(store).name, tmp_path / "r.html", store)
    text = out.read_text()
    for fig in ("curves", "gap", "samples", "misclassified", "confusion", "param_share", "rf_growth",
                "bn_gamma_beta", "dead_relu", "one_by_one", "feature_maps", "gap_vs_flatten",
                "maxpool_2x2_vs_3x3", "activations"):
        assert f'id="fig-{fig}"' in text, fig
    assert "final (last epoch)" in text and "best epoch (selected by" in text and "min / median / max" in text
    assert "Missing or incomplete" not in text
    # SVG namespace names (www.w3.org) are identifiers, not requests; nothing else may be a URL
    assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/", "")
    assert out.stat().st_size < 10e6
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("damage", ["no_result", "no_weights", "half_written", "older_version", "empty"])
def test_damaged_runs_give_a_report(store: Path, tmp_path: Path, damage: str) -> None:
    run = _broken_copy(store, tmp_path)
    if damage == "no_result":
        (run / "result.json").unlink()
        expected = "result.json is missing"
    elif damage == "no_weights":
        (run / "model.safetensors").unlink()
        expected = "model.safetensors is missing"
    elif damage == "half_written":
        (run / "result.json").write_text('{"status": "comp')
        (run / "model.safetensors").write_bytes(b"\x00" * 10)
        with (run / "metrics.jsonl").open("a") as fh:
            fh.write('{"epoch": 3, "train_a')
        expected = "result.json cannot be read"
    elif damage == "older_version":
        cfg = json.loads((run / "config.json").read_text())
        cfg.pop("model_spec")
        cfg["model"] = "not-a-registered-net"
        (run / "config.json").write_text(json.dumps(cfg))
        (run / "env.json").unlink()
        (run / "result.json").write_text(json.dumps({"status": "completed", "final": {"test_acc": 97.0}}))
        expected = "env.json is missing"
    else:
        for f in run.iterdir():
            f.unlink()
        (run / "config.json").write_text("")
        expected = "config.json cannot be read"
    text = write_report(str(run), tmp_path / "r.html").read_text()
    assert "Missing or incomplete" in text and expected in text


def test_unknown_run_is_a_user_error(store: Path) -> None:
    with pytest.raises(UserError, match="convladder runs list"):
        resolve_target("nosuchrun", store)
    with pytest.raises(UserError, match="convladder runs list"):
        resolve_target("x", store / "missing-store")


def test_cli_report_and_concepts(store: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from convladder.cli import build_app

    runner = CliRunner()
    res = runner.invoke(build_app(), ["concepts", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"activations.png", "activations.svg", "gap_vs_flatten.svg",
                                                           "maxpool_2x2_vs_3x3.png"}
    res = runner.invoke(build_app(), ["report", "nosuchrun", "--runs", str(store)])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)


# -- the ladder report in a real browser ----------------------------------------------------------------

@pytest.mark.browser
def test_ladder_report_in_browser(store: Path, tmp_path: Path) -> None:
    out = write_report("demo", tmp_path / "ladder.html", store)
    text = out.read_text()
    assert text.count("<tr>") > 3 and "s2-c8" in text and "handout" in text and "Last step in detail" in text

    from browser_util import broken_images, chrome_unavailable_reason, console_errors, external_requests, make_chrome_driver

    reason = chrome_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By

    driver = make_chrome_driver(width=1200, height=900)
    try:
        driver.get(out.resolve().as_uri())
        n_img = driver.execute_script("return document.images.length")
        assert n_img >= 5
        assert broken_images(driver) == []
        svg_sizes = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure svg')).map(s => s.getBoundingClientRect().width)")
        assert len(svg_sizes) >= 5 and min(svg_sizes) > 0
        # sort the ladder table by params, descending after two clicks
        table = driver.find_element(By.CSS_SELECTOR, "table.sortable")
        header = [th for th in table.find_elements(By.CSS_SELECTOR, "thead th") if th.text == "params"][0]
        col = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")].index("params")

        def column() -> list[float]:
            return [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v"))
                    for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        header.click()
        assert header.get_attribute("aria-sort") == "ascending" and column() == sorted(column())
        header.click()
        assert header.get_attribute("aria-sort") == "descending" and column() == sorted(column(), reverse=True)
        assert console_errors(driver) == []
        assert external_requests(driver) == []
        driver.set_window_size(1200, min(driver.execute_script("return document.body.scrollHeight") + 120, 12000))
        driver.save_screenshot(str(tmp_path / "report.png"))
        if os.environ.get("CONVLADDER_SCREENSHOT"):
            driver.save_screenshot(os.environ["CONVLADDER_SCREENSHOT"])
        # a phone-width window: the page must not scroll sideways (wide tables scroll inside their box)
        driver.set_window_size(390, 844)
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 400
    finally:
        driver.quit()


def test_sweep_report_draws_the_isolation_plot(tmp_path: Path) -> None:
    from convladder.executors.sweep import run_sweep, sweep_summary, write_summary
    from convladder.executors.sweepspec import parse_sweep

    template = "c1[conv3x3({c1}, bias=false) relu bn] t[maxpool2x2 conv1x1(8)] out[gap conv1x1(10)]"
    base = {"dataset": "synthetic", "subset": 256, "epochs": 1, "val_size": 0, "batch_size": 64, "threads": 1,
            "clean_train_eval": 0, "augment": False}
    spec = parse_sweep({"name": "width", "model": template, "budget": 1500, "base": base,
                        "params": {"c1": {"role": "studied", "values": [4, 8, 64]},
                                   "lr": {"role": "nuisance", "values": [0.05, 0.2]}}})
    runs = tmp_path / "runs"
    summary = sweep_summary(run_sweep(spec, runs))
    write_summary(summary, runs)
    out = write_report("sweep:width", tmp_path / "sweep.html", runs)
    page = out.read_text()
    assert "Sweep width: 6 trials" in page and "Isolation of c1" in page
    assert 'aria-label="Isolation plot of the studied parameter c1' in page  # the figure, inline SVG
    assert page.count("over budget") >= 2  # c1=64 is rejected before training, and said so
    best4 = next(r for r in summary["isolation"] if r["value"] == 4)
    assert f"{best4['test_acc']['min']:.2f}" in page
    # the summary file itself, or the sweep's bare name, work too; a damaged file is one clear error
    path = next((runs / "sweeps").glob("width-*.json"))
    assert write_report(str(path), tmp_path / "b.html", runs).read_text().count("Isolation of c1") == 1
    assert "Sweep width" in write_report("width", tmp_path / "c.html", runs).read_text()
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        write_report(str(path), tmp_path / "d.html", runs)
    with pytest.raises(UserError, match="no summary of sweep 'nope'"):
        write_report("sweep:nope", tmp_path / "e.html", runs)


# -- issue 13: everyday surprises in the report ------------------------------------------------------------

def test_potential_above_100_is_capped_and_explained(store: Path, tmp_path: Path) -> None:
    """train below test makes test + (100 - train) pass 100: the page caps it, keeps the raw value, says why."""
    root = tmp_path / "runs"
    shutil.copytree(store, root)
    first = next(p for p in sorted(root.iterdir())
                 if p.is_dir() and json.loads((p / "config.json").read_text()).get("step") == 0)
    result = json.loads((first / "result.json").read_text())
    result["final"].update(train_acc=98.0, test_acc=99.25)
    result.update(gap=-1.25, potential=101.25)
    (first / "result.json").write_text(json.dumps(result))
    page = write_report("demo", tmp_path / "ladder.html", root).read_text()
    assert "<td data-v='101.25'>100.00*</td>" in page  # ladder table: capped, sorts by the raw value
    assert "100.00* (raw 101.25) %" in page  # the run's result block
    assert "passes 100 when the train accuracy is below the test accuracy" in page
    assert ">101.25<" not in page and "101.25 %" not in page  # never shown bare


def test_html_sizes_are_h_w_c_like_the_terminal() -> None:
    from convladder.analysis.render import format_size
    from convladder.analysis.table import summarize
    from convladder.report import html, netfigs
    from convladder.spec.build import build_module
    from convladder.spec.registry import resolve_spec

    spec = resolve_spec("c1[conv3x3(8) relu] t[maxpool2x2 conv1x1(4)] out[gap conv1x1(10)]")
    table = summarize(spec)
    page = html.network_table(table)
    assert "<td>28×28×1</td>" in page and "<td>26×26×8</td>" in page and "on a 28×28×1 input" in page
    assert "1×28×28" not in page and "8×26×26" not in page
    for row in table.layers:  # every size exactly as the terminal table writes it (x -> ×)
        assert f"<td>{format_size(row.output).replace('x', '×')}</td>" in page
    fig = netfigs.feature_maps(build_module(spec).eval(), torch.rand(1, 1, 28, 28))
    titles = [ax.get_title(loc="left") for ax in fig.fig.axes]
    fig.close()
    assert any("→ 26×26×8" in t for t in titles), titles


@pytest.mark.parametrize("bias", [False, True])
def test_one_by_one_names_a_bias_only_where_the_layer_has_one(bias: bool) -> None:
    from torch import nn

    from convladder.report import netfigs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 12, 3), nn.ReLU(), nn.Conv2d(12, 4, 1, bias=bias)).eval()
    fig = netfigs.one_by_one_merger(model, torch.rand(1, 1, 12, 12))
    texts = [t.get_text() for ax in fig.fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.fig.axes]
    fig.close()
    labels = [t for t in texts if "= out" in t]
    assert len(labels) == 3
    if bias:
        assert all(t.startswith(f"+ b{k} (") and "terms + bias" in t for k, t in enumerate(labels)), labels
    else:
        assert not any("+ b" in t for t in texts), texts  # no "+ bias", no "+ b0": the layer has none
        assert any("(no bias)" in t for t in texts)


def test_curves_are_large_with_whole_epoch_ticks(store: Path) -> None:
    from convladder.report import figures
    from convladder.report.rundata import load_run

    run = load_run(_single(store))  # 2 epochs: matplotlib's default ticks would be 1.0, 1.2, ..., 2.0
    for fig in (figures.curves(run), figures.gap_per_epoch([run]), figures.overlay([run])):
        fig.fig.canvas.draw()
        for ax in fig.fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), (fig.name, ticks)
        if fig.name in ("curves", "ladder_curves"):  # three/two panels: the whole report width, taller
            w, h = fig.fig.get_size_inches()
            assert fig.wide and w >= 12 and h >= 4, (fig.name, w, h)
        fig.close()


def test_concept_pngs_are_150_dpi_and_small(tmp_path: Path) -> None:
    from PIL import Image

    paths = [p for p in concepts.write_concepts(tmp_path) if p.suffix == ".png"]
    assert len(paths) == 3
    for path in paths:
        with Image.open(path) as img:
            assert round(img.info["dpi"][0]) == 150  # was matplotlib's screen setting, 80
            assert img.size[0] >= 600  # e.g. activations: 10 in wide -> ~1,500 px
        assert path.stat().st_size < 250_000


def test_shifted_test_accuracy_shows_per_run_and_per_ladder(store: Path, tmp_path: Path) -> None:
    """Runs trained with shift_eval carry shifted_test in result.json: a row per run, a column and a figure per ladder."""
    root = tmp_path / "runs"
    shutil.copytree(store, root)
    for i, folder in enumerate(p for p in sorted(root.iterdir()) if (p / "result.json").is_file()):
        result = json.loads((folder / "result.json").read_text())
        result["shifted_test"] = {"0": 99.0, "1": 98.0 - i, "2": 90.0 - i}
        (folder / "result.json").write_text(json.dumps(result))
    page = write_report("demo", tmp_path / "ladder.html", root).read_text()
    assert "test, images shifted" in page and "0 px 99.00 · 1 px" in page
    assert "Test accuracy against the shift of the test images" in page
    single = write_report(str(_single(root)), tmp_path / "run.html", root).read_text()
    assert "images shifted (mean of 4 directions)" in single


# -- review: seeds, medians and small numbers ---------------------------------------------------------------

from run_util import copy_run as _copy_run  # noqa: E402


def test_ladder_median_run_is_the_lower_of_the_middle_two(tmp_path: Path) -> None:
    """Four seeds of a step: the median run is the lower of the middle two (98.0 of 97/98/99/99.5), as
    SeedResults.median picks; it was the upper one (99.0)."""
    from convladder.report.demo import ladder_spec
    from convladder.report.rundata import ladder_steps, load_run
    from convladder.train.result import RunResult, SeedResults

    extra = {"ladder": "four", "step": 0, "step_name": "s0", "change": "first"}
    base = make_run(tmp_path, ladder_spec(0), epochs=1, steps_per_epoch=1, seed=1, extra_config=extra)
    tests = {1: 99.5, 2: 97.0, 3: 99.0, 4: 98.0}
    folders = [_copy_run(base, f"20990101-00000{s}-aaaaa{s}", config={"seed": s},
                         result={"seed": s, "final": {"test_acc": t}}) for s, t in tests.items()]
    shutil.rmtree(base)
    runs = [load_run(f) for f in folders]
    (row,) = ladder_steps(runs)
    rule = SeedResults([RunResult.from_dict({**r.result, "time_to_target_s": None}) for r in runs]).median
    assert rule.seed == 4 and rule.final["test_acc"] == 98.0  # the project's rule: the lower of the middle two
    assert row["median_run"].config["seed"] == 4 and row["test_acc"] == 98.0
    assert row["final_spread"]["median"] == 98.0  # the median value by the same rule (MEDIAN_RULE)


def test_final_test_over_seeds_counts_completed_runs_once_per_seed(tmp_path: Path) -> None:
    """Seeds 1 and 2 completed; seed 2 repeated; seed 3 interrupted twice (with and without result.json): 2 seeds."""
    from convladder.report.html import result_block, seed_siblings
    from convladder.report.rundata import load_run

    one = make_run(tmp_path, epochs=1, steps_per_epoch=1, seed=1)
    two = _copy_run(one, "20990101-000002-aaaaa2", config={"seed": 2}, result={"seed": 2, "final": {"test_acc": 50.0}})
    _copy_run(two, "20990101-000003-aaaaa3", result={"final": {"test_acc": 10.0}})  # seed 2 again, newer
    _copy_run(two, "20990101-000004-aaaaa4", config={"seed": 3}, drop_result=True)  # seed 3 killed: metrics only
    _copy_run(two, "20990101-000005-aaaaa5", config={"seed": 3},
              result={"seed": 3, "status": "interrupted", "final": {"test_acc": 5.0}})
    run = load_run(one)
    sibs = seed_siblings(run)
    assert sibs[0] is run and sorted(r.config["seed"] for r in sibs) == [1, 2]
    block = result_block(run, sibs)
    mine = json.loads((one / "result.json").read_text())["final"]["test_acc"]
    lo, hi = sorted([mine, 10.0])  # seed 2: its newest completed run stands for it
    assert f"{lo:.2f} / " in block and f" / {hi:.2f} %" in block and "(2 seed(s)" in block


def test_small_floats_keep_their_significant_digits() -> None:
    """lr 0.001 was shown as 0.00 in every table cell."""
    from convladder.report.html import _num, table_html
    from convladder.report.sweepreport import sweep_rows

    assert _num(0.001) == "0.001" and _num(0.0005) == "0.0005" and _num(0.015) == "0.015"
    assert _num(99.25) == "99.25" and _num(0.75) == "0.75" and _num(0.0) == "0.00" and _num(-0.05) == "-0.05"
    summary = {"roles": {"lr": "nuisance"}, "trials": [
        {"rank": 1, "trial": "t1", "status": "completed", "values": {"lr": 0.001}, "params": 1000,
         "test_acc": {"min": 98.0, "median": 98.5, "max": 99.0}}]}
    page = table_html(*sweep_rows(summary))
    assert 'data-v="0.001">0.001</td>' in page and ">0.00<" not in page


def test_hand_made_ladder_report_shows_one_completed_run_per_seed_of_the_current_config(tmp_path: Path) -> None:
    """Runs without job tags (no ladder file to ask): an older config of the step, a repeated seed and an
    interrupted run were all in the table and the spread."""
    from convladder.report.demo import ladder_spec

    extra = {"ladder": "hand", "step": 0, "step_name": "s0", "change": "first"}
    one = make_run(tmp_path, ladder_spec(0), epochs=1, steps_per_epoch=1, seed=1, extra_config=extra)
    two = _copy_run(one, "20990101-000001-aaaaa1", config={"seed": 2}, result={"seed": 2})
    repeat = _copy_run(two, "20990101-000002-aaaaa2", result={"final": {"test_acc": 22.22}})
    old = _copy_run(one, "20000101-000000-aaaaa0", config={"seed": 3, "lr": 0.5}, result={"seed": 3})
    killed = _copy_run(two, "20990101-000003-aaaaa3", config={"seed": 3}, drop_result=True)
    page = write_report("hand", tmp_path / "hand.html", tmp_path).read_text()
    assert "Ladder hand: 1 steps, 2 runs" in page
    assert one.name in page and repeat.name in page
    for left_out in (two, old, killed):
        assert left_out.name not in page
    assert "1 stale run" in page and "1 repeated run" in page and "1 seed(s) with no completed run" in page


# -- a ladder of one's own class reads like a built-in one (issue 28, item 3) ----------------------------------

STUDENT_NET = '''
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(dropout))
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(dropout))
        self.out = nn.Conv2d(8, 10, 1, bias=False)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.max_pool2d(self.c2(self.c1(x)), 2), 1)
        return F.log_softmax(self.out(x).view(-1, 10), dim=1)
'''
MY_LADDER = """\
name: my-dropout
base:
  model: student_net.py:Net
  config: {dataset: synthetic, epochs: 1, subset: 256, val_size: 0, augment: false, batch_size: 64,
           clean_train_eval: 128, threads: 1}
steps:
  - name: no-dropout
    change: the starting point
    config: {model_args: {dropout: 0.0}}
  - name: dropout-0.05
    change: dropout 0.05 after every block
    config: {model_args: {dropout: 0.05}}
"""


@pytest.fixture(scope="module")
def own_ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step ladder file of a person's own class (dropout 0 vs 0.05), run once: <folder>/runs."""
    from convladder.ladder.ladder import load_ladder
    from convladder.ladder.run import run_ladder

    folder = tmp_path_factory.mktemp("own-ladder")
    (folder / "student_net.py").write_text(STUDENT_NET)
    (folder / "my-ladder.yaml").write_text(MY_LADDER)
    results = run_ladder(load_ladder(folder / "my-ladder.yaml"), folder / "runs", echo=lambda line: None)
    assert [r["status"] for r in results] == ["completed", "completed"]
    return folder


def _ladder_table(page: str) -> str:
    """The ladder page's step table (up to the figures)."""
    return page[page.index("<section><h2>Ladder"):page.index("<h3>Across steps")]


def _assert_named_by_the_ladder_file(page: str) -> None:
    table = _ladder_table(page)
    assert "Ladder my-dropout: 2 steps, 2 runs" in table
    assert "<td>no-dropout</td>" in table and "<td>dropout-0.05</td>" in table  # the step names, not the file
    assert "<td>dropout 0.05 after every block</td>" in table  # the change column is filled
    assert "student_net.py" not in table
    assert "<summary>step 2: dropout-0.05 — " in page


def test_report_of_an_own_ladder_by_file_and_by_name(own_ladder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from cli_util import run_cli

    runs = own_ladder / "runs"
    monkeypatch.chdir(own_ladder)  # `convladder report my-ladder.yaml`, as typed beside the file
    code, out, err = run_cli(capsys, "report", "my-ladder.yaml", "--runs", str(runs), "-o", str(tmp_path / "a.html"))
    assert code == 0, err  # was: no run or ladder 'my-ladder.yaml'
    _assert_named_by_the_ladder_file((tmp_path / "a.html").read_text())
    monkeypatch.chdir(tmp_path)  # by name, elsewhere: the runs record their ladder file
    page = write_report("my-dropout", tmp_path / "b.html", runs).read_text()
    assert "not found here" not in page  # was: the ladder file of 'my-dropout' is not found here
    _assert_named_by_the_ladder_file(page)
    code, out, err = run_cli(capsys, "ladder", "report", "my-dropout", "--runs", str(runs))
    assert code == 0, err
    assert "no-dropout" in out and "dropout 0.05 after every block" in out and "student_net.py" not in out
    code, out, err = run_cli(capsys, "runs", "list", "--runs", str(runs))
    assert code == 0, err
    header, *rows = out.splitlines()[:3]
    assert header.split()[2] == "model" and header.endswith("step/name")
    assert sorted(row.split()[2] for row in rows) == ["student_net.py:Net"] * 2  # was "/tmp/.../stud..."
    assert sorted(row.split(None, 9)[9] for row in rows) == ["my-dropout 1. no-dropout", "my-dropout 2. dropout-0.05"]


def test_own_ladder_runs_without_a_recorded_file_still_read_by_step(own_ladder: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Runs of an older convladder record no ladder file: the file given as the target names their steps, and
    by name alone the step names come from the runs' own names, never the model's path."""
    from convladder.runs.store import RunStore

    runs = tmp_path / "runs"
    shutil.copytree(own_ladder / "runs", runs)
    for config in runs.glob("*/config.json"):
        cfg = json.loads(config.read_text())
        config.write_text(json.dumps({**cfg, "tags": [t for t in cfg["tags"] if not t.startswith("source:")]}))
    RunStore(runs).reindex()
    monkeypatch.chdir(tmp_path)
    _assert_named_by_the_ladder_file(write_report(str(own_ladder / "my-ladder.yaml"), tmp_path / "a.html", runs)
                                     .read_text())
    table = _ladder_table(write_report("my-dropout", tmp_path / "b.html", runs).read_text())
    assert "<td>no-dropout</td>" in table and "student_net.py" not in table and "not found here" in table
    with pytest.raises(UserError, match="give the file instead"):
        from convladder.ladder.ladder import load_ladder_of

        load_ladder_of("my-dropout", RunStore(runs).list_runs(tag="ladder:my-dropout"))


def test_the_html_network_table_shows_a_field_that_varies_by_position() -> None:
    """A row whose field is a range ('3-4' after an upsampled branch) shows it in the report's table, as the
    terminal does; it was an empty cell (the HTML read row.rf, which is None for a range)."""
    import re

    from convladder.analysis.table import summarize
    from convladder.report.html import network_table
    from nets import MisalignedNet

    table = summarize(MisalignedNet(), (1, 28, 28))
    last = table.layers[-1]
    assert last.rf is None and last.rf_text == "3-4"
    cells = re.findall(r"<tr>(.*?)</tr>", network_table(table))[-1]
    assert ">3-4<" in cells
