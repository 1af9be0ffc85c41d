"""Where a step's build runs: in this `doit` (`local`, the default) or as a Ray task on a cluster
(`INGOT_EXECUTOR=ray`, the cluster whose head is `RAY_ADDRESS`).

With Ray, doit still schedules: each step it would build is handed to `RayExecutor.build`, which
makes sure the remote cache (compiler/remote.py) holds the entries of the step's producers, and
runs `work` on a node of the cluster as a Ray task that asks for the step's resources (`resources`
below). The project travels as the job's `working_dir` (this folder without build/, .venv/, .git/
and caches) with the remote's variables; the worker compiles the project there, takes its
producers' keys from the driver (`Graph.pin`), checks that it computes the driver's key for the
step, pulls the producers' entries into its own store, builds with the runner and pushes the
entry. The driver pulls it from the remote into its own store and points the link. The worker's
output reaches the driver's terminal through Ray's log streaming; a build error, a lost worker or
node, a cluster that cannot be reached become doit's TaskFailed of that step alone.

Light at import, as the whole compiler: ray is imported on the first step that runs on it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from doit.exceptions import TaskFailed

from . import remote, store
from .plan import Graph, Plan
from .remote import DirRemote, Remote, RemoteError

# what never travels to the workers: outputs, environments, version control and tools' caches
EXCLUDES = ["/build", "/.venv", "/.git", "__pycache__", "*.pyc", "/.pytest_cache", "/.ruff_cache", "/.mypy_cache",
            "/.hypothesis"]
# the driver's variables a worker needs: the remote's (INGOT_REMOTE is set from the driver's remote)
# and the hub's, for pretrained steps
PASSED = ("INGOT_REMOTE_TOKEN", "INGOT_REMOTE_JOBS", "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE")
PROBE_TIMEOUT = 5  # seconds to open a TCP connection to the head before calling it unreachable
# Ray's errors (and their subclasses) that mean the process or machine running the step went away,
# not that the build failed
LOST = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError", "OwnerDiedError",
        "LocalRayletDiedError", "RaySystemError")


class ExecutorError(Exception):
    """An executor that cannot be used as configured: the message says which setting and the fix."""


def configured(cache: Remote | None) -> RayExecutor | None:
    """The executor `INGOT_EXECUTOR` names: None for `local` (unset), a RayExecutor for `ray`."""
    name = os.environ.get("INGOT_EXECUTOR", "").strip() or "local"
    if name == "local":
        return None
    if name != "ray":
        raise ExecutorError(f"INGOT_EXECUTOR={name}: unknown executor; use `local` (the default: steps build "
                            "in this `doit`'s processes) or `ray` (steps build as Ray tasks on the cluster at "
                            "RAY_ADDRESS)")
    if importlib.util.find_spec("ray") is None:
        raise ExecutorError("INGOT_EXECUTOR=ray: the ray package is not installed: pip install -r requirements.txt")
    if cache is None:
        raise ExecutorError("INGOT_EXECUTOR=ray needs a remote cache, through which Ray workers get the entries a "
                            "step reads and hand back the one they build: set INGOT_REMOTE (a directory every node "
                            "mounts at the same path, http(s)://host/prefix or s3://bucket/prefix), or `remote` under "
                            "`[tool.ingot]` in pyproject.toml")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        raise ExecutorError("INGOT_EXECUTOR=ray needs RAY_ADDRESS, the address of the cluster's head: HOST:PORT as "
                            "`ray start --head --port=6379` prints it, or `auto` for a cluster started on this machine")
    if address.startswith("ray://"):
        raise ExecutorError(f"RAY_ADDRESS={address}: INGOT_EXECUTOR=ray connects to the cluster as a driver, not "
                            "through Ray Client (ray://): give the head's address HOST:PORT (6379 unless "
                            "`ray start --head --port` said otherwise) and run `doit` where the nodes can be reached")
    return RayExecutor(address, cache)


def resources(plan: Plan) -> dict[str, float]:
    """What the step's Ray task asks for: its spec's `resources`, else 1 CPU (a train step of
    `distributed.nproc_per_node` gloo processes on the CPU: that many), and for a train or
    teacher-outputs step on CUDA one GPU per process (`distributed.nproc_per_node`, else 1)."""
    asked = plan.step.get("resources") or {}
    gpus, procs = 0.0, float((plan.step.get("distributed") or {}).get("nproc_per_node", 1))
    if plan.kind in ("train", "teacher_outputs") and plan.device == "cuda":
        gpus = procs
    cpus = asked.get("cpus")
    # a train step of several gloo processes on the CPU: a core each
    default_cpus = procs if plan.kind == "train" and plan.device != "cuda" else 1.0
    return {"num_cpus": default_cpus if cpus is None else float(cpus),
            "num_gpus": gpus if asked.get("gpus") is None else float(asked["gpus"])}


def _unsupported(plan: Plan) -> str | None:
    """Why a step cannot be one Ray task, or None."""
    nnodes = (plan.step.get("distributed") or {}).get("nnodes", 1)
    if nnodes > 1:
        return (f"distributed.nnodes is {nnodes}: its machines meet through torchrun, each running `doit` with its "
                "own NODE_RANK, and a Ray task runs on one node; build it without INGOT_EXECUTOR=ray, or set "
                "nnodes: 1 (nproc_per_node GPUs of one node)")
    return None


# ---------------------------------------------------------------- the driver's side

class RayExecutor:
    """Runs steps as Ray tasks on the cluster at `address`, through the remote `cache`. One per
    `doit` (its threads share the connection, made on the first step that runs)."""

    def __init__(self, address: str, cache: Remote):
        self.address, self.cache = address, cache
        self._lock = threading.Lock()
        self._task = None  # the Ray remote function, once connected
        self._failed: str | None = None  # why the cluster could not be used, said again to each later step

    def build(self, g: Graph, step: str, run: Callable[[Graph, str], Any]) -> TaskFailed | None:
        """doit's action for `step` under Ray: None when its entry is in this store, built on the
        cluster; else TaskFailed with one line that says what went wrong where."""
        plan, key = g[step], g.key(step)
        if key is None:  # as the runner says it: a producer did not make its entry
            return TaskFailed(f"{step}: inputs not in the store: {', '.join(g.pending_on(step))}")
        why = _unsupported(plan) or self._connect(Path(g.root)) or self._infeasible(resources(plan))
        if why is None:
            try:
                pins = self._share_inputs(g, step)
            except RemoteError as exc:
                why = f"an input's entry could not be pushed to the remote, where the Ray worker reads it: {exc}"
        if why is not None:
            return TaskFailed(f"{step}: {why}")
        return self._run(g, step, key, pins, run)

    def _share_inputs(self, g: Graph, step: str) -> dict[str, tuple[str, str]]:
        """Push each producer's entry the remote lacks (one built here before Ray, say); their
        keys and output digests, which the worker pins."""
        pins = {}
        for producer in dict.fromkeys(g[step].inputs.values()):
            key = g.key(producer)
            if remote.push(self.cache, g.root, key, producer):
                _say(f"  [{producer}] pushed entry {key[:12]} to {self.cache}, for {step} on Ray")
            pins[producer] = (key, g.output_digest(producer))
        return pins

    def _run(self, g: Graph, step: str, key: str, pins: dict, run) -> TaskFailed | None:
        import ray
        from ray import exceptions as rx

        plan = g[step]
        task = self._task.options(name=f"ingot {step}", **resources(plan))
        replies = task.remote(step, plan.profile, key, pins, plan, run)
        where = None
        try:
            where = ray.get(next(replies))
            _say(f"  [{step}] running on Ray node {_node(where)}, worker pid {where['pid']}")
            done = ray.get(next(replies))
        except rx.RayTaskError as exc:  # the build raised on the worker (not a BuildError: those are `failed`)
            cause = exc.cause if exc.cause is not None else exc
            _say(str(exc), sys.stderr)  # the worker's traceback, as doit shows a local one
            return TaskFailed(f"{step}: {type(cause).__name__}: {_first(cause)} (raised on Ray node "
                              f"{_node(where) if where else '?'}; its traceback is above)")
        except rx.RuntimeEnvSetupError as exc:
            return TaskFailed(f"{step}: the project could not be set up on a Ray node: {_first(exc)}")
        except rx.TaskCancelledError:
            return TaskFailed(f"{step}: its Ray task was cancelled")
        except rx.RayError as exc:
            if not isinstance(exc, tuple(getattr(rx, name) for name in LOST if hasattr(rx, name))):
                return TaskFailed(f"{step}: Ray failed the task: {type(exc).__name__}: {_first(exc)}")
            who = f" (pid {where['pid']} on node {_node(where)})" if where else " (before it started)"
            return TaskFailed(f"{step}: the Ray worker building it{who} was lost ({type(exc).__name__}: "
                              f"{_first(exc).rstrip('.')}); nothing of it is in the store; `doit` builds it again")
        if done.get("failed"):
            return TaskFailed(f"{done['failed']} (on Ray node {_node(where)})")
        return self._take(g, step, key, where)

    def _take(self, g: Graph, step: str, key: str, where: dict) -> TaskFailed | None:
        """The entry the worker pushed, pulled into this store (checked, committed), and the link."""
        plan = g[step]
        try:
            pulled = remote.pull(self.cache, g.root, key, step)
        except RemoteError as exc:
            return TaskFailed(f"{step}: built on Ray node {_node(where)}, but its entry could not be pulled: {exc}")
        if not pulled:
            return TaskFailed(f"{step}: built on Ray node {_node(where)}, but its entry {key[:12]} could not be "
                              f"pulled from {self.cache} (gone, or damaged as a line above says); `doit` builds "
                              "it again")
        store.point(g.root, plan.link, key)
        _say(f"  [{step}] built on Ray node {_node(where)} (entry {key[:12]})")
        return None

    def _infeasible(self, need: dict[str, float]) -> str | None:
        """Why no node of the cluster can ever run a task asking `need` (Ray would wait for one
        forever), or None."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= need["num_cpus"] and r.get("GPU", 0) >= need["num_gpus"] for r in nodes):
            return None
        have = "; ".join(sorted({f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes})) or "none"
        return (f"it asks for {need['num_cpus']:g} CPU and {need['num_gpus']:g} GPU, and no node of the Ray "
                f"cluster at {self.address} has as much (its nodes have: {have}); set `resources: {{cpus: N, "
                "gpus: N}` on the step, or add a node that has them")

    # ------------------------------------------------------------ the connection

    def _connect(self, root: Path) -> str | None:
        """Connect this process to the cluster once, shipping the project: None, or why not."""
        with self._lock:
            if self._task is None and self._failed is None:
                self._failed = self._open(root)
            return self._failed

    def _open(self, root: Path) -> str | None:
        if (why := self._probe()) is not None:
            return self._unreachable(why)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every step's lines, not "[repeated 2x across cluster]"
        os.environ.setdefault("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # ship what the compile reads, git or not
        if not sys.stdout.isatty():  # a CI log: the workers' lines without colour codes
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        import logging

        import ray

        # doit's `-n` threads connect from a thread, where Ray cannot set its SIGTERM handler and
        # says so on every run; SIGTERM keeps its default (the driver ends), which is what doit wants
        logging.getLogger("ray._private.worker").addFilter(
            lambda record: "SIGTERM handler is not set" not in record.getMessage())
        try:
            ray.init(address=self.address, runtime_env=self.runtime_env(root), namespace="ingot",
                     logging_level=logging.WARNING, log_to_driver=True)
        except ConnectionError as exc:
            return self._unreachable(_first(exc))
        except ValueError as exc:  # the package is larger than Ray takes
            return (f"the project cannot be shipped to the Ray workers: {_first(exc)} (a .rayignore file can leave "
                    "out what no step reads)")
        except Exception as exc:  # Ray's own: authentication, version mismatch, ...
            return f"the Ray cluster at RAY_ADDRESS={self.address} cannot be used: {type(exc).__name__}: {_first(exc)}"
        self._task = ray.remote(max_retries=0)(work)  # a half-built step is never run again behind doit's back
        return None

    def _probe(self) -> str | None:
        """A TCP connection to the head (ray.init would retry an unreachable one for minutes):
        None when it answers, else why not."""
        if self.address == "auto":
            return None  # ray.init finds a cluster started on this machine, or fails at once
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            return "not HOST:PORT"
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT).close()
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        return None

    def _unreachable(self, why: str) -> str:
        port = self.address.rpartition(":")[2]
        port = port if port.isdigit() else "6379"
        return (f"the Ray cluster at RAY_ADDRESS={self.address} cannot be reached ({why}); start one with "
                f"`ray start --head --port={port}` on its head machine (and `ray start --address=HEAD:{port}` on "
                "each other machine), or set RAY_ADDRESS to a running cluster's head")

    def runtime_env(self, root: Path) -> dict:
        """The Ray job's environment: the project folder (no outputs, environments or caches) as
        its working_dir, and the variables that open the remote."""
        excludes = list(EXCLUDES)
        if isinstance(self.cache, DirRemote):  # a remote folder inside the project stays behind
            folder = Path(self.cache.path).resolve()
            if folder.is_relative_to(root.resolve()) and folder != root.resolve():
                excludes.append("/" + folder.relative_to(root.resolve()).as_posix())
        return {"working_dir": str(root), "excludes": excludes, "env_vars": self.env_vars()}

    def env_vars(self) -> dict[str, str]:
        url = str(Path(self.cache.path).resolve()) if isinstance(self.cache, DirRemote) else self.cache.url
        env = {"INGOT_REMOTE": url}
        env.update((k, v) for k, v in os.environ.items() if k in PASSED or k.startswith("AWS_"))
        return env


