"""The import structure of `src/invedit`: arrows point down (no cycles, module- or function-level), nothing imports
the command line or the web UI but the entry points, and the loop and its arithmetic name no method, editor,
backbone or command."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "invedit"
ENTRY_POINTS = {"invedit.cli", "invedit.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """Module → the invedit modules it imports anywhere in its body (function-level imports included)."""
    files = {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(module, is_package, node.level, node.module) if node.level else (node.module or "")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                # the deepest invedit module the name refers to (a submodule, else the module holding the name)
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module and name.startswith(PACKAGE):
                    graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert graph["invedit.sampling"]  # the walk found imports at all
    assert cycles(graph) == []


def test_nothing_imports_the_command_line_or_the_web_ui_but_the_entry_points():
    graph = import_graph()
    offenders = sorted((m, t) for m, targets in graph.items() for t in targets
                       if (t == "invedit.cli" or t == "invedit.ui" or t.startswith("invedit.ui."))
                       and m not in ENTRY_POINTS and not m.startswith("invedit.ui"))
    assert offenders == []


def test_the_loop_and_its_arithmetic_name_no_method_editor_backbone_or_command():
    graph = import_graph()
    forbidden = ("invedit.inversion", "invedit.editing", "invedit.backbones", "invedit.cli", "invedit.bench",
                 "invedit.ui", "invedit.api", "invedit.models")
    for module in ("invedit.sampling", "invedit.flow", "invedit.features", "invedit.errors"):
        assert not [t for t in graph[module] if t.startswith(forbidden)], module
