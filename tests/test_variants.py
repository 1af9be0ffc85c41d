"""Pipeline variants (compiler/project.py): `variants: {NAME: {steps: {...}}}` makes one
pipeline `PIPELINE@NAME` per variant; a step that comes out the same in every variant is one
task `PIPELINE.STEP` shared by all; keys, links and `doit list` follow."""

from __future__ import annotations

import json

import pytest
import yaml

from compiler import graph, project
from compiler.errors import SpecError
from conftest import REPO, Project
from test_train import PRE, new_project, with_

STEPS = {
    "tok2": {"kind": "tokenizer", "dataset": "docs", "vocab_size": 300},
    "train": with_(PRE, tokenizer="tok2", max_steps=4, eval={"every": 2, "batches": 1},
                   checkpoints={"every": 2, "keep": 1}),
    "final": {"kind": "evaluate", "model": "train", "windows": 2, "seq_len": 32, "max_new_tokens": 2,
              "prompts": [{"name": "hi", "text": "Hello"}]},
}
VARIANTS = {"fast": {"steps": {"train": {"seq_len": 16}}},
            "slow": {"steps": {"train": {"optimizer": {"lr": 0.001}}}},
            "same": {}}


def write(p: Project, steps: dict = STEPS, variants: dict = VARIANTS, **extra) -> None:
    p.write("specs/pipelines/v.yaml", yaml.safe_dump({"kind": "pipeline", "name": "v", "default": False,
                                                      "steps": steps, "variants": variants, **extra},
                                                     sort_keys=False))


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    p = new_project(tmp_path_factory.mktemp("variants") / "proj")
    write(p)
    return p


def test_each_variant_is_a_pipeline_and_unchanged_steps_are_shared(proj):
    pr = project.load(proj.root)
    tasks = {t for t in pr.nodes if t.startswith("v")}
    assert tasks == {"v.tok2", "v.tok2@docs", "v@fast.train", "v@slow.train", "v@same.train",
                     "v@fast.final", "v@slow.final", "v@same.final"}
    assert pr.nodes["v@fast.train"].deps == pr.nodes["v@slow.train"].deps  # the one tokenizer, the one tokens step
    assert pr.nodes["v@fast.train"].spec.seq_len == 16 and pr.nodes["v@slow.train"].spec.optimizer.lr == 0.001
    g = graph.compile_graph(pr)
    bases = {t: g.plans[t].base for t in ("v@fast.train", "v@slow.train", "v@same.train")}  # keys before inputs
    assert len(set(bases.values())) == 3
    assert str(g.plans["v@fast.train"].link).endswith("build/v@fast/train")
    assert str(g.plans["v.tok2"].link).endswith("build/v/tok2")


def test_a_variant_that_changes_the_tokenizer_has_its_own_chain(tmp_path):
    p = new_project(tmp_path / "proj")
    write(p, variants={"a": {}, "b": {"steps": {"tok2": {"vocab_size": 280}}}})
    pr = project.load(p.root)
    tasks = {t for t in pr.nodes if t.startswith("v")}
    assert tasks == {"v@a.tok2", "v@b.tok2", "v@a.tok2@docs", "v@b.tok2@docs", "v@a.train", "v@b.train",
                     "v@a.final", "v@b.final"}


def test_editing_one_variants_override_rekeys_only_that_variant(proj, tmp_path):
    before = graph.compile_graph(project.load(proj.root))
    p = new_project(tmp_path / "proj")
    write(p, variants={**VARIANTS, "fast": {"steps": {"train": {"seq_len": 24}}}})
    after = graph.compile_graph(project.load(p.root))
    changed = {t for t in after.plans if t.startswith("v") and after.plans[t].base != before.plans[t].base}
    assert changed == {"v@fast.train"}  # v@fast.final follows through its input's new outputs when built


