"""The network spec: notation, round trips, building, the registry."""

from __future__ import annotations

import pytest
import torch

from convladder.errors import UserError
from convladder.spec import block, bn, conv, dropout, gap, maxpool, network, relu, softmax
from convladder.spec.build import build_module, output_shape
from convladder.spec.layers import Layer
from convladder.spec.notation import SpecError, format_spec, parse_spec
from convladder.spec.registry import get_spec, list_models, resolve_spec
from convladder.spec.yamlform import load_spec_file, spec_from_dict, spec_to_dict

EVERY_LAYER = (
    "stem[conv3x3(8, stride=1, padding=1, dilation=1, bias=false) bn relu dropout(0.05)] "
    "c2[conv5x5(8, padding=4, dilation=2, groups=2) leakyrelu(0.1) prelu elu(alpha=0.5) selu tanh sigmoid silu gelu] "
    "t1:transition[maxpool2x2 conv1x1(6, bias=false)] "
    "t2[avgpool3x3(stride=2, padding=1, ceil_mode=true) maxpool3x3(stride=1, padding=1)] "
    "out[gap flatten fc(12) bn fc(10, bias=false) logsoftmax]"
)


def test_every_layer_kind_round_trips_and_builds():
    spec = parse_spec(EVERY_LAYER)
    kinds = {layer.kind for layer in spec.layers}
    assert kinds >= {"conv", "maxpool", "avgpool", "bn", "dropout", "relu", "leakyrelu", "prelu", "elu", "selu",
                     "tanh", "sigmoid", "silu", "gelu", "gap", "flatten", "fc", "logsoftmax"}
    text = format_spec(spec)
    assert parse_spec(text) == spec
    assert format_spec(parse_spec(text)) == text
    model = build_module(spec)
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    assert model.logits(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert spec.blocks[2].resolved_role == "transition" and spec.blocks[4].resolved_role == "output"
    assert spec.blocks[0].resolved_role == "convolution"


def test_short_names_and_aliases():
    spec = parse_spec("conv3x3(16, s=2, p=1, d=1, bias=0) batchnorm swish drop(0.1) maxpool2x2(s=2) gap linear(10)")
    conv_layer = spec.layers[0]
    assert (conv_layer.stride, conv_layer.padding, conv_layer.dilation, conv_layer.bias) == (2, 1, 1, False)
    assert [layer.kind for layer in spec.layers[1:]] == ["bn", "silu", "dropout", "maxpool", "gap", "fc"]


def test_python_api_equals_text():
    spec = network(
        block("conv1", conv(8, 3, bias=False), relu(), bn(), dropout(0.05)),
        block("trans1", maxpool(2), conv(8, 1, bias=False)),
        block("out", gap(), conv(10, 1, bias=False), softmax(log=True)),
    )
    assert parse_spec(format_spec(spec)) == spec
    assert parse_spec(
        "conv1[conv3x3(8, bias=false) relu bn dropout(0.05)] trans1[maxpool2x2 conv1x1(8, bias=false)] "
        "out[gap conv1x1(10, bias=false) logsoftmax]") == spec


def test_yaml_form_round_trip(tmp_path):
    spec = parse_spec(EVERY_LAYER, name="every")
    data = spec_to_dict(spec)
    assert spec_from_dict(data) == spec
    path = tmp_path / "net.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    assert load_spec_file(path) == spec
    mapping = {"blocks": [{"name": "a", "layers": [{"kind": "conv", "out_channels": 4, "kernel_size": 3}, "relu"]}]}
    assert spec_from_dict(mapping).layers[0] == Layer("conv", out_channels=4, kernel_size=3)


@pytest.mark.parametrize(
    "text, column, words",
    [
        ("conv3x3(16) rleu", 13, "unknown layer 'rleu'"),
        ("conv3x3(16,, bias=0)", 12, "expected an argument"),
        ("conv3x3 relu", 1, "must state its output channels"),
        ("conv3x3(16, stirde=2)", 13, "no argument 'stirde'"),
        ("c1[conv3x3(16) relu", 20, "not closed"),
        ("dropout(1.5)", 9, "[0, 1)"),
        ("conv3x5(4)", 1, "square"),
        ("conv3x3(16) $", 13, "unexpected character"),
        ("maxpool2x2(stride=0)", 19, "at least 1"),
    ],
)
def test_parse_errors_point_at_the_token(text, column, words):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert f"column {column}" in message and words in message
    assert "\n" not in message


def test_build_errors_name_the_layer():
    with pytest.raises(UserError, match=r"layer 4 \(conv3x3\(8\)\).*too small"):
        build_module(parse_spec("conv3x3(8) maxpool2x2 maxpool2x2 conv3x3(8) conv3x3(8)").with_input((1, 8, 8)))
    with pytest.raises(UserError, match="put flatten"):
        build_module(parse_spec("conv3x3(8) fc(10)"))
    with pytest.raises(UserError, match="reduce it to 1x1"):
        build_module(parse_spec("conv3x3(10) softmax"))


def test_output_shape_without_tensors():
    assert output_shape(get_spec("eip4-3rd")) == (10,)
    assert output_shape(parse_spec("conv3x3(4, padding=1) maxpool2x2")) == (4, 14, 14)


@pytest.mark.parametrize("name", sorted(list_models()))
def test_registered_networks_have_their_parameter_counts(name):
    spec = get_spec(name)
    entry = list_models()[name]
    with torch.device("meta"):
        model = build_module(spec)
    assert sum(p.numel() for p in model.parameters()) == entry.params
    assert parse_spec(format_spec(spec), name=name, input_shape=spec.input_shape) == spec
    assert output_shape(spec) in ((10,), (1000,))


def test_course_networks_meet_the_assignment():
    """At least one registered network meets the course rules: <=15k params, no bias, no fully connected layer."""
    found = []
    for name in list_models():
        spec = get_spec(name)
        params = list_models()[name].params
        no_bias = all(layer.bias is False for layer in spec.layers if layer.kind in ("conv", "fc"))
        no_fc = not any(layer.kind == "fc" for layer in spec.layers)
        if params <= 15_000 and no_bias and no_fc:
            found.append(name)
    assert found, "no registered network meets the course assignment"


def test_resolve_spec_names_files_and_text(tmp_path):
    assert resolve_spec("eip4-3rd").name == "eip4-3rd"
    path = tmp_path / "mine.txt"
    path.write_text("# my net\nconv3x3(8) relu\ngap conv1x1(10) softmax\n")
    assert resolve_spec(str(path)).layers[0].out_channels == 8
    with pytest.raises(UserError, match="not a registered network"):
        resolve_spec("eip4-3nd")
    with pytest.raises(UserError, match="does not exist"):
        resolve_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocks: [\n")
    with pytest.raises(UserError, match="line"):
        resolve_spec(str(bad))
