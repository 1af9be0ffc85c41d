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
