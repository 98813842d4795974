"""The layer-kind registry (spec/kinds.py): one entry makes a kind known to every area, and the areas that
kept their own lists before now agree on what an activation is."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convladder.analysis.checks import run_checks
from convladder.analysis.table import network_verdict, summarize
from convladder.errors import UserError
from convladder.spec import act, kinds
from convladder.spec.build import build_module
from convladder.spec.layers import Layer
from convladder.spec.notation import format_spec, parse_spec

NEW = "c1[conv3x3(8, bias=false) hardshrink bn] c2[conv3x3(10, bias=false)] out[gap hardshrink logsoftmax]"


@pytest.fixture
def hardshrink():
    """A new activation, registered the one way a source file would (nn.Hardshrink: in no list before)."""
    assert kinds.get("hardshrink") is None
    kind = kinds.register(kinds.Kind("hardshrink", "activation", torch=("Hardshrink",), functions=("hardshrink",)))
    yield kind
    kinds.unregister("hardshrink")


def test_a_registered_activation_is_accepted_everywhere(hardshrink) -> None:
    from convladder.doctor.checks import _watched
    from convladder.serve.predict import feature_maps
    from convladder.train.batched import why_not_batchable, widen

    spec = parse_spec(NEW)  # notation
    assert parse_spec(format_spec(spec)) == spec and act("hardshrink") == Layer("hardshrink")
    torch.manual_seed(0)
    model = build_module(spec)  # build
    assert isinstance(model.c1[1], nn.Hardshrink)
    table = network_verdict(spec)  # table and checks
    assert [r.kind for r in table.layers if r.kind == "hardshrink"] == ["hardshrink", "hardshrink"]
    extras = [(f.layer, f.rule) for f in table.findings if f.rule == "last-layer-extras"]
    assert extras == [("out.1", "last-layer-extras")]  # the hardshrink between the last conv and the output
    assert why_not_batchable(model) is None  # batching
    other = build_module(spec)
    x = torch.randn(4, 1, 12, 12)
    wide = widen([model, other]).eval()
    assert wide.logits(torch.cat([x, x], 1)).shape == (4, 2, 10)
    model.eval()
    _, maps = feature_maps(model, x[:1], layers=1)  # predict: the map after the activation and BN
    assert torch.allclose(torch.from_numpy(maps[0][1]), model.c1(x[:1])[0], atol=1e-6)
    assert _watched(SimpleNamespace(kind="hardshrink", visible=True))  # doctor

    class Functional(nn.Module):  # an own class calling it functionally: the tracer names it too
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(F.hardshrink(self.conv(x)), 1).flatten(1)

    rows = summarize(Functional(), (1, 8, 8)).layers
    assert (rows[1].kind, rows[1].op, rows[1].rf) == ("hardshrink", "hardshrink", 3)  # pointwise: the field stays


def test_an_unregistered_kind_is_refused_and_tracer_only_kinds_are_not_notation(hardshrink) -> None:
    kinds.unregister("hardshrink")
    with pytest.raises(UserError, match="unknown layer 'hardshrink'"):
        parse_spec(NEW)
    kinds.register(hardshrink)
    with pytest.raises(UserError, match="unknown layer kind 'celu'"):
        Layer("celu")  # the tracer names nn.CELU, the notation does not take it
    assert "celu" in kinds.ACTIVATIONS and "celu" not in kinds.SPEC_ACTIVATIONS


def test_a_kind_with_an_argument_builds_with_its_default_or_the_given_value() -> None:
    net = build_module(parse_spec("conv3x3(4) leakyrelu elu(alpha=0.5) leakyrelu(0.2) gap conv1x1(10)"))
    mods = list(net.modules())
    assert [m.negative_slope for m in mods if isinstance(m, nn.LeakyReLU)] == [0.01, 0.2]
    assert [m.alpha for m in mods if isinstance(m, nn.ELU)] == [0.5]
    with pytest.raises(ValueError, match="default for each argument"):
        kinds.Kind("scaled", "activation", args=("alpha",), torch=("ELU",))
    with pytest.raises(ValueError, match="category"):
        kinds.Kind("odd", "weird")


class _AfterLastConv(nn.Module):
    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3)
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.act(self.conv(x)), 1).flatten(1)


@pytest.mark.parametrize("activation", [nn.Mish(), nn.Hardswish(), nn.CELU(), nn.Softplus()])
def test_every_activation_after_the_last_weight_layer_is_flagged(activation: nn.Module) -> None:
    # checks' list had 10 activations of the tracer's 21: Mish or Hardswish before the output passed unseen
    table = summarize(_AfterLastConv(activation), (1, 8, 8))
    assert [f.layer for f in run_checks(table) if f.rule == "last-layer-extras"] == ["act"]


def test_doctor_watches_every_activation() -> None:
    from convladder.doctor.checks import _watched

    for kind in ("softsign", "logsigmoid", "tanhshrink", "threshold", "rrelu", "relu", "gelu"):
        assert _watched(SimpleNamespace(kind=kind, visible=True)), kind  # the first five were left out
    assert not _watched(SimpleNamespace(kind="softmax", visible=True))


def test_feature_maps_are_taken_after_any_activation() -> None:
    from convladder.serve.predict import feature_maps

    torch.manual_seed(0)
    net = _AfterLastConv(nn.ReLU6()).eval()  # relu6 was not a follower: the map shown was the raw conv output
    x = torch.randn(1, 1, 8, 8)
    _, maps = feature_maps(net, x, layers=1)
    assert torch.allclose(torch.from_numpy(maps[0][1]), F.relu6(net.conv(x))[0])


def test_dead_relu_figure_reads_relu_like_activations() -> None:
    pytest.importorskip("matplotlib")
    from convladder.report import netfigs

    net = _AfterLastConv(nn.Hardswish()).eval()  # hardswish and mish were not in the figure's list
    figure = netfigs.dead_relu(net, torch.randn(2, 1, 8, 8))
    assert figure is not None
    assert "sigmoid" not in netfigs.ACTIVATIONS and "tanh" not in netfigs.ACTIVATIONS  # never 'dead': left out


def test_the_batched_trainer_widens_what_it_did_and_names_prelu() -> None:
    from convladder.train.batched import _stateless, why_not_batchable

    expected = {nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout}
    assert set(_stateless()) - expected == {type(build_module(parse_spec("gap conv1x1(10) softmax")).block1[2])}
    assert set(_stateless()) >= expected
    assert "prelu shares its slope" in why_not_batchable(build_module(parse_spec("conv3x3(4) prelu gap conv1x1(10)")))
