"""End to end: a tiny distillation pipeline built with the real doit, edited, rebuilt."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_SPECS, ran, tiny_corpus

PIPELINE = """
kind: pipeline
name: main
steps:
  tok:
    kind: tokenizer
    dataset: docs
    vocab_size: 400
  teacher:
    kind: train
    model: wide
    tokenizer: tok
    data: docs
    max_steps: 6
    batch_size: 4
    seq_len: 32
    eval: {every: 3, batches: 2}
    checkpoints: {every: 3, keep: 1}
  student:
    kind: train
    model: tiny
    tokenizer: tok
    data: docs
    objective: distill
    batch_size: 2
    grad_accum: 2
    seq_len: 32
    optimizer: {lr: 1.0e-3}
    eval: {every: 2, batches: 2}
    checkpoints: {every: 2, keep: 1}
    distill:
      temperature: 2.0
      alpha: 0.5
      teachers:
        teacher: {step: teacher}
      phases:
        - {name: one, steps: 2, teachers: {teacher: 1.5}}
        - {name: two, steps: 2, teachers: {teacher: 1.0}}
  hf:
    kind: export
    model: student
  gguf:
    kind: export
    format: gguf
    model: student
    types: [q8_0]
"""

WIDE = """
kind: model
name: wide
hidden_size: 48
intermediate_size: 96
layers: 2
heads: 4
kv_heads: 2
vocab_size: 512
max_positions: 128
"""


@pytest.fixture
def distill_project(make_project):
    p = make_project()
    p.write("data/docs.jsonl", "\n".join(json.dumps({"text": t}) for t in tiny_corpus()) + "\n")
    p.write("specs/datasets/docs.yaml", TINY_SPECS["specs/datasets/docs.yaml"])
    p.write("specs/models/tiny.yaml", TINY_SPECS["specs/models/tiny.yaml"])
    p.write("specs/models/wide.yaml", WIDE)
    p.write("specs/pipelines/main.yaml", PIPELINE)
    p.write("specs/templates/chat.jinja", "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}")
    return p


@pytest.mark.slow
def test_changing_the_student_lr_reruns_only_the_student_and_its_exports(distill_project):
    first = distill_project.doit()
    assert ran(first) == ["dataset.docs", "main.tok", "main.tok@docs", "main.teacher",
                          "main.teacher~tok@docs~s32~k64~t2", "main.student", "main.hf", "main.gguf"]
    metrics = [json.loads(line) for line in distill_project.read("build/main/student/metrics.jsonl").splitlines()]
    assert [m["phase"] for m in metrics] == ["one", "one", "two", "two"]
    distill_project.edit("specs/pipelines/main.yaml", "lr: 1.0e-3", "lr: 2.0e-3")
    assert ran(distill_project.doit()) == ["main.student", "main.hf", "main.gguf"]
    assert ran(distill_project.doit()) == []
    distill_project.edit("specs/pipelines/main.yaml", "types: [q8_0]", "types: [q8_0, q4_0]")
    assert ran(distill_project.doit()) == ["main.gguf"]
    assert sorted(p.name for p in (distill_project.root / "build/main/gguf").iterdir()) == [
        "manifest.json", "model-q4_0.gguf", "model-q8_0.gguf"]


def edit_docstrings_and_comments(root) -> int:
    """Change the text of every docstring and add a comment line in every module of compiler/
    and targets/ (and the runner); the code that runs is untouched. Returns the files edited."""
    import ast

    edited = 0
    for path in sorted([*(root / "compiler").rglob("*.py"), *(root / "targets").rglob("*.py"), root / "runner.py"]):
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        spots = []
        for node in ast.walk(ast.parse(text)):
            body = getattr(node, "body", None)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                spots.append((body[0].value.lineno - 1, body[0].value.col_offset))
        for line, col in sorted(spots, reverse=True):
            quote = lines[line][col:].lstrip("rRbBuU")[:3]
            start = col + (len(lines[line][col:]) - len(lines[line][col:].lstrip("rRbBuU"))) + (3 if quote in ('"""', "'''") else 1)
            lines[line] = lines[line][:start] + "Edited. " + lines[line][start:]
        new = "".join(lines).replace("\nfrom __future__ import annotations\n",
                                     "\n# a comment added by the test\nfrom __future__ import annotations\n", 1)
        assert ast.dump(ast.parse(new)) != ast.dump(ast.parse(text)) or not spots
        path.write_text(new)
        edited += 1
    return edited


@pytest.mark.slow
def test_only_what_runs_rekeys_and_identical_outputs_cut_off(distill_project):
    p = distill_project
    p.edit("specs/pipelines/main.yaml", "types: [q8_0]", "types: [q8_0, q4_0]")
    p.doit()
    # Docstrings and comments across the whole code base: nothing runs.
    assert edit_docstrings_and_comments(p.root) > 20
    assert ran(p.doit()) == []
    # The GGUF writer's code: only the GGUF step (no longer the HF export, which it used to import).
    p.edit("targets/gguf.py", "CHUNK_BYTES = 4 << 20", "CHUNK_BYTES = 2 << 20")
    assert ran(p.doit()) == ["main.gguf"]
    # The order of the GGUF types is no part of the key: the same files come out.
    p.edit("specs/pipelines/main.yaml", "types: [q8_0, q4_0]", "types: [q4_0, q8_0]")
    assert ran(p.doit()) == []
    # The HF exporter's code: only the HF export.
    p.edit("targets/export.py", "def build(job: Job) -> dict:\n", "def build(job: Job) -> dict:\n    edited = True\n")
    assert ran(p.doit()) == ["main.hf"]
    # One shard either way: the dataset is rebuilt into byte-identical shards, and nothing after it runs.
    p.edit("specs/datasets/docs.yaml", "split:", "shard_docs: 20000\nsplit:")
    assert ran(p.doit()) == ["dataset.docs"]
    assert ran(p.doit()) == []


@pytest.mark.slow
def test_verify_finds_a_flipped_byte_in_every_output_of_every_step(distill_project):
    """One byte flipped in any output file of any entry (dataset shards, tokenizer, tokens,
    checkpoints and weights, HF folder, GGUF) is reported, naming the file; restored, it is not."""
    from compiler import store

    p = distill_project
    p.doit()
    files = 0
    for key, manifest in store.entries(p.root).items():
        for name, facts in manifest.outputs.items():
            path = store.entry(p.root, key) / name
            data = bytearray(path.read_bytes())
            original = bytes(data)
            data[(len(data) * 7) // 13] ^= 0x20
            path.write_bytes(bytes(data))
            problems = store.verify(p.root, key)
            assert len(problems) == 1 and problems[0].startswith(f"{name}: xxh3 "), (manifest.task, name, problems)
            path.write_bytes(original)
            assert store.verify(p.root, key) == []
            files += 1
    assert files > 20
    assert "verify: 8 sound, 0 corrupt, 0 missing, 0 pending" in p.doit("verify").stdout
