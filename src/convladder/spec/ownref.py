"""The text half of own classes (`path/to/file.py:ClassName`): recognising, parsing and naming the form, and
hashing a file's text — without importing torch, so that listing runs, checking ladders and resolving names
stay instant. Importing and running a person's class is `spec/own.py`.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from convladder.errors import UserError

OWN_REF = re.compile(r"^(?P<file>.+\.py):(?P<cls>[A-Za-z_][A-Za-z0-9_]*)$")


def is_own_ref(text: object) -> bool:
    """Whether `text` is the explicit own-model form `file.py:ClassName`."""
    return isinstance(text, str) and OWN_REF.match(text.strip()) is not None


@dataclass(frozen=True)
class OwnRef:
    """A parsed `file.py:ClassName`: as given, and with the file's absolute path."""

    given: str
    path: Path
    cls: str

    @property
    def text(self) -> str:
        """The absolute form, what a run rebuilds from."""
        return f"{self.path}:{self.cls}"


def parse_own_ref(text: str, base_dir: str | Path | None = None) -> OwnRef:
    """`file.py:ClassName` -> OwnRef; a relative file is taken relative to `base_dir` (default: cwd)."""
    match = OWN_REF.match(text.strip())
    if not match:
        raise UserError(f"{text!r} is not of the form path/to/file.py:ClassName")
    path = Path(match["file"]).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return OwnRef(text.strip(), path.resolve(), match["cls"])


def module_classes(path: Path) -> list[str] | None:
    """The nn.Module classes a file defines, read with ast (nothing is imported or run); None if unreadable.

    A class counts when a base is named `Module` (nn.Module, torch.nn.Module), a torch.nn container
    (Sequential, ModuleList, ModuleDict) or another class of the file that counts.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
            if bases & {"Module", "Sequential", "ModuleList", "ModuleDict", *found}:
                found.append(node.name)
    return found


def no_class_message(text: str, base_dir: str | Path | None = None) -> str:
    """The message for `file.py` given without `:ClassName`, naming the form and the file's classes."""
    given = text.strip()
    path = Path(given).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    classes = module_classes(path) if path.is_file() else None
    first = "Net" if not classes or "Net" in classes else classes[-1]  # blocks come first, the network last
    if not path.is_file():
        listed = f" ({path} does not exist either)"
    elif classes is None:
        listed = " (the file cannot be read as Python)"
    else:
        listed = f" (its nn.Module classes: {', '.join(classes)})" if classes else " (it defines no nn.Module class)"
    return (f"{given!r} is a Python file, not a network — name the class in it: {given}:{first}{listed}; "
            "importing it runs that file")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
