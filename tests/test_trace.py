"""The one tracer on networks written as classes: functional calls, residual adds, concatenation, fallbacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convladder.analysis.checks import run_checks
from convladder.analysis.table import summarize
from convladder.analysis.trace import capture, trace_model
from nets import ConcatNet, CourseNet, DataDependentNet, ExamplesNet, GatedNet, MisalignedNet, ResNet18
from rf_oracle import centre_field


def measured_rf(model: nn.Module, module_name: str | None, size: int, channels: int = 1) -> tuple[int, int]:
    """(height, width) of the input region the centre output of `module_name` depends on: the gradient
    oracle (tests/rf_oracle.py: max-pools averaged, weights 1, float64)."""
    (h, _), (w, _) = centre_field(model, (channels, size, size), module_name)
    return h, w


def row(table, name):
    return next(r for r in table.layers if r.name == name)


def test_examples_net_sees_the_functional_max_pool():
    table = summarize(ExamplesNet(), (1, 28, 28))
    kinds = [r.kind for r in table.layers]
    assert kinds == ["conv3x3", "relu", "conv3x3", "relu", "maxpool2x2", "dropout", "flatten", "fc", "relu",
                     "dropout", "fc", "logsoftmax"]
    pool = table.layers[4]
    assert (pool.rf, pool.jump, pool.output) == (6, 2, [64, 12, 12])
    assert table.rf_out == 28
    assert table.total_params == 1_199_882 == sum(r.params for r in table.layers)
    assert row(table, "dropout1").rf == measured_rf(ExamplesNet(), "dropout1", 41)[0] == 6
    assert not table.multipath and not table.notice
    rules = {f.rule for f in run_checks(table, classes=10)}
    assert "rf-smaller-than-input" not in rules and "fc-2d-to-1d" in rules


def test_course_net_reads_28_and_gets_no_false_finding():
    table = summarize(CourseNet(), (1, 28, 28))
    assert [r.kind for r in table.layers if "pool" in r.kind or r.kind == "gap"] == ["maxpool2x2", "gap"]
    pool = next(r for r in table.layers if r.kind == "maxpool2x2")
    assert (pool.rf, pool.jump) == (6, 2)
    last_map = row(table, "convblock6.2")
    assert (last_map.rf, last_map.jump) == (measured_rf(CourseNet(), "convblock6.2", 64)[0], 2) == (22, 2)
    assert table.rf_out == 28 and table.output == [10]
    findings = run_checks(table, budget=20_000, classes=10)
    assert not [f for f in findings if f.severity in ("error", "warning")], findings
    assert table.total_params == sum(p.numel() for p in CourseNet().parameters())


def test_resnet18_params_macs_and_field_per_stage():
    model = ResNet18()
    table = summarize(model, (3, 224, 224))
    assert table.total_params == 11_689_512 == sum(r.params for r in table.layers)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    assert table.total_macs == counter.get_total_flops() // 2
    assert table.multipath
    adds = [r for r in table.layers if r.kind == "add"]
    assert len(adds) == 8 and all(r.reads_from for r in adds)
    down = row(table, "layer2.0.downsample.0")
    assert down.reads_from == ["layer1.1.relu#2"] and down.rf == 43 and down.jump == 8  # 1x1: field kept
    expected = {"layer1": 43, "layer2": 99, "layer3": 211, "layer4": 435}
    stage_rows = {stage: [r for r in table.layers if r.name.startswith(stage + ".")][-1] for stage in expected}
    assert {s: r.rf for s, r in stage_rows.items()} == expected
    assert {s: r.jump for s, r in stage_rows.items()} == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    for stage, rf in expected.items():  # the gradient measurement, at an input the field fits in
        assert measured_rf(ResNet18(), stage, 480, channels=3) == (rf, rf), stage


def test_concat_takes_the_larger_field_and_names_its_inputs():
    table = summarize(ConcatNet(), (1, 28, 28))
    cat = next(r for r in table.layers if r.kind == "concat")
    assert cat.reads_from == ["branch3", "branch5.2"] and cat.rf == 7 and cat.output == [16, 28, 28]
    head = row(table, "head")
    assert head.rf == measured_rf(ConcatNet(), "head", 40)[0] == 12 and head.jump == 2


def test_an_upsampled_branch_lines_up_and_its_field_varies_by_position():
    table = summarize(MisalignedNet(), (1, 28, 28))
    interp = row(table, "interpolate")
    assert (interp.rf, interp.jump) == (3, 1)  # nearest x2 of a 3x3/2 conv: each output reads one input
    add = table.layers[-1]  # even and odd positions see 3 and 4 (issue 29: was '?')
    assert add.rf is None and add.rf_text == "3-4" and "varies by position" in add.note
    assert {grad_box(MisalignedNet(), 28, pick=lambda y, i=i: y[0, :, i, i].sum())[0] for i in (14, 15)} == {3, 4}


def test_merge_of_misaligned_jumps_is_unknown_with_a_reason():
    class Misaligned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return self.a(x)[:, :, :14, :14] + self.b(x)  # 14x14 both, jumps 1 and 2: the fields drift apart

    table = summarize(Misaligned(), (1, 28, 28))
    add = table.layers[-1]
    assert add.rf is None and "different jumps" in add.note and table.rf_out is None
    assert "?" in repr(table)


def test_gate_from_a_global_mean_sees_the_whole_input():
    table = summarize(GatedNet(), (1, 28, 28))
    mean = next(r for r in table.layers if r.kind == "mean")
    assert mean.rf == 28 and mean.output == [8]
    assert table.layers[-1].kind == "mul" and table.rf_out == 28


def test_data_dependent_forward_falls_back_to_hooks_and_says_so():
    table = summarize(DataDependentNet(), (1, 28, 28))
    assert "could not be captured" in table.notice
    assert [r.name for r in table.layers] == ["conv1", "conv2", "out"]
    assert table.layers[0].rf == 3
    # conv2 reads x * 2, which the hooks did not see: unknown from there on, never a guess
    assert table.layers[1].rf is None and "could not see" in table.layers[1].note
    assert table.rf_out is None


def test_spatial_size_that_does_not_follow_is_unknown():
    class Cropped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return F.conv2d(self.conv(x), torch.ones(4, 4, 3, 3), padding="same")

    table = summarize(Cropped(), (1, 28, 28))
    assert table.layers[-1].kind == "conv3x3" and table.layers[-1].rf == 5


def test_shared_module_counts_its_weights_once():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.stem = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(self.stem(x)))

    table = summarize(Twice(), (1, 16, 16))
    assert [r.name for r in table.layers] == ["stem", "conv", "conv#2"]
    assert table.layers[2].params == 0 and "same weights as conv" in table.layers[2].note
    assert sum(r.params for r in table.layers) == table.total_params
    assert table.rf_out == 7


def test_capture_returns_functional_relu_outputs_in_order():
    model = ExamplesNet().eval()
    x = torch.randn(3, 1, 28, 28)
    out, records = capture(model, x, lambda n: n.kind == "relu")
    assert [r.node.name for r in records] == ["relu", "relu_1", "relu_2"]
    assert records[0].output.shape == (3, 32, 26, 26) and bool((records[0].output >= 0).all())
    assert torch.allclose(out, model(x))
    trace = trace_model(model, (1, 28, 28))
    assert trace.method == "fx" and trace.output == [10]


def test_capture_traces_once_and_is_safe_from_threads(monkeypatch):
    import threading

    import convladder.analysis.trace as trace_mod

    calls = []
    real = trace_mod.trace_model
    monkeypatch.setattr(trace_mod, "trace_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = CourseNet().eval()
    x = torch.randn(2, 1, 28, 28)
    expected = model(x)
    errors = []

    def work():
        try:
            for _ in range(5):
                out, records = capture(model, x, lambda n: n.kind == "relu")
                assert torch.allclose(out, expected, atol=1e-5) and len(records) == 6
                assert torch.allclose(model(x), expected, atol=1e-5)  # plain calls alongside, in other threads
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    model.trans = nn.Conv2d(12, 8, 1, bias=False)  # a notebook edit: the next capture traces again
    capture(model, x, lambda n: n.kind == "relu")
    assert len(calls) == 2


# -- the audit's findings: each against a truth computed without convladder ------------------------------------

def grad_box(model: nn.Module, size: int, pick=None, trials: int = 3) -> tuple[int, int]:
    """(height, width) of the bounding box of input pixels with a non-zero gradient for one output value
    (the centre of a map, or `pick(output)`), over a few random inputs; the model keeps its random weights."""
    model = model.eval()
    mask = None
    for _ in range(trials):
        x = torch.randn(1, 1, size, size, requires_grad=True)
        y = model(x)
        value = pick(y) if pick is not None else (
            y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum() if y.dim() == 4 else y[0].sum())
        (g,) = torch.autograd.grad(value, x)
        m = g[0].abs().sum(0) != 0
        mask = m if mask is None else mask | m
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def flop_macs(model: nn.Module, size: int, channels: int = 1) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() // 2


class StrideSlice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.c2(self.c1(x)[:, :, ::2, ::2])


class ShiftAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        y = self.c(x)
        return y[:, :, :26, :26] + y[:, :, 2:, 2:]


class DynamicCrop(nn.Module):
    """Bounds computed from the size in forward, an ellipsis, an odd step, then a 3x3 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.c1(x)
        return self.c2(y[..., 1:y.size(2) - 2:3, 2:y.size(3):3])


