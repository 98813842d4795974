"""The network spec: notation, round trips, building, the registry, bounds and size limits, the fuzzer."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convladder.errors import UserError
from convladder.spec import act, block, bn, conv, dropout, fc, gap, maxpool, network, relu, softmax
from convladder.spec.build import Dropout, MaxPool2d, build_module, check_size, estimate_size, output_shape
from convladder.spec.layers import Layer, layer_from_dict
from convladder.spec.notation import SpecError, format_spec, parse_spec
from convladder.spec.registry import check_model, get_spec, list_models, resolve_spec
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
        ("a[relu]*", 8, "how many times block 'a' is applied"),  # shared blocks (tests/test_sharing.py)
        ("a[relu]*0", 9, "a whole number from 1 to 1,000"),
        ("a[relu]*2.5", 9, "a whole number"),
        ("relu*3", 5, "only a named block"),
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


# -- issue 13: bad input gets one clear line; sizes are checked before anything is allocated ----------------

HUGE = "9" * 5000  # past Python's 4,300-digit int() limit


@pytest.fixture
def no_weights(monkeypatch):
    """Make any Conv2d/Linear construction fail: a refusal must come before weights are allocated."""
    def boom(*args, **kwargs):
        raise AssertionError("weights were allocated before the size check")

    monkeypatch.setattr(nn, "Conv2d", boom)
    monkeypatch.setattr(nn, "Linear", boom)


@pytest.mark.parametrize("text, column, words", [
    ("conv1x1(9223372036854775808)", 9, "out_channels must be at most 2,147,483,647"),
    ("conv3x3(8, stride=9223372036854775808)", 19, "stride must be at most 65,536"),
    ("conv3x3(8, padding=18446744073709551616)", 20, "padding must be at most"),
    ("conv3x3(8, dilation=4294967296)", 21, "dilation must be at most"),
    ("conv3x3(8, groups=-9223372036854775809)", 19, "groups must be at least 1"),
    ("gap flatten fc(18446744073709551616)", 16, "out_features must be at most"),
    ("maxpool2x2(padding=9223372036854775807)", 20, "padding must be at most"),
    (f"conv1x1({HUGE})", 9, "(got one of 5,000 digits)"),
    (f"conv3x3(8, s=-{HUGE})", 14, "stride must be a whole number from 1 to 65,536"),
    (f"conv{HUGE}x{HUGE}(8)", 1, "kernel_size must be a whole number from 1 to 65,536"),
    ("conv70000x70000(8)", 1, "kernel_size must be at most 65,536"),
    ("leakyrelu(1e999)", 11, "negative_slope must be a finite number (got inf)"),
    ("elu(alpha=-1e999)", 11, "alpha must be a finite number (got -inf)"),
    (f"leakyrelu({HUGE})", 11, "must be a finite number"),
    ("leakyrelu(nan)", 11, "expected a number"),
    ("leakyrelu(slope=1e300)", 17, "between -1000 and 1000"),
    ("dropout(-0.5)", 9, "[0, 1)"),
])
def test_out_of_range_numbers_are_refused_at_parse(text, column, words):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert f"column {column}" in message and words in message, message
    assert "\n" not in message and len(message) < 300


def test_python_and_yaml_forms_check_arguments_too(tmp_path):
    for make in (lambda: conv(2**63), lambda: conv(8, stride=0), lambda: fc(2**64),
                 lambda: act("leakyrelu", negative_slope=float("inf")), lambda: dropout(float("nan")),
                 lambda: conv(True), lambda: Layer("relu", out_channels=3), lambda: Layer("conv", kernel_size=3),
                 lambda: network(input_shape=(1, 10**30, 28)), lambda: network(input_shape=(1, 28))):
        with pytest.raises(UserError):
            make()
    assert dropout(0).p == 0.0 and isinstance(dropout(0).p, float)  # one type per field: prints as 0.0
    for layer in ({"kind": "conv", "out_channels": "8", "kernel_size": 3}, {"kind": ["conv"]},
                  {"kind": "conv", "out_channels": 8, "kernel_size": 3, "stride": 2**63}, {"out_channels": 8}):
        with pytest.raises(UserError):
            layer_from_dict(layer)
    for data in ({"input": 5, "spec": "relu"}, {"input": [1, 2**70, 28], "spec": "relu"}, {"spec": 5},
                 {"name": ["x"], "spec": "relu"}, {"blocks": [{"name": 5, "layers": ["relu"]}]},
                 {"blocks": [{"name": "a", "layers": []}]}, {"blocks": [{"layers": [{1: 2}]}]},
                 {"blocks": [{"layers": [{"kind": "conv", "out_channels": 1e30, "kernel_size": 3}]}]}):
        with pytest.raises(UserError):
            spec_from_dict(data)
    for name, text in (("digits.yaml", f"spec: relu\ninput: [1, {HUGE}, 28]\n"),
                       ("binary.txt", None)):
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"\xff\xfe\x00conv")
        else:
            path.write_text(text)
        with pytest.raises(UserError):
            load_spec_file(path)


def _random_spec_text(rng: random.Random) -> str:
    """A valid spec with arguments drawn across their whole ranges (floats from subnormal to the bounds)."""
    def real(low: float, high: float) -> float:
        pick = rng.random()
        if pick < 0.3:
            return rng.uniform(low, high)
        if pick < 0.6:
            return math.copysign(10 ** rng.uniform(-320, math.log10(high)), rng.choice((-1, 1)) if low < 0 else 1)
        return rng.choice([0.0, -0.0, 5e-324, 1e-310, 0.1, 1 / 3, high if high < 1 else high, low, 2.0**-1074])

    layers = []
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(["conv", "maxpool", "avgpool", "bn", "dropout", "leakyrelu", "elu", "relu", "fc", "gap"])
        if kind == "conv":
            k = rng.choice((1, 3, 5, 65_536))
            extra = [f"{name}={rng.choice(values)}" for name, values in
                     (("stride", (1, 2, 65_536)), ("padding", (0, 1, 65_536)), ("dilation", (1, 65_536)),
                      ("groups", (1, 2**31 - 1)), ("bias", ("true", "false"))) if rng.random() < 0.4]
            layers.append(f"conv{k}x{k}({', '.join([str(rng.choice((1, 16, 2**31 - 1)))] + extra)})")
        elif kind in ("maxpool", "avgpool"):
            k = rng.choice((1, 2, 3))
            layers.append(f"{kind}{k}x{k}(stride={rng.randint(1, 3)}, ceil_mode={rng.choice(('true', 'false'))})")
        elif kind == "dropout":
            p = real(0.0, 1.0)
            layers.append(f"dropout({p if 0 <= p < 1 else 0.5!r})")
        elif kind == "leakyrelu":
            layers.append(f"leakyrelu({real(-1000.0, 1000.0)!r})")
        elif kind == "elu":
            layers.append(f"elu(alpha={real(-1000.0, 1000.0)!r})")
        elif kind == "fc":
            layers.append(f"fc({rng.choice((1, 10, 2**31 - 1))}, bias={rng.choice(('true', 'false'))})")
        else:
            layers.append(kind)
    if rng.random() < 0.5:
        return f"b{rng.randint(0, 9)}:{rng.choice(('convolution', 'transition', 'output'))}[{' '.join(layers)}]"
    return " ".join(layers)


def test_every_accepted_number_survives_the_round_trip():
    rng = random.Random(7)
    for _ in range(1000):
        spec = parse_spec(_random_spec_text(rng))
        text = format_spec(spec)
        assert parse_spec(text) == spec, text
        assert format_spec(parse_spec(text)) == text
        for layer in spec.layers:
            for value in layer.args().values():
                assert not isinstance(value, float) or math.isfinite(value)


def test_size_guard_refuses_before_allocating(no_weights, monkeypatch):
    with pytest.raises(UserError) as info:
        build_module(parse_spec("conv3x3(100000000)"))
    message = str(info.value)
    assert "1,000,000,000 parameters" in message and "200,000,000" in message and "CONVLADDER_MAX_PARAMS" in message
    assert "layer 1 (conv3x3(100000000))" in message and "\n" not in message
    with pytest.raises(UserError, match=r"layer 1 \(conv3000x3000\(64\)\): input 28x28 is too small"):
        build_module(parse_spec("conv3000x3000(64)"))
    with pytest.raises(UserError, match="too small"):
        output_shape(parse_spec("conv3000x3000(64)"))
    with pytest.raises(UserError, match="CONVLADDER_MAX_ACTIVATIONS"):
        build_module(parse_spec("conv3x3(64, padding=1)").with_input((1, 4096, 4096)))
    with pytest.raises(UserError, match="a batch of 20,000 images"):
        check_size(get_spec("tiny8k"), batch_size=20_000)
    with pytest.raises(UserError, match="over the limit of 5,000"):
        build_module(get_spec("tiny8k"), max_params=5_000)
    with pytest.raises(UserError, match="conv1x1"):  # the spec path of `train` checks before reading data
        check_model("conv3x3(100000000) gap conv1x1(10) logsoftmax", (1, 28, 28), batch_size=128)
    assert check_model("tiny8k", (1, 28, 28), batch_size=128).name == "tiny8k"
    assert check_model("nets/mine.py:Net") is None
    monkeypatch.setenv("CONVLADDER_MAX_PARAMS", "2_000_000_000")
    assert check_size(parse_spec("conv3x3(100000000)"), max_activations=10**11).params == 1_000_000_000
    monkeypatch.setenv("CONVLADDER_MAX_PARAMS", "lots")
    with pytest.raises(UserError, match="CONVLADDER_MAX_PARAMS='lots' is not a positive whole number"):
        check_size(get_spec("tiny8k"))


def test_cli_train_refuses_an_oversized_network_in_one_line(tmp_path, capsys, no_weights):
    from convladder.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "synthetic", "--val-size", "0", "--runs", str(tmp_path / "runs"), "-q",
              "--model", "conv3x3(100000000) gap conv1x1(10) logsoftmax"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CONVLADDER_MAX_PARAMS" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("name", sorted(list_models()) + ["every"])
def test_analytic_sizes_match_torch(name):
    spec = parse_spec(EVERY_LAYER) if name == "every" else get_spec(name)
    with torch.device("meta"):
        model = build_module(spec)
    size = estimate_size(spec)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.shapes[-1] == output_shape(spec)


def test_layer_count_limit(monkeypatch):
    with pytest.raises(SpecError, match=r"more than the limit of 1,000.*CONVLADDER_MAX_LAYERS"):
        parse_spec("conv3x3(4) " + "relu " * 100_000)
    with pytest.raises(UserError, match="CONVLADDER_MAX_LAYERS"):
        build_module(network(block(None, *[relu()] * 1001)))
    with pytest.raises(UserError, match="CONVLADDER_MAX_LAYERS"):
        spec_from_dict({"blocks": [{"layers": ["relu"] * 600}, {"layers": ["relu"] * 600}]})
    assert len(parse_spec("relu " * 1000).layers) == 1000
    monkeypatch.setenv("CONVLADDER_MAX_LAYERS", "2000")
    assert len(parse_spec("relu " * 1500).layers) == 1500


def test_unknown_model_names_suggest_the_closest():
    with pytest.raises(UserError, match=r"did you mean 'eip4-3rd'\?"):
        resolve_spec("eip4-3nd")
    with pytest.raises(UserError, match=r"did you mean 'tiny8k'"):
        get_spec("tiny8")
    with pytest.raises(UserError, match=r"did you mean 'pytorch-mnist'"):
        resolve_spec("pytorch_mnist")
    with pytest.raises(UserError) as info:
        resolve_spec("zzz")
    assert "did you mean" not in str(info.value)


def _fuzzer():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_fuzz_spec.py"
    loader = importlib.util.spec_from_file_location("bench_fuzz_spec", path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[loader.name] = module  # its dataclasses look their module up while being defined
    loader.loader.exec_module(module)
    return module


def test_fuzzed_specs_raise_only_user_errors():
    """A seeded sample of the benchmark's mutation fuzzer: parse, round trip, build and run, summarize."""
    fuzzer = _fuzzer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: more threads only wait on each other on a shared machine
    try:
        tally = fuzzer.fuzz(1500, seed=13, summarize_every=50,
                            limits={"max_params": 20_000, "max_activations": 200_000})
    finally:
        torch.set_num_threads(threads)
    assert not tally.other, {kind: tally.examples[kind] for kind in tally.other}
    assert tally.inputs == 1500 and tally.parsed > 150 and tally.built > 80 and tally.summarized >= 2
    assert tally.refused_parse > 1000 and tally.refused_build > 50


