"""Compile-time resolution and checks of train and export steps (evaluate and report: evaluation.py).

Reads: the resolved project, and for a teacher given by `path:` its `config.json`.
Adds to the graph one `tokens` node per (tokenizer, dataset) pair a train step reads,
named `PIPELINE.TOKENIZER@DATASET` and shared by every step reading that pair, and
fails with a `SpecError` for every mismatch that would otherwise surface hours into
a run: vocabularies, sequence lengths, unknown teachers, stages and datasets.
"""

from __future__ import annotations

import ast
import importlib.util
import json

from . import plugins, pretrained, quants, templates
from .errors import a_step, did_you_mean, one_of
from .inputs import DATA, DATASET, INIT, MODEL, OWN_TEMPLATE, TOKENIZER
from .inputs import teacher as teacher_input
from .inputs import tokens as tokens_input
from .nodes import Node, Project
from .paths import inside
from .specs import DEFAULT_TEMPLATE, ModelSpec, TokensStep

WEIGHT_KINDS = ("init", "train", "pretrained")  # steps whose output is model.safetensors + config.json


def teacher_deps(project: Project) -> None:
    """Teacher steps as inputs of their students, early: the cycle check and the order of
    `resolve` must see them (a teacher is resolved before its student). A teacher that is
    not a step of the project, or is the student itself, is left for `_step_teacher` to name."""
    for node in project.nodes.values():
        distill = getattr(node.spec, "distill", None) if node.kind == "train" else None
        for name, teacher in (distill.teachers.items() if distill else ()):
            task = node.step_task(teacher.step) if teacher.step else None
            if task in project.nodes and task != node.task:
                node.deps[teacher_input(name)] = task


MAX_CHAIN = 256  # steps each consuming the one before; the graph's recursive walks follow such chains


def check_chain(project: Project) -> None:
    """Refuse a chain of more than MAX_CHAIN steps each consuming the one before: beyond any
    pipeline, and deeper than the cycle check and the ordering (recursive walks) can follow.
    Walked with an explicit stack; an edge back into the current path (a cycle, reported by the
    cycle check) counts for nothing here."""
    depth: dict[str, int] = {}
    for start in project.nodes:
        path, stack = {start}, [(start, iter(project.nodes[start].deps.values()))]
        while stack:
            task, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                path.discard(task)
                _chain_at(project, task, depth, path)
            elif dep not in depth and dep not in path:
                path.add(dep)
                stack.append((dep, iter(project.nodes[dep].deps.values())))


def _chain_at(project: Project, task: str, depth: dict[str, int], path: set[str]) -> None:
    node = project.nodes[task]
    below = {f: depth.get(d, 0) for f, d in node.deps.items() if d not in path}
    depth[task] = 1 + max(below.values(), default=0)
    if depth[task] > MAX_CHAIN:
        raise node.error(node.where(max(below, key=below.get)), f"a chain of at most {MAX_CHAIN} steps, each consuming the one before",
                         f"{depth[task]:,} steps from '{task}' down", "start from a step nearer the beginning: "
                         f"no pipeline needs more than a few stages, and {MAX_CHAIN} is the most Ingot follows")


def model_of(project: Project, task: str) -> ModelSpec:
    """The model spec behind an init or train step's weights."""
    return project.nodes[task].models["model"]


def weights_step(project: Project, node: Node, where: tuple, task: str, value: str) -> None:
    kind = project.nodes[task].kind
    if kind not in WEIGHT_KINDS:
        raise node.error(where, "an init, train or pretrained step (a step that makes model weights)",
                         f"'{value}', {a_step(kind)}", "name a step of kind `init`, `train` or `pretrained`")


def _tokenizer(project: Project, node: Node) -> None:
    """The tokenizer builder learns its vocabulary from each record's `text`, which the records
    of an instruction/response dataset do not have."""
    if not node.spec.trained():
        pretrained.resolve_loaded_tokenizer(project, node)
        return
    name = node.spec.dataset
    dataset, doc = project.datasets[name]
    if dataset.chat():
        field = "fields" if dataset.sources[0].type == "files" else "records"
        at = f"{doc.file}:{doc.line(('sources', 0, field))}"
        raise node.error(("dataset",), f"a dataset of texts (tokenizer step '{node.task}' learns its vocabulary "
                                       "from the `text` of each record)",
                         f"dataset '{name}', whose records are instruction/response pairs ({at})",
                         "train the tokenizer on a dataset of texts, such as the corpus the model is pretrained on; "
                         "train steps can then read the instruction/response dataset with it")


