"""Train and export steps at compile time: the mistakes that would otherwise surface hours
into a run (vocabularies, sequence lengths, teachers, curricula, lengths) each get one
whole, exact message; and the graph the compiler makes of a valid distillation pipeline
(shared token data, inherited models, keys that change only downstream of an edit).

The central cases go through the real `python -m doit list`; the rest are loaded
in-process, where a case costs milliseconds.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import QA_SPEC, REPO

from compiler import graph, project
from compiler.errors import SpecError

DATASET, MODEL, WIDE, PIPELINE = ("specs/datasets/docs.yaml", "specs/models/tiny.yaml", "specs/models/wide.yaml",
                                  "specs/pipelines/main.yaml")
TEMPLATE = "specs/templates/chat.jinja"

# A valid distillation project; each case edits one or two files. Line numbers in the
# expected messages count from these texts, so keep them as they are.
VALID = {
    DATASET: """
        kind: dataset
        name: docs
        sources:
          - type: files
            glob: data/*.jsonl
    """,
    MODEL: """
        kind: model
        name: tiny
        hidden_size: 32
        intermediate_size: 64
        layers: 2
        heads: 4
        vocab_size: 512
        max_positions: 128
    """,
    WIDE: """
        kind: model
        name: wide
        hidden_size: 64
        intermediate_size: 128
        layers: 2
        heads: 4
        vocab_size: 600
    """,
    PIPELINE: """
        kind: pipeline
        name: main
        steps:
          tok:
            kind: tokenizer
            dataset: docs
            vocab_size: 400
          teacher:
            kind: train
            model: tiny
            tokenizer: tok
            data: docs
            max_steps: 10
          student:
            kind: train
            model: tiny
            tokenizer: tok
            data: docs
            seq_len: 64
            objective: distill
            distill:
              teachers:
                big: {step: teacher}
              phases:
                - {name: one, steps: 5, teachers: {big: 1.0}}
          export:
            kind: export
            model: student
    """,
}


def valid(rel: str) -> str:
    return textwrap.dedent(VALID[rel]).lstrip("\n")


def edit(rel: str, *pairs: str) -> dict[str, str]:
    """VALID[rel] with each (old, new) pair replaced once; every `old` must be there."""
    text = valid(rel)
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert old in text, f"{old!r} not in {rel}"
        text = text.replace(old, new, 1)
    return {rel: text}


def student(*pairs: str) -> dict[str, str]:
    """The pipeline with edits inside the student step only (from line 14 on)."""
    head, _, rest = valid(PIPELINE).partition("  student:\n")
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert old in rest, f"{old!r} not in the student step"
        rest = rest.replace(old, new, 1)
    return {PIPELINE: head + "  student:\n" + rest}


def write(p, files: dict[str, str], extra: dict[str, str] | None = None) -> None:
    """VALID with `files` laid over it, `extra` files beside it, and the data and template it reads."""
    p.write("data/docs.jsonl", "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    p.write(TEMPLATE, (REPO / TEMPLATE).read_text(encoding="utf-8"))
    for rel, text in {**VALID, **files, **(extra or {})}.items():
        p.write(rel, text)


def stderr(problem: str) -> str:
    return f"ingot: 1 problem found; nothing was built\n{problem}\n"


# a public teacher's config.json: the 151K-vs-32K vocabulary mismatch of DESIGN.md
QWEN_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936}

# ---------------------------------------------------------------- through `doit list`

# (files replacing those of VALID, files to add, the whole stderr)
CASES = {
    "teacher-step-vocab-mismatch": (edit(PIPELINE, "model: tiny", "model: wide"), {}, stderr(
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big: expected a teacher with the student's "
        "vocabulary (512 tokens, model 'tiny'): `align: same` compares their distributions id by id; found teacher "
        "'big' with a vocabulary of 600 tokens (model 'wide')\n"
        "  fix: give both models the same vocab_size, or set `align: map` (the teacher's predictions carried onto "
        "the student's ids by token text)")),
    "teacher-path-vocab-mismatch": (
        {**student("big: {step: teacher}", "qwen: {path: teachers/qwen}", "{big: 1.0}", "{qwen: 1.0}"),
         **edit(MODEL, "vocab_size: 512", "vocab_size: 32000")},
        {"teachers/qwen/config.json": json.dumps(QWEN_CONFIG)}, stderr(
            "specs/pipelines/main.yaml:23: steps.student.distill.teachers.qwen: expected a teacher with the "
            "student's vocabulary (32,000 tokens, model 'tiny'): `align: same` compares their distributions id by "
            "id; found teacher 'qwen' with a vocabulary of 151,936 tokens (teachers/qwen/config.json)\n"
            "  fix: distill from a teacher that shares the student's tokenizer and vocabulary, or declare the folder "
            "as a `pretrained` step (`path: teachers/qwen`), teach with `step:` and add `align: uld` or "
            "`align: map`")),
    "seq-len-above-max-positions": (student("seq_len: 64", "seq_len: 256"), {}, stderr(
        "specs/pipelines/main.yaml:19: steps.student.seq_len: expected at most the model's max_positions "
        "(128, model 'tiny'); found 256\n"
        "  fix: lower seq_len to 128 or less, or raise max_positions of model 'tiny' (specs/models/tiny.yaml:8)")),
    "unknown-teacher-in-phase": (student("{big: 1.0}", "{bgi: 1.0}"), {}, stderr(
        "specs/pipelines/main.yaml:25: steps.student.distill.phases[0].teachers.bgi: expected a teacher declared "
        "under distill.teachers (one of 'big'); found 'bgi'\n"
        "  fix: did you mean 'big'?")),
    "stage-unknown-dataset": (student("data: docs\n", "stages:\n      - {name: base, steps: 5, datasets: {doc: 1.0}}\n"),
                              {}, stderr(
        "specs/pipelines/main.yaml:19: steps.student.stages[0].datasets.doc: expected the name of a dataset "
        "(one of 'docs'); found 'doc' in stage 'base'\n"
        "  fix: did you mean 'docs'?")),
    "grad-accum-zero": (student("seq_len: 64", "seq_len: 64\n    grad_accum: 0"), {}, stderr(
        "specs/pipelines/main.yaml:20: steps.student.grad_accum: expected a number ≥ 1; found 0\n"
        "  fix: use a value ≥ 1")),
}


@pytest.mark.parametrize("files, extra, expected", CASES.values(), ids=CASES.keys())
def test_bad_train_step_is_refused_and_build_untouched(make_project, files, extra, expected):
    p = make_project()
    write(p, files, extra)
    p.write("build/store/0123abcd/manifest.json", "{}\n")  # an earlier build's entry, which must survive
    before = p.build_files()
    result = p.doit("list", check=False)
    assert result.stderr == expected
    assert (result.returncode, result.stdout) == (2, "")
    assert p.build_files() == before


# ---------------------------------------------------------------- in-process: the rest

def load_error(p, files: dict[str, str], extra: dict[str, str]) -> str:
    write(p, files, extra)
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert not (p.root / "build").exists()
    return str(info.value)


TOK2 = "  tok2:\n    kind: tokenizer\n    dataset: docs\n    vocab_size: 300\n"


def other_tokenizer(teacher: str = "{step: teacher}") -> dict[str, str]:
    """VALID with the teacher trained with tok2 (lines 4-7, before the others), taught as `teacher`."""
    text = valid(PIPELINE).replace("steps:\n", "steps:\n" + TOK2, 1).replace("tokenizer: tok\n", "tokenizer: tok2\n", 1)
    return {PIPELINE: text.replace("{step: teacher}", teacher, 1)}


OTHER_TOKENIZER = other_tokenizer()
QA_LINE = json.dumps({"instruction": "Explain lists.", "response": "A list holds items in order."}) + "\n"

IN_PROCESS = {
    "stage-seq-len-above-max-positions": (
        student("data: docs\n", "stages:\n      - {name: base, steps: 5, datasets: {docs: 1.0}, seq_len: 512}\n"), {},
        "specs/pipelines/main.yaml:19: steps.student.stages[0].seq_len: expected at most the model's max_positions "
        "(128, model 'tiny'); found 512\n"
        "  fix: lower seq_len to 128 or less, or raise max_positions of model 'tiny' (specs/models/tiny.yaml:8)"),
    "teacher-step-does-not-exist": (
        student("{step: teacher}", "{step: teachr}"), {},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.step: expected an init or train step "
        "(one of 'teacher'); found 'teachr'\n"
        "  fix: did you mean 'teacher'?"),
    "teacher-with-another-tokenizer": (  # tok2 comes first (lines 4-7); the teacher is trained with it
        OTHER_TOKENIZER, {},
        "specs/pipelines/main.yaml:27: steps.student.distill.teachers.big: expected an `align:` for a teacher whose "
        "tokenizer is not the student's (the student reads 'main.tok', 400 tokens); found teacher 'big' trained with "
        "'main.tok2', 300 tokens, and no `align:`\n"
        "  fix: add `align: uld` (Universal Logit Distillation: the sorted probabilities of both, compared over "
        "spans of the same text, whatever the vocabularies) or `align: map` (the teacher's top-k carried onto the "
        "student's ids of the same token texts), or distill from a teacher trained with 'main.tok'"),
    "teacher-with-another-tokenizer-aligned-same": (
        other_tokenizer("{step: teacher, align: same}"), {},
        "specs/pipelines/main.yaml:27: steps.student.distill.teachers.big.align: expected `align: uld` or "
        "`align: map` for a teacher whose tokenizer is not the student's (the student reads 'main.tok', 400 tokens); "
        "found `align: same` with teacher 'big' trained with 'main.tok2', 300 tokens, whose ids are other tokens\n"
        "  fix: set `align: uld` or `align: map`, or distill from a teacher trained with 'main.tok'"),
    "folder-teacher-aligned": (
        student("{step: teacher}", "{path: teachers/qwen, align: uld}"), {"teachers/qwen/config.json": "{}"},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.align: expected `align: same` (or none) "
        "for a teacher given by `path:`, which runs live beside the student, id by id; found `align: uld`\n"
        "  fix: declare the model as a step (`kind: pretrained`, `path: teachers/qwen`) and teach with `step:` (a "
        "step teacher's outputs are aligned and stored once), or remove `align:`"),
    "hub-teacher-aligned": (
        student("{step: teacher}", "{hub: org/model, align: map}"), {},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.align: expected `align: same` (or none) "
        "for a teacher given by `hub:`, which runs live beside the student, id by id; found `align: map`\n"
        "  fix: declare the model as a step (`kind: pretrained`, `hub: org/model`) and teach with `step:` (a "
        "step teacher's outputs are aligned and stored once), or remove `align:`"),
    "unknown-align": (
        student("{step: teacher}", "{step: teacher, align: ULD}"), {},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.align: expected one of 'same', 'uld' or "
        "'map'; found 'ULD'\n"
        "  fix: did you mean 'uld'?"),
    "top-k-zero": (
        student("teachers:\n        big", "top_k: 0\n      teachers:\n        big"), {},
        "specs/pipelines/main.yaml:22: steps.student.distill.top_k: expected a whole number from 1 to 4,194,304, or "
        "`all` (the whole distribution); found 0"),
    "top-k-other-word": (
        student("teachers:\n        big", "top_k: every\n      teachers:\n        big"), {},
        "specs/pipelines/main.yaml:22: steps.student.distill.top_k: expected a whole number from 1 to 4,194,304, or "
        "`all` (the whole distribution); found 'every'"),
    "model-and-init": (
        student("model: tiny", "model: tiny\n    init: teacher"), {},
        "specs/pipelines/main.yaml:16: steps.student.model: expected exactly one of `model` (a fresh start) or "
        "`init` (a step's weights); found both\n"
        "  fix: keep one of them"),
    "neither-model-nor-init": (
        student("    model: tiny\n", ""), {},
        "specs/pipelines/main.yaml:14: steps.student.model: expected exactly one of `model` (a fresh start) or "
        "`init` (a step's weights); found neither\n"
        "  fix: add `model: MODEL` or `init: STEP`"),
    "data-and-stages": (
        student("data: docs\n", "data: docs\n    stages:\n      - {name: base, steps: 5, datasets: {docs: 1.0}}\n"), {},
        "specs/pipelines/main.yaml:18: steps.student.data: expected exactly one of `data` (one dataset) or "
        "`stages` (a curriculum); found both\n"
        "  fix: keep one of them"),
    "neither-data-nor-stages": (
        student("    data: docs\n", ""), {},
        "specs/pipelines/main.yaml:14: steps.student.data: expected exactly one of `data` (one dataset) or "
        "`stages` (a curriculum); found neither\n"
        "  fix: add `data: DATASET` or `stages:`"),
    "no-length": (
        edit(PIPELINE, "    max_steps: 10\n", ""), {},
        "specs/pipelines/main.yaml:8: steps.teacher.max_steps: expected the length of training: `max_steps`, "
        "`epochs`, or the steps of stages or phases; found none of them\n"
        "  fix: add `max_steps: N` or `epochs: N`"),
    "epochs-and-steps": (
        edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    epochs: 2\n"), {},
        "specs/pipelines/main.yaml:14: steps.teacher.epochs: expected the length of training given once; "
        "found epochs 2 and max_steps 10\n"
        "  fix: keep `epochs`, or the steps, not both"),
    "lengths-disagree": (
        student("seq_len: 64", "seq_len: 64\n    max_steps: 7"), {},
        "specs/pipelines/main.yaml:20: steps.student.max_steps: expected one length of training from every place "
        "that gives one; found max_steps 7, distill.phases 5\n"
        "  fix: make them agree, or leave max_steps out"),
    "distill-objective-without-distill": (
        student("    distill:\n      teachers:\n        big: {step: teacher}\n      phases:\n"
                "        - {name: one, steps: 5, teachers: {big: 1.0}}\n", "    max_steps: 5\n"), {},
        "specs/pipelines/main.yaml:14: steps.student.distill: expected a `distill:` section (teachers, temperature, "
        "alpha, phases); found nothing\n"
        "  fix: add `distill:`, or use another objective"),
    "distill-with-objective-pretrain": (
        student("objective: distill", "objective: pretrain"), {},
        "specs/pipelines/main.yaml:20: steps.student.objective: expected `distill`, since the step has a `distill:` "
        "section; found 'pretrain'\n"
        "  fix: set `objective: distill`, or remove `distill:`"),
    "teacher-with-step-and-path": (  # the validator of Teacher, through pydantic
        student("{step: teacher}", "{step: teacher, path: teachers/qwen}"), {},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big: expected exactly one of `step`, `path` "
        "or `hub`; found `step` and `path`"),
    "teacher-path-escapes-project": (
        student("{step: teacher}", "{path: ../qwen}"), {},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.path: expected a path relative to the "
        "project root that stays inside it; found '../qwen', a path that leaves the project through '..'\n"
        "  fix: copy the files into the project and give the path from its root (a link out of it is refused)"),
    "teacher-folder-without-config": (
        student("{step: teacher}", "{path: teachers/qwen}"), {"teachers/qwen/model.safetensors": "weights\n"},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.path: expected a Hugging Face model "
        "folder with a config.json giving vocab_size; found 'teachers/qwen', which has no config.json\n"
        "  fix: point `path:` at the folder that holds config.json and the weights"),
    "teacher-is-the-student": (
        student("{step: teacher}", "{step: student}"), {},
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.step: expected another step; "
        "found 'student', the step itself\n"
        "  fix: a model cannot teach itself"),
    "teachers-in-a-cycle": (  # the teacher now distills from the student (4 lines: the student starts on 17)
        edit(PIPELINE, "    max_steps: 10\n", "    objective: distill\n    distill:\n"
             "      teachers: {s: {step: student}}\n      phases: [{steps: 10, teachers: {s: 1.0}}]\n"), {},
        "specs/pipelines/main.yaml:26: steps.student.distill.teachers.big.step: expected a step that does not "
        "depend on itself; found the cycle main.teacher -> main.student -> main.teacher\n"
        "  fix: one of these steps must take its input from elsewhere"),
    "export-of-a-tokenizer": (
        edit(PIPELINE, "model: student", "model: tok"), {},
        "specs/pipelines/main.yaml:28: steps.export.model: expected an init, train or pretrained step (a step that "
        "makes model weights); found 'tok', a tokenizer step\n"
        "  fix: name a step of kind `init`, `train` or `pretrained`"),
    "export-chat-template-missing": (
        edit(PIPELINE, "model: student", "model: student\n    chat_template: chat.jinja"), {},
        "specs/pipelines/main.yaml:29: steps.export.chat_template: expected an existing file or folder (relative "
        "to the project root); found 'chat.jinja', which does not exist\n"
        "  fix: did you mean 'specs/templates/chat.jinja'? Paths are relative to the project root"),
    "hf-export-with-types": (
        edit(PIPELINE, "model: student", "model: student\n    types: [q8_0]"), {},
        "specs/pipelines/main.yaml:29: steps.export.types: expected no `types` for format 'hf' (a Hugging Face "
        "folder keeps the weights as they are); found types: [\"q8_0\"]\n"
        "  fix: set `format: gguf` to write GGUF files, or remove `types`"),
    "gguf-type-twice": (
        edit(PIPELINE, "model: student", "model: student\n    format: gguf\n    types: [q8_0, f16, q8_0]"), {},
        "specs/pipelines/main.yaml:30: steps.export.types[2]: expected each type once; found 'q8_0' a second time\n"
        "  fix: remove the repeated entry"),
    "gguf-unknown-type": (
        edit(PIPELINE, "model: student", "model: student\n    format: gguf\n    types: [q4_k]"), {},
        "specs/pipelines/main.yaml:30: steps.export.types[0]: expected one of 'f32', 'f16', 'bf16', 'q8_0', "
        "'q5_1', 'q5_0', 'q4_1', 'q4_0', 'q6_k', 'q5_k_m', 'q4_k_m', 'q3_k_m' or 'q2_k'; found 'q4_k'\n"
        "  fix: did you mean 'q4_k_m'?"),
    # the tokenizer builder reads each record's `text`: it failed at build time on instruction/response records
    "tokenizer-on-instruction-response-dataset": (
        edit(PIPELINE, "dataset: docs", "dataset: qa"), {"specs/datasets/qa.yaml": QA_SPEC, "qa/qa.jsonl": QA_LINE},
        "specs/pipelines/main.yaml:6: steps.tok.dataset: expected a dataset of texts (tokenizer step 'main.tok' "
        "learns its vocabulary from the `text` of each record); found dataset 'qa', whose records are "
        "instruction/response pairs (specs/datasets/qa.yaml:6)\n"
        "  fix: train the tokenizer on a dataset of texts, such as the corpus the model is pretrained on; train "
        "steps can then read the instruction/response dataset with it"),
    "init-made-for-another-tokenizer": (
        {PIPELINE: valid(PIPELINE).replace("kind: train\n    model: tiny", "kind: train\n    init: start", 1)
         + "  start:\n    kind: init\n    model: tiny\n    tokenizer: tok2\n" + TOK2}, {},
        "specs/pipelines/main.yaml:10: steps.teacher.init: expected weights made for this step's tokenizer "
        "('main.tok'); found 'start', whose weights were made for tokenizer 'main.tok2'\n"
        "  fix: set `tokenizer: main.tok2` here, or start from weights made for 'main.tok'"),
    # the validation loss needs a validation split: the train builder stopped on an empty one
    "train-on-a-dataset-without-validation": (
        {DATASET: valid(DATASET) + "split:\n  validation: 0\n"}, {},
        "specs/pipelines/main.yaml:12: steps.teacher.data: expected a dataset with a validation split (the step "
        "measures validation loss on it every eval.every steps); found dataset 'docs' with `split.validation: 0` "
        "(specs/datasets/docs.yaml:7)\n"
        "  fix: hold out part of dataset 'docs', e.g. `split: {validation: 0.05}`"),
    "stage-mixture-weight-zero": (  # numpy's choice() refused the weights at build time
        student("data: docs\n", "stages:\n      - {name: base, steps: 5, datasets: {docs: 0}}\n"), {},
        "specs/pipelines/main.yaml:19: steps.student.stages[0].datasets.docs: expected a number > 0; found 0\n"
        "  fix: use a value > 0"),
    "adam-beta-of-one": (  # torch's AdamW refused it at build time
        student("seq_len: 64", "seq_len: 64\n    optimizer: {betas: [0.9, 1.0]}"), {},
        "specs/pipelines/main.yaml:20: steps.student.optimizer.betas[1]: expected a number < 1; found 1.0\n"
        "  fix: use a value < 1"),
    # the builder loads each phase's teachers and no other: this one's step would be trained for nothing
    "teacher-no-phase-names": (
        student("big: {step: teacher}", "big: {step: teacher}\n        spare: {step: teacher}"), {},
        "specs/pipelines/main.yaml:24: steps.student.distill.teachers.spare: expected a teacher that some phase "
        "names; found teacher 'spare', which no phase names\n"
        "  fix: add 'spare' to the teachers of a phase, or remove it: as written, its weights would be made and "
        "never read"),
    # metrics.jsonl and the report tell phases apart by name: two of one name were merged into one
    "phase-names-repeat": (
        student("- {name: one, steps: 5, teachers: {big: 1.0}}",
                "- {steps: 2, teachers: {big: 1.0}}\n        - {name: phase 1, steps: 3, teachers: {big: 1.0}}"), {},
        "specs/pipelines/main.yaml:26: steps.student.distill.phases[1].name: expected a phase name no other phase "
        "has (metrics and the report tell phases apart by name); found 'phase 1', the name of phase 1 too\n"
        "  fix: rename one of them"),
    "stage-names-repeat": (
        student("data: docs\n", "stages:\n      - {name: base, steps: 2, datasets: {docs: 1.0}}\n"
                "      - {name: base, steps: 3, datasets: {docs: 1.0}}\n", "steps: 5, teachers", "steps: 5, teachers"),
        {},
        "specs/pipelines/main.yaml:20: steps.student.stages[1].name: expected a stage name no other stage has "
        "(metrics and the report tell stages apart by name); found 'base', the name of stage 1 too\n"
        "  fix: rename one of them"),
    # the export builder rendered the chat template only after training: a syntax error is found now
    "chat-template-does-not-parse": (
        edit(PIPELINE, "model: student", "model: student\n    chat_template: specs/templates/bad.jinja"),
        {"specs/templates/bad.jinja": "{% for m in messages %}\n{{ m.content }}\n"},
        "specs/pipelines/main.yaml:29: steps.export.chat_template: expected a Jinja chat template that parses; "
        "found specs/templates/bad.jinja:2: TemplateSyntaxError: Unexpected end of template. Jinja was looking for "
        "the following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.\n"
        "  fix: fix the template at specs/templates/bad.jinja:2"),
    "steps-beyond-reason": (
        edit(PIPELINE, "max_steps: 10", "max_steps: 10000000000000"), {},
        "specs/pipelines/main.yaml:13: steps.teacher.max_steps: expected a number ≤ 1,000,000,000; found "
        "10000000000000\n"
        "  fix: use a value ≤ 1,000,000,000"),
}


@pytest.mark.parametrize("files, extra, expected", IN_PROCESS.values(), ids=IN_PROCESS.keys())
def test_train_and_export_mistakes_in_process(make_project, files, extra, expected):
    assert load_error(make_project(), files, extra) == expected


# ---------------------------------------------------------------- the graph of a valid pipeline

def test_valid_distillation_pipeline_compiles_with_one_shared_tokens_step(make_project):
    p = make_project()
    write(p, {})
    result = p.doit("list")
    # teacher and student both read docs with tok: one `main.tok@docs`, built once for both; the
    # teacher's top-64 at T 2 over it, in windows of the student's 64, is a step of its own
    pad = " " * 19
    assert [line for line in result.stdout.splitlines() if line.startswith(("dataset.", "main."))] == [
        f"dataset.docs    {pad}dataset: documents from data/*.jsonl; exact dedup, 5% validation -> build/dataset/docs",
        f"main.export     {pad}export: Hugging Face folder of 'student' -> build/main/export (key pending on "
        "main.student, main.tok)",
        f"main.student    {pad}train: distill of model 'tiny', 5 steps -> build/main/student (key pending on "
        "main.teacher, main.teacher~tok@docs~s64~k64~t2, main.tok, main.tok@docs)",
        f"main.teacher    {pad}train: pretrain of model 'tiny', 10 steps -> build/main/teacher (key pending on "
        "main.tok, main.tok@docs)",
        "main.teacher~tok@docs~s64~k64~t2   teacher_outputs: top-64 log-probabilities of teacher 'main.teacher' at T 2 "
        "over dataset 'docs', windows of 64, align same -> build/main/teacher~tok@docs~s64~k64~t2 (key pending on "
        "main.teacher, main.tok@docs)",
        f"main.tok        {pad}tokenizer: byte-level BPE of 400 tokens trained on dataset 'docs' -> build/main/tok "
        "(key pending on dataset.docs)",
        f"main.tok@docs   {pad}tokens: dataset 'docs' as token ids of 'main.tok', packed for training -> "
        "build/main/tok@docs (key pending on dataset.docs, main.tok)",
    ]
    plans = graph.plans(project.load(p.root))
    assert plans["main.student"].inputs == {
        "teacher.big": "main.teacher", "teacher_outputs.big~docs~64": "main.teacher~tok@docs~s64~k64~t2",
        "tokenizer": "main.tok", "tokens.docs": "main.tok@docs"}
    assert plans["main.teacher~tok@docs~s64~k64~t2"].inputs == {"model": "main.teacher", "tokens.docs": "main.tok@docs"}
    assert plans["main.export"].inputs == {"model": "main.student", "tokenizer": "main.tok"}

FROM_INIT = """
    kind: pipeline
    name: main
    steps:
      student:
        kind: train
        init: start
        tokenizer: tok
        data: docs
        objective: distill
        distill:
          teachers:
            big: {step: teacher}
          phases:
            - {steps: 5, teachers: {big: 1.0}}
      teacher:
        kind: train
        init: start
        tokenizer: tok
        data: docs
        max_steps: 10
      start:
        kind: init
        model: tiny
        tokenizer: tok
      tok:
        kind: tokenizer
        dataset: docs
        vocab_size: 400
"""

TINY_KEYED = {"kind": "model", "architecture": "llama", "hidden_size": 32, "intermediate_size": 64, "layers": 2,
              "heads": 4, "kv_heads": 4, "head_dim": 8, "vocab_size": 512, "max_positions": 128, "rope_theta": 10000.0, "rope_scaling": None,
              "sliding_window": None, "rms_norm_eps": 1e-06, "tie_embeddings": False, "options": {}}


def test_train_from_an_init_step_inherits_its_model_and_teachers_come_first(make_project):
    p = make_project()
    write(p, {PIPELINE: FROM_INIT})  # the teacher is listed after its student
    plans = graph.plans(project.load(p.root))
    assert plans["main.student"].spec["model"] == plans["main.teacher"].spec["model"] == TINY_KEYED
    assert plans["main.student"].models["model"]["name"] == "tiny"
    assert plans["main.student"].inputs == {
        "init": "main.start", "teacher.big": "main.teacher", "teacher_outputs.big~docs~128": "main.teacher~tok@docs~s128~k64~t2",
        "tokenizer": "main.tok", "tokens.docs": "main.tok@docs"}
    assert list(plans).index("main.teacher") < list(plans).index("main.student")


def bases(root) -> dict[str, str]:
    """What each step's key covers besides its inputs' outputs (compiler/plan.py)."""
    return {task: plan.base for task, plan in graph.plans(project.load(root)).items()}


def test_student_learning_rate_changes_the_student_only(make_project):
    """The export's key follows the student's outputs, so it moves once the student is rebuilt."""
    p = make_project()
    write(p, {})
    before = bases(p.root)
    assert sorted(before) == ["dataset.docs", "main.export", "main.student", "main.teacher",
                              "main.teacher~tok@docs~s64~k64~t2", "main.tok", "main.tok@docs"]
    p.edit(PIPELINE, "    objective: distill\n", "    optimizer: {lr: 3.0e-4}\n    objective: distill\n")
    assert bases(p.root) == before  # the default written out is no change
    p.edit(PIPELINE, "lr: 3.0e-4", "lr: 1.0e-3")
    after = bases(p.root)
    assert sorted(t for t in before if after[t] != before[t]) == ["main.student"]


def test_curriculum_reads_one_tokens_step_per_dataset_shared_with_other_steps(make_project):
    p = make_project()
    more = {"specs/datasets/more.yaml": "kind: dataset\nname: more\nsources:\n  - type: files\n    glob: data/*.jsonl\n"}
    stages = ("stages:\n      - {name: foundation, steps: 3, datasets: {docs: 1.0}}\n"
              "      - {name: reasoning, steps: 2, datasets: {docs: 0.5, more: 0.5}, seq_len: 32}\n")
    write(p, {**student("data: docs\n", stages)}, more)
    plans = graph.plans(project.load(p.root))
    assert sorted(t for t, plan in plans.items() if plan.kind == "tokens") == ["main.tok@docs", "main.tok@more"]
    # the teacher's outputs for each (dataset, length) of a stage it teaches in: all of them here
    assert plans["main.student"].inputs == {
        "teacher.big": "main.teacher", "teacher_outputs.big~docs~32": "main.teacher~tok@docs~s32~k64~t2",
        "teacher_outputs.big~docs~64": "main.teacher~tok@docs~s64~k64~t2",
        "teacher_outputs.big~more~32": "main.teacher~tok@more~s32~k64~t2", "tokenizer": "main.tok",
        "tokens.docs": "main.tok@docs", "tokens.more": "main.tok@more"}
    assert plans["main.tok@more"].inputs == {"dataset": "dataset.more", "tokenizer": "main.tok"}


def test_export_chat_template_must_be_a_file(make_project):
    p = make_project()
    p.write("specs/templates/chat.jinja", "{{ messages }}")
    p.write("data/docs.txt", "Some text that is long enough to keep.\n")
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.txt\n")
    p.write("specs/models/tiny.yaml", "kind: model\nname: tiny\nhidden_size: 32\nintermediate_size: 64\n"
                                     "layers: 1\nheads: 4\nvocab_size: 512\n")
    p.write("specs/pipelines/main.yaml", "kind: pipeline\nname: main\nsteps:\n  tok: {kind: tokenizer, dataset: docs, "
                                        "vocab_size: 300}\n  init: {kind: init, model: tiny, tokenizer: tok}\n"
                                        "  hf:\n    kind: export\n    model: init\n    chat_template: specs/templates\n")
    r = p.doit("list", check=False)
    assert r.returncode == 2
    assert r.stderr == ("ingot: 1 problem found; nothing was built\n"
                        "specs/pipelines/main.yaml:9: steps.hf.chat_template: expected a Jinja template file; "
                        "found 'specs/templates', a folder\n"
                        "  fix: name the template file, e.g. specs/templates/chat.jinja\n")


def test_a_k_quant_without_llama_cpp_is_a_compile_error(make_project, monkeypatch):
    """The K-quants need the llama-cpp-python extra; without it the error says how to install it."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a))
    files = edit(PIPELINE, "model: student", "model: student\n    format: gguf\n    types: [q8_0, q4_k_m]")
    assert load_error(make_project(), files, {}) == (
        "specs/pipelines/main.yaml:30: steps.export.types[1]: expected a type this machine can write (K-quants are "
        "made by llama.cpp's quantizer, from the llama-cpp-python extra); found 'q4_k_m', and llama_cpp is not "
        "installed\n"
        '  fix: install the extra: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -r requirements-llama.txt (it compiles '
        "llama.cpp, about 15 minutes on 2 cores), or ask for a type gguf-py writes: f32, f16, bf16, q8_0, q5_1, q5_0, "
        "q4_1, q4_0")


def test_gguf_export_names_its_files_after_the_model_and_keys_that_name(make_project):
    p = make_project()
    write(p, edit(PIPELINE, "model: student", "model: student\n    format: gguf\n    types: [q8_0]"))
    plans = graph.plans(project.load(p.root))
    assert plans["main.export"].builder == "gguf" and plans["main.student"].builder == "train"
    assert plans["main.export"].spec["display_name"] == "tiny"
    named = plans  # the default written out: the same key; another name: another key
    write(p, edit(PIPELINE, "model: student", "model: student\n    format: gguf\n    types: [q8_0]\n"
                  "    display_name: tiny"))
    assert graph.plans(project.load(p.root))["main.export"].base == named["main.export"].base
    write(p, edit(PIPELINE, "model: student", "model: student\n    format: gguf\n    types: [q8_0]\n"
                  "    display_name: Tiny 1"))
    assert graph.plans(project.load(p.root))["main.export"].base != named["main.export"].base


# ---------------------------------------------------------------- paths that lead out of the project

def link_out(p, tmp_path, rel: str, target: str, text: str) -> str:
    """`rel` in the project, a symbolic link to `target` (a file or folder made outside it)."""
    outside = tmp_path / "outside" / target
    outside.parent.mkdir(parents=True, exist_ok=True)
    if target.endswith("/"):
        outside.mkdir()
        (outside / "config.json").write_text(text)
    else:
        outside.write_text(text)
    (p.root / rel).parent.mkdir(parents=True, exist_ok=True)
    (p.root / rel).symlink_to(outside)
    return str(outside.resolve()).rstrip("/")


FIX_OUT = "  fix: copy the files into the project and give the path from its root (a link out of it is refused)"


def test_a_teacher_folder_linked_from_outside_is_refused(make_project, tmp_path):
    p = make_project()
    write(p, student("{step: teacher}", "{path: teachers/big}"))
    real = link_out(p, tmp_path, "teachers/big", "big/", json.dumps({"vocab_size": 512}))
    assert load_error(p, student("{step: teacher}", "{path: teachers/big}"), {}) == (
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.path: expected a path relative to the "
        f"project root that stays inside it; found 'teachers/big', which resolves to {real} through a symbolic "
        f"link\n{FIX_OUT}")


def test_a_teacher_file_linked_from_outside_is_refused(make_project, tmp_path):
    p = make_project()
    files = student("{step: teacher}", "{path: teachers/big}")
    write(p, files, {"teachers/big/config.json": json.dumps({"vocab_size": 512})})
    real = link_out(p, tmp_path, "teachers/big/model.safetensors", "weights.safetensors", "weights")
    assert load_error(p, files, {"teachers/big/config.json": json.dumps({"vocab_size": 512})}) == (
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.path: expected a folder whose files are "
        f"inside the project; found 'teachers/big', whose file 'model.safetensors' resolves to {real}\n{FIX_OUT}")


def test_a_chat_template_linked_from_outside_is_refused(make_project, tmp_path):
    p = make_project()
    files = edit(PIPELINE, "model: student", "model: student\n    chat_template: specs/templates/linked.jinja")
    write(p, files)
    real = link_out(p, tmp_path, "specs/templates/linked.jinja", "chat.jinja", "{{ messages }}")
    assert load_error(p, files, {}) == (
        "specs/pipelines/main.yaml:29: steps.export.chat_template: expected a path relative to the project root "
        f"that stays inside it; found 'specs/templates/linked.jinja', which resolves to {real} through a symbolic "
        f"link\n{FIX_OUT}")


def test_a_teacher_config_nested_past_the_json_parser_is_a_spec_error(make_project):
    files = student("{step: teacher}", "{path: teachers/big}")
    assert load_error(make_project(), files, {"teachers/big/config.json": "[" * 100_000 + "]" * 100_000}) == (
        "specs/pipelines/main.yaml:23: steps.student.distill.teachers.big.path: expected a Hugging Face model folder "
        "with a config.json giving vocab_size; found 'teachers/big', whose config.json gives no integer vocab_size\n"
        "  fix: point `path:` at the folder that holds config.json and the weights")


def test_a_chain_of_steps_past_the_limit_is_refused_not_a_recursion_error(make_project):
    """300 train steps, each starting from the one before, listed last first: the cycle check and
    the ordering walk the chain recursively, and raised RecursionError past ~1,000 steps."""
    steps = ["tok: {kind: tokenizer, dataset: docs, vocab_size: 400}", "s0: {kind: init, model: tiny, tokenizer: tok}"]
    steps += [f"s{i}: {{kind: train, init: s{i - 1}, tokenizer: tok, data: docs, max_steps: 1}}" for i in range(299, 0, -1)]
    text = "kind: pipeline\nname: main\nsteps:\n" + "".join(f"  {s}\n" for s in steps)
    assert load_error(make_project(), {PIPELINE: text}, {}) == (
        "specs/pipelines/main.yaml:51: steps.s254.init: expected a chain of at most 256 steps, each consuming the one "
        "before; found 257 steps from 'main.s254' down\n"
        "  fix: start from a step nearer the beginning: no pipeline needs more than a few stages, and 256 is the most "
        "Ingot follows")


# ---------------------------------------------------------------- LoRA and QLoRA

# a LoRA fine-tune of the teacher, after the export (lines 29-35), and exports of its adapter
FT = ("  ft:\n    kind: train\n    init: teacher\n    tokenizer: tok\n    data: docs\n    max_steps: 5\n"
      "    lora: {r: 8}\n")


def with_ft(lora: str = "{r: 8}", extra: str = "") -> dict[str, str]:
    return {PIPELINE: valid(PIPELINE) + FT.replace("{r: 8}", lora) + extra}


LORA = {
    "lora-on-a-fresh-model": (
        edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    lora: {r: 8}\n"), {},
        "specs/pipelines/main.yaml:14: steps.teacher.lora: expected `init:` with `lora:` (LoRA fine-tunes existing "
        "weights: only the adapters train, so the random weights of a fresh model would stay random); found "
        "`model: tiny`, a fresh start\n"
        "  fix: start from trained weights with `init: STEP` in place of `model: tiny`, or remove `lora:` to train "
        "every weight"),
    "lora-target-not-a-layer": (
        with_ft("{r: 8, targets: [q_proj, qproj]}"), {},
        "specs/pipelines/main.yaml:35: steps.ft.lora.targets[1]: expected a linear layer of every llama decoder layer "
        "(one of 'down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'); found 'qproj'\n"
        "  fix: did you mean 'q_proj'?"),
    "lora-target-twice": (
        with_ft("{r: 8, targets: [v_proj, q_proj, v_proj]}"), {},
        "specs/pipelines/main.yaml:35: steps.ft.lora.targets[2]: expected each module once; found 'v_proj' a second "
        "time\n"
        "  fix: remove the repeated entry"),
    "lora-rank-zero": (
        with_ft("{r: 0}"), {},
        "specs/pipelines/main.yaml:35: steps.ft.lora.r: expected a number ≥ 1; found 0\n"
        "  fix: use a value ≥ 1"),
    "quantize-base-without-lora": (
        edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    quantize_base: nf4\n"), {},
        "specs/pipelines/main.yaml:14: steps.teacher.quantize_base: expected `lora:` beside `quantize_base` (QLoRA "
        "trains adapters over a 4-bit base, which stays frozen); found quantize_base: nf4 without `lora:`\n"
        "  fix: add `lora: {r: 16}`, or remove `quantize_base` to train every weight"),
    "adapter-of-a-train-step-without-lora": (
        edit(PIPELINE, "model: student", "model: student\n    adapter: true"), {},
        "specs/pipelines/main.yaml:29: steps.export.adapter: expected a LoRA train step as `model:` (one with "
        "`lora:`, whose adapter `adapter: true` exports); found model 'student', a train step without `lora:`\n"
        "  fix: point `model:` at a train step with `lora:`, or remove `adapter: true` to export the whole model"),
    "adapter-of-a-tokenizer": (
        with_ft(extra="  adapter:\n    kind: export\n    model: tok\n    adapter: true\n"), {},
        "specs/pipelines/main.yaml:38: steps.adapter.model: expected an init, train or pretrained step (a step that "
        "makes model weights); found 'tok', a tokenizer step\n"
        "  fix: name a step of kind `init`, `train` or `pretrained`"),
    "adapter-in-a-k-quant": (
        with_ft(extra="  adapter:\n    kind: export\n    model: ft\n    adapter: true\n    format: gguf\n"
                      "    types: [f16, q4_k_m]\n"), {},
        "specs/pipelines/main.yaml:41: steps.adapter.types[1]: expected a type of GGUF LoRA adapters (one of 'bf16', "
        "'f16', 'f32', 'q8_0'); found 'q4_k_m'\n"
        "  fix: quantize the base model's GGUF file instead: llama.cpp applies an adapter of these types over a base "
        "of any type"),
}


@pytest.mark.parametrize("files, extra, expected", LORA.values(), ids=LORA.keys())
def test_lora_mistakes(make_project, files, extra, expected):
    assert load_error(make_project(), files, extra) == expected


def test_a_lora_pipeline_compiles_and_its_targets_are_a_set(make_project):
    """A LoRA step and exports of its adapter compile; the order of `targets` is not in the key,
    the targets themselves are."""
    exports = ("  peft:\n    kind: export\n    model: ft\n    adapter: true\n"
               "  gguf:\n    kind: export\n    model: ft\n    adapter: true\n    format: gguf\n    types: [f32, q8_0]\n")
    p = make_project()
    write(p, with_ft("{r: 8, targets: [q_proj, v_proj]}", exports))
    plans = graph.plans(project.load(p.root))
    assert plans["main.ft"].inputs == {"init": "main.teacher", "tokenizer": "main.tok", "tokens.docs": "main.tok@docs"}
    assert plans["main.ft"].spec["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
    assert (plans["main.peft"].builder, plans["main.gguf"].builder) == ("export", "gguf")
    before = bases(p.root)
    write(p, with_ft("{r: 8, targets: [v_proj, q_proj], alpha: 16}", exports))
    assert bases(p.root) == before
    write(p, with_ft("{r: 8, targets: [v_proj, q_proj, k_proj]}", exports))
    assert sorted(t for t, b in bases(p.root).items() if b != before[t]) == ["main.ft"]


DISTRIBUTED = {
    "batch-not-divided-by-the-processes": (
        edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    batch_size: 6\n"
                                             "    distributed: {strategy: fsdp, nproc_per_node: 4}\n"),
        "specs/pipelines/main.yaml:14: steps.teacher.batch_size: expected a multiple of the 4 processes of "
        "`distributed` (4 per node × 1 node): each takes an equal share of every micro-batch; found 6\n"
        "  fix: use batch_size 4 or 8, or change nproc_per_node"),
    "batch-below-the-processes-of-two-nodes": (
        edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    batch_size: 2\n"
                                             "    distributed: {nproc_per_node: 2, nnodes: 2}\n"),
        "specs/pipelines/main.yaml:14: steps.teacher.batch_size: expected a multiple of the 4 processes of "
        "`distributed` (2 per node × 2 nodes): each takes an equal share of every micro-batch; found 2\n"
        "  fix: use batch_size 4, or change nproc_per_node"),
    "qlora-distributed": (
        with_ft(extra="    quantize_base: nf4\n    batch_size: 4\n    distributed: {nproc_per_node: 2}\n"),
        "specs/pipelines/main.yaml:38: steps.ft.distributed: expected one process with `quantize_base` (QLoRA holds "
        "its 4-bit base on one GPU); found distributed over 2 processes\n"
        "  fix: remove `distributed:`, or `quantize_base` to train LoRA adapters over a full-precision base"),
    "no-processes": (
        edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    distributed: {nproc_per_node: 0}\n"),
        "specs/pipelines/main.yaml:14: steps.teacher.distributed.nproc_per_node: expected a number ≥ 1; found 0\n"
        "  fix: use a value ≥ 1"),
}


@pytest.mark.parametrize("files, expected", DISTRIBUTED.values(), ids=DISTRIBUTED.keys())
def test_distributed_mistakes(make_project, files, expected):
    assert load_error(make_project(), files, {}) == expected


def test_distributed_and_resources_in_the_key(make_project):
    """A world size sums in another order: part of the key; where a step runs (resources) is not."""
    p = make_project()

    def key(files):
        write(p, files)
        return graph.compile_graph(project.load(p.root))["main.teacher"].base

    plain = key({})
    ddp = key(edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    distributed: {nproc_per_node: 2}\n"))
    fsdp = key(edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    distributed: {strategy: fsdp, "
                                                     "nproc_per_node: 2}\n"))
    placed = key(edit(PIPELINE, "    max_steps: 10\n", "    max_steps: 10\n    resources: {cpus: 2, gpus: 1}\n"))
    assert len({plain, ddp, fsdp}) == 3 and placed == plain
