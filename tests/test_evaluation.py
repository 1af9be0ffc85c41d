"""Evaluate and report steps at compile time: what they read, and each mistake's whole message.
Loaded in-process (a case costs milliseconds); the broken template also goes through `doit`."""

from __future__ import annotations

import json

import pytest

from compiler import graph, project
from compiler.errors import SpecError
from conftest import REPO, TINY_SPECS, write_files

PIPELINE = "specs/pipelines/main.yaml"
TEMPLATE = "specs/templates/report.md.jinja"
FILES = {
    "specs/datasets/docs.yaml": "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n",
    "specs/datasets/more.yaml": "kind: dataset\nname: more\nsources:\n  - type: files\n    glob: data/*.jsonl\n",
    "specs/models/tiny.yaml": "kind: model\nname: tiny\nhidden_size: 32\nintermediate_size: 64\nlayers: 2\n"
                              "heads: 4\nvocab_size: 512\nmax_positions: 128\n",
    TEMPLATE: "# {{ model.name }}\n{% include 'part.md.jinja' %}\n",
    "specs/templates/part.md.jinja": "Loss: {{ train.final_loss }}\n",
    PIPELINE: TINY_SPECS[PIPELINE].rstrip() + """
          student:
            kind: train
            init: init
            tokenizer: tok
            data: docs
            max_steps: 10
          hf:
            kind: export
            model: student
          gguf:
            kind: export
            format: gguf
            model: student
            types: [q8_0]
          evaluate:
            kind: evaluate
            model: student
            gguf: gguf
          report:
            kind: report
            train: student
            evaluate: evaluate
            exports: [hf, gguf]
            template: specs/templates/report.md.jinja
    """,
}


