"""Experiment tracking: a train step's TensorBoard event files, read back with tensorboard's own
reader, and its MLflow run, found with `mlflow.search_runs` in a SQLite store under tmp_path.

Each check compares with metrics.jsonl row by row: every number of every row is a scalar of the
same value (float32 in TensorBoard, float64 in MLflow) at the row's step, also under its stage's
or phase's name, and a resumed run holds each step once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import runner
from compiler import graph, project, store
from compiler.errors import SpecError
from conftest import TINY_SPECS, Project, build_pipeline as build, code_project, kill_at_first_checkpoint, tiny_corpus
from targets import losses, tracking

STEP = {"kind": "train", "model": "tiny", "tokenizer": "main.tok", "data": "docs", "max_steps": 6, "batch_size": 2,
        "seq_len": 16, "optimizer": {"lr": 0.003}, "eval": {"every": 2, "batches": 1},
        "checkpoints": {"every": 3, "keep": 1}}
STAGES = [{"name": "foundation", "datasets": {"docs": 1.0}, "steps": 3},
          {"name": "advanced", "datasets": {"docs": 1.0}, "steps": 3, "seq_len": 32}]
# the numbers of a row of a step without teachers, by name
NUMBERS = ["loss", "ce", "lr", "grad_norm", "tokens", "tokens_per_s", "val_loss", "wall_time"]
REAL_LM_LOSS = losses.lm_loss


def with_(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """docs -> main.tok -> main.init (a 2-layer, 32-wide model), built."""
    p = code_project(tmp_path_factory.mktemp("tracking") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    g = graph.compile_graph(project.load(p.root))
    for task in g.plans:
        assert runner.run(g, task) is None, task
    return p


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) of every scalar in an event folder, as TensorBoard's reader gives them
    (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def expected(log: list[dict], names: list[str], parts: tuple[str, ...] = ("stage", "phase")) -> dict:
    """Tag -> (step, value) each number of `names` of every row must have, as float32: under its
    name, and again under `stage/<stage>/` and `phase/<phase>/` where the row has one."""
    out: dict[str, list] = {}
    for r in log:
        for name in names:
            if r[name] is None:
                continue
            value = float(np.float32(r[name]))
            out.setdefault(name, []).append((r["step"], value))
            for part in parts:
                if r[part]:
                    out.setdefault(f"{part}/{r[part]}/{name}", []).append((r["step"], value))
    return out


def key_of(p: Project, task: str) -> str:
    return graph.compile_graph(project.load(p.root)).key(task)


# ---------------------------------------------------------------- TensorBoard


def test_every_number_of_every_row_is_a_scalar_per_stage_too(proj):
    step = with_(STEP, data=None, max_steps=None, stages=STAGES)
    assert build(proj, "cur", {"s": step}) == {"cur.s": None}
    entry = proj.root / "build" / "cur" / "s"
    log = rows(entry)
    assert [r["stage"] for r in log] == ["foundation"] * 3 + ["advanced"] * 3
    found = scalars(entry / "tensorboard" / "cur.s")
    assert found == expected(log, NUMBERS)
    assert set(found) == {*NUMBERS, *(f"stage/{s}/{n}" for s in ("foundation", "advanced") for n in NUMBERS)}
    assert [s for s, _ in found["val_loss"]] == [2, 4, 6]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert [n for n in manifest["outputs"] if n.startswith("tensorboard/")] == [
        "tensorboard/cur.s/events.out.tfevents.ingot"]
    assert not (proj.root / "build" / "store" / ".work" / manifest["key"]).exists()

    # `tensorboard --logdir build/`: the run by the step's name, in its entry and through its link
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    runs = EventMultiplexer().AddRunsFromDirectory(str(proj.root / "build")).Runs()
    assert {f"store/{manifest['key']}/tensorboard/cur.s", "cur/s/tensorboard/cur.s"} <= set(runs)


def test_names_of_teachers_phases_and_auxiliary_metrics(tmp_path):
    """A distillation row's `kd_teachers`, and numbers a plug-in architecture adds (flat, or one
    level deep); what is not a number is no scalar."""
    row = {"step": 3, "phase": "phase-1", "stage": None, "loss": 2.5, "ce": 3.0, "kd": 2.0,
           "kd_teachers": {"teacher-a": 1.25, "teacher-b": 0.75}, "lr": 1e-3, "val_loss": None,
           "halting_steps": 2.75, "memory": {"usage": 0.5, "slots": 12, "kind": "lru"}, "resumed": True,
           "odd name$": 7}
    flat = {"loss": 2.5, "ce": 3.0, "kd": 2.0, "kd/teacher-a": 1.25, "kd/teacher-b": 0.75, "lr": 1e-3,
            "halting_steps": 2.75, "memory/usage": 0.5, "memory/slots": 12.0, "odd name_": 7.0}
    assert tracking.scalars(row) == {**flat, **{f"phase/phase-1/{n}": v for n, v in flat.items()}}

    attempt = tracking.Attempt("p.s", "k", tmp_path, tmp_path / "metrics.jsonl", None, tmp_path)
    with tracking.Trackers([tracking.TensorBoard(attempt)]) as tracker:
        tracker.log(row)
        tracker.log(dict(row, step=4, phase="phase-2", loss=1.5))
    found = scalars(tmp_path / "tensorboard" / "p.s")
    assert found["kd/teacher-a"] == [(3, 1.25), (4, 1.25)]
    assert found["phase/phase-1/loss"] == [(3, 2.5)] and found["phase/phase-2/loss"] == [(4, 1.5)]
    assert found["memory/slots"] == [(3, 12.0), (4, 12.0)] and found["odd name_"] == [(3, 7.0), (4, 7.0)]
    assert found["lr"] == [(3, float(np.float32(1e-3))), (4, float(np.float32(1e-3)))]
    assert set(found) == {*flat, *(f"phase/{p}/{n}" for p in ("phase-1", "phase-2") for n in flat)}


# ---------------------------------------------------------------- resume: TensorBoard and MLflow


def nan_at(monkeypatch, calls: int) -> None:
    """The training loss of the `calls`-th training forward from now on is NaN: the step stops
    there, before its row is logged, and the last checkpoint stays."""
    real, seen = losses.lm_loss, []

    def loss(logits, labels):
        out = real(logits, labels)
        if logits.requires_grad:
            seen.append(1)
            if len(seen) == calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(losses, "lm_loss", loss)


def mlflow_runs(uri: str, experiment: str, deleted: bool = False) -> list:
    """The experiment's runs, by `mlflow.search_runs` (a list: mlflow-skinny has no pandas). It
    reads the tracking URI set process-wide, and `set_tracking_uri` sets MLFLOW_TRACKING_URI too:
    both are put back, so no later build in this process logs there."""
    import mlflow
    from mlflow.entities import ViewType

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                  run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY)
    finally:
        mlflow.set_tracking_uri(before)


def history(uri: str, run_id: str, name: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, name))


def test_a_resumed_step_logs_each_step_once(proj, monkeypatch):
    """Attempt 1 stops at step 8 (checkpoint 5), attempt 2 resumes at 5 and stops at step 11
    (checkpoint 10), attempt 3 resumes at 10 and finishes. TensorBoard's reader finds each step
    once in the live files after attempt 2 and in the entry; MLflow's run of attempt 1 (steps
    1..7) cannot go on from 5, so attempt 2 replaces it; attempt 3 goes on with attempt 2's."""
    uri = f"sqlite:///{proj.root}/build/mlflow.db"
    steps = {"s": with_(STEP, max_steps=12, checkpoints={"every": 5, "keep": 1},
                        tracking={"mlflow": {"uri": "build/mlflow.db", "experiment": "resume"}})}
    task = "res.s"
    nan_at(monkeypatch, 8)
    assert "loss is nan at optimizer step 8 of 12" in build(proj, "res", steps)[task].message
    key = key_of(proj, task)
    work = proj.root / "build" / "store" / ".work" / key
    [first] = mlflow_runs(uri, "resume")
    assert first.info.status == "FAILED" and [s for s, _ in history(uri, first.info.run_id, "loss")] == [*range(1, 8)]

    nan_at(monkeypatch, 6)  # step 11: the 6th of attempt 2
    assert "loss is nan at optimizer step 11 of 12" in build(proj, "res", steps)[task].message
    log = rows(work)
    assert [r["step"] for r in log] == [*range(1, 11)]
    live = work / "tensorboard" / task
    assert len(list(live.iterdir())) == 2  # attempt 1's file, which holds steps 6 and 7 too, and attempt 2's
    assert scalars(live) == expected(log, NUMBERS)
    raw = [e.step for f in sorted(live.iterdir()) for e in events(f) if e.HasField("summary")]
    assert raw == [*range(1, 8), *range(6, 11)]  # on disk twice; the reader purges attempt 1's 6 and 7
    purges = [[e.step for e in events(f) if e.HasField("session_log")] for f in sorted(live.iterdir())]
    assert purges == [[], [6]]  # attempt 2's file opens with a purge at its first step, as `purge_step` does
    [second] = mlflow_runs(uri, "resume")
    assert second.info.run_id != first.info.run_id and second.info.status == "FAILED"
    assert [r.info.run_id for r in mlflow_runs(uri, "resume", deleted=True)] == [first.info.run_id]

    monkeypatch.setattr(losses, "lm_loss", REAL_LM_LOSS)
    assert build(proj, "res", steps) == {task: None}
    entry = proj.root / "build" / "res" / "s"
    log = rows(entry)
    assert [r["step"] for r in log] == [*range(1, 13)]
    assert json.loads((entry / "manifest.json").read_text())["metrics"]["resumed_from"] == 10
    assert scalars(entry / "tensorboard" / task) == expected(log, NUMBERS)
    [run] = mlflow_runs(uri, "resume")
    assert run.info.run_id == second.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["ingot.resumed_from"] == "10" and run.data.tags["ingot.key"] == key
    for name in NUMBERS:
        assert history(uri, run.info.run_id, name) == [(r["step"], r[name]) for r in log if r[name] is not None]


