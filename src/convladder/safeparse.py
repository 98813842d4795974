"""Bounded reading of the YAML and JSON a user hands us (ladder, sweep, frontier, config, spec files,
--model-args): a document whose aliases expand past a node count, that nests too deep or that is too
large is refused with one UserError before anything walks it.

Why: PyYAML shares an alias's object instead of copying it, so a billion-laughs document loads in
milliseconds — and then `str()`, `json.dumps` or a loop over it expands 10^9 values. The bound is on the
expanded count (an alias counts as everything it stands for), checked while the document is composed.
Scanning is libyaml's (C, when installed; it also stops at 1,000 levels); composing is done here,
without recursion, so depth and size are checked as each event arrives.

Also the message helpers every parser shares: `clip` cuts a value quoted in a message, `unknown_keys`
names the first few unknown keys with the closest known one (never the whole list).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from convladder.errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB: the largest ladder/sweep/config file shipped is under 10 KB
MAX_NODES = 20_000  # values after alias expansion (a ladder holds ~100; composing 20,000 takes ~0.2 s)
MAX_DEPTH = 64  # nesting levels (a config nests 3)
MAX_JSON_BYTES = 64 << 10  # JSON given on the command line (--model-args)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def cut(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def clip(value: Any, limit: int = 80) -> str:
    """repr of `value` cut to `limit` characters (a value quoted in a message), saying how long it was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters written out"
    return f"{text[:limit]}… ({size})"


_SYNONYMS = {"learning_rate": "lr", "learningrate": "lr", "wd": "weight_decay", "bs": "batch_size",
             "scheduler": "schedule", "optim": "optimizer", "max_epochs": "epochs"}


def close_names(key: str, names: list[str], n: int = 3) -> list[str]:
    """The names closest to a mistyped `key`, best first, at most `n`: the same name in other case or with
    '-' for '_'; a name that is a prefix of the key or the key of the name ('lr_rate' -> lr, 'run' -> runs,
    'epoch' -> epochs); a shared word ('num_epochs' -> epochs); then difflib's similar spellings
    ('rotation' -> rotate). Prefixes and words first, since difflib alone calls 'lr_rate' 'rotate'."""
    k = key.strip().lower().replace("-", "_")
    words = {w for w in k.split("_") if len(w) > 1}
    ranked: list[str] = [m for m in names if m in (k, _SYNONYMS.get(k))]
    ranked += [m for m in names if len(k) > 1 and (k.startswith(m) and (k[len(m):len(m) + 1] == "_"
               or len(k) - len(m) <= 2) or m.startswith(k))]
    ranked += [m for m in names if words & set(m.split("_"))]
    ranked += difflib.get_close_matches(k, names, n=n, cutoff=0.7)
    return list(dict.fromkeys(ranked))[:n]


def unknown_keys(unknown: Iterable[Any], known: Iterable[str], what: str = "key", shown: int = 3) -> str:
    """"unknown key(s) 'epoch' (did you mean 'epochs'?), 'x' and 7 more; known: ..." — at most `shown` named."""
    names = sorted(str(k) for k in unknown)
    known = sorted(known)
    parts = []
    for name in names[:shown]:
        close = close_names(name, known, n=1) if len(name) <= 100 else []
        parts.append(clip(name, 60) + (f" (did you mean {close[0]!r}?)" if close else ""))
    more = f" and {len(names) - shown:,} more" if len(names) > shown else ""
    listing = ", ".join(known) if len(known) <= 15 else f"{', '.join(known[:8])}, … ({len(known)} in all)"
    return f"unknown {what}{'s' if len(names) > 1 else ''} {', '.join(parts)}{more}; known: {listing}"


def read_text(path: str | Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """A UTF-8 text file of at most `max_bytes`; UserError (one line) when it is bigger, not a regular file,
    unreadable or not text. Reads at most max_bytes + 1 bytes, whatever the file's size."""
    p = Path(path)
    try:
        if not p.is_file():  # also refuses a FIFO or device, which would block or never end
            raise UserError(f"{what} {p} is not a regular file — give a text file")
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} {p} is larger than {max_bytes:,} bytes — such a file holds far less; "
                        "check that this is the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {p} is not UTF-8 text (byte {exc.start}) — save it as UTF-8") from None


