"""The manifest language: the schema editors use, and every manifest this project ships."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from compiler import graph, project
from compiler.__main__ import SCHEMA, schema_text
from compiler.specs import KINDS, STEP_ADAPTER

SHIPPED = sorted(p for p in (REPO / "specs").rglob("*.yaml") if "templates" not in p.parts)
SCHEMA_COMMENT = "# yaml-language-server: $schema=../schema.json\n"


def test_schema_is_in_sync_with_the_models():
    assert SCHEMA.read_text() == schema_text(), "run `python -m compiler schema` and commit specs/schema.json"


def test_every_field_is_documented():
    def walk(name, schema):
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field} has no docstring"

    import json

    defs = json.loads(schema_text())["$defs"]
    assert set(defs) >= {"DatasetSpec", "ModelSpec", "PipelineSpec", "TokenizerStep", "InitStep"}
    for name, schema in defs.items():
        walk(name, schema)


def test_every_model_forbids_unknown_keys_and_is_frozen():
    import typing

    steps = typing.get_args(typing.get_args(STEP_ADAPTER._type)[0])
    assert len(steps) >= 2
    for cls in [*KINDS.values(), *steps]:
        assert cls.model_config["extra"] == "forbid" and cls.model_config["frozen"], cls


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_manifest_has_schema_comment(path: Path):
    assert path.read_text().startswith(SCHEMA_COMMENT)


def test_shipped_project_compiles_in_every_profile():
    default = project.load(REPO)
    assert default.profiles, "the default project declares a ci profile"
    for profile in [None, *sorted(default.profiles)]:
        plans = graph.plans(project.load(REPO, profile))
        assert {"dataset.pydocs", "gladius.tokenizer"} <= set(plans)


def test_gladius_125m_has_the_reference_parameter_count():
    from compiler import params

    model = project.load(REPO).models["gladius-125m"][0]
    assert params.count(model) == 124_668_672


def test_full_size_gladius_compiles_but_is_not_a_default():
    from compiler import doit_tasks, params

    loaded = project.load(REPO)
    plans = graph.plans(loaded)
    student = loaded.nodes["gladius-full.student"]
    assert params.count(student.models["model"]) == 124_668_672
    assert student.spec.distill.temperature == 2.0 and student.spec.distill.alpha == 0.5
    assert [(list(p.teachers.items()), p.steps) for p in student.spec.distill.phases] == [
        ([("teacher-a", 1.5)], 2000), ([("teacher-b", 1.0)], 2000)]
    assert (student.spec.optimizer.lr, student.spec.batch_size, student.spec.grad_accum,
            student.spec.clip, student.spec.seq_len) == (1e-4, 1, 8, 1.0, 128)
    defaults = doit_tasks._defaults(plans)
    assert "gladius.export" in defaults
    assert not [t for t in defaults if t.startswith("gladius-full.")]


# ---------------------------------------------------------------- model fields: rope_scaling, sliding_window

MODEL = "kind: model\nname: m\nhidden_size: 64\nintermediate_size: 128\nlayers: 2\nheads: 4\nvocab_size: 300\n"
MODEL_FIELD_ERRORS = {
    "window-of-llama": (
        "sliding_window: 16\n",
        "specs/models/m.yaml:8: sliding_window: expected no `sliding_window` for architecture llama, which attends "
        "to every earlier position (only `mistral` has a window: remove `sliding_window`, or set `architecture: "
        "mistral`); found 16"),
    "window-of-qwen2": (
        "architecture: qwen2\nsliding_window: 16\n",
        "specs/models/m.yaml:9: sliding_window: expected no `sliding_window` for architecture qwen2, which attends "
        "to every earlier position (only `mistral` has a window: remove `sliding_window`, or set `architecture: "
        "mistral`); found 16"),
    "llama3-without-original-context": (
        "rope_scaling:\n  type: llama3\n  factor: 8\n",
        "specs/models/m.yaml:8: rope_scaling: expected `original_max_positions` with `type: llama3` (the context "
        "length the model was pretrained with before scaling: 8192 for Llama 3.1); found `type` and `factor`"),
    "linear-with-llama3-fields": (
        "rope_scaling: {type: linear, factor: 4, original_max_positions: 64, low_freq_factor: 2}\n",
        "specs/models/m.yaml:8: rope_scaling: expected `low_freq_factor` and `original_max_positions` only with "
        "`type: llama3` (linear scaling divides every frequency by `factor`; remove them, or set `type: llama3`); "
        "found `type`, `factor`, `original_max_positions` and `low_freq_factor`"),
    "llama3-high-not-above-low": (
        "rope_scaling: {type: llama3, factor: 8, original_max_positions: 64, low_freq_factor: 4, "
        "high_freq_factor: 2}\n",
        "specs/models/m.yaml:8: rope_scaling.high_freq_factor: expected a `high_freq_factor` above `low_freq_factor` "
        "(4): llama3 scaling interpolates between the two (Llama 3.1: 1 and 4); found 2"),
    "zero-factor": (
        "rope_scaling: {type: linear, factor: 0}\n",
        "specs/models/m.yaml:8: rope_scaling.factor: expected a number > 0; found 0\n  fix: use a value > 0"),
    "unknown-scaling": (
        "rope_scaling: {type: yarn, factor: 4}\n",
        "specs/models/m.yaml:8: rope_scaling.type: expected one of 'linear' or 'llama3'; found 'yarn'"),
    "unknown-architecture": (
        "architecture: gemma\n",
        "specs/models/m.yaml:8: architecture: expected one of 'llama', 'qwen2' or 'mistral', or a plug-in "
        "`module:PATH:CLASS` (PATH a .py file from the project root, CLASS a class it defines); found 'gemma'"),
}


@pytest.mark.parametrize("case", MODEL_FIELD_ERRORS)
def test_model_field_rules_name_the_rule_and_the_fix(tmp_path, case):
    from compiler.errors import SpecError

    extra, message = MODEL_FIELD_ERRORS[case]
    (tmp_path / "specs" / "models").mkdir(parents=True)
    (tmp_path / "specs" / "models" / "m.yaml").write_text(MODEL + extra)
    with pytest.raises(SpecError) as info:
        project.load(tmp_path)
    assert str(info.value) == message


def test_model_fields_that_hold():
    from compiler.specs import ModelSpec

    base = {"kind": "model", "name": "m", "hidden_size": 64, "intermediate_size": 128, "layers": 2, "heads": 4,
            "vocab_size": 300}
    llama3 = ModelSpec.model_validate({**base, "rope_scaling": {"type": "llama3", "factor": 8,
                                                                "original_max_positions": 8192}})
    assert (llama3.rope_scaling.low_freq_factor, llama3.rope_scaling.high_freq_factor) == (1.0, 4.0)
    assert ModelSpec.model_validate({**base, "rope_scaling": {"type": "linear", "factor": 2}}).rope_scaling.factor == 2
    mistral = ModelSpec.model_validate({**base, "architecture": "mistral", "sliding_window": 4096})
    assert (mistral.sliding_window, ModelSpec.model_validate(base).sliding_window) == (4096, None)
