"""Weight sharing: one module (or one block) applied several times is counted right everywhere it shows.

Parameters once (as torch counts them), MACs per application, one row per application naming the row whose
weights it reuses, the receptive field compounding per application, weight bytes once. Then the spec notation
for a shared block (`name[...]*N`, docs/spec.md "Shared weights").
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cli_util import run_cli
from convladder.analysis.table import summarize
from convladder.errors import UserError
from convladder.spec import block, bn, conv, gap, network, relu, softmax
from convladder.spec.build import build_module, check_size
from convladder.spec.notation import SpecError, format_spec, parse_spec
from convladder.spec.yamlform import spec_from_dict, spec_to_dict
from rf_oracle import centre_field

torch.set_num_threads(1)  # tiny forwards on shared cores

SHARED_SOURCE = textwrap.dedent('''
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        """A depthwise-separable block with its own BN: applied three times below, one set of weights."""

        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.pw = nn.Conv2d(c, c, 1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return self.bn(F.relu(self.pw(self.dw(x))))


    class Shared(nn.Module):
        """conv2 applied three times (one nn.Conv2d), then one Block module applied three times."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.act = nn.ReLU()  # one ReLU module, called after every conv2: it has no weights to share
            self.block = Block(8)
            self.head = nn.Conv2d(8, 10, 1, bias=False)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            for _ in range(3):
                x = self.act(self.conv2(x))
            x = F.max_pool2d(x, 2)
            for _ in range(3):
                x = self.block(x)
            x = F.adaptive_avg_pool2d(self.head(x), 1).view(-1, 10)
            return F.log_softmax(x, dim=1)
