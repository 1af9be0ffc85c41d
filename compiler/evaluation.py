"""Compile-time resolution and checks of evaluate and report steps.

An evaluate step reads the weights of an init or train step, the validation tokens of a
dataset (a `tokens` node shared with training, added here when no train step made it),
and optionally the GGUF files of an export of the same weights, with limits on their KL
divergence (`max_kld`) that name only types the export writes. A report step reads a train
step, its teachers, an evaluate step and export steps of the same weights, and a Jinja
template that is parsed and compiled now, so a broken template builds nothing.
"""

from __future__ import annotations

import importlib.util
import os

from . import pretrained, quants, templates
from .errors import SpecError, a_step
from .inputs import DATA, EVALUATE, GGUF, MODEL, OWN_TEMPLATE, TOKENIZER, TRAIN, Role, tokens
from .inputs import compare as compare_input
from .inputs import export as export_input
from .nodes import Node, Project, need_step
from .paths import OUTSIDE_FIX, inside
from .training import (check_seq_len, default_template, has_validation, model_of, template_file, tokens_node,
                       weights_step)


def evaluate(project: Project, node: Node) -> None:
    spec = node.spec
    weights = node.deps[MODEL]
    weights_step(project, node, ("model",), weights, spec.model)
    model = node.models["model"] = model_of(project, weights)
    check_seq_len(project, node, ("seq_len",), spec.seq_len, model)
    tok_task = node.deps[TOKENIZER] = pretrained.tokenizer_of(project, weights)
    node.spec = spec = default_template(project, node, tok_task)
    if spec.chat_template != OWN_TEMPLATE:
        template_file(project, node, spec.chat_template)
    data = spec.data if spec.data is not None else _data_of(project, node, weights)
    node.deps.pop(DATA, None)
    has_validation(project, node, ("data",), data, "the step measures perplexity on it")
    chat = spec.chat_template if project.datasets[data][0].chat() else None
    node.deps[tokens(data)] = tokens_node(project, node, tok_task, data, chat)
    if spec.gguf is not None:
        export = project.nodes[node.deps[GGUF]]
        if export.kind != "export" or export.spec.format != "gguf" or export.spec.adapter:
            found = (f"'{spec.gguf}', {a_step(export.kind)}" if export.kind != "export" else
                     f"'{spec.gguf}', an export of a LoRA adapter (`adapter: true`), not of a model"
                     if export.spec.adapter else f"'{spec.gguf}', an export with format '{export.spec.format}'")
            raise node.error(("gguf",), "an export step with `format: gguf` that writes a model", found,
                             "name the step that writes the GGUF files, or leave `gguf` out")
        if export.deps[MODEL] != weights:
            raise node.error(("gguf",), f"GGUF files of the weights measured here ('{spec.model}')",
                             f"'{spec.gguf}', which exports '{export.spec.model}'",
                             "evaluate the GGUF export of the same step, so the perplexities compare")
        if importlib.util.find_spec("llama_cpp") is None:
            raise node.error(("gguf",), "llama.cpp to measure GGUF files (the llama-cpp-python extra)",
                             f"'{spec.gguf}', and llama_cpp is not installed",
                             f"install the extra: {quants.LLAMA_INSTALL} (it compiles llama.cpp, about 15 "
                             "minutes on 2 cores), or leave `gguf` out")
    if spec.max_kld is not None:
        _max_kld(project, node)


def _max_kld(project: Project, node: Node) -> None:
    """`max_kld` limits files the step measures: those of its `gguf` export."""
    spec = node.spec
    if spec.gguf is None:
        raise node.error(("max_kld",), "`gguf:`, the export whose files `max_kld` limits",
                         "`max_kld` and no `gguf`", "add `gguf: STEP` (an export with `format: gguf`), or leave "
                         "`max_kld` out")
    types = project.nodes[node.deps[GGUF]].spec.gguf_types()
    for name in spec.max_kld:
        if name not in types:
            raise node.error(("max_kld", name), f"a type among the files of '{spec.gguf}' ({', '.join(types)})",
                             f"'{name}'", f"add {name} to `types` of '{spec.gguf}', or remove it from `max_kld`")


