"""`doit explain`: why each step will run, read from the last stored entry of that step."""

from __future__ import annotations

from compiler import graph, project


def outputs(p) -> dict[str, str]:
    """Each step's output digest, as its consumers are keyed on it (steps built so far)."""
    g = graph.compile_graph(project.load(p.root))
    return {t: (g.output_digest(t) or "(none)")[:12] for t in g.plans}


def explain(p, *args) -> list[str]:
    lines = p.doit("explain", *args).stdout.splitlines()
    assert lines[0] == ".  explain"
    return lines[1:]


def test_before_the_first_build_every_step_is_new(tiny_project):
    assert explain(tiny_project) == [
        "dataset.docs: will run: never built (build/dataset/docs does not exist)",
        "main.tok: will run: never built (build/main/tok does not exist); key pending on dataset.docs",
        "main.init: will run: never built (build/main/init does not exist); key pending on main.tok",
    ]


def test_spec_field_change_and_a_pending_consumer(tiny_project):
    tiny_project.doit()
    key = graph.compile_graph(project.load(tiny_project.root)).key("dataset.docs")
    tiny_project.edit("specs/pipelines/main.yaml", "vocab_size: 400", "vocab_size: 380")
    assert explain(tiny_project) == [
        f"dataset.docs: up to date (store entry {key[:12]})",
        "main.tok: will run, because",
        "  spec vocab_size: 400 -> 380",
        "main.init: key pending on main.tok (no entry yet for its current key): it runs after it only if what "
        "it writes differs from what it was built from",
    ]


def test_input_outputs_model_fields_source_files_code_and_libraries(tiny_project):
    tiny_project.doit()
    old = outputs(tiny_project)
    tiny_project.edit("specs/models/tiny.yaml", "intermediate_size: 64", "intermediate_size: 96")
    tiny_project.edit("data/docs.jsonl", '{"text": "', '{"text": "Edited. ')
    tiny_project.edit("targets/tokenizer.py", "OUTPUTS = (", "EDITED = 1\nOUTPUTS = (")
    assert explain(tiny_project, "dataset.docs", "main.tok", "main.init") == [
        "dataset.docs: will run, because",
        "  source data/docs.jsonl: changed",
        "main.tok: key pending on dataset.docs (no entry yet for its current key): it runs after it only if "
        "what it writes differs from what it was built from, and because",
        "  code targets/tokenizer.py: changed",
        "main.init: key pending on main.tok (no entry yet for its current key): it runs after it only if what "
        "it writes differs from what it was built from, and because",
        "  spec model.intermediate_size: 64 -> 96",
    ]
    tiny_project.doit("dataset.docs")  # the dataset built: the tokenizer's inputs are known
    new = outputs(tiny_project)
    assert explain(tiny_project, "main.tok")[:3] == [
        "main.tok: will run, because",
        "  code targets/tokenizer.py: changed",
        f"  input dataset (dataset.docs): outputs {old['dataset.docs']} -> {new['dataset.docs']}",
    ]


def test_a_library_version_and_the_device_are_named(tiny_project):
    import json

    tiny_project.doit()
    manifest = tiny_project.root / "build/main/tok/manifest.json"
    data = json.loads(manifest.read_text())
    data["code"]["libraries"]["tokenizers"] = "0.0.1"
    data["device"] = "cuda"
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(data))
    key = data["key"]
    (tiny_project.root / "build/store" / key).rename(tiny_project.root / "build/store/moved")
    (tiny_project.root / "build/main/tok").unlink()
    (tiny_project.root / "build/main/tok").symlink_to("../store/moved")
    version = graph.compile_graph(project.load(tiny_project.root))["main.tok"].code["libraries"]["tokenizers"]
    assert explain(tiny_project, "main.tok") == [
        "main.tok: will run, because",
        f'  library tokenizers: "0.0.1" -> "{version}"',
        '  device: "cuda" -> null',
    ]


def test_unknown_step_fails_with_the_list_hint(tiny_project):
    result = tiny_project.doit("explain", "main.tokk", check=False)
    assert result.returncode == 1
    assert "explain: unknown step(s) main.tokk; `doit list` shows them all" in result.stdout


def test_explain_builds_nothing(tiny_project):
    tiny_project.doit("explain")
    assert not (tiny_project.root / "build" / "store").exists()
