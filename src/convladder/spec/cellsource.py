"""The source of a class defined in a notebook cell or a REPL, made importable on its own.

IPython keeps every cell it ran: the code objects of a cell's functions name it in `co_filename`
('/tmp/ipykernel_<pid>/<hash>.py' in Jupyter, '<ipython-input-N-...>' in a terminal IPython), `linecache`
holds its text, and the shell's history lists the cells in the order they ran. From the cells run so far
(the class from the cell that defined it), this module keeps only what the class needs to be built again:

- the top-level `import` / `from ... import` statements that bind a name the class (or a kept helper) reads;
- the top-level `def` and `class` statements of those names (helper functions, blocks, base classes), the
  latest definition winning, as in the kernel, which looks a global up when it is used;
- top-level constants those names read (`dropout_value = 0.05`: a literal assigned to a name).

Everything else — expressions, calls, loops, `model = Net()`, `convladder.train(...)`, data loading, magics —
is left out, so importing the recorded text only imports modules and defines things. Names the class reads
that no kept statement binds are listed in `missing` (the trainer then checks the rebuild and says so).
"""

from __future__ import annotations

import ast
import builtins
import linecache
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class CellSource:
    """A class's recovered source: importable text, the cells it came from, names nothing bound."""

    text: str
    cells: list[str]  # where each kept statement came from: 'In[3]', or the code's file name outside IPython
    missing: list[str] = field(default_factory=list)


def code_file(cls: type) -> str | None:
    """The `co_filename` of the class's own methods (None for a class without any)."""
    for value in vars(cls).values():
        for candidate in (value, getattr(value, "__func__", None), getattr(value, "fget", None)):
            code = getattr(candidate, "__code__", None)
            if code is not None:
                return code.co_filename
    return None


def is_cell(filename: str | None) -> bool:
    """Whether `filename` is code IPython (or a REPL) registered in linecache rather than a file on disk.

    IPython caches each cell with mtime None, which `linecache.checkcache` never evicts; a real file has
    its mtime there (or is not cached at all).
    """
    if not filename:
        return False
    entry = linecache.cache.get(filename)
    return entry is not None and len(entry) == 4 and entry[1] is None and bool(entry[2])


def _shell() -> Any:
    """The running IPython shell, if IPython is imported already (convladder never imports it)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    return get() if callable(get) else None


def _history(filename: str, cell: str) -> tuple[list[tuple[str, str]], int]:
    """(label, text) of every cell run so far, oldest first, and the index of the one that defined the class.

    All of them, not only those before the class: a function the class calls is looked up when it is called,
    so the kernel runs its latest definition — a helper defined in a later cell included. The cell's number
    comes from IPython's map of cell file names to execution counts, else from matching its text in the
    history. Without IPython: the inputs Python's own REPL keeps (3.13+: '<python-input-N>'), else the cell alone.
    """
    shell = _shell()
    hist = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    if not isinstance(hist, list) or not hist:
        return _repl_inputs(filename, cell)
    number = getattr(getattr(shell, "compile", None), "_filename_map", {}).get(filename)
    wanted = cell.splitlines()
    if not (isinstance(number, int) and 0 < number < len(hist) and hist[number].splitlines() == wanted):
        number = next((i for i in range(len(hist) - 1, 0, -1) if hist[i].splitlines() == wanted), None)
    if number is None:
        return [(Path(filename).name, cell)], 0
    return [(f"In[{i}]", hist[i]) for i in range(1, len(hist))], number - 1


_REPL_INPUT = re.compile(r"^<python-input-(\d+)>$")


def _repl_inputs(filename: str, cell: str) -> tuple[list[tuple[str, str]], int]:
    """Python's REPL (3.13+) keeps each input in linecache as '<python-input-N>': all of them, in order."""
    if not _REPL_INPUT.match(filename):
        return [(Path(filename).name, cell)], 0
    found = sorted((int(m[1]), name) for name in list(linecache.cache) if (m := _REPL_INPUT.match(str(name))))
    cells = [(name, "".join(linecache.cache[name][2])) for _, name in found]
    return cells, [name for _, name in found].index(filename)


