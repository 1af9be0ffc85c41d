"""The content-addressed store under build/store/ and the friendly links beside it.

An entry `build/store/<key>/` is complete when its `manifest.json` exists and every output
file the manifest lists is there with its size. Entries are built in
`build/store/.tmp/<key>.<pid>/` while the builder holds the key's lock
(`build/store/.locks/<key>.lock`, an OS file lock: a second build of the same key waits for
it, then finds the entry complete); every output file and directory is fsynced, the manifest
is written last, and the directory is renamed into place, so a killed build leaves either no
entry or a complete one. Friendly links (`build/<pipeline>/<step>`) are symlinks swapped
atomically. Up to date means "the store has a complete entry for this key", whatever doit's
own database says. `verify` re-hashes entries; `collect` is what `doit gc` frees.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

from . import entries as manifests
from .entries import MANIFEST, EntryError, EntryManifest, OutputFile
from .keys import canonical, digest, file_digest

STORE = Path("build") / "store"
HIDDEN = (".tmp", ".work", ".locks", ".corrupt")  # the store's own folders, never entries


def entry(root: Path | str, key: str) -> Path:
    return Path(root) / STORE / key


def read_entry(root: Path | str, key: str) -> EntryManifest | None:
    """The manifest of the entry for `key`, or None when there is none (or it does not read as
    a manifest: not JSON, or not of the type `compiler.entries` gives it)."""
    return _read(entry(root, key))


def _read(folder: Path) -> EntryManifest | None:
    try:
        return manifests.read(folder)
    except (OSError, EntryError):
        return None


def outputs_digest(outputs: dict[str, OutputFile]) -> str:
    """What consumers are keyed on: the digest of an entry's output files (name -> xxh3)."""
    return digest(canonical({name: o.xxh3_128 for name, o in outputs.items()}))


def output_digest(root: Path | str, key: str) -> str | None:
    """The outputs digest of a complete entry; None when it is missing or incomplete."""
    manifest = read_entry(root, key)
    if manifest is None or not _files_present(entry(root, key), manifest.outputs):
        return None
    return outputs_digest(manifest.outputs)


def _files_present(folder: Path, outputs: dict[str, OutputFile]) -> bool:
    """Every file the manifest lists exists with its size (a stat each; `verify` reads them)."""
    for name, o in outputs.items():
        try:
            if os.stat(folder / name).st_size != o.size:
                return False
        except OSError:
            return False
    return True


def is_complete(root: Path | str, key: str) -> bool:
    return output_digest(root, key) is not None


def point(root: Path | str, link: str, key: str) -> None:
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


def keep_pointed(root: str, link: str, key: str) -> None:
    """`point`, for every up-to-date step on every `doit`: when the link is right already (the
    usual case) this costs one readlink."""
    try:
        if os.readlink(f"{root}/{link}") == f"{_store_from(root, link.rpartition('/')[0])}/{key}":
            return
    except OSError:  # no link yet, or not a link
        pass
    point(Path(root), link, key)


@functools.cache
def _store_from(root: str, folder: str) -> str:
    """build/store/ relative to `folder` (relative to root): the start of every link target
    made there. Steps of one pipeline share a folder, so this is worked out once per pipeline."""
    return os.path.relpath(os.path.join(root, STORE), os.path.join(root, folder))


def read_manifest(root: Path | str, link: str) -> EntryManifest | None:
    """The manifest of the entry a friendly link points at, or None (no link, or no readable manifest)."""
    return _read(Path(root) / link)


def unlink(root: str, link: str) -> None:
    """doit's clean action: drop the friendly link; entries stay in the store, kept by key."""
    path = Path(root) / link
    if os.path.islink(path):
        os.unlink(path)
        print(f"removed link {link}")


# ---------------------------------------------------------------- building an entry

def _lock_path(root: Path | str, key: str) -> Path:
    return Path(root) / STORE / ".locks" / f"{key}.lock"


