"""The import graph of the sources (docs/architecture.md): no cycles, and the kernels a pure layer.

The graph is read from the source files with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` statement anywhere in a module (function-level and ``TYPE_CHECKING`` imports
included), absolute and relative, resolved to the module of ``gradsurg`` or ``gradsurg_kernels`` it
names. ``from .pkg import name`` is an arrow to ``pkg.name`` when that is a module, else to ``pkg``.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: package name -> the folder holding it
PACKAGES = {"gradsurg": ROOT, "gradsurg_kernels": os.path.join(ROOT, "kernels")}


def _modules() -> dict[str, str]:
    """Module name -> source path, for every module of the packages."""
    found = {}
    for package, base in PACKAGES.items():
        for folder, _, files in os.walk(os.path.join(base, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), base)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(folder, name)
    return found


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _owner(name: str, modules) -> str | None:
    """The module of ours that ``name`` (a dotted import target) lies in, or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (self-imports dropped)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        arrows = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.append(sub if sub in modules else base)
            else:
                continue
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    arrows.add(owner)
        graph[module] = arrows
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_reads_every_kind_of_import():
    graph = import_graph()
    assert "gradsurg.api" in graph and "gradsurg_kernels.launch" in graph
    # relative, one level: from .engine.op import run
    assert "gradsurg.engine.op" in graph["gradsurg.api"]
    # relative, two levels: from ..paradigm import Paradigm
    assert "gradsurg.paradigm" in graph["gradsurg.engine.dispatch"]
    # a function-level absolute import: the Triton backend imports the kernels lazily
    assert "gradsurg_kernels.launch" in graph["gradsurg.engine.triton_backend"]
    # from . import name, where name is a module
    assert "gradsurg_kernels.fused" in graph["gradsurg_kernels.launch"]


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


def test_kernels_import_nothing_of_gradsurg():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if not t.startswith("gradsurg_kernels"))
           for m, targets in graph.items() if m.startswith("gradsurg_kernels")}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"gradsurg_kernels is a pure layer, but imports gradsurg: {bad}"
