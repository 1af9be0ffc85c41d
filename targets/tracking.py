"""Experiment tracking: a train step's metrics as TensorBoard event files and, when its spec
asks (`tracking: {mlflow: ...}`), as an MLflow run.

Reads: the rows the trainer writes to metrics.jsonl, handed over one at a time (`Tracker.log`),
and at the end metrics.jsonl itself (as a resume cut it back: each step once). Writes: live event
files in the step's work folder, `tensorboard/<task>/events.out.tfevents.*`, which a
`tensorboard --logdir build/` shows while the step trains; the entry's
`tensorboard/<task>/events.out.tfevents.ingot`, written from metrics.jsonl when training ends
(`write_entry`), so `tensorboard --logdir build/` lists every run built by its step's name; and with
MLflow, one run at the tracking URI.

Names, the same in every backend, at the row's `step` (the optimizer step, from 1):

* every number of a row under its key: `loss`, `ce`, `kd`, `lr`, `grad_norm`, `tokens`,
  `tokens_per_s`, `val_loss` (at the steps that measure it), `wall_time`, and any other numeric
  key a model adds (a plug-in architecture's auxiliary metrics); None, text and booleans are not
  scalars;
* a mapping one level deep under `KEY/NAME`, and `kd_teachers` as `kd/<teacher>`;
* all of them again as `stage/<stage>/NAME` while a curriculum stage runs and as
  `phase/<phase>/NAME` while a distillation phase does, so stages and phases compare side by side.

A character MLflow refuses in a name (any but letters, digits, `_ - . / :` and space) becomes `_`.
TensorBoard keeps each value as a float32 (`simple_value`), MLflow as a float64.

Resume. TensorBoard: an attempt that starts afresh removes the live files of an attempt killed
before its first checkpoint; a resumed one (from the checkpoint of step k) opens a new file with
a purge at step k + 1 (a `SessionLog.START` event, what SummaryWriter's `purge_step` writes), so
TensorBoard's readers drop what the interrupted attempt logged after k. The writer is flushed
before each checkpoint: a kill leaves no step up to the checkpoint unwritten. MLflow: the newest
run tagged with the step's key goes on when its history is exactly steps 1..k (the failure came
before a step was logged, or training had finished and the entry was not written); otherwise a
new run takes its place, given steps 1..k from metrics.jsonl, and the earlier run is deleted
(MLflow's soft delete: `mlflow runs restore` brings it back), as are the unfinished runs of
attempts that stopped before their first checkpoint. Either way the step's key has one run, with the whole history and
no step twice.

A backend is a `Tracker`: `log_scalars(step, values)` for each row, `flush()` before each
checkpoint, `close(failed)` at the end. A third (W&B: `wandb.init(name=task, id=..., resume=...)`,
`run.log(values, step=step)`) would be one more class here and one more field of the spec's
`tracking`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from targets import BuildError, Job

TENSORBOARD = "tensorboard"  # the folder of event files, in the work folder and in the entry
ENTRY_EVENTS = "events.out.tfevents.ingot"  # the entry's one event file (readers look for "tfevents" in names)
FILE_VERSION = "brain.Event:2"  # the first event of every event file
DEFAULT_DATABASE = "build/mlflow.db"  # the MLflow store when neither the spec nor MLFLOW_TRACKING_URI names one
NESTED_AS = {"kd_teachers": "kd"}  # a mapping's prefix where it is not its key
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./: ]")


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers by name (module docstring): every numeric value, a mapping's one level
    deep, and all again under the row's stage and phase."""
    values: dict[str, float] = {}
    for key, value in row.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            prefix = NESTED_AS.get(key, key)
            values.update((f"{prefix}/{name}", float(v)) for name, v in value.items() if _numeric(v))
        elif _numeric(value):
            values[key] = float(value)
    for part in ("stage", "phase"):
        if isinstance(row.get(part), str) and row[part]:
            values.update({f"{part}/{row[part]}/{name}": v for name, v in list(values.items())
                           if not name.startswith(("stage/", "phase/"))})
    return {safe(name): v for name, v in values.items()}


def safe(name: str) -> str:
    """`name` with each character MLflow refuses in a metric or parameter name as `_`."""
    return _UNSAFE.sub("_", name)


