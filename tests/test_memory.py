"""Weight bytes and peak activation memory (analysis/memory.py), against numbers worked out by hand."""

from __future__ import annotations

import json

import pytest
from torch import nn
from typer.testing import CliRunner

from convladder.analysis.checks import run_checks
from convladder.analysis.render import table_text
from convladder.analysis.table import summarize
from convladder.cli import build_app


def _chain(inplace: bool = False) -> nn.Module:
    # 8x8x1 -> conv 3x3 (4, no bias) 6x6x4 -> relu -> conv 3x3 (8, bias) 4x4x8 -> flatten 128 -> fc 10
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(inplace=inplace), nn.Conv2d(4, 8, 3),
                         nn.Flatten(), nn.Linear(128, 10))


class Residual(nn.Module):
    """x0 = conv0(x); y = x0 + conv_b(relu(conv_a(x0))); mean over the map: x0 stays alive across the branch."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)

    def forward(self, x):
        x0 = self.conv0(x)
        y = x0 + self.conv_b(self.conv_a(x0).relu())
        return y.mean((2, 3))


@pytest.mark.parametrize("inplace", [False, True])
def test_chain_bytes_match_the_hand_count(inplace):
    table = summarize(_chain(inplace), (1, 8, 8))
    plan = table.memory
    # weights: conv1 36 values; conv2 288 + 8 bias; fc 1280 + 10 bias
    assert plan.weights_fp32 == (36 + 296 + 1290) * 4 == 6488
    # int8: weights 1 B, biases 4 B (int32), one fp32 scale per output channel
    assert plan.weights_int8 == (36 + 4 * 4) + (288 + 8 * 4 + 8 * 4) + (1280 + 10 * 4 + 10 * 4) == 1764
    live = {row.kind: row.live_bytes for row in table.layers}
    # values alive per layer: conv1 64 in + 144 out; relu 144 + 144 (a separate buffer, in place or not);
    # conv2 144 + 128; flatten is a view of conv2's 128; fc 128 + 10
    assert [row.live_bytes // 4 for row in table.layers] == [208, 288, 272, 128, 138]
    assert live["relu"] == 288 * 4
    assert (plan.peak_fp32, plan.peak_int8) == (288 * 4, 288) and table.peak_row == "1"
    assert [row.weight_bytes_int8 for row in table.layers] == [52, 0, 352, 0, 1360]
    assert "weights 6.3 KiB fp32 / 1.7 KiB int8 | peak RAM 1.1 KiB fp32 / 288 B int8 at layer 2 (relu)" in table_text(table)


def test_residual_add_keeps_its_input_alive():
    table = summarize(Residual(), (1, 8, 8))
    kinds = [row.kind for row in table.layers]
    assert kinds == ["conv3x3", "conv3x3", "relu", "conv3x3", "add", "mean"]
    # 8x8x4 maps of 256 values: conv0's result is read again by the add, so it is alive through conv_a..add
    assert [row.live_bytes // 4 for row in table.layers] == [64 + 256, 512, 768, 768, 768, 256 + 4]
    plan = table.memory
    assert plan.peak_int8 == 768 and plan.peak_node == table.layers[2].name
    assert "conv0" in plan.peak_tensors  # what makes it more than a chain's 512
    assert plan.weights_int8 == (36 + 4 * 4) + 2 * (144 + 4 * 4) and plan.weights_fp32 == (36 + 2 * 144) * 4


def test_flash_and_ram_budgets_are_checks_with_the_peak_layer():
    table = summarize(_chain(), (1, 8, 8))
    rules = {f.rule: f for f in run_checks(table, flash=1024, ram=256)}
    assert "1,764 bytes, over the flash budget of 1,024" in rules["flash-budget"].message
    assert rules["ram-budget"].layer == "1" and "288 bytes" in rules["ram-budget"].message
    assert rules["flash-budget"].severity == "error"
    assert not {"flash-budget", "ram-budget"} & {f.rule for f in run_checks(table, flash=1764, ram=288)}


def test_summary_shows_bytes_in_text_and_json_and_check_takes_byte_budgets():
    app = build_app()
    result = CliRunner().invoke(app, ["summary", "tiny8k", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    memory = data["memory"]
    assert memory["weights_fp32_bytes"] == 7944 * 4 and memory["peak_ram_int8_bytes"] * 4 == memory["peak_ram_fp32_bytes"]
    assert sum(row["weight_bytes"] for row in data["layers"]) == 7944 * 4
    # tiny8k's peak: conv2's 24x24x12 result and its relu's, both alive (conv1's 26x26x8 is smaller)
    assert memory["peak_ram_int8_bytes"] == 2 * 24 * 24 * 12 and memory["peak_row"] == "conv2.1"
    over = CliRunner().invoke(app, ["check", "tiny8k", "--flash", "16KiB", "--ram", "8KiB"])
    assert over.exit_code == 1 and "ram-budget" in over.output and "flash-budget" not in over.output
    assert CliRunner().invoke(app, ["check", "tiny8k", "--flash", "16KiB", "--ram", "16KiB"]).exit_code == 0
    bad = CliRunner().invoke(app, ["check", "tiny8k", "--ram", "lots"])
    assert bad.exit_code != 0 and "--ram 'lots'" in str(bad.exception or bad.output)


def test_frontier_report_places_winners_by_int8_bytes_and_peak_ram():
    from convladder.report.frontierreport import frontier_figure, frontier_rows, measured
    from convladder.spec.registry import list_models, resolve_spec

    def budget(b, name, lo):
        return {"budget": b, "winner": {"params": list_models()[name].params, "model": name},
                "final": {"test_acc": {"min": lo, "median": lo + 0.1, "max": lo + 0.2}, "test_accs": [lo] * 5}}

    summary = {"name": "m", "dataset": "mnist", "budgets": [budget(2000, "frontier2k", 98.7),
                                                            budget(5000, "frontier5k", 99.3)]}
    plans = [summarize(resolve_spec(n)).memory for n in ("frontier2k", "frontier5k")]
    points = measured(summary)
    assert [p["int8_weights"] for p in points] == [p.weights_int8 for p in plans]
    assert [p["peak_ram"] for p in points] == [p.peak_int8 for p in plans]
    for x, key in (("int8_weights", "weights_int8"), ("peak_ram", "peak_int8")):
        fig = frontier_figure(summary, x)
        line = fig.fig.axes[0].get_lines()[0]  # the least-of-seeds line
        assert list(line.get_xdata()) == [getattr(p, key) for p in plans] and "KiB" in fig.fig.axes[0].get_xlabel()
        fig.close()
    head, rows = frontier_rows(summary)
    assert rows[0][head.index("int8 weights KiB")] == round(plans[0].weights_int8 / 1024, 1)
    assert rows[1][head.index("peak RAM int8 KiB")] == round(plans[1].peak_int8 / 1024, 1)
    other = {**summary, "dataset": "cifar10"}  # other images: the specs' 28x28x1 sizes would be wrong, so none
    assert frontier_figure(other, "peak_ram") is None and frontier_rows(other)[1][0][2] == "–"
