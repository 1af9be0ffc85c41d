"""Content keys: canonical JSON, xxh3 digests of files behind a stat cache, builder-code digests.

Reads: source files and the builder modules in `targets/` (and the project modules
they import). Writes: `build/.cache/digests.json`, a (path, size, mtime_ns) ->
digest cache, so an unchanged file is never read twice.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path
from typing import Any

import xxhash
from pydantic import BaseModel

CACHE_FILE = Path("build") / ".cache" / "digests.json"
PROJECT_PACKAGES = ("targets", "compiler")


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, floats by repr; equal data, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def keyed(value: Any) -> Any:
    """A spec as plain JSON data with every field marked UNKEYED left out, recursively."""
    fields = _keyed_fields(type(value))
    if fields is not None:
        return {name: keyed(getattr(value, name)) for name in fields}
    if isinstance(value, (list, tuple)):
        return [keyed(v) for v in value]
    if isinstance(value, dict):
        return {str(k): keyed(v) for k, v in value.items()}
    return value


@functools.cache
def _keyed_fields(cls: type) -> tuple[str, ...] | None:
    """The keyed fields of a pydantic model class, in order; None for any other type.
    Cached per class: a thousand steps share a handful of classes."""
    if not issubclass(cls, BaseModel):
        return None
    return tuple(name for name, info in cls.model_fields.items()
                 if (info.json_schema_extra or {}).get("keyed", True))


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes, read in 4 MiB chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class FileDigests:
    """xxh3-128 of file contents, cached by (size, mtime_ns) in build/.cache/digests.json."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / CACHE_FILE
        try:
            self.cache: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}
        self.dirty = False

    def __call__(self, path: Path) -> str:
        st = os.stat(path)
        name = str(path)
        hit = self.cache.get(name)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        self.cache[name] = [st.st_size, st.st_mtime_ns, file_digest(path)]
        self.dirty = True
        return self.cache[name][2]

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.cache))
        os.replace(tmp, self.path)
        self.dirty = False


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _project_imports(root: Path, module: str, path: Path) -> set[str]:
    """Project modules (under targets/ or compiler/) that `module` imports, found with ast."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    source = path.read_text(encoding="utf-8")
    found = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PROJECT_PACKAGES and _module_file(root, name):
                found.add(name)
                found.add(top)  # importing a submodule runs the package's __init__ too
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:`: imports for type hints only do not
    run, so they do not change what a builder makes."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def code_digest(root: Path, module: str, files: FileDigests) -> str:
    """Digest of a builder module and every project module it imports, transitively."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if name in seen or path is None:
            continue
        seen[name] = files(path)
        todo.extend(_project_imports(root, name, path))
    return digest(canonical(seen))
