"""The graph's node type: one `Node` per buildable artifact, the `Project` that holds them, and
what every per-kind check needs of them (their order, a step reference checked). The bottom
of the compiler's stack: the checks per kind (sources, curation, training, evaluation) import
this module, and `project` imports them; nothing here imports any of those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError, SpecWarning, did_you_mean, one_of
from .inputs import Input, Role
from .specs import DatasetSpec, ModelSpec, PipelineSpec, Spec
from .yamlfile import Document


@dataclass
class Node:
    """One buildable artifact: a dataset or a pipeline step."""

    task: str                     # doit task name: `dataset.NAME` or `PIPELINE.STEP`
    kind: str                     # builder kind: dataset, tokenizer, init, ...
    spec: Spec
    doc: Document
    path: tuple                   # where the spec sits in its document
    default: bool = True
    deps: dict[Input, str] = field(default_factory=dict)        # input -> the task that produces it
    models: dict[str, ModelSpec] = field(default_factory=dict)  # field -> model spec

    def line(self, *sub: Any) -> int | None:
        return self.doc.line(self.path + sub)

    def step_task(self, ref: str) -> str:
        """The task a step reference names: `step` in this node's pipeline, or `pipeline.step`."""
        return ref if "." in ref else f"{self.task.split('.')[0]}.{ref}"

    def where(self, i: Input) -> tuple:
        """The spec field that names input `i`, for an error about it: a teacher's `step`, a
        dataset's `filters.tokenizer` or a failures source's `from`, or the field of the role's
        name (none for what the compiler added, such as the tokens of a dataset)."""
        if i.role is Role.TEACHER:
            return ("distill", "teachers", i.name, "step")
        if self.kind == "dataset" and i.role is Role.TOKENIZER:
            return ("filters", "tokenizer")
        if self.kind == "dataset" and i.role is Role.FAILURES:  # the first source reading that step
            return next(("sources", n, "from") for n, s in enumerate(self.spec.sources)
                        if s.type == "failures" and s.from_ == i.name)
        return (i.role.value,) if not i.name and i.role.value in type(self.spec).model_fields else ()

    def error(self, sub: tuple, expected: str, found: str, fix: str = "") -> SpecError:
        return SpecError.one(self.doc.file, self.line(*sub), self.doc.field(self.path + sub), expected, found, fix)

    def warning(self, sub: tuple, message: str, fix: str = "") -> SpecWarning:
        return SpecWarning(self.doc.file, self.line(*sub), self.doc.field(self.path + sub), message, fix)


@dataclass
class Project:
    root: Path
    profile: str | None
    datasets: dict[str, tuple[DatasetSpec, Document]] = field(default_factory=dict)
    models: dict[str, tuple[ModelSpec, Document]] = field(default_factory=dict)
    pipelines: dict[str, tuple[PipelineSpec, Document]] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    profiles: set[str] = field(default_factory=set)
    variants: dict[str, list[str]] = field(default_factory=dict)  # pipeline -> its variants' names
    warnings: list[SpecWarning] = field(default_factory=list)  # printed by every compile, build or not


def topo_order(project: Project) -> list[str]:
    """Tasks so that every step comes after the steps it consumes (cycles were refused)."""
    done: dict[str, None] = {}

    def visit(task: str) -> None:
        if task not in done:
            for dep in project.nodes[task].deps.values():
                visit(dep)
            done[task] = None

    for task in list(project.nodes):
        visit(task)
    return list(done)


def need_step(project: Project, node: Node, fname: str | tuple, value: str, task: str) -> None:
    """A step reference: `step` in the same pipeline or `pipeline.step`; choices are listed
    the way the user would write them, the referring step left out. `fname` is the field, or
    its path (`("exports", 0)`) when the reference sits in a list."""
    at = fname if isinstance(fname, tuple) else (fname,)
    if task in project.nodes:
        return
    pipeline, _, step = task.partition(".")
    if pipeline in project.variants:
        names = project.variants[pipeline]
        raise node.error(at, f"a step of one variant of pipeline '{pipeline}', which is built as its variants "
                         f"({one_of(names)})", f"'{value}'",
                         f"name the variant's step, e.g. '{pipeline}@{names[0]}.{step}' (a step every variant "
                         f"shares resolves to the shared one)")
    if pipeline not in project.pipelines:
        raise node.error(at, f"`pipeline.step` naming a declared pipeline ({one_of(project.pipelines)})",
                         f"'{value}', but no pipeline is named '{pipeline}'",
                         did_you_mean(pipeline, project.pipelines) or f"declare pipeline '{pipeline}', or fix the name")
    here = node.task.split(".")[0]
    steps = [s if pipeline == here else f"{pipeline}.{s}" for s in project.pipelines[pipeline][0].steps
             if f"{pipeline}.{s}" != node.task]
    where = "this pipeline" if pipeline == here else f"pipeline '{pipeline}'"
    hint = did_you_mean(value, steps) or did_you_mean(step, steps)
    raise node.error(at, f"a step of {where} ({one_of(steps) if steps else 'it has no other step'})",
                     f"'{value}'", hint or f"add a step '{step}' to {where}, or fix the name")
