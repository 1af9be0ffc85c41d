"""The contract every module under targets/ keeps, checked over all of them (as fsspec runs
one abstract suite over every backend): a builder declares its outputs, imports nothing heavy
at module level, does not import another builder, and its code digest never takes in
compiler/specs.py (so a docstring or a new field of a spec class re-keys nothing)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys

import pytest
from conftest import REPO

from compiler.keys import FileDigests, code_of

MODULES = sorted(p.stem for p in (REPO / "targets").glob("*.py") if p.stem != "__init__")
HEAVY = ("torch", "transformers", "tokenizers", "llama_cpp", "gguf", "matplotlib", "safetensors", "py3langid")


def defines_build(name: str) -> bool:
    tree = ast.parse((REPO / "targets" / f"{name}.py").read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == "build" for n in tree.body)


BUILDERS = [m for m in MODULES if defines_build(m)]


def test_every_step_kind_has_a_builder():
    kinds = {"dataset", "tokenizer", "pretrained", "tokens", "init", "train", "export", "gguf", "evaluate", "report",
             "teacher"}
    assert set(BUILDERS) == kinds


@pytest.mark.parametrize("name", BUILDERS)
def test_a_builder_declares_its_outputs(name):
    module = importlib.import_module(f"targets.{name}")
    assert hasattr(module, "OUTPUTS") or callable(getattr(module, "outputs", None)), name
    outputs = getattr(module, "OUTPUTS", ())
    assert all(isinstance(p, str) and p for p in outputs)
    assert "manifest.json" not in outputs  # the runner's, written last


@pytest.mark.parametrize("name", MODULES)
def test_no_heavy_import_at_module_level(name):
    """Importing any targets module (what the runner does before a build, and what `doit list`
    must never pay for) loads none of torch, transformers, tokenizers, llama.cpp, ..."""
    code = f"import sys, json; import targets.{name}; print(json.dumps(sorted(m for m in sys.modules))) "
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert not loaded & set(HEAVY), f"targets.{name} imports {sorted(loaded & set(HEAVY))} at module level"


@pytest.mark.parametrize("name", BUILDERS)
def test_a_builder_runs_no_other_builder_and_not_the_spec_module(name):
    modules = code_of(REPO, f"targets.{name}", FileDigests(REPO)).modules
    assert "compiler.specs" not in modules
    others = {f"targets.{b}" for b in BUILDERS if b != name}
    assert not others & set(modules), f"targets.{name} imports the builders {sorted(others & set(modules))}"
    assert f"targets.{name}" in modules and "targets" in modules


@pytest.mark.parametrize("name", MODULES)
def test_inputs_are_read_by_their_typed_names(name):
    """`job.inputs["tokenizer"]` would be a KeyError after everything upstream was built; the
    builders index their inputs with compiler.inputs' names, which fail on import when renamed."""
    tree = ast.parse((REPO / "targets" / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "inputs":
            assert not isinstance(node.slice, (ast.Constant, ast.JoinedStr)), f"targets/{name}.py:{node.lineno}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "inputs":
            assert not isinstance(node.args[0], (ast.Constant, ast.JoinedStr)), f"targets/{name}.py:{node.lineno}"
