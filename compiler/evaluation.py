"""Compile-time resolution and checks of evaluate and report steps.

An evaluate step reads the weights of an init or train step, the validation tokens of a
dataset (a `tokens` node shared with training, added here when no train step made it),
and optionally the GGUF files of an export of the same weights, with limits on their KL
divergence (`max_kld`) that name only types the export writes; with a `prompt_set`, the
dataset of instruction/response records it scores (its `dataset` input) and, for a judge, the
rubric template, parsed now and digested into its key. A report step reads a train
step, its teachers, an evaluate step and export steps of the same weights, and a Jinja
template that is parsed and compiled now, so a broken template builds nothing.
"""

from __future__ import annotations

import importlib.util
import os
import re

from . import pretrained, quants, templates
from .errors import SpecError, a_step, did_you_mean, one_of
from .inputs import DATA, DATASET, EVALUATE, GGUF, MODEL, OWN_TEMPLATE, TOKENIZER, TRAIN, Role, tokens
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
    if spec.prompt_set is not None:
        _prompt_set(project, node)


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


SCORING_ONLY = {"pattern": "number", "timeout": "python", "memory_mb": "python", "judge": "judge",
                "reference": "judge"}  # field of a prompt set -> the only scoring that reads it


def _prompt_set(project: Project, node: Node) -> None:
    """The prompt set's dataset (instruction/response records, with records in the split read)
    becomes the step's `dataset` input; each field fits its `scoring`; the judge's rubric parses."""
    ps, at = node.spec.prompt_set, ("prompt_set",)
    if ps.dataset not in project.datasets:
        names = list(project.datasets)
        raise node.error(at + ("dataset",), f"the name of a dataset ({one_of(names) if names else 'none is declared'})",
                         f"'{ps.dataset}'", did_you_mean(ps.dataset, names) or
                         f"declare a dataset named '{ps.dataset}', or fix the name")
    data = project.datasets[ps.dataset][0]
    if not data.chat():
        raise node.error(at + ("dataset",), "a dataset of instruction/response records",
                         f"'{ps.dataset}', a dataset of texts", "map its sources' `fields: {instruction: ..., "
                         "response: ...}`, or name a dataset of instruction/response records")
    if ps.split == "validation" and data.split.validation == 0:
        raise node.error(at + ("split",), f"a split that dataset '{ps.dataset}' has records in",
                         "'validation', and its `split.validation` is 0", "use `split: all`, or give the dataset "
                         "a validation split")
    for field, scoring in SCORING_ONLY.items():
        if field in ps.model_fields_set and getattr(ps, field) is not None and ps.scoring != scoring:
            raise node.error(at + (field,), f"`{field}` only with `scoring: {scoring}`",
                             f"`{field}` and `scoring: {ps.scoring}`", f"remove `{field}`, or use `scoring: {scoring}`")
    if ps.scoring == "number" and ps.pattern is not None:
        _pattern(node, ps.pattern)
    if ps.scoring == "judge":
        for field in ("judge", "reference"):
            if getattr(ps, field) is None:
                raise node.error(at, f"`{field}:` with `scoring: judge`", f"no `{field}`",
                                 f"add `{field}: {{url: http://127.0.0.1:8080/v1, model: NAME}}` (an OpenAI-"
                                 "compatible endpoint)")
        judge_files(project, node)
    task = f"dataset.{ps.dataset}"
    if _reaches(project, task, node.task):  # a failures dataset of this very step, or of one after it
        raise node.error(at + ("dataset",), "a dataset that does not depend on this step",
                         f"'{ps.dataset}', built from what this step writes", "score a dataset made before this "
                         "step, e.g. the prompt set the failures came from")
    node.deps[DATASET] = task


def _reaches(project: Project, start: str, target: str) -> bool:
    """Whether `start` depends, through any chain of inputs, on `target`."""
    seen, todo = set(), [start]
    while todo:
        task = todo.pop()
        if task == target:
            return True
        if task not in seen:
            seen.add(task)
            todo += project.nodes[task].deps.values()
    return False


def _pattern(node: Node, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise node.error(("prompt_set", "pattern"), "a Python regular expression", f"{pattern!r}: {exc}",
                         "fix the expression (a final number by default needs no `pattern`)") from None


def judge_files(project: Project, node: Node) -> list:
    """The judge's rubric and every template it pulls in, checked: the files to digest (none
    without a judge)."""
    ps = node.spec.prompt_set
    if ps is None or ps.judge is None:
        return []
    where = ("prompt_set", "judge", "template")
    rel = ps.judge.template
    path = inside(node, where, rel, project.root)
    try:
        files = templates.check(path)
    except templates.TemplateProblem as exc:
        found = f"{str(exc.file).removeprefix(str(project.root) + '/')}{f':{exc.line}' if exc.line else ''}"
        raise node.error(where, "a Jinja template that parses", f"{found}: {exc.message}",
                         f"fix the template at {found}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise node.error(where, "a Jinja template of UTF-8 text", str(exc), "save the template as UTF-8") from None
    for file in files:
        if not file.resolve().is_relative_to(project.root):
            raise node.error(where, "templates inside the project", f"'{rel}' pulls in "
                             f"'{os.path.relpath(file, path.parent)}', which resolves to {file.resolve()}", OUTSIDE_FIX)
    return files


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