def test_spatial_slices_move_the_field_by_their_start_and_step():
    table = summarize(StrideSlice(), (1, 28, 28))
    sl = next(r for r in table.layers if r.kind == "slice")
    assert (sl.rf, sl.jump, sl.output, sl.op) == (3, 2, [4, 13, 13], "slice [::2, ::2]")
    assert (row(table, "c2").rf, row(table, "c2").jump) == (7, 2)
    assert (table.rf_out, table.rf_out) == grad_box(StrideSlice(), 28) == (7, 7)
    assert summarize(ShiftAdd(), (1, 28, 28)).rf_out == grad_box(ShiftAdd(), 28)[0] == 3
    crop = summarize(DynamicCrop(), (1, 29, 29))
    assert (crop.rf_out, crop.layers[-1].jump) == (grad_box(DynamicCrop(), 29)[0], 3) == (9, 3)


def test_a_slice_that_keeps_one_spatial_axis_is_unknown():
    class Row(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.c(x)[:, :, 3].mean(2)

    table = summarize(Row(), (1, 28, 28))
    assert table.rf_out is None and "keeps one axis" in table.rf_note


class SharedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for _ in range(3):
            x = F.relu(self.body(x))
        return F.log_softmax(self.head(F.adaptive_avg_pool2d(x, 1)).view(-1, 10), dim=1)


def test_a_module_called_three_times_computes_three_times():
    model = SharedConvNet()
    table = summarize(model, (1, 28, 28))
    assert table.total_macs == flop_macs(model, 28) == 5_532_064
    assert sum(r.params for r in table.layers) == table.total_params == sum(p.numel() for p in model.parameters())
    assert [r.macs for r in table.layers if r.name.startswith("body")] == [1_806_336] * 3


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.w = nn.Parameter(torch.randn(8, 2, 3, 3))  # a grouped functional transposed convolution
        self.c1d = nn.Conv1d(4, 4, 3)
        self.m = nn.Parameter(torch.randn(782, 6))

    def forward(self, x):
        x = self.up(F.relu(self.down(x)))
        x = F.conv_transpose2d(x, self.w, stride=2, groups=2)[:, :, :28, :28]
        x = self.c1d(x.flatten(2))
        return x @ self.m


def test_transposed_1d_and_matrix_product_macs_agree_with_flop_counter():
    model = Transposed()
    table = summarize(model, (1, 28, 28))
    assert row(table, "up").macs == 14 * 14 * 8 * 8 * 2 * 2
    assert table.total_macs == flop_macs(model, 28) and not table.macs_uncounted
    assert "MACs >=" not in repr(table)


def test_work_without_a_formula_is_a_question_mark_and_a_partial_total():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 8, 4, stride=4)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.bil = nn.Bilinear(8, 8, 4)

        def forward(self, x):
            t = self.c(x).flatten(2).transpose(1, 2)
            a, _ = self.att(t, t, t)
            s = torch.einsum("bnc,bmc->bnm", a, t).mean(2)
            return self.bil(a.mean(1), t.mean(1)) + s.mean(1, keepdim=True)

    model = Attention()
    table = summarize(model, (1, 28, 28))
    assert {r.kind for r in table.layers if not r.macs_known} == {"multiheadattention", "einsum", "bilinear"}
    assert table.total_macs == row(table, "c").macs < flop_macs(model, 28)
    text = repr(table)
    assert "MACs >= 6,272 (not counted: multiheadattention, einsum, bilinear)" in text
    assert next(line for line in text.splitlines() if " bilinear " in line).count("?") >= 1


