"""The compiler's layers point one way: the graph's node type (compiler/nodes.py) at the bottom,
the checks per kind above it, the project loader above them, and nothing in compiler/ imports
targets/ or the runner (the builders' heavy imports must never reach a compile)."""

from __future__ import annotations

import ast

from conftest import REPO


def imports() -> dict[str, set[str]]:
    """compiler module -> the compiler modules it imports, anywhere in its code (lazy imports too)."""
    mods = {p.stem for p in (REPO / "compiler").glob("*.py")}
    out = {}
    for name in mods:
        deps = set()
        for node in ast.walk(ast.parse((REPO / "compiler" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("compiler"):
                deps |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
        out[name] = deps & mods
    return out


def test_the_compiler_imports_no_circle():
    graph = imports()
    order: list[str] = []

    def visit(name: str, path: tuple) -> None:
        assert name not in path, f"import circle: {' -> '.join(path + (name,))}"
        if name not in order:
            for dep in sorted(graph[name]):
                visit(dep, path + (name,))
            order.append(name)

    for name in sorted(graph):
        visit(name, ())


def test_the_node_type_sits_below_the_checks_per_kind():
    graph = imports()
    assert not graph["nodes"] & {"project", "training", "evaluation", "curation", "sources", "graph"}
    for kind in ("training", "evaluation", "curation", "sources"):
        assert "nodes" in graph[kind] and "project" not in graph[kind], kind
    assert {"training", "evaluation", "curation"} <= graph["project"]


def test_the_compiler_never_imports_targets_or_the_runner():
    for path in (REPO / "compiler").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not [n for n in names if n.split(".")[0] in ("targets", "runner")], path.name
