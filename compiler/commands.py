"""The commands beside building: `doit explain`, `doit verify` and `doit gc`, as doit tasks.

`verify [STEP ...] [--repair]` re-hashes the entries of the named steps (those a plain `doit`
builds when none is named) against their manifests; `--repair` moves a corrupt entry aside
so the next `doit` rebuilds it. `gc [--keep N] [--dry-run]` removes entries that no current
step of any profile references, keeping the N most recent entries of each step (the one it
references counts), stale staging and work folders, and entries moved aside by verify.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from doit.exceptions import TaskFailed

from . import explain, graph, project, store
from .errors import SpecError
from .plan import Graph


def tasks(g: Graph, defaults: list[str]) -> list[dict]:
    return [
        {"basename": "explain", "doc": "say why each step will run, or that it will not: doit explain [STEP ...]",
         "actions": [(explain.report, [g, defaults])], "pos_arg": "steps", "uptodate": [False]},
        {"basename": "verify", "doc": "re-hash store entries against their manifests: doit verify [STEP ...] "
                                      "[--repair]",
         "actions": [(verify, [g, defaults])], "pos_arg": "steps", "uptodate": [False], "verbosity": 2,
         "params": [{"name": "repair", "long": "repair", "type": bool, "default": False,
                     "help": "move corrupt entries aside, so the next `doit` rebuilds them"}]},
        {"basename": "gc", "doc": "remove store entries no step references: doit gc [--keep N] [--dry-run]",
         "actions": [(gc, [g.root])], "uptodate": [False], "verbosity": 2,
         "params": [{"name": "keep", "long": "keep", "type": int, "default": 1,
                     "help": "entries kept per step, the referenced one included"},
                    {"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
                     "help": "only print what would be removed"}]},
    ]


# ---------------------------------------------------------------- verify

def verify(g: Graph, defaults: list[str], steps: list[str], repair: bool) -> TaskFailed | None:
    """Print one line per step (the named ones, or those a plain `doit` builds): sound, corrupt
    (what is wrong), missing, or pending (a producer is not built, so there is no key to look
    up). Fails (doit exits 1) when an entry is corrupt and not repaired."""
    unknown = [name for name in steps if name not in g.plans]
    if unknown:
        return TaskFailed(f"verify: unknown step(s) {', '.join(unknown)}; `doit list` shows them all")
    counts = {"sound": 0, "corrupt": 0, "missing": 0, "pending": 0}
    for task in steps or [t for t in g.plans if t in set(defaults)]:
        key = g.key(task)
        if key is None:
            counts["pending"] += 1
            print(f"{task}: pending (not built: {', '.join(g.pending_on(task))})")
            continue
        problems = store.verify(g.root, key)
        if problems == ["missing"]:
            counts["missing"] += 1
            print(f"{task}: missing (no entry {key[:12]}; the next `doit` builds it)")
        elif problems:
            counts["corrupt"] += 1
            print(f"{task}: CORRUPT entry {key[:12]}")
            for problem in problems:
                print(f"  {problem}")
            if repair:
                aside = store.move_aside(g.root, key)
                print(f"  moved aside to {Path(aside).relative_to(g.root)}; the next `doit` rebuilds it")
        else:
            counts["sound"] += 1
            print(f"{task}: ok ({key[:12]})")
    print("verify: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    if counts["corrupt"] and not repair:
        return TaskFailed(f"verify: {counts['corrupt']} corrupt entr{'y' if counts['corrupt'] == 1 else 'ies'}; "
                          "`doit verify --repair` moves them aside, so the next `doit` rebuilds them")
    return None


# ---------------------------------------------------------------- gc

def gc(root: str, keep: int, dry_run: bool) -> bool:
    """Free what no current step needs; print each removal and the total."""
    if keep < 1:
        print("gc: --keep must be at least 1 (the entry a step references is always kept)")
        return False
    try:
        referenced, steps = current_keys(Path(root))
    except SpecError as exc:
        print(f"gc: the manifests do not compile, so nothing is removed:\n{exc}")
        return False
    doomed = collect(Path(root), referenced, steps, keep)
    kept = len(set(store.keys(root)) - {path.name for path, _ in doomed if path.parent.name == "store"})
    freed = 0
    for path, why in doomed:
        size = store.size(path)
        freed += size
        print(f"{'would remove' if dry_run else 'removed'} {Path(path).relative_to(root)} ({_mb(size)}, {why})")
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
    print(f"gc: {'would free' if dry_run else 'freed'} {_mb(freed)} in {len(doomed)} folder(s); kept {kept} entries")
    return True


def current_keys(root: Path) -> tuple[set[str], set[tuple[str, str | None]]]:
    """The keys current steps reference, under every profile (those the store can resolve),
    and every current step as (task, profile)."""
    base = project.load(root)
    keys, steps = set(), set()
    for profile in [None, *sorted(base.profiles)]:
        g = graph.compile_graph(base if profile is None else project.load(root, profile))
        for task in g.plans:
            steps.add((task, profile))
            if (key := g.key(task)) is not None:
                keys.add(key)
    return keys, steps


def collect(root: Path, referenced: set[str], steps: set[tuple[str, str | None]], keep: int) -> list[tuple[Path, str]]:
    """(folder, why) of everything gc frees: unreferenced entries beyond the `keep` most recent
    of each current step, entries of steps that no longer exist, stale staging and work
    folders, and entries verify moved aside."""
    by_step: dict[tuple, list[tuple[float, str]]] = {}
    doomed: list[tuple[Path, str]] = []
    for key, manifest in store.entries(root).items():
        if manifest is None:  # none, or one that does not read (`doit verify` says why)
            doomed.append((store.entry(root, key), "no readable manifest"))
            continue
        step = (manifest.task, manifest.profile)
        by_step.setdefault(step, []).append((manifest.timings.finished, key))
    for step, found in by_step.items():
        if step not in steps:
            doomed += [(store.entry(root, key), f"step {step[0]} is gone") for _, key in found]
            continue
        kept = sum(key in referenced for _, key in found)
        for _, key in sorted(found, reverse=True):
            if key in referenced:
                continue
            if kept < keep:
                kept += 1
                continue
            doomed.append((store.entry(root, key), f"an older entry of {step[0]}"))
    doomed += [(folder, "resume state of a key no step references") for folder in store.stale_work(root, referenced)]
    doomed += [(folder, "staging of a build that was killed") for folder in store.stale_staging(root)]
    corrupt = root / store.STORE / ".corrupt"
    doomed += [(folder, "moved aside by verify") for folder in sorted(corrupt.iterdir())] if corrupt.is_dir() else []
    return doomed


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
