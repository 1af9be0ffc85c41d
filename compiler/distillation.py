"""Compile-time resolution and checks of a train step's distillation: its teachers (steps of the
project or Hugging Face folders), the phases that name them, whether each teacher can teach
this student (vocabulary, tokenizer and `align`), and the teacher-outputs steps its step
teachers are read through. Runs after `training.resolve_train`.

A teacher given by `step:` is run once over the student's data, not beside the student: for
each (step teacher, dataset, window length) the student reads while that teacher teaches, this
module adds a `teacher_outputs` node (built by targets/teacher.py), named

    PIPELINE.TEACHER~TOKENS~sLEN~kK~tT[~ALIGN]      e.g. main.teacher~tok@docs~s128~k64~t2

after the teacher's task, the student's tokens task (`TOKENIZER@DATASET`, without the pipeline
when it is the teacher's), the window length, `top_k` (`kall` for all), the temperature, and
the alignment unless `same`. Step and manifest names never hold `~`, so no step a user writes
can take such a name, and the name says everything the node's key holds besides its inputs'
outputs: every student asking for the same name shares one entry. Its key is the teacher's
weights and the tokens (their output digests), the teacher's tokenizer where it is not the
student's, and align, top_k, seq_len and temperature: not the student's learning rate, length,
alpha or weights, so a student edited there rebuilds alone. Teachers given by `path:` or
`hub:` run live beside the student, as before, with `align: same` only.
"""

from __future__ import annotations

import json

from . import plugins, pretrained
from .errors import did_you_mean, one_of
from .inputs import MODEL, TEACHER_TOKENIZER, TOKENIZER
from .inputs import teacher as teacher_input
from .inputs import teacher_outputs as outputs_input
from .inputs import tokens as tokens_input
from .nodes import Node, Project
from .paths import OUTSIDE_FIX, inside
from .specs import ModelSpec, TeacherOutputsStep
from .training import WEIGHT_KINDS, model_of, resolve_train, unique_names, weights_step

OPTIONS = ("add `align: uld` (Universal Logit Distillation: the sorted probabilities of both, compared over "
           "spans of the same text, whatever the vocabularies) or `align: map` (the teacher's top-k carried onto "
           "the student's ids of the same token texts)")


def resolve(project: Project, node: Node) -> None:
    """A train step, and its teachers when it distills."""
    resolve_train(project, node)
    if node.spec.objective == "distill" or node.spec.distill is not None:
        _distill(project, node, node.models["model"], node.deps[TOKENIZER])


def _distill(project: Project, node: Node, student: ModelSpec, tok_task: str) -> None:
    spec = node.spec
    if spec.objective != "distill":
        raise node.error(("objective",), "`distill`, since the step has a `distill:` section",
                         f"'{spec.objective}'", "set `objective: distill`, or remove `distill:`")
    if spec.distill is None:
        raise node.error(("distill",), "a `distill:` section (teachers, temperature, alpha, phases)", "nothing",
                         "add `distill:`, or use another objective")
    for i, phase in enumerate(spec.distill.phases):
        for name in phase.teachers:
            if name not in spec.distill.teachers:
                known = list(spec.distill.teachers)
                raise node.error(("distill", "phases", i, "teachers", name),
                                 f"a teacher declared under distill.teachers ({one_of(known)})", f"'{name}'",
                                 did_you_mean(name, known) or f"declare teacher '{name}' under distill.teachers")
    unique_names(node, spec.distill.phases, ("distill", "phases"), "phase")
    used = {name for phase in spec.distill.phases for name in phase.teachers}
    aligns: dict[str, str] = {}  # step teacher -> its alignment, resolved
    for name, teacher in spec.distill.teachers.items():
        where = ("distill", "teachers", name)
        if name not in used:  # the builder loads the teachers of each phase, and no other
            raise node.error(where, "a teacher that some phase names", f"teacher '{name}', which no phase names",
                             f"add '{name}' to the teachers of a phase, or remove it: as written, its weights would "
                             "be made and never read")
        if teacher.step is not None:
            aligns[name] = _step_teacher(project, node, where, name, teacher.step, teacher.align, student, tok_task)
            continue
        _live_teacher(node, where, teacher)
        if teacher.path is not None:
            _path_teacher(project, node, where, name, teacher.path, student)
    _outputs_nodes(project, node, aligns)


