"""doit integration: compile specs/ into doit tasks, or print the error and exit 2.

Compiling happens when doit imports dodo.py, before doit opens its database, so a
bad manifest leaves build/ untouched. Each task's action and up-to-date check are
module-level functions with plain-data arguments, so `doit -n 2` can pickle them.
The runner (and through it the builders) is imported only when a step runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from doit.reporter import ConsoleReporter

from . import explain, graph, project, store
from .errors import SpecError


def compile_here(dodo_file: str) -> tuple[dict, list[dict]]:
    """DOIT_CONFIG and task dicts for the project whose dodo.py is `dodo_file`."""
    from doit import get_var

    root = Path(dodo_file).resolve().parent
    try:
        loaded = project.load(root, get_var("profile", None))
        plans = graph.plans(loaded)
    except SpecError as exc:
        n = len(exc.problems)
        print(f"ingot: {n} problem{'s' if n > 1 else ''} found; nothing was built\n{exc}", file=sys.stderr)
        sys.exit(2)
    for warning in loaded.warnings:
        print(f"ingot: {warning}", file=sys.stderr)
    (root / "build").mkdir(exist_ok=True)
    defaults = _defaults(plans)
    config = {"dep_file": str(root / "build" / ".doit.db"), "backend": "sqlite3", "verbosity": 2,
              "default_tasks": defaults, "reporter": Reporter}
    return config, [task(p) for p in plans.values()] + [explain_task(plans, defaults)]


class Reporter(ConsoleReporter):
    """doit's console output, and at the end where the reports of this run are: the reports
    it built or found up to date, so a plain `doit` always ends with the path to open."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.reports: list[str] = []

    def _note(self, task) -> None:
        plan = (task.meta or {}).get("plan")
        if plan and plan["kind"] == "report" and plan["link"] not in self.reports:
            self.reports.append(plan["link"])

    def add_success(self, task) -> None:
        super().add_success(task)
        self._note(task)

    def skip_uptodate(self, task) -> None:
        super().skip_uptodate(task)
        self._note(task)

    def complete_run(self) -> None:
        super().complete_run()
        for link in self.reports:
            self.write(f"report: {link}/report.html (Markdown: {link}/report.md)\n")


def _defaults(plans: dict[str, dict]) -> list[str]:
    """Steps of default pipelines, and datasets that such a step (or no step) consumes."""
    users: dict[str, list[bool]] = {}  # dataset task -> `default` of each step that consumes it
    for plan in plans.values():
        for i in plan["inputs"].values():
            users.setdefault(i["task"], []).append(plan["default"])

    def default(task: str, plan: dict) -> bool:
        if task.startswith("dataset."):
            return task not in users or any(users[task])
        return plan["default"]

    return [t for t, p in plans.items() if default(t, p)]


def build(plan: dict):
    """A step's action: `runner.run`, imported only when a step runs."""
    from . import runner

    return runner.run(plan)


def task(plan: dict) -> dict:
    return {
        "basename": plan["task"],
        "doc": f"{plan['kind']}: {plan['summary']} -> {plan['link']}",
        "actions": [(build, [plan])],
        "task_dep": [i["task"] for i in plan["inputs"].values()],
        "uptodate": [(store.up_to_date, [plan["root"], plan["key"], plan["link"]])],
        "clean": [(store.unlink, [plan["root"], plan["link"]])],
        "meta": {"plan": plan},
    }


def explain_task(plans: dict[str, dict], defaults: list[str]) -> dict:
    return {
        "basename": "explain",
        "doc": "say why each step will run, or that it will not: doit explain [STEP ...]",
        "actions": [(explain.report, [plans, defaults])],
        "pos_arg": "steps",
        "uptodate": [False],
    }