def _line(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


def compose(text: str, what: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> yaml.Node | None:
    """The node tree of one YAML document (None when empty), refusing past `max_nodes` expanded values or
    `max_depth` levels. Syntax errors propagate as yaml.YAMLError (callers say file and line)."""
    if len(text) > MAX_BYTES:  # text given directly, not read by read_text
        raise UserError(f"{what}: {len(text):,} characters of YAML is more than such a document holds")
    loader = _LOADER(text)
    try:
        loader.get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # DocumentStart
        anchors: dict[str, tuple[yaml.Node, int]] = {}  # anchor -> (node, expanded size); size -1 while open
        stack: list[tuple[yaml.Node, list[yaml.Node], int, str | None]] = []  # node, children, count at start, anchor
        count = 0
        root: yaml.Node | None = None
        while True:
            event = loader.get_event()
            if isinstance(event, yaml.DocumentEndEvent):
                break
            node: yaml.Node | None = None
            size = 0
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    raise UserError(f"{what}{_line(event)}: alias *{cut(event.anchor, 40)} names no anchor — "
                                    "define &name before using *name")
                node, size = anchors[event.anchor]
                if size < 0:
                    raise UserError(f"{what}{_line(event)}: alias *{cut(event.anchor, 40)} refers to the value "
                                    "that holds it (a loop) — write the value out")
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                node, size = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style), 1
                if event.anchor is not None:
                    anchors[event.anchor] = (node, 1)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                if len(stack) >= max_depth:
                    raise UserError(f"{what}{_line(event)}: nested more than {max_depth} levels deep — such a "
                                    "file nests a few levels; check the brackets and indentation")
                seq = isinstance(event, yaml.SequenceStartEvent)
                kind = yaml.SequenceNode if seq else yaml.MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(kind, None, event.implicit)
                opened = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
                count += 1
                if event.anchor is not None:
                    anchors[event.anchor] = (opened, -1)
                stack.append((opened, [], count, event.anchor))
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                opened, children, start, anchor = stack.pop()
                opened.end_mark = event.end_mark
                opened.value = (children if isinstance(opened, yaml.SequenceNode)
                                else list(zip(children[0::2], children[1::2])))
                if anchor is not None:
                    anchors[anchor] = (opened, count - start + 1)
                node = opened  # its values were counted as they came
            if size:
                count += size
                if count > max_nodes:
                    raise UserError(f"{what}{_line(event)}: holds more than {max_nodes:,} values once its aliases "
                                    "(*name) are expanded — such a file needs a few hundred; remove the repeated "
                                    "aliases")
            if node is not None:
                if stack:
                    stack[-1][1].append(node)
                else:
                    root = node
        if not loader.check_event(yaml.StreamEndEvent):
            event = loader.get_event()
            raise UserError(f"{what}{_line(event)}: holds more than one YAML document (a second `---`) — keep one")
        return root
    finally:
        loader.dispose()


def load(text: str, what: str, **limits: int) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of one YAML document, bounded as in `compose`; data as yaml.safe_load gives it."""
    node = compose(text, what, **limits)
    if node is None:
        return None, None
    loader = _LOADER("")
    try:
        return loader.construct_document(node), node
    except (ValueError, OverflowError) as exc:  # e.g. an int of more than 4,300 digits
        raise UserError(f"{what}: a value cannot be read ({cut(str(exc), 120)})") from None
    finally:
        loader.dispose()


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists/dicts in `value`, counted without recursion, stopping once past `limit`."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json_text(text: str, what: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text typed by a user, bounded in size and depth; errors quote a clipped piece of it."""
    if len(text) > max_bytes:
        raise UserError(f"{what}: {len(text):,} characters of JSON ({clip(text, 40)}) is more than the "
                        f"{max_bytes:,} allowed — pass a short object such as '{{\"width\": 16}}'")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what}: {clip(text)} is not valid JSON ({exc.msg} at character {exc.pos}) — write an "
                        """object such as '{"width": 16}'""") from None
    except (RecursionError, ValueError) as exc:  # nesting past Python's stack; an int past 4,300 digits
        raise UserError(f"{what}: {clip(text, 40)} cannot be read ({type(exc).__name__}: {cut(str(exc), 80)})") from None
    if depth(value, max_depth) > max_depth:
        raise UserError(f"{what}: {clip(text, 40)} nests more than {max_depth} levels deep")
    return value
