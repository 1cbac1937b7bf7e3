"""Package layout: no import circles, the layering between stages, module docstrings, sizes."""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

import pytest

PACKAGE = Path(str(resources.files("pie")))
MAX_FILE_LINES = 600
MAX_CLASS_LINES = 250
# A module or class over its size limit says why in one docstring line starting with this.
SIZE_REASON = "Kept whole:"

# What each stage must not import (prefixes of module names).
FORBIDDEN = {
    "pie.plan": ("pie.compiler", "pie.protocol", "pie.cost", "pie.serve", "pie.reduce"),
    "pie.models": ("pie.compiler", "pie.plan", "pie.protocol", "pie.cost", "pie.serve"),
    "pie.compiler": ("pie.protocol", "pie.cost", "pie.serve", "pie.reduce"),
    "pie.protocol": ("pie.cost", "pie.serve", "pie.reduce"),
    "pie.channel": ("pie.compiler", "pie.plan", "pie.protocol", "pie.cost", "pie.serve", "pie.models"),
    "pie.gc": ("pie.compiler", "pie.plan", "pie.protocol", "pie.cost", "pie.serve", "pie.models"),
    "pie.he": ("pie.compiler", "pie.plan", "pie.protocol", "pie.cost", "pie.serve", "pie.models"),
    "pie.crypto": ("pie.compiler", "pie.plan", "pie.protocol", "pie.cost", "pie.serve", "pie.models"),
}
# The cost model reads the protocol's public schedule and report, never the engine's internals.
COST_MAY_IMPORT = {"pie.protocol", "pie.protocol.schedule", "pie.protocol.report"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["pie", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
# The native extension is a submodule too, though not a Python file.
EXTENSIONS = {"pie._core"}


def _imports(name: str, path: Path) -> set[str]:
    """Every pie module ``name`` imports anywhere in the file: top level, in
    functions and under ``TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES or sub in EXTENSIONS else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert _cycles(GRAPH) == []


def test_cycle_finder_sees_a_circle() -> None:
    # The check above must be able to fail: a planted circle through a function-level import.
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["pie.plan.reference"].add("pie.compiler")
    assert any("pie.plan.reference" in c for c in _cycles(planted))


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_stage_does_not_import_later_stages(stage: str) -> None:
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        if name == stage or name.startswith(stage + ".")
        for dep in deps
        if any(dep == f or dep.startswith(f + ".") for f in FORBIDDEN[stage])
    }
    assert bad == set()


def test_cost_reads_only_the_public_protocol() -> None:
    used = {dep for name, deps in GRAPH.items() if name.startswith("pie.cost")
            for dep in deps if dep.startswith("pie.protocol")}
    assert used <= COST_MAY_IMPORT


def test_reference_interpreter_needs_only_the_data_types() -> None:
    assert "pie.plan.plan" not in GRAPH["pie.plan.reference"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_says_what_it_owns(name: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc and doc.splitlines()[0].strip(), f"{name} has no docstring"


def _has_reason(doc: str | None) -> bool:
    return bool(doc) and any(line.strip().startswith(SIZE_REASON) for line in doc.splitlines())


def test_no_oversized_file_or_class_without_a_reason() -> None:
    oversized = []
    for name, path in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text)
        if text.count("\n") > MAX_FILE_LINES and not _has_reason(ast.get_docstring(tree)):
            oversized.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES and not _has_reason(ast.get_docstring(node)):
                    oversized.append(f"{name}.{node.name}: {size} lines")
    assert oversized == []