def _say(line: str, stream=None) -> None:
    """A line in one write: doit's threads and Ray's log thread write to the same terminal, and
    print() writes the newline apart, so two lines could run together."""
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _node(where: dict) -> str:
    return f"{where['node'][:12]} at {where['ip']}"


def _first(exc: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------- the worker's side

_GRAPHS: dict[tuple[str, str | None], Graph] = {}  # a worker process's compile, per project folder and profile


def work(task: str, profile: str | None, key: str, pins: dict[str, tuple[str, str]], plan: Plan,
         run: Callable[[Graph, str], Any]) -> Iterator[dict]:
    """The Ray task (a generator: the driver hears where it runs before it ends): where it runs;
    then {"key": KEY} once the step's entry is in the remote, or {"failed": one line}."""
    import ray

    yield {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
    stderr, sys.stderr = sys.stderr, StatusLines(sys.stderr)
    try:
        yield _work(Path.cwd(), task, profile, key, pins, plan, run)
    finally:
        sys.stderr.finish()
        sys.stderr = stderr


class StatusLines:
    """A worker's stderr for the builders' status lines, which rewrite themselves in place (`\r`,
    targets.StatusLine): Ray streams whole lines to the driver, so a rewritten status becomes a line
    of its own, at most one per `every` seconds, and the last one (ended by a newline) always."""

    def __init__(self, out, every: float = 5.0):
        self.out, self.every = out, every
        self.line, self.sent = "", time.monotonic()

    def write(self, text: str) -> int:
        for piece in re.split(r"([\r\n])", text):
            if piece == "\r":  # the status so far is replaced: pass it on if the last one is old enough
                if self.line.strip() and time.monotonic() - self.sent >= self.every:
                    self._send()
                self.line = ""
            elif piece == "\n":
                self._send()
            else:
                self.line += piece
        return len(text)

    def _send(self) -> None:
        self.out.write(self.line.rstrip() + "\n")
        self.out.flush()
        self.line, self.sent = "", time.monotonic()

    def flush(self) -> None:  # a status being rewritten waits for its time (StatusLine flushes each)
        self.out.flush()

    def finish(self) -> None:
        if self.line.strip():
            self._send()
        self.out.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # fileno, encoding, ...: the stream's own
        return getattr(self.out, name)


def _work(root: Path, task: str, profile: str | None, key: str, pins: dict[str, tuple[str, str]], plan: Plan,
          run: Callable[[Graph, str], Any]) -> dict:
    from . import graph, project
    from .errors import SpecError

    started = time.monotonic()
    try:
        if (root.as_posix(), profile) not in _GRAPHS:
            _GRAPHS[root.as_posix(), profile] = graph.compile_graph(project.load(root, profile))
        g, cache = _GRAPHS[root.as_posix(), profile], remote.configured(root)
    except SpecError as exc:  # a file the driver read was not shipped (.rayignore?), or differs here
        return {"failed": f"{task}: the project does not compile on the Ray worker: {exc}"}
    except RemoteError as exc:
        return {"failed": f"{task}: the remote cannot be opened on the Ray worker: {exc}"}
    for producer, (k, out) in pins.items():
        g.pin(producer, k, out)
    if (mine := g.key(task)) != key:
        return {"failed": f"{task}: the Ray worker computes key {mine[:12]} where the driver computed {key[:12]}: "
                          f"{differences(plan, g[task])}"}
    for producer, (k, _) in pins.items():
        try:
            if not store.is_complete(root, k) and not remote.pull(cache, root, k, producer):
                return {"failed": f"{task}: its input {producer}'s entry {k[:12]} is not in the remote {cache} "
                                  "(the driver had pushed it: was it removed since?)"}
        except RemoteError as exc:
            return {"failed": f"{task}: its input {producer}'s entry could not be pulled on the Ray worker: {exc}"}
    failed = run(g, task)
    if failed is not None:
        return {"failed": failed.message}
    try:
        remote.push(cache, root, key, task)
    except RemoteError as exc:
        return {"failed": f"{task}: built on the Ray worker, but its entry could not be pushed to the remote, "
                          f"from which the driver takes it: {exc}"}
    return {"key": key, "seconds": round(time.monotonic() - started, 3)}


def differences(driver: Plan, worker: Plan) -> str:
    """What makes the worker's plan of a step key differently from the driver's, and the fix."""
    said = []
    for name in sorted(set(driver.code["libraries"]) | set(worker.code["libraries"])):
        a, b = driver.code["libraries"].get(name), worker.code["libraries"].get(name)
        if a != b:
            said.append(f"{name} {a} on the driver, {b} on the worker")
    modules = sorted(m for m in set(driver.code["modules"]) | set(worker.code["modules"])
                     if driver.code["modules"].get(m) != worker.code["modules"].get(m))
    if modules:
        said.append(f"the code of {', '.join(modules)}")
    if said:
        return ("the worker's code or library versions differ from the driver's (" + "; ".join(said) + "): "
                "install the same versions on every node (pip install -r requirements.txt)")
    if driver.device != worker.device:
        return (f"the step's device is {driver.device} on the driver and {worker.device} on the worker "
                "(`device: auto` is decided on each machine): set `device: cpu` or `device: cuda` in the step")
    parts = [p for p in ("spec", "sources") if getattr(driver, p) != getattr(worker, p)]
    return (f"its {' and '.join(parts) or 'inputs'} differ on the worker (a file left out of what Ray ships, by a "
            ".rayignore?): the worker must see the project the driver compiled")
