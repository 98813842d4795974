"""The one registry of layer kinds: what each kind is called, takes, builds and how every area treats it.

A `Kind` declares its name in the notation (and aliases), its arguments, its category, the torch classes and
functional names the tracer knows it by, its parameters when they do not depend on the shape (PReLU: one
slope), whether the batched trainer can widen it, and the facts the diagnostics read (dead when never
positive, the range it squashes into). Every list of kinds elsewhere is read from here, live: a kind
registered later (`register`) is in every view at once (`KindSet`, `kind_args`, `torch_types`).

Adding an activation is one entry in `_ACTIVATIONS` below (plus docs and tests); the notation, the Python API
(`spec.act`), building, the table, the design checks, batching, predict's feature maps, the doctor and the
report's dead-ReLU figure all follow. A new argument *name* also needs a field on `spec.layers.Layer` and its
bounds there. Kinds with `spec=False` are named by the tracer in a person's own class but are not written in
the notation. This module imports no torch: parsing a spec stays fast; torch classes are named by their
`torch.nn` names and resolved when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

# conv and pool take a window; gap reduces the map; reshape flattens; dense is fc; head is the output softmax
CATEGORIES = ("conv", "pool", "norm", "dropout", "activation", "gap", "reshape", "dense", "head")
OUTPUT_CATEGORIES = frozenset({"gap", "reshape", "dense", "head"})  # a block holding one is an output block


@dataclass(frozen=True)
class Kind:
    """One layer kind. Only `name` and `category` are needed; the rest have the common defaults."""

    name: str  # in the notation and in the table; for a torch class, its name in lower case (nn.ReLU: relu)
    category: str  # one of CATEGORIES
    args: tuple[str, ...] = ()  # Layer fields it takes, in order; the first may be given by position
    required: tuple[str, ...] = ()  # arguments that must be given, each with the notation's hint when missing
    hints: tuple[str, ...] = ()  # the message for each required argument missing, in `required`'s order
    spec: bool = True  # written in the notation (False: only the tracer names it, in own classes)
    aliases: tuple[str, ...] = ()  # other names the notation accepts (swish: silu)
    sized: bool = False  # written with its square window: conv3x3, maxpool2x2 (no positional argument)
    prints_first: bool = False  # format_layer writes the first argument without its name: conv3x3(16)
    torch: tuple[str, ...] = ()  # torch.nn class names (the first is what the notation builds)
    defaults: tuple[Any, ...] = ()  # activations: the class's arguments, one per `args`, used when not given
    functions: tuple[str, ...] = ()  # functional / tensor-method names the tracer names with this kind
    params: int = 0  # parameters of one layer when they do not depend on the input (prelu: 1 slope)
    unbatchable: str = ""  # why the batched trainer cannot widen it ('' : it can)
    dies: bool = False  # negative inputs give exactly 0: a channel never positive is dead (relu, relu6)
    squashes: tuple[float, float] | None = None  # the range outputs saturate in (sigmoid: (0, 1))
    sign_kept: bool = False  # ReLU-like (positive passes, negative shrinks): the dead-ReLU figure reads it

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"kind {self.name!r}: category {self.category!r} is not one of {', '.join(CATEGORIES)}")
        if len(self.hints) != len(self.required) or not set(self.required) <= set(self.args):
            raise ValueError(f"kind {self.name!r}: each required argument needs an entry in args and a hint")
        if (self.defaults or self.category == "activation") and len(self.defaults) != len(self.args):
            raise ValueError(f"kind {self.name!r}: an activation needs a default for each argument (its torch "
                             "class is built with them)")


def _act(name: str, cls: str, functions: tuple[str, ...] | None = None, **more: Any) -> Kind:
    """An activation: torch class `cls`, named by the tracer as `name` and through `functions` (default: name)."""
    return Kind(name, "activation", torch=(cls,), functions=(name,) if functions is None else functions, **more)


_CONV_ARGS = ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias")
_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode")
_POOL_HINT = "a pooling layer needs a kernel size, e.g. maxpool2x2"

# The notation's kinds in the order `known:` lists them, then the activations the tracer alone names.
_LAYERS = [
    Kind("conv", "conv", _CONV_ARGS, ("out_channels", "kernel_size"),
         ("a convolution must state its output channels, e.g. conv3x3(16)",
          "a convolution needs a kernel size, e.g. conv3x3(16)"), sized=True, prints_first=True, torch=("Conv2d",)),
    Kind("maxpool", "pool", _POOL_ARGS, ("kernel_size",), (_POOL_HINT,), sized=True, torch=("MaxPool2d",)),
    Kind("avgpool", "pool", _POOL_ARGS, ("kernel_size",), (_POOL_HINT,), sized=True, torch=("AvgPool2d",)),
    Kind("bn", "norm", aliases=("batchnorm", "batchnorm2d"), torch=("BatchNorm2d", "BatchNorm1d")),
    Kind("dropout", "dropout", ("p",), ("p",), ("dropout needs its probability, e.g. dropout(0.05)",),
         aliases=("drop",), prints_first=True, torch=("Dropout",)),
]
_ACTIVATIONS = [
    _act("relu", "ReLU", ("relu", "relu_"), dies=True, sign_kept=True),
    _act("leakyrelu", "LeakyReLU", ("leaky_relu", "leaky_relu_"), args=("negative_slope",), defaults=(0.01,),
         sign_kept=True),
    _act("prelu", "PReLU", params=1, unbatchable="prelu shares its slope across channels", sign_kept=True),
    _act("elu", "ELU", ("elu", "elu_"), args=("alpha",), defaults=(1.0,), sign_kept=True),
    _act("selu", "SELU", ("selu", "selu_"), sign_kept=True),
    _act("tanh", "Tanh", ("tanh", "tanh_"), squashes=(-1.0, 1.0)),
    _act("sigmoid", "Sigmoid", ("sigmoid", "sigmoid_"), squashes=(0.0, 1.0)),
    _act("silu", "SiLU", aliases=("swish",), sign_kept=True),
    _act("gelu", "GELU", sign_kept=True),
]
_OUTPUT = [
    Kind("gap", "gap", aliases=("globalavgpool",), torch=("AdaptiveAvgPool2d",)),
    Kind("flatten", "reshape", torch=("Flatten",)),
    Kind("fc", "dense", ("out_features", "bias"), ("out_features",),
         ("a fully connected layer must state its outputs, e.g. fc(10)",), aliases=("linear", "dense"),
         prints_first=True, torch=("Linear",)),
    Kind("softmax", "head"),  # built as spec.build.ClassProbs: flatten, then softmax over the classes
    Kind("logsoftmax", "head", aliases=("log_softmax",)),
]
# Named by the tracer in own classes; not (yet) in the notation: spec=True and a test make one a spec kind.
_TRACED = [
    _act("celu", "CELU", spec=False, sign_kept=True),
    _act("relu6", "ReLU6", spec=False, dies=True, sign_kept=True),
    _act("hardswish", "Hardswish", spec=False, sign_kept=True),
    _act("hardsigmoid", "Hardsigmoid", spec=False, squashes=(0.0, 1.0)),
    _act("hardtanh", "Hardtanh", ("hardtanh", "hardtanh_"), spec=False, squashes=(-1.0, 1.0)),
    _act("mish", "Mish", spec=False, sign_kept=True),
    _act("softplus", "Softplus", spec=False),
    _act("softsign", "Softsign", spec=False),
    _act("logsigmoid", "LogSigmoid", spec=False),
    _act("tanhshrink", "Tanhshrink", (), spec=False),  # the module only: F.tanhshrink stays an unknown call
    _act("threshold", "Threshold", spec=False),
    _act("rrelu", "RReLU", spec=False, sign_kept=True),
]

KINDS: dict[str, Kind] = {}
_cache: dict[Any, Any] = {}  # derived tuples (torch classes, names), emptied when a kind is registered


def register(kind: Kind) -> Kind:
    """Add (or replace) a kind; every view of the registry sees it at once."""
    KINDS[kind.name] = kind
    _cache.clear()
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that register one put the registry back)."""
    KINDS.pop(name, None)
    _cache.clear()


