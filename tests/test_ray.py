"""Steps built as Ray tasks (compiler/executor.py, `INGOT_EXECUTOR=ray`) on a real cluster of two
nodes started on this machine (tests/raycluster.py), and the remote cache between the driver and
the workers.

The cluster (`cluster`, once per module): a head with no CPUs and a worker node with two, so every
step runs on the worker node, in its own unpacked copy of the project (Ray's working_dir), whose
store is not the driver's build/: entries come back through a directory remote. Every `doit` is the
real one in a fresh interpreter, a driver of the cluster; the checks are on its whole output lines,
the bytes of the entries, and each step built again here, in another clone, from the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compiler import executor, graph, project, store
from compiler.plan import key_of
from conftest import Project, code_project, copy_project_files, ran
from raycluster import Cluster, running
from servers import free_port
from test_remote import nginx  # noqa: F401 (the fixture of an nginx server)
from test_remote import PIPELINE, REPORT_LINE, TASKS, TOKEN, entry_bytes, keys_of, write_small

STARTED = re.compile(r"  \[(\S+)\] running on Ray node (\w{12}) at (\S+), worker pid (\d+)$")
BUILT = re.compile(r"  \[(\S+)\] built on Ray node (\w{12}) at (\S+) \(entry (\w{12})\)$")


# ---------------------------------------------------------------- the cluster

@pytest.fixture(scope="module")
def cluster() -> Cluster:
    with running() as c:
        yield c


@pytest.fixture
def on_ray(cluster, tmp_path, monkeypatch) -> Path:
    """`doit` in this test drives the cluster, through an empty directory remote (returned)."""
    remote = tmp_path / "remote"
    for name, value in cluster.doit_env(remote).items():
        monkeypatch.setenv(name, value)
    return remote


def ray_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The executor's own lines: where each step runs and where it was built."""
    return [line for line in result.stdout.splitlines() if STARTED.match(line) or BUILT.match(line)]


def expected_lines(result: subprocess.CompletedProcess, cluster: Cluster, tasks: list[str],
                   keys: dict[str, str]) -> list[str]:
    """Each task's two lines as they must read, on the worker node, with the pid the driver was told."""
    pids = {m.group(1): m.group(4) for m in map(STARTED.match, result.stdout.splitlines()) if m}
    node = f"{cluster.worker[:12]} at {cluster.ip}"
    return [line for t in tasks for line in (f"  [{t}] running on Ray node {node}, worker pid {pids.get(t)}",
                                             f"  [{t}] built on Ray node {node} (entry {keys[t][:12]})")]


# what a build measures rather than computes (timings, speeds, memory), by file name: left out
# when two builds of a step are compared, as nothing else in an entry may differ
MEASURED = {"metrics.jsonl": ("tokens_per_s", "wall_time"), "state.json": ("elapsed_s",),
            "metrics.json": ("generation",),
            "events.out.tfevents.ingot": None}  # a train step's TensorBoard events: the metrics and their times


def unmeasured(name: str, data: bytes):
    """A file's bytes, or for a file that records measurements its JSON without them."""
    if Path(name).name not in MEASURED:
        return data
    drop = MEASURED[Path(name).name]
    if drop is None:  # measured through and through
        return None

    def keep(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in drop}

    if name.endswith(".jsonl"):
        return [keep(json.loads(line)) for line in data.decode().splitlines()]
    return keep(json.loads(data))


def comparable(p: Project, key: str) -> dict:
    """An entry's files but its manifest (timings, machine), measurements left out; the manifest's
    key, inputs and outputs but the digests of files that record measurements."""
    files = {n: unmeasured(n, d) for n, d in entry_bytes(p, key).items() if n != "manifest.json"}
    m = store.read_entry(p.root, key)
    outputs = {n: o for n, o in m.outputs.items() if Path(n).name not in MEASURED}
    return {"files": files, "key": m.key, "inputs": m.inputs, "outputs": outputs}


