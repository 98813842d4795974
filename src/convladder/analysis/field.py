"""Receptive field and jump of every node of a traced network, multi-path included.

The field of a position is the box of input pixels its value depends on. Along each axis (height, width)
every position's window is kept exactly, as `[lo, hi)` in input pixels; padding counts as if the map went on
(the field of a unit not clipped by the border: a 3x3 convolution sees 3 at the corner too). A window layer
applies the standard recurrence (Araujo, Norris & Sim, Distill 2019: k' = d(k-1)+1, r_out = r_in + (k'-1)j_in,
j_out = j_in s) position by position, so upsampling (transposed convolutions, `F.interpolate` nearest or
bilinear by a whole factor), where neighbouring positions can see fields of different sizes, is exact too:
the windows repeat with a period of a few positions (`Axis`), the jump is a fraction (1/2 after a 2x
upsampling of the input's grid), and the table prints the range of sizes ("44-48") where they differ.

A global reduction — global pooling, a mean over height and width, a dense layer over a flattened map, a
softmax over the positions, a pool or convolution whose one window covers the whole map (`AvgPool2d(14)` on
14x14) — sees the union of every position's field clipped to the image (padding is not input). That box
(`Field.glob`) stays with everything computed from it: after a squeeze-excite gate or a global-context add,
each position sees the whole image and its own window, clipped to the image, so later windows do not grow
past it. BN, activations, dropout, softmax over channels, casts, 1x1 convolutions and reshapes that only
move channels (a channel shuffle) leave the field as it is. At a merge (add, multiply, concatenate) each
position sees the union of its inputs' windows, which needs equal jumps; inputs of one position that come
from a global reduction broadcast. Anything else — different jumps at a merge, a reshape that moves values
between positions, an operation the analysis does not know, a size that does not follow from the layer's
settings — gives an unknown field with the reason, and everything computed from it is unknown too. A wrong
number is worse than a '?'.

This module is the entry point (`propagate`); the data (`Axis`, `Field`, window arithmetic) live in
`analysis.fieldaxis`, the rule of each kind of node in `analysis.fieldops`.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

from convladder.analysis.fieldaxis import Axis, Field, unknown
from convladder.analysis.fieldops import (adaptive_field, dense_field, merge_fields, pad_field, reduce_field,
                                          reshape_field, slice_field, softmax_field, spatial, upsample_field,
                                          window_field)
from convladder.analysis.ops import expand_index
from convladder.analysis.trace import INPUT, ModelTrace, TraceNode

__all__ = ["Axis", "Field", "propagate", "unknown"]


def propagate(trace: ModelTrace) -> dict[str, Field]:
    """The field of every node of `trace`, by name (INPUT included)."""
    image = spatial(trace.input_shape) or (1, 1)
    pixel = Axis(((0, 1),), 1)
    fields: dict[str, Field] = {INPUT: Field((pixel, pixel), (Fraction(1), Fraction(1)),
                                             "map" if len(trace.input_shape) == 3 else "vector", image, image=image)}
    for node in trace.nodes:
        fields[node.name] = _node_field(node, [fields.get(i, unknown(f"{i} was not traced")) for i in node.inputs])
    return fields


def _node_field(node: TraceNode, inputs: list[Field]) -> Field:
    if node.unseen_input:
        return unknown(f"{node.name}: its input comes from computation the hooks could not see")
    if node.category == "merge":
        return merge_fields(inputs, node)
    if not inputs:
        return unknown(f"{node.name}: reads no traced tensor")
    field = inputs[0]
    if not field.known:
        return field
    if node.category == "select" and node.geometry.get("of_tensor") and field.layout == "map" and len(node.input) == 3:
        items = expand_index(node.geometry.get("index"), 4)
        if items is not None:
            return slice_field(field, node, items)
    if node.category == "pointwise" or node.category == "select":
        if node.category == "pointwise" and spatial(node.input) != spatial(node.output):
            return unknown(f"{node.name}: {node.kind} changed the size from {node.input} to {node.output}")
        if node.category == "select" and len(node.input) != len(node.output or []):
            return reshape_field(field, node)  # x[:, :, None, None] and the like: the same rules as a reshape
        return replace(field, grid=spatial(node.output) or field.grid)
    handlers = {"pad": pad_field, "window": window_field, "adaptive": adaptive_field, "reduce": reduce_field, "reshape": reshape_field,
                "dense": dense_field, "softmax": softmax_field, "upsample": upsample_field}
    handler = handlers.get(node.category)
    if handler is None:
        return unknown(node.geometry.get("reason") or f"{node.name}: {node.kind} is not analysed for the receptive field")
    return handler(field, node)
