"""Load every manifest under specs/, apply the selected profile, validate and resolve.

Reads: `specs/**/*.yaml` (not `specs/templates/`). Returns a `Project`: the validated
specs and one `Node` per buildable artifact (each dataset, each pipeline step) with
its inputs resolved. Every user mistake raises `SpecError`; nothing is written.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import curation, distillation, evaluation, params, pretrained, pydantic_errors, training
from .errors import SpecError, a_step, did_you_mean, either, one_of
from .inputs import TOKENIZER, Input, Role
from .nodes import Node, Project, need_step, topo_order
from .specs import KINDS, Manifest, ModelSpec
from .yamlfile import Document, fmt_path, read

SPECS = "specs"
SKIP_DIRS = {"templates"}
RESERVED_PIPELINES = {"dataset", "store"}  # names taken by build/dataset/ and build/store/
RESOLVE = {**training.RESOLVE, **distillation.RESOLVE, **evaluation.RESOLVE}  # kind -> its compile-time resolution and checks


def load(root: Path, profile: str | None = None) -> Project:
    root = Path(root).resolve()
    project = Project(root, profile)
    files = sorted(p for p in (root / SPECS).rglob("*.y*ml") if p.suffix in (".yaml", ".yml")
                   and not SKIP_DIRS & set(p.relative_to(root / SPECS).parts[:-1]) and not p.is_dir())
    # each file on its own: a typo in one must not hide the problems of the others
    problems = []
    for path in files:
        try:
            _add(project, _validate(read(path, str(path.relative_to(root))), profile))
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise SpecError(problems)
    if profile is not None and profile not in project.profiles:
        raise _unknown_profile(profile, project.profiles)
    _make_nodes(project)
    _resolve(project)
    for node in list(project.nodes.values()):
        if node.kind == "dataset":
            curation.check(project, node)  # filters: regexes, languages, the tokenizer step they count with
    training.teacher_deps(project)  # teachers are inputs too: a loop through them is a cycle
    training.check_chain(project)  # before the recursive walks below follow the chains
    _check_cycles(project)
    for task in topo_order(project):  # in dependency order: a step's `init` or teacher comes first
        node = project.nodes[task]
        if node.kind in RESOLVE:
            RESOLVE[node.kind](project, node)
    for node in project.nodes.values():
        _check_pairing(project, node)
    return project


def _unknown_profile(profile: str, declared: set[str]) -> SpecError:
    if not declared:
        return SpecError.one("command line", None, "profile", "a profile declared under `profiles:` in some manifest",
                             f"'{profile}', and no manifest declares any profile",
                             f"run `doit` without profile=, or add `profiles: {{{profile}: ...}}` to a manifest")
    return SpecError.one("command line", None, "profile", f"a profile some manifest declares ({one_of(declared)})",
                         f"'{profile}'", did_you_mean(profile, declared) or f"use profile={sorted(declared)[0]}, "
                         "or run `doit` without profile=")


# ---------------------------------------------------------------- one document

def _validate(doc: Document, profile: str | None) -> tuple[Manifest, Document, set[str]]:
    data = doc.data
    if not isinstance(data, dict):
        raise SpecError.one(doc.file, 1, "", "a mapping with `kind:` and `name:`",
                            "an empty file" if data is None else pydantic_errors.found(data),
                            "start the file with `kind: dataset`, `kind: model` or `kind: pipeline`")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:  # a list or mapping is not even hashable
        raise SpecError.one(doc.file, doc.line(("kind",)), "kind", one_of(KINDS),
                            pydantic_errors.found(kind) if "kind" in data else "nothing",
                            did_you_mean(kind, KINDS) if isinstance(kind, str) else "add `kind: dataset`, `kind: model` or `kind: pipeline`")
    cls = KINDS[kind]
    overlays = data.get("profiles") or {}
    if not isinstance(overlays, dict):
        overlays = {}  # pydantic reports the wrong type below
    spec = _checked(cls, data, doc)
    chosen = (spec, doc)
    # Every overlay is checked, selected or not: a typo in the `ci` profile must fail on
    # the laptop too, not first in CI.
    for name, overlay in overlays.items():
        merged = _overlay(doc, name, overlay)
        merged_spec = _checked(cls, merged.data, merged)
        if name == profile:
            chosen = (merged_spec, merged)
    return chosen[0], chosen[1], set(overlays)


def _checked(cls: type[BaseModel], data: Any, doc: Document) -> Any:
    try:
        spec = cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_errors.problems(exc, cls, doc)) from None
    if isinstance(spec, ModelSpec):
        _check_model(spec, doc)
    return spec


def _overlay(doc: Document, name: str, overlay: Any) -> Document:
    """The document with profile `name` merged over it; overlaid values keep their lines."""
    base = ("profiles", name)
    if not isinstance(overlay, dict):
        raise SpecError.one(doc.file, doc.line(base), fmt_path(base), "a mapping of fields to override",
                            pydantic_errors.found(overlay))
    merged = Document(doc.file, copy.deepcopy(doc.data), dict(doc.lines), profile=name)
    merged.data.pop("profiles", None)

    def merge(into: dict, over: dict, path: tuple) -> None:
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v, path + (k,))
            else:
                into[k] = copy.deepcopy(v)
                merged.overlaid.add(path + (k,))  # errors here are named `profiles.NAME...`

    merge(merged.data, overlay, ())
    # every value the overlay writes keeps its own line: one pass over the lines, not one per key
    merged.lines.update({p[len(base):]: line for p, line in doc.lines.items() if p[:len(base)] == base})
    return merged


def _add(project: Project, validated: tuple[Manifest, Document, set[str]]) -> None:
    spec, doc, profiles = validated
    project.profiles |= profiles
    table = {"dataset": project.datasets, "model": project.models, "pipeline": project.pipelines}[spec.kind]
    if spec.name in table:
        first = table[spec.name][1]
        raise SpecError.one(doc.file, doc.line(("name",)), "name", f"a {spec.kind} name not used before",
                            f"'{spec.name}', already the name of the {spec.kind} in {first.file}:{first.line(('name',))}",
                            "rename one of them")
    if spec.kind == "pipeline" and spec.name in RESERVED_PIPELINES:
        raise SpecError.one(doc.file, doc.line(("name",)), "name",
                            f"a pipeline name other than {either(RESERVED_PIPELINES)}", f"'{spec.name}'",
                            f"rename the pipeline: build/{spec.name}/ is Ingot's own folder")
    table[spec.name] = (spec, doc)


# ---------------------------------------------------------------- checks

def _check_model(m: ModelSpec, doc: Document) -> None:
    def fail(f: str, expected: str, found: str, fix: str) -> SpecError:
        return SpecError.one(doc.file, doc.line((f,)), doc.field((f,)), expected, found, fix)

    # transformers' LlamaConfig needs heads | hidden_size even when head_dim is set; Qwen2's and
    # Mistral's need only a head_dim, given when hidden_size / heads is not a whole number.
    if m.hidden_size % m.heads and m.architecture == "llama":
        raise fail("heads", f"a divisor of hidden_size ({m.hidden_size})", str(m.heads),
                   f"use {either(_nearest_divisors(m.hidden_size, m.heads))}")
    if m.head_dim is None:
        raise fail("heads", f"a divisor of hidden_size ({m.hidden_size}), or a `head_dim`", str(m.heads),
                   f"use {either(_nearest_divisors(m.hidden_size, m.heads))}, or set `head_dim` (the width of "
                   f"one head, e.g. {max(1, m.hidden_size // m.heads)})")
    if m.heads % m.kv_heads:
        raise fail("kv_heads", f"a divisor of heads ({m.heads})", str(m.kv_heads),
                   f"use {either(_nearest_divisors(m.heads, m.kv_heads))}")
    if m.expect_params is not None and (n := params.count(m)) != m.expect_params:
        off = f"{n - m.expect_params:,} too many" if n > m.expect_params else f"{m.expect_params - n:,} too few"
        raise fail("expect_params", f"{n:,}, the parameter count derived from the architecture",
                   f"{m.expect_params:,}", f"if the architecture is right, set `expect_params: {n}`; "
                   f"if {m.expect_params:,} is right, the architecture has {off}")


def _nearest_divisors(total: int, near: int, k: int = 3) -> list[int]:
    """The k divisors of `total` closest to what the user wrote: the likely intended values."""
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    return sorted(divisors, key=lambda d: (abs(d - near), d))[:k]


def _make_nodes(project: Project) -> None:
    for name, (spec, doc) in project.datasets.items():
        project.nodes[f"dataset.{name}"] = Node(f"dataset.{name}", "dataset", spec, doc, ())
    for pname, (pipe, doc) in project.pipelines.items():
        for sname, step in pipe.steps.items():
            task = f"{pname}.{sname}"
            project.nodes[task] = Node(task, step.kind, step, doc, ("steps", sname), pipe.default)


def _resolve(project: Project) -> None:
    for node in project.nodes.values():
        for fname, info in type(node.spec).model_fields.items():
            kind = (info.json_schema_extra or {}).get("ref")
            value = getattr(node.spec, fname)
            if value is None:  # an optional reference left out
                continue
            if kind == "dataset":
                _need(node, fname, value, project.datasets, "dataset")
                node.deps[Input(Role(fname))] = f"dataset.{value}"
            elif kind == "model":
                _need(node, fname, value, project.models, "model")
                node.models[fname] = project.models[value][0]
            elif kind == "step":
                task = node.step_task(value)
                if task == node.task:
                    raise node.error((fname,), "another step", f"'{value}', the step itself",
                                     "a step cannot consume its own output; name the step it builds on")
                need_step(project, node, fname, value, task)
                node.deps[Input(Role(fname))] = task


def _need(node: Node, fname: str, name: str, table: Any, what: str) -> None:
    if name in table:
        return
    names = list(table)
    raise node.error((fname,), f"the name of a {what} ({one_of(names) if names else f'none is declared under {SPECS}/'})",
                     f"'{name}'", did_you_mean(name, names) or f"declare a {what} named '{name}', or fix the name")


def _check_pairing(project: Project, node: Node) -> None:
    """A model paired with a tokenizer must have room for every token id."""
    model, tok_task = node.models.get("model"), node.deps.get(TOKENIZER)
    if model is None or tok_task is None:
        return
    tok = project.nodes[tok_task]
    if tok.kind not in ("tokenizer", "pretrained"):  # the builder would look for a tokenizer.json that is not there
        raise node.error(("tokenizer",), "a tokenizer or pretrained step",
                         f"'{getattr(node.spec, 'tokenizer')}', {a_step(tok.kind)}",
                         "name a step of kind `tokenizer`, or a `pretrained` one (its tokenizer)")
    size = pretrained.tokenizer_size(project, tok_task)
    if size is not None and size > model.vocab_size:
        name = model.name
        at = f" ({project.models[name][1].file}:{project.models[name][1].line(('vocab_size',))})" if name in project.models else ""
        lower = "lower the tokenizer's vocab_size" if tok.kind == "tokenizer" and tok.spec.trained() else "use its own tokenizer"
        raise node.error(("model",), f"a model whose vocab_size is at least the tokenizer's ({size:,}, step '{tok_task}')",
                         f"model '{name}' with vocab_size {model.vocab_size:,}",
                         f"raise vocab_size of model '{name}'{at} to {size:,} or more, or {lower}")


def _check_cycles(project: Project) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(task: str, trail: list[str]) -> None:
        if state.get(task) == 2:
            return
        if state.get(task) == 1:
            loop = trail[trail.index(task):] + [task]
            node = project.nodes[trail[-1]]
            where = node.where(next(i for i, t in node.deps.items() if t == task))
            raise node.error(where, "a step that does not depend on itself", "the cycle " + " -> ".join(loop),
                             "one of these steps must take its input from elsewhere")
        state[task] = 1
        for dep in project.nodes[task].deps.values():
            visit(dep, trail + [task])
        state[task] = 2

    for task in project.nodes:
        visit(task, [])
