"""The services import each other in one direction only: no module of qwenproxy.services
reaches itself again through the others (counting every import, also those under
TYPE_CHECKING and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import qwenproxy.services

SERVICES = Path(qwenproxy.services.__file__).parent
PREFIX = "qwenproxy.services."


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SERVICES.glob("*.py"):
        if path.stem == "__init__":
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PREFIX):
                deps.add(node.module[len(PREFIX) :])
            elif isinstance(node, ast.Import):
                deps.update(a.name[len(PREFIX) :] for a in node.names if a.name.startswith(PREFIX))
        graph[path.stem] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (a depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep, [*path, dep])
                if found:
                    return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_module_of_services_imports_itself_through_others():
    graph = _graph()
    assert "completions" in graph and "stream_relay" in graph
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