def _data_of(project: Project, node: Node, weights: str) -> str:
    """The dataset a train step read, when it read one; otherwise `data:` must be given."""
    source = project.nodes[weights]
    if source.kind == "train" and source.spec.data is not None:
        return source.spec.data
    why = "a curriculum" if source.kind == "train" else "no dataset"
    raise node.error(("data",), "`data:`, the dataset whose validation split to measure",
                     f"nothing, and '{node.spec.model}' reads {why}", "add `data: DATASET`")


def report(project: Project, node: Node) -> None:
    spec = node.spec
    train = node.deps[TRAIN]
    if project.nodes[train].kind != "train":
        raise node.error(("train",), "a train step", f"'{spec.train}', {a_step(project.nodes[train].kind)}",
                         "name the train step to report on")
    node.models["model"] = model_of(project, train)
    for i, task in project.nodes[train].deps.items():
        if i.role is Role.TEACHER:  # their manifests give the teachers' sizes
            node.deps[i] = task
    if spec.evaluate is not None:
        evaluation = project.nodes[node.deps[EVALUATE]]
        if evaluation.kind != "evaluate":
            raise node.error(("evaluate",), "an evaluate step", f"'{spec.evaluate}', {a_step(evaluation.kind)}",
                             "name an evaluate step of the same weights, or leave `evaluate` out")
        if evaluation.deps[MODEL] != train:
            raise node.error(("evaluate",), f"an evaluate step of the weights reported on ('{spec.train}')",
                             f"'{spec.evaluate}', which measures '{evaluation.spec.model}'",
                             "evaluate the train step this report is about")
    for i, ref in enumerate(spec.exports):
        task = node.step_task(ref)
        need_step(project, node, ("exports", i), ref, task)
        if task in {t for i, t in node.deps.items() if i.role is Role.EXPORT}:  # `gguf` and `main.gguf` alike
            raise node.error(("exports", i), "each export once", f"'{ref}', listed before",
                             "remove the repeated entry")
        export = project.nodes[task]
        if export.kind != "export" or export.deps[MODEL] != train:
            found = f"'{ref}', {a_step(export.kind)}" if export.kind != "export" else \
                f"'{ref}', which exports '{export.spec.model}'"
            raise node.error(("exports", i), f"an export step of the weights reported on ('{spec.train}')", found,
                             "list the exports of the train step this report is about")
        node.deps[export_input(ref)] = task
    for i, ref in enumerate(spec.compare):
        task = node.step_task(ref)
        need_step(project, node, ("compare", i), ref, task)
        if task == train or task in {t for i, t in node.deps.items() if i.role is Role.COMPARE}:
            raise node.error(("compare", i), "each train step once, and not `train` itself", f"'{ref}', listed before",
                             "remove the repeated entry")
        if project.nodes[task].kind != "train":
            raise node.error(("compare", i), "a train step", f"'{ref}', {a_step(project.nodes[task].kind)}",
                             "list train steps to compare with the one reported on")
        node.deps[compare_input(task)] = task
    template_files(project, node)


def template_files(project: Project, node: Node) -> list:
    """The report's template and every template it pulls in, checked: the files to digest."""
    path = inside(node, ("template",), node.spec.template, project.root)
    try:
        files = templates.check(path)
    except templates.TemplateProblem as exc:
        rel = str(exc.file).removeprefix(str(project.root) + "/")
        where = f"{rel}:{exc.line}" if exc.line else rel
        raise _template_error(node, "a Jinja template that parses", f"{where}: {exc.message}",
                              f"fix the template at {where}") from None
    except (OSError, UnicodeDecodeError) as exc:  # a template pulled in that is not readable UTF-8 text
        raise _template_error(node, "Jinja templates of UTF-8 text", str(exc), "save the templates as UTF-8") from None
    except RecursionError:
        raise _template_error(node, "a Jinja template that parses", "expressions or blocks nested too deep to parse",
                              "flatten the template's expressions") from None
    for file in files[1:]:  # the template itself was checked by `inside`
        real = file.resolve()
        if not real.is_relative_to(project.root):
            raise _template_error(node, "templates inside the project", f"'{node.spec.template}' pulls in "
                                  f"'{os.path.relpath(file, path.parent)}', which resolves to {real}", OUTSIDE_FIX)
    return files


def _template_error(node: Node, expected: str, found: str, fix: str) -> SpecError:
    return SpecError.one(node.doc.file, node.line("template"), node.doc.field(node.path + ("template",)),
                         expected, found, fix)


RESOLVE = {"evaluate": evaluate, "report": report}  # kind -> its resolution, run by project.load
