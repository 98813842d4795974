"""What each operation of a traced forward is: kind, category, the notes' operation text, its geometry.

The tracer (`analysis.trace`) records nodes; this module names them. Functions and tensor methods are known
by name, because fx records some functional calls (F.max_pool2d) through dispatch wrappers.
Categories, read by `analysis.field`: window (conv, pool), adaptive, reduce, pointwise, merge, reshape,
dense, softmax, select, pad, upsample (transposed convolutions, interpolation), unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from convladder.spec import kinds
from convladder.spec.build import ClassProbs

if TYPE_CHECKING:
    from convladder.analysis.trace import TraceNode

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout)

# Functions and tensor methods by name (fx records F.max_pool2d as a dispatch wrapper; names are stable).
# Activations, modules and functions, are the registry's (spec/kinds.py: kinds.torch_types(), function_names()).
NORM_NAMES = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "local_response_norm", "normalize"}
DROPOUT_NAMES = {"dropout", "dropout1d", "dropout2d", "alpha_dropout", "feature_alpha_dropout"}
# Value changes at each position alone: the field and the size stay as they are.
POINTWISE_NAMES = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "clamp", "clamp_", "clip", "pow", "sign",
                   "sin", "cos", "floor", "ceil", "round", "reciprocal", "nan_to_num", "scale", "mul_scalar"}
# Copies and casts: no row of their own, the field passes through.
QUIET_NAMES = {"contiguous", "clone", "detach", "float", "half", "bfloat16", "double", "to", "type", "type_as",
               "requires_grad_", "cpu", "cuda"}
MERGE_NAMES = {"add", "add_", "iadd", "sub", "sub_", "mul", "mul_", "imul", "truediv", "div", "div_", "maximum",
               "minimum", "where"}
RESHAPE_NAMES = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
REDUCE_NAMES = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var", "norm"}
NON_TENSOR_NAMES = {"size", "dim", "numel", "getattr", "len"}


def _fn_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    name = getattr(target, "__name__", str(target))
    if name == "fn" and "pool" in node.name:  # F.max_pool2d's boolean_dispatch wrapper
        name = node.name.rstrip("0123456789").rstrip("_")
    return name.lstrip("_").replace("_with_indices", "")


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _shape(value: Any) -> list[int] | None:
    return list(value.shape[1:]) if isinstance(value, torch.Tensor) else None


def _window_kind(prefix: str, k: tuple[int, int]) -> str:
    return f"{prefix}{k[0]}x{k[1]}"


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.keys())[-1] if stack else ""


def _conv_geometry(weight_shape: list[int] | tuple[int, ...], stride: Any, padding: Any, dilation: Any,
                   groups: int) -> dict[str, Any]:
    return {"kernel": (int(weight_shape[2]), int(weight_shape[3])), "stride": _pair(stride),
            "dilation": _pair(dilation), "padding": padding if isinstance(padding, str) else _pair(padding),
            "groups": int(groups), "in_per_group": int(weight_shape[1]), "out_channels": int(weight_shape[0])}


def _transposed_geometry(weight_shape: Any, stride: Any, padding: Any, dilation: Any) -> dict[str, Any]:
    """A transposed convolution (weight (in, out/groups, kh, kw)): input i adds into outputs i*s - p + t*d."""
    return {"transposed": True, "kernel": (int(weight_shape[2]), int(weight_shape[3])), "stride": _pair(stride),
            "padding": _pair(padding), "dilation": _pair(dilation)}


def _pool_geometry(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> dict[str, Any]:
    k = _pair(kernel)
    return {"kernel": k, "stride": _pair(stride) if stride not in (None, (), []) else k, "padding": _pair(padding),
            "dilation": _pair(dilation), "ceil_mode": bool(ceil_mode)}


def expand_index(index: Any, ndim: int) -> list[Any] | None:
    """The items of `tensor[index]`, one per axis of a tensor with `ndim` axes (ellipsis expanded, missing
    trailing axes whole); None when the index adds axes (`None`) or has more items than axes."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is None for i in items) or sum(i is Ellipsis for i in items) > 1:
        return None
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = ndim - (len(items) - 1)
        if fill < 0:
            return None
        items = items[:at] + [slice(None)] * fill + items[at + 1:]
    if len(items) > ndim:
        return None
    return items + [slice(None)] * (ndim - len(items))


