"""Weight sharing: one module (or one block) applied several times is counted right everywhere it shows.

Parameters once (as torch counts them), MACs per application, one row per application naming the row whose
weights it reuses, the receptive field compounding per application, weight bytes once. Then the spec notation
for a shared block (`name[...]*N`, docs/spec.md "Shared weights").
"""

from __future__ import annotations

import json
import textwrap

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cli_util import run_cli
from convladder.analysis.table import summarize
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
