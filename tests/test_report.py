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
    from convladder.executors.sweep import parse_sweep, run_sweep, sweep_summary, write_summary

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
