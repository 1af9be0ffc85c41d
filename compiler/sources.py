"""What a dataset reads, found at compile time: the files whose digests enter its key, and
the evaluate steps its `type: failures` sources read.

Local globs are resolved against the project root and refused if they escape it (a
symbolic link out of the project included); a wildcard never walks into build/ (the store:
outputs, not sources) nor into hidden folders (.git, .venv);
the Python documentation corpus is `pydoc_data/topics.py` plus the source files of
the named standard-library modules (read with `ast` by the builder, never imported).
A failures source reads no file: its evaluate step becomes an input of the dataset
(`failures.PIPELINE.STEP`), so the dataset's key follows what that step wrote, doit builds
the step first, and the builder finds its entry in `job.inputs`.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

from .errors import a_step, did_you_mean
from .inputs import failures as failures_input
from .nodes import Node, Project, need_step
from .specs import FailuresSource, FilesSource, PydocsSource

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SKIP_PARTS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}
BUILD = "build"
STDLIB_LABEL = "<stdlib>"


def dataset_files(node: Node, root: Path) -> list[list[Path]]:
    """For each source of a dataset node, the sorted files it reads."""
    return [_files(node, i, src, root) for i, src in enumerate(node.spec.sources)]


def label(path: Path, root: Path) -> str:
    """How a source file is named in keys and manifests: relative to the project or the stdlib."""
    for base, prefix in ((root, ""), (STDLIB, STDLIB_LABEL + "/")):
        try:
            return prefix + path.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def _files(node: Node, i: int, src, root: Path) -> list[Path]:
    if isinstance(src, FilesSource):
        return _glob(node, i, src.glob, root)
    if isinstance(src, FailuresSource):
        return []  # an entry of the store, which reaches the builder as an input
    assert isinstance(src, PydocsSource)
    out = [STDLIB / "pydoc_data" / "topics.py"] if src.topics else []
    for j, module in enumerate(src.modules):
        out.extend(_module_files(node, (i, "modules", j), module))
    return out


def _glob(node: Node, i: int, pattern: str, root: Path) -> list[Path]:
    where = ("sources", i, "glob")
    if os.path.isabs(pattern) or ".." in Path(pattern).parts:
        how = "an absolute path" if os.path.isabs(pattern) else "a path that leaves the project through '..'"
        raise node.error(where, "a glob relative to the project root that stays inside it", f"'{pattern}', {how}",
                         "copy the data into the project, e.g. under data/, and point the glob there")
    if "\0" in pattern:
        shown = pattern.replace("\0", "\\0")
        raise node.error(where, "a glob of file names", f"'{shown}', which holds a NUL character",
                         "remove the NUL character (`\\0` in a quoted YAML string)")
    matches = []
    for name in _names(pattern, root):
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise node.error(where, "files inside the project", f"'{name}', which resolves to {path}",
                             "copy the data into the project instead of linking outside it")
        if path.is_file():
            if path.suffix not in (".txt", ".jsonl"):
                raise node.error(where, "only .txt and .jsonl files", f"'{name}'", "narrow the glob, e.g. `data/*.jsonl`")
            matches.append(path)
    if not matches:
        raise node.error(where, "a glob that matches at least one .txt or .jsonl file", f"no file matching '{pattern}'",
                         "check the pattern; it is relative to the project root")
    return matches


def _names(pattern: str, root: Path) -> list[str]:
    """What `glob.glob(pattern, root_dir=root, recursive=True)` finds, except that a wildcard in
    the first part of the pattern never enters build/ (`**/*.jsonl` would otherwise walk the
    whole store and read the datasets Ingot wrote). Hidden folders are skipped by glob itself."""
    while pattern.startswith("./"):
        pattern = pattern[2:]
    first, _, rest = pattern.partition("/")
    if not glob.has_magic(first) or not rest and first != "**":
        return sorted(glob.glob(pattern, root_dir=root, recursive=True))
    names = [n for n in glob.glob("*" if first == "**" else first, root_dir=root) if n != BUILD]
    tops = [n for n in names if os.path.isdir(root / n)]
    sub = pattern if first == "**" else rest  # `**` goes on matching folders inside each one
    out = [f"{top}/{name}" for top in tops for name in glob.glob(sub, root_dir=root / top, recursive=True)]
    if first == "**":  # `**` matching no folder at all
        out += _names(rest, root) if rest else names
    return sorted(set(out))


def _module_files(node: Node, where: tuple, module: str) -> list[Path]:
    base = STDLIB.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return sorted(p for p in base.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(STDLIB).parts))
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    known = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m != module)
    raise node.error(("sources",) + where, "a standard-library module written in Python", f"'{module}'",
                     did_you_mean(module, known) or "remove it; C modules such as 'sys' have no source to read")


# ---------------------------------------------------------------- failures of an evaluate step

def failures(project: Project, node: Node) -> None:
    """Each `type: failures` source of a dataset node: its evaluate step, checked, becomes an
    input of the dataset (`node.deps[failures(STEP)]`)."""
    for i, src in enumerate(node.spec.sources):
        if isinstance(src, FailuresSource):
            _evaluate_step(project, node, i, src)
            node.deps[failures_input(src.from_)] = src.from_


def _evaluate_step(project: Project, node: Node, i: int, src: FailuresSource) -> None:
    where = ("sources", i, "from")
    need_step(project, node, where, src.from_, src.from_)  # the pattern asks for `pipeline.step`
    step = project.nodes[src.from_]
    if step.kind != "evaluate":  # `dataset.NAME` is a dataset's own task name
        raise node.error(where, "an evaluate step that scores a prompt set",
                         f"'{src.from_}', {'a dataset' if step.kind == 'dataset' else a_step(step.kind)}",
                         "name a step of kind `evaluate` as `pipeline.step`")
    scored = step.spec.prompt_set
    if scored is None:
        raise node.error(where, "an evaluate step that scores a prompt set (`prompt_set:`)",
                         f"'{src.from_}', which measures perplexity and speed only ({_at(step)})",
                         f"add `prompt_set: {{dataset: DATASET, scoring: exact}}` to step '{src.from_}'")
    if src.response == "reference" and scored.scoring != "judge":
        raise node.error(("sources", i, "response"), "`expected`, or no `response`: only judge scoring has "
                                                     "reference answers",
                         f"'reference', and '{src.from_}' scores by {scored.scoring} ({_at(step)})",
                         "write `response: expected`, or leave `response` out")


def _at(step: Node) -> str:
    """Where a step is declared, for an error that names it from elsewhere."""
    return f"{step.doc.file}:{step.line()}"


def failure_cycles(project: Project) -> None:
    """Refuse a failures source whose evaluate step depends on the dataset itself: it measures
    a model trained (or evaluated) on the failures it is to find. Named on the source, with the
    whole loop. Run before the general cycle check, and again once the steps are resolved: the
    datasets of a curriculum become inputs of their train step only then."""
    for node in project.nodes.values():
        if node.kind != "dataset":
            continue
        for i, src in enumerate(node.spec.sources):
            loop = _path(project, src.from_, node.task) if isinstance(src, FailuresSource) else None
            if loop:
                raise node.error(("sources", i, "from"), "an evaluate step that does not depend on this dataset",
                                 "the cycle " + " -> ".join([node.task, *loop]),
                                 f"evaluate a model that is not trained on dataset '{node.spec.name}' (the one "
                                 "before the targeted training), and train on the failures after it")


def _path(project: Project, start: str, goal: str) -> list[str] | None:
    """The shortest chain of inputs from `start` down to `goal` (both included), or None: a
    breadth-first walk, so a long pipeline costs no recursion."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    for task in queue:
        if task == goal:
            chain = [task]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])
            return chain[::-1]
        for dep in project.nodes[task].deps.values():
            if dep not in parent:
                parent[dep] = task
                queue.append(dep)
    return None
