"""Every module's imports (top-level and inside functions) follow the layer order of docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import convladder

SRC = Path(convladder.__file__).parent
DOC = SRC.parent.parent / "docs" / "ARCHITECTURE.md"

# Lowest first; a module may import its own layer and the ones before it, never a later one.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "fileio", "interrupts", "paths", "safeparse", "version"),
    ("data", "spec"),
    ("analysis",),
    ("runs",),
    ("train",),
    ("ladder", "executors"),
    ("report", "serve", "doctor"),
    ("cli", "__main__", "api", "cliopts"),
]
CLI = len(LAYERS) - 1

# Upward imports that remain, each with its reason; the test fails when one is no longer needed, too.
EXCEPTIONS = {
    # `convladder.train(...)`: the train package is callable and hands over to the Python API in the root package
    ("convladder.train", "convladder"): "callable package -> convladder._train",
}
MAX_UPWARD = 1  # issue 32: at most this many upward imports (RunReport moved to report/runreport.py; __version__ to version.py)
MAX_TRAIN_FUNCTION_LINES = 80  # issue 32: no function in train/ longer (train_batched was 98)


def module_name(path: Path) -> str:
    parts = ["convladder", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """The layer of a module: the root package and every area's commands.py are the command line / API."""
    if module == "convladder" or module.rsplit(".", 1)[-1] == "commands":
        return CLI
    area = module.split(".")[1]
    return next((i for i, names in enumerate(LAYERS) if area in names), None)


def is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imported(path: Path, module: str) -> set[str]:
    """Every convladder module named by an import anywhere in the file (function bodies included)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            # `from convladder import x`: x counts when it is a module or package (its own layer decides)
            names.update(f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}"))
    return {n for n in names if n == "convladder" or n.startswith("convladder.")}


def upward_imports() -> dict[tuple[str, str], str]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        own = layer(module)
        assert own is not None, f"{module}: a package missing from LAYERS (and docs/ARCHITECTURE.md)"
        for name in imported(path, module):
            target = layer(name)
            if target is not None and target > own:
                found[(module, name)] = f"{path.relative_to(SRC.parent)}"
    return found


def test_no_module_imports_a_later_layer() -> None:
    found = upward_imports()
    unexpected = {k: v for k, v in found.items() if k not in EXCEPTIONS}
    assert not unexpected, "upward imports: " + "; ".join(f"{a} -> {b} ({where})" for (a, b), where in unexpected.items())
    stale = set(EXCEPTIONS) - set(found)
    assert not stale, f"no longer needed, remove from EXCEPTIONS (and the doc): {sorted(stale)}"


def test_upward_imports_stay_within_the_bound() -> None:
    found = upward_imports()
    assert len(found) <= MAX_UPWARD and len(EXCEPTIONS) <= MAX_UPWARD, sorted(found)


def import_graph() -> dict[str, set[str]]:
    """module -> the convladder modules it imports (top-level and inside functions)."""
    graph = {module_name(p): imported(p, module_name(p)) for p in sorted(SRC.rglob("*.py"))}
    return {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(comp)
    return found


def area(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_circle_spans_two_areas() -> None:
    """Within an area modules may import each other both ways; across areas, an import circle ties areas
    into one (RunReport.of_run in train/result.py once tied 29 modules of train/executors/ladder/report
    together). The listed upward imports hand over to the root package by design and are set aside."""
    graph = import_graph()
    for low_module, high in EXCEPTIONS:
        graph[low_module].discard(high)
    spanning = [sorted({area(m) for m in c}) for c in cycles(graph) if len({area(m) for m in c}) > 1]
    assert not spanning, f"import circles across areas: {spanning}"


def test_the_circle_finder_finds_circles() -> None:
    graph = {"convladder.a.x": {"convladder.b.y"}, "convladder.b.y": {"convladder.c.z"},
             "convladder.c.z": {"convladder.a.x"}, "convladder.d.w": {"convladder.a.x"}}
    assert cycles(graph) == [{"convladder.a.x", "convladder.b.y", "convladder.c.z"}]
    assert cycles({"convladder.a.x": {"convladder.b.y"}, "convladder.b.y": set()}) == []


def test_no_function_in_train_is_over_80_lines() -> None:
    long = []
    for path in sorted((SRC / "train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_TRAIN_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} {lines} lines")
    assert not long, long


def test_train_and_executors_do_not_import_each_other() -> None:
    for path in sorted((SRC / "train").rglob("*.py")):
        module = module_name(path)
        if layer(module) != CLI:
            assert not any(n.startswith("convladder.executors") for n in imported(path, module)), module


def test_doc_states_the_same_order() -> None:
    text = DOC.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("Layer order:"))
    order = [re.findall(r"`([a-z_]+)/?`", part) for part in line.split(":", 1)[1].split("→")]
    assert [tuple(o) for o in order] == [names for names in LAYERS[1:-1]] + [("cli",)], line


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from convladder.report.html import write_report\n    import convladder.serve.predict\n")
    assert imported(src, "convladder.train.m") >= {"convladder.report.html", "convladder.serve.predict"}
