"""The one tracer of a module: every operation of `forward`, in execution order, with its inputs and sizes.

convladder reads networks in one place. `trace_model` captures the graph of `forward` with torch.fx symbolic
tracing, so functional calls (`F.max_pool2d`, `torch.flatten`, `x.view`, `x.mean((2, 3))`), tensor methods
and merges (`+`, `torch.cat`) are seen as well as modules; then it runs the graph once on a zero input to
record every size. The network table, the ladder's diagnostics, the report's figures and predict's feature
maps all use it (`capture` returns chosen nodes' inputs and outputs for real images).

Where fx cannot capture the graph (control flow that depends on the data, or other untraceable Python), the
tracer falls back to forward hooks on the leaf modules and says so in `ModelTrace.notice`. Hooks see modules
only; a module whose input is not the previous module's output is marked `unseen_input`, and everything that
depends on what was not seen is reported as unknown downstream (`?`), never guessed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from convladder.analysis.ops import NON_TENSOR_NAMES, _arg, _fn_name, _scope, _shape, describe_function, describe_module
from convladder.errors import UserError
from convladder.spec.build import ClassProbs
from convladder.spec.build import Dropout as SpecDropout
from convladder.spec.build import MaxPool2d as SpecMaxPool2d

INPUT = "input"  # the name of the model input in `TraceNode.inputs`

@dataclass
class TraceNode:
    """One operation of the forward pass."""

    name: str  # module path ("conv1.0") or, for a function/method, fx's name inside its module ("layer1.0.add")
    scope: str  # the module whose forward made the call ("" for the top level)
    kind: str  # conv3x3, maxpool2x2, gap, relu, bn, dropout, flatten, reshape, fc, add, concat, softmax, ...
    category: str  # window | global | adaptive | pointwise | merge | reshape | dense | softmax | select | pad | unknown
    op: str  # the notes' operation text, e.g. "(3x3x1)x10", "maxpool 2x2/2", "add"
    inputs: list[str]  # names of the nodes (or INPUT) whose tensors this one reads
    input: list[int]  # shape of the first tensor input without the batch axis
    output: list[int] | None  # shape of the output without the batch axis (None: not one tensor)
    module: nn.Module | None = None
    geometry: dict[str, Any] = field(default_factory=dict)  # kernel (kh, kw), stride, dilation, padding, ...
    params: int = 0  # parameters this call uses (0 when a shared module was counted at its first call)
    trainable: int = 0
    buffers: int = 0  # BN running mean/var (Keras counts them as parameters)
    macs: int = 0  # multiply-accumulates of convolutions and dense layers for one image
    bias: bool = False
    shared_with: str = ""  # the earlier node whose weights this call reuses
    visible: bool = True  # False: a cast or copy kept out of the table (its field passes through)
    unseen_input: bool = False  # hooks fallback: the input came from computation the hooks did not see
    dim: Any = None  # the dimension argument of reductions, softmax, concat

    def reads_one_of(self, *names: str) -> bool:
        return any(name in self.inputs for name in names)


@dataclass
class ModelTrace:
    input_shape: list[int]
    nodes: list[TraceNode]
    method: str  # "fx" or "hooks"
    notice: str = ""  # why the fallback was used, shown to the user
    output: list[int] | None = None
    graph: fx.GraphModule | None = field(default=None, repr=False)  # fx only: the captured graph
    by_fx: dict[fx.Node, TraceNode] = field(default_factory=dict, repr=False)  # fx node -> its row

    def node(self, name: str) -> TraceNode:
        return next(n for n in self.nodes if n.name == name)


class _Tracer(fx.Tracer):
    """torch.nn's layers and convladder's output/dropout/max-pool layers stay single calls; user modules are opened."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (ClassProbs, SpecDropout, SpecMaxPool2d)) or super().is_leaf_module(m, qualname)


# fx patches torch.nn.Module.__call__ for every thread while it traces, so a model running in another thread
# at that moment would see fx proxies: tracing holds this lock, and `capture` (the page server's per-request
# path) reuses a trace made once, so serving threads never trace.
_LOCK = threading.RLock()
_CAPTURE_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ModelTrace]] = weakref.WeakKeyDictionary()


def capture_graph(model: nn.Module) -> fx.GraphModule:
    """fx graph of `model.forward` (raises whatever fx raises when it cannot)."""
    with _LOCK:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph)


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps each node's value (or, with `keep`, only what is asked for)."""

    def __init__(self, gm: fx.GraphModule, keep: Callable[[fx.Node], bool] | None = None):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}
        self.keep = keep

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if self.keep is None or self.keep(n):
            self.values[n] = value
        return value


