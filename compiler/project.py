"""Load every manifest under specs/, apply the selected profile, validate and resolve.

Reads: `specs/**/*.yaml` (not `specs/templates/`). Returns a `Project`: the validated
specs and one `Node` per buildable artifact (each dataset, each pipeline step) with
its inputs resolved. Every user mistake raises `SpecError`; nothing is written.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import curation, distillation, evaluation, params, plugins, pretrained, pydantic_errors, sources, training
from .errors import SpecError, a_step, did_you_mean, either, one_of
from .inputs import TOKENIZER, Input, Role
from .nodes import Node, Project, need_step, topo_order
from .specs import KINDS, Manifest, ModelSpec, PipelineSpec
from .yamlfile import Document, fmt_path, read

SPECS = "specs"
SKIP_DIRS = {"templates"}
RESERVED_PIPELINES = {"dataset", "store", "cache"}  # names taken by build/dataset/, build/store/ and build/cache/
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
    problems += _plugin_problems(project)
    if problems:
        raise SpecError(problems)
    if profile is not None and profile not in project.profiles:
        raise _unknown_profile(profile, project.profiles)
    _make_nodes(project)
    _resolve(project)
    for node in list(project.nodes.values()):
        if node.kind == "dataset":
            curation.check(project, node)  # filters: regexes, languages, the tokenizer step they count with
            sources.failures(project, node)  # the evaluate steps of `type: failures` sources are inputs
    training.teacher_deps(project)  # teachers are inputs too: a loop through them is a cycle
    training.check_chain(project)  # before the recursive walks below follow the chains
    sources.failure_cycles(project)  # named on the failures source, before the general check names it elsewhere
    _check_cycles(project)
    for task in topo_order(project):  # in dependency order: a step's `init` or teacher comes first
        node = project.nodes[task]
        if node.kind in RESOLVE:
            RESOLVE[node.kind](project, node)
    sources.failure_cycles(project)  # again: a curriculum's datasets became inputs just now
    for node in project.nodes.values():
        _check_pairing(project, node)
    _share_variants(project)
    return project


def _share_variants(project: Project) -> None:
    """One task `PIPELINE.STEP` for a step of a pipeline with variants that comes out the same
    in every variant: the same kind, spec, models and inputs, once the inputs that are shared
    are named by their shared task. Decided in dependency order, so a step that reads a
    variant's own step stays the variant's. References to the merged tasks are renamed."""
    if not project.variants:
        return
    alias: dict[str, str] = {}
    for task in topo_order(project):
        pipeline, _, step = task.partition(".")
        base = pipeline.partition("@")[0]
        if base not in project.variants or task in alias:
            continue
        group = [f"{base}@{v}.{step}" for v in project.variants[base]]
        if not all(t in project.nodes for t in group):
            continue
        signatures = {_signature(project.nodes[t], alias) for t in group}
        if len(signatures) == 1:
            alias.update({t: f"{base}.{step}" for t in group})
    nodes = {}
    for task, node in project.nodes.items():
        if alias.get(task, task) in nodes:
            continue  # a variant's copy of a shared step: the first one stands for all
        node.task = alias.get(task, task)
        node.deps = {i: alias.get(t, t) for i, t in node.deps.items()}
        node.spec = _renamed(node.spec, alias)
        nodes[node.task] = node
    project.nodes = nodes


def _signature(node: Node, alias: dict[str, str]) -> str:
    spec = _renamed(node.spec, alias).model_dump(mode="json")
    deps = sorted((str(i), alias.get(t, t)) for i, t in node.deps.items())
    models = {f: m.model_dump(mode="json") for f, m in node.models.items()}
    return json.dumps([node.kind, spec, deps, models, node.default], sort_keys=True)


def _renamed(spec, alias: dict[str, str]):
    """`spec` with the task names it holds (a tokens step's tokenizer, a teacher-outputs step's
    teacher) renamed to their shared tasks."""
    update = {f: alias[v] for f in type(spec).model_fields if isinstance(v := getattr(spec, f), str) and v in alias}
    return spec.model_copy(update=update) if update else spec


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
        merged = _overlay(doc, ("profiles", name), overlay)
        merged_spec = _checked(cls, merged.data, merged)
        if name == profile:
            chosen = (merged_spec, merged)
    return chosen[0], chosen[1], set(overlays)


def variants(spec: PipelineSpec, doc: Document) -> dict[str, tuple[PipelineSpec, Document]]:
    """Each variant of a pipeline: its `variants.NAME` overlay merged over the pipeline (after
    the profile's), validated as a pipeline of its own. Every variant is checked."""
    if not spec.variants:
        return {}
    base = Document(doc.file, copy.deepcopy(doc.data), dict(doc.lines), profile=doc.profile,
                    overlaid=dict(doc.overlaid))
    base.data.pop("variants", None)
    out, problems = {}, []
    for name, overlay in spec.variants.items():
        try:
            merged = _overlay(base, ("variants", name), overlay)
            merged.variant = name
            out[name] = (_checked(PipelineSpec, merged.data, merged), merged)
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise SpecError(problems)
    return out


def _checked(cls: type[BaseModel], data: Any, doc: Document) -> Any:
    try:
        spec = cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_errors.problems(exc, cls, doc)) from None
    if isinstance(spec, ModelSpec):
        _check_model(spec, doc)
    return spec


