"""What the bench scripts share: a scratch folder, kept on request, and a copy of this
checkout's code for a project of their own."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
CODE = ("compiler", "targets", "runner.py", "dodo.py", "pyproject.toml")


@contextlib.contextmanager
def scratch(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder, removed afterwards unless `keep` (then its path is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def copy_code(root: Path, names: tuple[str, ...] = CODE) -> Path:
    """This checkout's `names` (the code by default) copied into `root`, caches left out."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    return root
