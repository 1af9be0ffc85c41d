"""Durability of the store under kill -9, for every step kind.

Every output file and the entry folder are fsynced before the rename, and the manifest is
written last, so a `doit` killed with SIGKILL at any point leaves either no entry for the
step's key or a complete one. Here each step kind of a tiny project is built once (the
reference, never killed, which also times it), then `python -m doit STEP` is started 20+
times in its own session and its process group is sent SIGKILL after a random delay that
spans start-up, the build, the commit and the exit. After every kill each folder of the
store (its own hidden folders aside) must have a manifest.json and verify against it, and
every friendly link must point at such an entry. Then a normal `doit STEP` builds the
entry, to the reference's bytes where the builder is deterministic.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compiler import graph, project, store
from compiler.keys import file_digest
from conftest import REPO, TINY_SPECS, Project, code_project, ran, tiny_corpus

KILLS = 20          # kills per kind, at delays spread over the whole run
SPAN = 1.25         # kills land in [0, SPAN x the reference `doit STEP`]: start-up, build, commit and exit
EXTRA_KILLS = 10    # at most this many more, later, when no kill landed after the entry was made
LLAMA = importlib.util.find_spec("llama_cpp") is not None

BIG = {  # for the dataset and tokenizer kinds: builds long enough for kills to land inside them
    "kind": "dataset", "name": "big", "sources": [{"type": "files", "glob": "big/*.jsonl"}],
    "filters": {"min_chars": 20}, "near_dedup": {"threshold": 0.8, "num_perm": 128}, "split": {"validation": 0.1}}
STEPS = {
    "bigtok": {"kind": "tokenizer", "dataset": "big", "vocab_size": 2000},
    "tok": {"kind": "tokenizer", "dataset": "docs", "vocab_size": 400},
    "init": {"kind": "init", "model": "tiny", "tokenizer": "tok"},
    "student": {"kind": "train", "model": "tiny", "tokenizer": "tok", "data": "docs", "max_steps": 4,
                "batch_size": 4, "seq_len": 32, "eval": {"every": 2, "batches": 1},
                "checkpoints": {"every": 2, "keep": 1}},
    "hf": {"kind": "export", "model": "student"},
    "gguf": {"kind": "export", "format": "gguf", "model": "student", "types": ["f32", "q8_0"]},
    "eval": {"kind": "evaluate", "model": "student", "seq_len": 32, "windows": 2, "max_new_tokens": 4,
             "prompts": [{"name": "hi", "text": "Hi there."}], **({"gguf": "gguf"} if LLAMA else {})},
    "report": {"kind": "report", "train": "student", "evaluate": "eval", "exports": ["hf", "gguf"],
               "loss_rows": 4},
}
# kind: (the task killed, the tasks built before it: its inputs, and theirs through doit)
KINDS = {
    "dataset": ("dataset.big", []),
    "tokenizer": ("main.bigtok", ["dataset.big"]),
    "tokens": ("main.tok@docs", ["main.tok"]),
    "init": ("main.init", ["main.tok"]),
    "train": ("main.student", ["main.tok", "main.tok@docs"]),
    "export": ("main.hf", ["main.student", "main.tok"]),
    "gguf": ("main.gguf", ["main.student", "main.tok"]),
    "evaluate": ("main.eval", ["main.student", "main.tok", "main.tok@docs", *(["main.gguf"] if LLAMA else [])]),
    "report": ("main.report", ["main.student", "main.eval", "main.hf", "main.gguf"]),
}
# Output files whose bytes differ between two uninterrupted builds: they hold measured times.
# Compared below without those, field by field.
TIMED = {"train": ("metrics.jsonl", "checkpoints/*/state.json", "tensorboard/*"),
         "evaluate": ("metrics.json",)}


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """One tiny project for every kind: docs -> tok -> tok@docs -> student (4 steps, width 32)
    -> hf, gguf -> eval -> report, and init; beside them big (four copies of every paragraph of
    the pydoc topics, near-deduplicated) -> bigtok. Each test builds what its step consumes."""
    p = code_project(tmp_path_factory.mktemp("durability") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    texts = tiny_corpus(10_000)
    p.write("big/big.jsonl", "".join(json.dumps({"text": f"{t} (copy {i})"}) + "\n" for i in range(4) for t in texts))
    p.write("specs/datasets/big.yaml", yaml.safe_dump(BIG, sort_keys=False))
    for rel in ("specs/templates/chat.jinja", "specs/templates/training-report.md.jinja"):
        p.write(rel, (REPO / rel).read_text())
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("specs/pipelines/main.yaml", yaml.safe_dump({"kind": "pipeline", "name": "main", "steps": STEPS},
                                                        sort_keys=False))
    return p


def doit_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def link_of(p: Project, task: str) -> Path:
    return p.root / graph.link_for(task, None)


def key_of(p: Project, task: str) -> str:
    key = graph.compile_graph(project.load(p.root)).key(task)
    assert key is not None, f"{task}: its inputs are not built"
    return key


def manifest_of(p: Project, key: str) -> dict:
    """The entry's manifest.json as written (the file, not the store's reading of it)."""
    return json.loads((store.entry(p.root, key) / "manifest.json").read_text(encoding="utf-8"))


def outputs(p: Project, key: str) -> dict:
    return manifest_of(p, key)["outputs"]


def remove_entry(p: Project, task: str, key: str) -> None:
    """Take the step's entry and its link away, so that the next `doit` builds it again."""
    shutil.rmtree(store.entry(p.root, key))
    link = link_of(p, task)
    if os.path.lexists(link):
        os.unlink(link)