def each_step_rebuilt_here(p: Project, tasks: list[str], keys: dict[str, str], tmp: Path, monkeypatch):
    """Each step built again by a plain `doit STEP` in `p`, from the same input entries as before
    (set aside and put back one at a time), with as many threads as its Ray task had (Ray gives a
    task OMP_NUM_THREADS = the CPUs it asks for, and float sums split over another number of
    threads round otherwise): it must get the same key and write the same bytes."""
    plans = graph.compile_graph(project.load(p.root)).plans
    for task in tasks:
        key = keys[task]
        before = comparable(p, key)
        os.rename(store.entry(p.root, key), tmp / key)
        monkeypatch.setenv("OMP_NUM_THREADS", str(max(1, int(executor.resources(plans[task])["num_cpus"]))))
        try:
            result = p.doit(task)
            assert ran(result) == [task] and ray_lines(result) == [], result.stdout
            assert keys_of(p)[task] == key, task
            assert comparable(p, key) == before, task
        finally:
            shutil.rmtree(store.entry(p.root, key), ignore_errors=True)
            os.rename(tmp / key, store.entry(p.root, key))


# ---------------------------------------------------------------- 1. a small project on the cluster

def test_a_small_project_builds_on_the_worker_node_as_it_builds_here(cluster, on_ray, tmp_path, monkeypatch):
    p = write_small(code_project(tmp_path / "on-ray"))
    (p.root / ".venv").symlink_to(sys.prefix)  # a project's environment: not shipped to the workers
    result = p.doit()
    assert ran(result) == TASKS
    keys = keys_of(p)
    assert ray_lines(result) == expected_lines(result, cluster, TASKS, keys), result.stdout
    assert REPORT_LINE in result.stdout.splitlines()
    # the worker's progress reached this terminal, through Ray's log streaming
    progress = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
                if line.startswith("(ingot main.student pid=")]
    assert any(" step 4/4 " in line for line in progress), result.stderr
    # built in the worker node's own copy of the project, which has no .venv and came without build/
    stores = [s for s in cluster.worker_stores() if (s / keys["main.report"]).exists()]
    assert len(stores) == 1, stores
    (worker_store,) = stores
    assert all(store.verify(worker_store.parents[1], k) == [] for k in keys.values())
    assert not (worker_store.parents[1] / ".venv").exists()
    assert not (worker_store.parent / ".doit.db").exists()  # the driver's build/ (its doit database) stayed here
    # here: every entry, sound, and the remote holds what the worker pushed
    assert set(store.keys(p.root)) == set(keys.values())
    assert p.doit("verify").stdout.splitlines()[-1] == "verify: 5 sound, 0 corrupt, 0 missing, 0 pending"
    assert sorted(f.name for f in on_ray.iterdir()) == sorted(keys.values())
    assert (p.root / "build/main/report/report.md").is_file()
    again = p.doit()
    assert ran(again) == [] and ray_lines(again) == []

    # another clone, without Ray, takes the entries from the remote: the same keys; then builds
    # each step again from the same inputs: the same keys and bytes
    local = write_small(code_project(tmp_path / "local"))
    monkeypatch.delenv("INGOT_EXECUTOR")
    assert local.doit("pull").stdout.splitlines()[-1] == "pull: 5 pulled, 0 local, 0 missing, 0 pending"
    assert keys_of(local) == keys
    monkeypatch.delenv("INGOT_REMOTE")
    (tmp_path / "aside").mkdir()
    each_step_rebuilt_here(local, TASKS, keys, tmp_path / "aside", monkeypatch)
    # and a build here from nothing: the same keys up to the first step that records measured times
    scratch = write_small(code_project(tmp_path / "scratch"))
    assert ran(scratch.doit()) == TASKS
    assert {t: keys_of(scratch)[t] for t in TASKS[:4]} == {t: keys[t] for t in TASKS[:4]}
    assert all(comparable(scratch, keys[t]) == comparable(p, keys[t]) for t in TASKS[:4])


def test_the_workers_open_an_http_remote_with_the_drivers_token(cluster, on_ray, request, tmp_path, monkeypatch):
    """INGOT_REMOTE and INGOT_REMOTE_TOKEN travel with the job: the worker pulls and pushes through
    nginx's /auth/ location (tests/servers.py), which refuses a request without the token."""
    server = request.getfixturevalue("nginx")
    url = server.url("auth/ray-cache")
    monkeypatch.setenv("INGOT_REMOTE", url)
    monkeypatch.setenv("INGOT_REMOTE_TOKEN", TOKEN)
    p = write_small(code_project(tmp_path / "proj"))
    result = p.doit("main.tok@docs")
    tasks = ["dataset.docs", "main.tok", "main.tok@docs"]
    assert ran(result) == tasks
    keys = keys_of(p)
    assert ray_lines(result) == expected_lines(result, cluster, tasks, keys)
    assert sorted(f.name for f in (server.data / "auth" / "ray-cache").iterdir()) == sorted(keys[t] for t in tasks)
    assert all(store.verify(p.root, keys[t]) == [] for t in tasks)