def _segment(text_lines: list[str], node: ast.stmt) -> str:
    """The statement's lines, decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "".join(text_lines[first - 1:node.end_lineno]).rstrip() + "\n"


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _binds(node: ast.stmt) -> list[str]:
    """Names a kept top-level statement binds ('*' for a star import); [] for statements that are left out."""
    if isinstance(node, ast.Import):
        return [a.asname or a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [a.asname or a.name for a in node.names]
    if isinstance(node, _DEFS):
        return [node.name]
    if isinstance(node, ast.Assign) and _literal(node.value) and all(isinstance(t, ast.Name) for t in node.targets):
        return [t.id for t in node.targets]  # type: ignore[attr-defined]
    if isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name) \
            and _literal(node.value):
        return [node.target.id]
    return []


def _assigned(node: ast.stmt) -> list[str]:
    """Names a top-level assignment binds (`x = ...`, `x: T = ...`, `x += ...`, `a, b = ...`)."""
    targets = node.targets if isinstance(node, ast.Assign) else \
        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def free_names(node: ast.AST) -> set[str]:
    """Names a statement reads that it does not bind itself (parameters, locals, nested defs): a superset of
    the globals it needs, close enough to pick the helpers to keep."""
    loads, bound = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (loads if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, ast.arg):
            bound.add(sub.arg)
        elif isinstance(sub, _DEFS) and sub is not node:
            bound.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound.update(a.asname or a.name.split(".")[0] for a in sub.names)
    return loads - bound


@dataclass
class _Stmt:
    order: tuple[int, int]  # (cell, position): the order it ran
    cell: str
    text: str
    node: ast.stmt


def compose(name: str, cells: list[tuple[str, str]], pin: int | None = None) -> CellSource | None:
    """The importable source of class `name` from cells (label, text) run in this order; None when no cell
    defines it. `pin`: the index of the cell whose definition of `name` is the class (a later cell may define
    another class of that name); every other name takes its latest definition."""
    defs: dict[str, _Stmt] = {}
    imports: dict[str, _Stmt] = {}
    stars: list[_Stmt] = []
    pinned: list[_Stmt] = []
    for ci, (label, text) in enumerate(cells):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # a cell that does not parse (or never ran) binds nothing we can keep
        lines = text.splitlines(keepends=True)
        for pos, node in enumerate(tree.body):
            stmt = _Stmt((ci, pos), label, _segment(lines, node), node)
            if ci == pin and isinstance(node, ast.ClassDef) and node.name == name:
                pinned.append(stmt)
            kept = _binds(node)
            if not kept:  # `block = make_block()` rebinds a name to what we cannot keep: the old def is not it
                for gone in _assigned(node):
                    defs.pop(gone, None)
                    imports.pop(gone, None)
            for bound in kept:
                if bound == "*":
                    stars.append(stmt)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    imports[bound] = stmt
                    defs.pop(bound, None)  # a later import replaces an earlier definition of the name
                else:
                    defs[bound] = stmt
                    imports.pop(bound, None)
    if pin is not None:  # the class is the definition in its own cell, whatever came after
        defs.pop(name, None)
        for stmt in pinned:
            defs[name] = stmt
    if name not in defs or not isinstance(defs[name].node, ast.ClassDef):
        return None
    kept: dict[tuple[int, int], _Stmt] = {}
    missing: list[str] = []
    todo, seen = [name], set()
    while todo:
        needed = todo.pop()
        if needed in seen:
            continue
        seen.add(needed)
        if needed in defs:
            kept[defs[needed].order] = defs[needed]
            todo.extend(sorted(free_names(defs[needed].node)))
        elif needed in imports:
            kept[imports[needed].order] = imports[needed]
        elif not hasattr(builtins, needed):
            missing.append(needed)
    if missing and stars:  # a star import may bind them: keep it, and no longer claim they are unbound
        kept.update((s.order, s) for s in stars)
        missing = []
    ordered = [kept[k] for k in sorted(kept)]
    labels = list(dict.fromkeys(s.cell for s in ordered))
    head = (f"# Recorded by convladder from {', '.join(labels)}: the imports, definitions and constants that class "
            f"{name} uses,\n# in the order they ran. Nothing else from those cells was kept (no training, no data, "
            "no other statements).\n\n")
    body = ""
    for before, stmt in zip([None, *ordered], ordered):  # PEP 8 spacing: two blank lines around def and class
        wide = isinstance(stmt.node, _DEFS) or isinstance(getattr(before, "node", None), _DEFS)
        body += ("" if before is None else "\n\n\n" if wide else "\n") + stmt.text.rstrip("\n")
    return CellSource(head + body + "\n", labels, sorted(missing))


def cell_source(cls: type) -> CellSource | None:
    """The recovered source of a class defined in a notebook cell or REPL; None when it is not such a class or
    its cell is gone (a plain `python` REPL keeps no cell text)."""
    filename = code_file(cls)
    if not is_cell(filename):
        return _by_history(cls) if filename is None else None
    cell = "".join(linecache.cache[filename][2])  # type: ignore[index]
    cells, pin = _history(filename, cell)
    return compose(cls.__name__, cells, pin)


def _by_history(cls: type) -> CellSource | None:
    """A class with no methods of its own (e.g. `class Net(nn.Sequential): pass`): the last cell defining it."""
    shell = _shell()
    hist = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    if cls.__module__ != "__main__" or not isinstance(hist, list):
        return None
    for number in range(len(hist) - 1, 0, -1):
        try:
            tree = ast.parse(hist[number])
        except SyntaxError:
            continue
        if any(isinstance(n, ast.ClassDef) and n.name == cls.__name__ for n in tree.body):
            return compose(cls.__name__, [(f"In[{i}]", hist[i]) for i in range(1, len(hist))], number - 1)
    return None
