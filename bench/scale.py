"""How Ingot's builds scale past one process: each measurement is a function in MEASUREMENTS, and
one `python bench/scale.py` runs them all, in order.

`ray_overhead`: what running every step as a Ray task costs against running it here. The default
project (this checkout's code and specs/) is built cold with `doit -n 2` three times per round, in
fresh copies: by this machine's processes with torch's own thread count; the same with
OMP_NUM_THREADS=1, the threads a Ray task asking 1 CPU (a step's default) gets; and with
INGOT_EXECUTOR=ray on a cluster of two nodes on this machine (tests/raycluster.py: a head without
CPUs and a worker node with two, so every build has two cores for steps) through a fresh directory
remote. Each goes first in turn, round by round, and the worker node's stores are emptied between
builds (else it would find its entries of the round before). All must run the same steps. Prints
every wall time, the medians and the overhead per step: (Ray - here) / steps.

`ddp_speed`: a train step in one process against DDP in two gloo processes on the same global
batch (see its docstring). Run: `python bench/scale.py [--repeat 3] [--only NAME] [--keep]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from common import CODE, REPO, copy_code, scratch

sys.path.insert(0, str(REPO / "tests"))

import raycluster  # noqa: E402


def clone(dest: Path) -> Path:
    """A checkout of the default project: this one's code and specs/, no build/."""
    return copy_code(dest, CODE + ("specs", "models", "data"))


