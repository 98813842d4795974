"""The compact text notation for networks, and its parser and printer.

Layers are separated by whitespace (or `>` / `->`); `#` starts a comment.
Every layer states its output channels, as the notes ask:

    conv1[conv3x3(16, bias=false) relu bn dropout(0.05)]
    trans1[maxpool2x2 conv1x1(8, bias=false)]
    out[gap conv1x1(10, bias=false) logsoftmax]

`name[ ... ]` is a named block (`name:role[ ... ]` sets its role explicitly); `name[ ... ]*3` is a shared
block: its layers built once and applied 3 times (docs/spec.md, "Shared weights").
`format_spec(parse_spec(t))` gives a canonical text, and
`parse_spec(format_spec(s)) == s` for every spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from convladder.errors import UserError
from convladder.spec import kinds
from convladder.spec.layers import (BLOCK_ROLES, BOOL_FIELDS, FLOAT_BOUNDS, INT_BOUNDS, KIND_ARGS, MAX_REPEAT, Block,
                                    Layer, NetworkSpec, arg_problem, max_layers, too_many_layers)

# Kind names, their aliases (batchnorm: bn, swish: silu, ...) and which kinds carry their window in the name
# (conv3x3) come from the registry, spec/kinds.py.
# Short argument names, applied only where the kind has no argument of that name (dropout's `p`).
ARG_ALIASES = {
    "s": "stride",
    "p": "padding",
    "d": "dilation",
    "g": "groups",
    "k": "kernel_size",
    "ceil": "ceil_mode",
    "out": "out_channels",
    "slope": "negative_slope",
}
BOOL_ARGS = BOOL_FIELDS
FLOAT_ARGS = frozenset(FLOAT_BOUNDS)
MAX_DIGITS = 30  # a whole number longer than this is out of every argument's range (and int() stops at 4,300)
SIZED_KIND = re.compile(rf"^({'|'.join(kinds.SIZED)})(\d+)x(\d+)$")

TOKEN = re.compile(
    r"(?P<space>\s+|#[^\n]*|->|>)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<number>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)"
    r"|(?P<punct>[()\[\],=:*])"
)


class SpecError(UserError):
    """A malformed spec; the message names the column and the token."""


@dataclass(frozen=True)
class Token:
    kind: str  # name | number | punct | end
    text: str
    pos: int  # 0-based offset into the text


def tokenize(text: str) -> list[Token]:
    """Split spec text into tokens, dropping whitespace and comments."""
    return list(iter_tokens(text))


def iter_tokens(text: str) -> Iterator[Token]:
    """The tokens of `text` one at a time (the parser stops early on an error or past the layer limit)."""
    pos = 0
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match:
            raise _error(text, pos, f"unexpected character {text[pos]!r}")
        if match.lastgroup != "space":
            yield Token(match.lastgroup or "", match.group(), pos)
        pos = match.end()
    yield Token("end", "", len(text))


def _error(text: str, pos: int, message: str) -> SpecError:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    near = text[pos : pos + 20].split("\n")[0] or "end of spec"
    where = f"line {line}, column {col}" if "\n" in text.strip() else f"column {col}"
    return SpecError(f"spec {where} at {near!r}: {message}")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[Token] = []  # read lazily: a 100,000-layer text is refused at layer 1,001
        self._source = iter_tokens(text)
        self.i = 0
        self.count = 0  # layers so far: refused past max_layers() before the rest is read
        self.limit = max_layers()

    def _read_to(self, index: int) -> Token:
        """Token `index`, reading more text as needed; the end token for anything past it."""
        while len(self.tokens) <= index and (not self.tokens or self.tokens[-1].kind != "end"):
            self.tokens.append(next(self._source))
        return self.tokens[min(index, len(self.tokens) - 1)]

    @property
    def tok(self) -> Token:
        return self._read_to(self.i)

    def peek(self, offset: int = 1) -> Token:
        return self._read_to(self.i + offset)

    def fail(self, message: str, tok: Token | None = None) -> SpecError:
        return _error(self.text, (tok or self.tok).pos, message)

    def expect(self, text: str) -> Token:
        if self.tok.text != text:
            raise self.fail(f"expected {text!r}")
        tok = self.tok
        self.i += 1
        return tok

    def parse(self) -> list[Block]:
        blocks: list[Block] = []
        loose: list[Layer] = []
        while self.tok.kind != "end":
            if self.tok.text == "*":
                raise self.fail("only a named block is applied several times: write e.g. res[conv3x3(8) relu bn]*3")
            if self.tok.kind != "name":
                raise self.fail("expected a layer (e.g. conv3x3(16), relu, bn) or a block name[...]")
            nxt = self.peek()
            is_block = nxt.text == "[" or (nxt.text == ":" and self.peek(3).text == "[")
            if is_block:
                if loose:
                    blocks.append(Block(None, tuple(loose)))
                    loose = []
                blocks.append(self.parse_block())
            else:
                loose.append(self.parse_layer())
        if loose:
            blocks.append(Block(None, tuple(loose)))
        if not blocks:
            raise self.fail("empty spec: write at least one layer")
        return blocks

    def parse_block(self) -> Block:
        name_tok = self.tok
        self.i += 1
        role = None
        if self.tok.text == ":":
            self.i += 1
            role_tok = self.tok
            if role_tok.text not in BLOCK_ROLES:
                raise self.fail(f"unknown block role {role_tok.text!r}; expected one of {', '.join(BLOCK_ROLES)}")
            role = role_tok.text
            self.i += 1
        self.expect("[")
        layers: list[Layer] = []
        while self.tok.text != "]":
            if self.tok.kind == "end":
                raise self.fail(f"block {name_tok.text!r} is not closed: expected ']'")
            if self.tok.kind != "name":
                raise self.fail("expected a layer inside the block")
            layers.append(self.parse_layer())
        if not layers:
            raise self.fail(f"block {name_tok.text!r} is empty")
        self.i += 1
        repeat = self.parse_repeat(name_tok.text, len(layers)) if self.tok.text == "*" else 1
        return Block(name_tok.text, tuple(layers), role, repeat)

    def parse_repeat(self, name: str, width: int) -> int:
        """`*N` after a block: how many times its shared layers are applied (each application counts as layers)."""
        star = self.tok
        self.i += 1
        tok = self.tok
        digits = tok.text.lstrip("0") if re.fullmatch(r"\d+", tok.text) else ""
        if tok.kind != "number" or not digits or len(digits) > 6 or int(digits) > MAX_REPEAT:
            raise self.fail(f"expected how many times block {name!r} is applied, a whole number from 1 to "
                            f"{MAX_REPEAT:,} (e.g. {name}[...]*3)", tok if tok.kind != "end" else star)
        self.i += 1
        repeat = int(digits)
        self.count += width * (repeat - 1)
        if self.count > self.limit:
            raise self.fail(too_many_layers(self.count), star)
        return repeat

    def parse_layer(self) -> Layer:
        kind_tok = self.tok
        self.count += 1
        if self.count > self.limit:
            raise self.fail(too_many_layers(self.count), kind_tok)
        self.i += 1
        raw = kind_tok.text.lower()
        fixed: dict[str, object] = {}
        sized = SIZED_KIND.match(raw)
        if sized:
            kind, kh_text, kw_text = sized.groups()
            if kh_text.lstrip("0") != kw_text.lstrip("0"):
                raise self.fail("only square kernels are supported: write e.g. conv3x3", kind_tok)
            fixed["kernel_size"] = self.whole_number("kernel_size", kh_text, kind_tok)
        else:
            kind = kinds.alias(raw)
        if kind not in KIND_ARGS:
            known = "conv3x3, conv1x1, maxpool2x2, avgpool2x2, " + ", ".join(
                k for k in KIND_ARGS if k not in kinds.SIZED
            )
            raise self.fail(f"unknown layer {kind_tok.text!r}; known: {known}", kind_tok)
        if kind in kinds.SIZED and "kernel_size" not in fixed and self.tok.text != "(":
            raise self.fail(f"{kind} needs a kernel size: write e.g. {kind}3x3", kind_tok)
        args = self.parse_args(kind) if self.tok.text == "(" else {}
        for name, value in fixed.items():
            if name in args and args[name] != value:
                raise self.fail(f"kernel_size given twice ({value} in the name, {args[name]} as argument)", kind_tok)
        args.update(fixed)
        declared = kinds.KINDS[kind]
        for name, hint in zip(declared.required, declared.hints):
            if name not in args:
                raise self.fail(hint, kind_tok)
        try:
            return Layer(kind=kind, **args)
        except UserError as exc:  # the checks above come first; this keeps any other refusal at its position
            raise self.fail(str(exc), kind_tok) from None

    def parse_args(self, kind: str) -> dict[str, object]:
        allowed = KIND_ARGS[kind]
        self.expect("(")
        args: dict[str, object] = {}
        positional = 0
        while self.tok.text != ")":
            if args or positional:
                self.expect(",")
            if self.tok.text == ")":
                break  # trailing comma
            if self.tok.kind not in ("name", "number"):
                raise self.fail("expected an argument (a value, or name=value)")
            key_tok = self.tok
            if self.tok.kind == "name" and self.peek().text == "=":
                key = self.tok.text.lower()
                if key not in allowed:
                    key = ARG_ALIASES.get(key, key)
                if key not in allowed:
                    raise self.fail(f"{kind} has no argument {key_tok.text!r}; it takes {', '.join(allowed) or 'none'}")
                self.i += 2
            else:
                if positional or not allowed or kind in kinds.POOLS:
                    raise self.fail(f"unexpected positional argument to {kind}; name it (e.g. stride=2)")
                key = allowed[0]
                positional += 1
            if key in args:
                raise self.fail(f"argument {key!r} given twice", key_tok)
            args[key] = self.parse_value(key)
        self.expect(")")
        return args

    def parse_value(self, key: str) -> object:
        tok = self.tok
        self.i += 1
        text = tok.text.lower()
        if key in BOOL_ARGS:
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise self.fail(f"{key} must be true or false", tok)
        if tok.kind != "number":
            raise self.fail(f"expected a number for {key}", tok)
        if key in FLOAT_ARGS:
            value = float(tok.text)  # a huge literal becomes inf, refused below: the printed text must parse again
            problem = arg_problem(key, value)
            if problem:
                raise self.fail(problem, tok)
            return value
        if not re.fullmatch(r"[-+]?\d+", tok.text):
            raise self.fail(f"{key} must be a whole number", tok)
        return self.whole_number(key, tok.text, tok)

    def whole_number(self, key: str, text: str, tok: Token) -> int:
        """`text` (digits, maybe signed) as `key`'s value, range-checked before int() sees a huge literal."""
        digits = text.lstrip("+-").lstrip("0")
        if len(digits) > MAX_DIGITS:
            low, high = INT_BOUNDS[key]
            raise self.fail(f"{key} must be a whole number from {low} to {high:,} (got one of {len(digits):,} "
                            "digits)", tok)
        value = int(text)
        problem = arg_problem(key, value)
        if problem:
            raise self.fail(problem, tok)
        return value