def write(p, **replace: tuple[str, str]) -> None:
    """FILES with (old, new) replaced once in the file named by each keyword (pipeline, template)."""
    p.write("data/docs.jsonl", "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    p.write("specs/templates/chat.jinja", (REPO / "specs/templates/chat.jinja").read_text())
    write_files(p, FILES, {"pipeline": PIPELINE, "template": TEMPLATE}, **replace)


def load_error(p, **replace) -> str:
    write(p, **replace)
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    return str(info.value)


def test_what_evaluate_and_report_read(make_project):
    p = make_project()
    write(p)
    plans = graph.plans(project.load(p.root))
    evaluate, report = plans["main.evaluate"], plans["main.report"]
    assert evaluate.inputs == {"gguf": "main.gguf", "model": "main.student", "tokenizer": "main.tok",
                               "tokens.docs": "main.tok@docs"}
    assert report.inputs == {"evaluate": "main.evaluate", "export.gguf": "main.gguf", "export.hf": "main.hf",
                             "train": "main.student"}
    # the template and what it includes are sources: editing either changes the report's key only
    assert sorted(report.sources) == ["specs/templates/part.md.jinja", "specs/templates/report.md.jinja"]
    assert sorted(evaluate.sources) == ["specs/templates/chat.jinja"]
    assert evaluate.builder == "evaluate" and report.builder == "report"
    before = {t: plan.base for t, plan in plans.items()}
    p.write("specs/templates/part.md.jinja", "Final loss: {{ train.final_loss }}\n")
    after = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    assert [t for t in before if before[t] != after[t]] == ["main.report"]


def test_evaluate_reads_the_validation_split_of_the_dataset_it_names(make_project):
    p = make_project()
    write(p, pipeline=("    gguf: gguf\n", "    gguf: gguf\n    data: more\n"))
    plans = graph.plans(project.load(p.root))
    assert plans["main.evaluate"].inputs == {"gguf": "main.gguf", "model": "main.student", "tokenizer": "main.tok",
                                             "tokens.more": "main.tok@more"}


def test_max_kld_is_part_of_the_key(make_project):
    """A gate decides whether the step succeeds, so a new limit is a new entry."""
    p = make_project()
    write(p)
    before = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    write(p, pipeline=("    gguf: gguf\n", "    gguf: gguf\n    max_kld: {q8_0: 0.002}\n"))
    after = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    assert [t for t in before if before[t] != after[t]] == ["main.evaluate"]


def test_an_adapter_export_is_not_gguf_files_to_measure(make_project):
    p = make_project()
    write(p, pipeline=("    types: [q8_0]\n", "    types: [q8_0]\n    adapter: true\n"))
    p.edit(PIPELINE, "    init: init\n", "    init: init\n    lora: {r: 2}\n")
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert str(info.value) == (
        "specs/pipelines/main.yaml:31: steps.evaluate.gguf: expected an export step with `format: gguf` that writes "
        "a model; found 'gguf', an export of a LoRA adapter (`adapter: true`), not of a model\n"
        "  fix: name the step that writes the GGUF files, or leave `gguf` out")


CASES = {
    "evaluate-gguf-is-an-hf-export": (
        dict(pipeline=("    gguf: gguf\n", "    gguf: hf\n")),
        "specs/pipelines/main.yaml:29: steps.evaluate.gguf: expected an export step with `format: gguf` that writes "
        "a model; found 'hf', an export with format 'hf'\n"
        "  fix: name the step that writes the GGUF files, or leave `gguf` out"),

    "evaluate-gguf-of-other-weights": (
        dict(pipeline=("    model: student\n    types", "    model: init\n    types")),
        "specs/pipelines/main.yaml:29: steps.evaluate.gguf: expected GGUF files of the weights measured here "
        "('student'); found 'gguf', which exports 'init'\n"
        "  fix: evaluate the GGUF export of the same step, so the perplexities compare"),
    "evaluate-an-init-without-data": (
        dict(pipeline=("    model: student\n    gguf: gguf\n", "    model: init\n")),
        "specs/pipelines/main.yaml:26: steps.evaluate.data: expected `data:`, the dataset whose validation split "
        "to measure; found nothing, and 'init' reads no dataset\n"
        "  fix: add `data: DATASET`"),
    "evaluate-seq-len-above-max-positions": (
        dict(pipeline=("    gguf: gguf\n", "    gguf: gguf\n    seq_len: 256\n")),
        "specs/pipelines/main.yaml:30: steps.evaluate.seq_len: expected at most the model's max_positions (128, "
        "model 'tiny'); found 256\n"
        "  fix: lower seq_len to 128 or less, or raise max_positions of model 'tiny' (specs/models/tiny.yaml:8)"),
    "evaluate-max-kld-of-a-type-not-exported": (
        dict(pipeline=("    gguf: gguf\n", "    gguf: gguf\n    max_kld:\n      q8_0: 0.002\n      q4_k_m: 0.05\n")),
        "specs/pipelines/main.yaml:32: steps.evaluate.max_kld.q4_k_m: expected a type among the files of 'gguf' "
        "(q8_0); found 'q4_k_m'\n"
        "  fix: add q4_k_m to `types` of 'gguf', or remove it from `max_kld`"),
    "evaluate-max-kld-without-gguf": (
        dict(pipeline=("    gguf: gguf\n", "    max_kld: {q8_0: 0.002}\n")),
        "specs/pipelines/main.yaml:29: steps.evaluate.max_kld: expected `gguf:`, the export whose files `max_kld` "
        "limits; found `max_kld` and no `gguf`\n"
        "  fix: add `gguf: STEP` (an export with `format: gguf`), or leave `max_kld` out"),
    "evaluate-max-kld-of-zero": (
        dict(pipeline=("    gguf: gguf\n", "    gguf: gguf\n    max_kld: {q8_0: 0}\n")),
        "specs/pipelines/main.yaml:30: steps.evaluate.max_kld.q8_0: expected a number > 0; found 0\n"
        "  fix: use a value > 0"),
    "report-of-an-export": (
        dict(pipeline=("    train: student\n", "    train: hf\n")),
        "specs/pipelines/main.yaml:32: steps.report.train: expected a train step; found 'hf', an export step\n"
        "  fix: name the train step to report on"),
    "report-evaluate-is-a-train-step": (
        dict(pipeline=("    evaluate: evaluate\n", "    evaluate: student\n")),
        "specs/pipelines/main.yaml:33: steps.report.evaluate: expected an evaluate step; found 'student', a train "
        "step\n"
        "  fix: name an evaluate step of the same weights, or leave `evaluate` out"),
    "report-unknown-export": (
        dict(pipeline=("[hf, gguf]", "[hf, guff]")),
        "specs/pipelines/main.yaml:34: steps.report.exports[1]: expected a step of this pipeline (one of "
        "'evaluate', 'gguf', 'hf', 'init', 'student', 'tok'); found 'guff'\n"
        "  fix: did you mean 'gguf'?"),
    "report-export-of-other-weights": (
        dict(pipeline=("    kind: export\n    model: student\n  gguf", "    kind: export\n    model: init\n  gguf")),
        "specs/pipelines/main.yaml:34: steps.report.exports[0]: expected an export step of the weights reported on "
        "('student'); found 'hf', which exports 'init'\n"
        "  fix: list the exports of the train step this report is about"),
    "report-lists-an-export-twice": (  # its files were listed twice
        dict(pipeline=("[hf, gguf]", "[hf, gguf, main.hf]")),
        "specs/pipelines/main.yaml:34: steps.report.exports[2]: expected each export once; found 'main.hf', "
        "listed before\n"
        "  fix: remove the repeated entry"),
    "report-template-missing": (
        dict(pipeline=("template: specs/templates/report.md.jinja", "template: report.md.jinja")),
        "specs/pipelines/main.yaml:35: steps.report.template: expected an existing file or folder (relative to the "
        "project root); found 'report.md.jinja', which does not exist\n"
        "  fix: did you mean 'specs/templates/report.md.jinja'? Paths are relative to the project root"),
    "report-template-includes-nothing": (
        dict(template=("'part.md.jinja'", "'parts.md.jinja'")),
        "specs/pipelines/main.yaml:35: steps.report.template: expected a Jinja template that parses; found "
        "specs/templates/report.md.jinja: it includes, imports or extends 'parts.md.jinja', which is not a file "
        "beside it\n"
        "  fix: fix the template at specs/templates/report.md.jinja"),
    "report-template-unknown-filter": (
        dict(template=("{{ model.name }}", "{{ model.name | shout }}")),
        "specs/pipelines/main.yaml:35: steps.report.template: expected a Jinja template that parses; found "
        "specs/templates/report.md.jinja:1: TemplateAssertionError: No filter named 'shout'.\n"
        "  fix: fix the template at specs/templates/report.md.jinja:1"),
}


@pytest.mark.parametrize("replace, expected", CASES.values(), ids=CASES.keys())
def test_evaluate_and_report_mistakes(make_project, replace, expected):
    assert load_error(make_project(), **replace) == expected


def test_evaluating_gguf_files_without_llama_cpp_is_an_error(make_project, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a))
    message = load_error(make_project(), pipeline=("    types: [q8_0]\n", "    types: [f16]\n"))
    assert message == (
        "specs/pipelines/main.yaml:29: steps.evaluate.gguf: expected llama.cpp to measure GGUF files (the "
        "llama-cpp-python extra); found 'gguf', and llama_cpp is not installed\n"
        '  fix: install the extra: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -r requirements-llama.txt (it '
        "compiles llama.cpp, about 15 minutes on 2 cores), or leave `gguf` out")