''')


def _shared_class(tmp_path):
    path = tmp_path / "sharednet.py"
    path.write_text(SHARED_SOURCE)
    namespace: dict = {}
    exec(compile(SHARED_SOURCE, str(path), "exec"), namespace)
    return path, namespace["Shared"]


def _flop_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def test_a_module_applied_three_times_is_counted_once_and_computed_three_times(tmp_path):
    _, Shared = _shared_class(tmp_path)
    model = Shared()
    table = summarize(model, (1, 28, 28))
    unique = sum(p.numel() for p in model.parameters())  # torch counts a shared parameter once
    assert table.total_params == unique == 880
    assert sum(r.params for r in table.layers) == unique
    assert table.total_macs == _flop_macs(model, (1, 28, 28))  # every application computes
    convs = [r for r in table.layers if r.name.startswith("conv2")]
    assert [r.name for r in convs] == ["conv2", "conv2#2", "conv2#3"]
    assert [r.params for r in convs] == [576, 0, 0] and len({r.macs for r in convs}) == 1 and convs[0].macs > 0
    assert [r.shared_with for r in convs] == ["", "conv2", "conv2"]
    assert [r.rf for r in convs] == [5, 7, 9]  # each application widens the field
    dws = [r for r in table.layers if r.name.startswith("block.dw")]
    assert [r.rf for r in dws] == [14, 18, 22]
    for name in ("conv2", "conv2#2", "conv2#3", "block.dw#2", "block.pw#3"):  # the gradient oracle agrees
        row = next(r for r in table.layers if r.name == name)
        module, _, nth = name.partition("#")
        (h, _), (w, _) = centre_field(model, (1, 28, 28), module, call=int(nth or 1))
        assert (h, w) == (row.rf, row.rf), name
    assert [r.shared_with for r in dws] == ["", "block.dw", "block.dw"]
    # weights once: bytes of the unique parameters, none on a later application's row
    assert table.memory.weights_fp32 == 4 * unique
    assert all(r.weight_bytes == 0 for r in table.layers if r.shared_with)
    assert abs(sum(r.share for r in table.layers) - 1) < 1e-9


def test_each_application_of_a_block_is_its_own_block_in_the_table(tmp_path):
    _, Shared = _shared_class(tmp_path)
    table = summarize(Shared(), (1, 28, 28))
    inside = [r for r in table.layers if r.block.startswith("block")]
    # the functional relu of the 2nd application sat in fx's scope 'block@1' and showed as block 'block@1'
    assert [r.block for r in inside] == ["block"] * 4 + ["block#2"] * 4 + ["block#3"] * 4
    assert [r.kind for r in inside[4:8]] == ["conv3x3", "conv1x1", "relu", "bn"]


def test_a_reused_module_without_weights_does_not_claim_to_share_weights(tmp_path):
    _, Shared = _shared_class(tmp_path)
    table = summarize(Shared(), (1, 28, 28))
    relus = [r for r in table.layers if r.name.startswith("act")]
    assert [r.name for r in relus] == ["act", "act#2", "act#3"]
    assert all(not r.shared_with and "same weights" not in r.note for r in relus)


def test_cli_summary_check_and_json_say_shared(tmp_path, capsys):
    path, _ = _shared_class(tmp_path)
    ref = f"{path}:Shared"
    code, out, _ = run_cli(capsys, "summary", ref)
    assert code == 0
    line = next(x for x in out.splitlines() if " conv2#2 " in x)
    assert "shared #3" in line and "same weights as conv2" in line  # row 3 counted conv2's weights
    assert "params 880 (trainable 880)" in out
    # counted per application the network would be 2,336 parameters: a 1k budget passes only when counted once
    assert run_cli(capsys, "check", ref, "--budget", "1k")[0] == 0
    code, out, _ = run_cli(capsys, "check", ref, "--budget", "870")
    assert code == 1 and "880" in out
    code, out, _ = run_cli(capsys, "summary", ref, "--json")
    data = json.loads(out)
    rows = {r["name"]: r for r in data["layers"]}
    assert rows["conv2#3"]["shared_with"] == "conv2" and "shared_with" not in rows["conv2"]
    assert data["total_params"] == 880 and data["memory"]["weights_fp32_bytes"] == 3520
    code, out, _ = run_cli(capsys, "summary", ref, "--format", "markdown")
    assert code == 0 and "| shared #3 |" in out


# -- the spec notation: name[...]*N ---------------------------------------------------------------------------

SHARED_SPECS = [
    # the notes' block applied 3 times, padded so the map keeps its size
    "c1[conv3x3(8, bias=false) relu bn] res[conv3x3(8, padding=1, bias=false) relu bn]*3 "
    "out[gap conv1x1(10, bias=false) logsoftmax]",
    # a depthwise-separable block applied twice after a transition, with a role and a dropout
    "c1[conv3x3(12, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false)] "
    "sep:convolution[conv3x3(8, padding=1, groups=8, bias=false) conv1x1(8, bias=false) prelu bn dropout(0.05)]*2 "
    "out[gap conv1x1(10) logsoftmax]",
    # unpadded: each application shrinks the map by 2 (the channels stay), biases and no BN
    "c1[conv3x3(6)] res[conv3x3(6) relu]*4 out[gap conv1x1(10) softmax]",
    # two shared blocks, one of fully connected layers on a flat vector (BN1d per application)
    "c1[conv3x3(4)] a[conv3x3(4, padding=1, bias=false) bn relu]*2 head[gap flatten fc(4) relu] mlp[fc(4) bn relu]*3 "
    "out[fc(10) logsoftmax]",
]


@pytest.mark.parametrize("text", SHARED_SPECS)
def test_shared_specs_round_trip_and_count_as_built(text):
    spec = parse_spec(text)
    assert parse_spec(format_spec(spec)) == spec and format_spec(spec) == text
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec_to_dict(spec)))) == spec
    model = build_module(spec)
    unique = sum(p.numel() for p in model.parameters())
    assert check_size(spec).params == unique  # torch-free count = the built module's unique parameters
    table = summarize(spec)
    assert table.total_params == unique == sum(r.params for r in table.layers)
    assert len(table.layers) == len(spec.applied_layers) == len(check_size(spec).shapes)
    assert [r.output for r in table.layers] == [list(s) for s in check_size(spec).shapes]
    assert table.total_macs == _flop_macs(model, (1, 28, 28))


def test_python_form_equals_the_text():
    text = "c1[conv3x3(8, bias=false) relu bn] res[conv3x3(8, padding=1, bias=false) relu bn]*3 out[gap conv1x1(10) logsoftmax]"
    spec = network(block("c1", conv(8, bias=False), relu(), bn()),
                   block("res", conv(8, padding=1, bias=False), relu(), bn(), repeat=3),
                   block("out", gap(), conv(10, 1), softmax(log=True)))
    assert spec == parse_spec(text) and spec != parse_spec(text.replace("*3", "*2"))


def test_a_shared_block_is_built_once_and_applied_n_times_with_bn_per_application():
    spec = parse_spec(SHARED_SPECS[0])
    torch.manual_seed(0)
    model = build_module(spec).eval()
    res = model.res
    assert [n for n, _ in res.named_children()] == ["0", "1", "2", "2_2", "2_3"]  # one conv, three BNs
    with torch.no_grad():
        for name in ("2", "2_2", "2_3"):  # each BN its own statistics, so a mix-up shows
            res._modules[name].running_mean.uniform_(-0.5, 0.5)
            res._modules[name].running_var.uniform_(0.5, 2.0)
        x = torch.randn(3, 8, 26, 26)
        y = x
        for bn_name in ("2", "2_2", "2_3"):  # by hand: the one conv, relu, this application's BN
            y = res._modules[bn_name](F.relu(res._modules["0"](y)))
        assert torch.allclose(res(x), y)
        # what walks a SpecNet's blocks as a flat list (the logits, BN folding for export) applies it 3 times too
        images = torch.randn(4, 1, 28, 28)
        by_hand = model.out(res(model.c1(images)))
        assert torch.allclose(model(images), by_hand)
        from convladder.serve.fuse import inference_logits
        assert torch.allclose(inference_logits(model)(images), model.logits(images), atol=1e-4)
    rows = summarize(spec).layers
    convs = [r for r in rows if r.kind == "conv3x3" and r.name.startswith("res")]
    assert [(r.block, r.rf, r.params, r.shared_with) for r in convs] == [
        ("res", 5, 576, ""), ("res#2", 7, 0, "res.0"), ("res#3", 9, 0, "res.0")]
    bns = [r for r in rows if r.kind == "bn" and r.block.startswith("res")]
    assert [r.params for r in bns] == [16, 16, 16]


def test_a_shared_block_is_not_widened_by_the_grouped_batched_trainer():
    from convladder.train.batched import why_not_batchable

    assert "SharedBlock" in why_not_batchable(build_module(parse_spec(SHARED_SPECS[0])))


@pytest.mark.parametrize("text, words", [
    ("c1[conv3x3(8)] res[conv3x3(16, padding=1) relu]*2", "block 'res' is applied 2 times (res[...]*2) but turns "
                                                         "8 channels into 16 channels"),
    ("c1[conv3x3(8)] res[gap flatten]*2", "turns 8 channels into a flat vector of 8"),
])
def test_a_block_that_changes_its_channels_is_refused_in_one_line(text, words, tmp_path, capsys):
    with pytest.raises(UserError) as err:
        check_size(parse_spec(text))
    assert words in str(err.value) and "\n" not in str(err.value)
    code, out, errtext = run_cli(capsys, "summary", text)
    assert code == 2 and words in errtext and "Traceback" not in errtext


def test_layer_limit_counts_every_application(monkeypatch):
    monkeypatch.setenv("CONVLADDER_MAX_LAYERS", "10")
    parse_spec("a[conv3x3(1, padding=1) relu]*5")
    with pytest.raises(SpecError, match="11 layers"):
        parse_spec("a[conv3x3(1, padding=1) relu]*5 relu")
    with pytest.raises(UserError, match="12 layers"):
        spec_from_dict({"blocks": [{"name": "a", "repeat": 6, "layers": ["conv3x3(1, padding=1)", "relu"]}]})


# -- the frontier's shared family (executors/families.py) -----------------------------------------------------

def test_the_shared_family_is_separable_with_each_stages_tail_one_shared_block():
    from convladder.executors.families import family_text, generate
    from convladder.executors.frontierspec import parse_frontier, spec_params

    text = family_text(2, 4, 10, 16, 12, 20, 0.05, family="shared")
    sep = family_text(2, 4, 10, 16, 12, 20, 0.05, family="separable")
    assert text == (
        "conv1[conv3x3(10, bias=false) relu bn dropout(0.05)] "
        "conv2[conv3x3(10, groups=10, bias=false) conv1x1(16, bias=false) relu bn dropout(0.05)] "
        "trans1[maxpool2x2 conv1x1(12, bias=false) relu bn] "
        "conv3[conv3x3(12, groups=12, bias=false) conv1x1(20, bias=false) relu bn dropout(0.05)] "
        # conv4-6 of the separable family, one set of weights, padded in each application (it holds the last 3x3)
        "conv4[conv3x3(20, padding=1, groups=20, bias=false) conv1x1(20, bias=false) relu bn dropout(0.05)]*3 "
        "out[gap conv1x1(10, bias=false) logsoftmax]")
    shared_block = 20 * 9 + 20 * 20  # the depthwise and pointwise weights counted once, not three times
    assert spec_params(sep) - spec_params(text) == 2 * shared_block == 1160
    assert summarize(parse_spec(text)).rf_out == 28
    space = parse_frontier({"space": {"family": ["separable", "shared"], "before": [2, 3], "after": [3, 4],
                                      "first": [8], "width1": [12], "squeeze": [8], "width2": [12, 16],
                                      "transitions": [1, 2], "middle": [2]}}).space
    pool, unfit = generate(space)
    def key(c):
        return repr(sorted((k, v) for k, v in c.shape.items() if k != "family"))

    shared = {key(c): c for c in pool if c.shape["family"] == "shared"}
    separable = {key(c): c for c in pool if c.shape["family"] == "separable"}
    # every separable layout fits as shared too (padded applications keep the last stage's maps larger: more fit)
    assert set(separable) < set(shared) and unfit["shared"] < unfit["separable"]
    for k, c in shared.items():
        assert "]*" in c.text  # after >= 3: the last stage's tail is one block applied 2 or 3 times
        assert c.params == sum(p.numel() for p in build_module(parse_spec(c.text)).parameters())
        assert k not in separable or c.params < separable[k].params


def test_the_ladders_one_change_check_sees_a_change_of_applications():
    from convladder.ladder.diff import diff_steps

    three = parse_spec(SHARED_SPECS[0])
    d = diff_steps(three, parse_spec(SHARED_SPECS[0].replace("]*3", "]*2")), {}, {})
    assert not d.empty and d.things == {"shared block: applications": ["res *3 -> *2"]}  # was: 'changes nothing'
    assert diff_steps(three, parse_spec(SHARED_SPECS[0]), {}, {}).empty


def test_the_reports_network_table_names_the_shared_weights():
    from convladder.report.html import network_table

    page = network_table(summarize(parse_spec(SHARED_SPECS[0])))
    assert page.count("shared with res.0") == 2  # res.0#2 and res.0#3: not a bare 0
    assert f"{check_size(parse_spec(SHARED_SPECS[0])).params:,} trainable parameters" in page
