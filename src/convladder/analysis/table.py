"""The network table: per layer, sizes, receptive field, jump, parameters and MACs.

Works on a spec or on any `torch.nn.Module`, written as a Sequential or as a class whose `forward` uses
functional calls, residual adds or concatenations: the one tracer (`analysis.trace`) captures the graph of
forward, so `F.max_pool2d`, `x.view`, `x.mean((2, 3))` and `+` are rows like modules are. Rows are in
execution order; a row that does not read the row above names what it reads (`LayerRow.inputs`).

Receptive field and jump per node (`analysis.field`): the standard recurrence, the largest field at a merge
whose inputs' jumps agree, and '?' with the reason (`LayerRow.note`) wherever the field cannot be known
exactly — never a number that might be wrong.

Parameter counting follows PyTorch: BN has 2C trainable parameters (gamma, beta)
and 2C buffers (running mean, variance) — Keras shows the same BN as 4C params.
MACs count multiply-accumulates of convolutions and fully connected layers for
one image (the work `FlopCounterMode` reports as 2 FLOPs each); BN, activations
and pooling are left out.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from convladder.analysis.field import Field, propagate
from convladder.analysis.memory import MemoryPlan, plan_memory
from convladder.analysis.trace import INPUT, ModelTrace, trace_model
from convladder.errors import UserError
from convladder.spec.build import build_module
from convladder.spec.layers import NetworkSpec
from convladder.spec.size import estimate_size


@dataclass
class LayerRow:
    index: int
    name: str  # qualified module name, e.g. "conv1.0"
    block: str  # first part of the name; the spec's block
    kind: str  # conv3x3, maxpool2x2, bn, relu, gap, flatten, fc, softmax, ...
    op: str  # the notes' operation text, e.g. "(3x3x1)x10"
    input: list[int]
    output: list[int]
    rf: int | None
    jump: int | None
    params: int  # all parameters of this layer
    trainable_params: int
    buffers: int  # non-trainable state counted by Keras as params (BN running mean/var)
    macs: int  # 0 where macs_known is False
    bias: bool = False  # conv/fc with a bias term
    share: float = 0.0  # fraction of the network's parameters
    reads_from: list[str] = field(default_factory=list)  # rows (or "input") it reads, when not just the row above
    note: str = ""  # why RF/jump show '?', or a remark (shared weights, a field per axis)
    rf_hw: list[int] | None = None  # receptive field (height, width)
    jump_hw: list[int] | None = None
    macs_known: bool = True  # False: the layer computes in a way convladder does not count (shown as '?')
    rf_range: list[list[int]] | None = None  # per axis [smallest, largest] where the field varies by position
    jump_ratio: list[str] | None = None  # per axis, a jump that is a fraction of a pixel ('1/2' after upsampling)
    weight_bytes: int = 0  # its parameters at fp32 (analysis.memory)
    weight_bytes_int8: int = 0  # the same stored as static int8 export stores them
    live_bytes: int | None = None  # activation bytes alive at fp32 while it runs (int8: a quarter)
    shared_with: str = ""  # the earlier row whose weights this call reuses (its params are counted there)

    @property
    def rf_text(self) -> str:
        """'28', '28x32' for a field that differs per axis, '44-48' where it varies by position, or '?'."""
        if self.rf is not None:
            return str(self.rf)
        if self.rf_range:
            return range_text(self.rf_range)
        return f"{self.rf_hw[0]}x{self.rf_hw[1]}" if self.rf_hw else "?"

    @property
    def jump_text(self) -> str:
        if self.jump is not None:
            return str(self.jump)
        if self.jump_ratio:
            return self.jump_ratio[0] if self.jump_ratio[0] == self.jump_ratio[1] else "x".join(self.jump_ratio)
        return f"{self.jump_hw[0]}x{self.jump_hw[1]}" if self.jump_hw else "?"


def range_text(extents: list[list[int]]) -> str:
    """A field that varies by position, [smallest, largest] per axis, as the rows print it: '44-48', '3-4x5'."""
    parts = [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in extents]
    return parts[0] if parts[0] == parts[1] else f"{parts[0]}x{parts[1]}"


@dataclass
class NetworkTable:
    input: list[int]
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    total_buffers: int
    total_macs: int
    rf_out: int | None
    spec: NetworkSpec | None = field(default=None, repr=False)
    block_roles: dict[str, str] = field(default_factory=dict)
    notice: str = ""  # how the network was read when it could not be read fully (the hooks fallback)
    rf_note: str = ""  # why the output's field is unknown
    multipath: bool = False  # some row reads from something other than the row above
    output_shape: list[int] | None = None  # what forward returns (None: not one tensor, or not known)
    macs_uncounted: list[str] = field(default_factory=list)  # kinds of layers whose MACs total_macs leaves out
    output_row: str | None = None  # the row forward returns (None: not one traced tensor, or not known)
    findings: list[Any] | None = None  # design checks (analysis.checks.Finding) shown with the table; None: not run
    input_note: str = ""  # how the given input shape was read, e.g. torchinfo's (1, 1, 28, 28) as one 28x28x1 image
    memory: MemoryPlan | None = field(default=None, repr=False)  # weight bytes and peak activation memory
    peak_row: str | None = None  # the row during which peak activation memory is alive
    rf_out_range: list[list[int]] | None = None  # per axis [smallest, largest] where the output's field varies

    @property
    def rf_out_text(self) -> str:
        """The output's field as the rows print theirs: '28', '3-4' where it varies by position, or '?'."""
        if self.rf_out is not None:
            return str(self.rf_out)
        return range_text(self.rf_out_range) if self.rf_out_range else "?"

    def __repr__(self) -> str:
        from convladder.analysis.render import table_text

        return table_text(self, self.findings)

    def _repr_html_(self) -> str:
        from convladder.analysis.render import table_html

        return table_html(self, self.findings)

    def to_markdown(self) -> str:
        """The table as GitHub Markdown (a pipe table, the totals and the design checks below it)."""
        from convladder.analysis.render import table_markdown

        return table_markdown(self, self.findings)

    def to_csv(self) -> str:
        """One CSV header row and one row per layer, numbers without thousands separators (as `to_dict`)."""
        from convladder.analysis.render import table_csv

        return table_csv(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "layers": [_row_dict(row) for row in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_buffers": self.total_buffers,
            "total_macs": self.total_macs,
            "rf_out": self.rf_out,
            **({"rf_out_range": self.rf_out_range} if self.rf_out_range else {}),
            "rf_note": self.rf_note,
            "block_roles": self.block_roles,
            "notice": self.notice,
            "multipath": self.multipath,
            "output": self.output_shape,
            "macs_uncounted": self.macs_uncounted,
            **({"input_note": self.input_note} if self.input_note else {}),
            **({"memory": {**self.memory.to_dict(), "peak_row": self.peak_row}} if self.memory is not None else {}),
            **({"findings": [asdict(f) for f in self.findings]} if self.findings is not None else {}),
        }

    @property
    def output(self) -> list[int] | None:
        """The shape forward returns (not the last row run: a kept visualisation may run after the head)."""
        return self.output_shape

    def row_reads(self) -> dict[str, list[str]]:
        """Per row, what it reads: its `reads_from`, or else the row above (INPUT for the first row)."""
        reads: dict[str, list[str]] = {}
        above = INPUT
        for row in self.layers:
            reads[row.name] = row.reads_from or [above]  # an empty reads_from means the row above
            above = row.name
        return reads

    def output_rows(self) -> list[LayerRow] | None:
        """The rows on the data path to forward's return value (the returned row and its ancestors), in
        execution order; None where the returned row is not known (a tuple; the hooks fallback)."""
        if self.output_row is None:
            return None
        reads = self.row_reads()
        on_path = {self.output_row}
        for row in reversed(self.layers):  # a row runs after what it reads: one backward sweep finds every ancestor
            if row.name in on_path:
                on_path.update(reads[row.name])
        return [row for row in self.layers if row.name in on_path]

    def reduction_row(self) -> LayerRow | None:
        """The layer whose field the output really has: where the map becomes one value per channel.

        A convolution that reduces the map to 1x1 (the lesson's 7x7 kernel) sees what its RF says;
        a parameter-free global reduction (gap, flatten + fc) only averages or mixes features that
        each saw the RF of the layer it reads. Only rows on the path to forward's return value count, so a
        side head's global pool, or a kept map run just before the pool, does not stand for the network's.
        """
        path = self.output_rows()
        if path is None:  # which row forward returns is not known: read the rows as a sequential network
            return self._reduction_in_order()
        on_path = {row.name: row for row in path}
        reads = self.row_reads()
        for row in path:
            if _one_position(row):
                if row.kind.startswith("conv"):
                    return row
                read = [on_path[name] for name in reads[row.name] if name in on_path]
                return max(read, key=lambda r: r.index, default=None)  # (a merge reads several: the latest run)
        return path[-1] if path else None

    def _reduction_in_order(self) -> LayerRow | None:
        """`reduction_row` in execution order, each row reading the row above."""
        previous = None
        for row in self.layers:
            if _one_position(row):
                return row if row.kind.startswith("conv") else previous
            previous = row
        return previous


def _row_dict(row: LayerRow) -> dict[str, Any]:
    """A row as JSON: `shared_with` only where the row reuses weights (the rows of other networks stay as they were)."""
    out = asdict(row)
    if not out["shared_with"]:
        del out["shared_with"]
    return out


def _one_position(row: LayerRow) -> bool:
    """The row's output is one value per channel: a vector, or a 1x1 map."""
    out = row.output  # (an output of another rank, e.g. a sequence's [L, D], is neither: no IndexError)
    return len(out) == 1 or (len(out) >= 3 and out[1] * out[2] == 1)


def _pair_value(pair: tuple[int, int] | None) -> int | None:
    return pair[0] if pair is not None and pair[0] == pair[1] else None


# Parameters + one image's activations (values) up to which a spec's table is built and traced on the CPU
# (16 MB of float32). On the meta device F.relu & co. run through torch._refs, whose wrapper imports
# torch._dynamo (~1.6 s of CPU, more than the rest of `summary tiny8k`); above this size the meta device keeps
# VGG-sized tables free of allocations.
CPU_TABLE_VALUES = 4_000_000


def _spec_module(spec: NetworkSpec) -> tuple[nn.Module, bool]:
    """(the spec's network for its table, whether it is a small one on the CPU). Only shapes and counts are read
    from it; a CPU build's initialisation draws from a forked generator, so the caller's RNG stays as it was."""
    try:
        size = estimate_size(spec)
        small = size.params + size.activations <= CPU_TABLE_VALUES
    except UserError:  # build_module says what is wrong, in its own order of checks
        small = False
    if not small:
        with torch.device("meta"):
            return build_module(spec), False
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        return build_module(spec), True


def summarize(model_or_spec: nn.Module | NetworkSpec, input_shape: tuple[int, int, int] | None = None) -> NetworkTable:
    """Build the network table. `input_shape` is (C, H, W); a spec brings its own by default."""
    spec = model_or_spec if isinstance(model_or_spec, NetworkSpec) else getattr(model_or_spec, "spec", None)
    small = False
    if isinstance(model_or_spec, NetworkSpec):
        if input_shape:
            spec = spec.with_input(tuple(input_shape))
        input_shape = spec.input_shape
        model, small = _spec_module(spec)
    else:
        model = model_or_spec
        if not isinstance(model, nn.Module):
            raise UserError(f"summarize needs a network spec or an nn.Module, not {type(model).__name__}")
        if input_shape is None:
            raise UserError("summarize needs input_shape=(C, H, W) for a plain nn.Module")
    threads = torch.get_num_threads()
    if small:  # one image through a small network: a second thread only spins (0.2-0.7 s vs 0.02 s, busy 2 cores)
        torch.set_num_threads(1)
    try:
        trace = trace_model(model, tuple(input_shape))
    finally:
        if small:
            torch.set_num_threads(threads)
    fields = propagate(trace)
    rows = _rows(trace, fields)
    total = sum(p.numel() for p in model.parameters())
    for row in rows:
        row.share = row.params / total if total else 0.0
    roles = {}
    if spec is not None:
        for number, block in enumerate(spec.blocks):
            roles[block.name or f"block{number + 1}"] = block.resolved_role
    rf_out, rf_note, rf_out_range = _output_field(trace, fields, rows)
    plan = plan_memory(trace)
    for row in rows:
        found = plan.nodes.get(row.name)
        if found is not None:
            row.weight_bytes, row.weight_bytes_int8, row.live_bytes = found.weights_fp32, found.weights_int8, found.live_fp32
    uncounted = list(dict.fromkeys(row.kind for row in rows if not row.macs_known))
    return NetworkTable(
        input=list(input_shape),
        layers=rows,
        total_params=total,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_buffers=sum(row.buffers for row in rows),
        total_macs=sum(row.macs for row in rows),
        rf_out=rf_out,
        spec=spec,
        block_roles=roles,
        notice=trace.notice,
        rf_note=rf_note,
        multipath=any(row.reads_from for row in rows),
        output_shape=trace.output,
        macs_uncounted=uncounted,
        output_row=_output_row(trace, rows),
        memory=plan,
        peak_row=_peak_row(trace, rows, plan.peak_node),
        rf_out_range=rf_out_range,
    )


def _peak_row(trace: ModelTrace, rows: list[LayerRow], node_name: str | None) -> str | None:
    """The row standing for the node where the peak sits: itself, or the last row run before a hidden node."""
    names = {row.name for row in rows}
    found = None
    for node in trace.nodes:
        if node.name in names:
            found = node.name
        if node.name == node_name:
            return found
    return None


def _output_field(trace: ModelTrace, fields: dict[str, Field],
                  rows: list[LayerRow]) -> tuple[int | None, str, list[list[int]] | None]:
    """(RF, why it is not one number, its range where it varies by position) of what forward returns, which need
    not be the last row run."""
    if trace.output_name is None:
        return None, trace.output_note or "the output is not one traced tensor", None
    row = next((r for r in rows if r.name == trace.output_name), None)
    if row is not None:
        if row.rf is None and row.rf_range:  # a UNet's output map: the range, not a bare '?'
            return None, "field varies by position: smallest-largest", row.rf_range
        return row.rf, row.note if row.rf is None else "", None
    f = fields[trace.output_name]  # a hidden node (a cast, an index) or the input itself
    ext = f.extents()
    if _pair_value(f.r) is not None:
        return _pair_value(f.r), "", None
    if ext is not None and f.r is None:
        return None, "field varies by position: smallest-largest", [list(e) for e in ext]
    return None, f.reason or (f"field differs per axis: {f.r[0]} high, {f.r[1]} wide" if f.r else "unknown"), None


def _output_row(trace: ModelTrace, rows: list[LayerRow]) -> str | None:
    """The row forward returns; a hidden node (a cast, an index) stands for the one row it reads, as in `_rows`."""
    names = {row.name for row in rows}
    name = trace.output_name
    while name is not None and name not in names:
        node = next((n for n in trace.nodes if n.name == name), None)  # None: the input itself
        sources = list(dict.fromkeys(node.inputs)) if node is not None else []
        name = sources[0] if len(sources) == 1 else None
    return name


def _rows(trace: ModelTrace, fields: dict[str, Field]) -> list[LayerRow]:
    """Visible nodes become rows; a hidden node (a cast, an index) hands its row's name on to its readers."""
    alias: dict[str, str] = {INPUT: INPUT}
    rows: list[LayerRow] = []
    previous = INPUT
    for node in trace.nodes:
        sources = list(dict.fromkeys(alias.get(i, i) for i in node.inputs))
        if not node.visible:
            alias[node.name] = sources[0] if len(sources) == 1 else node.name
            if len(sources) == 1:
                continue
        alias.setdefault(node.name, node.name)
        f = fields[node.name]
        note = f.reason
        if node.shared_with:
            note = (note + "; " if note else "") + f"same weights as {node.shared_with}"
        if node.tied_with:
            note = (note + "; " if note else "") + f"some weights shared with {node.tied_with}: counted there"
        if not node.macs_known:
            note = (note + "; " if note else "") + f"MACs of {node.kind} are not counted"
        if node.geometry.get("statistics"):  # GroupNorm/LayerNorm/InstanceNorm: per-image statistics
            note = (note + "; " if note else "") + ("normalised by statistics over the whole map; the field counts "
                                                    "where values come from, as for BN")
        if f.r is not None and f.r[0] != f.r[1]:
            note = (note + "; " if note else "") + f"field differs per axis: {f.r[0]} high, {f.r[1]} wide"
        extents = f.extents() if f.r is None else None  # upsampling: neighbouring positions see different sizes
        if extents is not None:
            note = (note + "; " if note else "") + "field varies by position (smallest-largest)"
        # the scope names a block's later application ('block#2', trace._application); a top-level module's
        # later call is its own row name ('conv2#2')
        block = (node.scope or node.name).split(".")[0] if node.module is not None or node.scope else ""
        rows.append(LayerRow(
            index=len(rows), name=node.name, block=block, kind=node.kind, op=node.op, input=node.input,
            output=node.output or [], rf=_pair_value(f.r), jump=_pair_value(f.j), params=node.params,
            trainable_params=node.trainable, buffers=node.buffers, macs=node.macs, bias=node.bias,
            reads_from=[] if sources == [previous] else sources, note=note,
            rf_hw=list(f.r) if f.r is not None else None, jump_hw=list(f.j) if f.j is not None else None,
            macs_known=node.macs_known, shared_with=node.shared_with,
            rf_range=[list(e) for e in extents] if extents is not None else None,
            jump_ratio=[str(s) for s in f.step] if f.j is None and f.step is not None and f.known else None,
        ))
        previous = node.name
    return rows


# -- the one verdict: what `summary`/`check` and `convladder.summarize` show -------------------------------

DEFAULT_INPUT = (1, 28, 28)


def image_shape(shape: Any, what: str = "input_shape") -> tuple[tuple[int, int, int], str]:
    """(C, H, W) and a note on how `shape` was read; UserError for a shape that is not one image's.

    torchinfo's (N, C, H, W) is read as one image of CxHxW (the table is per image), with a note saying so;
    (H, W) and anything else not three positive whole numbers is refused, naming the (C, H, W) form.
    """
    dims = _whole_numbers(shape)
    example = "e.g. (1, 28, 28) for grey 28x28 images or (3, 32, 32) for colour 32x32 ones"
    if dims is None or len(dims) not in (3, 4) or min(dims, default=0) < 1:
        hint = ""
        if dims is not None and len(dims) == 2 and min(dims) >= 1:
            hint = f" — for {dims[0]}x{dims[1]} images write (1, {dims[0]}, {dims[1]}) (grey) or (3, {dims[0]}, {dims[1]}) (colour)"
        raise UserError(f"{what} {shape!r} is not the size of one image — write (C, H, W): channels, height, "
                        f"width{hint or ', ' + example}")
    if len(dims) == 3:
        return (dims[0], dims[1], dims[2]), ""
    n, c, h, w = dims
    batch = "one image" if n == 1 else f"one image (the table counts per image, not the batch of {n})"
    return (c, h, w), (f"{what} {tuple(dims)} read as (N, C, H, W), torchinfo's form: {batch} of {h}x{w}x{c} "
                       f"(HxWxC); convladder writes it (C, H, W) = {(c, h, w)}")


def _whole_numbers(shape: Any) -> list[int] | None:
    """The entries of a tuple/list/torch.Size of whole numbers, or None."""
    if isinstance(shape, (str, bytes, torch.Tensor)) or not hasattr(shape, "__len__"):
        return None
    out = []
    for v in shape:
        if isinstance(v, bool):
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        try:
            out.append(operator.index(v))  # ints, numpy and torch integer scalars
        except TypeError:
            return None
    return out


def check_module_output(module: nn.Module, input_shape: tuple[int, int, int], where: str) -> None:
    """UserError unless the network gives one score vector per image on a batch of 2 (what training needs).

    The same probe and message as when an own class is loaded (`spec.own`): a network whose view(-1, 10)
    reads a map that is not 1x1 passes one image but returns (72, 10) for two.
    """
    from convladder.spec.own import _probe, check_output, person_class

    param = next(module.parameters(), None)
    if param is not None and param.is_meta:  # no values to run (a spec table's meta module)
        return
    own_logits = callable(getattr(person_class(module), "logits", None))  # as `adopt` checks: logits when defined
    check_output(_probe(module, module.logits if own_logits else module, input_shape, where), None,
                 f"{where}.logits" if own_logits else where)


def network_verdict(model_or_spec: nn.Module | NetworkSpec, input_shape: Any = None, *, classes: int = 10,
                    budget: int | None = None, checks: bool = True, where: str | None = None,
                    flash: int | None = None, ram: int | None = None) -> NetworkTable:
    """The network table with the one verdict both the CLI (`summary`, `check`) and `convladder.summarize` give.

    The input is read by `image_shape`; a module (not a spec) is first run on 2 images and refused unless it
    returns one score vector per image; the design checks (class count, budget, the notes' rules) are attached
    as `table.findings`, which its text and HTML forms show (checks=False: not run, not shown).
    """
    shape, note = image_shape(input_shape) if input_shape is not None else (None, "")
    if isinstance(model_or_spec, nn.Module):
        shape = shape or DEFAULT_INPUT
        if not isinstance(getattr(model_or_spec, "spec", None), NetworkSpec):  # a spec's network: checks judge it
            check_module_output(model_or_spec, shape, where or type(model_or_spec).__name__)
    table = summarize(model_or_spec, shape)
    table.input_note = note
    if checks:
        from convladder.analysis.checks import run_checks  # (checks reads this module: imported when used)

        table.findings = run_checks(table, budget=budget, classes=classes, flash=flash, ram=ram)
    return table