def test_shared_module_branches_read_their_own_calls():
    class SharedBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c0, self.lift = nn.Conv2d(1, 4, 5, padding=2), nn.Conv2d(1, 4, 1)
            self.c, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 10, 1)

        def forward(self, x):
            y = self.c(self.c0(x)) + self.c(self.lift(x))
            return F.log_softmax(self.head(y)[:, :, 14, 14], dim=1)

    table = summarize(SharedBranches(), (1, 28, 28))
    add = next(r for r in table.layers if r.kind == "add")
    assert add.reads_from == ["c", "c#2"] and add.rf == 7
    assert table.rf_out == grad_box(SharedBranches(), 28, pick=lambda y: y[0, 0])[0] == 7


class AuxAfterOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.head, self.viz = nn.Conv2d(8, 10, 24), nn.Conv2d(8, 1, 1)

    def forward(self, x):
        f = F.relu(self.c2(F.relu(self.c1(x))))
        out = F.log_softmax(self.head(f).view(-1, 10), dim=1)
        self.heat = self.viz(f)  # kept for a figure, computed after the output
        return out


def test_the_output_is_what_forward_returns_not_the_last_row():
    table = summarize(AuxAfterOutput(), (1, 28, 28))
    assert table.layers[-1].name == "viz" and table.output == [10]
    assert table.rf_out == grad_box(AuxAfterOutput(), 28, pick=lambda y: y[0, 0])[0] == 28
    assert "output-classes" not in {f.rule for f in run_checks(table, classes=10)}


