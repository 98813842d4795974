"""The network spec as data: layers, named blocks, and the whole network.

A spec is plain, immutable data. It can be written as text (`notation.py`), as a
Python object (this module) or as YAML (`yamlform.py`), and built into a
`torch.nn.Module` (`build.py`). Layer arguments use torch's own names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# Every layer kind the notation knows, with the arguments it accepts (beyond `kind`).
# The first argument listed is the positional one, if the kind takes any.
CONV_ARGS = ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias")
POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode")
KIND_ARGS: dict[str, tuple[str, ...]] = {
    "conv": CONV_ARGS,
    "maxpool": POOL_ARGS,
    "avgpool": POOL_ARGS,
    "bn": (),
    "dropout": ("p",),
    "relu": (),
    "leakyrelu": ("negative_slope",),
    "prelu": (),
    "elu": ("alpha",),
    "selu": (),
    "tanh": (),
    "sigmoid": (),
    "silu": (),
    "gelu": (),
    "gap": (),
    "flatten": (),
    "fc": ("out_features", "bias"),
    "softmax": (),
    "logsoftmax": (),
}
ACTIVATIONS = frozenset({"relu", "leakyrelu", "prelu", "elu", "selu", "tanh", "sigmoid", "silu", "gelu"})
POOLS = frozenset({"maxpool", "avgpool"})
OUTPUT_ACTIVATIONS = frozenset({"softmax", "logsoftmax"})

BLOCK_ROLES = ("convolution", "transition", "output")


@dataclass(frozen=True)
class Layer:
    """One layer. Only the fields that apply to `kind` are meaningful; the rest stay None."""

    kind: str
    out_channels: int | None = None  # conv
    kernel_size: int | None = None  # conv, pools
    stride: int | None = None  # conv, pools (pools default to kernel_size)
    padding: int | None = None  # conv, pools
    dilation: int | None = None  # conv
    groups: int | None = None  # conv
    bias: bool | None = None  # conv, fc
    ceil_mode: bool | None = None  # pools
    p: float | None = None  # dropout
    negative_slope: float | None = None  # leakyrelu
    alpha: float | None = None  # elu
    out_features: int | None = None  # fc

    def __post_init__(self) -> None:
        if self.kind not in KIND_ARGS:
            raise ValueError(f"unknown layer kind {self.kind!r}")

    # Resolved values: what the built module will use.
    @property
    def k(self) -> int:
        return int(self.kernel_size or 1)

    @property
    def s(self) -> int:
        if self.stride is not None:
            return int(self.stride)
        return self.k if self.kind in POOLS else 1

    @property
    def pad(self) -> int:
        return int(self.padding or 0)

    @property
    def d(self) -> int:
        return int(self.dilation or 1)

    @property
    def has_bias(self) -> bool:
        return True if self.bias is None else bool(self.bias)

    def args(self) -> dict[str, Any]:
        """The arguments set on this layer (not None), in the kind's order."""
        return {name: getattr(self, name) for name in KIND_ARGS[self.kind] if getattr(self, name) is not None}


@dataclass(frozen=True)
class Block:
    """A named group of layers; tables and reports group by it.

    `role` is one of convolution / transition / output; when not given it is
    inferred from the layers (a pool makes a transition block; GAP, flatten,
    fc or softmax make an output block).
    """

    name: str | None
    layers: tuple[Layer, ...]
    role: str | None = None

    @property
    def resolved_role(self) -> str:
        if self.role:
            return self.role
        kinds = {layer.kind for layer in self.layers}
        if kinds & ({"gap", "flatten", "fc"} | OUTPUT_ACTIVATIONS):
            return "output"
        if kinds & POOLS:
            return "transition"
        return "convolution"


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: ordered blocks, plus the input it expects."""

    blocks: tuple[Block, ...]
    name: str | None = None
    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def layers(self) -> list[Layer]:
        return [layer for block in self.blocks for layer in block.layers]

    def with_input(self, input_shape: tuple[int, int, int]) -> NetworkSpec:
        return replace(self, input_shape=tuple(input_shape))


def layer_from_dict(data: dict[str, Any]) -> Layer:
    """Build a Layer from a mapping like {"kind": "conv", "out_channels": 16, "kernel_size": 3}."""
    known = {f.name for f in fields(Layer)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown layer field(s) {sorted(unknown)}; known: {sorted(known)}")
    return Layer(**data)
