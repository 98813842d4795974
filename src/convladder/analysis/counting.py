"""Parameters, buffers and MACs of each traced call.

Parameters and buffers are counted once per tensor, at the first call that uses them: a module called twice
or a weight tied between two modules (`b.weight = a.weight`) is counted where it is first used, and later
calls name that row. Compute is counted on every call: a module applied three times does three times the
work. MACs follow `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per MAC) for convolutions (1D, 2D,
3D, transposed), dense layers and matrix products; a call that computes in a way this module has no exact
formula for (attention, bilinear layers, recurrent layers, einsum, ...) is marked `macs_known = False`, so
the table shows '?' on its row and a partial total, never a number that leaves work out silently.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from convladder.analysis.ops import DROPOUT_TYPES, NORM_TYPES, _arg
from convladder.spec import kinds

if TYPE_CHECKING:
    from convladder.analysis.trace import TraceNode

# Leaf modules with parameters that do no multiply-accumulate work FlopCounterMode counts (with the
# registry's activations, read when counting: spec/kinds.py).
NO_MAC_TYPES = (*NORM_TYPES, *DROPOUT_TYPES, nn.Embedding)
CONV_NAMES = {"conv1d", "conv2d", "conv3d"}
CONV_TRANSPOSE_NAMES = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
# (index of the left operand, index of the right operand) of matrix products counted exactly
MATMUL_NAMES = {"matmul": (0, 1), "mm": (0, 1), "bmm": (0, 1), "addmm": (1, 2), "baddbmm": (1, 2)}
# Functions that do multiply-accumulate work without an exact formula here: their rows show '?'.
UNCOUNTED_NAMES = {"einsum", "bilinear", "addbmm", "addmv", "addr", "mv", "dot", "vdot", "inner", "outer", "ger",
                   "kron", "tensordot", "chain_matmul", "multi_dot", "scaled_dot_product_attention",
                   "multi_head_attention_forward", "lstm", "gru", "rnn_tanh", "rnn_relu", "conv_tbc"}


class Counted:
    """Which parameters and buffers (by identity) and which modules were counted, and at which row."""

    def __init__(self) -> None:
        self.modules: dict[int, str] = {}
        self.tensors: dict[int, str] = {}

    def take(self, node: TraceNode, tensors: list[tuple[torch.Tensor, bool]]) -> None:
        """Count each (tensor, is_buffer) on `node` unless counted before, and name the row that counted the rest:
        `shared_with` when all of them were counted there, `tied_with` when some were."""
        earlier = self._take(node, tensors)
        if earlier and not any(id(t) in self.tensors and self.tensors[id(t)] == node.name for t, _ in tensors):
            node.shared_with = earlier
        else:
            node.tied_with = earlier

    def _take(self, node: TraceNode, tensors: list[tuple[torch.Tensor, bool]]) -> str:
        earlier = ""
        for t, is_buffer in tensors:
            if id(t) in self.tensors:
                earlier = earlier or self.tensors[id(t)]
                continue
            self.tensors[id(t)] = node.name
            if is_buffer:
                node.buffers += t.numel()
            else:
                node.params += t.numel()
                node.trainable += t.numel() if t.requires_grad else 0
        return earlier


def module_tensors(module: nn.Module) -> list[tuple[torch.Tensor, bool]]:
    """The parameters and buffers (running mean/var, not the batch counter) of one leaf module."""
    return ([(p, False) for p in module.parameters()]
            + [(b, True) for name, b in module.named_buffers() if not name.endswith("num_batches_tracked")])


def count_module(node: TraceNode, module: nn.Module, counted: Counted) -> None:
    """Parameters of a module call: all of them at its first call, none at a later one (shared_with says so)."""
    if id(module) in counted.modules:
        if module_tensors(module):  # a ReLU called twice reuses no weights: nothing to name
            node.shared_with = counted.modules[id(module)]
        return
    counted.modules[id(module)] = node.name
    # A torch.nn leaf (e.g. a transformer layer) uses all of its parameters in this one call.
    counted.take(node, module_tensors(module))


def _conv_macs(out: list[int] | None, weight: Any) -> int | None:
    if out is None or not isinstance(weight, torch.Tensor) or weight.dim() != len(out) + 1:
        return None
    return math.prod(out) * math.prod(weight.shape[1:])  # each output value: in_per_group x kernel products


def _transpose_macs(inp: list[int], weight: Any) -> int | None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != len(inp) + 1:
        return None
    # each input value is spread over out_per_group x kernel outputs (weight: in, out/groups, k...)
    return math.prod(inp) * math.prod(weight.shape[1:])


def _dense_macs(out: list[int] | None, weight: Any) -> int | None:
    if out is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    return math.prod(out[:-1]) * weight.shape[0] * weight.shape[1]


def module_macs(node: TraceNode, module: nn.Module) -> int | None:
    """MACs of one call of a leaf module for one image; None when this module's work has no formula here."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return _transpose_macs(node.input, weight)
        return _conv_macs(node.output, weight)
    if isinstance(module, nn.Linear):
        return _dense_macs(node.output, weight)
    if (isinstance(module, NO_MAC_TYPES) or isinstance(module, kinds.torch_types("activation"))
            or next(module.parameters(), None) is None):
        return 0
    return None  # a leaf with weights whose work is not modelled (attention, bilinear, recurrent layers, ...)


def function_macs(node: TraceNode, fxnode: fx.Node, name: str, values: dict[fx.Node, Any]) -> int | None:
    """MACs of one functional call or tensor method (run on a batch of one); None when not modelled."""
    if name in CONV_NAMES:
        return _conv_macs(node.output, values.get(_arg(fxnode, 1, "weight")))
    if name in CONV_TRANSPOSE_NAMES:
        return _transpose_macs(node.input, values.get(_arg(fxnode, 1, "weight")))
    if name == "linear":
        return _dense_macs(node.output, values.get(_arg(fxnode, 1, "weight")))
    if name in MATMUL_NAMES:
        left, right = (values.get(a) if isinstance(a, fx.Node) else a
                       for a in (fxnode.args[i] if len(fxnode.args) > i else None for i in MATMUL_NAMES[name]))
        result = values.get(fxnode)
        if not all(isinstance(t, torch.Tensor) for t in (left, right, result)):
            return None
        # every value of the product sums over the shared axis (the trace runs on a batch of one image)
        return result.numel() * left.shape[-1]  # type: ignore[union-attr]
    return None if name in UNCOUNTED_NAMES else 0
