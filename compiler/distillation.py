"""Compile-time resolution and checks of a train step's distillation: its teachers (steps of the
project or Hugging Face folders), the phases that name them, and whether each teacher can teach
this student (its vocabulary and tokenizer). Runs after `training.resolve_train`.
"""

from __future__ import annotations

import json

from . import pretrained
from .errors import did_you_mean, one_of
from .inputs import TOKENIZER
from .inputs import teacher as teacher_input
from .nodes import Node, Project
from .paths import OUTSIDE_FIX, inside
from .specs import ModelSpec
from .training import WEIGHT_KINDS, model_of, resolve_train, unique_names, weights_step


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
    for name, teacher in spec.distill.teachers.items():
        where = ("distill", "teachers", name)
        if name not in used:  # the builder loads the teachers of each phase, and no other
            raise node.error(where, "a teacher that some phase names", f"teacher '{name}', which no phase names",
                             f"add '{name}' to the teachers of a phase, or remove it: as written, its weights would "
                             "be made and never read")
        if teacher.step is not None:
            _step_teacher(project, node, where, name, teacher.step, student, tok_task)
        elif teacher.path is not None:
            _path_teacher(project, node, where, name, teacher.path, student)


def _step_teacher(project: Project, node: Node, where: tuple, name: str, ref: str,
                  student: ModelSpec, tok_task: str) -> None:
    pipeline, task = node.task.split(".")[0], node.step_task(ref)
    if task not in project.nodes or project.nodes[task].kind == "tokens":
        # listed the way the user would write them: a step of this pipeline by its bare name
        steps = [t.split(".", 1)[1] if t.startswith(pipeline + ".") else t
                 for t, n in project.nodes.items() if n.kind in WEIGHT_KINDS and t != node.task]
        raise node.error(where + ("step",), f"an init or train step ({one_of(steps) if steps else 'none is declared'})",
                         f"'{ref}'", did_you_mean(ref, steps) or "declare the teacher step, or fix the name")
    if task == node.task:
        raise node.error(where + ("step",), "another step", f"'{ref}', the step itself", "a model cannot teach itself")
    weights_step(project, node, where + ("step",), task, ref)
    teacher = model_of(project, task)
    _same_vocab(node, where, name, teacher.vocab_size, f"model '{teacher.name}'", student)
    teacher_tok = pretrained.tokenizer_of(project, task)
    if teacher_tok != tok_task:
        raise node.error(where + ("step",), f"a teacher trained with the student's tokenizer ('{tok_task}')",
                         f"teacher '{name}' with tokenizer '{teacher_tok}'",
                         "train the teacher with the same tokenizer step, or distill from another teacher")
    node.deps[teacher_input(name)] = task


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
    _same_vocab(node, where, name, vocab, f"{rel}/config.json", student)


def _same_vocab(node: Node, where: tuple, name: str, vocab: int, source: str, student: ModelSpec) -> None:
    if vocab != student.vocab_size:
        raise node.error(where, f"a teacher with the student's vocabulary ({student.vocab_size:,} tokens, "
                                f"model '{student.name}')",
                         f"teacher '{name}' with a vocabulary of {vocab:,} tokens ({source})",
                         "distill from a teacher that shares the student's tokenizer and vocabulary")


RESOLVE = {"train": resolve}  # after training.RESOLVE's, which it replaces for `train`