# ---------------------------------------------------------------- 2. the default project

@pytest.mark.slow  # the default project on the cluster (`doit -n 2`), then each of its steps again here
def test_the_default_project_builds_on_the_cluster_to_the_same_keys_and_bytes(cluster, on_ray, tmp_path,
                                                                            monkeypatch):
    p = code_project(tmp_path / "on-ray")
    copy_project_files(p.root)
    result = p.doit("-n", "2", timeout=1800)
    tasks = ran(result)
    assert "gladius.report" in tasks
    keys = keys_of(p)
    assert sorted(ray_lines(result)) == sorted(expected_lines(result, cluster, tasks, keys)), result.stdout
    assert p.doit("verify").stdout.splitlines()[-1] == \
        f"verify: {len(tasks)} sound, 0 corrupt, 0 missing, 0 pending"

    monkeypatch.delenv("INGOT_EXECUTOR")
    local = code_project(tmp_path / "local")
    copy_project_files(local.root)
    assert local.doit("pull").stdout.splitlines()[-1] == f"pull: {len(tasks)} pulled, 0 local, 0 missing, 0 pending"
    assert keys_of(local) == keys
    monkeypatch.delenv("INGOT_REMOTE")
    (tmp_path / "aside").mkdir()
    each_step_rebuilt_here(local, tasks, keys, tmp_path / "aside", monkeypatch)
    assert local.read("build/gladius/report/report.md") == p.read("build/gladius/report/report.md")


# ---------------------------------------------------------------- 3. a build error on the worker

FAILING = PIPELINE + """\
  wide: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, batch_size: 1024, seq_len: 32,
         distributed: {nproc_per_node: 1024}, resources: {cpus: 1}}
"""


def test_a_step_that_fails_on_the_worker_fails_alone_with_its_error_line(cluster, on_ray, tmp_path):
    p = write_small(code_project(tmp_path / "proj"))
    p.write("specs/pipelines/main.yaml", FAILING)
    result = p.doit("-n", "2", "--continue", check=False)
    assert result.returncode == 1
    node = f"{cluster.worker[:12]} at {cluster.ip}"
    cores = len(os.sched_getaffinity(0))  # the worker node's: it runs on this machine
    lines = result.stdout.splitlines()
    assert "TaskFailed - taskid:main.wide" in lines
    assert lines[lines.index("TaskFailed - taskid:main.wide") + 1] == (
        f"main.wide: distributed.nproc_per_node is 1024, and this machine has {cores} CPU core"
        f"{'s' if cores > 1 else ''} for gloo processes on the CPU: use at most {cores} (on Ray node {node})")
    assert sorted(ran(result)) == sorted(TASKS + ["main.wide"])
    keys = keys_of(p)
    built = [m.group(1) for m in map(BUILT.match, lines) if m]
    assert sorted(built) == sorted(TASKS)  # the steps that do not read main.wide's entry
    assert keys["main.wide"] is not None and not store.entry(p.root, keys["main.wide"]).exists()
    assert not (p.root / "build/main/wide").exists()
    assert all(store.verify(p.root, keys[t]) == [] for t in TASKS)


def test_a_step_that_no_node_can_run_fails_at_once_saying_what_it_asks(cluster, on_ray, tmp_path):
    p = write_small(code_project(tmp_path / "proj"))
    p.edit("specs/pipelines/main.yaml", "vocab_size: 400}", "vocab_size: 400, resources: {cpus: 3}}")
    result = p.doit("main.tok", check=False)
    assert result.returncode == 1
    key = keys_of(p)["dataset.docs"]
    node = f"{cluster.worker[:12]} at {cluster.ip}"
    assert [line for line in result.stdout.splitlines() if not line.startswith("  [dataset.docs] running")] == [
        ".  dataset.docs", f"  [dataset.docs] built on Ray node {node} (entry {key[:12]})",
        ".  main.tok", "TaskFailed - taskid:main.tok",
        f"main.tok: it asks for 3 CPU and 0 GPU, and no node of the Ray cluster at {cluster.address} has as much "
        "(its nodes have: 0 CPU, 0 GPU; 2 CPU, 0 GPU); set `resources: {cpus: N, gpus: N}` on the step, or add a "
        "node that has them", ""]


# ---------------------------------------------------------------- 4. a lost worker