def _spatial_index_text(index: Any) -> str:
    """'::2, ::2' for an index of an (N, C, H, W) tensor that touches height or width; '' when it does not."""
    items = expand_index(index, 4)
    if items is None or all(isinstance(i, slice) and i == slice(None) for i in items[2:]):
        return ""

    def text(i: Any) -> str:
        if isinstance(i, slice):
            parts = ["" if v is None else str(v) for v in (i.start, i.stop)]
            return ":".join(parts) + (f":{i.step}" if i.step is not None else "")
        return str(i) if isinstance(i, int) else "?"

    return ", ".join(text(i) for i in items[2:])


def describe_module(module: nn.Module, node: TraceNode) -> None:
    """Fill kind, category, op and geometry of a module call in the notes' style."""
    g = node.geometry
    if isinstance(module, nn.Conv2d):
        g.update(_conv_geometry(module.weight.shape, module.stride, module.padding, module.dilation, module.groups))
        k = g["kernel"]
        node.kind, node.category = _window_kind("conv", k), "window"
        node.op = f"({k[0]}x{k[1]}x{g['in_per_group']})x{module.out_channels}"
        node.bias = module.bias is not None
    elif isinstance(module, nn.ConvTranspose2d):  # kind stays 'convtranspose2d'; the field reads the geometry
        node.kind = node.op = "convtranspose2d"
        node.category = "upsample"
        g.update(_transposed_geometry(module.weight.shape, module.stride, module.padding, module.dilation))
        node.bias = module.bias is not None
    elif isinstance(module, nn.Upsample):
        node.kind = node.op = type(module).__name__.lower()
        node.category = "upsample"
        g.update({"mode": module.mode, "scale_factor": module.scale_factor, "align_corners": module.align_corners})
    elif isinstance(module, nn.ChannelShuffle):  # moves channels, never positions
        node.kind, node.category, node.op = "channelshuffle", "pointwise", f"channel shuffle {module.groups}"
    elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        is_max = isinstance(module, nn.MaxPool2d)
        g.update(_pool_geometry(module.kernel_size, module.stride, module.padding,
                                getattr(module, "dilation", 1), module.ceil_mode))
        prefix = "maxpool" if is_max else "avgpool"
        node.kind, node.category = _window_kind(prefix, g["kernel"]), "window"
        node.op = f"{prefix} {g['kernel'][0]}x{g['kernel'][1]}/{g['stride'][0]}"
    elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        node.kind = "gap" if isinstance(module, nn.AdaptiveAvgPool2d) else "gmp"
        node.category, node.op = "adaptive", "global pool"
    elif isinstance(module, nn.Linear):
        node.kind, node.category, node.op = "fc", "dense", f"{module.in_features}x{module.out_features}"
        node.bias = module.bias is not None
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        node.kind, node.category, node.op = "bn", "pointwise", f"bn {module.num_features}"
    elif isinstance(module, NORM_TYPES):
        node.kind, node.category, node.op = type(module).__name__.lower(), "pointwise", type(module).__name__
        node.geometry["statistics"] = not isinstance(module, nn.LocalResponseNorm)
    elif isinstance(module, DROPOUT_TYPES):
        node.kind, node.category, node.op = "dropout", "pointwise", f"dropout {module.p:g}"
    elif isinstance(module, kinds.torch_types("activation")):
        node.kind, node.category = type(module).__name__.lower(), "pointwise"
        node.op = node.kind
    elif isinstance(module, nn.Identity):
        node.kind, node.category, node.op = "identity", "pointwise", "identity"
    elif isinstance(module, nn.Flatten):
        node.kind, node.category, node.op = "flatten", "reshape", "flatten"
    elif isinstance(module, ClassProbs):
        node.kind = "logsoftmax" if module.log else "softmax"
        node.category, node.op, node.dim = "softmax", ("log-softmax" if module.log else "softmax"), 1
        node.geometry["flattens"] = True
    elif isinstance(module, nn.Softmax2d):  # softmax over the channels of each position
        node.kind, node.category, node.op, node.dim = "softmax2d", "softmax", "softmax2d", -3
    elif isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        node.kind = "logsoftmax" if isinstance(module, nn.LogSoftmax) else "softmax"
        node.category, node.op, node.dim = "softmax", node.kind.replace("log", "log-"), module.dim
    elif isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
        node.kind, node.category, node.op = "pad", "pad", "pad"
        left, _, top, _ = module.padding
        node.geometry["before"] = (int(top), int(left))
    else:
        node.kind = node.op = type(module).__name__.lower()
        node.category = "unknown"