def _count_module(node: TraceNode, module: nn.Module, counted: dict[int, str]) -> None:
    if id(module) in counted:
        node.shared_with = counted[id(module)]
        return
    counted[id(module)] = node.name
    # A torch.nn leaf (e.g. a transformer layer) uses all of its parameters in this one call.
    node.params = sum(p.numel() for p in module.parameters())
    node.trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    node.buffers = sum(b.numel() for bname, b in module.named_buffers() if not bname.endswith("num_batches_tracked"))


def _macs(node: TraceNode, weight_shape: Iterable[int] | None) -> int:
    out = node.output
    if weight_shape is None or out is None:
        return 0
    w = list(weight_shape)
    if node.kind.startswith("conv") and len(w) == 4 and len(out) == 3:
        return out[0] * out[1] * out[2] * w[1] * w[2] * w[3]
    if node.kind == "fc" and len(w) == 2:
        positions = 1
        for size in out[:-1]:
            positions *= size
        return positions * w[0] * w[1]
    return 0


def _trace_fx(model: nn.Module, x: torch.Tensor) -> ModelTrace:
    gm = capture_graph(model)
    recorder = _Recorder(gm)
    recorder.run(x)
    values = recorder.values
    nodes: list[TraceNode] = []
    by_fx: dict[fx.Node, str] = {}
    rows: dict[fx.Node, TraceNode] = {}
    counted: dict[int, str] = {}
    counted_params: set[str] = set()
    params = dict(model.named_parameters())
    output_shape: list[int] | None = None
    for fxnode in gm.graph.nodes:
        if fxnode.op == "placeholder":
            by_fx[fxnode] = INPUT
            continue
        if fxnode.op == "output":
            result = fxnode.args[0]
            output_shape = _shape(values.get(result)) if isinstance(result, fx.Node) else None
            continue
        if fxnode.op == "get_attr":
            continue
        value = values.get(fxnode)
        if fxnode.op in ("call_function", "call_method") and _fn_name(fxnode) in NON_TENSOR_NAMES:
            continue
        if not isinstance(value, (torch.Tensor, tuple, list)):
            continue  # sizes, flags: not a layer
        tensor_inputs = [a for a in fxnode.all_input_nodes if a in by_fx]
        first = next((values[a] for a in tensor_inputs if isinstance(values.get(a), torch.Tensor)), None)
        scope = _scope(fxnode)
        if fxnode.op == "call_module":
            name = str(fxnode.target)
            scope = name.rpartition(".")[0]
        else:
            name = f"{scope}.{fxnode.name}" if scope else fxnode.name
        node = TraceNode(name=name, scope=scope, kind="", category="", op="",
                         inputs=[by_fx[a] for a in tensor_inputs], input=_shape(first) or [],
                         output=_shape(value))
        weight_shape = None
        if fxnode.op == "call_module":
            module = gm.get_submodule(str(fxnode.target))
            node.module = module
            describe_module(module, node)
            _count_module(node, module, counted)
            weight = getattr(module, "weight", None)
            weight_shape = weight.shape if isinstance(weight, torch.Tensor) and not node.shared_with else None
        else:
            fname = _fn_name(fxnode)
            describe_function(node, fxnode, fname, values)
            # Parameters a functional call reads directly (F.conv2d(x, self.weight)): counted once, here.
            for attr in (a for a in fxnode.all_input_nodes if a.op == "get_attr"):
                p = params.get(str(attr.target))
                if p is not None and str(attr.target) not in counted_params:
                    counted_params.add(str(attr.target))
                    node.params += p.numel()
                    node.trainable += p.numel() if p.requires_grad else 0
            if node.category in ("window", "dense"):
                weight = values.get(_arg(fxnode, 1, "weight"))
                weight_shape = weight.shape if isinstance(weight, torch.Tensor) else None
        if node.category == "reshape" and node.kind == "flatten" and fxnode.op != "call_module":
            node.geometry["start_dim"] = _arg(fxnode, 1, "start_dim", 0)
        node.macs = _macs(node, weight_shape)
        nodes.append(node)
        by_fx[fxnode] = name
        rows[fxnode] = node
    return ModelTrace(list(x.shape[1:]), _dedupe(nodes), "fx", output=output_shape, graph=gm, by_fx=rows)


def _dedupe(nodes: list[TraceNode]) -> list[TraceNode]:
    """A module called twice gets '#2' on its second row so every name is unique."""
    seen: dict[str, int] = {}
    renamed: dict[str, str] = {}
    for node in nodes:
        node.inputs = [renamed.get(i, i) for i in node.inputs]
        count = seen.get(node.name, 0) + 1
        seen[node.name] = count
        if count > 1:
            new = f"{node.name}#{count}"
            renamed[node.name] = new
            node.name = new
    return nodes


