"""`doit explain [STEP ...]`: why each step will run, or that it will not.

Compares each step's plan with the manifest of the entry its friendly link points at (the
last build of that step) and names what moved: spec fields (path, old -> new), inputs (the
output digest of a producer), source files, code modules, library versions, the device.
A step whose producers are not built yet has a pending key: it says so, and what of its
own changed. Reads only; builds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import store
from .entries import EntryManifest
from .plan import Graph, Plan


def report(graph: Graph, defaults: list[str], steps: list[str]) -> bool | None:
    """The `explain` task's action: print why each named step (those a plain `doit` builds,
    when none is named) will run."""
    unknown = [name for name in steps if name not in graph.plans]
    if unknown:
        print(f"explain: unknown step(s) {', '.join(unknown)}; `doit list` shows them all")
        return False
    for name in steps or [t for t in graph.plans if t in set(defaults)]:
        print("\n".join(explain(graph, name)))


def explain(graph: Graph, task: str) -> list[str]:
    plan, key, head = graph[task], graph.key(task), f"{task}:"
    if graph.output_digest(task) is not None:
        return [f"{head} up to date (store entry {key[:12]})"]
    last = store.read_manifest(plan.root, plan.link)
    pending = graph.pending_on(task)
    if last is None:
        why = f"never built ({plan.link} does not exist)" if not (Path(plan.root) / plan.link).exists() else \
            f"the entry {plan.link} points at has no readable manifest.json (`doit verify {task}` says why)"
        return [f"{head} will run: {why}" + (f"; key pending on {', '.join(pending)}" if pending else "")]
    reasons = _own_changes(plan, last)
    if pending:
        one = len(pending) == 1
        first = (f"{head} key pending on {', '.join(pending)} (no entry yet for {'its' if one else 'their'} "
                 f"current key{'' if one else 's'}): it runs after {'it' if one else 'them'} only if what "
                 f"{'it writes' if one else 'they write'} differs from what it was built from"
                 + (", and because" if reasons else ""))
        return [first] + reasons
    for name, i in graph.inputs(task).items():
        old = last.inputs[name].outputs if name in last.inputs else None
        if old != i["outputs"]:
            reasons.append(f"  input {name} ({i['task']}): outputs {_short(old)} -> {_short(i['outputs'])}")
    for name in sorted(set(last.inputs) - set(plan.inputs)):
        reasons.append(f"  input {name}: removed")
    if not reasons:
        reasons.append("  the last entry was built for another key (a store entry moved aside or removed)")
    return [f"{head} will run, because"] + reasons


def _own_changes(plan: Plan, last: EntryManifest) -> list[str]:
    """What moved in the step's own part of the key since its last entry."""
    reasons = [f"  spec {path}: {old} -> {new}" for path, old, new in diff(last.spec, plan.spec)]
    reasons += [f"  source {name}: {_what(old, new, 'added', 'removed')}"
                for name, old, new in _changed(last.sources, plan.sources)]
    reasons += [f"  code {module.replace('.', '/')}.py: {_what(old, new, 'now imported', 'no longer imported')}"
                for module, old, new in _changed(last.code.modules, plan.code["modules"])]
    reasons += [f"  library {lib}: {_show(old)} -> {_show(new)}"
                for lib, old, new in _changed(last.code.libraries, plan.code["libraries"])]
    if last.device != plan.device:
        reasons.append(f"  device: {_show(last.device)} -> {_show(plan.device)}")
    return reasons


def _changed(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(name, old, new) of every name whose value differs between two flat mappings (_MISSING
    where a side lacks it), in name order."""
    return [(k, old.get(k, _MISSING), new.get(k, _MISSING)) for k in sorted(set(old) | set(new))
            if old.get(k, _MISSING) != new.get(k, _MISSING)]


def _what(old, new, added: str, removed: str) -> str:
    return added if old is _MISSING else removed if new is _MISSING else "changed"


def diff(old, new, path: str = "") -> list[tuple[str, str, str]]:
    """(path, old, new) for every leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += diff(old.get(k, _MISSING), new.get(k, _MISSING), f"{path}.{k}" if path else k)
        return out
    if old == new:
        return []
    return [(path, _show(old), _show(new))]


_MISSING = object()


def _show(value) -> str:
    return "(absent)" if value is _MISSING else json.dumps(value, ensure_ascii=False)


def _short(key: str | None) -> str:
    return key[:12] if key else "(none)"
