"""From a loaded project to content keys and build plans, one per step.

A plan is plain data (it pickles, for `doit -n`): the step's key, its keyed spec,
the keys of its inputs, the digests of the files it reads, its builder's code
digest, and where its friendly link goes. Keys chain (Merkle): a step's key covers
its inputs' keys, never their bytes.
"""

from __future__ import annotations

from . import sources, training
from .keys import FileDigests, canonical, code_digest, digest, keyed
from .project import Node, Project, topo_order


def link_for(task: str, profile: str | None) -> str:
    """Friendly path of a step: build/<pipeline>/<step>, or build/@<profile>/<pipeline>/<step>."""
    prefix = f"build/@{profile}" if profile else "build"
    return f"{prefix}/{task.replace('.', '/', 1)}"


def builder_of(node: Node) -> str:
    """The module under targets/ that builds a node: its kind's, or the one its spec names
    (an export's format picks `export` or `gguf`)."""
    pick = getattr(node.spec, "builder", None)
    return pick() if pick else node.kind


def plans(project: Project) -> dict[str, dict]:
    root = project.root
    files = FileDigests(root)
    code: dict[str, str] = {}
    out: dict[str, dict] = {}
    for task in topo_order(project):
        node = project.nodes[task]
        builder = builder_of(node)
        if builder not in code:
            code[builder] = code_digest(root, f"targets.{builder}", files)
        out[task] = _plan(project, node, out, code[builder], files)
    files.save()
    return out


def _plan(project: Project, node: Node, done: dict[str, dict], code: str, files: FileDigests) -> dict:
    spec = keyed(node.spec)
    spec.update({f: keyed(m) for f, m in node.models.items()})  # a model's fields, not its name
    file_lists = sources.dataset_files(node, project.root) if node.kind == "dataset" else []
    read = [p for paths in file_lists for p in paths] + training.source_files(project, node)
    digests = {sources.label(p, project.root): files(p) for p in read}
    inputs = {f: {"task": dep, "key": done[dep]["key"]} for f, dep in sorted(node.deps.items())}
    key = digest(canonical({"kind": node.kind, "code": code, "spec": spec,
                            "inputs": {f: i["key"] for f, i in inputs.items()}, "sources": digests}))
    return {
        "task": node.task, "kind": node.kind, "builder": builder_of(node), "key": key, "root": str(project.root),
        "link": link_for(node.task, project.profile), "profile": project.profile,
        "code": code, "spec": spec, "inputs": inputs, "sources": digests,
        "files": [[str(p) for p in paths] for paths in file_lists],
        "step": node.spec.model_dump(mode="json"),
        "models": {f: m.model_dump(mode="json") for f, m in node.models.items()},
        "summary": node.spec.summary(), "default": node.default,
    }