def test_cpu_dropout_matches_its_definition_and_rate() -> None:
    # the float-arithmetic mask must equal the plain definition: keep where the 16-bit uniform >= threshold
    drop = Dropout(0.05).train()
    x = torch.randn(64, 12, 24, 24, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= (-32768 + round(0.05 * 65536))
    expected = torch.where(keep, x.detach() * (1 / 0.95), 0.0)
    assert torch.equal(y.detach(), expected)
    assert abs((~keep).float().mean().item() - 0.05) < 0.002
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, keep.float() * (1 / 0.95))
    assert torch.equal(drop.eval()(x), x)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    assert drop.train()(x_cl).is_contiguous(memory_format=torch.channels_last)
    assert drop(x.detach().double()).dtype == torch.float64


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(2, 2, 0, False), (3, 2, 1, False), (2, 2, 0, True),
                                                              (3, 3, 0, True)])
def test_cpu_maxpool_equals_torch_values_and_gradients(kernel: int, stride: int, padding: int,
                                                       ceil_mode: bool) -> None:
    pool = MaxPool2d(kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    for x in (torch.randn(8, 5, 13, 11), torch.randint(0, 2, (8, 5, 13, 11)).float()):  # the second has ties
        mine = x.clone().requires_grad_()
        ref = x.clone().requires_grad_()
        y = pool(mine)
        y_ref = F.max_pool2d(ref, kernel, stride, padding, ceil_mode=ceil_mode)
        assert torch.equal(y, y_ref) and y.is_contiguous()
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        assert torch.equal(mine.grad, ref.grad)
