"""The one tracer on networks written as classes: functional calls, residual adds, concatenation, fallbacks."""

from __future__ import annotations

from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convladder.analysis.checks import run_checks
from convladder.analysis.table import summarize
from convladder.analysis.trace import capture, trace_model
from nets import ConcatNet, CourseNet, DataDependentNet, ExamplesNet, GatedNet, MisalignedNet, ResNet18


def _avg_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode)


class _Reached(Exception):
    pass


def measured_rf(model: nn.Module, module_name: str | None, size: int, channels: int = 1) -> tuple[int, int]:
    """(height, width) of the input region the centre output of `module_name` depends on, by gradients.

    Positive weights and a positive input make every path count; max-pooling (module or functional)
    becomes average pooling so that every position of a window does.
    """
    model = model.eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) * 0.5 + 0.1)
    seen = []

    def stop(module, inputs, output):
        seen.append(output)
        raise _Reached  # what comes after (e.g. a dense layer sized for 28x28) does not matter

    target = model if module_name is None else model.get_submodule(module_name)
    handle = target.register_forward_hook(stop)
    x = torch.ones(1, channels, size, size, requires_grad=True)
    try:
        with mock.patch.object(F, "max_pool2d", _avg_pool):
            model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    out = seen[0]
    h, w = out.shape[2], out.shape[3]
    out[0, :, h // 2, w // 2].sum().backward()
    grad = x.grad[0].abs().sum(0)
    rows = (grad.sum(1) > 0).nonzero().flatten()
    cols = (grad.sum(0) > 0).nonzero().flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


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


def test_merge_of_misaligned_jumps_is_unknown_with_a_reason():
    table = summarize(MisalignedNet(), (1, 28, 28))
    interp = row(table, "interpolate")
    assert interp.rf is None and "interpolate" in interp.note
    add = table.layers[-1]
    assert add.rf is None and table.rf_out is None and table.rf_note
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
