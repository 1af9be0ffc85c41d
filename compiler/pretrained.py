"""Compile-time resolution of what exists already: `pretrained` steps and tokenizer steps that
take a tokenizer from `path:` or `hub:`.

Reads: for a folder of the project, its `config.json` (and `tokenizer.json` when a model manifest
is paired with its tokenizer); for a hub model, the same files from huggingface_hub's cache only:
the compiler never reaches the network (a hub model whose config.json is not cached yet declares
its architecture with `model:`), nor imports torch. From `config.json` it derives a `ModelSpec`,
so every check made for a `model:` manifest (vocabularies, sequence lengths, teachers, GGUF row
sizes, parameter counts) is made for a pretrained model too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from .errors import either
from .inputs import TOKENIZER
from .nodes import Node, Project
from .paths import OUTSIDE_FIX, inside
from .specs import ModelSpec

ARCHITECTURES = ("llama", "qwen2", "mistral")  # model_type values of config.json Ingot builds
READ = ("*.safetensors", "*.json", "chat_template.jinja")  # the only files of a folder that are read
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
TOKENIZER_JSON = "tokenizer.json"


def hub_cache() -> Path:
    """huggingface_hub's cache folder, found as huggingface_hub finds it (HF_HUB_CACHE, else
    HF_HOME/hub, else ~/.cache/huggingface/hub), without importing it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def snapshot(hub: str, revision: str) -> Path:
    """The cache folder of one revision of a hub model (`models--ORG--NAME/snapshots/REV`)."""
    return hub_cache() / f"models--{hub.replace('/', '--')}" / "snapshots" / revision


def read_files(folder: Path) -> list[Path]:
    """The files of a Hugging Face folder that a step reads (and whose contents key it), sorted."""
    return sorted({p for pattern in READ for p in folder.glob(pattern) if p.is_file()})


def _local(project: Project, node: Node) -> Path:
    """The folder of a `path:` step, checked: inside the project, its read files too."""
    folder = inside(node, ("path",), node.spec.path, project.root)
    if not folder.is_dir():
        raise node.error(("path",), "a folder (a Hugging Face model or tokenizer folder)", f"'{node.spec.path}', a file",
                         "point `path:` at the folder that holds config.json or tokenizer.json")
    for file in read_files(folder):
        if not file.resolve().is_relative_to(project.root):
            raise node.error(("path",), "a folder whose files are inside the project",
                             f"'{node.spec.path}', whose file '{file.name}' resolves to {file.resolve()}", OUTSIDE_FIX)
    return folder


def _hub_file(node: Node, name: str) -> Path | None:
    """A file of a hub step's revision in huggingface_hub's cache; None when it is not there. The
    compiler never reaches the network: `doit list` stays fast and works offline."""
    cached = snapshot(node.spec.hub, node.spec.revision) / name
    return cached if cached.is_file() else None


def _config(node: Node, path: Path, where: tuple) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
        return config
    except (OSError, ValueError, RecursionError) as exc:
        raise node.error(where, "a config.json that is a JSON mapping", f"{path}: {exc}",
                         "point the step at a Hugging Face model folder") from None


def resolve_pretrained(project: Project, node: Node) -> None:
    """A pretrained step: where its files are, its model as a `ModelSpec` (from config.json, or the
    `model:` manifest a hub step declares until its config.json is in the cache)."""
    spec = node.spec
    declared = node.models.get("model")
    if spec.path is not None:
        folder = _local(project, node)
        _weights_present(node, folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise node.error(("path",), "a Hugging Face model folder with a config.json",
                             f"'{spec.path}', which has no config.json",
                             "point `path:` at the folder that holds config.json and the *.safetensors weights")
        label, where = f"{spec.path}/config.json", ("path",)
    else:
        config_path, label, where = _hub_file(node, "config.json"), f"{spec.hub}@{spec.revision[:12]}/config.json", ("hub",)
        if config_path is None:
            if declared is not None:
                return  # the declared architecture stands in until config.json is in the cache
            raise node.error(("hub",), f"the config.json of hub model {spec.hub} at revision {spec.revision} "
                                       f"(the compiler reads it to check what uses the model)",
                             f"none in the hub cache ({snapshot(spec.hub, spec.revision)})",
                             f"download it once (`hf download {spec.hub} config.json --revision {spec.revision}`), "
                             "or declare the architecture with `model: MODEL` (a model manifest)")
    derived = model_from_config(node, _config(node, config_path, where), label, where)
    if declared is not None:
        _agree(project, node, declared, derived, label)
    node.models["model"] = derived


def _weights_present(node: Node, folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLES for p in folder.glob(pattern))
    found = f"only {', '.join(pickles)}" if pickles else "no weights"
    raise node.error(("path",), "a folder with *.safetensors weights (pickled weights are never loaded: "
                                "unpickling runs code)", f"'{node.spec.path}' with {found}",
                     "convert the weights to safetensors once, where you trust them "
                     "(`model.save_pretrained(folder, safe_serialization=True)`), and point `path:` there")


def model_from_config(node: Node, config: dict, label: str, where: tuple) -> ModelSpec:
    """The `ModelSpec` of a transformers config.json: the architecture Ingot builds, trains and
    exports, with the same parameter count."""
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        raise node.error(where, f"a model of an architecture Ingot builds ({either(ARCHITECTURES)})",
                         f"model_type {json.dumps(kind)} in {label}",
                         "start from a Llama, Qwen2 or Mistral model; other architectures would need their code")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10_000.0))
    scaling = None
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        scaling = {"type": rope_type, "factor": rope.get("factor")}
        if rope_type == "llama3":
            scaling.update(low_freq_factor=rope.get("low_freq_factor", 1.0),
                           high_freq_factor=rope.get("high_freq_factor", 4.0),
                           original_max_positions=rope.get("original_max_position_embeddings"))
    unsupported = [f for f in ("attention_bias", "mlp_bias") if config.get(f)]
    if config.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act {config['hidden_act']}")
    if unsupported:
        raise node.error(where, f"a standard {kind} model (SwiGLU with silu, no extra biases)",
                         f"{', '.join(unsupported)} in {label}", "start from a model without them")
    fields = {
        "name": node.task.split(".")[1][:64], "kind": "model", "architecture": kind,
        "hidden_size": config.get("hidden_size"), "intermediate_size": config.get("intermediate_size"),
        "layers": config.get("num_hidden_layers"), "heads": config.get("num_attention_heads"),
        "kv_heads": config.get("num_key_value_heads") or config.get("num_attention_heads"),
        "head_dim": config.get("head_dim"), "vocab_size": config.get("vocab_size"),
        "max_positions": config.get("max_position_embeddings"), "rope_theta": theta,
        "rms_norm_eps": config.get("rms_norm_eps"), "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
    }
    if scaling is not None:
        fields["rope_scaling"] = scaling
    if kind == "mistral" and config.get("sliding_window") is not None:
        fields["sliding_window"] = config["sliding_window"]
    try:
        return ModelSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise node.error(where, "a config.json Ingot can describe as a model manifest",
                         f"{label}: {field}: {first['msg']}", "start from a Llama, Qwen2 or Mistral model folder "
                         "as transformers saves it") from None