def doit(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, list[str]]:
    """Seconds `doit ARGS` took in `root`, and the steps it ran; exits on a failure."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("INGOT_REMOTE", "INGOT_EXECUTOR", "RAY_")) and k != "PYTHONPATH"}
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env={**base, **(env or {})},
                            capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if result.returncode:
        sys.exit(f"doit {' '.join(args)} in {root} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return seconds, [line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")]


def ray_overhead(tmp: Path, repeat: int) -> None:
    # Ray runs a task asking N CPUs with OMP_NUM_THREADS=N (1 by default): "here, 1 thread" builds
    # with the threads the Ray tasks have, so that the executor's own cost shows apart from theirs
    names = ("here", "here, 1 thread", "ray")
    times: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[str]] = {}
    with raycluster.running() as cluster:
        print(f"cluster: head at {cluster.address} without CPUs, worker node {cluster.worker[:12]} with 2")
        for turn in range(repeat):
            for name in names[turn % 3:] + names[:turn % 3]:  # each goes first in turn
                root = clone(tmp / f"{name.replace(', ', '-').replace(' ', '-')}-{turn}")
                env = {"here": {}, "here, 1 thread": {"OMP_NUM_THREADS": "1"},
                       "ray": cluster.doit_env(tmp / f"remote-{turn}")}[name]
                for folder in cluster.worker_stores():  # the worker node starts with nothing, as here
                    shutil.rmtree(folder)
                seconds, ran = doit(root, "-n", "2", env=env)
                steps.setdefault(name, ran)
                assert sorted(ran) == sorted(steps[name]), f"{name} ran {ran}, earlier {steps[name]}"
                times[name].append(seconds)
                print(f"round {turn + 1}: {name:14s} `doit -n 2` {seconds:6.1f} s, {len(ran)} steps", flush=True)
    assert sorted(steps["here"]) == sorted(steps["ray"]), steps
    n = len(steps["here"])
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nthe default project, cold, `doit -n 2` ({n} steps), median of {repeat}:")
    for name in names:
        print(f"  {name:14s} {median[name]:6.1f} s   ({', '.join(f'{t:.1f}' for t in times[name])})")
    for base in names[:2]:
        extra = median["ray"] - median[base]
        print(f"  ray / {base}: {median['ray'] / median[base]:.2f}x; overhead {extra:+.1f} s in all, "
              f"{extra / n:+.2f} s per step")


DDP_MODEL = {"kind": "model", "name": "scale", "hidden_size": 128, "intermediate_size": 384, "layers": 4,
             "heads": 4, "kv_heads": 2, "vocab_size": 2048, "max_positions": 256}
DDP_STEPS, DDP_WARMUP = 60, 10


def ddp_speed(tmp: Path, repeat: int) -> None:
    """A train step (width 128, 4 layers, batch 8 × 128 tokens, 60 steps, pydocs) in one process
    and under DDP in 2 gloo processes (`distributed: {strategy: ddp, nproc_per_node: 2}`), each
    side first in turn; each side's entry is removed before its next round so that `doit` trains
    it again. Tokens/s of the global batch over the steps after the first 10, from metrics.jsonl."""
    import json

    import yaml

    sys.path.insert(0, str(REPO))
    from compiler import graph, project, store

    root = copy_code(tmp / "proj")
    for folder in ("datasets", "models", "pipelines"):
        (root / "specs" / folder).mkdir(parents=True)
    (root / "specs" / "datasets" / "pydocs.yaml").write_text((REPO / "specs/datasets/pydocs.yaml").read_text())
    (root / "specs" / "models" / "scale.yaml").write_text(yaml.safe_dump(DDP_MODEL))
    step = {"kind": "train", "model": "scale", "tokenizer": "tok", "data": "pydocs", "max_steps": DDP_STEPS,
            "batch_size": 8, "seq_len": 128, "eval": {"every": DDP_STEPS, "batches": 1},
            "checkpoints": {"every": DDP_STEPS, "keep": 1}}
    steps = {"tok": {"kind": "tokenizer", "dataset": "pydocs", "vocab_size": 2048}, "one": step,
             "ddp": {**step, "distributed": {"strategy": "ddp", "nproc_per_node": 2}}}
    (root / "specs" / "pipelines" / "s.yaml").write_text(
        yaml.safe_dump({"kind": "pipeline", "name": "s", "steps": steps}, sort_keys=False))
    doit(root, "s.tok@pydocs")
    speeds: dict[str, list[float]] = {"one": [], "ddp": []}
    for turn in range(repeat):
        for side in ("one", "ddp") if turn % 2 == 0 else ("ddp", "one"):
            key = graph.compile_graph(project.load(root)).key(f"s.{side}")
            shutil.rmtree(store.entry(root, key), ignore_errors=True)  # train it again
            doit(root, f"s.{side}")
            rows = [json.loads(line) for line in (root / "build" / "s" / side / "metrics.jsonl").read_text().splitlines()]
            seconds = rows[-1]["wall_time"] - rows[DDP_WARMUP - 1]["wall_time"]
            speeds[side].append(sum(r["tokens"] for r in rows[DDP_WARMUP:]) / seconds)
            print(f"round {turn + 1}: {side:3s} {speeds[side][-1]:8,.0f} tokens/s", flush=True)
    one, ddp = statistics.median(speeds["one"]), statistics.median(speeds["ddp"])
    print(f"\na train step of 8 x 128 tokens per step, median of {repeat} (steps {DDP_WARMUP + 1}-{DDP_STEPS}):\n"
          f"  1 process        {one:8,.0f} tokens/s\n  DDP, 2 gloo      {ddp:8,.0f} tokens/s\n"
          f"  DDP / 1 process  {ddp / one:.2f}x")


# each takes the scratch folder and the number of rounds; add a measurement by adding its function
MEASUREMENTS: list[Callable[[Path, int], None]] = [ray_overhead, ddp_speed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--only", choices=[m.__name__ for m in MEASUREMENTS], action="append",
                        help="run this measurement only (repeatable); all of them by default")
    args = parser.parse_args()
    with scratch("ingot-scale-", args.keep) as tmp:
        for measure in [m for m in MEASUREMENTS if not args.only or m.__name__ in args.only]:
            print(f"== {measure.__name__}")
            folder = tmp / measure.__name__
            folder.mkdir()
            measure(folder, args.repeat)


if __name__ == "__main__":
    main()
