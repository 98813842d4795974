"""Markdown and CSV a student can hand in: `summary --format`, `ladder report --markdown`, `report RUN --markdown`.

The Markdown is checked as GitHub would read it: every pipe table's rows have the header's cell count (counted
on the raw text, where an unescaped `|` would add a cell), a CommonMark parser with GitHub's table extension
finds as many tables, and every image link is a relative path to a PNG file written beside the README. The
numbers are compared with the run store's own files, read here with json, not through convladder.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from convladder.analysis.table import summarize
from convladder.cli import build_app
from convladder.errors import UserError
from convladder.ladder.ladder import parse_ladder
from convladder.ladder.run import run_ladder
from convladder.train.result import min_median_max

sys.path.insert(0, str(Path(__file__).parent))
from test_ladder import SMALL  # noqa: E402  (the 3-step synthetic ladder the ladder tests train)

torch.set_num_threads(1)  # shared cores; tiny nets gain nothing from more threads
runner = CliRunner()
CELL_SPLIT = re.compile(r"(?<!\\)\|")
IMAGE = re.compile(r"!\[(?:\\.|[^\]\\])*\]\(([^)\s]+)\)")


def _invoke(*args: str):
    return runner.invoke(build_app(), list(args))


def md_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table outside code fences as rows of cells (the delimiter row left out); asserts the GitHub
    shape: a blank line before and after, a delimiter row, the header's cell count on every row."""
    lines, tables, fenced, i = text.split("\n"), [], False, 0
    while i < len(lines):
        if lines[i].startswith("```"):
            fenced = not fenced
        if fenced or not lines[i].startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        block = [CELL_SPLIT.split(line.strip())[1:-1] for line in lines[start:i]]
        assert start == 0 or lines[start - 1] == "", f"no blank line before the table at line {start + 1}"
        assert i == len(lines) or lines[i] == "", f"no blank line after the table ending at line {i}"
        assert len(block) >= 2 and all(re.fullmatch(r"\s*:?-{3,}:?\s*", c) for c in block[1]), lines[start + 1]
        assert all(len(row) == len(block[0]) for row in block), [len(r) for r in block]
        tables.append([[c.strip() for c in row] for row in [block[0], *block[2:]]])
    return tables