def _overlay(doc: Document, base: tuple, overlay: Any) -> Document:
    """The document with the overlay at `base` (`("profiles", NAME)` or `("variants", NAME)`)
    merged over it; overlaid values keep their lines."""
    if not isinstance(overlay, dict):
        raise SpecError.one(doc.file, doc.line(base), fmt_path(base), "a mapping of fields to override",
                            pydantic_errors.found(overlay))
    profile = base[1] if base[0] == "profiles" else doc.profile
    merged = Document(doc.file, copy.deepcopy(doc.data), dict(doc.lines), profile=profile, overlaid=dict(doc.overlaid))
    merged.data.pop("profiles", None)

    def merge(into: dict, over: dict, path: tuple) -> None:
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v, path + (k,))
            else:
                into[k] = copy.deepcopy(v)
                merged.overlaid[path + (k,)] = base  # errors here are named `profiles.NAME...`

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
    if spec.kind == "pipeline" and spec.variants:
        for variant, (vspec, vdoc) in variants(spec, doc).items():
            project.pipelines[f"{spec.name}@{variant}"] = (vspec, vdoc)
        project.variants[spec.name] = list(spec.variants)
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
    # a plug-in's count is its own `parameter_count`, which the train builder checks against it
    if m.expect_params is not None and not plugins.is_plugin(m.architecture) and \
            (n := params.count(m)) != m.expect_params:
        off = f"{n - m.expect_params:,} too many" if n > m.expect_params else f"{m.expect_params - n:,} too few"
        raise fail("expect_params", f"{n:,}, the parameter count derived from the architecture",
                   f"{m.expect_params:,}", f"if the architecture is right, set `expect_params: {n}`; "
                   f"if {m.expect_params:,} is right, the architecture has {off}")


def _plugin_problems(project: Project) -> list:
    """Each model manifest naming a plug-in architecture: its file inside the project, parsing, and
    defining the class at its top level (compiler/plugins.py). Never imported here."""
    problems = []
    for name, (m, doc) in project.models.items():
        if plugins.is_plugin(m.architecture):
            try:
                plugins.check(Node(f"model.{name}", "model", m, doc, ()), ("architecture",), m.architecture,
                              project.root)
            except SpecError as exc:
                problems += exc.problems
    return problems


def _nearest_divisors(total: int, near: int, k: int = 3) -> list[int]:
    """The k divisors of `total` closest to what the user wrote: the likely intended values."""
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    return sorted(divisors, key=lambda d: (abs(d - near), d))[:k]


def _make_nodes(project: Project) -> None:
    for name, (spec, doc) in project.datasets.items():
        project.nodes[f"dataset.{name}"] = Node(f"dataset.{name}", "dataset", spec, doc, ())
    for pname, (pipe, doc) in project.pipelines.items():
        if pname in project.variants:
            continue  # built as its variants, `pname@VARIANT`
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