def events(path: Path) -> list:
    """Every event of one event file as written, nothing purged (tensorboard's file loader)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return list(EventFileLoader(str(path)).Load())


@pytest.mark.slow
def test_a_killed_step_has_every_step_up_to_its_checkpoint_on_disk(proj):
    """doit killed (SIGKILL) once a checkpoint is written: the live events hold every step up to
    it, and the resumed build's entry each step once. (The writer's thread appends each event to
    the file as it comes, so the flush before each checkpoint closes only a race this kill rarely
    meets.)"""
    step = with_(STEP, max_steps=40, seq_len=32, batch_size=4, checkpoints={"every": 5, "keep": 1})
    proj.write("specs/pipelines/kill.yaml", yaml.safe_dump({"kind": "pipeline", "name": "kill", "default": False,
                                                            "steps": {"s": step}}))
    work = kill_at_first_checkpoint(proj, "kill.s")
    key = key_of(proj, "kill.s")  # its tokens are built by now
    work = work / key
    assert not store.is_complete(proj.root, key)
    done = max(int(p.name.split("-")[1]) for p in (work / "checkpoints").glob("step-*"))
    live = scalars(work / "tensorboard" / "kill.s")
    assert [s for s, _ in live["loss"]][:done] == [*range(1, done + 1)]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "doit", "kill.s"], cwd=proj.root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    entry = proj.root / "build" / "kill" / "s"
    assert json.loads((entry / "manifest.json").read_text())["metrics"]["resumed_from"] == done
    log = rows(entry)
    assert [r["step"] for r in log] == [*range(1, 41)]
    assert scalars(entry / "tensorboard" / "kill.s") == expected(log, NUMBERS)


@pytest.mark.slow  # torchrun, two gloo processes (~20 s)
def test_a_step_of_two_processes_is_tracked_by_rank_0_alone(proj):
    step = with_(STEP, batch_size=4, seed=3, distributed={"strategy": "ddp", "nproc_per_node": 2},
                 tracking={"mlflow": {"uri": "build/ddp.db", "experiment": "ddp"}})
    assert build(proj, "ddp", {"s": step}) == {"ddp.s": None}
    entry = proj.root / "build" / "ddp" / "s"
    log = rows(entry)
    assert [r["step"] for r in log] == [*range(1, 7)]
    assert scalars(entry / "tensorboard" / "ddp.s") == expected(log, NUMBERS)
    [run] = mlflow_runs(f"sqlite:///{proj.root}/build/ddp.db", "ddp")  # one run: the other process logs nothing
    assert history(f"sqlite:///{proj.root}/build/ddp.db", run.info.run_id, "loss") == [(r["step"], r["loss"])
                                                                                        for r in log]


# ---------------------------------------------------------------- MLflow


def test_one_mlflow_run_per_train_step(proj, tmp_path, monkeypatch):
    """`a` names a database under build/, `b` none (MLFLOW_TRACKING_URI gives one), `c` neither:
    build/mlflow.db, experiment its pipeline's name. Each run: tags, name, parameters, and every
    number of every row at its step."""
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    steps = {"a": with_(STEP, tracking={"mlflow": {"uri": "build/runs.db", "experiment": "exp"}}),
             "b": with_(STEP, optimizer={"lr": 0.001}, tracking={"mlflow": {"experiment": "exp"}})}
    assert build(proj, "ml", steps) == {"ml.a": None, "ml.b": None}
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert build(proj, "ml2", {"c": with_(STEP, seed=1, tracking={"mlflow": {}})}) == {"ml2.c": None}
    stores = {"ml.a": (f"sqlite:///{proj.root}/build/runs.db", "exp"), "ml.b": (elsewhere, "exp"),
              "ml2.c": (f"sqlite:///{proj.root}/build/mlflow.db", "ml2")}
    for task, (uri, experiment) in stores.items():
        entry = proj.root / "build" / task.replace(".", "/")
        [run] = mlflow_runs(uri, experiment)
        assert run.info.run_name == task and run.info.status == "FINISHED"
        assert run.data.tags["ingot.step"] == task
        assert run.data.tags["ingot.key"] == json.loads((entry / "manifest.json").read_text())["key"]
        params = run.data.params
        assert (params["optimizer.lr"], params["batch_size"], params["seq_len"], params["max_steps"]) == (
            "0.001" if task == "ml.b" else "0.003", "2", "16", "6")
        assert (params["model.hidden_size"], params["data"], params["clip"], params["seed"]) == (
            "32", "docs", "1.0", "1" if task == "ml2.c" else "0")
        assert not any(p.startswith("tracking") for p in params)
        log = rows(entry)
        assert set(run.data.metrics) == set(NUMBERS)
        for metric in NUMBERS:
            assert history(uri, run.info.run_id, metric) == [(r["step"], r[metric]) for r in log
                                                             if r[metric] is not None], metric


def test_tracking_is_not_part_of_the_key(proj):
    proj.write("specs/pipelines/k.yaml", yaml.safe_dump(
        {"kind": "pipeline", "name": "k", "default": False, "steps": {"s": STEP}}))
    plain = key_of(proj, "k.s")
    assert plain is not None  # its inputs are built: a key, not a pending one
    proj.write("specs/pipelines/k.yaml", yaml.safe_dump(
        {"kind": "pipeline", "name": "k", "default": False,
         "steps": {"s": with_(STEP, tracking={"mlflow": {"uri": "sqlite:////tmp/x.db", "experiment": "e"}})}}))
    assert key_of(proj, "k.s") == plain


@pytest.mark.parametrize("uri", ["../mlflow.db", "mlflow.db", "build/../x.db", "build/"])
def test_an_mlflow_path_outside_build_is_refused(tiny_project, uri):
    tiny_project.write("specs/pipelines/t.yaml", yaml.safe_dump(
        {"kind": "pipeline", "name": "t", "steps": {"s": with_(STEP, tokenizer="main.tok",
                                                               tracking={"mlflow": {"uri": uri}})}}))
    with pytest.raises(SpecError) as info:
        project.load(tiny_project.root)
    assert str(info.value) == MESSAGE.format(uri=uri)


MESSAGE = ("specs/pipelines/t.yaml:22: steps.s.tracking.mlflow.uri: expected a path under build/ of a SQLite "
           "database file (a spec writes nowhere else), such as build/mlflow.db, or a tracking URI such as "
           "sqlite:////abs/path/mlflow.db; found '{uri}'")


def test_a_store_mlflow_cannot_use_fails_the_step_before_training(proj):
    # seed 7: a key of its own (STEP's entry, built with tracking elsewhere, is up to date whatever `tracking` says)
    steps = {"s": with_(STEP, seed=7, tracking={"mlflow": {"uri": "nosuch://host/db"}})}
    failed = build(proj, "bad", steps)["bad.s"]
    assert failed.message == (
        "bad.s: tracking.mlflow: the MLflow store at 'nosuch://host/db' refused the run:  Model registry "
        "functionality is unavailable; got unsupported URI 'nosuch://host/db' for model registry data storage. "
        "Supported URI schemes are: ['', 'file', 'databricks', 'databricks-uc', 'uc', 'http', 'https', "
        "'postgresql', 'mysql', 'sqlite', 'mssql']. See https://www.mlflow.org/docs/latest/tracking.html#storage "
        "for how to run an MLflow server against one of the supported backend storage locations. (fix or remove "
        "tracking.mlflow.uri, or MLFLOW_TRACKING_URI)")
    work = proj.root / "build" / "store" / ".work" / key_of(proj, "bad.s")
    assert not (work / "metrics.jsonl").exists() and not list(work.glob("checkpoints/step-*"))