def has_validation(project: Project, node: Node, where: tuple, name: str, why: str) -> None:
    """A step that measures on the validation split of dataset `name` needs one."""
    dataset, doc = project.datasets[name]
    if dataset.split.validation == 0:
        at = f"{doc.file}:{doc.line(('split', 'validation'))}"
        raise node.error(where, f"a dataset with a validation split ({why})",
                         f"dataset '{name}' with `split.validation: 0` ({at})",
                         f"hold out part of dataset '{name}', e.g. `split: {{validation: 0.05}}`")


def resolve_train(project: Project, node: Node) -> None:
    """A train step's model, datasets, tokens, length and LoRA (its teachers: compiler.distillation)."""
    spec = node.spec
    if (spec.model is None) == (spec.init is None):
        raise node.error(("model",), "exactly one of `model` (a fresh start) or `init` (a step's weights)",
                         "both" if spec.model else "neither",
                         "keep one of them" if spec.model else "add `model: MODEL` or `init: STEP`")
    if spec.init is not None:
        weights_step(project, node, ("init",), node.deps[INIT], spec.init)
        _same_tokenizer(project, node, node.deps[INIT])
        node.models["model"] = model_of(project, node.deps[INIT])
    model = node.models["model"]
    _lora(node, model)
    _distributed(node)
    _optimizer(project, node, model)
    check_seq_len(project, node, ("seq_len",), spec.seq_len, model)
    datasets = _datasets(project, node)
    first = [spec.data] if spec.data is not None else list(spec.stages[0].datasets)
    for name in first:  # the validation loss is measured on the first stage's mixture
        where = ("data",) if spec.data is not None else ("stages", 0, "datasets", name)
        has_validation(project, node, where, name, "the step measures validation loss on it every eval.every steps")
    template = _chat_template(project, node, datasets)
    tok_task = node.deps[TOKENIZER]
    node.deps.pop(DATA, None)
    for name in datasets:
        chat = template if project.datasets[name][0].chat() else None
        node.deps[tokens_input(name)] = tokens_node(project, node, tok_task, name, chat)
    _check_length(node)
    unique_names(node, spec.stages, ("stages",), "stage")


# the linear layers of every decoder layer, by module name: what LoRA can put adapters on
LORA_MODULES = {arch: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                for arch in ("llama", "qwen2", "mistral")}


def _lora(node: Node, model: ModelSpec) -> None:
    """LoRA fine-tunes existing weights through adapters on named linear layers; QLoRA is LoRA
    over a 4-bit base, so it needs `lora:` too."""
    spec = node.spec
    if spec.quantize_base is not None and spec.lora is None:
        raise node.error(("quantize_base",), "`lora:` beside `quantize_base` (QLoRA trains adapters over a 4-bit "
                                             "base, which stays frozen)",
                         f"quantize_base: {spec.quantize_base} without `lora:`",
                         "add `lora: {r: 16}`, or remove `quantize_base` to train every weight")
    if spec.lora is None:
        return
    if spec.init is None:
        raise node.error(("lora",), "`init:` with `lora:` (LoRA fine-tunes existing weights: only the adapters "
                                    "train, so the random weights of a fresh model would stay random)",
                         f"`model: {spec.model}`, a fresh start",
                         f"start from trained weights with `init: STEP` in place of `model: {spec.model}`, or "
                         "remove `lora:` to train every weight")
    modules = LORA_MODULES.get(model.architecture)
    if modules is None:
        raise node.error(("lora",), f"a model of an architecture whose layers LoRA knows ({one_of(LORA_MODULES)})",
                         f"model '{model.name}' of architecture '{model.architecture}'",
                         "remove `lora:` to train every weight")
    seen: set[str] = set()
    for i, name in enumerate(spec.lora.targets):
        where = ("lora", "targets", i)
        if name not in modules:
            raise node.error(where, f"a linear layer of every {model.architecture} decoder layer ({one_of(modules)})",
                             f"'{name}'", did_you_mean(name, modules) or "name one of them")
        if name in seen:
            raise node.error(where, "each module once", f"'{name}' a second time", "remove the repeated entry")
        seen.add(name)