def test_a_template_syntax_error_names_its_line_and_builds_nothing(make_project):
    p = make_project()
    write(p, template=("{% include 'part.md.jinja' %}", "{% for x in y %}\n{% include 'part.md.jinja' %}"))
    result = p.doit("list", check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "ingot: 1 problem found; nothing was built\n"
        "specs/pipelines/main.yaml:35: steps.report.template: expected a Jinja template that parses; found "
        "specs/templates/report.md.jinja:3: TemplateSyntaxError: Unexpected end of template. Jinja was looking "
        "for the following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.\n"
        "  fix: fix the template at specs/templates/report.md.jinja:3\n")
    assert not (p.root / "build").exists()


def test_evaluate_on_a_dataset_without_validation_split(make_project):
    p = make_project()
    write(p, pipeline=("    gguf: gguf\n", "    gguf: gguf\n    data: more\n"))
    p.write("specs/datasets/more.yaml", FILES["specs/datasets/more.yaml"] + "split: {validation: 0}\n")
    with pytest.raises(SpecError) as info:
        project.load(p.root)
    assert str(info.value) == (
        "specs/pipelines/main.yaml:30: steps.evaluate.data: expected a dataset with a validation split (the step "
        "measures perplexity on it); found dataset 'more' with `split.validation: 0` (specs/datasets/more.yaml:6)\n"
        "  fix: hold out part of dataset 'more', e.g. `split: {validation: 0.05}`")