def assert_store_sound(p: Project, allowed: set[str], when: str) -> None:
    """Every folder of the store that is not one of its own is a complete entry (a manifest, every
    listed file with its size and xxh3, nothing unlisted) of one of the keys in `allowed`; every
    friendly link points at such an entry."""
    base = p.root / store.STORE
    for folder in sorted(base.iterdir()) if base.is_dir() else ():
        if folder.name in store.HIDDEN:
            continue
        listing = sorted(q.relative_to(folder).as_posix() for q in folder.rglob("*"))
        assert folder.is_dir() and not folder.is_symlink(), f"{when}: {folder.name} is not an entry folder"
        assert folder.name in allowed, f"{when}: an entry no build here makes: {folder.name} {listing}"
        assert (folder / "manifest.json").is_file(), f"{when}: entry {folder.name} has no manifest.json: {listing}"
        problems = store.verify(p.root, folder.name)
        assert problems == [], f"{when}: entry {folder.name} is incomplete: {problems}"
        assert manifest_of(p, folder.name)["key"] == folder.name
    build = p.root / "build"
    for dirpath, dirs, files in os.walk(build):
        if Path(dirpath) == build:
            dirs[:] = [d for d in dirs if d != "store"]
        for name in dirs + files:
            path = Path(dirpath) / name
            if not path.is_symlink() or name.startswith("."):  # .NAME.PID.link: point()'s own temporary
                continue
            target = path.resolve()
            assert target.parent == base.resolve(), f"{when}: link {path.relative_to(p.root)} -> {os.readlink(path)}"
            assert target.is_dir(), f"{when}: link {path.relative_to(p.root)} dangles: {os.readlink(path)}"
            assert store.verify(p.root, target.name) == [], f"{when}: link {path.relative_to(p.root)} -> incomplete"


def spread(rng: random.Random, window: float, n: int) -> list[float]:
    """n delays in [0, window), each uniform within its own n-th of it, in random order: uniform
    draws that cover the whole window, start-up to exit, on every run."""
    delays = [(i + rng.random()) * window / n for i in range(n)]
    rng.shuffle(delays)
    return delays


