"""The commands beside building: `doit explain`, `doit verify`, `doit gc`, and with a remote
cache `doit pull`, `doit push` and `doit status --remote`, as doit tasks.

`verify [STEP ...] [--repair]` re-hashes the entries of the named steps (those a plain `doit`
builds when none is named) against their manifests; `--repair` moves a corrupt entry aside
so the next `doit` rebuilds it. `gc [--keep N] [--dry-run]` removes entries that no current
step of any profile references, keeping the N most recent entries of each step (the one it
references counts), stale staging and work folders, and entries moved aside by verify.
`pull [STEP ...]` fetches the entries of the named steps and of what they consume (of the steps
a plain `doit` builds, when none is named) from the remote, building nothing; `push [STEP ...]`
uploads those the remote lacks; `status [STEP ...] [--remote]` says per step where its entry is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from doit.exceptions import TaskFailed

from . import explain, graph, project, remote, store
from .errors import SpecError
from .plan import Graph, key_of
from .remote import Remote, RemoteError


def tasks(g: Graph, defaults: list[str], cache: Remote | None = None) -> list[dict]:
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
        {"basename": "pull", "doc": "fetch the entries of steps and what they consume from the remote cache, "
                                    "building nothing: doit pull [STEP ...]",
         "actions": [(pull, [g, defaults, cache])], "pos_arg": "steps", "uptodate": [False], "verbosity": 2},
        {"basename": "push", "doc": "upload the entries of steps and what they consume that the remote cache "
                                    "lacks: doit push [STEP ...]",
         "actions": [(push, [g, defaults, cache])], "pos_arg": "steps", "uptodate": [False], "verbosity": 2},
        {"basename": "status", "doc": "where each step's entry is: doit status [STEP ...] [--remote]",
         "actions": [(status, [g, defaults, cache])], "pos_arg": "steps", "uptodate": [False], "verbosity": 2,
         "params": [{"name": "remote", "long": "remote", "type": bool, "default": False,
                     "help": "look each entry up in the remote cache too"}]},
    ]


# ---------------------------------------------------------------- pull, push, status

def _closure(g: Graph, defaults: list[str], steps: list[str]) -> list[str]:
    """The named steps (those a plain `doit` builds, when none is named) and every step they
    consume, transitively, in dependency order."""
    wanted, todo = set(), list(steps or [t for t in g.plans if t in set(defaults)])
    while todo:
        task = todo.pop()
        if task not in wanted:
            wanted.add(task)
            todo.extend(g.plans[task].inputs.values())
    return [t for t in g.plans if t in wanted]


def _checked(what: str, g: Graph, steps: list[str], cache: Remote | None, needs_remote: bool = True) -> str | None:
    unknown = [name for name in steps if name not in g.plans]
    if unknown:
        return f"{what}: unknown step(s) {', '.join(unknown)}; `doit list` shows them all"
    if cache is None and needs_remote:
        return (f"{what}: no remote cache is configured: set INGOT_REMOTE (a directory, http(s)://... or "
                "s3://bucket/prefix), or `remote` under `[tool.ingot]` in pyproject.toml")
    return None


def _each(command: str, tasks: list[str], counts: dict[str, int], classify) -> TaskFailed | None:
    """One line per step, `classify(task) -> (what, line)` (None: a step not shown), and the
    counts of each `what` at the end; a remote that fails fails the command."""
    try:
        for task in tasks:
            if (found := classify(task)) is not None:
                counts[found[0]] += 1
                print(f"{task}: {found[1]}")
    except RemoteError as exc:
        return TaskFailed(f"{command}: {exc}")
    print(f"{command}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return None


def pull(g: Graph, defaults: list[str], cache: Remote | None, steps: list[str]) -> TaskFailed | None:
    """Fetch what the remote has of the steps' entries, in dependency order (a consumer's key is
    known once its producers' entries are here); print one line per step."""
    if problem := _checked("pull", g, steps, cache):
        return TaskFailed(problem)

    def classify(task: str) -> tuple[str, str]:
        key = g.key(task)
        if key is None:
            return "pending", f"pending (not here: {', '.join(g.pending_on(task))})"
        if g.output_digest(task) is not None:
            return "local", f"local ({key[:12]})"
        if remote.pull(cache, g.root, key, task) and g.output_digest(task) is not None:
            store.point(g.root, g.plans[task].link, key)
            return "pulled", f"pulled ({key[:12]})"
        return "missing", f"missing (neither here nor in the remote: {key[:12]})"

    return _each("pull", _closure(g, defaults, steps), {"pulled": 0, "local": 0, "missing": 0, "pending": 0},
                 classify)


def push(g: Graph, defaults: list[str], cache: Remote | None, steps: list[str]) -> TaskFailed | None:
    """Upload the steps' local entries that the remote lacks; print one line per step."""
    if problem := _checked("push", g, steps, cache):
        return TaskFailed(problem)

    def classify(task: str) -> tuple[str, str]:
        key = g.key(task)
        if key is None or g.output_digest(task) is None:
            return "not built", "not built here: nothing to push"
        if remote.push(cache, g.root, key, task):
            return "pushed", f"pushed ({key[:12]})"
        return "remote", f"already in the remote ({key[:12]})"

    return _each("push", _closure(g, defaults, steps), {"pushed": 0, "remote": 0, "not built": 0}, classify)


def status(g: Graph, defaults: list[str], cache: Remote | None, steps: list[str], remote: bool) -> TaskFailed | None:
    """Per step: local (its entry is in the store), remote (only in the remote cache, with
    `--remote`), missing (in neither: `doit` builds it) or pending (its key waits for a producer
    that is in neither). With `--remote`, a key whose producers are only in the remote is
    resolved from the manifests there, as a pull would resolve it."""
    if problem := _checked("status", g, steps, cache, needs_remote=remote):
        return TaskFailed(problem)
    shown = steps or [t for t in g.plans if t in set(defaults)]
    digests: dict[str, str] = {}  # task -> output digest of its entry, here or in the remote

    def classify(task: str) -> tuple[str, str] | None:
        plan = g.plans[task]
        inputs = {name: digests.get(producer) for name, producer in plan.inputs.items()}
        key = key_of(plan.base, inputs) if None not in inputs.values() else None
        if key is None:
            missing = [p for p in dict.fromkeys(plan.inputs.values()) if p not in digests]
            found = "pending", f"pending (its key waits for {', '.join(missing)})"
        elif (local := store.output_digest(g.root, key)) is not None:
            digests[task] = local
            found = "local", f"local ({key[:12]})"
        elif remote and (there := _remote_digest(cache, key)) is not None:
            digests[task] = there
            found = "remote", f"remote ({key[:12]}; `doit` or `doit pull` fetches it)"
        else:
            found = "missing", f"missing ({key[:12]}; `doit` builds it)"
        return found if task in shown else None

    counts = {"local": 0, **({"remote": 0} if remote else {}), "missing": 0, "pending": 0}
    return _each("status", _closure(g, defaults, shown), counts, classify)


def _remote_digest(cache: Remote, key: str) -> str | None:
    """The output digest the remote's manifest for `key` gives, or None (none, or damaged)."""
    try:
        manifest = remote.manifest_of(cache, key)
    except remote.Damaged:
        return None
    return store.outputs_digest(manifest.outputs) if manifest else None


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