def parse_spec(text: str, name: str | None = None, input_shape: tuple[int, int, int] = (1, 28, 28)) -> NetworkSpec:
    """Parse spec text; raise SpecError naming the position of the first problem."""
    blocks = _Parser(text).parse()
    return NetworkSpec(blocks=tuple(blocks), name=name, input_shape=tuple(input_shape))


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_layer(layer: Layer) -> str:
    """Canonical text of one layer: every argument that is set, by torch's name."""
    args = layer.args()
    head = layer.kind
    declared = kinds.KINDS[layer.kind]
    if declared.sized:
        k = args.pop("kernel_size")
        head = f"{layer.kind}{k}x{k}"
    parts: list[str] = []
    first = declared.args[0] if declared.prints_first else None
    if first and first in args:
        parts.append(format_value(args.pop(first)))
    parts += [f"{key}={format_value(value)}" for key, value in args.items()]
    return f"{head}({', '.join(parts)})" if parts else head


def format_spec(spec: NetworkSpec, multiline: bool = False) -> str:
    """Canonical text of a spec; `parse_spec(format_spec(s))` equals `s`."""
    pieces: list[str] = []
    for block in spec.blocks:
        body = " ".join(format_layer(layer) for layer in block.layers)
        if block.name is None:
            pieces.append(body)
        else:
            role = f":{block.role}" if block.role else ""
            repeat = f"*{block.repeat}" if block.repeat > 1 else ""
            pieces.append(f"{block.name}{role}[{body}]{repeat}")
    return ("\n" if multiline else " ").join(pieces)