def _distributed(node: Node) -> None:
    """Each micro-batch is split evenly over the processes; QLoRA's 4-bit base is one GPU's."""
    spec, d = node.spec, node.spec.distributed
    if d is None:
        return
    world = d.world()
    if spec.batch_size % world:
        near = [n for n in ((spec.batch_size // world) * world, (spec.batch_size // world + 1) * world) if n]
        raise node.error(("batch_size",), f"a multiple of the {world} processes of `distributed` "
                                          f"({d.nproc_per_node} per node × {d.nnodes} node{'s' if d.nnodes > 1 else ''}): "
                                          "each takes an equal share of every micro-batch",
                         f"{spec.batch_size}", f"use batch_size {' or '.join(map(str, near))}, or change nproc_per_node")
    if spec.quantize_base is not None:
        raise node.error(("distributed",), "one process with `quantize_base` (QLoRA holds its 4-bit base on one GPU)",
                         f"distributed over {world} processes", "remove `distributed:`, or `quantize_base` to "
                                                                "train LoRA adapters over a full-precision base")
    if d.strategy == "fsdp" and spec.optimizer.kind == "muon":
        # torch.optim.Muon has no code for sharded parameters; through DTensor's operators a tall
        # matrix's orthogonalized update came out wrong (tests/test_optim.py names the check)
        raise node.error(("optimizer", "kind"), "an optimizer that works on FSDP's sharded parameters: Muon "
                                                "orthogonalizes whole matrices, which FSDP splits over the processes",
                         "kind muon with `distributed: {strategy: fsdp}`",
                         "use `strategy: ddp` (every process holds whole matrices), or another optimizer kind")


# the optimizer fields that belong to some kinds only ("plug-in": a `module:PATH:CLASS` kind)
OPTIMIZER_FIELDS = {"momentum": ("sgd",), "nesterov": ("sgd",), "muon": ("muon",), "betas": ("adamw", "muon"),
                    "eps": ("adamw", "muon"), "options": ("plug-in",)}


def _optimizer(project: Project, node: Node, model: ModelSpec) -> None:
    """Each optimizer field belongs to the kinds that read it; a plug-in optimizer's file is
    checked; QK-clip needs attention weights it can scale."""
    o = node.spec.optimizer
    plugin = plugins.is_plugin(o.kind)
    if plugin:
        plugins.check(node, ("optimizer", "kind"), o.kind, project.root)
    kind = "plug-in" if plugin else o.kind
    for name, kinds in OPTIMIZER_FIELDS.items():
        if name in o.model_fields_set and kind not in kinds:
            raise node.error(("optimizer", name), f"`{name}` only with {_kinds(kinds)}", f"`kind: {o.kind}`",
                             _misplaced_fix(name, kinds, plugin))
    if o.kind == "sgd" and o.nesterov and o.momentum == 0:
        raise node.error(("optimizer", "nesterov"), "momentum above 0 with `nesterov: true` (Nesterov's look-ahead "
                                                    "follows the momentum)", "momentum 0",
                         "give `momentum:` (e.g. 0.9), or remove `nesterov`")
    if o.qk_clip is not None:
        _qk_clip(project, node, model)


def _kinds(kinds: tuple[str, ...]) -> str:
    return " or ".join("a plug-in `kind: module:PATH:CLASS`" if k == "plug-in" else f"`kind: {k}`" for k in kinds)


def _misplaced_fix(name: str, kinds: tuple[str, ...], plugin: bool) -> str:
    if plugin:
        return f"give a plug-in's settings in `options`, e.g. `options: {{{name}: ...}}`"
    if name == "options":
        return "remove `options`: the settings of Ingot's own kinds are fields of `optimizer:`"
    also = " (Muon's own momentum is `muon.momentum`)" if name in ("momentum", "nesterov") else ""
    return f"remove `{name}`, or set {_kinds(kinds)}{also}"


def _qk_clip(project: Project, node: Node, model: ModelSpec) -> None:
    """QK-clip scales the query and key weights: trainable ones, of attention it can find."""
    tau = node.spec.optimizer.qk_clip
    if node.spec.lora is not None:
        raise node.error(("optimizer", "qk_clip"), "no `qk_clip` with `lora:` (QK-clip scales the query and key "
                                                   "weights, which LoRA keeps frozen)",
                         f"qk_clip: {tau:g} with `lora:`", "remove `qk_clip`, or `lora:` to train every weight")
    if not plugins.is_plugin(model.architecture):
        return
    rel, name = plugins.parse(model.architecture)
    if "qk_clip_targets" in plugin_methods(project.root / rel, name):
        return
    doc = project.models[model.name][1]
    raise node.error(("optimizer", "qk_clip"), "a model whose attention QK-clip can reach: of architecture llama, "
                                               "qwen2 or mistral, or a plug-in whose class defines `qk_clip_targets`",
                     f"model '{model.name}' ({doc.file}:{doc.line(('architecture',))}) of the plug-in architecture "
                     f"{model.architecture}, whose class defines no `qk_clip_targets`",
                     f"define `qk_clip_targets()` in class {name} of {rel} (README, Optimizers), or remove `qk_clip`")


def _same_tokenizer(project: Project, node: Node, weights: str) -> None:
    """Weights learned with one tokenizer's ids would read another's as noise."""
    theirs, ours = pretrained.tokenizer_of(project, weights), node.deps[TOKENIZER]
    if theirs != ours:
        raise node.error(("init",), f"weights made for this step's tokenizer ('{ours}')",
                         f"'{node.spec.init}', whose weights were made for tokenizer '{theirs}'",
                         f"set `tokenizer: {theirs}` here, or start from weights made for '{ours}'")


def check_seq_len(project: Project, node: Node, where: tuple, seq_len: int, model: ModelSpec) -> None:
    if seq_len > model.max_positions:
        doc = project.models[model.name][1]  # the other fix goes in the model's file, so say where that is
        at = f"{doc.file}:{doc.lines[('max_positions',)]}" if ("max_positions",) in doc.lines else doc.file
        raise node.error(where, f"at most the model's max_positions ({model.max_positions:,}, model '{model.name}')",
                         f"{seq_len:,}", f"lower seq_len to {model.max_positions:,} or less, "
                                         f"or raise max_positions of model '{model.name}' ({at})")


def _datasets(project: Project, node: Node) -> list[str]:
    spec = node.spec
    if (spec.data is None) == (not spec.stages):
        raise node.error(("data",), "exactly one of `data` (one dataset) or `stages` (a curriculum)",
                         "both" if spec.data else "neither",
                         "keep one of them" if spec.data else "add `data: DATASET` or `stages:`")
    if spec.data is not None:
        return [spec.data]
    names: list[str] = []
    for i, stage in enumerate(spec.stages):
        for name in stage.datasets:
            if name not in project.datasets:
                known = list(project.datasets)
                raise node.error(("stages", i, "datasets", name),
                                 f"the name of a dataset ({one_of(known) if known else 'none is declared'})",
                                 f"'{name}' in stage '{stage.name}'",
                                 did_you_mean(name, known) or f"declare a dataset named '{name}', or fix the name")
            if name not in names:
                names.append(name)
        if stage.seq_len is not None:
            check_seq_len(project, node, ("stages", i, "seq_len"), stage.seq_len, node.models["model"])
    return names


def _chat_template(project: Project, node: Node, datasets: list[str]) -> str | None:
    """The chat template the step's instruction/response datasets are rendered with (None when
    all are texts); `objective: sft` needs every dataset to be instruction/response."""
    spec = node.spec
    if spec.objective == "sft":
        for name in datasets:
            if not project.datasets[name][0].chat():
                where = ("data",) if spec.data is not None else ("stages",)
                raise node.error(where, "instruction/response datasets, since `objective: sft` learns "
                                        "responses only", f"dataset '{name}', which gives texts",
                                 f"map its records with `fields: {{instruction: NAME, response: NAME}}` "
                                 f"in dataset '{name}', or use `objective: pretrain`")
    if not any(project.datasets[name][0].chat() for name in datasets):
        return None
    node.spec = spec = default_template(project, node, node.deps[TOKENIZER])
    if spec.chat_template != OWN_TEMPLATE:
        template_file(project, node, spec.chat_template)
    return spec.chat_template


def default_template(project: Project, node: Node, tok_task: str):
    """The step's spec with its chat template resolved: the one it names, else the tokenizer's own
    (`@tokenizer`) when the tokenizer comes with one (a pretrained or loaded one), else Ingot's
    specs/templates/chat.jinja."""
    if node.spec.chat_template is not None:
        return node.spec
    own = pretrained.own_tokenizer(project, tok_task)
    return node.spec.model_copy(update={"chat_template": OWN_TEMPLATE if own else DEFAULT_TEMPLATE})


def tokens_node(project: Project, step: Node, tok_task: str, dataset: str, template: str | None) -> str:
    task = f"{tok_task}@{dataset}"
    if task not in project.nodes:
        tok = project.nodes[tok_task]
        spec = TokensStep(kind="tokens", dataset=dataset, tokenizer=tok_task, chat_template=template)
        node = Node(task, "tokens", spec, tok.doc, tok.path, tok.default)
        node.deps = {DATASET: f"dataset.{dataset}", TOKENIZER: tok_task}
        project.nodes[task] = node
    elif project.nodes[task].spec.chat_template != template:
        # one tokens entry per (tokenizer, dataset): every step reading it renders the same way
        other = project.nodes[task].spec.chat_template
        raise step.error(("chat_template",), f"the chat template other steps read dataset '{dataset}' "
                                             f"with ('{other}')", f"'{template}'",
                         "use one chat template per tokenizer and dataset")
    return task


def _check_length(node: Node) -> None:
    spec = node.spec
    lengths = {"max_steps": spec.max_steps,
               "stages": sum(s.steps for s in spec.stages) if spec.stages else None,
               "distill.phases": sum(p.steps for p in spec.distill.phases) if spec.distill else None}
    given = {k: v for k, v in lengths.items() if v is not None}
    if spec.epochs is not None:
        if given:
            said = ", ".join(f"{k} {v:,}" for k, v in given.items())
            raise node.error(("epochs",), "the length of training given once", f"epochs {spec.epochs:g} and {said}",
                             "keep `epochs`, or the steps, not both")
        return
    if not given:
        raise node.error(("max_steps",), "the length of training: `max_steps`, `epochs`, or the steps of stages "
                                         "or phases", "none of them", "add `max_steps: N` or `epochs: N`")
    if len(set(given.values())) > 1:
        said = ", ".join(f"{k} {v:,}" for k, v in given.items())
        raise node.error((next(iter(given)),), "one length of training from every place that gives one",
                         said, "make them agree, or leave max_steps out")


def unique_names(node: Node, items: tuple, field: tuple, label: str) -> None:
    """Metrics and reports tell stages (phases) apart by name; an unnamed one is `stage N`."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.name or f"{label} {i + 1}"
        if name in seen:
            raise node.error(field + (i, "name"), f"a {label} name no other {label} has (metrics and the report "
                                                  f"tell {label}s apart by name)",
                             f"'{name}', the name of {label} {seen[name] + 1} too", "rename one of them")
        seen[name] = i


def _export(project: Project, node: Node) -> None:
    weights_step(project, node, ("model",), node.deps[MODEL], node.spec.model)
    node.models["model"] = model_of(project, node.deps[MODEL])
    node.deps[TOKENIZER] = pretrained.tokenizer_of(project, node.deps[MODEL])
    node.spec = default_template(project, node, node.deps[TOKENIZER])
    if node.spec.chat_template != OWN_TEMPLATE:
        template_file(project, node, node.spec.chat_template)
    if node.spec.adapter:
        _adapter(project, node)
    plugin = plugins.is_plugin(node.models["model"].architecture)
    if plugin:
        _plugin_exporter(project, node, node.models["model"])
    if node.spec.format == "gguf":
        if not node.spec.adapter and not plugin:  # an adapter's matrices (rank r) are not the model's
            _gguf(project, node)
        if node.spec.display_name is None:  # resolved here, so the name in the files is in the key
            node.spec = node.spec.model_copy(update={"display_name": node.models["model"].name})
    else:
        for name in ("types", "strict", "display_name"):
            if name in node.spec.model_fields_set:
                value = getattr(node.spec, name)
                raise node.error((name,), f"no `{name}` for format 'hf' (a Hugging Face folder keeps the "
                                 "weights as they are)", f"{name}: {json.dumps(list(value) if isinstance(value, tuple) else value)}",
                                 f"set `format: gguf` to write GGUF files, or remove `{name}`")


EXPORTERS = {"hf": ("export_hf", "a Hugging Face folder", "(self, folder)"),
             "gguf": ("export_gguf", "GGUF files", "(self, folder, files, metadata)")}


def _plugin_exporter(project: Project, node: Node, model: ModelSpec) -> None:
    """A plug-in architecture is written out by its own method (`export_hf`, `export_gguf`) or not at
    all: Ingot's exporters know the tensors of llama, qwen2 and mistral only. The method is looked
    for in the class and the base classes the plug-in's file defines (never imported here)."""
    method, what, signature = EXPORTERS[node.spec.format]
    rel, name = plugins.parse(model.architecture)
    if method in plugin_methods(project.root / rel, name):
        return
    doc = project.models[model.name][1]
    raise node.error(("format",), f"a model Ingot can write as {what}: of architecture llama, qwen2 or mistral, "
                                  f"or of a plug-in whose class defines `{method}`",
                     f"model '{model.name}' ({doc.file}:{doc.line(('architecture',))}) of the plug-in architecture "
                     f"{model.architecture}, whose class {name} defines no `{method}`",
                     f"define `def {method}{signature}` in class {name} of {rel} (README: \"Plug-in "
                     f"architectures\"), or remove this export")


def plugin_methods(path, name: str) -> set[str]:
    """Names of the functions class `name` of the module at `path` defines, with those of the base
    classes defined in the same module (a base imported from elsewhere is not followed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    out: set[str] = set()
    todo, seen = [name], set()
    while todo:
        cls = classes.get(todo.pop())
        if cls is None or cls.name in seen:
            continue
        seen.add(cls.name)
        out |= {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        todo += [b.id for b in cls.bases if isinstance(b, ast.Name)]
    return out


def _init_step(project: Project, node: Node) -> None:
    """An init step writes the tensors of `compiler.params`' table: llama, qwen2 and mistral only."""
    model = node.models["model"]
    if not plugins.is_plugin(model.architecture):
        return
    doc = project.models[model.name][1]
    raise node.error(("model",), "a model of architecture llama, qwen2 or mistral (an init step writes their "
                                 "tensors from Ingot's table)",
                     f"model '{model.name}' ({doc.file}:{doc.line(('architecture',))}) of the plug-in architecture "
                     f"{model.architecture}",
                     f"start a train step from `model: {model.name}` instead (a plug-in initializes its own weights "
                     "there, under the step's seed), and remove this init step")


ADAPTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what llama.cpp's convert_lora_to_gguf.py writes


def _adapter(project: Project, node: Node) -> None:
    """`adapter: true` exports the adapter of a LoRA train step, in a GGUF type llama.cpp's
    LoRA adapters come in."""
    source = project.nodes[node.deps[MODEL]]
    if source.kind != "train" or source.spec.lora is None:
        found = f"{a_step(source.kind)}" if source.kind != "train" else "a train step without `lora:`"
        raise node.error(("adapter",), "a LoRA train step as `model:` (one with `lora:`, whose adapter "
                                       "`adapter: true` exports)", f"model '{node.spec.model}', {found}",
                         "point `model:` at a train step with `lora:`, or remove `adapter: true` to export the "
                         "whole model")
    if node.spec.format != "gguf":
        return
    for where, name in _each_type(node):
        if name not in ADAPTER_TYPES:
            raise node.error(where, f"a type of GGUF LoRA adapters ({one_of(ADAPTER_TYPES)})", f"'{name}'",
                             "quantize the base model's GGUF file instead: llama.cpp applies an adapter of "
                             "these types over a base of any type")


def _each_type(node: Node):
    """(where, type) of each GGUF type the export writes, each named once."""
    seen: set[str] = set()
    for i, name in enumerate(node.spec.gguf_types()):
        where = ("types", i) if node.spec.types else ("format",)
        if name in seen:
            raise node.error(where, "each type once", f"'{name}' a second time", "remove the repeated entry")
        seen.add(name)
        yield where, name


def _llama_cpp_computes(project: Project, node: Node, model: ModelSpec) -> None:
    """What llama.cpp would compute otherwise than transformers: it runs Mistral as `llama`, with
    no attention window; applies llama3's RoPE factors (rope_freqs) in its `llama` graph only;
    and builds Qwen2's query projection as wide as hidden_size. Such a file would give other
    logits than the weights, or not load."""
    s = model.rope_scaling
    if model.sliding_window is not None:
        what, field, remove = f"sliding_window {model.sliding_window}", "sliding_window", "`sliding_window`"
    elif model.architecture == "qwen2" and s is not None and s.type == "llama3":
        what, field, remove = "qwen2 with llama3 RoPE scaling", "rope_scaling", "the llama3 `rope_scaling`"
    elif model.architecture == "qwen2" and model.heads * model.head_dim != model.hidden_size:
        what, field = f"qwen2 with heads × head_dim = {model.heads * model.head_dim:,}", "head_dim"
        remove = f"a head_dim other than hidden_size / heads ({model.hidden_size / model.heads:g})"
    else:
        return
    doc = project.models[model.name][1] if model.name in project.models else None
    at = f" ({doc.file}:{doc.line((field,))})" if doc else ""
    raise node.error(("format",), "a model llama.cpp runs as transformers does (it gives Mistral no attention "
                                  "window, llama3 RoPE scaling to Llama and Mistral only, and Qwen2 heads × head_dim "
                                  "= hidden_size)", f"model '{model.name}' with {what}{at}",
                     f"export `format: hf` instead, or train a model without {remove}")


def _gguf(project: Project, node: Node) -> None:
    """Types a GGUF export can write on this machine, and what each does to the model's matrices:
    a warning per type some matrix cannot take, or under `strict` an error."""
    model = node.models["model"]
    _llama_cpp_computes(project, node, model)
    for where, name in _each_type(node):
        gtype = quants.TYPES[name]
        if gtype.writer == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
            legacy = ", ".join(t for t, g in quants.TYPES.items() if g.writer == "gguf-py")
            raise node.error(where, "a type this machine can write (K-quants are made by llama.cpp's quantizer, "
                             "from the llama-cpp-python extra)", f"'{name}', and llama_cpp is not installed",
                             f"install the extra: {quants.LLAMA_INSTALL} (it compiles llama.cpp, about 15 "
                             f"minutes on 2 cores), or ask for a type gguf-py writes: {legacy}")
        misfit = quants.misfits(model, gtype)
        if not misfit:
            continue
        rows = quants.describe(model, misfit)
        fallback = quants.fallback_of(gtype)
        if node.spec.strict:
            raise node.error(where, f"every matrix of model '{model.name}' to take {name} (rows a multiple of "
                             f"{gtype.block}), as `strict: true` asks", f"{len(misfit)} that cannot ({rows})",
                             f"use widths that are multiples of {gtype.block}, drop {name} from `types`, or remove "
                             f"`strict: true` to let them fall back to {fallback}")
        project.warnings.append(node.warning(
            where, f"{name} needs rows that are a multiple of {gtype.block}, and {len(misfit)} matrices of model "
            f"'{model.name}' have others ({rows}); they will be written as {fallback}",
            f"use widths that are multiples of {gtype.block}, or set `strict: true` to make this an error"))


def template_file(project: Project, node: Node, rel: str) -> None:
    path = inside(node, ("chat_template",), rel, project.root)
    if not path.is_file():
        raise node.error(("chat_template",), "a Jinja template file", f"'{rel}', a folder",
                         "name the template file, e.g. specs/templates/chat.jinja")
    problem = templates.chat_problem(path)
    if problem is not None:
        line, message = problem
        where = f"{rel}:{line}" if line else rel
        raise node.error(("chat_template",), "a Jinja chat template that parses", f"{where}: {message}",
                         f"fix the template at {where}")


RESOLVE = {"tokenizer": _tokenizer, "init": _init_step, "train": resolve_train, "export": _export, **pretrained.RESOLVE}  # kind -> its resolution, run by project.load
