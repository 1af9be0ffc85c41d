"""Plug-ins: code of the project that a manifest names as `module:PATH:NAME`.

`architecture: module:models/trm.py:TRM` on a model manifest, `optimizer.kind:
module:optim/lion.py:Lion` on a train step: PATH is a Python file relative to the project
root, NAME a class (or other top-level name) it defines. At compile time the file is found
inside the project and parsed, never imported (compiling imports no torch), and NAME must be
defined at its top level. The file, and every file of the project it imports (`import
models.common`, `from .common import x`, resolved from the project root and the file's own
folder), are inputs of each step that runs the plug-in: their contents enter the step's key,
so an edit to the plug-in rebuilds what it trains and nothing else. Stdlib only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .nodes import Node
from .paths import inside

PREFIX = "module:"
PATTERN = r"^module:[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$"
_REF = re.compile(PATTERN)
FORM = "`module:PATH:NAME`, PATH a .py file relative to the project root and NAME a class it defines"


def is_plugin(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse(ref: str) -> tuple[str, str]:
    """(path relative to the project root, name) of `module:PATH:NAME`."""
    if not _REF.match(ref):
        raise ValueError(f"'{ref}' is not {FORM}")
    _, path, name = ref.split(":")
    return path, name


def check(node: Node, where: tuple, ref: str, root: Path) -> Path:
    """The plug-in file of `ref`, checked: inside the project, a Python file that parses and
    defines `NAME` at its top level. Errors name the manifest's field."""
    rel, name = parse(ref)
    path = inside(node, where, rel, root)
    if not path.is_file():
        raise node.error(where, "a Python file", f"'{rel}', a folder", f"name the .py file that defines {name}")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise node.error(where, "a plug-in module that parses",
                         f"'{rel}'{f', line {line}' if line else ''}: {getattr(exc, 'msg', exc)}",
                         "fix the module's syntax") from None
    defined = top_level_names(tree)
    if name not in defined:
        classes = sorted(n for n, kind in defined.items() if kind == "class")
        have = f"it defines the classes {', '.join(classes)}" if classes else "it defines no class"
        raise node.error(where, f"a top-level `{name}` in '{rel}'", f"none: {have}",
                         f"define class {name} in {rel}, or name one of its classes")
    return path


def top_level_names(tree: ast.Module) -> dict[str, str]:
    """Name -> `class`, `function` or `name` for what a module's top level binds."""
    out: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef):
            out[stmt.name] = "class"
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[stmt.name] = "function"
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            out.update({t.id: "name" for t in targets if isinstance(t, ast.Name)})
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            out.update({(a.asname or a.name).split(".")[0]: "name" for a in stmt.names})
    return out


def files(ref: str, root: Path) -> list[Path]:
    """The plug-in's file and the project files it imports, transitively, in a stable order."""
    rel, _ = parse(ref)
    seen: dict[Path, None] = {}
    todo = [root / rel]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen[path] = None
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue  # `check` reports the plug-in's own file; an imported one fails when it runs
        todo.extend(_local_imports(tree, path, root))
    return sorted(seen)


def _local_imports(tree: ast.Module, path: Path, root: Path) -> list[Path]:
    """Files of the project that the module at `path` imports: absolute names resolved from
    the project root (its folder is on sys.path when the plug-in runs), relative ones from
    the module's folder."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [(root, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = path.parent
            for _ in range(max(node.level - 1, 0)):
                base = base.parent
            start = base if node.level else root
            module = node.module or ""
            names = [(start, module)] + [(start, f"{module}.{a.name}" if module else a.name) for a in node.names]
        else:
            continue
        for start, name in names:
            if not name:
                continue
            target = start.joinpath(*name.split("."))
            for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
                    out.append(candidate)
    return out
