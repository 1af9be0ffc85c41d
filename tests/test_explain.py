"""`doit explain`: why each step will run, read from the last stored entry of that step."""

from __future__ import annotations

from compiler import graph, project


def keys(p) -> dict[str, str]:
    return {t: plan["key"][:12] for t, plan in graph.plans(project.load(p.root)).items()}


def explain(p, *args) -> list[str]:
    lines = p.doit("explain", *args).stdout.splitlines()
    assert lines[0] == ".  explain"
    return lines[1:]


def test_before_the_first_build_every_step_is_new(tiny_project):
    assert explain(tiny_project) == [
        "dataset.docs: will run: never built (build/dataset/docs does not exist)",
        "main.tok: will run: never built (build/main/tok does not exist)",
        "main.init: will run: never built (build/main/init does not exist)",
    ]


def test_spec_field_and_input_key_changes(tiny_project):
    tiny_project.doit()
    old = keys(tiny_project)
    tiny_project.edit("specs/pipelines/main.yaml", "vocab_size: 400", "vocab_size: 380")
    new = keys(tiny_project)
    assert explain(tiny_project) == [
        f"dataset.docs: up to date (store entry {old['dataset.docs']})",
        "main.tok: will run, because",
        "  spec vocab_size: 400 -> 380",
        "main.init: will run, because",
        f"  input tokenizer (main.tok): {old['main.tok']} -> {new['main.tok']}",
    ]


def test_model_fields_source_files_and_builder_code(tiny_project):
    tiny_project.doit()
    old = keys(tiny_project)
    tiny_project.edit("specs/models/tiny.yaml", "intermediate_size: 64", "intermediate_size: 96")
    tiny_project.edit("data/docs.jsonl", '{"text": "', '{"text": "Edited. ')
    tiny_project.edit("targets/tokenizer.py", "OUTPUTS = (", "# an edit\nOUTPUTS = (")
    new = keys(tiny_project)
    assert explain(tiny_project, "dataset.docs", "main.tok", "main.init") == [
        "dataset.docs: will run, because",
        "  source data/docs.jsonl: changed",
        "main.tok: will run, because",
        f"  input dataset (dataset.docs): {old['dataset.docs']} -> {new['dataset.docs']}",
        "  builder code targets/tokenizer.py (or a module it imports) changed",
        "main.init: will run, because",
        "  spec model.intermediate_size: 64 -> 96",
        f"  input tokenizer (main.tok): {old['main.tok']} -> {new['main.tok']}",
    ]


def test_unknown_step_fails_with_the_list_hint(tiny_project):
    result = tiny_project.doit("explain", "main.tokk", check=False)
    assert result.returncode == 1
    assert "explain: unknown step(s) main.tokk; `doit list` shows them all" in result.stdout


def test_explain_builds_nothing(tiny_project):
    tiny_project.doit("explain")
    assert not (tiny_project.root / "build" / "store").exists()
