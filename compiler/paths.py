"""Paths a manifest gives, resolved against the project root: inside it, existing, and named
back to the user the way they wrote them when not. Stdlib only.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .nodes import Node

OUTSIDE_FIX = "copy the files into the project and give the path from its root (a link out of it is refused)"


def inside(node: Node, where: tuple, rel: str, root: Path) -> Path:
    """`rel` resolved against the project root; an error if it is absolute, leaves the project,
    or resolves (through a symbolic link) to somewhere outside it."""
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        how = "an absolute path" if os.path.isabs(rel) else "a path that leaves the project through '..'"
        raise node.error(where, "a path relative to the project root that stays inside it", f"'{rel}', {how}",
                         OUTSIDE_FIX)
    path = root / rel
    if not _exists(path):
        same_name = difflib.get_close_matches(rel, _find(root, Path(rel).name), n=1, cutoff=0)
        hint = f"did you mean '{same_name[0]}'? Paths are" if same_name else "check the path; it is"
        raise node.error(where, "an existing file or folder (relative to the project root)", f"'{rel}', which does not exist",
                         f"{hint} relative to the project root")
    if not path.resolve().is_relative_to(root):
        raise node.error(where, "a path relative to the project root that stays inside it",
                         f"'{rel}', which resolves to {path.resolve()} through a symbolic link", OUTSIDE_FIX)
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return False


def _find(root: Path, name: str) -> list[str]:
    """Paths (from the root) of what is called `name` in the project: the likely meant one
    when a path was given from the wrong folder. Skips build/ and hidden folders."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (folder == str(root) and d == "build")]
        if name in files or name in dirs:
            out.append(str((Path(folder) / name).relative_to(root)))
    return out
