"""doit integration: compile specs/ into doit tasks, or print the error and exit 2.

Compiling happens when doit imports dodo.py, before doit opens its database, so a
bad manifest leaves build/ untouched. Each task's action and up-to-date check are
module-level functions whose only argument is the task's name: they find its plan in
the graph of this compile (kept here; `doit -n` forks its workers after the compile,
so they have it too) and resolve its key from the store when they run, after doit has
built its producers. The runner (and through it the builders) is handed in by dodo.py.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from doit.reporter import ConsoleReporter

from . import commands, executor, graph, project, remote, store
from .errors import SpecError
from .executor import ExecutorError, RayExecutor
from .plan import Graph, Plan
from .remote import Remote, RemoteError

GRAPH: Graph | None = None  # the graph of this process's compile
RUN: Callable[[Graph, str], Any] | None = None  # the runner's `run`, handed in by dodo.py
REMOTE: Remote | None = None  # the remote cache (compiler/remote.py), when one is configured
EXECUTOR: RayExecutor | None = None  # `INGOT_EXECUTOR=ray` (compiler/executor.py); None: steps build here


def compile_here(dodo_file: str, run: Callable[[Graph, str], Any]) -> tuple[dict, list[dict]]:
    """DOIT_CONFIG and task dicts for the project whose dodo.py is `dodo_file`; `run(graph,
    task)` builds a step."""
    global GRAPH, RUN, REMOTE, EXECUTOR
    from doit import get_var

    root = Path(dodo_file).resolve().parent
    try:
        loaded = project.load(root, get_var("profile", None))
        GRAPH, RUN = graph.compile_graph(loaded), run
        plans = GRAPH.plans
        REMOTE = remote.configured(root)
        EXECUTOR = executor.configured(REMOTE)
    except SpecError as exc:
        n = len(exc.problems)
        print(f"ingot: {n} problem{'s' if n > 1 else ''} found; nothing was built\n{exc}", file=sys.stderr)
        sys.exit(2)
    except (RemoteError, ExecutorError) as exc:
        print(f"ingot: {exc}; nothing was built", file=sys.stderr)
        sys.exit(2)
    for warning in loaded.warnings:
        print(f"ingot: {warning}", file=sys.stderr)
    (root / "build").mkdir(exist_ok=True)
    defaults = _defaults(plans)
    config = {"dep_file": str(root / "build" / ".doit.db"), "backend": "sqlite3", "verbosity": 2,
              "default_tasks": defaults, "reporter": Reporter}
    if EXECUTOR is not None:  # `doit -n N` as threads: one Ray connection of this process serves them all
        config["par_type"] = "thread"
    return config, [task(p, GRAPH) for p in plans.values()] + commands.tasks(GRAPH, defaults, REMOTE)


class Reporter(ConsoleReporter):
    """doit's console output, and at the end where the reports of this run are: the reports
    it built or found up to date, so a plain `doit` always ends with the path to open."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.reports: list[str] = []

    def _note(self, task) -> None:
        plan = (task.meta or {}).get("plan")
        if plan and plan.kind == "report" and plan.link not in self.reports:
            self.reports.append(plan.link)

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


def _defaults(plans: dict[str, Plan]) -> list[str]:
    """Steps of default pipelines, and datasets that such a step (or no step) consumes."""
    users: dict[str, list[bool]] = {}  # dataset task -> `default` of each step that consumes it
    for plan in plans.values():
        for producer in plan.inputs.values():
            users.setdefault(producer, []).append(plan.default)

    def default(task: str, plan: Plan) -> bool:
        if task.startswith("dataset."):
            return task not in users or any(users[task])
        return plan.default

    return [t for t, p in plans.items() if default(t, p)]


def build(step: str):
    """A step's action: the runner's `run` on this compile's graph, and with `INGOT_REMOTE_PUSH=1`
    the push of the entry it made. (doit hands a parameter named `task` its Task object, hence
    `step`.) With `INGOT_EXECUTOR=ray` the step is built on the cluster instead, and its entry pulled
    here (the worker pushed it)."""
    if EXECUTOR is not None:
        return EXECUTOR.build(GRAPH, step, RUN)
    failed = RUN(GRAPH, step)
    if failed is None and REMOTE is not None and REMOTE.no_push is None and remote.push_wanted():
        try:
            if remote.push(REMOTE, GRAPH.root, GRAPH.key(step), step):
                print(f"  [{step}] pushed entry {GRAPH.key(step)[:12]} to {REMOTE}")
        except RemoteError as exc:  # the entry is built and kept: `doit push` can try again
            _down(step, exc, "not pushed", reads=False)
    return failed


def _down(step: str, exc: RemoteError, what: str, reads: bool) -> None:
    """A remote that failed a request is not asked again in this run, so that each step does not
    wait on it in turn: one line says so and what happens instead. A failed read stops reads and
    pushes; a failed push (read-only credentials, say) stops pushes only."""
    pushing = remote.push_wanted() and REMOTE.no_push is None
    REMOTE.no_push = REMOTE.no_push or str(exc)
    if reads:
        REMOTE.down = str(exc)
        rest = "; the remote is not asked again in this run: later steps build here" + \
            (", and are not pushed (`doit push` uploads them)" if pushing else "")
    else:
        rest = "; nothing more is pushed in this run (`doit push` uploads what was built)"
    print(f"ingot: {step}: {exc}; {what}{rest}", file=sys.stderr)


def up_to_date(step: str) -> bool:
    """doit's up-to-date check, made when the step's turn comes (its producers are built by
    then): its key resolved from the store, and a complete entry for it (the graph reads each
    manifest once: its consumers' keys take the same output digest), or one pulled from the
    remote now; the link follows."""
    if GRAPH.output_digest(step) is None and not _pulled(step):
        return False
    plan = GRAPH[step]
    store.keep_pointed(plan.root, plan.link, GRAPH.key(step))
    return True


def _pulled(step: str) -> bool:
    """Read-through: the step's entry fetched from the remote, checked and committed."""
    key = GRAPH.key(step) if REMOTE is not None and REMOTE.down is None else None
    if key is None:
        return False
    try:
        if not remote.pull(REMOTE, GRAPH.root, key, step):
            return False
    except RemoteError as exc:  # unreachable, or refusing: build here instead
        _down(step, exc, "building it here", reads=True)
        return False
    print(f"  [{step}] pulled entry {key[:12]} from {REMOTE}")
    return GRAPH.output_digest(step) is not None


# doit calls inspect.signature() on an uptodate callable for every step on every run (it looks
# for `task`/`values` parameters); a signature given once makes that a lookup (~12 ms per 1,000 steps).
up_to_date.__signature__ = inspect.signature(up_to_date)


def task(plan: Plan, graph: Graph) -> dict:
    pending = graph.pending_on(plan.task)
    return {
        "basename": plan.task,
        "doc": f"{plan.kind}: {plan.summary} -> {plan.link}" + (f" (key pending on {', '.join(pending)})"
                                                                 if pending else ""),
        "actions": [(build, [plan.task])],
        "task_dep": list(dict.fromkeys(plan.inputs.values())),
        "uptodate": [(up_to_date, [plan.task])],
        "clean": [(store.unlink, [plan.root, plan.link])],
        "meta": {"plan": plan},
    }