def _step_teacher(project: Project, node: Node, where: tuple, name: str, ref: str, align: str | None,
                  student: ModelSpec, tok_task: str) -> str:
    """Check a step teacher and return its alignment: `same` by default for a teacher of the
    student's tokenizer; `uld` or `map`, said in the spec, for one of another tokenizer."""
    pipeline, task = node.task.split(".")[0], node.step_task(ref)
    if task not in project.nodes or project.nodes[task].kind in ("tokens", "teacher_outputs"):
        # listed the way the user would write them: a step of this pipeline by its bare name
        steps = [t.split(".", 1)[1] if t.startswith(pipeline + ".") else t
                 for t, n in project.nodes.items() if n.kind in WEIGHT_KINDS and t != node.task]
        raise node.error(where + ("step",), f"an init or train step ({one_of(steps) if steps else 'none is declared'})",
                         f"'{ref}'", did_you_mean(ref, steps) or "declare the teacher step, or fix the name")
    if task == node.task:
        raise node.error(where + ("step",), "another step", f"'{ref}', the step itself", "a model cannot teach itself")
    weights_step(project, node, where + ("step",), task, ref)
    node.deps[teacher_input(name)] = task
    teacher = model_of(project, task)
    teacher_tok = pretrained.tokenizer_of(project, task)
    if teacher_tok == tok_task:
        if align in (None, "same"):
            _same_vocab(node, where, name, teacher.vocab_size, f"model '{teacher.name}'", student)
        return align or "same"
    ours, theirs = _vocabulary(project, tok_task), _vocabulary(project, teacher_tok)
    if align is None:
        raise node.error(where, f"an `align:` for a teacher whose tokenizer is not the student's (the student reads "
                                f"{ours})", f"teacher '{name}' trained with {theirs}, and no `align:`",
                         f"{OPTIONS}, or distill from a teacher trained with '{tok_task}'")
    if align == "same":
        raise node.error(where + ("align",), "`align: uld` or `align: map` for a teacher whose tokenizer is not the "
                                             f"student's (the student reads {ours})",
                         f"`align: same` with teacher '{name}' trained with {theirs}, whose ids are other tokens",
                         f"set `align: uld` or `align: map`, or distill from a teacher trained with '{tok_task}'")
    return align


def _vocabulary(project: Project, tok_task: str) -> str:
    """A tokenizer step as an error names it: `'main.tok', 400 tokens`."""
    size = pretrained.tokenizer_size(project, tok_task)
    return f"'{tok_task}', {size:,} tokens" if size is not None else f"'{tok_task}'"


def _live_teacher(node: Node, where: tuple, teacher) -> None:
    """A `path:` or `hub:` teacher runs beside the student, token by token: `same` only."""
    if teacher.align in (None, "same"):
        return
    source = f"path: {teacher.path}" if teacher.path is not None else f"hub: {teacher.hub}"
    raise node.error(where + ("align",), f"`align: same` (or none) for a teacher given by `{source.split(':')[0]}:`, "
                                         "which runs live beside the student, id by id",
                     f"`align: {teacher.align}`",
                     f"declare the model as a step (`kind: pretrained`, `{source}`) and teach with `step:` "
                     "(a step teacher's outputs are aligned and stored once), or remove `align:`")


def _path_teacher(project: Project, node: Node, where: tuple, name: str, rel: str, student: ModelSpec) -> None:
    folder = inside(node, where + ("path",), rel, project.root)
    config = folder / "config.json"
    try:
        vocab = json.loads(config.read_text())["vocab_size"]
        if not isinstance(vocab, int) or isinstance(vocab, bool):
            raise ValueError(vocab)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        why = "whose config.json gives no integer vocab_size" if config.is_file() else "which has no config.json"
        raise node.error(where + ("path",), "a Hugging Face model folder with a config.json giving vocab_size",
                         f"'{rel}', {why}", "point `path:` at the folder that holds config.json and the weights") from None
    for file in sorted(folder.iterdir()):  # the files the step reads (source_files), links resolved
        if not file.name.startswith(".") and not file.resolve().is_relative_to(project.root):
            raise node.error(where + ("path",), "a folder whose files are inside the project",
                             f"'{rel}', whose file '{file.name}' resolves to {file.resolve()}", OUTSIDE_FIX)
    _same_vocab(node, where, name, vocab, f"{rel}/config.json", student,
                "distill from a teacher that shares the student's tokenizer and vocabulary, or declare the folder "
                f"as a `pretrained` step (`path: {rel}`), teach with `step:` and add `align: uld` or `align: map`")


