"""From a loaded project to typed build plans, one per step, and the graph that keys them.

A plan is frozen plain data (it pickles, for `doit -n`): the step's keyed spec, the tasks
of its inputs, the digests of the files it reads, its builder's code (normalized-syntax
digest of every project module it runs, versions of the libraries they import), the
device kind of a train step, and where its friendly link goes. Keys chain on what the
producers *wrote* (their output digests), not on their keys: see `compiler.plan`.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import evaluation, plugins, pretrained, sources
from .inputs import OWN_TEMPLATE
from .keys import Code, FileDigests, code_of, keyed
from .nodes import Node, Project, topo_order
from .plan import Graph, Plan


def link_for(task: str, profile: str | None) -> str:
    """Friendly path of a step: build/<pipeline>/<step>, or build/@<profile>/<pipeline>/<step>."""
    prefix = f"build/@{profile}" if profile else "build"
    return f"{prefix}/{task.replace('.', '/', 1)}"


def builder_of(node: Node) -> str:
    """The module under targets/ that builds a node: its kind's, or the one its spec names
    (an export's format picks `export` or `gguf`)."""
    pick = getattr(node.spec, "builder", None)
    return pick() if pick else node.kind


def compile_graph(project: Project) -> Graph:
    """Every step's plan, in dependency order, with the keys the store can resolve now."""
    root = project.root
    files = FileDigests(root)
    code: dict[str, Code] = {}
    out: dict[str, Plan] = {}
    for task in topo_order(project):
        node = project.nodes[task]
        builder = builder_of(node)
        if builder not in code:
            code[builder] = code_of(root, f"targets.{builder}", files)
        out[task] = _plan(project, node, code[builder], files)
    files.save()
    return Graph(str(root), out)


def plans(project: Project) -> dict[str, Plan]:
    return compile_graph(project).plans


def _plan(project: Project, node: Node, code: Code, files: FileDigests) -> Plan:
    spec = keyed(node.spec)
    spec.update({f: keyed(m) for f, m in node.models.items()})  # a model's fields, not its name
    file_lists = sources.dataset_files(node, project.root) if node.kind == "dataset" else []
    read = {sources.label(p, project.root): p for paths in file_lists for p in paths}
    read.update(source_files(project, node))
    device = device_kind(node.spec.device) if node.kind in ("train", "teacher_outputs") else None
    step = node.spec if device is None else node.spec.model_copy(update={"device": device})
    return Plan(
        task=node.task, kind=node.kind, builder=builder_of(node), root=str(project.root),
        link=link_for(node.task, project.profile), profile=project.profile, default=node.default,
        summary=node.spec.summary(), spec=spec, step=step.model_dump(mode="json"),
        models={f: m.model_dump(mode="json") for f, m in node.models.items()},
        inputs={str(i): task for i, task in sorted(node.deps.items())},
        sources={label: files(p) for label, p in read.items()},
        files=tuple(tuple(str(p) for p in paths) for paths in file_lists),
        code=code.as_json(), device=device)


def device_kind(choice: str) -> str:
    """The device a train step (or a teacher-outputs step) will run on, decided now so that it enters the key (a CUDA-trained
    checkpoint is not the CPU one) and the builder is told it, not left to guess again. `auto`
    is CUDA where the NVIDIA driver is loaded and the installed torch is a CUDA build; found
    without importing torch."""
    if choice != "auto":
        return choice
    return "cuda" if os.path.exists("/dev/nvidiactl") and _torch_has_cuda() else "cpu"


def _torch_has_cuda() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return any(lib.glob("libtorch_cuda*.so*"))


def source_files(project: Project, node: Node) -> dict[str, Path]:
    """Label -> file outside the store a step reads: teacher folders, chat and report templates
    (labelled by their path from the project root), and the files of an existing model or
    tokenizer folder (labelled by their name inside it: moving the folder keys nothing)."""
    if node.kind == "pretrained" or (node.kind == "tokenizer" and not node.spec.trained()):
        return pretrained.source_files(project, node)
    files = _root_files(project, node) + plugin_files(project, node)
    return {sources.label(p, project.root): p for p in files}


def plugin_files(project: Project, node: Node) -> list[Path]:
    """The files of the plug-ins a step runs (compiler/plugins.py): the architecture of each
    model it builds or loads, and a train step's optimizer."""
    refs = [m.architecture for m in node.models.values() if plugins.is_plugin(getattr(m, "architecture", None))]
    optimizer = getattr(node.spec, "optimizer", None)
    if plugins.is_plugin(getattr(optimizer, "kind", None)):
        refs.append(optimizer.kind)
    return [path for ref in dict.fromkeys(refs) for path in plugins.files(ref, project.root)]


def _root_files(project: Project, node: Node) -> list[Path]:
    template = getattr(node.spec, "chat_template", None) if node.kind in ("export", "evaluate", "tokens") else None
    chat = [project.root / template] if template is not None and template != OWN_TEMPLATE else []
    if node.kind == "evaluate":  # and the judge's rubric, with what it includes
        return chat + evaluation.judge_files(project, node)
    if chat:
        return chat
    if node.kind == "report":
        return evaluation.template_files(project, node)
    if node.kind != "train" or node.spec.distill is None:
        return []
    out = []
    for teacher in node.spec.distill.teachers.values():
        if teacher.path is not None:
            folder = project.root / teacher.path
            out += sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return out
