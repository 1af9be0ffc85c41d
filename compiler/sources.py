"""The files a dataset reads, found at compile time so their digests enter its key.

Local globs are resolved against the project root and refused if they escape it (a
symbolic link out of the project included); a wildcard never walks into build/ (the store:
outputs, not sources) nor into hidden folders (.git, .venv);
the Python documentation corpus is `pydoc_data/topics.py` plus the source files of
the named standard-library modules (read with `ast` by the builder, never imported).
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

from .errors import did_you_mean
from .nodes import Node
from .specs import FilesSource, PydocsSource

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SKIP_PARTS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}
BUILD = "build"
STDLIB_LABEL = "<stdlib>"


def dataset_files(node: Node, root: Path) -> list[list[Path]]:
    """For each source of a dataset node, the sorted files it reads."""
    return [_files(node, i, src, root) for i, src in enumerate(node.spec.sources)]


def label(path: Path, root: Path) -> str:
    """How a source file is named in keys and manifests: relative to the project or the stdlib."""
    for base, prefix in ((root, ""), (STDLIB, STDLIB_LABEL + "/")):
        try:
            return prefix + path.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def _files(node: Node, i: int, src, root: Path) -> list[Path]:
    if isinstance(src, FilesSource):
        return _glob(node, i, src.glob, root)
    assert isinstance(src, PydocsSource)
    out = [STDLIB / "pydoc_data" / "topics.py"] if src.topics else []
    for j, module in enumerate(src.modules):
        out.extend(_module_files(node, (i, "modules", j), module))
    return out


def _glob(node: Node, i: int, pattern: str, root: Path) -> list[Path]:
    where = ("sources", i, "glob")
    if os.path.isabs(pattern) or ".." in Path(pattern).parts:
        how = "an absolute path" if os.path.isabs(pattern) else "a path that leaves the project through '..'"
        raise node.error(where, "a glob relative to the project root that stays inside it", f"'{pattern}', {how}",
                         "copy the data into the project, e.g. under data/, and point the glob there")
    if "\0" in pattern:
        shown = pattern.replace("\0", "\\0")
        raise node.error(where, "a glob of file names", f"'{shown}', which holds a NUL character",
                         "remove the NUL character (`\\0` in a quoted YAML string)")
    matches = []
    for name in _names(pattern, root):
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise node.error(where, "files inside the project", f"'{name}', which resolves to {path}",
                             "copy the data into the project instead of linking outside it")
        if path.is_file():
            if path.suffix not in (".txt", ".jsonl"):
                raise node.error(where, "only .txt and .jsonl files", f"'{name}'", "narrow the glob, e.g. `data/*.jsonl`")
            matches.append(path)
    if not matches:
        raise node.error(where, "a glob that matches at least one .txt or .jsonl file", f"no file matching '{pattern}'",
                         "check the pattern; it is relative to the project root")
    return matches


def _names(pattern: str, root: Path) -> list[str]:
    """What `glob.glob(pattern, root_dir=root, recursive=True)` finds, except that a wildcard in
    the first part of the pattern never enters build/ (`**/*.jsonl` would otherwise walk the
    whole store and read the datasets Ingot wrote). Hidden folders are skipped by glob itself."""
    while pattern.startswith("./"):
        pattern = pattern[2:]
    first, _, rest = pattern.partition("/")
    if not glob.has_magic(first) or not rest and first != "**":
        return sorted(glob.glob(pattern, root_dir=root, recursive=True))
    names = [n for n in glob.glob("*" if first == "**" else first, root_dir=root) if n != BUILD]
    tops = [n for n in names if os.path.isdir(root / n)]
    sub = pattern if first == "**" else rest  # `**` goes on matching folders inside each one
    out = [f"{top}/{name}" for top in tops for name in glob.glob(sub, root_dir=root / top, recursive=True)]
    if first == "**":  # `**` matching no folder at all
        out += _names(rest, root) if rest else names
    return sorted(set(out))


def _module_files(node: Node, where: tuple, module: str) -> list[Path]:
    base = STDLIB.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return sorted(p for p in base.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(STDLIB).parts))
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    known = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m != module)
    raise node.error(("sources",) + where, "a standard-library module written in Python", f"'{module}'",
                     did_you_mean(module, known) or "remove it; C modules such as 'sys' have no source to read")
