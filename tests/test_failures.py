"""A dataset of an evaluate step's failures (`type: failures`, compiler/sources.py and
targets/dataset.py): the evaluate step is an input of the dataset (its key, doit's order, the
cycle check), each mistake gets its whole message, and the builder turns the failed items of
an items.jsonl into instruction/response records, in the order of the prompt set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import graph, project
from compiler.errors import SpecError
from compiler.inputs import failures
from compiler.specs import DatasetSpec
from conftest import TINY_SPECS, add_qa, ran, write_files
from targets import BuildError, Job, dataset

PIPELINE = "specs/pipelines/main.yaml"
FAILS = "specs/datasets/fails.yaml"
FILES = {
    "specs/datasets/docs.yaml": TINY_SPECS["specs/datasets/docs.yaml"],
    "specs/models/tiny.yaml": TINY_SPECS["specs/models/tiny.yaml"],
    PIPELINE: """
        kind: pipeline
        name: main
        steps:
          tok:
            kind: tokenizer
            dataset: docs
            vocab_size: 400
          init:
            kind: init
            model: tiny
            tokenizer: tok
          eval:
            kind: evaluate
            model: init
            data: qa
            seq_len: 32
            windows: 2
            max_new_tokens: 8
            prompt_set: {dataset: qa, scoring: exact}
          sft:
            kind: train
            init: init
            tokenizer: tok
            data: fails
            objective: sft
            max_steps: 4
            batch_size: 2
            seq_len: 96
          again:
            kind: evaluate
            model: sft
            data: qa
            seq_len: 32
            windows: 2
            max_new_tokens: 8
            prompt_set: {dataset: qa, scoring: exact}
    """,
    FAILS: """
        kind: dataset
        name: fails
        sources:
          - type: failures
            from: main.eval
        split:
          validation: 0.2
    """,
}


def write(p, **replace: tuple[str, str]) -> None:
    """FILES, with (old, new) replaced once in the file named by each keyword (fails, pipeline)."""
    p.write("data/docs.jsonl", "".join(json.dumps({"text": f"document number {i} of the corpus"}) + "\n"
                                       for i in range(30)))
    add_qa(p, 20)
    write_files(p, FILES, {"fails": FAILS, "pipeline": PIPELINE}, **replace)


def load_error(p, **replace) -> str:
    write(p, **replace)
    with pytest.raises(SpecError) as info:
        project.load(p.root)
    return str(info.value)


# ---------------------------------------------------------------- compile time

def test_the_evaluate_step_is_an_input_of_the_dataset(make_project):
    p = make_project()
    write(p)
    loaded = project.load(p.root)
    assert loaded.nodes["dataset.fails"].deps == {failures("main.eval"): "main.eval"}
    plans = graph.plans(loaded)
    assert plans["dataset.fails"].inputs == {"failures.main.eval": "main.eval"}
    assert plans["dataset.fails"].files == ((),)  # no file: the entry reaches the builder as an input
    order = list(plans)
    assert order.index("main.eval") < order.index("dataset.fails") < order.index("main.sft") < order.index("main.again")


CASES = {
    "unknown-pipeline": (
        dict(fails=("from: main.eval", "from: mian.eval")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected `pipeline.step` naming a declared pipeline "
        "(one of 'main'); found 'mian.eval', but no pipeline is named 'mian'\n"
        "  fix: did you mean 'main'?"),
    "unknown-step": (
        dict(fails=("from: main.eval", "from: main.evl")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected a step of pipeline 'main' (one of 'main.again', "
        "'main.eval', 'main.init', 'main.sft', 'main.tok'); found 'main.evl'\n"
        "  fix: did you mean 'main.eval'?"),
    "not-an-evaluate-step": (
        dict(fails=("from: main.eval", "from: main.sft")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected an evaluate step that scores a prompt set; found "
        "'main.sft', a train step\n"
        "  fix: name a step of kind `evaluate` as `pipeline.step`"),
    "a-dataset": (
        dict(fails=("from: main.eval", "from: dataset.qa")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected an evaluate step that scores a prompt set; found "
        "'dataset.qa', a dataset\n"
        "  fix: name a step of kind `evaluate` as `pipeline.step`"),
    "without-a-pipeline": (
        dict(fails=("from: main.eval", "from: eval")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected `pipeline.step`: names of lowercase letters, "
        "digits, '-' and '_'; found 'eval'"),
    "texts-beside-failures": (
        dict(fails=("    from: main.eval\n", "    from: main.eval\n  - type: files\n    glob: data/*.jsonl\n")),
        "specs/datasets/fails.yaml:1: expected every source gives texts, or every one gives instruction/response "
        "records (`fields: {instruction: ..., response: ...}`); this dataset mixes both; found `kind`, `name`, "
        "`sources` and `split`"),
    "evaluate-step-without-a-prompt-set": (
        dict(pipeline=("    prompt_set: {dataset: qa, scoring: exact}\n", "")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected an evaluate step that scores a prompt set "
        "(`prompt_set:`); found 'main.eval', which measures perplexity and speed only (specs/pipelines/main.yaml:12)\n"
        "  fix: add `prompt_set: {dataset: DATASET, scoring: exact}` to step 'main.eval'"),
    "reference-answers-of-exact-scoring": (
        dict(fails=("    from: main.eval\n", "    from: main.eval\n    response: reference\n")),
        "specs/datasets/fails.yaml:6: sources[0].response: expected `expected`, or no `response`: only judge scoring "
        "has reference answers; found 'reference', and 'main.eval' scores by exact (specs/pipelines/main.yaml:12)\n"
        "  fix: write `response: expected`, or leave `response` out"),
    "unknown-verdict": (
        dict(fails=("    from: main.eval\n", "    from: main.eval\n    include: [loss, draw]\n")),
        "specs/datasets/fails.yaml:6: sources[0].include[1]: expected one of 'loss' or 'tie'; found 'draw'"),
    "evaluates-a-model-trained-on-the-failures": (
        dict(fails=("from: main.eval", "from: main.again")),
        "specs/datasets/fails.yaml:5: sources[0].from: expected an evaluate step that does not depend on this "
        "dataset; found the cycle dataset.fails -> main.again -> main.sft -> dataset.fails\n"
        "  fix: evaluate a model that is not trained on dataset 'fails' (the one before the targeted training), "
        "and train on the failures after it"),
    "scores-its-own-failures": (  # compiler/evaluation.py finds this one, as it resolves the prompt set
        dict(pipeline=("prompt_set: {dataset: qa, scoring: exact}", "prompt_set: {dataset: fails, scoring: exact}")),
        "specs/pipelines/main.yaml:19: steps.eval.prompt_set.dataset: expected a dataset that does not depend on "
        "this step; found 'fails', built from what this step writes\n"
        "  fix: score a dataset made before this step, e.g. the prompt set the failures came from"),
}


@pytest.mark.parametrize("case", CASES)
def test_failures_source_errors(make_project, case):
    replace, message = CASES[case]
    assert load_error(make_project(), **replace) == message


def test_a_cycle_through_a_curriculum_is_found_once_the_train_step_is_resolved(make_project):
    """A curriculum's datasets become inputs of their train step only as it is resolved: the
    cycle is found then, and still named on the failures source."""
    message = load_error(make_project(), fails=("from: main.eval", "from: main.again"), pipeline=(
        "    data: fails\n", "    stages:\n      - {name: one, datasets: {fails: 1}, steps: 4}\n"))
    assert message == (
        "specs/datasets/fails.yaml:5: sources[0].from: expected an evaluate step that does not depend on this "
        "dataset; found the cycle dataset.fails -> main.again -> main.sft -> main.tok@fails -> dataset.fails\n"
        "  fix: evaluate a model that is not trained on dataset 'fails' (the one before the targeted training), "
        "and train on the failures after it")


# ---------------------------------------------------------------- the builder, on an items.jsonl

def item(index: int, scoring: str = "judge", passed: bool | None = None, verdict: str | None = None, *,
         expected: str | None = "expected answer", reference: str | None = "reference answer") -> dict:
    """One evaluated item as the evaluate builder writes it."""
    return {"index": index, "instruction": f"question {index}", "expected": None if expected is None else
            f"{expected} {index}", "answer": f"the model's answer {index}", "reference": None if reference is None
            else f"{reference} {index}", "scoring": scoring, "passed": passed, "verdict": verdict, "detail": None}


def entry(tmp_path: Path, items: list, name: str = "eval") -> Path:
    """An evaluate entry folder holding items.jsonl (a dict is written as JSON, a str as is)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "items.jsonl").write_text("".join((json.dumps(i) if isinstance(i, dict) else i) + "\n" for i in items),
                                        encoding="utf-8")
    return folder