def check_renders(readme: Path) -> tuple[str, list[list[list[str]]]]:
    """The README's text and tables, after checking tables and images as GitHub would show them."""
    markdown_it = pytest.importorskip("markdown_it")
    text = readme.read_text()
    tables = md_tables(text)
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    assert html.count("<table>") == len(tables) > 0
    links = IMAGE.findall(text)
    assert links and html.count("<img ") == len(links)
    for link in links:
        assert "://" not in link and not link.startswith("/"), link  # relative: the folder moves as a whole
        assert (readme.parent / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    assert not list(readme.parent.glob(".*.part"))  # atomic writes left no temp file
    return text, tables


def _column(table: list[list[str]], name: str) -> list[str]:
    i = table[0].index(name)
    return [row[i] for row in table[1:]]


# -- summary --format -----------------------------------------------------------------------------------------

class Residual(nn.Module):
    """A residual add: its row reads two rows (a list in `reads_from`), so lists reach the CSV."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = y + self.c2(y)
        return self.head(y).mean((2, 3))


def _decoded(cell: str, value: object) -> object:
    """A CSV cell read back as the JSON value it stands for."""
    if isinstance(value, str):
        return cell
    return None if cell == "" else json.loads(cell)


@pytest.mark.parametrize("model", ["eip4-3rd", "residual"])
def test_csv_equals_the_json_table(model: str) -> None:
    table = summarize(Residual(), (1, 12, 12)) if model == "residual" else None
    if table is None:
        res = _invoke("summary", model, "--format", "csv")
        assert res.exit_code == 0, res.output
        text, expected = res.output, json.loads(_invoke("summary", model, "--json").output)["layers"]
    else:
        text, expected = table.to_csv(), table.to_dict()["layers"]
        assert any(row["reads_from"] for row in expected)
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert header == list(expected[0]) and len(body) == len(expected)  # one header row, one row per layer
    for cells, want in zip(body, expected):
        got = {k: _decoded(c, want[k]) for k, c in zip(header, cells)}
        assert got == want
    assert all("," not in c for c in _column([header, *body], "params") + _column([header, *body], "macs"))


def test_markdown_table_renders_and_matches_the_json() -> None:
    res = _invoke("summary", "eip4-3rd", "--format", "markdown")
    assert res.exit_code == 0, res.output
    data = json.loads(_invoke("summary", "eip4-3rd", "--json").output)
    text = res.output
    [table] = md_tables(text)
    assert len(table) - 1 == len(data["layers"])
    assert [int(c.replace(",", "") or 0) for c in _column(table, "params")] == [r["params"] for r in data["layers"]]
    assert _column(table, "RF") == [str(r["rf"]) for r in data["layers"]]
    after = text.split("\n\n", 1)[1]  # totals and design checks below the table, as a list, not as table rows
    assert f"- params {data['total_params']:,} (trainable" in after and "design checks" in after
    from convladder.analysis.table import network_verdict
    from convladder.spec.registry import resolve_spec

    assert network_verdict(resolve_spec("eip4-3rd")).to_markdown().rstrip() == text.rstrip()  # Python = CLI


def test_format_options() -> None:
    assert json.loads(_invoke("summary", "eip4-3rd", "--format", "json").output)["total_params"] == 10_890
    for args, words in ((["--format", "xml"], "use one of text, markdown, csv, json"),
                        (["--json", "--format", "csv"], "two formats")):
        res = _invoke("summary", "eip4-3rd", *args)
        assert res.exit_code != 0 and isinstance(res.exception, UserError) and words in str(res.exception)


def test_cells_that_would_break_a_table_are_escaped() -> None:
    """A `|` in a note would split its cell; `*`/`_` would format; `<b>` would be HTML."""
    from convladder.analysis.render import md_text, pipe_table

    text = pipe_table(["a", "b"], [["x | y", "*bold* _it_ <b>"], [None, 3]])
    [table] = md_tables("\n" + text + "\n")
    assert table[1] == ["x \\| y", md_text("*bold* _it_ <b>")] and "&lt;b>" in table[1][1]
    assert md_text("a &amp; b & c") == "a &amp;amp; b & c"  # an entity would show as the character it names
    with pytest.raises(ValueError):
        pipe_table(["a", "b"], [["only one"]])


# -- the hand-in of a ladder and of a run ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SMALL's first two steps trained for real, two seeds each (synthetic data, 1 epoch); step 3 not run."""
    root = tmp_path_factory.mktemp("md")
    ladder_file = root / "small.yaml"
    ladder_file.write_text(SMALL)
    res = run_ladder(parse_ladder(SMALL, str(ladder_file)), root / "runs", steps="1-2", seeds=2,
                     echo=lambda line: None)
    assert [r["status"] for r in res] == ["completed"] * 4
    return ladder_file, root / "runs"


def _step_results(runs: Path, step: int) -> list[dict]:
    """result.json (and metrics) of the step's runs, read straight from the folders."""
    out = []
    for folder in sorted(runs.iterdir()):
        config = folder / "config.json"
        if config.is_file() and f"step:{step}" in json.loads(config.read_text()).get("tags", []):
            result = json.loads((folder / "result.json").read_text())
            metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
            out.append({**result, "metrics": metrics})
    return out


def _mmm(values: list[float]) -> list[str]:
    s = min_median_max(values)
    return [f"{s['min']:.2f}", f"{s['median']:.2f}", f"{s['max']:.2f}"]


def test_ladder_handin_renders_and_its_numbers_are_the_stores(small, tmp_path: Path) -> None:
    ladder_file, runs = small
    out = tmp_path / "handin"
    res = _invoke("ladder", "report", str(ladder_file), "--runs", str(runs), "--markdown", "-o", str(out))
    assert res.exit_code == 0, res.output
    text, tables = check_renders(out / "README.md")
    steps = tables[0]
    assert _column(steps, "step") == ["1", "2", "3"]
    for step in (1, 2):
        results = _step_results(runs, step)
        assert len(results) == 2
        final_test = _mmm([r["final"]["test_acc"] for r in results])
        assert _column(steps, "final test % min / median / max")[step - 1] == " / ".join(final_test)
        section = text.split(f"## Step {step}: ")[1].split("\n## ")[0]
        stats = md_tables(section)[0]
        by_name = {row[0].split(" %")[0]: row[1:] for row in stats[1:]}
        assert by_name["final test accuracy"] == final_test
        assert by_name["final train accuracy"] == _mmm([r["final"]["train_acc"] for r in results])
        assert by_name["best-epoch test accuracy"] == _mmm([r["best"]["test_acc"] for r in results])
        best_train = [next(m["train_acc"] for m in r["metrics"] if m["epoch"] == r["best"]["epoch"]) for r in results]
        assert by_name["best-epoch train accuracy"] == _mmm(best_train)
        assert f"**Parameters:** {results[0]['params']:,}" in section
        analysis = next(line for line in section.splitlines() if line.startswith("**Analysis.**"))
        assert "ReLU channels never positive on" in analysis and "largest share" in analysis
        assert ("no BatchNorm layers" in analysis) == (step == 1)  # step 2 adds BN after every ReLU
        assert ("3 BatchNorm layers" in analysis) == (step == 2)
        assert f"(step{step}-curves.png)" in section
        network = md_tables(section)[1]
        assert int(_column(network, "params")[0].replace(",", "")) > 0
    assert "not run yet" in text.split("## Step 3: ")[1]  # a step without runs says so, with its network
    assert {p.name for p in out.glob("*.png")} == {"ladder-curves.png", "ladder-gap.png", "step1-curves.png",
                                                   "step2-curves.png"}


def test_run_handin_renders_and_its_numbers_are_the_stores(small, tmp_path: Path) -> None:
    _, runs = small
    [result] = [r for r in _step_results(runs, 2) if r["seed"] == 1]
    out = tmp_path / "run" / "hand-in.md"  # -o naming the .md file: the figures go beside it
    res = _invoke("report", result["run_id"], "--runs", str(runs), "--markdown", "-o", str(out))
    assert res.exit_code == 0, res.output
    text, tables = check_renders(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png", "gap.png", "hand-in.md"]
    values = {row[0]: row[1] for row in tables[0][1:]}
    assert values["final (last epoch) test accuracy %"] == f"{result['final']['test_acc']:.2f}"
    assert values["best-epoch test accuracy %"] == f"{result['best']['test_acc']:.2f}"
    assert values["parameters"] == f"{result['params']:,}" and values["verdict (target 99.4 %)"] == result["verdict"]
    assert "(curves.png)" in text and "**Analysis.**" in text and "BatchNorm layers" in text


def test_handin_output_is_checked_before_the_work(small, tmp_path: Path) -> None:
    ladder_file, runs = small
    run_id = next(p.name for p in runs.iterdir() if (p / "config.json").is_file())
    for args, words in ((["report", run_id, "--markdown", "-o", str(runs / run_id / "x")], "a folder of the run store"),
                        (["ladder", "report", str(ladder_file), "-o", str(tmp_path / "x")], "only with --markdown"),
                        (["report", "sweep:any", "--markdown"], "a sweep's or frontier's report is HTML")):
        res = _invoke(*args, "--runs", str(runs))
        assert res.exit_code != 0 and isinstance(res.exception, UserError) and words in str(res.exception), res.output
    assert not (runs / run_id / "x").exists() and not (tmp_path / "x").exists()


def test_unfinished_run_handin_says_so(small, tmp_path: Path) -> None:
    """A run without result.json (still going, or killed): its numbers are the last recorded epoch's, labelled so,
    and there is no verdict -- not 'final' numbers and not '-> None'."""
    import shutil

    _, runs = small
    [result] = [r for r in _step_results(runs, 1) if r["seed"] == 2]
    folder = tmp_path / "store" / result["run_id"]
    shutil.copytree(runs / result["run_id"], folder)
    (folder / "result.json").unlink()
    res = _invoke("report", str(folder), "--markdown", "-o", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    text, tables = check_renders(tmp_path / "out" / "README.md")
    values = {row[0]: row[1] for row in tables[0][1:]}
    last = result["metrics"][-1]
    assert values["status"] == "running or incomplete"
    assert values[f"last recorded epoch ({last['epoch']}) test accuracy %"] == f"{last['test_acc']:.2f}"
    assert not any(k.startswith("final") for k in values) and "None" not in text
    assert "no verdict" in text and "result.json is missing" in text.split("## Notes")[1]