LONG = """
kind: pipeline
name: main
steps:
  tok: {kind: tokenizer, dataset: docs, vocab_size: 400}
  long: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 600, batch_size: 4, seq_len: 32,
         eval: {every: 300, batches: 1}, checkpoints: {every: 50, keep: 1}}
"""


def test_a_lost_worker_fails_its_step_with_one_line_and_the_next_doit_builds_it(cluster, on_ray, tmp_path):
    p = write_small(code_project(tmp_path / "proj"))
    p.write("specs/pipelines/main.yaml", LONG)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    errors = open(tmp_path / "stderr", "w+")  # a file: nothing reads a pipe of it while the test waits
    proc = subprocess.Popen([sys.executable, "-m", "doit", "main.long"], cwd=p.root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=errors, start_new_session=True)
    try:
        out = []
        for line in proc.stdout:  # until the driver says which worker runs main.long
            out.append(line.rstrip("\n"))
            started = STARTED.match(out[-1])
            if started and started.group(1) == "main.long":
                break
        assert started, "\n".join(out)
        pid = int(started.group(4))
        deadline = time.monotonic() + 240
        while not [c for s in cluster.worker_stores() for c in s.glob(".work/*/checkpoints/step-*")]:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the kill"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # the worker process, in the middle of training
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        errors.seek(0)
        err = errors.read()
        errors.close()
    lines = out + rest.splitlines()
    assert proc.returncode == 1, "\n".join(lines) + err
    node = f"{cluster.worker[:12]} at {cluster.ip}"
    failure = lines[lines.index("TaskFailed - taskid:main.long") + 1]
    assert failure == (f"main.long: the Ray worker building it (pid {pid} on node {node}) was lost "
                       "(WorkerCrashedError: The worker died unexpectedly while executing this task. Check "
                       "python-core-worker-*.log files for more information); nothing of it is in the store; "
                       "`doit` builds it again")
    key = keys_of(p)["main.long"]
    assert not store.entry(p.root, key).exists() and not (p.root / "build/main/long").exists()
    assert not (on_ray / key).exists()

    result = p.doit("main.long")
    assert ran(result) == ["main.long"]
    assert ray_lines(result) == expected_lines(result, cluster, ["main.long"], {"main.long": key}), result.stdout
    assert store.verify(p.root, key) == []
    # on the same node, from the checkpoint the lost worker left in that node's store
    assert [line for line in result.stderr.splitlines() if "resuming from checkpoint" in line][0].startswith(
        "(ingot main.long pid="), result.stderr


# ---------------------------------------------------------------- 5. settings that cannot work

@pytest.fixture
def small(tmp_path) -> Project:
    return write_small(code_project(tmp_path / "proj"))


def no_ray_settings(monkeypatch) -> None:
    for name in ("INGOT_EXECUTOR", "RAY_ADDRESS", "INGOT_REMOTE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("settings, message", [
    ({"INGOT_EXECUTOR": "spark"},
     "INGOT_EXECUTOR=spark: unknown executor; use `local` (the default: steps build in this `doit`'s processes) or "
     "`ray` (steps build as Ray tasks on the cluster at RAY_ADDRESS)"),
    ({"INGOT_EXECUTOR": "ray", "RAY_ADDRESS": "127.0.0.1:6379"},
     "INGOT_EXECUTOR=ray needs a remote cache, through which Ray workers get the entries a step reads and hand back "
     "the one they build: set INGOT_REMOTE (a directory every node mounts at the same path, http(s)://host/prefix "
     "or s3://bucket/prefix), or `remote` under `[tool.ingot]` in pyproject.toml"),
    ({"INGOT_EXECUTOR": "ray", "INGOT_REMOTE": "/tmp/cache"},
     "INGOT_EXECUTOR=ray needs RAY_ADDRESS, the address of the cluster's head: HOST:PORT as `ray start --head "
     "--port=6379` prints it, or `auto` for a cluster started on this machine"),
    ({"INGOT_EXECUTOR": "ray", "INGOT_REMOTE": "/tmp/cache", "RAY_ADDRESS": "ray://head:10001"},
     "RAY_ADDRESS=ray://head:10001: INGOT_EXECUTOR=ray connects to the cluster as a driver, not through Ray Client "
     "(ray://): give the head's address HOST:PORT (6379 unless `ray start --head --port` said otherwise) and run "
     "`doit` where the nodes can be reached"),
], ids=["unknown executor", "no remote", "no address", "ray client"])
def test_an_executor_that_cannot_work_stops_doit_before_build_is_touched(small, settings, message, monkeypatch):
    no_ray_settings(monkeypatch)
    small.doit("list")  # the compile's own cache of file digests, as any earlier `doit` leaves it
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    before = small.build_files()
    for command in ((), ("list",)):
        result = small.doit(*command, check=False)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"ingot: {message}; nothing was built"]
        assert result.stdout == ""
    assert small.build_files() == before


