"""The content-addressed store under build/store/ and the friendly links beside it.

An entry `build/store/<key>/` is complete when its `manifest.json` exists. Entries
are built in `build/store/.tmp/<key>.<pid>/` and renamed into place, so a killed
build never leaves a half-written entry; friendly links (`build/<pipeline>/<step>`)
are symlinks swapped atomically. Up to date means "the store has a complete entry
for this key", whatever doit's own database says.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
from pathlib import Path

STORE = Path("build") / "store"
MANIFEST = "manifest.json"


def entry(root: Path, key: str) -> Path:
    return Path(root) / STORE / key


def is_complete(root: Path, key: str) -> bool:
    return (entry(root, key) / MANIFEST).is_file()


def point(root: Path, link: str, key: str) -> None:
    """Make the friendly link `link` (relative to root) point at the entry for `key`."""
    path = Path(root) / link
    target = os.path.relpath(entry(root, key), path.parent)
    if os.path.islink(path) and os.readlink(path) == target:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def up_to_date(root: str, key: str, link: str) -> bool:
    """doit's uptodate check: the entry exists; then the friendly link is made to point at it.

    Runs for every step on every `doit`, so it works on strings and costs two system
    calls when the link is already right (a stat and a readlink); `point` does the rest.
    """
    if not os.path.isfile(f"{root}/{STORE}/{key}/{MANIFEST}"):
        return False
    try:
        if os.readlink(f"{root}/{link}") == f"{_store_from(root, link.rpartition('/')[0])}/{key}":
            return True
    except OSError:  # no link yet, or not a link
        pass
    point(Path(root), link, key)
    return True


# doit calls inspect.signature() on an uptodate callable for every step on every run (it looks
# for `task`/`values` parameters); a signature given once makes that a lookup (~12 ms per 1,000 steps).
up_to_date.__signature__ = inspect.signature(up_to_date)


@functools.cache
def _store_from(root: str, folder: str) -> str:
    """build/store/ relative to `folder` (relative to root): the start of every link target
    made there. Steps of one pipeline share a folder, so this is worked out once per pipeline."""
    return os.path.relpath(os.path.join(root, STORE), os.path.join(root, folder))


def unlink(root: str, link: str) -> None:
    """doit's clean action: drop the friendly link; entries stay in the store, kept by key."""
    path = Path(root) / link
    if os.path.islink(path):
        os.unlink(path)
        print(f"removed link {link}")


def staging(root: Path, key: str) -> Path:
    """A fresh private directory to build the entry for `key` in."""
    clear_stale(root)
    tmp = Path(root) / STORE / ".tmp" / f"{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def work_dir(root: Path, key: str) -> Path:
    """A directory that outlives a killed build of `key` (training checkpoints live here, so
    the next attempt at the same key resumes); the runner removes it once the entry exists."""
    path = Path(root) / STORE / ".work" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def commit(root: Path, key: str, tmp: Path, manifest: dict) -> Path:
    """Write the manifest last, then rename the staging directory into place."""
    data = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    final = entry(root, key)
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(root, key):  # another worker finished first: keep theirs
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def clear_stale(root: Path) -> None:
    """Remove staging directories left by builds that were killed (their process is gone)."""
    tmp_root = Path(root) / STORE / ".tmp"
    if not tmp_root.is_dir():
        return
    for tmp in tmp_root.iterdir():
        pid = tmp.suffix.lstrip(".")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(root: Path, link: str) -> dict | None:
    """The manifest of the entry a friendly link points at, or None."""
    try:
        return json.loads((Path(root) / link / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
