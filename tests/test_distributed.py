"""Train steps in several processes (targets/distributed.py): torchrun, DDP and FSDP2 with gloo
on the CPU, two processes, against the same step in one process.

Every case is a real `torchrun` of the real builder. The same global batch in one process and
split over two gives the same losses, gradient norms and validation losses per step, and the
same gradients after the first step, within float32 rounding (the tolerances below are
several times what was measured, given beside each); a gradient `world` times too large (pytorch#162338, gloo's AVG
under FSDP2) is many orders beyond them. Killing one process mid-run fails the step, leaves the
store as it was, and the next build resumes from the last checkpoint to the same bytes as an
uninterrupted run of the same world size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runner
from compiler import graph, project, store
from conftest import REPO, Project, build_pipeline, ran
from test_train import PRE, new_project, rows, with_

LOSS_TOL = 1e-5       # absolute, per logged loss (measured ≤ 1.4e-6, sft)
NORM_RTOL = 1e-5      # relative, gradient norm per step (measured ≤ 2.6e-7)
GRAD_TOL = 1e-6       # absolute, each gradient element after the first step (measured ≤ 1.5e-8; the largest is 0.037)
WEIGHT_TOL = 1e-5     # absolute, each weight after the run (measured ≤ 4.1e-7)

BASE = with_(PRE, tokenizer="main.tok", max_steps=6, batch_size=4, grad_accum=2, clip=0.5,
             eval={"every": 2, "batches": 1}, checkpoints={"every": 3, "keep": 2})
VARIANTS = {
    # gradient accumulation over two micro-batches, clipping that bites (norms ~0.8), a warmup
    "pretrain": BASE,
    # responses only: the loss is a sum over each share's response tokens, over the global count
    "sft": with_(BASE, data="qa", objective="sft"),
    # a stored teacher's top-k outputs, read for each share's windows; early stopping at the second evaluation
    "distill": with_(BASE, objective="distill", early_stopping={"patience": 1, "min_delta": 10.0},
                     distill={"teachers": {"pre": {"step": "main.pre"}}, "phases": [
                         {"name": "one", "steps": 6, "teachers": {"pre": 1.0}}]}),
    # adapters over the weights of a trained step, merged at the end
    "lora": with_(BASE, model=None, init="main.pre", lora={"r": 4}),
}
STRATEGIES = ("ddp", "fsdp")


def distributed(step: dict, strategy: str, n: int = 2) -> dict:
    return with_(step, distributed={"strategy": strategy, "nproc_per_node": n})


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """test_train's project with every variant built in one process and under each strategy
    (pipeline `d`: steps VARIANT-one, VARIANT-ddp, VARIANT-fsdp)."""
    p = new_project(tmp_path_factory.mktemp("distributed") / "proj")
    steps = {}
    for name, step in VARIANTS.items():
        steps[f"{name}-one"] = step
        steps.update({f"{name}-{s}": distributed(step, s) for s in STRATEGIES})
    assert build_pipeline(p, "d", steps) == {f"d.{s}": None for s in steps}
    return p


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Project:
    """test_train's project with the inputs of pipeline `g` built (not its steps: BASE under each
    strategy, `g.pretrain-ddp` and `g.pretrain-fsdp`)."""
    import yaml

    p = new_project(tmp_path_factory.mktemp("distributed-base") / "proj")
    p.write("specs/pipelines/g.yaml", yaml.safe_dump({"kind": "pipeline", "name": "g", "default": False, "steps": {
        f"pretrain-{s}": distributed(BASE, s) for s in STRATEGIES}}, sort_keys=False))
    g = graph.compile_graph(project.load(p.root))
    for task in ("dataset.docs", "main.tok", "main.tok@docs"):
        assert runner.run(g, task) is None
    return p


def entry(p: Project, step: str) -> Path:
    return p.root / "build" / "d" / step


@pytest.mark.slow  # 12 train steps, 8 of them under torchrun (~80 s)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_step_split_over_two_processes_trains_as_one_process_does(proj, variant, strategy):
    import torch
    from safetensors.torch import load_file

    one, two = rows(entry(proj, f"{variant}-one")), rows(entry(proj, f"{variant}-{strategy}"))
    assert [r["step"] for r in two] == [r["step"] for r in one]
    if variant == "distill":
        assert len(one) == 4  # stopped early at the second evaluation, in both
    for a, b in zip(one, two):
        for field in ("loss", "ce", "kd", "val_loss"):
            if a[field] is None:
                assert b[field] is None, (field, a, b)
            else:
                assert abs(a[field] - b[field]) <= LOSS_TOL, (field, a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= NORM_RTOL * a["grad_norm"], (a, b)
        assert (a["lr"], a["tokens"]) == (b["lr"], b["tokens"])
    wa, wb = (load_file(str(entry(proj, f"{variant}-{s}") / "model.safetensors")) for s in ("one", strategy))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= WEIGHT_TOL
    assert all(wa[k].dtype == torch.float32 for k in wa)
    ma, mb = (json.loads((entry(proj, f"{variant}-{s}") / "manifest.json").read_text()) for s in ("one", strategy))
    named = [sorted(n.replace(f"d.{variant}-{s}", "d.STEP") for n in m["outputs"]) for m, s in ((ma, "one"), (mb, strategy))]
    assert named[0] == named[1]  # the same files: checkpoints, adapter, metrics, TensorBoard events
    assert mb["metrics"]["parameters"] == ma["metrics"]["parameters"]
    assert mb["metrics"]["steps"] == ma["metrics"]["steps"]


def job_file(p: Project, task: str, tmp: Path) -> tuple[Path, object]:
    """The builder's Job of `task` (its inputs built) as the launcher writes it, and the Job."""
    from targets import distributed as dist

    g = graph.compile_graph(project.load(p.root))
    plan, key = g[task], g.key(task)
    job = runner.job_of(g, plan, key, tmp / "out")
    job.work = tmp / "work"
    path = tmp / "job.json"
    path.write_text(json.dumps(dist.job_to_json(job)))
    return path, job


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_gradients_after_the_first_step_are_one_processs(base, strategy, tmp_path):
    """Gathered whole from both processes after the first step's backward (two micro-batches,
    clipped), against the same step's in this process: a gradient scaled by the world size, or
    a share read twice, fails this."""
    from safetensors.torch import load_file

    from targets.train import Trainer

    path, job = job_file(base, f"g.pretrain-{strategy}", tmp_path)
    out = tmp_path / "grads.safetensors"
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    ran_ = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(REPO / "tests" / "distributed_grads.py"), str(path), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert ran_.returncode == 0, ran_.stderr[-4000:]
    two = load_file(str(out))

    single = job.spec.model_copy(update={"distributed": None})
    trainer = Trainer(type(job)(job.task, single, job.out, inputs=job.inputs, models=job.models, root=job.root,
                                work=tmp_path / "work-one", key=job.key))
    one = {}
    trainer.inspect_gradients = lambda i: one.update(
        {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    trainer.step(0)
    assert one.keys() == two.keys() and len(one) > 5
    worst = max(float((one[n] - two[n]).abs().max()) for n in one)
    scale = max(float(one[n].abs().max()) for n in one)
    assert worst <= GRAD_TOL, f"largest difference {worst:.3g} (largest gradient {scale:.3g})"
    ratio = float(sum((two[n] ** 2).sum() for n in two).sqrt() / sum((one[n] ** 2).sum() for n in one).sqrt())
    assert abs(ratio - 1) < 1e-5


# ---------------------------------------------------------------- a process killed mid-run

def ranks(root: Path) -> dict[int, int]:
    """RANK -> pid of the training processes of project `root` (torchrun starts each in a
    session of its own: they are found by the job file they read)."""
    found = {}
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"targets.rank" in cmdline and any(a.startswith(bytes(root)) for a in cmdline) and b"RANK" in environ:
            found[int(environ[b"RANK"])] = pid
    return found


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> tuple[Project, Project]:
    """Two clones of test_train's project with the tokens and the init built, and a step
    `dist-STRATEGY` of 300 steps under each strategy."""
    import yaml

    out = []
    for name in ("a", "b"):
        p = new_project(tmp_path_factory.mktemp("killed") / name)
        pipeline = yaml.safe_load(p.read("specs/pipelines/main.yaml"))
        for strategy in STRATEGIES:
            pipeline["steps"][f"dist-{strategy}"] = distributed(with_(
                PRE, max_steps=300, checkpoints={"every": 10, "keep": 2}, eval={"every": 50, "batches": 1}), strategy)
        p.write("specs/pipelines/main.yaml", yaml.safe_dump(pipeline, sort_keys=False))
        p.doit("main.tok@docs", "main.init")
        out.append(p)
    return out[0], out[1]


@pytest.mark.slow  # two runs of 300 steps under torchrun, one of them killed and resumed (~40 s)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_killed_process_fails_the_step_and_the_next_build_resumes_to_the_same_bytes(clones, strategy):
    a, b = clones
    task = f"main.dist-{strategy}"
    a.doit(task)  # uninterrupted

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    doit = subprocess.Popen([sys.executable, "-m", "doit", task], cwd=b.root, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    work = b.root / "build" / "store" / ".work"
    deadline = time.monotonic() + 240
    key = graph.compile_graph(project.load(b.root)).key(task)
    while not (work / key / "checkpoints" / "step-000010").exists():
        assert doit.poll() is None and time.monotonic() < deadline, doit.communicate()
        time.sleep(0.02)
    victim = ranks(b.root)[1]
    os.kill(victim, signal.SIGKILL)
    out, err = doit.communicate(timeout=120)
    assert doit.returncode == 1, (out, err)
    assert f"{task}: torchrun exited with status 1: a training process failed (its output is above); the " \
           "checkpoints in the step's work folder are kept, and the next build resumes from the newest" in out
    assert not store.is_complete(b.root, key) and not (b.root / "build" / "main" / f"dist-{strategy}").exists()
    kept = sorted(c.name for c in (work / key / "checkpoints").iterdir())
    assert kept and all(c.startswith("step-") for c in kept), kept

    result = b.doit(task)
    assert ran(result) == [task]
    assert f"[{task}] resuming from checkpoint build/store/.work/{key}/checkpoints/{kept[-1]} (step " \
           f"{int(kept[-1][5:])} of 300)" in result.stderr
    fa, fb = (p.root / "build" / "main" / f"dist-{strategy}" for p in (a, b))
    for name in ("model.safetensors", "config.json"):
        assert (fa / name).read_bytes() == (fb / name).read_bytes(), name
    for ckpt in sorted((fa / "checkpoints").iterdir()):
        for f in sorted(ckpt.iterdir()):
            if f.name != "state.json":  # its elapsed seconds differ
                assert f.read_bytes() == (fb / "checkpoints" / ckpt.name / f.name).read_bytes(), f
    strip = [{k: v for k, v in r.items() if k not in ("tokens_per_s", "wall_time")} for r in rows(fa)]
    assert strip == [{k: v for k, v in r.items() if k not in ("tokens_per_s", "wall_time")} for r in rows(fb)]


# ---------------------------------------------------------------- before any compute

def test_more_processes_than_cores_is_an_error_before_anything_starts(base):
    cores = len(os.sched_getaffinity(0))
    steps = {"many": distributed(with_(BASE, batch_size=4 * (cores + 1)), "ddp", cores + 1)}
    failed = build_pipeline(base, "many", steps)["many.many"]
    assert failed.message == (f"many.many: distributed.nproc_per_node is {cores + 1}, and this machine has {cores} CPU core"
                       f"{'s' if cores > 1 else ''} for gloo processes on the CPU: use at most {cores}")
    assert not (base.root / "build" / "many").exists()