def test_a_cluster_that_cannot_be_reached_fails_the_step_at_once_saying_how_to_start_one(small, tmp_path,
                                                                                         monkeypatch):
    no_ray_settings(monkeypatch)
    port = free_port()  # nothing listens there
    for name, value in {"INGOT_EXECUTOR": "ray", "INGOT_REMOTE": str(tmp_path / "remote"),
                        "RAY_ADDRESS": f"127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    result = small.doit(check=False)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        ".  dataset.docs", "TaskFailed - taskid:dataset.docs",
        f"dataset.docs: the Ray cluster at RAY_ADDRESS=127.0.0.1:{port} cannot be reached (Connection refused); "
        f"start one with `ray start --head --port={port}` on its head machine (and `ray start --address=HEAD:{port}` "
        "on each other machine), or set RAY_ADDRESS to a running cluster's head", ""]
    assert store.keys(small.root) == []


# ---------------------------------------------------------------- what a step asks for, and a key that differs

RESOURCES = """
kind: pipeline
name: main
steps:
  tok: {kind: tokenizer, dataset: docs, vocab_size: 400}
  cpu: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, device: cpu}
  gpu: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, device: cuda}
  ddp: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, device: cuda,
        distributed: {nproc_per_node: 4}}
  gloo: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, device: cpu,
         distributed: {nproc_per_node: 2}}
  asks: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, device: cuda,
         resources: {cpus: 6, gpus: 0.5}}
  report: {kind: report, train: cpu, resources: {cpus: 0.25}}
"""


def test_each_step_asks_the_cluster_for_its_resources(small):
    small.write("specs/pipelines/main.yaml", RESOURCES)
    plans = graph.compile_graph(project.load(small.root)).plans
    asks = {t: executor.resources(plans[t]) for t in plans}
    assert asks == {
        "dataset.docs": {"num_cpus": 1, "num_gpus": 0}, "main.tok": {"num_cpus": 1, "num_gpus": 0},
        "main.tok@docs": {"num_cpus": 1, "num_gpus": 0}, "main.cpu": {"num_cpus": 1, "num_gpus": 0},
        "main.gpu": {"num_cpus": 1, "num_gpus": 1}, "main.ddp": {"num_cpus": 1, "num_gpus": 4},
        "main.gloo": {"num_cpus": 2, "num_gpus": 0}, "main.asks": {"num_cpus": 6, "num_gpus": 0.5},
        "main.report": {"num_cpus": 0.25, "num_gpus": 0}}


def test_a_worker_whose_plan_keys_differently_is_told_what_differs(small):
    plan = graph.compile_graph(project.load(small.root))["main.student"]
    libraries = {**plan.code["libraries"], "torch": "2.0.0"}
    driver = dataclasses.replace(plan, code={**plan.code, "libraries": libraries})  # a driver with torch 2.0.0
    assert driver.base != plan.base
    torch = plan.code["libraries"]["torch"]
    assert executor.differences(driver, plan) == (
        f"the worker's code or library versions differ from the driver's (torch 2.0.0 on the driver, {torch} on "
        "the worker): install the same versions on every node (pip install -r requirements.txt)")
    on_gpu = dataclasses.replace(plan, device="cuda")
    assert executor.differences(on_gpu, plan) == (
        "the step's device is cuda on the driver and cpu on the worker (`device: auto` is decided on each machine): "
        "set `device: cpu` or `device: cuda` in the step")

    # what the worker's side of a step answers, before it pulls or builds anything
    pins = {producer: ("0" * 32, "1" * 32) for producer in plan.inputs.values()}
    key = key_of(driver.base, {name: "1" * 32 for name in plan.inputs})
    mine = key_of(plan.base, {name: "1" * 32 for name in plan.inputs})
    assert executor._work(small.root, "main.student", None, key, pins, driver, run=None) == {
        "failed": f"main.student: the Ray worker computes key {mine[:12]} where the driver computed {key[:12]}: "
                  f"{executor.differences(driver, plan)}"}
    assert not (small.root / "build" / "store").exists()
