"""The network spec as data: layers, named blocks, and the whole network.

A spec is plain, immutable data. It can be written as text (`notation.py`), as a
Python object (this module) or as YAML (`yamlform.py`), and built into a
`torch.nn.Module` (`build.py`). Layer arguments use torch's own names.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from convladder.errors import UserError
from convladder.spec import kinds

# Every layer kind the notation knows, with the arguments it accepts (beyond `kind`), and the kinds by
# category: live views of the one registry, spec/kinds.py (a kind registered there is known here at once).
# The first argument listed is the positional one, if the kind takes any.
KIND_ARGS = kinds.KIND_ARGS
ACTIVATIONS = kinds.SPEC_ACTIVATIONS
POOLS = kinds.POOLS
OUTPUT_ACTIVATIONS = kinds.OUTPUT_ACTIVATIONS

BLOCK_ROLES = ("convolution", "transition", "output")

# Bounds of every argument: checked where a layer is made (text, Python, YAML, ladder edits), so nothing out of
# range reaches torch. Channels stop at torch's int32 index range; the size guard (build.check_size) bounds memory.
MAX_CHANNELS = 2**31 - 1
MAX_SIDE = 65_536  # kernel, stride, padding, dilation and the input's height/width
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "out_channels": (1, MAX_CHANNELS),
    "out_features": (1, MAX_CHANNELS),
    "groups": (1, MAX_CHANNELS),
    "kernel_size": (1, MAX_SIDE),
    "stride": (1, MAX_SIDE),
    "padding": (0, MAX_SIDE),
    "dilation": (1, MAX_SIDE),
}
FLOAT_BOUNDS: dict[str, tuple[float, float]] = {  # closed ranges; dropout's p is [0, 1), see arg_problem
    "p": (0.0, 1.0),
    "negative_slope": (-1000.0, 1000.0),
    "alpha": (-1000.0, 1000.0),
}
BOOL_FIELDS = frozenset({"bias", "ceil_mode"})
MAX_LAYERS_ENV = "CONVLADDER_MAX_LAYERS"
DEFAULT_MAX_LAYERS = 1_000


def env_limit(name: str, default: int) -> int:
    """A positive whole-number limit from the environment variable `name` (`default` when unset)."""
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise UserError(f"{name}={os.environ[name]!r} is not a positive whole number — set it to e.g. {default} "
                        "or unset it for the default")
    return int(raw)


def max_layers() -> int:
    """The most layers a spec may have ($CONVLADDER_MAX_LAYERS, default 1,000)."""
    return env_limit(MAX_LAYERS_ENV, DEFAULT_MAX_LAYERS)


def too_many_layers(count: int) -> str:
    limit = max_layers()
    return (f"the spec has {count:,} layers, more than the limit of {limit:,} (summaries and tables take about "
            f"1 ms per layer) — shorten it, or raise the limit with {MAX_LAYERS_ENV}=<n>")


def arg_problem(key: str, value: Any) -> str | None:
    """What is wrong with `value` for argument `key` (None when it is fine)."""
    if key in BOOL_FIELDS:
        return None if isinstance(value, bool) else f"{key} must be true or false (got {_brief(value)})"
    if key in INT_BOUNDS:
        low, high = INT_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"{key} must be a whole number (got {_brief(value)})"
        if value < low:
            return f"{key} must be at least {low} (got {_short(value)})"
        if value > high:
            return f"{key} must be at most {high:,} (got {_short(value)})"
        return None
    if key in FLOAT_BOUNDS:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"{key} must be a number (got {_brief(value)})"
        if not math.isfinite(value):
            return f"{key} must be a finite number (got {value})"
        low, high = FLOAT_BOUNDS[key]
        if key == "p" and not 0.0 <= value < 1.0:
            return f"dropout probability must be in [0, 1) (got {value})"
        if not low <= value <= high:
            return f"{key} must be between {low:g} and {high:g} (got {value:g})"
        return None
    return f"unknown argument {key!r}"


def _brief(value: Any) -> str:
    """repr of a user's value, cut to 40 characters (huge whole numbers by their digit count)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _short(value)
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a whole number past Python's 4,300-digit limit inside a list
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _short(value: int) -> str:
    """A whole number as text, cut short when very long (a 5,000-digit number must not fill the screen)."""
    if abs(value) < 10**30:
        return f"{value:,}"
    return f"a number of about {int(value.bit_length() * 0.30103) + 1:,} digits"


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
        if not isinstance(self.kind, str) or self.kind not in KIND_ARGS:
            raise UserError(f"unknown layer kind {_brief(self.kind)}; known: {', '.join(KIND_ARGS)}")
        allowed = KIND_ARGS[self.kind]
        for name in _ARG_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name not in allowed:
                raise UserError(f"{self.kind} has no argument {name!r}; it takes {', '.join(allowed) or 'none'}")
            problem = arg_problem(name, value)
            if problem:
                raise UserError(f"{self.kind}: {problem}")
            # one type per field, so equal layers compare equal and print alike (YAML `p: 0` is 0.0)
            object.__setattr__(self, name, float(value) if name in FLOAT_BOUNDS
                               else value if name in BOOL_FIELDS else int(value))
        missing = [name for name in kinds.KINDS[self.kind].required if getattr(self, name) is None]
        if missing:
            raise UserError(f"{self.kind} needs {' and '.join(missing)}")

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


