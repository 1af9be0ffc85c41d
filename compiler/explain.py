"""`doit explain [STEP ...]`: why each step will run, or that it will not.

Compares each step's plan with the manifest of the entry its friendly link points
at (the last build of that step): changed spec fields (path, old -> new), changed
input keys, changed source files, changed builder code. Reads only; builds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import store


def report(plans: dict[str, dict], defaults: list[str], steps: list[str]) -> bool | None:
    """The `explain` task's action: print why each named step (those a plain `doit` builds,
    when none is named) will run."""
    unknown = [name for name in steps if name not in plans]
    if unknown:
        print(f"explain: unknown step(s) {', '.join(unknown)}; `doit list` shows them all")
        return False
    for name in steps or [t for t in plans if t in set(defaults)]:
        print("\n".join(explain(plans[name])))


def explain(plan: dict) -> list[str]:
    root, head = Path(plan["root"]), f"{plan['task']}:"
    if store.is_complete(root, plan["key"]):
        return [f"{head} up to date (store entry {plan['key'][:12]})"]
    last = store.read_manifest(root, plan["link"])
    if last is None:
        return [f"{head} will run: never built ({plan['link']} does not exist)"]
    reasons = [f"  spec {path}: {old} -> {new}" for path, old, new in diff(last.get("spec"), plan["spec"])]
    for field in sorted(set(last.get("inputs", {})) | set(plan["inputs"])):
        old, new = last.get("inputs", {}).get(field, {}), plan["inputs"].get(field, {})
        if old.get("key") != new.get("key"):
            reasons.append(f"  input {field} ({new.get('task', old.get('task'))}): "
                           f"{_short(old.get('key'))} -> {_short(new.get('key'))}")
    for name in sorted(set(last.get("sources", {})) | set(plan["sources"])):
        old, new = last.get("sources", {}).get(name), plan["sources"].get(name)
        if old != new:
            what = "added" if old is None else "removed" if new is None else "changed"
            reasons.append(f"  source {name}: {what}")
    if last.get("code") != plan["code"]:
        reasons.append(f"  builder code targets/{plan['kind']}.py (or a module it imports) changed")
    if not reasons:
        reasons.append("  the last entry was built for another key (builder environment changed)")
    return [f"{head} will run, because"] + reasons


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
