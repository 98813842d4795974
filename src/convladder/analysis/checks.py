"""Design checks from the class notes.

Each rule is data: an id, a severity, the note it comes from (quoted), a
suggestion, and a function that finds the layers breaking it. Add a rule by
appending to RULES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from convladder.analysis.table import LayerRow, NetworkTable
from convladder.spec import kinds

WEIGHT_KINDS = ("conv", "fc")
# bn, dropout and every activation of the registry (spec/kinds.py), read live
EXTRA_KINDS = kinds.EXTRAS
# Rows that change values one at a time and keep the layout: an fc reading a flatten through them reads the flatten.
POINTWISE_KINDS = kinds.KindSet(EXTRA_KINDS.test, extra=("identity",))


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # error | warning | info
    layer: str | None  # qualified layer name, or None for the whole network
    message: str
    why: str
    suggestion: str


@dataclass(frozen=True)
class CheckContext:
    table: NetworkTable
    budget: int | None
    classes: int
    flash: int | None = None  # bytes for the int8 weights (analysis.memory)
    ram: int | None = None  # bytes for the peak int8 activation memory


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    why: str  # quoted from the notes
    suggestion: str
    find: Callable[[CheckContext], Iterator[tuple[str | None, str]]]  # yields (layer, message)


def _is_weight(row: LayerRow) -> bool:
    return row.kind.startswith(WEIGHT_KINDS)


@dataclass(frozen=True)
class OutputPath:
    """The rows whose results reach what forward returns, in execution order, and the rows each reads."""

    rows: list[LayerRow]
    reads: dict[str, list[str]]  # row name -> the rows on the path it reads


def output_path(table: NetworkTable) -> OutputPath:
    """The rows on the data path to forward's return value: the returned row and its ancestors.

    A kept visualisation, an auxiliary head run after the classifier or a result forward drops is not on it.
    Where the table does not know which row forward returns (a tuple; the hooks fallback did not see the output
    being made), every row in execution order, each reading the row above: how a sequential network reads.
    """
    path = table.output_rows()
    if path is None:
        names = [row.name for row in table.layers]
        return OutputPath(table.layers, {name: names[max(i - 1, 0):i] for i, name in enumerate(names)})
    reads = table.row_reads()
    names = {row.name for row in path}  # (a row may read INPUT, which is no row)
    return OutputPath(path, {row.name: [n for n in reads[row.name] if n in names] for row in path})


def _weights_after(path: OutputPath) -> dict[str, int]:
    """Per row on the path: the most weight layers on a route from its result to the output."""
    after = {row.name: 0 for row in path.rows}
    for row in reversed(path.rows):  # readers first, so each row sees its readers' final counts
        for name in path.reads[row.name]:
            after[name] = max(after[name], after[row.name] + _is_weight(row))
    return after


def _weight_before(path: OutputPath) -> dict[str, LayerRow | None]:
    """Per row on the path: the latest-run weight layer its result comes through (None: none)."""
    before: dict[str, LayerRow | None] = {}
    for row in path.rows:
        through = [r for r in (before[name] for name in path.reads[row.name]) if r is not None]
        before[row.name] = row if _is_weight(row) else max(through, key=lambda r: r.index, default=None)
    return before


def _maxpool_near_output(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    path = output_path(ctx.table)
    after = _weights_after(path)
    for row in path.rows:
        if row.kind.startswith("maxpool") and after[row.name] < 2:
            yield row.name, f"max-pool with only {after[row.name]} weight layer(s) after it, right before the output"


def _flattens_map(row: LayerRow) -> bool:
    """A flatten of a map with more than one position (a flatten after gap only drops the 1x1)."""
    return row.kind == "flatten" and len(row.input) == 3 and row.input[1] * row.input[2] > 1


def _flattened_map_message(flatten: LayerRow, dense: LayerRow) -> str:
    c, h, w = flatten.input
    return (f"fully connected layer reads a flattened {h}x{w}x{c} map "
            f"({dense.params:,} parameters, {dense.share:.0%} of the network)")


def _read_through_pointwise(row: LayerRow, path: OutputPath, rows: dict[str, LayerRow]) -> LayerRow | None:
    """The row whose result `row` reads, looking through value-wise rows (dropout, an activation, bn) on the way;
    None where it reads several rows or the input."""
    reads = path.reads[row.name]
    while len(reads) == 1:
        source = rows[reads[0]]
        if source.kind not in POINTWISE_KINDS:
            return source
        reads = path.reads[source.name]
    return None


def _fc_2d_to_1d(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    # Each fc on the output's path that reads a flattened map: the fc that actually reads the flatten's result,
    # not the next one run (a side head's fc may run in between, or a side branch's flatten before the classifier).
    if ctx.table.output_row is None:
        yield from _fc_after_flatten_in_order(ctx.table.layers)
        return
    path = output_path(ctx.table)
    rows = {row.name: row for row in path.rows}
    for dense in path.rows:
        if dense.kind == "fc":
            source = _read_through_pointwise(dense, path, rows)
            if source is not None and _flattens_map(source):
                yield dense.name, _flattened_map_message(source, dense)


def _fc_after_flatten_in_order(rows: list[LayerRow]) -> Iterator[tuple[str | None, str]]:
    """Where the returned row is not known: the next fc run after each flatten, as in a sequential network."""
    for i, row in enumerate(rows):
        if _flattens_map(row):
            dense = next((r for r in rows[i + 1 :] if r.kind == "fc"), None)
            if dense is not None:
                yield dense.name, _flattened_map_message(row, dense)


def _extras_on_last_layer(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    # On the output's path: after a weight layer, and no weight layer between the row and the output.
    path = output_path(ctx.table)
    after, before = _weights_after(path), _weight_before(path)
    for row in path.rows:
        last = before[row.name]
        if row.kind in EXTRA_KINDS and after[row.name] == 0 and last is not None:
            yield row.name, f"{row.kind} after the last weight layer ({last.name}), before the output"


def _bias_before_bn(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    rows = ctx.table.layers
    for row, nxt in zip(rows, rows[1:]):
        if row.bias and nxt.kind == "bn" and not nxt.reads_from:  # reads_from empty: it reads the row above
            yield row.name, f"bias of {row.output[0]} values right before batch norm, which subtracts the mean and so cancels it"


def _budget(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    if ctx.budget is not None and ctx.table.total_params > ctx.budget:
        yield None, f"{ctx.table.total_params:,} parameters, over the budget of {ctx.budget:,}"


def _flash_budget(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    plan = ctx.table.memory
    if ctx.flash is not None and plan is not None and plan.weights_int8 > ctx.flash:
        yield None, (f"int8 weights take {plan.weights_int8:,} bytes, over the flash budget of {ctx.flash:,} "
                     f"(fp32: {plan.weights_fp32:,})")


def _ram_budget(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    plan = ctx.table.memory
    if ctx.ram is not None and plan is not None and plan.peak_int8 > ctx.ram:
        lower = " at least" if plan.note else ""
        yield ctx.table.peak_row, (f"peak int8 activation memory is{lower} {plan.peak_int8:,} bytes, over the RAM "
                                   f"budget of {ctx.ram:,} (fp32: {plan.peak_fp32:,})")


def _rf_smaller_than_input(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    rf, size = ctx.table.rf_out, max(ctx.table.input[1], ctx.table.input[2])
    if rf is not None and rf < size:
        yield None, f"the output sees {rf}x{rf} px of the {size}x{size} input"


def _pooled_features_see_part(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    row = ctx.table.reduction_row()
    size = max(ctx.table.input[1], ctx.table.input[2])
    if row is not None and row.rf is not None and row.rf < size and (ctx.table.rf_out or 0) >= size:
        yield row.name, (f"each value of {row.name}'s {row.output[1]}x{row.output[2]} output sees {row.rf}x{row.rf} px "
                         f"of the {size}x{size} input; the output layer pools or mixes them, so the output covers "
                         f"the input but no single feature saw all of it")


def _pool3(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    for row in ctx.table.layers:
        if row.kind in ("maxpool3x3", "avgpool3x3"):
            yield row.name, f"{row.kind}: a 3x3 pool keeps 4 of 36 values on a 6x6 map (9%), a 2x2 keeps 9 (25%)"
        elif "/3" in row.op:
            yield row.name, f"{row.kind} with stride 3"


def _classes(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    out = ctx.table.output
    if out is None:  # forward returns no single tensor (a tuple, a dict): nothing to check here
        return
    n = out[0] if len(out) == 1 or (len(out) == 3 and out[1] * out[2] == 1) else None
    if n is None:
        yield None, f"the output is a {out[1]}x{out[2]}x{out[0]} map, not one score per class"
    elif n != ctx.classes:
        yield None, f"the output has {n} values but the data set has {ctx.classes} classes"


def _sigmoid(ctx: CheckContext) -> Iterator[tuple[str | None, str]]:
    for row in ctx.table.layers:
        if row.kind == "sigmoid":
            yield row.name, "sigmoid squeezes activations into (0, 1) and its gradient vanishes"


RULES: list[Rule] = [
    Rule("maxpool-near-output", "warning",
         "\"When we are close to output, no need for MP.\" / \"Don't use MP near to last layer\"",
         "move the max-pool earlier (after the first block of 3x3 convolutions) and let convolutions finish the job",
         _maxpool_near_output),
    Rule("fc-2d-to-1d", "warning",
         "\"Do not use FC for converting 2D to 1D\" — \"FC uses extremely large no of parameters\" and "
         "\"In FC, spatial information is lost\"",
         "reduce the map to 1x1 with global average pooling (gap), then a 1x1 convolution to the classes",
         _fc_2d_to_1d),
    Rule("last-layer-extras", "warning",
         "\"Add BN after every layer except last layer\"; \"Add small values of dropout at every layer except the last one\"",
         "end with the last convolution (or fc) straight into softmax",
         _extras_on_last_layer),
    Rule("bias-before-bn", "info",
         "BN normalises each channel (\"Mu : Shift\"), so a bias just before it is subtracted away",
         "write bias=false on layers followed by bn (the course assignment: no bias)",
         _bias_before_bn),
    Rule("budget", "error", "\"Target is under 20K parameters\"",
         "use fewer channels (e.g. 16/32 -> 10/20), 1x1 merges after pooling, and gap instead of a big last kernel",
         _budget),
    Rule("flash-budget", "error", "a network for a small device must fit its flash: the weights, stored as int8",
         "use fewer channels, or 1x1 merges after pooling, where most weights sit (the table's 'weights int8' column)",
         _flash_budget),
    Rule("ram-budget", "error", "the activations alive at once must fit the device's RAM (the peak, int8)",
         "use fewer channels in the early, large layers, or pool earlier: the peak sits where the maps are big",
         _ram_budget),
    Rule("rf-smaller-than-input", "warning",
         "every output should see the whole object: the receptive field at the output should reach the input size",
         "add a 3x3 convolution, or a max-pool earlier, so the last map's receptive field covers the image",
         _rf_smaller_than_input),
    Rule("pooled-features-see-part", "info",
         "GAP averages features over the map: each feature still sees only its own receptive field",
         "fine when that field covers the object (MNIST digits sit in a 20x20 box); else add a 3x3 convolution",
         _pooled_features_see_part),
    Rule("pool-3x3", "warning",
         "\"On MP with 3x3 ... Reduction by 4/36 ~ 9%\"; \"Never saw MP with stride of 3.\"",
         "use 2x2 max-pooling with stride 2", _pool3),
    Rule("output-classes", "error", "\"Last layer won't be a Transition block, it'll be output layer\" with one value per class",
         "end with gap and a 1x1 convolution (or a kernel the size of the map) to as many channels as classes",
         _classes),
    Rule("sigmoid", "info", "\"Never going to use Sigmoid\"", "use ReLU (or LeakyReLU)", _sigmoid),
]


def run_checks(table: NetworkTable, budget: int | None = None, classes: int = 10,
               rules: list[Rule] | None = None, *, flash: int | None = None, ram: int | None = None) -> list[Finding]:
    """Every finding of every rule, in rule order (flash, ram: byte budgets for int8 weights and peak RAM)."""
    ctx = CheckContext(table, budget, classes, flash, ram)
    return [
        Finding(rule.id, rule.severity, layer, message, rule.why, rule.suggestion)
        for rule in (rules if rules is not None else RULES)
        for layer, message in rule.find(ctx)
    ]