def test_a_template_pulled_in_from_outside_the_project_is_refused(make_project, tmp_path):
    p = make_project()
    (tmp_path / "outside.jinja").write_text("{{ 1 }}\n")
    assert p.root.parent == tmp_path
    message = load_error(p, template=("'part.md.jinja'", "'../../../outside.jinja'"))
    assert message == (
        "specs/pipelines/main.yaml:35: steps.report.template: expected templates inside the project; found "
        "'specs/templates/report.md.jinja' pulls in '../../../outside.jinja', which resolves to "
        f"{(tmp_path / 'outside.jinja').resolve()}\n"
        "  fix: copy the files into the project and give the path from its root (a link out of it is refused)")


def test_an_edited_template_is_checked_again(make_project):
    """The check of a template is remembered (a compile asks twice), until one of its files changes."""
    p = make_project()
    write(p)
    graph.plans(project.load(p.root))
    p.edit("specs/templates/part.md.jinja", "{{ train.final_loss }}", "{{ train.final_loss | shout }}")
    with pytest.raises(SpecError) as info:
        project.load(p.root)
    assert str(info.value) == (
        "specs/pipelines/main.yaml:35: steps.report.template: expected a Jinja template that parses; found "
        "specs/templates/part.md.jinja:1: TemplateAssertionError: No filter named 'shout'.\n"
        "  fix: fix the template at specs/templates/part.md.jinja:1")


# ---------------------------------------------------------------- a scored prompt set

QA = "kind: dataset\nname: qa\nsources:\n  - type: files\n    glob: qa/*.jsonl\n    fields: {instruction: q, response: a}\n"
JUDGE = """    prompt_set:
      dataset: qa
      scoring: judge
      judge: {url: 'http://127.0.0.1:8080/v1', model: judge-7b, template: specs/templates/rubric.jinja}
      reference: {url: 'http://127.0.0.1:8081/v1', model: big-70b, key_env: REF_KEY}
"""


def write_scored(p, prompt_set: str = JUDGE, **replace) -> None:
    """FILES with a dataset `qa` of question/answer records, a judge's rubric (which includes a
    file), and `prompt_set` (YAML at the evaluate step's indentation) on the evaluate step."""
    write(p, **replace)
    p.write("qa/qa.jsonl", "".join(json.dumps({"q": f"{i} + {i}?", "a": str(2 * i)}) + "\n" for i in range(5)))
    p.write("specs/datasets/qa.yaml", QA)
    p.write("specs/templates/rubric.jinja", "{{ instruction }}\nA: {{ answer }}\nB: {{ reference }}\n"
                                            "{% include 'scale.jinja' %}\n")
    p.write("specs/templates/scale.jinja", "Answer with JSON.\n")
    p.edit(PIPELINE, "    gguf: gguf\n", "    gguf: gguf\n" + prompt_set)


def scored_error(p, prompt_set: str) -> str:
    write_scored(p, prompt_set)
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    return str(info.value)


