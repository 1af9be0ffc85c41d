"""The one doit action: build a plan's step into the store.

Handed by dodo.py to the compiler's tasks, so `compiler/` never imports the builders.
Resolves the step's key (its producers are built by now), takes the key's lock, imports
the plan's builder (targets.<kind>, or the module its spec picks) only now, so compiling
stays light; runs it in a staging directory, checks it wrote what it declares, records
sizes and digests of every output with the metrics and timings in `manifest.json` (typed,
checked and written by `compiler.entries`), and commits the entry. A failure leaves the store
as it was.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from doit.exceptions import TaskFailed

from compiler import entries, store
from compiler.inputs import Input
from compiler.keys import file_digest, library_version
from compiler.plan import Graph, Plan
from compiler.specs import STEP_ADAPTER, DatasetSpec, ModelSpec, TokensStep


def run(graph: Graph, task: str) -> TaskFailed | None:
    plan, key = graph[task], graph.key(task)
    if key is None:  # doit runs producers first: one of them did not make its entry
        return TaskFailed(f"{task}: inputs not in the store: {', '.join(graph.pending_on(task))}")
    root = Path(plan.root)
    with store.lock(root, key, task):
        if not store.is_complete(root, key):  # else built meanwhile, by a parallel worker or run
            failed = _build(graph, plan, key)
            if failed:
                return failed
    store.point(root, plan.link, key)
    return None


def _build(graph: Graph, plan: Plan, key: str) -> TaskFailed | None:
    from targets import BuildError

    root = Path(plan.root)
    builder = importlib.import_module(f"targets.{plan.builder}")
    tmp = store.staging(root, key)
    inputs = graph.inputs(plan.task)
    job = job_of(graph, plan, key, tmp)
    started = time.time()
    try:
        metrics = builder.build(job) or {}
        declared = builder.outputs(job.spec) if hasattr(builder, "outputs") else builder.OUTPUTS
        outputs = _outputs(tmp, declared, plan.task, getattr(builder, "OPTIONAL_OUTPUTS", ()))
        finished = time.time()
        manifest = entries.manifest(
            key=key, base=plan.base, task=plan.task, kind=plan.kind, builder=plan.builder,
            profile=plan.profile, code=plan.code, device=plan.device, spec=plan.spec, inputs=inputs,
            sources=plan.sources, outputs=outputs, metrics=metrics, environment=_environment(),
            timings={"started": started, "finished": finished, "seconds": round(finished - started, 3)})
    except (BuildError, entries.EntryError) as exc:  # EntryError: an input's file, or metrics, not as typed
        shutil.rmtree(tmp, ignore_errors=True)
        return TaskFailed(f"{plan.task}: {exc}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.commit(root, key, tmp, manifest)
    shutil.rmtree(job.work, ignore_errors=True)  # the entry is complete: resume state is spent
    return None


def job_of(graph: Graph, plan: Plan, key: str, out: Path):
    """The builder's Job for a plan whose inputs are built: its spec, staging folder `out`, work
    folder, input entries, models and source files."""
    from targets import Job

    root = Path(plan.root)
    return Job(plan.task, _spec(plan), out, root=root, work=store.work_dir(root, key), key=key,
               inputs={Input.parse(name): store.entry(root, i["key"]) for name, i in graph.inputs(plan.task).items()},
               models={f: ModelSpec.model_validate(m) for f, m in plan.models.items()},
               files=[[Path(p) for p in paths] for paths in plan.files])


def _spec(plan: Plan):
    if plan.kind == "dataset":
        return DatasetSpec.model_validate(plan.step)
    if plan.kind == "tokens":
        return TokensStep.model_validate(plan.step)
    return STEP_ADAPTER.validate_python(plan.step)


def _outputs(out: Path, patterns: tuple[str, ...], task: str, optional: tuple[str, ...] = ()) -> dict:
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise RuntimeError(f"{task}: builder wrote no file matching '{pattern}' (it wrote {names})")
    extra = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in patterns + optional)]
    if extra:
        raise RuntimeError(f"{task}: builder wrote files it does not declare in OUTPUTS: {extra}")
    return {n: {"size": (out / n).stat().st_size, "xxh3_128": file_digest(out / n)} for n in names}


def _environment() -> dict:
    """The machine and software a step was built with, as a report shows them. The GPU is asked
    of torch only where the builder imported it (training, evaluation)."""
    env = dict(_machine())
    torch = sys.modules.get("torch")
    if torch is not None:
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env


@functools.cache
def _machine() -> tuple:
    """What does not change while this process runs (looked up once: package metadata is slow)."""
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "cpu": _cpu_model(), "cpus": os.cpu_count(),
           "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    env.update((package, library_version(package))
               for package in ("torch", "transformers", "tokenizers", "gguf", "llama_cpp_python"))
    return tuple(env.items())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
