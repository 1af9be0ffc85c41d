"""The store: one builder per key across processes, verify, gc, and completeness.

Each test runs the real `doit` in a temporary project (conftest's tiny dataset -> tokenizer
-> init project) and asserts on the store's folders and on doit's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ran

from compiler import graph, project, store
from compiler.entries import InputRef


def keys(p, profile=None) -> dict[str, str | None]:
    g = graph.compile_graph(project.load(p.root, profile))
    return {t: g.key(t) for t in g.plans}


def entries(p) -> set[str]:
    return set(store.entries(p.root))


def slow_dataset(p, seconds: float = 0.01) -> None:
    line = "                    writers[split_of(text, spec.split)].write(text, fields, origin, meta)\n"
    p.edit("targets/dataset.py", line, line + f"                    __import__('time').sleep({seconds})\n")


def test_two_builds_of_one_key_at_once_make_one_entry(tiny_project):
    slow_dataset(tiny_project)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = [subprocess.Popen([sys.executable, "-m", "doit", "dataset.docs"], cwd=tiny_project.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(proc.wait(timeout=300), *proc.communicate()) for proc in procs]
    assert [rc for rc, _, _ in results] == [0, 0], results
    key = keys(tiny_project)["dataset.docs"]
    assert entries(tiny_project) == {key}
    assert store.verify(tiny_project.root, key) == []
    waited = [err for _, _, err in results if f"waiting for another build of {key[:12]} to finish" in err]
    assert len(waited) == 1, results  # the second builder waited on the first's lock, then found the entry
    assert list((tiny_project.root / "build/store/.tmp").iterdir()) == []


def test_the_default_and_a_profile_build_shared_keys_at_once(tiny_project):
    tiny_project.edit("specs/pipelines/main.yaml", "    tokenizer: tok\n",
                      "    tokenizer: tok\nprofiles:\n  ci:\n    steps:\n      init:\n        seed: 1\n")
    slow_dataset(tiny_project, 0.002)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = [subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=tiny_project.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in ([], ["profile=ci"])]
    results = [(proc.wait(timeout=300), *proc.communicate()) for proc in procs]
    assert [rc for rc, _, _ in results] == [0, 0], results
    default, ci = keys(tiny_project), keys(tiny_project, "ci")
    assert default["main.tok"] == ci["main.tok"] and default["main.init"] != ci["main.init"]
    assert entries(tiny_project) == set(default.values()) | set(ci.values())
    assert all(store.verify(tiny_project.root, k) == [] for k in entries(tiny_project))


def test_verify_finds_a_flipped_byte_and_repair_makes_doit_rebuild_it(tiny_project):
    tiny_project.doit()
    assert tiny_project.doit("verify").stdout.splitlines()[-1] == "verify: 3 sound, 0 corrupt, 0 missing, 0 pending"
    key = keys(tiny_project)["main.tok"]
    path = tiny_project.root / "build/store" / key / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = tiny_project.doit("verify", check=False)
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert f"main.tok: CORRUPT entry {key[:12]}" in out
    assert any(line.startswith("  tokenizer.json: xxh3 ") and "the manifest says" in line for line in out), out
    assert "verify: 2 sound, 1 corrupt, 0 missing, 0 pending" in out
    assert "verify: 1 corrupt entry; `doit verify --repair` moves them aside, so the next `doit` rebuilds them" in out
    assert tiny_project.doit("verify", "main.init").stdout.splitlines()[-1] == \
        "verify: 1 sound, 0 corrupt, 0 missing, 0 pending"

    repaired = tiny_project.doit("verify", "--repair", "main.tok").stdout
    assert "moved aside to build/store/.corrupt/" in repaired
    assert not (tiny_project.root / "build/store" / key).exists()
    assert ran(tiny_project.doit()) == ["main.tok"]  # rebuilt byte-identical: init keeps its key
    assert store.verify(tiny_project.root, key) == []


def test_an_entry_missing_a_listed_file_is_never_up_to_date(tiny_project):
    tiny_project.doit()
    key = keys(tiny_project)["main.tok"]
    (tiny_project.root / "build/store" / key / "special_tokens_map.json").unlink()
    assert not store.is_complete(tiny_project.root, key)
    result = tiny_project.doit()
    assert ran(result) == ["main.tok"], result.stdout
    assert store.verify(tiny_project.root, key) == []


def test_gc_after_an_edit_and_revert_keeps_what_is_referenced(tiny_project):
    tiny_project.doit()
    before = keys(tiny_project)
    tiny_project.edit("specs/pipelines/main.yaml", "vocab_size: 400", "vocab_size: 380")
    tiny_project.doit()
    edited = keys(tiny_project)
    tiny_project.edit("specs/pipelines/main.yaml", "vocab_size: 380", "vocab_size: 400")
    assert ran(tiny_project.doit()) == []
    stale = {edited["main.tok"], edited["main.init"]}
    assert entries(tiny_project) == set(before.values()) | stale

    kept_two = tiny_project.doit("gc", "--keep", "2", "--dry-run").stdout
    assert "would remove" not in kept_two  # the newer edited entries are the second-most recent
    dry = tiny_project.doit("gc", "--dry-run").stdout
    assert sorted(line.split()[2] for line in dry.splitlines() if line.startswith("would remove")) == \
        sorted(f"build/store/{k}" for k in stale)
    assert entries(tiny_project) == set(before.values()) | stale  # a dry run removes nothing

    out = tiny_project.doit("gc").stdout
    assert sorted(line.split()[1] for line in out.splitlines() if line.startswith("removed")) == \
        sorted(f"build/store/{k}" for k in stale)
    assert "gc: freed " in out
    assert entries(tiny_project) == set(before.values())
    assert ran(tiny_project.doit()) == []


def test_gc_keeps_the_keys_of_every_profile_and_frees_gone_steps(tiny_project):
    tiny_project.edit("specs/pipelines/main.yaml", "    tokenizer: tok\n",
                      "    tokenizer: tok\nprofiles:\n  ci:\n    steps:\n      init:\n        seed: 1\n")
    tiny_project.doit()
    tiny_project.doit("profile=ci")
    both = entries(tiny_project)
    assert len(both) == 4
    assert "removed" not in tiny_project.doit("gc").stdout
    assert entries(tiny_project) == both
    # a step that no longer exists: its entries go
    tiny_project.edit("specs/pipelines/main.yaml", "  init:\n    kind: init\n    model: tiny\n    tokenizer: tok\n", "")
    tiny_project.edit("specs/pipelines/main.yaml", "      init:\n        seed: 1\n", "      tok:\n        min_frequency: 2\n")
    out = tiny_project.doit("gc").stdout
    assert out.count("step main.init is gone") == 2, out
    assert entries(tiny_project) == {keys(tiny_project)["dataset.docs"], keys(tiny_project)["main.tok"]}


def test_gc_clears_stale_staging_and_work_folders(tiny_project):
    tiny_project.doit()
    store_dir = tiny_project.root / "build/store"
    (store_dir / ".tmp" / "0123abcd.999999999").mkdir(parents=True)
    (store_dir / ".work" / "0123abcd").mkdir(parents=True)
    (store_dir / ".work" / "0123abcd" / "step-000010").mkdir()
    out = tiny_project.doit("gc").stdout
    assert "removed build/store/.tmp/0123abcd.999999999" in out
    assert "removed build/store/.work/0123abcd" in out
    assert list((store_dir / ".tmp").iterdir()) == [] and list((store_dir / ".work").iterdir()) == []


def test_manifest_records_input_outputs_code_modules_and_libraries(tiny_project):
    tiny_project.doit()
    manifest = store.read_manifest(tiny_project.root, "build/main/init")
    tok = store.read_manifest(tiny_project.root, "build/main/tok")
    assert manifest.inputs == {"tokenizer": InputRef(task="main.tok", key=tok.key,
                                                     outputs=store.outputs_digest(tok.outputs))}
    assert set(manifest.code.modules) == {"targets", "targets.init", "targets.weights", "compiler.params",
                                          "compiler.inputs"}
    assert set(manifest.code.libraries) == {"numpy", "safetensors", "tokenizers", "torch"}