def test_a_prompt_set_is_an_input_and_the_judges_rubric_a_source(make_project):
    p = make_project()
    write_scored(p)
    plans = graph.plans(project.load(p.root))
    evaluate = plans["main.evaluate"]
    assert evaluate.inputs == {"dataset": "dataset.qa", "gguf": "main.gguf", "model": "main.student",
                               "tokenizer": "main.tok", "tokens.docs": "main.tok@docs"}
    assert sorted(evaluate.sources) == ["specs/templates/chat.jinja", "specs/templates/rubric.jinja",
                                        "specs/templates/scale.jinja"]
    # the models' names are keyed, where they are served and how is not
    assert evaluate.spec["prompt_set"]["judge"] == {"model": "judge-7b", "max_tokens": 256,
                                                    "template": "specs/templates/rubric.jinja",
                                                    "response_format": "json_object"}
    assert evaluate.spec["prompt_set"]["reference"] == {"model": "big-70b", "max_tokens": 512}
    assert evaluate.summary == ("perplexity and generation speed of 'student' and GGUF files of 'gguf', judge-scored "
                                "on 'qa'")
    before = {t: plan.base for t, plan in plans.items()}

    def changed() -> list[str]:
        after = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
        return [t for t in after if before.get(t) != after[t]]

    p.edit(PIPELINE, "http://127.0.0.1:8080/v1', model", "https://judge.example/v1', concurrency: 16, model")
    assert changed() == []
    p.write("specs/templates/scale.jinja", "Answer with one JSON object.\n")
    assert changed() == ["main.evaluate"]
    before = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    p.edit(PIPELINE, "model: big-70b", "model: big-405b")
    assert changed() == ["main.evaluate"]


def test_a_prompt_set_without_a_judge_reads_no_template(make_project):
    p = make_project()
    write_scored(p, "    prompt_set: {dataset: qa, scoring: number, pattern: '#### (\\S+)', limit: 3}\n")
    evaluate = graph.plans(project.load(p.root))["main.evaluate"]
    assert sorted(evaluate.sources) == ["specs/templates/chat.jinja"] and evaluate.inputs["dataset"] == "dataset.qa"
    assert evaluate.spec["prompt_set"] == {"dataset": "qa", "split": "all", "limit": 3, "scoring": "number",
                                           "pattern": "#### (\\S+)", "timeout": 10, "memory_mb": 1024,
                                           "judge": None, "reference": None}