def test_doit_lists_and_builds_the_variants(proj):
    out = proj.doit("list", "--all").stdout
    for task in ("v.tok2", "v@fast.train", "v@slow.train", "v@same.final"):
        assert task in out
    proj.doit("v@fast.final", "v@slow.train")
    for link in ("v/tok2", "v@fast/train", "v@fast/final", "v@slow/train"):
        assert (proj.root / "build" / link / "manifest.json").is_file()
    assert not (proj.root / "build" / "v@same").exists()


def test_a_report_compares_the_variants_side_by_side(proj):
    template = "specs/templates/training-report.md.jinja"
    proj.write(template, (REPO / template).read_text())
    proj.write("specs/pipelines/r.yaml", yaml.safe_dump({"kind": "pipeline", "name": "r", "default": False, "steps": {
        "report": {"kind": "report", "train": "v@fast.train", "compare": ["v@slow.train", "v@same.train"]}}},
        sort_keys=False))
    proj.doit("r.report")
    text = (proj.root / "build" / "r" / "report" / "report.md").read_text()
    table = text.split("## Side by side", 1)[1].split("## ", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("| v@")]
    assert [line.split(" | ")[0] for line in lines] == ["| v@fast.train", "| v@slow.train", "| v@same.train"]
    for line, variant in zip(lines, ("fast", "slow", "same")):
        m = json.loads((proj.root / "build" / f"v@{variant}" / "train" / "manifest.json").read_text())["metrics"]
        cells = line.split(" | ")
        assert cells[1] == f"{m['parameters']:,}" and cells[4] == f"{m['final_loss']:.4f}", (line, m)


def test_a_reference_to_the_pipeline_itself_names_the_variants(proj, tmp_path):
    p = new_project(tmp_path / "proj")
    write(p)
    p.write("specs/pipelines/r.yaml", yaml.safe_dump({"kind": "pipeline", "name": "r", "default": False, "steps": {
        "ev": {"kind": "evaluate", "model": "v.train", "windows": 2, "seq_len": 32}}}, sort_keys=False))
    with pytest.raises(SpecError) as err:
        project.load(p.root)
    assert str(err.value) == (
        "specs/pipelines/r.yaml:7: steps.ev.model: expected a step of one variant of pipeline 'v', which is built "
        "as its variants (one of 'fast', 'same', 'slow'); found 'v.train'\n"
        "  fix: name the variant's step, e.g. 'v@fast.train' (a step every variant shares resolves to the shared one)")


def test_another_pipeline_may_read_a_variants_step(tmp_path):
    p = new_project(tmp_path / "proj")
    write(p)
    p.write("specs/pipelines/r.yaml", yaml.safe_dump({"kind": "pipeline", "name": "r", "default": False, "steps": {
        "ev": {"kind": "evaluate", "model": "v@slow.train", "windows": 2, "seq_len": 32},
        "tk": {"kind": "init", "model": "tiny", "tokenizer": "v@slow.tok2"}}}, sort_keys=False))
    pr = project.load(p.root)
    assert set(pr.nodes["r.ev"].deps.values()) >= {"v@slow.train"}
    assert "v.tok2" in pr.nodes["r.tk"].deps.values()  # the shared tokenizer


def test_an_error_in_a_variant_names_the_variants_field(tmp_path):
    p = new_project(tmp_path / "proj")
    write(p, variants={"bad": {"steps": {"train": {"seq_len": 1}}}})
    with pytest.raises(SpecError) as err:
        project.load(p.root)
    assert str(err.value) == ("specs/pipelines/v.yaml:40: variants.bad.steps.train.seq_len: expected a number ≥ 2; "
                              "found 1\n  fix: use a value ≥ 2")


def test_a_variant_overrides_steps_only(tmp_path):
    p = new_project(tmp_path / "proj")
    write(p, variants={"odd": {"default": True}})
    with pytest.raises(SpecError) as err:
        project.load(p.root)
    assert "variant 'odd' overrides 'default': a variant overrides steps only" in str(err.value)