def _trace_hooks(model: nn.Module, x: torch.Tensor, reason: str) -> ModelTrace:
    """The fallback: module calls in order, seen by forward hooks; functional calls and branches are not."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[nn.Module, torch.Tensor, Any]] = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            calls.append((module, inputs[0], output))

    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, (ClassProbs, SpecDropout))]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    nodes: list[TraceNode] = []
    counted: dict[int, str] = {}
    previous: tuple[str, torch.Tensor] = (INPUT, x)
    for module, inp, out in calls:
        name = names[module]
        node = TraceNode(name=name, scope=name.rpartition(".")[0], kind="", category="", op="",
                         inputs=[previous[0]], input=list(inp.shape[1:]), output=list(out.shape[1:]), module=module)
        node.unseen_input = inp is not previous[1]  # something between the two calls changed the tensor
        describe_module(module, node)
        _count_module(node, module, counted)
        weight = getattr(module, "weight", None)
        node.macs = _macs(node, weight.shape if isinstance(weight, torch.Tensor) and not node.shared_with else None)
        nodes.append(node)
        previous = (name, out)
    notice = (f"the graph of forward could not be captured ({reason}); rows are the module calls seen by hooks: "
              f"functional calls and branches are not, and fields that depend on them show '?'")
    return ModelTrace(list(x.shape[1:]), _dedupe(nodes), "hooks", notice, _shape(output))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def trace_model(model: nn.Module, input_shape: tuple[int, int, int] | list[int]) -> ModelTrace:
    """Trace `model` on one zero image of `input_shape` (C, H, W), in eval mode and without gradients."""
    x = torch.zeros((1, *input_shape), device=_device_of(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                return _trace_fx(model, x)
            except (fx.proxy.TraceError, TypeError, NotImplementedError, AttributeError, ValueError, KeyError,
                    IndexError, AssertionError) as exc:
                fallback = _short(exc)
            except RuntimeError as exc:
                # fx traced fine but running the graph failed, or fx hit data-dependent Python: try the real model
                fallback = _short(exc)
            try:
                return _trace_hooks(model, x, fallback)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                c, h, w = input_shape
                raise UserError(f"the network cannot run on a {h}x{w}x{c} input: {first}") from None
    finally:
        model.train(was_training)


@dataclass
class Captured:
    node: TraceNode
    inputs: list[torch.Tensor]
    output: torch.Tensor


def capture(model: nn.Module, x: torch.Tensor, select: Callable[[TraceNode], bool], *,
            grad: bool = False) -> tuple[Any, list[Captured]]:
    """Run `model` on `x` once; return (forward's output, inputs and outputs of the selected nodes in order).

    Uses the same graph as `trace_model` (the fallback: hooks), so names and kinds agree with the network table.
    The model's mode (train/eval) is left as the caller set it. The trace is made once per model, input size
    and set of submodules, then reused (safe for threads serving requests).
    """
    trace = _capture_trace(model, tuple(x.shape[1:]))
    chosen = {n.name for n in trace.nodes if select(n)}
    if trace.method == "fx" and trace.graph is not None:
        wanted = {fxnode: node for fxnode, node in trace.by_fx.items() if node.name in chosen}
        keep = set(wanted)
        for fxnode in wanted:
            keep.update(a for a in fxnode.all_input_nodes if a.op != "get_attr")
        recorder = _Recorder(trace.graph, keep=lambda n: n in keep)
        with torch.set_grad_enabled(grad):
            output = recorder.run(x)
        records = [Captured(node, [recorder.values[a] for a in fxnode.all_input_nodes
                                   if isinstance(recorder.values.get(a), torch.Tensor)], recorder.values[fxnode])
                   for fxnode, node in wanted.items() if isinstance(recorder.values.get(fxnode), torch.Tensor)]
        return output, records
    modules = {n.module: n for n in trace.nodes if n.name in chosen and n.module is not None}
    seen: list[Captured] = []
    with _LOCK:  # hooks are shared by every thread calling the model: one capture at a time
        handles = [m.register_forward_hook(lambda mod, inp, out: seen.append(Captured(modules[mod], [inp[0]], out)))
                   for m in modules]
        try:
            with torch.set_grad_enabled(grad):
                output = model(x)
        finally:
            for handle in handles:
                handle.remove()
    return output, seen


def _capture_trace(model: nn.Module, input_shape: tuple[int, ...]) -> ModelTrace:
    # Replacing a submodule (a notebook edit) changes the key, so a stale graph is never reused.
    key = (input_shape, tuple((name, id(m)) for name, m in model.named_modules()))
    with _LOCK:
        per_model = _CAPTURE_TRACES.setdefault(model, {})
        if key not in per_model:
            per_model.clear()
            per_model[key] = trace_model(model, input_shape)
        return per_model[key]