def build(tmp_path: Path, folder: Path, fields: dict | None = None, **source) -> tuple[dict, list[dict]]:
    """Build dataset `fails` (more `fields` of it, and of its source) from the evaluate entry
    `folder` (main.eval); its stats and records."""
    spec = DatasetSpec.model_validate({"kind": "dataset", "name": "fails", "split": {"validation": 0},
                                       "sources": [{"type": "failures", "from": "main.eval", **source}],
                                       **(fields or {})})
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    out.mkdir()
    stats = dataset.build(Job("dataset.fails", spec, out, files=[[]], root=tmp_path, work=tmp_path / "work",
                              inputs={failures("main.eval"): folder}))
    return stats, [json.loads(line) for line in (out / "train-00000.jsonl").read_text().splitlines()]


JUDGED = [item(3, verdict="win"), item(0, verdict="tie"), item(2, verdict="loss"), item(1, verdict="loss"),
          item(4, verdict="tie")]


def test_losses_and_ties_become_records_in_index_order(tmp_path):
    stats, records = build(tmp_path, entry(tmp_path, JUDGED))
    assert [(r["instruction"], r["response"], r["source"], r["meta"]) for r in records] == [
        (f"question {i}", f"reference answer {i}", f"main.eval:{i}",
         {"source": "main.eval", "index": i, "scoring": "judge", "passed": None, "verdict": verdict})
        for i, verdict in ((0, "tie"), (1, "loss"), (2, "loss"), (4, "tie"))]
    assert stats["by_source"] == [{"source": 0, "type": "failures", "documents": 4, "kept": 4, "items": 5}]
    assert stats["by_origin"] == {"main.eval": 4}


