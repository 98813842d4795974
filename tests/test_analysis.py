"""The network table against PyTorch itself: parameters, MACs (FlopCounterMode), RF (gradients)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convladder.analysis.checks import RULES, run_checks
from convladder.analysis.table import summarize
from convladder.spec.build import build_module
from convladder.spec.notation import parse_spec
from convladder.spec.registry import get_spec, list_models

# Every layer kind that changes the field, and the ones that must not.
RF_SPECS = [
    "conv3x3(4)",
    "conv5x5(4, padding=2)",
    "conv3x3(4, dilation=2)",
    "conv3x3(4, stride=2) conv3x3(4)",
    "conv3x3(4) maxpool2x2 conv3x3(4) conv1x1(4) conv3x3(4)",
    "conv3x3(4) maxpool3x3(stride=2, padding=1) conv3x3(4)",
    "conv3x3(4) avgpool2x2(stride=1) conv3x3(4, dilation=3)",
    "conv3x3(4) maxpool3x3(stride=2, ceil_mode=true) conv3x3(4)",
    "conv3x3(4) bn relu dropout(0.1) leakyrelu elu selu tanh sigmoid silu gelu prelu conv3x3(4)",
    "conv7x7(4, stride=2, padding=3) maxpool3x3(stride=2, padding=1) conv3x3(4) conv3x3(4)",
]


def measured_rf(model: nn.Module, size: int) -> int:
    """Receptive field of the centre output by gradients: positive weights, avg-pool for max-pool."""
    model = model.eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            if isinstance(child, nn.Dropout):
                setattr(module, name, nn.Identity())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) * 0.5 + 0.1)
    x = torch.ones(1, 1, size, size, requires_grad=True)
    out = model(x)
    h, w = out.shape[2], out.shape[3]
    out[0, :, h // 2, w // 2].sum().backward()
    rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero().flatten()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("text", RF_SPECS)
def test_receptive_field_matches_gradient_measurement(text):
    size = 97
    spec = parse_spec(text).with_input((1, size, size))
    table = summarize(spec)
    model = build_module(spec)
    assert measured_rf(model, size) == table.rf_out
    for row in table.layers:
        if row.kind in ("bn", "relu", "dropout", "tanh", "gelu") or row.kind.startswith("conv1x1"):
            prev = table.layers[row.index - 1] if row.index else None
            if prev is not None:
                assert row.rf == prev.rf


def test_gap_and_dense_after_flatten_cover_the_whole_input():
    table = summarize(parse_spec("conv3x3(4, padding=1) maxpool2x2 conv3x3(4, padding=1) gap flatten fc(10)"))
    assert table.rf_out >= 28
    table = summarize(get_spec("pytorch-mnist"))
    assert table.layers[-1].rf == 28


def test_handout_rf_is_not_doubled_after_maxpool():
    # The handout calls the field after conv-conv-conv-MP "22x22"; the recurrence says 8.
    table = summarize(get_spec("eip4-3rd"))
    pool = next(row for row in table.layers if row.kind == "maxpool2x2")
    assert (pool.rf, pool.jump) == (8, 2)
    assert [r.output for r in table.layers if r.kind.startswith("conv")][0] == [10, 26, 26]


def flop_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("text", RF_SPECS + ["conv3x3(8) maxpool2x2 flatten fc(32) relu fc(10) softmax",
                                             "conv3x3(8, groups=1) conv3x3(8, groups=4) gap conv1x1(10) softmax"])
def test_params_and_macs_agree_with_pytorch(text):
    spec = parse_spec(text)
    table = summarize(spec)
    model = build_module(spec).eval()
    assert table.total_params == sum(p.numel() for p in model.parameters())
    assert table.total_macs == flop_macs(model, spec.input_shape)


@pytest.mark.parametrize("name", ["pytorch-mnist", "keras-mnist-convnet", "eip4-3rd"])
def test_registered_networks_agree_with_pytorch(name):
    spec = get_spec(name)
    table = summarize(spec)
    model = build_module(spec).eval()
    assert table.total_params == sum(p.numel() for p in model.parameters()) == list_models()[name].params
    assert table.total_macs == flop_macs(model, spec.input_shape)


def test_plain_sequential_gives_the_same_table_as_the_spec():
    spec = parse_spec("c1[conv3x3(8, bias=false) bn relu] t1[maxpool2x2 conv1x1(4)] o[conv3x3(10) gap flatten logsoftmax]")
    mine = nn.Sequential(
        nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 1),
        nn.Conv2d(4, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LogSoftmax(dim=1),
    )
    a, b = summarize(spec), summarize(mine, (1, 28, 28))
    strip = lambda t: [(r.kind, r.output, r.rf, r.jump, r.params, r.macs) for r in t.layers]  # noqa: E731
    assert strip(a) == strip(b)
    assert a.total_params == b.total_params == sum(p.numel() for p in mine.parameters())
    bn_row = a.layers[1]
    assert (bn_row.trainable_params, bn_row.buffers) == (16, 16)  # PyTorch: 2C + 2C buffers; Keras shows 4C


def test_large_rgb_input_with_fc_head_runs_on_meta():
    table = summarize(get_spec("vgg16"))
    assert table.total_params == 138_357_544
    assert table.total_macs == 15_470_264_320
    assert table.reduction_row().rf == 212


def _rules_fired(text: str, budget: int | None = None, classes: int = 10) -> set[str]:
    return {f.rule for f in run_checks(summarize(parse_spec(text)), budget=budget, classes=classes)}


def test_each_rule_fires_where_it_should():
    assert "maxpool-near-output" in _rules_fired("conv3x3(8) conv3x3(8) maxpool2x2 gap conv1x1(10) softmax")
    assert "fc-2d-to-1d" in _rules_fired("conv3x3(8) flatten fc(10) softmax")
    assert "last-layer-extras" in _rules_fired("conv3x3(8) gap conv1x1(10) bn relu softmax")
    assert "bias-before-bn" in _rules_fired("conv3x3(8) bn relu gap conv1x1(10, bias=false) softmax")
    assert "budget" in _rules_fired("conv3x3(64) conv3x3(64) gap conv1x1(10) softmax", budget=20_000)
    # (a softmax over a flattened map divides by a sum over every position: its output sees the whole input)
    assert "rf-smaller-than-input" in _rules_fired("conv3x3(8) conv3x3(8) conv5x5(10)")
    assert "rf-smaller-than-input" not in _rules_fired("conv3x3(8) conv3x3(8) conv5x5(10) flatten softmax")
    assert "pooled-features-see-part" in _rules_fired("conv3x3(8) conv3x3(8) gap conv1x1(10) softmax")
    assert "pool-3x3" in _rules_fired("conv3x3(8) maxpool3x3 conv3x3(8) conv3x3(8) gap conv1x1(10) softmax")
    assert "output-classes" in _rules_fired("conv3x3(8) gap conv1x1(12) softmax")
    assert "sigmoid" in _rules_fired("conv3x3(8) sigmoid gap conv1x1(10) softmax")
    assert {rule.id for rule in RULES} == {
        "maxpool-near-output", "fc-2d-to-1d", "last-layer-extras", "bias-before-bn", "budget",
        "rf-smaller-than-input", "pooled-features-see-part", "pool-3x3", "output-classes", "sigmoid",
        "flash-budget", "ram-budget"}  # the byte budgets: tests/test_memory.py


def test_a_good_course_network_has_no_findings():
    text = ("c1[conv3x3(8, bias=false) relu bn] c2[conv3x3(12, bias=false) relu bn] c3[conv3x3(16, bias=false) relu bn] "
            "t1[maxpool2x2 conv1x1(8, bias=false)] c4[conv3x3(12, bias=false) relu bn] c5[conv3x3(16, bias=false) relu bn] "
            "c6[conv3x3(16, bias=false) relu bn] c7[conv3x3(16, bias=false) relu bn] c8[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")
    assert run_checks(summarize(parse_spec(text)), budget=20_000) == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convladder", *args], capture_output=True, text=True, timeout=120)


def test_cli_summary_json_schema():
    result = run_cli("summary", "eip4-3rd", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["input"] == [1, 28, 28] and data["total_params"] == 10_890 and data["rf_out"] == 28
    layer = data["layers"][0]
    assert {"index", "name", "kind", "output", "rf", "jump", "params", "trainable_params", "macs"} <= set(layer)
    assert sum(row["macs"] for row in data["layers"]) == data["total_macs"]


def test_cli_summary_of_a_spec_at_another_input_and_bad_spec():
    result = run_cli("summary", "conv3x3(8) maxpool2x2 flatten fc(10)", "--input", "64x64x3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layers"][0]["input"] == [3, 64, 64]
    bad = run_cli("summary", "conv3x3(16) maxpool2x2(strid=2)")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "column 24" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_check_exits_1_over_budget_and_models_lists():
    assert run_cli("check", "pytorch-mnist", "--budget", "20k").returncode == 1
    assert run_cli("check", "eip4-3rd", "--budget", "20k").returncode == 0
    listing = run_cli("models", "--json")
    assert json.loads(listing.stdout)["pytorch-mnist"]["params"] == 1_199_882


def test_softmax_of_a_flattened_map_sees_every_position():
    spec = parse_spec("conv3x3(4) flatten softmax").with_input((1, 8, 8))
    table = summarize(spec)
    model = build_module(spec).eval()
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0, 0], x)  # one probability: it divides by a sum over all positions
    rows = (grad[0, 0].abs().sum(1) > 0).nonzero().flatten()
    assert table.rf_out == int(rows.max() - rows.min() + 1) == 8


# Design checks follow the path to what forward returns: rows on other branches (a kept visualisation, an
# auxiliary head run after the classifier, a result forward drops) neither raise nor hide a finding.

class SideHeadNet(nn.Module):
    """A clean classifier, then a conv + ReLU side head on an intermediate map (kept, dropped, or the logits cast)."""

    def __init__(self, side: str = "kept") -> None:
        super().__init__()
        self.side = side
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16, 10)
        self.vis = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv1(x))
        logits = self.fc(torch.relu(self.conv2(features)).mean((2, 3)))
        if self.side == "kept":
            self.maps = self.vis(features)  # for plotting
        else:
            self.vis(features)
        return logits.float() if self.side == "cast" else logits


@pytest.mark.parametrize("side", ["kept", "dropped", "cast"])
def test_a_side_head_run_after_the_classifier_is_not_the_last_layer(side):
    findings = run_checks(summarize(SideHeadNet(side), (1, 28, 28)))
    assert [f for f in findings if f.rule == "last-layer-extras"] == []


class ReluOnLogitsNet(nn.Module):
    """A ReLU on the logits, and another branch's convolution run after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)
        self.out_relu = nn.ReLU()
        self.aux = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x))
        logits = self.out_relu(self.fc(features.mean((2, 3))))
        self.aux_maps = self.aux(features)
        return logits