def _same_vocab(node: Node, where: tuple, name: str, vocab: int, source: str, student: ModelSpec,
                fix: str = "give both models the same vocab_size, or set `align: map` (the teacher's predictions "
                           "carried onto the student's ids by token text)") -> None:
    if vocab != student.vocab_size:
        raise node.error(where, f"a teacher with the student's vocabulary ({student.vocab_size:,} tokens, "
                                f"model '{student.name}'): `align: same` compares their distributions id by id",
                         f"teacher '{name}' with a vocabulary of {vocab:,} tokens ({source})", fix)


# ---------------------------------------------------------------- teacher-outputs nodes


def _outputs_nodes(project: Project, node: Node, aligns: dict[str, str]) -> None:
    """For each step teacher, the (dataset, window length) pairs the student reads while that
    teacher teaches: the phases and the stages overlaid by step ranges (their lengths agree, as
    `_check_length` made sure)."""
    spec = node.spec
    stages, start = [], 0
    for stage in spec.stages:
        stages.append((start, start + stage.steps, tuple(stage.datasets), stage.seq_len or spec.seq_len))
        start += stage.steps
    stages = stages or [(0, float("inf"), (spec.data,), spec.seq_len)]
    start = 0
    for phase in spec.distill.phases:
        end = start + phase.steps
        for first, last, datasets, length in stages:
            if first >= end or start >= last:
                continue
            for name in (n for n in phase.teachers if n in aligns):
                for dataset in datasets:
                    node.deps[outputs_input(name, dataset, length)] = _outputs_node(
                        project, node, name, dataset, length, aligns[name])
        start = end


def _outputs_node(project: Project, student: Node, name: str, dataset: str, length: int, align: str) -> str:
    d = student.spec.distill
    teacher, tokens, tok = student.deps[teacher_input(name)], student.deps[tokens_input(dataset)], student.deps[TOKENIZER]
    spec = TeacherOutputsStep(kind="teacher_outputs", teacher=teacher, dataset=dataset, tokenizer=tok, align=align,
                              top_k=d.top_k, seq_len=length, temperature=d.temperature, windows=d.windows)
    task = outputs_task(spec, tokens)
    if task in project.nodes:
        project.nodes[task].default |= student.default
        return task
    node = Node(task, "teacher_outputs", spec, student.doc, student.path + ("distill", "teachers", name),
                student.default)
    node.deps = {MODEL: teacher, tokens_input(dataset): tokens}
    model = project.nodes[teacher].models.get("model")
    if model is not None and plugins.is_plugin(model.architecture):  # the plug-in's files key what it runs
        node.models["teacher"] = model
    if align != "same":  # the student's ids become text, which the teacher's tokenizer reads
        node.deps[TOKENIZER] = tok
        node.deps[TEACHER_TOKENIZER] = pretrained.tokenizer_of(project, teacher)
    project.nodes[task] = node
    return task


def outputs_task(spec: TeacherOutputsStep, tokens_task: str) -> str:
    """`PIPELINE.TEACHER~TOKENS~sLEN~kK~tT[~wWINDOWS][~ALIGN]`: what the entry holds, in its name."""
    pipeline = spec.teacher.split(".")[0] + "."
    tokens = tokens_task.removeprefix(pipeline)
    temperature = repr(float(spec.temperature)).removesuffix(".0")
    align = "" if spec.align == "same" else f"~{spec.align}"
    windows = "" if spec.windows is None else f"~w{spec.windows}"
    return f"{spec.teacher}~{tokens}~s{spec.seq_len}~k{spec.top_k}~t{temperature}{windows}{align}"


RESOLVE = {"train": resolve}  # after training.RESOLVE's, which it replaces for `train`
