"""How long `doit list` and a no-op `doit` take on a project of 1,000 steps.

Writes: a temporary project (this checkout's compiler/, targets/, runner.py, dodo.py and
pyproject.toml, plus generated data and manifests: 10 small datasets and 990 tiny
BPE tokenizers on them), built once for real with `doit -n 2`; then times, as
subprocesses, `doit list`, `doit` with everything up to date, and `doit list` right
after a comment is added to a manifest (a full compile, no key changes). The named
peer is bare doit: a dodo.py of as many trivial tasks, each up to date through
`uptodate=[True]` (run once with --always-execute, so its database holds every task
as Ingot's does), timed in turns with Ingot's commands in the same run, so the
ratios say what Ingot adds on top of doit itself. Prints a table, then one line
per figure. Run: `python bench/noop.py [--steps 1000] [--repeat 7] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import copy_code, scratch

DATASETS = 10           # each a few dozen short generated documents
STEPS_PER_PIPELINE = 10
VOCABS = range(260, 301)  # tiny BPE vocabularies: a handful of merges, milliseconds to train
GOAL_S = 1.0

PEER_DODO = '''\
"""Bare doit: {n} trivial tasks, each up to date through uptodate=[True]."""

DOIT_CONFIG = {{"dep_file": "build/.doit.db", "backend": "sqlite3", "verbosity": 2}}


def nothing():
    return None


def task_step():
    for i in range({n}):
        yield {{"name": f"s{{i:04d}}", "doc": "a trivial task", "actions": [(nothing, [])], "uptodate": [True]}}
'''


# ---------------------------------------------------------------- the projects

def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def documents(rng: random.Random, n: int) -> list[str]:
    """Short documents of pronounceable words: enough repeated pairs for a few dozen BPE merges."""
    syllables = ["ka", "lo", "mi", "ten", "ru", "sa", "do", "vi", "ner", "pa", "ko", "li", "the", "ing", "ar"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(200)]
    return [" ".join(rng.choices(words, k=rng.randint(20, 40))) + "." for _ in range(n)]


def ingot_project(root: Path, steps: int) -> int:
    """Code, data and manifests of a project with `steps` steps; returns the exact step count."""
    copy_code(root)
    datasets = min(DATASETS, max(1, steps // 10))
    rng = random.Random(0)
    for d in range(datasets):
        write(root, f"data/d{d}/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in documents(rng, 40)))
        write(root, f"specs/datasets/d{d}.yaml",
              f"kind: dataset\nname: d{d}\nsources:\n  - type: files\n    glob: data/d{d}/*.jsonl\n"
              f"filters:\n  min_chars: 20\nsplit:\n  validation: 0.1\n")
    # Every step distinct (dataset, vocab_size, min_frequency), so each is a real build of its own key.
    combos = [(d, v, f) for f in (2, 3, 4, 5) for v in VOCABS for d in range(datasets)]
    tokenizers = max(0, steps - datasets)
    assert tokenizers <= len(combos), f"at most {len(combos) + datasets} steps"
    for p in range(0, tokenizers, STEPS_PER_PIPELINE):
        lines = [f"kind: pipeline\nname: p{p // STEPS_PER_PIPELINE:03d}\nsteps:\n"]
        for s, (d, v, f) in enumerate(combos[p: min(p + STEPS_PER_PIPELINE, tokenizers)], p):
            lines.append(f"  tok{s:04d}:\n    kind: tokenizer\n    dataset: d{d}\n"
                         f"    vocab_size: {v}\n    min_frequency: {f}\n")
        write(root, f"specs/pipelines/p{p // STEPS_PER_PIPELINE:03d}.yaml", "".join(lines))
    return datasets + tokenizers


def peer_project(root: Path, steps: int) -> None:
    write(root, "dodo.py", PEER_DODO.format(n=steps))
    (root / "build").mkdir()


# ---------------------------------------------------------------- timing

# Python as it runs by default: no PYTHONPATH, and bytecode cached in __pycache__ (with
# PYTHONDONTWRITEBYTECODE set, every command would recompile the project's modules).
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}


def run(cwd: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"`python {' '.join(args)}` in {cwd} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def timed(commands: dict[str, tuple], repeat: int) -> dict[str, list[float]]:
    """Seconds of each (cwd, args, before) command, `repeat` times, taken in turns so that
    whatever else the machine does weighs on all of them alike."""
    for cwd, args, _ in commands.values():
        run(cwd, *args)  # warm the OS file cache and __pycache__ once, untimed
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeat):
        for name, (cwd, args, before) in commands.items():
            if before:
                before(i)
            times[name].append(run(cwd, *args)[0])
    return times


def comment_on(manifest: Path):
    """Before each run, a new comment in one manifest: it must be read again, yet no key changes."""
    def edit(i: int) -> None:
        with open(manifest, "a", encoding="utf-8") as f:
            f.write(f"# edit {i}\n")
    return edit


def check_noop(out: str, steps: int, what: str) -> None:
    """A no-op run executes nothing and reports every step up to date."""
    lines = out.splitlines()
    ran = [line for line in lines if line.startswith(".  ")]
    skipped = [line for line in lines if line.startswith("-- ")]
    if ran or len(skipped) != steps:
        sys.exit(f"{what}: expected {steps} steps up to date and none run; "
                 f"got {len(skipped)} up to date, {len(ran)} run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps in the generated project (default 1000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions of each command (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects and say where")
    args = parser.parse_args()

    with scratch("ingot-bench-noop-", args.keep) as tmp:
        ingot, peer = tmp / "ingot", tmp / "peer"
        ingot.mkdir()
        peer.mkdir()
        steps = ingot_project(ingot, args.steps)
        peer_project(peer, steps)
        print(f"project: {steps} steps in {tmp} ({os.cpu_count()} cores, Python {sys.version.split()[0]})",
              flush=True)

        cold, out = run(ingot, "-m", "doit", "-n", "2")
        built = sum(line.startswith(".  ") for line in out.splitlines())
        if built != steps:
            sys.exit(f"cold build ran {built} of {steps} steps")
        check_noop(run(ingot, "-m", "doit")[1], steps, "ingot no-op")
        run(peer, "-m", "doit", "--always-execute")  # so that doit's database holds every task, as Ingot's does
        check_noop(run(peer, "-m", "doit")[1], steps, "peer no-op")

        edit = comment_on(ingot / "specs" / "pipelines" / "p000.yaml")
        figures = timed({
            "python -c pass": (ingot, ("-c", "pass"), None),
            "doit --version": (ingot, ("-m", "doit", "--version"), None),
            "peer: doit list": (peer, ("-m", "doit", "list"), None),
            "peer: doit (no-op)": (peer, ("-m", "doit"), None),
            "ingot: doit list": (ingot, ("-m", "doit", "list"), None),
            "ingot: doit (no-op)": (ingot, ("-m", "doit"), None),
            "ingot: list after edit": (ingot, ("-m", "doit", "list"), edit),
        }, args.repeat)
        report(steps, cold, figures, args.repeat)


def report(steps: int, cold: float, figures: dict[str, list[float]], repeat: int) -> None:
    print(f"\n{'command':<22}{'median s':>10}{'min s':>10}   ({repeat} runs each)")
    for name, times in figures.items():
        print(f"{name:<22}{statistics.median(times):>10.3f}{min(times):>10.3f}")
    med = {name: statistics.median(times) for name, times in figures.items()}
    print()
    print(f"cold build (doit -n 2, {steps} steps): {cold:.2f} s")
    for what in ("doit list", "doit (no-op)"):
        t, p = med[f"ingot: {what}"], med[f"peer: {what}"]
        verdict = "under" if t < GOAL_S else "OVER"
        print(f"ingot `{what}`: {t:.3f} s median, {min(figures[f'ingot: {what}']):.3f} s min "
              f"({verdict} the {GOAL_S:.0f} s goal); {t / p:.2f}x bare doit's {p:.3f} s")
    t = med["ingot: list after edit"]
    print(f"ingot `doit list` right after a manifest edit (a full compile): {t:.3f} s median, "
          f"{min(figures['ingot: list after edit']):.3f} s min; {t / med['peer: doit list']:.2f}x bare doit")
    print(f"python startup: {med['python -c pass']:.3f} s; doit --version: {med['doit --version']:.3f} s")


if __name__ == "__main__":
    main()