def test_include_leaves_ties_out(tmp_path):
    _, records = build(tmp_path, entry(tmp_path, JUDGED), include=["loss"])
    assert [r["meta"]["index"] for r in records] == [1, 2]


@pytest.mark.parametrize("scoring", ["exact", "number", "python"])
def test_failed_items_take_the_expected_answer(tmp_path, scoring):
    items = [item(0, scoring, True, reference=None), item(1, scoring, False, reference=None),
             item(2, scoring, True, reference=None), item(3, scoring, False, reference=None)]
    _, records = build(tmp_path, entry(tmp_path, items), include=["tie"])  # verdicts: judge scoring only
    assert [(r["instruction"], r["response"], r["meta"]["passed"]) for r in records] == [
        ("question 1", "expected answer 1", False), ("question 3", "expected answer 3", False)]


def test_response_picks_the_reference_or_the_expected_answer(tmp_path):
    items = [item(0, verdict="loss"), item(1, verdict="loss", reference=None)]
    _, default = build(tmp_path, entry(tmp_path, items, "a"))
    assert [r["response"] for r in default] == ["reference answer 0", "expected answer 1"]
    _, expected = build(tmp_path, entry(tmp_path, items, "b"), response="expected")
    assert [r["response"] for r in expected] == ["expected answer 0", "expected answer 1"]
    with pytest.raises(BuildError) as info:
        build(tmp_path, entry(tmp_path, items, "c"), response="reference")
    assert str(info.value) == (
        f"{tmp_path}/c/items.jsonl:2: expected a reference answer to train on for item 1; found null (only judge "
        "scoring has reference answers: set `response: expected`, or leave it out)")


def test_curation_applies_to_the_failures(tmp_path):
    """The same question lost twice is one record (exact dedup); filters see instruction and response."""
    items = [item(0, verdict="loss"), {**item(1, verdict="loss"), "instruction": "question 0",
                                       "reference": "reference answer 0"}, item(2, verdict="tie")]
    stats, records = build(tmp_path, entry(tmp_path, items), {"filters": {"exclude": ["question 2"]}})
    assert [r["meta"]["index"] for r in records] == [0]
    assert (stats["documents_in"], stats["documents_out"], stats["removed"]["exact_duplicate"],
            stats["removed"]["exclude"]) == (3, 1, 1, 1)


@pytest.mark.parametrize("items, what", [
    (JUDGED[:1], "losses or ties among its 1 items"),
    ([item(0, "exact", True), item(1, "exact", True)], "failed items among its 2 items"),
    ([], "failed items among its 0 items"),
])
def test_no_failures_is_an_error_that_says_so(tmp_path, items, what):
    with pytest.raises(BuildError) as info:
        build(tmp_path, entry(tmp_path, items))
    assert str(info.value) == (
        f"evaluate step main.eval had no {what}: the dataset would have no records (evaluate a weaker model, or a "
        "harder prompt set, or add another source)")


def test_no_ties_when_only_losses_count(tmp_path):
    with pytest.raises(BuildError) as info:
        build(tmp_path, entry(tmp_path, [item(0, verdict="tie"), item(1, verdict="win")]), include=["loss"])
    assert str(info.value).startswith("evaluate step main.eval had no losses among its 2 items: ")


FIX = ("targets/evaluate.py wrote what this reader does not know, or the entry was edited by hand: `doit verify "
       "--repair` moves the entry aside, so the next `doit` rebuilds it")