_ARG_FIELDS = tuple(f.name for f in fields(Layer) if f.name != "kind")


MAX_REPEAT = 1_000  # applications of one shared block (the layer limit counts every application too)


@dataclass(frozen=True)
class Block:
    """A named group of layers; tables and reports group by it.

    `role` is one of convolution / transition / output; when not given it is
    inferred from the layers (a pool makes a transition block; GAP, flatten,
    fc or softmax make an output block). `repeat` > 1: the block's layers are built once and applied
    `repeat` times in a row, sharing their weights, with one BN per application (docs/spec.md, "Shared weights").
    """

    name: str | None
    layers: tuple[Layer, ...]
    role: str | None = None
    repeat: int = 1

    def __post_init__(self) -> None:
        n = self.repeat
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_REPEAT:
            raise UserError(f"block {self.name or '(unnamed)'}: repeat must be a whole number from 1 to "
                            f"{MAX_REPEAT:,} (got {_brief(n)})")
        if n > 1 and not self.name:
            raise UserError("a shared block needs a name: write e.g. res[conv3x3(8, bias=false) relu bn]*3")
        object.__setattr__(self, "repeat", int(n))

    @property
    def resolved_role(self) -> str:
        if self.role:
            return self.role
        names = {layer.kind for layer in self.layers}
        if any(kind in kinds.OUTPUT_ROLE for kind in names):
            return "output"
        if any(kind in POOLS for kind in names):
            return "transition"
        return "convolution"


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: ordered blocks, plus the input it expects."""

    blocks: tuple[Block, ...]
    name: str | None = None
    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        shape = self.input_shape
        if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in shape)
                or not (1 <= shape[0] <= MAX_CHANNELS and 1 <= shape[1] <= MAX_SIDE and 1 <= shape[2] <= MAX_SIDE)):
            raise UserError(f"input shape {_brief(shape)} must be (C, H, W): whole numbers, C from 1 to "
                            f"{MAX_CHANNELS:,}, H and W from 1 to {MAX_SIDE:,}")
        object.__setattr__(self, "input_shape", tuple(int(v) for v in shape))

    @property
    def layers(self) -> list[Layer]:
        """The layers as written (a shared block's once)."""
        return [layer for block in self.blocks for layer in block.layers]

    @property
    def applied_layers(self) -> list[Layer]:
        """The layers in the order they run: a shared block's once per application (the table's rows)."""
        return [layer for block in self.blocks for _ in range(block.repeat) for layer in block.layers]

    def with_input(self, input_shape: tuple[int, int, int]) -> NetworkSpec:
        return replace(self, input_shape=tuple(input_shape))


def layer_from_dict(data: dict[str, Any]) -> Layer:
    """Build a Layer from a mapping like {"kind": "conv", "out_channels": 16, "kernel_size": 3}."""
    known = {f.name for f in fields(Layer)}
    unknown = [str(key) for key in data if key not in known]
    if unknown:
        raise UserError(f"unknown layer field(s) {sorted(unknown)}; known: {sorted(known)}")
    if "kind" not in data:
        raise UserError(f"a layer mapping needs 'kind' (one of {', '.join(KIND_ARGS)})")
    return Layer(**data)