def _numeric(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def params(job: Job) -> dict[str, str]:
    """The step's spec flattened to `a.b.0.c` names (lists by index), and its model manifest's
    fields under `model.`: what MLflow shows and compares as a run's parameters. `tracking`
    itself is left out: it says where the numbers go, not how they were made."""
    spec = job.spec.model_dump(mode="json", exclude={"tracking"})
    spec.pop("kind", None)
    out = _flatten(spec)
    for field, model in job.models.items():
        out.update(_flatten(model.model_dump(mode="json", exclude={"name", "description", "profiles"}), f"{field}."))
    return out


def _flatten(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for n, item in enumerate(value) for k, v in _flatten(item, f"{prefix}{n}.").items()}
    return {safe(prefix[:-1]): value if isinstance(value, str) else json.dumps(value)}


@dataclass(frozen=True)
class Attempt:
    """What a tracker knows of the attempt at a train step it tracks."""
    task: str                 # the step's task name (`gladius.student`): the run's name
    key: str                  # the step's content key
    work: Path                # the step's work folder, which outlives a killed attempt
    metrics: Path             # its metrics.jsonl, cut back to the checkpoint resumed from
    resumed_from: int | None  # the step of that checkpoint; None for a fresh start
    root: Path                # the project root (a relative MLflow database path is inside it)


class Tracker:
    """One backend, open for one attempt at a train step: `log` each row, `flush` before each
    checkpoint, `close` at the end (as a context manager: closed failed when an error leaves it)."""

    def log(self, row: dict) -> None:
        self.log_scalars(row["step"], scalars(row))

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged so far durable (a kill after this loses none of it)."""

    def close(self, failed: bool = False) -> None:
        """End the attempt's record; `failed` when training stopped on an error."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)


class Trackers(Tracker):
    """Every backend of a step as one (none: a process that does not write, in a run of several)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, row: dict) -> None:
        if self.trackers:
            self.log_scalars(row["step"], scalars(row))  # the names once, for every backend

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log_scalars(step, values)

    def flush(self) -> None:
        for tracker in self.trackers:
            tracker.flush()

    def close(self, failed: bool = False) -> None:
        with contextlib.ExitStack() as stack:  # each one closed, even when another's close raises
            for tracker in self.trackers:
                stack.callback(tracker.close, failed)


def start(job: Job, resumed_from: int | None) -> Trackers:
    """The step's trackers, open: TensorBoard always, MLflow when its spec's `tracking` asks."""
    attempt = Attempt(job.task, job.key, Path(job.work), Path(job.work) / "metrics.jsonl", resumed_from,
                      Path(job.root))
    trackers: list[Tracker] = [TensorBoard(attempt)]
    options = getattr(getattr(job.spec, "tracking", None), "mlflow", None)
    try:
        if options is not None:
            trackers.append(MLflow(attempt, options, params(job)))
    except BaseException:
        trackers[0].close(failed=True)
        raise
    return Trackers(trackers)


def write_entry(job: Job, out: Path) -> None:
    """The entry's event file, `tensorboard/<task>/events.out.tfevents.ingot`: one event per row
    of metrics.jsonl (the log a resume cut back, so each step once), its time the training's start
    plus the row's `wall_time`. A fixed name and no purged tail: what the entry holds is a function
    of the log beside it, wherever and in however many attempts it was trained."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    rows = [json.loads(line) for line in (Path(job.work) / "metrics.jsonl").read_text().splitlines() if line]
    start = time.time() - (rows[-1]["wall_time"] if rows else 0.0)
    folder = Path(out) / TENSORBOARD / job.task
    folder.mkdir(parents=True)
    with open(folder / ENTRY_EVENTS, "wb") as f:
        records = RecordWriter(f)
        records.write(Event(wall_time=start, file_version=FILE_VERSION).SerializeToString())
        for row in rows:
            records.write(_event(row["step"], scalars(row), start + row["wall_time"]).SerializeToString())


def _event(step: int, values: dict[str, float], wall_time: float):
    """One TensorBoard event holding every scalar of a step (simple values: float32)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Event(step=step, wall_time=wall_time,
                 summary=Summary(value=[Summary.Value(tag=name, simple_value=v) for name, v in values.items()]))


class TensorBoard(Tracker):
    """Live event files in the work folder, through the tensorboard package's own writer (its
    EventFileWriter: a thread writes the queue out at least every 10 s), one event per step."""

    def __init__(self, attempt: Attempt):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder = attempt.work / TENSORBOARD
        if attempt.resumed_from is None:  # a fresh start: an attempt killed before its first checkpoint logged in vain
            shutil.rmtree(folder, ignore_errors=True)
        self.writer = EventFileWriter(str(folder / attempt.task), max_queue_size=1000, flush_secs=10)
        if attempt.resumed_from is not None:  # readers drop what earlier files hold from here on (`purge_step`)
            self.writer.add_event(Event(step=attempt.resumed_from + 1, wall_time=time.time(),
                                        session_log=SessionLog(status=SessionLog.START)))

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.writer.add_event(_event(step, values, time.time()))

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflow(Tracker):
    """One MLflow run per step key (module docstring), through MlflowClient: tagged `ingot.step`
    (the task name) and `ingot.key`, named after the task, the spec as its parameters. Metrics are
    logged asynchronously (MLflow's queue) and waited for at each flush and at the end."""

    def __init__(self, attempt: Attempt, options, parameters: dict[str, str]):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a build sends nothing anywhere unasked
        try:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException
        except ImportError:
            raise BuildError("tracking.mlflow: MLflow is not installed: `pip install -r requirements.txt` (it pins "
                             "mlflow-skinny with SQLAlchemy and alembic for SQLite stores), or remove "
                             "tracking.mlflow") from None

        self.uri = tracking_uri(options.uri, attempt.root)
        self.pending: list = []
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self._experiment(options.experiment or attempt.task.split(".")[0].split("@")[0])
            self.run_id = self._run(attempt, experiment, parameters)
        except MlflowException as exc:
            raise BuildError(f"tracking.mlflow: the MLflow store at '{self.uri}' refused the run: {exc.message} "
                             f"(fix or remove tracking.mlflow.uri, or MLFLOW_TRACKING_URI)") from None

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # another step made it meanwhile (doit -n)
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise BuildError(f"tracking.mlflow.experiment: experiment '{name}' at '{self.uri}' is deleted: restore "
                             f"it (`mlflow experiments restore --experiment-id {found.experiment_id}`) or name "
                             f"another")
        return found.experiment_id

    def _run(self, attempt: Attempt, experiment: str, parameters: dict[str, str]) -> str:
        """The run this attempt logs to: the earlier attempt's, when it can go on; else a new one
        that replaces it and the runs of attempts that never finished."""
        from mlflow.entities import Param

        k = attempt.resumed_from
        runs = [r.info for r in self.client.search_runs([experiment], f"tags.`ingot.key` = '{attempt.key}'",
                                                        order_by=["attributes.start_time DESC"])]
        newest = runs[0].run_id if runs and k is not None else None  # the interrupted attempt's
        stale = [r.run_id for r in runs if r.status != "FINISHED" and r.run_id != newest]
        if newest is not None and self._steps(newest) == list(range(1, k + 1)):
            self.client.update_run(newest, status="RUNNING")
            self.client.set_tag(newest, "ingot.resumed_from", str(k))
            self._delete(stale)
            return newest
        tags = {"ingot.step": attempt.task, "ingot.key": attempt.key}
        if k is not None:
            tags["ingot.resumed_from"] = str(k)
        run = self.client.create_run(experiment, run_name=attempt.task, tags=tags).info.run_id
        self.client.log_batch(run, params=[Param(name, v) for name, v in sorted(parameters.items())])
        if k:  # the history up to the checkpoint, from the log the resume cut back to it
            for line in attempt.metrics.read_text().splitlines():
                row = json.loads(line)
                self._log(run, row["step"], scalars(row))
            self.flush()
        self._delete(stale + ([newest] if newest else []))  # once the run that takes their place is whole
        return run

    def _steps(self, run: str) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run, "loss"))

    def _delete(self, runs: list[str]) -> None:
        for run in runs:
            self.client.delete_run(run)

    def _log(self, run: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        metrics = [Metric(name, v, ms, step) for name, v in values.items()]
        for first in range(0, len(metrics), 1000):  # MLflow's most metrics per batch
            self.pending.append(self.client.log_batch(run, metrics=metrics[first:first + 1000], synchronous=False))
        if len(self.pending) >= 1000:  # long between checkpoints: hold no more than a thousand steps' handles
            self.flush()

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self._log(self.run_id, step, values)

    def flush(self) -> None:
        from mlflow.exceptions import MlflowException

        pending, self.pending = self.pending, []
        try:
            for operation in pending:
                operation.wait()
        except MlflowException as exc:
            raise BuildError(f"tracking.mlflow: logging to '{self.uri}' failed: {exc.message}; the checkpoints "
                             f"are kept, so the next build resumes from the last one") from None

    def close(self, failed: bool = False) -> None:
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def tracking_uri(uri: str | None, root: Path) -> str:
    """The spec's `uri`, else MLFLOW_TRACKING_URI as MLflow reads it, else build/mlflow.db. A
    spec's plain path is a SQLite database file relative to the project root."""
    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_DATABASE
        if uri != DEFAULT_DATABASE:
            return uri
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri
    path = (Path(root) / uri).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