def test_fx_in_place_change_is_read_by_later_readers():
    class AddInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = self.c1(x)
            y.add_(F.avg_pool2d(x, 9, stride=1, padding=4))  # the result is not reassigned
            return self.c2(y)

    class ThroughAView(AddInPlace):
        def forward(self, x):
            y = self.c1(x)
            y[:, :2].add_(F.avg_pool2d(x, 9, stride=1, padding=4))  # changes y through a view of it
            return self.c2(y)

    table = summarize(AddInPlace(), (1, 28, 28))
    assert row(table, "c2").rf == grad_box(AddInPlace(), 28)[0] == 11
    view = summarize(ThroughAView(), (1, 28, 28))
    assert grad_box(ThroughAView(), 28)[0] == 11
    assert row(view, "c2").rf is None and "in place" in row(view, "c2").note


def test_hooks_see_an_in_place_change_between_two_modules():
    class InPlaceBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = self.c1(x)
            if y.sum() > 1e9:  # data-dependent: the hooks fallback
                y = y * 2
            y += F.avg_pool2d(x, 9, stride=1, padding=4)  # the same tensor object, a new version
            return self.c2(y)

    table = summarize(InPlaceBranch(), (1, 28, 28))
    assert "could not be captured" in table.notice and grad_box(InPlaceBranch(), 28)[0] == 11
    assert row(table, "c2").rf is None and table.rf_out is None


def test_softmax_and_normalize_over_positions_cover_them():
    def net(fn):
        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c = nn.Conv2d(1, 4, 3, padding=1)
                self.fn = fn  # a module (Softmax2d) is then a submodule

            def forward(self, x):
                return self.fn(self.c(x))
        return Net()

    over_map = net(lambda y: F.normalize(y, dim=(2, 3)))
    assert summarize(over_map, (1, 28, 28)).rf_out == grad_box(over_map, 28)[0] == 28
    flat = net(lambda y: F.softmax(y.flatten(1), dim=1))
    assert summarize(flat, (1, 28, 28)).rf_out == grad_box(flat, 28)[0] == 28
    one_axis = net(lambda y: F.softmax(y, dim=3))
    assert grad_box(one_axis, 28) == (3, 28) and summarize(one_axis, (1, 28, 28)).rf_out is None
    channels = net(lambda y: F.normalize(F.softmax(y, dim=1)))
    assert summarize(channels, (1, 28, 28)).rf_out == grad_box(channels, 28)[0] == 3
    softmax2d = net(nn.Softmax2d())
    centre = grad_box(softmax2d, 28, pick=lambda y: y[0, 0, 14, 14])  # the sum over channels is constant
    assert summarize(softmax2d, (1, 28, 28)).rf_out == centre[0] == 3


def test_functional_batch_norm_buffers_are_counted():
    class FuncBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 16, 3, bias=False)
            self.g, self.b = nn.Parameter(torch.ones(16)), nn.Parameter(torch.zeros(16))
            self.register_buffer("rm", torch.zeros(16))
            self.register_buffer("rv", torch.ones(16))

        def forward(self, x):
            return F.batch_norm(self.c(x), self.rm, self.rv, self.g, self.b, self.training)

    model = FuncBN()
    table = summarize(model, (1, 28, 28))
    assert table.total_buffers == sum(b.numel() for b in model.buffers()) == 32
    assert table.total_params == sum(r.params for r in table.layers) == sum(p.numel() for p in model.parameters())


def test_tied_weights_are_counted_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s, self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(self.s(x)))

    model = Tied()
    table = summarize(model, (1, 28, 28))
    assert sum(r.params for r in table.layers) == table.total_params == sum(p.numel() for p in model.parameters())
    assert row(table, "b").params == 4 and "shared with a" in row(table, "b").note
    assert abs(sum(r.share for r in table.layers) - 1) < 1e-9
    assert table.total_macs == flop_macs(model, 28)