def test_an_activation_on_the_output_path_is_found_though_another_branch_runs_later():
    findings = [f for f in run_checks(summarize(ReluOnLogitsNet(), (1, 28, 28))) if f.rule == "last-layer-extras"]
    assert [(f.layer, f.message) for f in findings] == [
        ("out_relu", "relu after the last weight layer (fc), before the output")]


class PoolNet(nn.Module):
    """`near`: the output path has one fc after the pool, a side branch three convs. Else the output path has
    three convs after its pool, and only a visualisation branch run after the classifier max-pools."""

    def __init__(self, near: bool) -> None:
        super().__init__()
        self.near = near
        self.stem = nn.Conv2d(1, 8, 3)
        self.pool = nn.MaxPool2d(2)
        self.convs = nn.Sequential(*(nn.Conv2d(8, 8, 3) for _ in range(3)))
        self.fc = nn.Linear(8, 10)
        self.vis_pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(torch.relu(self.stem(x)))
        if self.near:
            logits = self.fc(pooled.mean((2, 3)))
            self.side = self.convs(pooled)
        else:
            logits = self.fc(self.convs(pooled).mean((2, 3)))
            self.side = self.vis_pool(pooled)
        return logits


@pytest.mark.parametrize("near", [True, False])
def test_maxpool_near_output_counts_weight_layers_on_the_output_path(near):
    findings = [f for f in run_checks(summarize(PoolNet(near), (1, 28, 28))) if f.rule == "maxpool-near-output"]
    if near:
        assert [(f.layer, f.message) for f in findings] == [
            ("pool", "max-pool with only 1 weight layer(s) after it, right before the output")]
    else:
        assert findings == []


