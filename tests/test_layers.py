"""The modules of vrtk import each other top-down: no two modules reach each other through imports, lazy ones
(inside functions) included, so each layer can be read and tested without the ones above it (issue 18)."""

from __future__ import annotations

import ast
from pathlib import Path

import vrtk

PACKAGE = Path(vrtk.__file__).parent


def module_name(path: Path) -> str:
    return ".".join(("vrtk", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the vrtk modules it imports anywhere in its source (``from vrtk.x import y`` counts for vrtk.x,
    and for vrtk.x.y when that is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vrtk"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("vrtk."))
        graph[name] = {d for d in deps if d in modules and d not in (name, "vrtk")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_vrtk_modules_import_each_other_top_down():
    graph = import_graph()
    assert {"vrtk.model", "vrtk.zoo", "vrtk.plugin_manager", "vrtk.folder_check"} <= set(graph)
    assert "vrtk.zoo" in graph["vrtk.model"]  # the graph sees imports at all
    loops = cycles(graph)
    assert not loops, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in loops)
