"""doit integration: up-to-date from the store, incremental rebuilds, crash safety, parallel runs.

Each test builds a temporary project with the real `doit` and asserts, from doit's
own output, exactly which steps ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ran, skipped

ALL = ["dataset.docs", "main.tok", "main.init"]


def link(project, rel: str) -> str:
    return os.readlink(project.root / rel)


def test_second_run_executes_nothing(tiny_project):
    assert ran(tiny_project.doit()) == ALL
    second = tiny_project.doit()
    assert ran(second) == []
    assert skipped(second) == ALL


def test_doit_list_shows_every_step_with_kind_and_output(tiny_project):
    out = tiny_project.doit("list").stdout.splitlines()
    assert out == [
        "dataset.docs   dataset: documents from data/*.jsonl; exact dedup, 10% validation -> build/dataset/docs",
        "explain        say why each step will run, or that it will not: doit explain [STEP ...]",
        "gc             remove store entries no step references: doit gc [--keep N] [--dry-run]",
        "main.init      init: float32 weights of model 'tiny' initialized with seed 0 -> build/main/init "
        "(key pending on main.tok)",
        "main.tok       tokenizer: byte-level BPE of 400 tokens trained on dataset 'docs' -> build/main/tok "
        "(key pending on dataset.docs)",
        "pull           fetch the entries of steps and what they consume from the remote cache, building nothing: "
        "doit pull [STEP ...]",
        "push           upload the entries of steps and what they consume that the remote cache lacks: "
        "doit push [STEP ...]",
        "status         where each step's entry is: doit status [STEP ...] [--remote]",
        "verify         re-hash store entries against their manifests: doit verify [STEP ...] [--repair]",
    ]
    assert not (tiny_project.root / "build" / "store").exists()  # listing builds nothing
    tiny_project.doit("main.tok")
    out = tiny_project.doit("list").stdout.splitlines()  # its producer built: init's key is known
    assert "main.init      init: float32 weights of model 'tiny' initialized with seed 0 -> build/main/init" in out


def test_one_step_builds_only_it_and_its_inputs(tiny_project):
    assert ran(tiny_project.doit("main.tok")) == ["dataset.docs", "main.tok"]
    assert ran(tiny_project.doit()) == ["main.init"]


EDITS = {
    # name: (file, old, new, steps that must run)
    "reformat, reorder, comment": (
        "specs/pipelines/main.yaml",
        "  tok:\n    kind: tokenizer\n    dataset: docs\n    vocab_size: 400\n",
        "  tok:   # the tokenizer\n    vocab_size:    400\n\n    dataset: 'docs'\n    kind: \"tokenizer\"\n",
        []),
    "defaults written out": (
        "specs/models/tiny.yaml", "max_positions: 128\n",
        "max_positions: 128\nhead_dim: 8\nrope_theta: 10000\nrms_norm_eps: 0.000001\ntie_embeddings: false\n", []),
    "description only": (
        "specs/datasets/docs.yaml", "kind: dataset\n", "kind: dataset\ndescription: Paragraphs of the docs.\n", []),
    "tokenizer vocab": ("specs/pipelines/main.yaml", "vocab_size: 400", "vocab_size: 380", ["main.tok", "main.init"]),
    "dataset filter": ("specs/datasets/docs.yaml", "min_chars: 20", "min_chars: 400", ALL),
    # Early cut-off: the dataset is re-keyed and rebuilt, but its shards come out byte-identical.
    "dataset filter that drops nothing": ("specs/datasets/docs.yaml", "min_chars: 20", "min_chars: 21",
                                          ["dataset.docs"]),
    "dataset shard size": ("specs/datasets/docs.yaml", "split:", "shard_docs: 20000\nsplit:",
                           ["dataset.docs"]),
    "model width": ("specs/models/tiny.yaml", "intermediate_size: 64", "intermediate_size: 96", ["main.init"]),
    "source data": ("data/docs.jsonl", '{"text": "', '{"text": "Edited. ', ALL),
    # Code is digested from its syntax tree without docstrings: comments and docstrings re-key nothing.
    "builder comment": ("targets/tokenizer.py", "OUTPUTS = (", "# an edit\nOUTPUTS = (", []),
    "builder docstring": ("targets/tokenizer.py", '"""Tokenizer builder', '"""The tokenizer builder', []),
    # Early cut-off: the tokenizer runs again and writes the same bytes, so init keeps its key.
    "tokenizer builder code": ("targets/tokenizer.py", "OUTPUTS = (", "EDITED = 1\nOUTPUTS = (", ["main.tok"]),
    "init builder code": ("targets/init.py", "OUTPUTS = (", "EDITED = 1\nOUTPUTS = (", ["main.init"]),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_edit_runs_exactly_what_depends_on_it(tiny_project, edit):
    rel, old, new, expected = EDITS[edit]
    tiny_project.doit()
    tiny_project.edit(rel, old, new)
    assert ran(tiny_project.doit()) == expected


def test_revert_restores_earlier_artifact_without_running(tiny_project):
    tiny_project.doit()
    before = link(tiny_project, "build/main/tok")
    tiny_project.edit("specs/pipelines/main.yaml", "vocab_size: 400", "vocab_size: 380")
    assert ran(tiny_project.doit()) == ["main.tok", "main.init"]
    assert link(tiny_project, "build/main/tok") != before
    tiny_project.edit("specs/pipelines/main.yaml", "vocab_size: 380", "vocab_size: 400")
    assert ran(tiny_project.doit()) == []
    assert link(tiny_project, "build/main/tok") == before
    assert (tiny_project.root / "build/main/tok/tokenizer.json").is_file()


def test_profile_has_its_own_keys_and_links(tiny_project):
    tiny_project.edit("specs/pipelines/main.yaml", "    tokenizer: tok\n",
                      "    tokenizer: tok\nprofiles:\n  ci:\n    steps:\n      tok:\n        vocab_size: 300\n")
    tiny_project.doit()
    assert ran(tiny_project.doit("profile=ci")) == ["main.tok", "main.init"]  # the dataset is shared
    assert link(tiny_project, "build/@ci/main/tok") != link(tiny_project, "build/main/tok")
    assert ran(tiny_project.doit("profile=ci")) == []
    assert ran(tiny_project.doit()) == []


def test_parallel_build_of_independent_steps(tiny_project):
    tiny_project.edit("specs/pipelines/main.yaml", "  init:\n",
                      "  tok2:\n    kind: tokenizer\n    dataset: docs\n    vocab_size: 300\n  init:\n")
    result = tiny_project.doit("-n", "2")
    assert sorted(ran(result)) == sorted(ALL + ["main.tok2"])
    for step in ("tok", "tok2", "init"):
        assert (tiny_project.root / f"build/main/{step}/manifest.json").is_file()
    assert ran(tiny_project.doit("-n", "2")) == []


def test_clean_removes_links_but_keeps_the_store(tiny_project):
    tiny_project.doit()
    entries = sorted(p.name for p in (tiny_project.root / "build/store").iterdir())
    tiny_project.doit("clean")
    assert not os.path.lexists(tiny_project.root / "build/main/tok")
    assert sorted(p.name for p in (tiny_project.root / "build/store").iterdir()) == entries
    assert ran(tiny_project.doit()) == []  # the store still has every key: links come back
    assert (tiny_project.root / "build/main/tok/tokenizer.json").is_file()


def test_kill_during_dataset_build_leaves_no_entry(tiny_project):
    # Slow the copy's dataset builder down so the kill lands mid-write.
    line = "                    writers[split_of(text, spec.split)].write(text, fields, origin, meta)\n"
    tiny_project.edit("targets/dataset.py", line, line + "                    __import__('time').sleep(0.01)\n")
    from compiler import graph, project

    key = graph.compile_graph(project.load(tiny_project.root)).key("dataset.docs")
    proc = subprocess.Popen([sys.executable, "-m", "doit", "dataset.docs"], cwd=tiny_project.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staging = tiny_project.root / "build/store/.tmp"
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size for p in staging.glob("*/train-*.jsonl")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(staging.glob("*/train-*.jsonl")), "the kill did not land mid-build"
    assert not (tiny_project.root / "build/store" / key).exists()
    assert not os.path.lexists(tiny_project.root / "build/dataset/docs")

    assert ran(tiny_project.doit("dataset.docs")) == ["dataset.docs"]
    assert (tiny_project.root / "build/store" / key / "manifest.json").is_file()
    assert os.path.realpath(tiny_project.root / "build/dataset/docs") == str(tiny_project.root / "build/store" / key)
    assert list(staging.iterdir()) == []  # the dead build's staging directory was cleared