def describe_function(node: TraceNode, fxnode: fx.Node, name: str, values: dict[fx.Node, Any]) -> None:
    """Fill kind, category, op and geometry of a functional call or tensor method."""
    g = node.geometry
    if name == "conv2d":
        weight = values.get(_arg(fxnode, 1, "weight"))
        if isinstance(weight, torch.Tensor):
            g.update(_conv_geometry(weight.shape, _arg(fxnode, 3, "stride", 1), _arg(fxnode, 4, "padding", 0),
                                    _arg(fxnode, 5, "dilation", 1), _arg(fxnode, 6, "groups", 1)))
            k = g["kernel"]
            node.kind, node.category = _window_kind("conv", k), "window"
            node.op = f"({k[0]}x{k[1]}x{g['in_per_group']})x{g['out_channels']}"
            node.bias = _arg(fxnode, 2, "bias") is not None
            return
    elif name in ("max_pool2d", "avg_pool2d"):
        ceil = _arg(fxnode, 5 if name == "max_pool2d" else 4, "ceil_mode", False)
        dilation = _arg(fxnode, 4, "dilation", 1) if name == "max_pool2d" else 1
        # sizes computed in forward (F.avg_pool2d(x, x.shape[2:])) are fx nodes: use the values they had
        args = [fx.node.map_arg(a, lambda v: values.get(v)) for a in
                (_arg(fxnode, 1, "kernel_size"), _arg(fxnode, 2, "stride"), _arg(fxnode, 3, "padding", 0), dilation, ceil)]
        g.update(_pool_geometry(*args))
        prefix = "maxpool" if name == "max_pool2d" else "avgpool"
        node.kind, node.category = _window_kind(prefix, g["kernel"]), "window"
        node.op = f"{prefix} {g['kernel'][0]}x{g['kernel'][1]}/{g['stride'][0]}"
        return
    elif name == "conv_transpose2d":
        weight = values.get(_arg(fxnode, 1, "weight"))
        if isinstance(weight, torch.Tensor):
            node.kind = node.op = name
            node.category, node.bias = "upsample", _arg(fxnode, 2, "bias") is not None
            g.update(_transposed_geometry(weight.shape, _arg(fxnode, 3, "stride", 1), _arg(fxnode, 4, "padding", 0),
                                          _arg(fxnode, 7, "dilation", 1)))
            return
    elif name in ("interpolate", "upsample"):
        node.kind = node.op = "interpolate"
        node.category = "upsample"
        g.update({"mode": _arg(fxnode, 3, "mode", "nearest"), "scale_factor": _arg(fxnode, 2, "scale_factor"),
                  "align_corners": _arg(fxnode, 4, "align_corners")})
        return
    elif name in ("transpose", "swapaxes", "permute"):
        node.kind = node.op = name
        node.category = "reshape"
        dims = list(fxnode.args[1:]) + [v for k, v in fxnode.kwargs.items() if k in ("dim0", "dim1", "dims")]
        g["dims"] = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return
    elif name in ("channel_shuffle", "native_channel_shuffle"):
        node.kind, node.category, node.op = "channelshuffle", "pointwise", "channel shuffle"
        return
    elif name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        node.kind = "gap" if "avg" in name else "gmp"
        node.category, node.op = "adaptive", "global pool"
        return
    elif name == "linear":
        node.kind, node.category, node.bias = "fc", "dense", _arg(fxnode, 2, "bias") is not None
        weight = values.get(_arg(fxnode, 1, "weight"))
        node.op = f"{weight.shape[1]}x{weight.shape[0]}" if isinstance(weight, torch.Tensor) else "linear"
        return
    elif name in ("softmax", "log_softmax"):
        node.kind = name.replace("_", "")
        node.category, node.op, node.dim = "softmax", name.replace("_", "-"), _arg(fxnode, 1, "dim")
        return
    elif name in kinds.function_names("activation"):
        node.kind, node.category, node.op = name.rstrip("_").replace("_", ""), "pointwise", name.rstrip("_")
        return
    elif name == "normalize":  # x / ||x|| along dim: mixes what lies along dim, like a softmax
        node.kind, node.category, node.op, node.dim = "normalize", "softmax", "normalize", _arg(fxnode, 2, "dim", 1)
        return
    elif name in NORM_NAMES:
        node.kind, node.category, node.op = "bn" if name == "batch_norm" else name, "pointwise", name
        node.geometry["statistics"] = name not in ("batch_norm", "normalize", "local_response_norm")
        return
    elif name in DROPOUT_NAMES:
        p = _arg(fxnode, 1, "p", 0.5)
        node.kind, node.category, node.op = "dropout", "pointwise", f"dropout {p:g}" if isinstance(p, float) else "dropout"
        return
    elif name in POINTWISE_NAMES:
        node.kind, node.category, node.op = name, "pointwise", name
        return
    elif name in QUIET_NAMES:
        node.kind, node.category, node.op, node.visible = name, "pointwise", name, False
        return
    elif name in MERGE_NAMES:
        node.kind = {"iadd": "add", "imul": "mul", "truediv": "div"}.get(name.rstrip("_"), name.rstrip("_"))
        node.category, node.op = "merge", node.kind
        return
    elif name in ("cat", "concat", "concatenate"):
        node.kind, node.category, node.dim = "concat", "merge", _arg(fxnode, 1, "dim", 0)
        node.op = "concat"
        return
    elif name in RESHAPE_NAMES:
        node.kind, node.category, node.op = name, "reshape", name
        return
    elif name in REDUCE_NAMES:
        node.kind, node.category, node.dim = name, "reduce", _arg(fxnode, 1, "dim")
        node.op = f"{name} over {node.dim}"
        return
    elif name == "pad":
        node.kind = node.category = node.op = "pad"
        amounts = _arg(fxnode, 1, "pad")
        if isinstance(amounts, (tuple, list)) and len(amounts) >= 4 and all(isinstance(a, int) for a in amounts[:4]):
            node.geometry["before"] = (amounts[2], amounts[0])  # F.pad lists (left, right, top, bottom)
        return
    elif name == "getitem":
        node.kind = node.category = node.op = "select"
        # sizes computed in forward (`x[:, :, :h]` with h = x.size(2) - 2) are fx nodes: use the values they had
        index = fx.node.map_arg(fxnode.args[1], lambda a: values.get(a)) if len(fxnode.args) > 1 else None
        node.geometry["index"] = index
        node.geometry["of_tensor"] = isinstance(values.get(fxnode.args[0]), torch.Tensor)
        spatial = _spatial_index_text(index) if node.geometry["of_tensor"] and len(node.input) == 3 else ""
        # a slice of height or width moves the field (start, jump): a row of its own shows where
        node.visible = bool(spatial)
        if spatial:
            node.kind, node.op = "slice", f"slice [{spatial}]"
        return
    node.kind = node.op = name
    node.category = "unknown"