BAD_ITEMS = {
    "invalid-json": ('{"index": 0,', "items.jsonl:2: expected one JSON object per line; found invalid JSON "
                                     "(Expecting property name enclosed in double quotes)"),
    "not-an-object": ("[1, 2]", "items.jsonl:2: expected one JSON object per line; found an array"),
    "missing-field": ({k: v for k, v in item(1).items() if k != "answer"},
                      "items.jsonl:2: expected a string in field 'answer'; found no such field"),
    "unknown-field": ({**item(1), "score": 1}, "items.jsonl:2: expected the fields of an evaluated item (index, "
                      "instruction, expected, answer, reference, scoring, passed, verdict, detail); found the field "
                      "'score' too"),
    "index-a-boolean": ({**item(1), "index": True}, "items.jsonl:2: expected an integer in field 'index'; found a "
                                                    "boolean"),
    "unknown-scoring": ({**item(1), "scoring": "fuzzy"}, "items.jsonl:2: expected one of exact, number, python, judge "
                                                         "in field 'scoring'; found 'fuzzy'"),
    "unknown-verdict": ({**item(1), "verdict": "draw"}, "items.jsonl:2: expected one of win, loss, tie, or null in "
                                                        "field 'verdict'; found 'draw'"),
    "passed-a-string": ({**item(1), "passed": "no"}, "items.jsonl:2: expected a boolean or null in field 'passed'; "
                                                     "found 'no'"),
    "index-twice": (item(0, verdict="tie"), "items.jsonl:2: expected each item's index once; found index 0, also on "
                                            "line 1"),
}


@pytest.mark.parametrize("case", BAD_ITEMS)
def test_a_malformed_items_file_names_file_and_line(tmp_path, case):
    bad, message = BAD_ITEMS[case]
    with pytest.raises(BuildError) as info:
        build(tmp_path, entry(tmp_path, [item(0, verdict="loss"), bad]), {"bad_records": "skip"})
    assert str(info.value) == f"{tmp_path}/eval/{message} ({FIX})"


def test_a_missing_items_file_names_it(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    with pytest.raises(BuildError) as info:
        build(tmp_path, folder)
    assert str(info.value) == (f"{folder}/items.jsonl: expected the per-item results of evaluate step main.eval; "
                               f"found no such file ({FIX})")


# ---------------------------------------------------------------- through doit

def test_doit_list_shows_the_dataset_pending_on_its_evaluate_step(make_project):
    p = make_project()
    write(p)
    listed = [line for line in p.doit("list").stdout.splitlines() if line.startswith("dataset.fails")]
    assert listed == ["dataset.fails    dataset: documents from failures of main.eval; exact dedup, 20% validation "
                      "-> build/dataset/fails (key pending on main.eval)"]


def shards(folder: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(folder.glob("*-*.jsonl")) for line in shard.read_text().splitlines()]


@pytest.mark.slow  # builds a tokenizer, a model and its evaluation, three times doit
def test_doit_builds_the_evaluate_step_first_and_the_dataset_follows_what_it_wrote(make_project):
    """An untrained model fails every prompt by exact match: each becomes a record with the
    prompt set's response; scoring fewer prompts re-extracts, and nothing else runs again."""
    from compiler import entries

    p = make_project()
    write(p, pipeline=("scoring: exact}", "scoring: exact, limit: 6}"))  # main.eval's, not main.again's
    first = ran(p.doit("dataset.fails"))
    assert first.index("main.eval") < first.index("dataset.fails") and "main.sft" not in first
    items = [json.loads(line) for line in (p.root / "build/main/eval/items.jsonl").read_text().splitlines()]
    assert len(items) == 6 and all(i["passed"] is False for i in items)
    records = sorted(shards(p.root / "build/dataset/fails"), key=lambda r: r["meta"]["index"])
    assert [(r["instruction"], r["response"], r["source"]) for r in records] == [
        (i["instruction"], i["expected"], f"main.eval:{i['index']}") for i in items]
    stats = json.loads(p.read("build/dataset/fails/stats.json"))
    assert stats["by_source"] == [{"source": 0, "type": "failures", "documents": 6, "kept": 6, "items": 6}]
    made = entries.load(p.root / "build/dataset/fails")
    assert made.inputs["failures.main.eval"].key == entries.load(p.root / "build/main/eval").key

    assert ran(p.doit("dataset.fails")) == []
    p.edit(PIPELINE, "limit: 6", "limit: 4")
    assert ran(p.doit("dataset.fails")) == ["main.eval", "dataset.fails"]
    assert len(shards(p.root / "build/dataset/fails")) == 4
    assert entries.load(p.root / "build/dataset/fails").key != made.key
