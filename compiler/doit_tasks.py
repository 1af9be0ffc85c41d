"""doit integration: compile specs/ into doit tasks, or print the error and exit 2.

Compiling happens when doit imports dodo.py, before doit opens its database, so a
bad manifest leaves build/ untouched. Each task's action and up-to-date check are
module-level functions with plain-data arguments, so `doit -n 2` can pickle them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import explain, graph, project, runner, store
from .errors import SpecError


def compile_here(dodo_file: str) -> tuple[dict, list[dict]]:
    """DOIT_CONFIG and task dicts for the project whose dodo.py is `dodo_file`."""
    from doit import get_var

    root = Path(dodo_file).resolve().parent
    try:
        plans = graph.plans(project.load(root, get_var("profile", None)))
    except SpecError as exc:
        print(f"ingot: {len(exc.problems)} problem(s) in the manifests; nothing was built\n{exc}", file=sys.stderr)
        sys.exit(2)
    (root / "build").mkdir(exist_ok=True)
    config = {"dep_file": str(root / "build" / ".doit.db"), "backend": "sqlite3", "verbosity": 2,
              "default_tasks": [t for t, p in plans.items() if _default(t, plans)]}
    return config, [task(p) for p in plans.values()] + [explain_task(plans)]


def _default(task: str, plans: dict[str, dict]) -> bool:
    """Steps of default pipelines, and datasets that such a step (or no step) consumes."""
    if not task.startswith("dataset."):
        return plans[task]["default"]
    users = [p for p in plans.values() if any(i["task"] == task for i in p["inputs"].values())]
    return not users or any(p["default"] for p in users)


def task(plan: dict) -> dict:
    return {
        "basename": plan["task"],
        "doc": f"{plan['kind']}: {plan['summary']} -> {plan['link']}",
        "actions": [(runner.run, [plan])],
        "task_dep": [i["task"] for i in plan["inputs"].values()],
        "uptodate": [(store.up_to_date, [plan["root"], plan["key"], plan["link"]])],
        "clean": [(store.unlink, [plan["root"], plan["link"]])],
        "meta": {"plan": plan},
    }


def explain_task(plans: dict[str, dict]) -> dict:
    return {
        "basename": "explain",
        "doc": "say why each step will run, or that it will not: doit explain [STEP ...]",
        "actions": [(explain.report, [plans])],
        "pos_arg": "steps",
        "uptodate": [False],
    }