for _kind in (*_LAYERS, *_ACTIVATIONS, *_OUTPUT, *_TRACED):
    register(_kind)


def get(name: str) -> Kind | None:
    return KINDS.get(name)


class KindSet(AbstractSet):
    """The names of the registered kinds that `test` accepts, read live: `name in s`, iteration, len.

    `extra`: names that are no registered kind but belong (the tracer's 'identity'). Set operators (`|`, `&`)
    give a plain set of the names at that moment; keep the KindSet where a later kind must count.
    """

    def __init__(self, test: Callable[[Kind], bool], extra: tuple[str, ...] = ()):
        self.test = test
        self._extra = extra

    def __contains__(self, name: object) -> bool:
        if name in self._extra:
            return True
        kind = KINDS.get(name) if isinstance(name, str) else None
        return kind is not None and self.test(kind)

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, kind in KINDS.items() if self.test(kind)]
                    + [name for name in self._extra if name not in KINDS])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"KindSet({sorted(self)})"


class _ArgsView(Mapping):
    """kind name -> its arguments, for the notation's kinds, live."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        kind = KINDS.get(name)
        if kind is None or not kind.spec:
            raise KeyError(name)
        return kind.args

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, kind in KINDS.items() if kind.spec])

    def __len__(self) -> int:
        return sum(1 for kind in KINDS.values() if kind.spec)


SPEC_KINDS = KindSet(lambda k: k.spec)
ACTIVATIONS = KindSet(lambda k: k.category == "activation")  # every activation the tracer names
SPEC_ACTIVATIONS = KindSet(lambda k: k.spec and k.category == "activation")
POOLS = KindSet(lambda k: k.category == "pool")
SIZED = KindSet(lambda k: k.sized)
OUTPUT_ACTIVATIONS = KindSet(lambda k: k.category == "head")
OUTPUT_ROLE = KindSet(lambda k: k.category in OUTPUT_CATEGORIES)  # makes a block an output block
DIES = KindSet(lambda k: k.dies)  # a channel never positive is dead (doctor, ladder diagnostics' sense)
SIGN_KEPT = KindSet(lambda k: k.sign_kept)  # ReLU-like: the report's dead/sparsity figure
# what sits between a layer and the next: predict shows a conv's map after these; the design checks warn
# about them after the last weight layer
FOLLOWERS = KindSet(lambda k: k.name == "bn" or k.category == "activation")
EXTRAS = KindSet(lambda k: k.category in ("norm", "dropout", "activation"))
KIND_ARGS: Mapping[str, tuple[str, ...]] = _ArgsView()


def alias(name: str) -> str:
    """The kind a notation name stands for (an alias's kind, else the name itself)."""
    key = ("alias",)
    if key not in _cache:
        _cache[key] = {a: kind.name for kind in KINDS.values() if kind.spec for a in kind.aliases}
    return _cache[key].get(name, name)


def function_names(category: str = "activation") -> frozenset[str]:
    """The functional and tensor-method names the tracer names as kinds of `category`."""
    key = ("functions", category)
    if key not in _cache:
        _cache[key] = frozenset(f for k in KINDS.values() if k.category == category for f in k.functions)
    return _cache[key]


def torch_types(test: Callable[[Kind], bool] | str = "activation") -> tuple[type, ...]:
    """The torch.nn classes of the kinds `test` accepts (a category name: the kinds of that category)."""
    key = ("torch", test)
    if key not in _cache:
        from torch import nn  # here, not at the top: parsing a spec must not import torch

        accept = (lambda k: k.category == test) if isinstance(test, str) else test
        _cache[key] = tuple(getattr(nn, name) for k in KINDS.values() if accept(k) for name in k.torch)
    return _cache[key]


def kind_of_class(cls: type) -> Kind | None:
    """The registered kind of torch class `cls` or of its nearest base that has one (nn.ReLU6 is relu6, not
    hardtanh, its base); None when none has."""
    if "classes" not in _cache:
        from torch import nn

        _cache["classes"] = {getattr(nn, name): k for k in KINDS.values() for name in k.torch}
    classes = _cache["classes"]
    return next((classes[c] for c in cls.__mro__ if c in classes), None)


def batchable_types() -> tuple[type, ...]:
    """torch classes of the notation's parameter-free kinds that the batched trainer can widen as they are
    (one module serves every copy: activations, pools, gap, flatten, dropout)."""
    return torch_types(lambda k: k.spec and not k.unbatchable and k.params == 0
                       and k.category in ("activation", "pool", "gap", "reshape", "dropout"))


__all__ = ["Kind", "KindSet", "KINDS", "register", "unregister", "get"]