class FlattenBranchNet(nn.Module):
    """`side="flatten"`: a flattened map kept for plotting runs before the classifier, whose fc reads a mean.
    `side="fc"`: the classifier reads the flattened map through dropout and a ReLU; an auxiliary fc on a mean
    runs between the flatten and it."""

    def __init__(self, side: str) -> None:
        super().__init__()
        self.side = side
        self.conv = nn.Conv2d(1, 8, 3)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8 * 26 * 26 if side == "fc" else 8, 10)
        self.aux_fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x))
        if self.side == "flatten":
            self.flat_maps = torch.flatten(features, 1)  # for plotting
            return self.fc(features.mean((2, 3)))
        flat = torch.flatten(features, 1)
        self.aux = self.aux_fc(features.mean((2, 3)))
        return self.fc(torch.relu(self.drop(flat)))


@pytest.mark.parametrize("side", ["flatten", "fc"])
def test_fc_2d_to_1d_names_the_fc_that_reads_the_flatten(side):
    findings = [f for f in run_checks(summarize(FlattenBranchNet(side), (1, 28, 28))) if f.rule == "fc-2d-to-1d"]
    if side == "flatten":  # the classifier's fc reads a mean, not the kept flatten that ran before it
        assert findings == []
    else:  # the classifier's fc, through dropout and relu; not the auxiliary fc run in between
        assert [(f.layer, f.message) for f in findings] == [
            ("fc", "fully connected layer reads a flattened 26x26x8 map (54,090 parameters, 100% of the network)")]


