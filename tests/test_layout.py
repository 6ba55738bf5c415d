"""The package's shape, checked from its own source: imports flow one way (the edge, the
doors, the pipeline, then the upstreams and the ledger, then the base modules), no module
imports itself back through others, and folders, modules and functions stay small enough
to read.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qwenproxy"

# Each layer may import its own modules and those of the layers below it, never above.
# `upstream` and `ledger` sit side by side and do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("api",),
    ("edge",),
    ("doors",),
    ("pipeline",),
    ("upstream", "ledger"),
    ("base",),
)
BASE = frozenset(
    {"config", "errors", "logs", "sse", "store", "background", "hosting",
     "serving", "resources"}
)  # fmt: skip
# Where everything is put together: the app factory (the package itself), the service
# container and `python -m qwenproxy`. They import any layer; only the top of the edge and
# the CLI import them (the gunicorn settings load the app in the worker, by name).
COMPOSITION = frozenset({"", "container", "__main__"})
MAY_IMPORT_COMPOSITION = frozenset({"cli", "api", "composition", "serving"})
MAX_MODULE_LINES = 400
MAX_MODULES_PER_FOLDER = 12
MAX_FUNCTION_LINES = 65  # "about 60": a function longer than this is doing two things


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("qwenproxy", *parts))] = path
    return found


MODULES = _modules()


def _area(module: str) -> str:
    """The layer name of a module: its first folder, `base` or `composition`."""
    rest = module.split(".")[1:]
    first = rest[0] if rest else ""
    if first in COMPOSITION:
        return "composition"
    if first in BASE:
        return "base"
    return first


def _level(area: str) -> int:
    for i, names in enumerate(LAYERS):
        if area in names:
            return i
    raise AssertionError(f"{area!r} is in no layer: add it to LAYERS in {__file__}")


def _imports(module: str, path: Path, top_level_only: bool = False) -> set[str]:
    """The package's modules that `module` imports, at any depth of its code unless
    `top_level_only` (then what runs when it is imported)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            # `from qwenproxy.x import y` imports the module x.y when there is one
            names += [f"{node.module}.{alias.name}" for alias in node.names]
            if node.module == "qwenproxy" and {a.name for a in node.names} == {"__version__"}:
                continue  # the version string, defined before the package imports anything
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


def test_imports_flow_down_the_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        area = _area(module)
        for target in _imports(module, path):
            target_area = _area(target)
            if target_area == "composition":
                if area not in MAY_IMPORT_COMPOSITION and module != "qwenproxy.serving":
                    wrong.append(f"{module} -> {target} (only the edge and CLI build the app)")
                continue
            if area == "composition":
                continue
            if area == "base" and module == "qwenproxy.serving" and target_area == "base":
                continue
            if _level(area) < _level(target_area):
                continue
            if _level(area) == _level(target_area) and area == target_area:
                continue
            wrong.append(f"{module} ({area}) -> {target} ({target_area})")
    assert not wrong, "imports against the direction edge -> ... -> base:\n" + "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    graph = {m: _imports(m, p, top_level_only=True) for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is how a package is put together.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    circles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state[target] == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif state[target] == 0:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if state[module] == 0:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_stays_readable(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by concept"


def test_a_function_stays_readable() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "functions to split:\n" + "\n".join(long)


def test_a_folder_stays_small() -> None:
    counts: dict[Path, int] = defaultdict(int)
    for path in MODULES.values():
        if path.name != "__init__.py":
            counts[path.parent] += 1
    big = {str(d.relative_to(PACKAGE.parent)): n for d, n in counts.items()}
    big = {d: n for d, n in big.items() if n > MAX_MODULES_PER_FOLDER}
    assert not big, f"folders of more than {MAX_MODULES_PER_FOLDER} modules: {big}"