def kill_after(p: Project, task: str, key: str, delay: float) -> str:
    """Start `doit TASK` in its own session and SIGKILL its process group `delay` seconds later.
    Returns where the kill landed: `start-up` (no staging folder yet), `build` (its staging
    folder is there, no entry), `commit` (the entry is there, doit still running) or `exited`
    (doit had ended, successfully, before the kill)."""
    proc = subprocess.Popen([sys.executable, "-m", "doit", task], cwd=p.root, env=doit_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(delay)
    exited = proc.poll() is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    if exited:
        assert proc.returncode == 0, f"doit {task} failed before the kill:\n{stderr.decode(errors='replace')}"
        return "exited"
    if store.entry(p.root, key).exists():
        return "commit"
    return "build" if (p.root / store.STORE / ".tmp" / f"{key}.{proc.pid}").exists() else "start-up"


def same_outputs(kind: str, p: Project, key: str, reference: dict, ref_dir: Path) -> None:
    """The rebuilt entry holds the reference's files: byte-identical (same xxh3) where the builder
    is deterministic; for the files with measured times, equal in everything but those."""
    import fnmatch

    final = outputs(p, key)
    assert sorted(final) == sorted(reference)
    timed = [n for n in final if any(fnmatch.fnmatch(n, pat) for pat in TIMED.get(kind, ()))]
    assert {n: final[n] for n in final if n not in timed} == {n: reference[n] for n in reference if n not in timed}
    entry = store.entry(p.root, key)
    for name in timed:
        mine, theirs = entry / name, ref_dir / name
        if name.endswith(".jsonl"):  # training log: drop the measured times of each row
            rows = [[{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "tokens_per_s")}
                     for line in f.read_text().splitlines()] for f in (mine, theirs)]
            assert rows[0] == rows[1], name
        elif "/events.out.tfevents" in name:  # TensorBoard: the scalars of metrics.jsonl, times left out
            a, b = (_scalars(f.parent) for f in (mine, theirs))
            assert a == b, name
        elif name == "metrics.json":  # evaluation: the losses; the generation section is timings
            a, b = (json.loads(f.read_text()) for f in (mine, theirs))
            scores = ("data", "checkpoint", "gguf")
            assert {k: a[k] for k in scores} == {k: b[k] for k in scores}
            assert a["generation"].keys() == b["generation"].keys()
        else:  # a checkpoint's state.json: everything but the elapsed time
            a, b = (json.loads(f.read_text()) for f in (mine, theirs))
            a.pop("elapsed_s"), b.pop("elapsed_s")
            assert a == b, name