class TupleFlattenNet(nn.Module):
    """Returns (logits, features): the table does not know the returned row, so checks read execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.conv(x))
        return self.fc(torch.flatten(features, 1)), features


def test_fc_2d_to_1d_and_reduction_row_without_a_known_output_row_read_execution_order():
    table = summarize(TupleFlattenNet(), (1, 28, 28))
    assert table.output_row is None and table.output_rows() is None
    findings = [f for f in run_checks(table) if f.rule == "fc-2d-to-1d"]
    assert [f.layer for f in findings] == ["fc"]
    assert table.reduction_row().name == "relu"


class SidePoolNet(nn.Module):
    """Two convolutions, a mean and an fc; `side="pool"`: an auxiliary head pools the first convolution's map
    before the second runs; `side="vis"`: a kept 1x1 map of the last features runs just before the pool."""

    def __init__(self, side: str) -> None:
        super().__init__()
        self.side = side
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.vis = nn.Conv2d(8, 4, 1)
        self.fc, self.aux_fc = nn.Linear(8, 10), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = torch.relu(self.conv1(x))
        if self.side == "pool":
            self.aux = self.aux_fc(early.mean((2, 3)))
        late = torch.relu(self.conv2(early))
        if self.side == "vis":
            self.maps = self.vis(late)  # for plotting
        return self.fc(late.mean((2, 3)))


@pytest.mark.parametrize("side", ["pool", "vis"])
def test_reduction_row_is_what_the_output_paths_pool_reads(side):
    table = summarize(SidePoolNet(side), (1, 28, 28))
    assert table.reduction_row().name == "relu_1"  # conv2's ReLU: 24x24, each value sees 5x5 px
    findings = [f for f in run_checks(table) if f.rule == "pooled-features-see-part"]
    assert [(f.layer, f.message.split(";")[0]) for f in findings] == [
        ("relu_1", "each value of relu_1's 24x24 output sees 5x5 px of the 28x28 input")]


# -- one verdict from Python and the CLI (issue 28, item 2) -------------------------------------------------

COURSE_NETS = '''
import torch.nn.functional as F
from torch import nn


class Wide(nn.Module):
    """view(-1, 10) of a 6x6 map: (36, 10) for one image, which a one-image trace does not notice."""

    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.Conv2d(1, 10, 3), nn.BatchNorm2d(10), nn.ReLU(), nn.MaxPool2d(4))

    def forward(self, x):
        return F.log_softmax(self.c(x).view(-1, 10), dim=1)


class Twelve(nn.Module):
    """GAP and a 1x1 to 12 channels: a well-formed output with the wrong number of classes."""

    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.out = nn.Conv2d(8, 12, 1)

    def forward(self, x):
        return self.out(F.adaptive_avg_pool2d(self.c(x), 1)).view(-1, 12)
'''


@pytest.fixture()
def course_nets(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "course_nets.py").write_text(COURSE_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return importlib.import_module("course_nets")


def test_python_summarize_gives_the_cli_verdict(course_nets, capsys):
    import convladder
    from cli_util import run_cli as run_in_process
    from convladder.errors import UserError

    code, _, err = run_in_process(capsys, "summary", "course_nets.py:Wide")
    assert code == 2 and "returns shape (72, 10) for a batch of 2 images" in err
    for given in (course_nets.Wide(), course_nets.Wide, "course_nets.py:Wide"):
        with pytest.raises(UserError, match=r"returns shape \(72, 10\) for a batch of 2 images"):
            convladder.summarize(given, (1, 28, 28))

    code, out, _ = run_in_process(capsys, "check", "course_nets.py:Twelve")
    assert code == 1 and "output-classes" in out
    table = convladder.summarize(course_nets.Twelve(), (1, 28, 28))
    assert [f.rule for f in table.findings if f.severity == "error"] == ["output-classes"]
    assert "error output-classes" in repr(table) and "the output has 12 values" in repr(table)
    assert "design checks" in table._repr_html_() and "output-classes" in table._repr_html_()
    assert "budget" in {f.rule for f in convladder.summarize(course_nets.Twelve(), (1, 28, 28), budget=100).findings}
    quiet = convladder.summarize(course_nets.Twelve(), (1, 28, 28), checks=False)
    assert quiet.findings is None and "design checks" not in repr(quiet) + quiet._repr_html_()
    code, out, _ = run_in_process(capsys, "summary", "course_nets.py:Twelve", "--json")
    assert code == 0 and "output-classes" in {f["rule"] for f in json.loads(out)["findings"]}


def test_summarize_reads_torchinfos_shape_and_names_the_c_h_w_form(course_nets):
    import convladder
    from convladder.errors import UserError

    net = course_nets.Twelve()
    plain, batched = convladder.summarize(net, (1, 28, 28)), convladder.summarize(net, (1, 1, 28, 28))
    assert batched.input == [1, 28, 28] and batched.total_macs == plain.total_macs
    assert batched.layers == plain.layers and plain.input_note == ""
    assert "torchinfo" in batched.input_note and "one image of 28x28x1" in batched.input_note
    assert batched.input_note in repr(batched) and "torchinfo" in batched._repr_html_()
    assert convladder.summarize("eip4-3rd", (1, 1, 28, 28)).total_params == 10_890
    for bad in ((28, 28), (1, 28), "28x28", (0, 28, 28), (1, 28, 28.5), (1, 1, 1, 28, 28)):
        with pytest.raises(UserError, match=r"write \(C, H, W\)"):
            convladder.summarize(net, bad)
    with pytest.raises(UserError, match=r"\(1, 28, 28\) \(grey\)"):
        convladder.summarize("eip4-3rd", (28, 28))