def _agree(project: Project, node: Node, declared: ModelSpec, derived: ModelSpec, label: str) -> None:
    from .keys import keyed

    ours, theirs = keyed(declared), keyed(derived)
    differ = [f for f in ours if ours[f] != theirs.get(f)]
    if differ:
        doc = project.models[declared.name][1]
        said = ", ".join(f"{f} {json.dumps(ours[f])} in model '{declared.name}' but {json.dumps(theirs.get(f))} "
                         f"in {label}" for f in differ)
        raise node.error(("model",), f"the architecture {label} describes", said,
                         f"correct model '{declared.name}' ({doc.file}) or remove `model:` and let config.json say")


def resolve_loaded_tokenizer(project: Project, node: Node) -> None:
    """A tokenizer step that takes an existing tokenizer: its tokenizer.json is there."""
    if node.spec.path is not None:
        folder = _local(project, node)
        if not (folder / TOKENIZER_JSON).is_file():
            raise node.error(("path",), "a folder with a tokenizer.json (the tokenizers library's format)",
                             f"'{node.spec.path}', which has none",
                             "point `path:` at a Hugging Face tokenizer or model folder; a SentencePiece "
                             "tokenizer.model alone is not read: save it once with transformers to get a tokenizer.json")


def tokenizer_of(project: Project, task: str) -> str | None:
    """The tokenizer step of a weights step: a pretrained model is its own."""
    node = project.nodes[task]
    return task if node.kind == "pretrained" else node.deps.get(TOKENIZER)


def own_tokenizer(project: Project, task: str) -> bool:
    """Whether a tokenizer step's tokenizer comes with its own files (chat template included):
    a pretrained model's, or one taken from `path:`/`hub:`; a trained one has none."""
    node = project.nodes[task]
    return node.kind == "pretrained" or (node.kind == "tokenizer" and not node.spec.trained())


_SIZES: dict[tuple, int] = {}


def tokenizer_size(project: Project, task: str) -> int | None:
    """Tokens of a tokenizer step's vocabulary, added tokens included: the spec's for a trained
    one, counted in tokenizer.json for an existing one; None for a hub one not in the cache yet
    (the build checks it then)."""
    node = project.nodes[task]
    if node.kind == "tokenizer" and node.spec.trained():
        return node.spec.vocab_size
    if node.spec.path is not None:
        path = project.root / node.spec.path / TOKENIZER_JSON
    else:
        path = snapshot(node.spec.hub, node.spec.revision) / TOKENIZER_JSON
    try:
        stat = path.stat()
    except OSError:
        return None
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _SIZES:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ids = set(data["model"]["vocab"].values()) | {t["id"] for t in data.get("added_tokens", [])}
            _SIZES[memo] = max(ids) + 1
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None  # the build reads it and says what is wrong
    return _SIZES[memo]


def source_files(project: Project, node: Node) -> dict[str, Path]:
    """Label -> file a `path:` step reads: named inside its folder, so that the contents of the
    files key the step and moving the folder within the project does not."""
    if node.spec.path is None:
        return {}
    return {p.name: p for p in read_files(project.root / node.spec.path)}


RESOLVE = {"pretrained": resolve_pretrained}