@contextlib.contextmanager
def lock(root: Path | str, key: str, task: str = "") -> Iterator[None]:
    """Hold the key's lock while building it: one builder per key, across processes and runs
    (two terminals, a CI matrix on one runner, the default and a profile sharing a key). The
    lock is the kernel's (flock), so a killed holder releases it."""
    path = _lock_path(root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  [{task}] waiting for another build of {key[:12]} to finish", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _locked(root: Path | str, key: str) -> bool:
    """Whether some process holds the key's lock now (it is building that key)."""
    path = _lock_path(root, key)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def staging(root: Path, key: str) -> Path:
    """A fresh private directory to build the entry for `key` in. The caller holds the key's
    lock, so any other staging folder of this key is a killed build's: it goes first."""
    tmp_root = Path(root) / STORE / ".tmp"
    for old in tmp_root.glob(f"{key}.*"):
        shutil.rmtree(old, ignore_errors=True)
    clear_stale(root)
    tmp = tmp_root / f"{key}.{os.getpid()}"
    tmp.mkdir(parents=True)
    return tmp


def work_dir(root: Path, key: str) -> Path:
    """A directory that outlives a killed build of `key` (training checkpoints live here, so
    the next attempt at the same key resumes); the runner removes it once the entry exists."""
    path = Path(root) / STORE / ".work" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def commit(root: Path, key: str, tmp: Path, manifest: EntryManifest) -> Path:
    """Make `tmp` the entry for `key`: fsync every file and folder in it, write the manifest
    last (fsynced too), rename the folder into place and fsync the store folder, so that after
    a crash at any point there is either no entry or a complete one."""
    for folder, _dirs, names in os.walk(tmp, topdown=False):
        for name in names:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))
    manifests.write(tmp, manifest)
    _fsync(tmp)
    final = entry(root, key)
    if final.exists() and not is_complete(root, key):  # damaged (a listed file gone): set it aside
        move_aside(root, key)
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(root, key):  # a complete entry is already there: keep it
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync(final.parent)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_stale(root: Path) -> None:
    """Remove staging directories left by builds that were killed."""
    for tmp in stale_staging(root):
        shutil.rmtree(tmp, ignore_errors=True)


def stale_staging(root: Path | str) -> list[Path]:
    """Staging directories of builds that were killed: their process is gone and nobody holds
    their key's lock."""
    tmp_root = Path(root) / STORE / ".tmp"
    out = []
    for tmp in sorted(tmp_root.iterdir()) if tmp_root.is_dir() else ():
        key, _, pid = tmp.name.rpartition(".")
        if not (pid.isdigit() and _alive(int(pid))) and not _locked(root, key):
            out.append(tmp)
    return out


def stale_work(root: Path | str, keep: set[str]) -> list[Path]:
    """Work (resume) directories of keys not in `keep` that nobody is building now."""
    work = Path(root) / STORE / ".work"
    return [folder for folder in (sorted(work.iterdir()) if work.is_dir() else ())
            if folder.name not in keep and not _locked(root, folder.name)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- verify and gc

def verify(root: Path | str, key: str) -> list[str]:
    """What is wrong with the entry for `key` against its manifest: missing, unreadable, a file
    missing, of another size or another xxh3 digest, or a file the manifest does not list.
    Empty when the entry is sound. Reads every byte."""
    folder = entry(root, key)
    if not folder.is_dir():
        return ["missing"]
    try:
        manifest = manifests.read(folder)
    except (OSError, EntryError) as exc:  # say why: another version's manifest, a hand edit
        return [f"no readable manifest.json: {exc}"]
    if manifest is None:
        return ["no readable manifest.json"]
    problems = []
    outputs = manifest.outputs
    for name, o in sorted(outputs.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != o.size:
            problems.append(f"{name}: {path.stat().st_size:,} bytes, the manifest says {o.size:,}")
        elif (found := file_digest(path)) != o.xxh3_128:
            problems.append(f"{name}: xxh3 {found[:12]}, the manifest says {o.xxh3_128[:12]}")
    listed = set(outputs) | {MANIFEST}
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    problems += [f"{name}: not in the manifest" for name in extra if name not in listed]
    return problems


def move_aside(root: Path | str, key: str) -> Path:
    """Move a corrupt entry out of the store (to build/store/.corrupt/), so the next `doit`
    rebuilds it; kept for inspection until `doit gc`."""
    target = Path(root) / STORE / ".corrupt" / f"{key}.{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(entry(root, key), target)
    return target


def keys(root: Path | str) -> list[str]:
    """The key of every entry folder in the store (its manifest unread)."""
    base = Path(root) / STORE
    return [f.name for f in sorted(base.iterdir()) if f.name not in HIDDEN and f.is_dir()] if base.is_dir() else []


def entries(root: Path | str) -> dict[str, EntryManifest | None]:
    """Every entry folder in the store: key -> its manifest (None when it has none)."""
    return {key: read_entry(root, key) for key in keys(root)}


def size(path: Path) -> int:
    """Bytes of the files under `path` (hard-linked files counted each time)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