def _scalars(folder: Path) -> dict:
    """Tag -> (step, value) of a TensorBoard run, the measured tags (speeds, times) left out."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]
            if tag.rsplit("/", 1)[-1] not in ("tokens_per_s", "wall_time")}


@pytest.mark.slow  # ~200 `doit` runs in fresh interpreters, a fifth of them importing torch
@pytest.mark.parametrize("kind", list(KINDS))
def test_kill_9_at_any_point_leaves_no_entry_or_a_complete_one(proj, kind, tmp_path):
    p = proj
    task, upstream = KINDS[kind]
    if upstream:
        p.doit(*upstream)
    key = key_of(p, task)
    if store.entry(p.root, key).exists():  # built as another kind's input (the run of one kind alone)
        remove_entry(p, task, key)
    others = set(store.entries(p.root))
    assert_store_sound(p, others, "before the kills")

    # the reference: built once, never killed, and timed with its start-up and exit
    started = time.monotonic()
    assert ran(p.doit(task)) == [task]
    wall = time.monotonic() - started
    reference = outputs(p, key)
    ref_dir = tmp_path / "reference"
    shutil.copytree(store.entry(p.root, key), ref_dir)
    step_s = manifest_of(p, key)["timings"]["seconds"]
    remove_entry(p, task, key)
    window = SPAN * wall  # >= 1.2 x the step's build time + doit's start-up

    rng = random.Random(kind)
    counts = dict.fromkeys(("start-up", "build", "commit", "exited"), 0)

    def kill(delay: float, label: str) -> None:
        landed = kill_after(p, task, key, delay)
        counts[landed] += 1
        when = f"{kind}: {label} at {delay:.3f}s of {window:.2f}s (landed in {landed})"
        assert_store_sound(p, others | {key}, when)
        if landed in ("start-up", "build"):  # no entry: then no link either
            assert not store.entry(p.root, key).exists() and not os.path.lexists(link_of(p, task)), when
        else:  # a complete entry: taken away, so that the next run builds it again
            remove_entry(p, task, key)

    for i, delay in enumerate(spread(rng, window, KILLS)):
        kill(delay, f"kill #{i + 1}")
    for extra in range(1, EXTRA_KILLS + 1):  # only when every run took longer than the reference
        if counts["commit"] + counts["exited"]:
            break
        kill(window * (1 + 0.25 * extra), f"extra kill #{extra}")
    before, after = counts["start-up"] + counts["build"], counts["commit"] + counts["exited"]
    print(f"\n{kind} ({task}): reference doit {wall:.2f}s (step {step_s:.2f}s); {before + after} kills in "
          f"[0, {window:.2f}s): {before} before the entry existed ({counts['start-up']} in start-up, "
          f"{counts['build']} mid-build), {after} after ({counts['commit']} with doit still running, "
          f"{counts['exited']} after it had exited)")
    assert before > 0 and after > 0, counts

    # a normal build after all that: only this step runs, its entry verifies, the link points at it
    assert ran(p.doit(task)) == [task]
    assert store.verify(p.root, key) == []
    assert os.path.realpath(link_of(p, task)) == str(store.entry(p.root, key).resolve())
    assert_store_sound(p, others | {key}, "after the rebuild")
    assert list((p.root / store.STORE / ".tmp").iterdir()) == []  # the killed builds' staging folders are gone
    assert not (p.root / store.STORE / ".work" / key).exists()  # resume state is spent once the entry exists
    same_outputs(kind, p, key, reference, ref_dir)
    assert ran(p.doit(task)) == []


def a_manifest(key: str, outputs: dict):
    """A manifest for store.commit (the typed one of compiler.entries)."""
    fields = dict(key=key, base="b" * 32, task="main.x", kind="init", builder="init", profile=None,
                  code={"modules": {}, "libraries": {}}, device=None, spec={}, inputs={}, sources={},
                  outputs=outputs, metrics={}, environment={},
                  timings={"started": 0.0, "finished": 1.0, "seconds": 1.0})
    from compiler import entries

    return entries.manifest(**fields)


def test_commit_fsyncs_every_file_and_folder_then_writes_the_manifest_last_then_renames(tmp_path, monkeypatch):
    """What a kill cannot show (the page cache outlives a killed process, not a power cut): every
    output file and folder is fsynced before the rename, the manifest is written and fsynced after
    all of them, the entry folder is fsynced after the manifest, and the store folder after the rename."""
    tmp = store.staging(tmp_path, "k")
    names = ["model.bin", "checkpoints/step-000002/model.bin", "checkpoints/step-000002/state.json"]
    for i, name in enumerate(names):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(bytes([i]) * (100 + i))
    manifest = a_manifest("k", {n: {"size": (tmp / n).stat().st_size, "xxh3_128": file_digest(tmp / n)} for n in names})
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst) -> None:
        events.append(("rename", os.path.realpath(src)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    final = store.commit(tmp_path, "k", tmp, manifest)

    staged = os.path.realpath(tmp)
    renamed = events.index(("rename", staged))
    synced = [path for what, path in events[:renamed] if what == "fsync"]
    folders = [staged, f"{staged}/checkpoints", f"{staged}/checkpoints/step-000002"]
    assert set(synced) == {f"{staged}/{n}" for n in names} | {f"{staged}/manifest.json"} | set(folders)
    last = {path: i for i, path in enumerate(synced)}
    first = {path: synced.index(path) for path in synced}
    assert all(first[f"{staged}/manifest.json"] > last[f"{staged}/{n}"] for n in names)
    assert all(first[f"{staged}/manifest.json"] > first[f] for f in folders)  # every folder synced before it...
    assert last[staged] > last[f"{staged}/manifest.json"]  # ...and the entry folder again after it
    assert ("fsync", os.path.realpath(final.parent)) in events[renamed + 1:]
    assert store.verify(tmp_path, "k") == []
