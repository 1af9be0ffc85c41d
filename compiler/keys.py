"""Content keys: canonical JSON, xxh3 digests of files behind a stat cache, builder-code digests.

Reads: source files and the builder modules in `targets/` (and the project modules
they import where code runs). A module's digest is that of its syntax tree without
docstrings, so comments, docstrings and formatting never re-key a step; the installed
version of each tracked library a builder's modules import (LIBRARIES) enters its key too.
Writes: `build/.cache/digests.json`, a (path, size, mtime_ns) -> digest cache, so an
unchanged file is never read or parsed twice.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from dataclasses import dataclass
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
    """A spec as plain JSON data with every field marked UNKEYED left out, recursively; a list
    marked UNORDERED (a set written as a list) in a canonical order."""
    fields = _keyed_fields(type(value))
    if fields is not None:
        out = {name: keyed(getattr(value, name)) for name, _ in fields}
        for name, unordered in fields:
            if unordered and isinstance(out[name], list):
                out[name] = sorted(out[name], key=canonical)
        return out
    if isinstance(value, (list, tuple)):
        return [keyed(v) for v in value]
    if isinstance(value, dict):
        return {str(k): keyed(v) for k, v in value.items()}
    return value


@functools.cache
def _keyed_fields(cls: type) -> tuple[tuple[str, bool], ...] | None:
    """(name, unordered) of the keyed fields of a pydantic model class, in order; None for any
    other type. Cached per class: a thousand steps share a handful of classes."""
    if not issubclass(cls, BaseModel):
        return None
    return tuple((name, bool((info.json_schema_extra or {}).get("unordered")))
                 for name, info in cls.model_fields.items() if (info.json_schema_extra or {}).get("keyed", True))


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

    def module(self, root: Path, name: str, path: Path) -> "ModuleFacts":
        """`module_facts` of a project module, behind the same stat cache (parsing ~70 modules
        on every compile would cost more than all the rest of a no-op run)."""
        st = os.stat(path)
        entry = f"ast:{_LIBRARIES_DIGEST}:{name}:{path}"  # a new LIBRARIES table makes new facts
        hit = self.cache.get(entry)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return ModuleFacts(hit[2], tuple(hit[3]), tuple(hit[4]))
        facts = module_facts(root, name, path)
        self.cache[entry] = [st.st_size, st.st_mtime_ns, facts.digest, list(facts.imports), list(facts.libraries)]
        self.dirty = True
        return facts

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


# Libraries whose version changes what a builder writes, by the top-level name a builder
# imports -> the distribution whose version enters the key of every builder that imports it.
LIBRARIES = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers", "gguf": "gguf",
             "llama_cpp": "llama_cpp_python", "safetensors": "safetensors", "numpy": "numpy",
             "py3langid": "py3langid", "peft": "peft", "jinja2": "jinja2", "matplotlib": "matplotlib",
             "markdown": "markdown"}


_LIBRARIES_DIGEST = xxhash.xxh3_64_hexdigest(json.dumps(LIBRARIES, sort_keys=True).encode())


@dataclass(frozen=True)
class ModuleFacts:
    """What a module contributes to a builder's code digest: the digest of its normalized
    syntax tree, the project modules and the tracked libraries it imports where code runs."""

    digest: str
    imports: tuple[str, ...]
    libraries: tuple[str, ...]


def module_facts(root: Path, module: str, path: Path) -> ModuleFacts:
    """Parse `module` once: its code digest (docstrings, comments and formatting do not count)
    and its runtime imports (those under `if TYPE_CHECKING:` do not run, so they do not count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    project, libraries = set(), set()
    for node in _runtime_nodes(tree):
        for name in _imported(node, package):
            top = name.split(".")[0]
            if top in PROJECT_PACKAGES and _module_file(root, name):
                project.add(name)
                if _module_file(root, top):  # importing a submodule runs the package's __init__ too
                    project.add(top)
            elif top in LIBRARIES:
                libraries.add(LIBRARIES[top])
    return ModuleFacts(digest(ast.dump(_without_docstrings(tree), include_attributes=False).encode()),
                       tuple(sorted(project)), tuple(sorted(libraries)))


def _imported(node: ast.AST, package: str) -> list[str]:
    """Absolute names an import statement imports (a `from X import y` may name a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """The tree with the docstring of the module and of every class and function removed
    (in place: the tree is parsed for this alone). A body left empty gets `pass`."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


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


@dataclass(frozen=True)
class Code:
    """A builder's code as it enters keys: the normalized-syntax digest of each project module
    it runs, and the version of each tracked library those modules import."""

    modules: dict[str, str]
    libraries: dict[str, str | None]

    def as_json(self) -> dict:
        return {"modules": dict(sorted(self.modules.items())), "libraries": dict(sorted(self.libraries.items()))}


def code_of(root: Path, module: str, files: "FileDigests") -> Code:
    """A builder module and every project module it imports where code runs, transitively."""
    modules: dict[str, str] = {}
    libraries: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if name in modules or path is None:
            continue
        facts = files.module(root, name, path)
        modules[name] = facts.digest
        libraries.update(facts.libraries)
        todo.extend(facts.imports)
    return Code(modules, {lib: library_version(lib) for lib in sorted(libraries)})


@functools.cache
def library_version(distribution: str) -> str | None:
    """The installed version of a distribution (None when absent), from its metadata: the
    library is never imported, so compiling stays light."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