PROMPT_SET_CASES = {
    "unknown-dataset": (
        "    prompt_set: {dataset: qaa, scoring: exact}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.dataset: expected the name of a dataset (one of "
        "'docs', 'more', 'qa'); found 'qaa'\n"
        "  fix: did you mean 'qa'?"),
    "a-dataset-of-texts": (
        "    prompt_set: {dataset: docs, scoring: exact}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.dataset: expected a dataset of instruction/response "
        "records; found 'docs', a dataset of texts\n"
        "  fix: map its sources' `fields: {instruction: ..., response: ...}`, or name a dataset of "
        "instruction/response records"),
    "judge-without-reference": (
        "    prompt_set:\n      dataset: qa\n      scoring: judge\n"
        "      judge: {url: 'http://127.0.0.1:8080/v1', model: j}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set: expected `reference:` with `scoring: judge`; "
        "found no `reference`\n"
        "  fix: add `reference: {url: http://127.0.0.1:8080/v1, model: NAME}` (an OpenAI-compatible endpoint)"),
    "a-judge-for-exact-scoring": (
        "    prompt_set:\n      dataset: qa\n      scoring: exact\n"
        "      judge: {url: 'http://127.0.0.1:8080/v1', model: j}\n",
        "specs/pipelines/main.yaml:33: steps.evaluate.prompt_set.judge: expected `judge` only with `scoring: judge`; "
        "found `judge` and `scoring: exact`\n"
        "  fix: remove `judge`, or use `scoring: judge`"),
    "a-pattern-for-python": (
        "    prompt_set: {dataset: qa, scoring: python, pattern: '\\d+'}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.pattern: expected `pattern` only with `scoring: "
        "number`; found `pattern` and `scoring: python`\n"
        "  fix: remove `pattern`, or use `scoring: number`"),
    "a-timeout-for-number": (
        "    prompt_set: {dataset: qa, scoring: number, timeout: 5}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.timeout: expected `timeout` only with `scoring: "
        "python`; found `timeout` and `scoring: number`\n"
        "  fix: remove `timeout`, or use `scoring: python`"),
    "a-pattern-that-does-not-compile": (
        "    prompt_set: {dataset: qa, scoring: number, pattern: '#### (\\d+'}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.pattern: expected a Python regular expression; "
        "found '#### (\\\\d+': missing ), unterminated subpattern at position 5\n"
        "  fix: fix the expression (a final number by default needs no `pattern`)"),
    "an-unknown-scoring": (
        "    prompt_set: {dataset: qa, scoring: rouge}\n",
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.scoring: expected one of 'exact', 'number', "
        "'python' or 'judge'; found 'rouge'\n"
        "  fix: did you mean 'judge'?"),
    "a-url-that-is-no-url": (
        "    prompt_set:\n      dataset: qa\n      scoring: judge\n"
        "      judge: {url: '127.0.0.1:8080', model: j}\n"
        "      reference: {url: 'http://127.0.0.1:8080/v1', model: r}\n",
        "specs/pipelines/main.yaml:33: steps.evaluate.prompt_set.judge.url: expected a string matching "
        "^https?://[^\\s/]+(/\\S*)?$; found '127.0.0.1:8080'"),
    "the-rubric-is-missing": (
        JUDGE.replace("specs/templates/rubric.jinja", "rubric.jinja"),
        "specs/pipelines/main.yaml:33: steps.evaluate.prompt_set.judge.template: expected an existing file or folder "
        "(relative to the project root); found 'rubric.jinja', which does not exist\n"
        "  fix: did you mean 'specs/templates/rubric.jinja'? Paths are relative to the project root"),
}


@pytest.mark.parametrize("prompt_set, expected", PROMPT_SET_CASES.values(), ids=PROMPT_SET_CASES.keys())
def test_prompt_set_mistakes(make_project, prompt_set, expected):
    assert scored_error(make_project(), prompt_set) == expected


def test_a_rubric_that_does_not_parse_names_its_line(make_project):
    p = make_project()
    write_scored(p)
    p.write("specs/templates/scale.jinja", "Answer {{ with JSON.\n")
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert str(info.value) == (
        "specs/pipelines/main.yaml:33: steps.evaluate.prompt_set.judge.template: expected a Jinja template that "
        "parses; found specs/templates/scale.jinja:1: TemplateSyntaxError: expected token 'end of print statement', "
        "got 'JSON'\n"
        "  fix: fix the template at specs/templates/scale.jinja:1")


def test_a_validation_split_the_dataset_does_not_have(make_project):
    p = make_project()
    write_scored(p, "    prompt_set: {dataset: qa, scoring: exact, split: validation}\n")
    p.write("specs/datasets/qa.yaml", QA + "split: {validation: 0}\n")
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert str(info.value) == (
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.split: expected a split that dataset 'qa' has "
        "records in; found 'validation', and its `split.validation` is 0\n"
        "  fix: use `split: all`, or give the dataset a validation split")


def test_a_prompt_set_made_from_this_steps_own_failures_is_a_cycle(make_project):
    p = make_project()
    write_scored(p, "    prompt_set: {dataset: fails, scoring: exact}\n")
    p.write("specs/datasets/fails.yaml", "kind: dataset\nname: fails\nsources:\n  - type: failures\n"
                                         "    from: main.evaluate\n")
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert str(info.value) == (
        "specs/pipelines/main.yaml:30: steps.evaluate.prompt_set.dataset: expected a dataset that does not depend on "
        "this step; found 'fails', built from what this step writes\n"
        "  fix: score a dataset made before this step, e.g. the prompt set the failures came from")
