"""The network table's receptive field and jump against a gradient oracle (tests/rf_oracle.py).

The oracle is checked on textbook networks first; then the cases an audit found wrong (issue 29), each
against the oracle; then a seeded sample of generated networks (tests/rf_netgen.py): at every op's row the
table's field (its range where positions differ) and jump equal the oracle's. bench/bench_rf_oracle.py runs
the same comparison over 10,000 networks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rf_netgen as G
from convladder.analysis.table import LayerRow, summarize
from rf_oracle import centre_field, compare, extents, net_fields


def row(table, name: str) -> LayerRow:
    return next(r for r in table.layers if r.name == name)


def same(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (n, n), (n, n)


# -- the oracle on textbook networks (plain torch, narrow: the field does not depend on the width) ---------------

def vgg16(width: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for i, convs in enumerate([2, 2, 3, 3, 3]):
        for _ in range(convs):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            c = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = nn.Sequential(Block(width, width, 2), Block(width, width))
        self.layer3 = nn.Sequential(Block(width, width, 2), Block(width, width))
        self.layer4 = nn.Sequential(Block(width, width, 2), Block(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def test_oracle_on_textbook_networks():
    three = nn.Sequential(*[nn.Conv2d(1, 1, 3) for _ in range(3)])
    assert centre_field(three, (1, 15, 15)) == same(7)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    assert centre_field(pooled, (1, 20, 20)) == same(8)  # not the handout's doubled 22
    assert centre_field(vgg16(), (3, 224, 224)) == same(212)
    net = ResNet18()
    fields = {stage: centre_field(net, (3, 480, 480), stage)[0][0] for stage in ("layer1", "layer2", "layer3", "layer4")}
    assert fields == {"layer1": 43, "layer2": 99, "layer3": 211, "layer4": 435}
    table = summarize(net, (3, 480, 480))
    last = {stage: [r for r in table.layers if r.name.startswith(stage + ".")][-1] for stage in fields}
    assert {s: r.rf for s, r in last.items()} == fields
    assert summarize(vgg16(), (3, 224, 224)).layers[-1].rf == 212


def test_oracle_sees_an_upsampled_field_vary_and_the_padding_as_map():
    up = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.ConvTranspose2d(1, 1, 2, 2), nn.Conv2d(1, 1, 4, padding=1))
    # 3/2 conv: 3 px, jump 2; 2x2/2 transposed: each output reads one input; 4 taps read 2 or 3 of them
    assert centre_field(up, (1, 40, 40), block=2) == ((5, 7), (5, 7))
    fields = net_fields(G.Net(list(up), [(0,), (1,), (2,)]), (1, 40, 40))
    assert [f.extents for f in fields] == [same(3), same(3), ((5, 7), (5, 7))]
    assert [f.jumps for f in fields] == [(2, 2), (1, 1), (1, 1)]


# -- the cases an audit found wrong (issue 29): each failed before ----------------------------------------------

def _body() -> list[nn.Module]:
    return [nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)]


@pytest.mark.parametrize("pool", [nn.AvgPool2d(14), nn.MaxPool2d(14), nn.AdaptiveAvgPool2d(1), G.WholeMapPool()])
def test_a_pool_over_the_whole_map_is_a_global_pool(pool):
    model = nn.Sequential(*_body(), pool, nn.Flatten())
    table = summarize(model, (1, 28, 28))
    assert table.rf_out == 28 == centre_field(model, (1, 28, 28))[0][0]  # was 36 for AvgPool2d(14)
    assert table.layers[4].rf == 28 and not [r for r in table.layers if r.rf_text == "?"]


class Gated(nn.Module):
    """x * sigmoid(x.mean(...)) (or a global-context add), then 3x3 convolutions."""

    def __init__(self, add: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c, self.d = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, stride=2, padding=2)
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.a(x))
        g = x.mean((2, 3), keepdim=True)
        x = x + g if self.add else x * torch.sigmoid(g)
        return self.d(self.c(x))


@pytest.mark.parametrize("add", [False, True])
def test_after_a_gate_the_field_stays_the_image(add):
    model = Gated(add)
    table = summarize(model, (1, 32, 32))
    assert [row(table, n).rf for n in ("c", "d")] == [32, 32]  # was 34 and 39
    assert centre_field(model, (1, 32, 32), "c") == same(32) == centre_field(model, (1, 32, 32), "d")
    assert (row(table, "c").jump, row(table, "d").jump) == (1, 2)


class Decoder(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.c3, self.c4 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 4, 4, padding=2)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.a(x)
        y = self.down(skip)
        y = self.up(y) if self.mode == "transposed" else F.interpolate(y, scale_factor=2, mode=self.mode)
        return self.c4(self.c3(torch.cat([skip, y], 1)))


@pytest.mark.parametrize("mode", ["transposed", "nearest", "bilinear"])
def test_after_upsampling_a_number_or_a_range_never_a_question_mark(mode):
    model = Decoder(mode)
    table = summarize(model, (1, 48, 48))
    for name in ("c3", "c4"):
        r = row(table, name)
        assert r.rf_text != "?" and r.jump == 1, (name, r.note)
        assert extents(r) == centre_field(model, (1, 48, 48), name, block=2), name
    c4 = row(table, "c4")
    if c4.rf is None:  # neighbouring positions see different sizes: the range, labelled
        assert "-" in c4.rf_text and "varies by position" in c4.note
    fields = net_fields(G.Net([model.a, model.down, model.up if mode == "transposed" else G.Interp(2, mode, False),
                               G.Cat(), model.c3, model.c4], [(0,), (1,), (2,), (1, 3), (4,), (5,)]), (1, 48, 48))
    assert fields[-1].extents == extents(c4) and fields[-1].jumps == (1, 1)


class Cast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = Decoder("transposed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).float()  # what forward returns is a hidden node (a cast) of the last row


@pytest.mark.parametrize("model", [Decoder("transposed"), Cast()], ids=["row", "hidden"])
def test_the_totals_line_prints_the_output_range_as_the_rows_do(model):
    from convladder.analysis.render import totals_line

    table = summarize(model, (1, 48, 48))
    assert table.layers[-1].rf_text == "9-11" and table.rf_out is None
    assert table.rf_out_text == "9-11" and table.rf_out_range == [[9, 11], [9, 11]]
    # was 'RF at output ? (field varies by position: 9-11)'; the cast: a TypeError
    assert "RF at output 9-11 (field varies by position: smallest-largest)" in totals_line(table)


def test_the_field_figure_shows_range_rows_at_their_largest_with_the_range_marked():
    from convladder.report import netfigs

    table = summarize(Decoder("transposed"), (1, 48, 48))
    figure = netfigs.rf_growth(table)
    ax = figure.fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-1] == "c4 conv4x4" and len(labels) == len(table.layers)  # the range row was left out
    assert list(ax.lines[0].get_ydata())[-1] == 11
    bars = [c for c in ax.collections if c.get_label().startswith("varies by position")]
    assert len(bars) == 1 and [list(seg[:, 1]) for seg in bars[0].get_segments()] == [[9, 11]]
    assert "output RF 9-11" in ax.get_title()


def test_a_channel_shuffle_keeps_the_field():
    model = G.Net([nn.Conv2d(1, 4, 3, padding=1), G.Shuffle(2), nn.Conv2d(4, 4, 3, padding=1)], [(0,), (1,), (2,)])
    table = summarize(model, (1, 16, 16))
    assert table.rf_out == 5 == centre_field(model, (1, 16, 16))[0][0]  # was '?': "moves values between positions"
    assert not [r for r in table.layers if r.rf_text == "?"]


def test_a_reshape_that_moves_positions_is_still_unknown():
    class Swap(nn.Module):
        def forward(self, x):
            return x.transpose(2, 3)

    table = summarize(nn.Sequential(nn.Conv2d(1, 2, (3, 1)), Swap(), nn.Conv2d(2, 2, 3)), (1, 16, 16))
    assert table.layers[1].rf is None and "height or width" in table.layers[1].note


def test_a_column_that_reads_only_padding_still_carries_its_rows():
    # bench finding (seed 2923, 8x8): a 1x1/3 convolution with padding 1 makes column 0 of a 2x1 map read only
    # padding; after a global-context add a 5x5 window spans rows -32..18 of the image, clipped 0..7: 8 rows. The
    # oracle measured rows with the width at its real size, where that column carries no derivative, and said 7.
    net, shape = G.random_net(2923)
    assert [type(op).__name__ for op in net.ops[1:3]] == ["Conv2d", "Conv2d"] and net.ops[2].stride == (3, 3)
    fields = net_fields(net, shape)
    assert [f.extents for f in fields[7:10]] == [same(8), ((7, 8), (8, 8)), same(8)]  # was 7, 7x8, 7x8
    assert compare(2923) == []  # the table: 8, 7-8x8, 8 (unchanged)


# -- the property: the table equals the oracle on generated networks ---------------------------------------------

def test_table_equals_the_oracle_on_300_generated_networks():
    torch.set_num_threads(1)
    problems = [p for seed in range(300) for p in compare(seed)]
    assert not problems, "\n".join(problems[:10])


def test_an_output_range_reaches_the_json_the_html_summary_and_the_ladder_row():
    """Readers of the table print the range the totals line prints, never 'unknown' or None."""
    from convladder.report.html import network_table

    table = summarize(Decoder("transposed"), (1, 48, 48))
    assert table.to_dict()["rf_out_range"] == [[9, 11], [9, 11]]
    assert "output receptive field 9-11 on" in network_table(table)
