"""Bytes a network needs on a small device: its weights (flash) at fp32 and int8, and its peak activation memory (RAM).

Weights. fp32: every parameter at 4 bytes (a BatchNorm's running mean and variance fold into its scale and shift
at inference, so BN needs 2C numbers, the count of its parameters). int8, as onnxruntime's and TFLite's static
quantization store a network: the weight tensor of a convolution or fully connected layer at 1 byte per value plus
one fp32 scale per output channel (per-channel, symmetric: zero point 0); its bias as int32 (4 bytes); every other
parameter (BN's scale and shift, PReLU's slopes, norm layers) at 4 bytes. A BN that the exporter folds into a
convolution costs less than that, so int8 bytes are an upper bound for such networks.

Peak activation memory: liveness on the traced graph (`analysis.trace.ModelTrace`), counted the way a static
planner such as TFLite-micro's greedy planner counts: every operation's output is its own buffer, alive from
the operation that writes it to the last operation that reads it; the network's input is alive until its last
reader and forward's result to the end. In-place activations (`ReLU(inplace=True)`, `x += y`) are counted as
separate buffers, as such planners do for the graph they are given (torch would reuse the memory). Views take no
memory of their own: reshape/view/flatten/squeeze, dropout and identity at inference, casts and copies the table
hides, and aliases of tensors changed in place read the buffer they come from. So a chain's peak is the largest
input + output of one layer, and a residual add keeps its input alive across the branch. At int8 every
activation takes 1 byte per value (a fully int8 graph), at fp32 4. Weights and the planner's scratch space
(im2col buffers) are not counted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from convladder.analysis.trace import INPUT, ModelTrace, TraceNode

FP32, INT8 = 4, 1  # bytes per value
# Rows that give their input back as it is at inference: their output is the buffer they read.
VIEW_KINDS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "identity", "dropout"}
QUANTISED_KINDS = ("conv", "fc")  # whose weight tensor int8 export stores at 1 byte per value


@dataclass
class NodeBytes:
    """Bytes of one traced operation."""

    weights_fp32: int = 0
    weights_int8: int = 0
    live_fp32: int | None = None  # activation bytes alive while it runs (None: not known)


@dataclass
class MemoryPlan:
    """What `plan_memory` found: totals, the peak and where it sits, per-node bytes."""

    weights_fp32: int
    weights_int8: int
    peak_fp32: int
    peak_int8: int
    peak_node: str | None  # the operation during which the most activation memory is alive
    peak_tensors: list[str] = field(default_factory=list)  # the buffers alive then (names of what wrote them)
    note: str = ""  # why the peak is a lower bound or read as a chain ('' when exact under the rules above)
    nodes: dict[str, NodeBytes] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"weights_fp32_bytes": self.weights_fp32, "weights_int8_bytes": self.weights_int8,
                "peak_ram_fp32_bytes": self.peak_fp32, "peak_ram_int8_bytes": self.peak_int8,
                "peak_at": self.peak_node, "peak_tensors": self.peak_tensors, "note": self.note}


def weight_bytes(node: TraceNode) -> tuple[int, int]:
    """(fp32, int8) bytes of the parameters this call counted (0 for a call reusing weights counted earlier)."""
    if node.params <= 0:
        return 0, 0
    fp32 = node.params * FP32
    if not node.kind.startswith(QUANTISED_KINDS) or not node.output:
        return fp32, fp32
    channels = node.output[0] if len(node.output) == 3 else node.output[-1]
    module_weight = getattr(node.module, "weight", None)
    if module_weight is not None and module_weight.numel() <= node.params:
        weight = module_weight.numel()
    else:  # a functional call: what is not the bias (one value per output channel) is the weight
        weight = node.params - (channels if node.bias else 0)
    others = node.params - weight  # the bias (int32) and anything else counted here
    return fp32, weight * INT8 + others * FP32 + channels * FP32  # + one fp32 scale per output channel


def _values(shape: list[int] | None) -> int | None:
    return math.prod(shape) if shape else None


def _is_view(node: TraceNode) -> bool:
    return not node.visible or node.kind in VIEW_KINDS


def plan_memory(trace: ModelTrace) -> MemoryPlan:
    """Weight bytes per node and in total, and the peak of activation bytes alive at once (see the module doc)."""
    nodes = trace.nodes
    buffer_of: dict[str, str] = {INPUT: INPUT}  # a node's result -> the buffer that holds it
    size: dict[str, int | None] = {INPUT: _values(trace.input_shape)}
    born: dict[str, int] = {INPUT: -1}
    last: dict[str, int] = {INPUT: -1}
    unknown: list[str] = []
    for step, node in enumerate(nodes):
        reads = [buffer_of.get(name, name) for name in node.inputs]
        for buf in reads:
            if buf in last:
                last[buf] = max(last[buf], step)
        if _is_view(node) and len(set(reads)) == 1:
            buffer_of[node.name] = reads[0]
            continue
        buffer_of[node.name] = node.name
        size[node.name] = _values(node.output)
        born[node.name] = last[node.name] = step
        if size[node.name] is None:
            unknown.append(node.name)
    if trace.output_name is not None:  # what forward returns is handed back: alive to the end
        last[buffer_of.get(trace.output_name, trace.output_name)] = len(nodes)
    per_node: dict[str, NodeBytes] = {}
    peak, peak_step, peak_bufs = -1, -1, []
    for step, node in enumerate(nodes):
        alive = [b for b in born if born[b] <= step <= last[b]]
        live = sum(size[b] or 0 for b in alive) * FP32
        fp32, int8 = weight_bytes(node)
        per_node[node.name] = NodeBytes(fp32, int8, live)
        if live > peak:
            peak, peak_step, peak_bufs = live, step, alive
    if not nodes:
        peak, peak_bufs = (size[INPUT] or 0) * FP32, [INPUT]
    notes = []
    if unknown:
        notes.append(f"{len(unknown)} result(s) of unknown size left out ({', '.join(unknown[:3])}): a lower bound")
    if trace.method != "fx":
        notes.append("read as a chain (the hooks fallback sees no branches)")
    values = peak // FP32
    return MemoryPlan(
        weights_fp32=sum(b.weights_fp32 for b in per_node.values()),
        weights_int8=sum(b.weights_int8 for b in per_node.values()),
        peak_fp32=values * FP32, peak_int8=values * INT8,
        peak_node=nodes[peak_step].name if nodes else None, peak_tensors=peak_bufs,
        note="; ".join(notes), nodes=per_node)


def format_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB in bytes ('288 B'); binary units (KiB = 1024 bytes)."""
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    if n < 1024 ** 2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 ** 2:.1f} MiB"
