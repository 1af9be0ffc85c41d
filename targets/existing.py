"""Existing Hugging Face folders taken in as store entries: where the files come from (a folder
of the project, or huggingface_hub's cache, downloaded there at a pinned revision), the weights
as one `model.safetensors` (shards joined by copying bytes: no tensor is loaded), and the
tokenizer as Ingot's tokenizer entries hold it. Reads only safetensors, JSON and the chat
template; pickled weights are never opened and no remote code runs.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

from targets import BuildError, Job, link_or_copy, safetensors_header

# what is downloaded from the hub, and read from a folder: nothing that unpickles or runs code
PATTERNS = ("*.safetensors", "*.json", "chat_template.jinja")
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_OUT = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ROLES = ("bos", "eos", "unk", "pad")
COPY_CHUNK = 16 << 20


def source_folder(job: Job, need: str) -> Path:
    """The folder of the step's `path:`, or the hub revision's snapshot in huggingface_hub's cache,
    downloaded there first (with huggingface_hub's progress bars) when it is not complete."""
    spec = job.spec
    if spec.path is not None:
        return job.root / spec.path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    job.log(f"{spec.hub} at revision {spec.revision[:12]}: {need} from the hub cache (downloaded if missing)")
    try:
        folder = Path(snapshot_download(spec.hub, revision=spec.revision, allow_patterns=list(PATTERNS)))
    except LocalEntryNotFoundError as exc:
        raise BuildError(f"hub model {spec.hub} at revision {spec.revision} is not in the hub cache and cannot be "
                         f"downloaded ({exc}); unset HF_HUB_OFFLINE on a machine that reaches the hub, or fill the "
                         "cache (`hf download ...`)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise BuildError(f"hub model {spec.hub} at revision {spec.revision} could not be downloaded: {exc}") from None
    return folder


def join_weights(folder: Path, out: Path) -> int:
    """The folder's weights as one safetensors file at `out`: the single file as a hard link where
    the file system allows, or the shards of `model.safetensors.index.json` joined byte for byte
    (headers merged, tensor data copied in large chunks; memory stays flat). Returns the number
    of parameters."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BuildError(f"{index}: not a safetensors index ({exc})") from None
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        found = f"only {', '.join(pickles)}" if pickles else "none"
        raise BuildError(f"{folder}: no *.safetensors weights ({found}); pickled weights are never loaded "
                         "(unpickling runs code): convert them to safetensors once, where you trust them")
    if len(shards) == 1:
        header, _ = safetensors_header(folder / shards[0])  # checks the file is whole
        link_or_copy((folder / shards[0]).resolve(), out)
        return _count(header)
    return _join(folder, shards, out)


def _count(header: dict) -> int:
    return sum(math.prod(info["shape"]) for info in header.values())


def _join(folder: Path, shards: list[str], out: Path) -> int:
    tables, merged, offset = [], {}, 0
    for name in shards:
        header, start = safetensors_header(folder / name)
        for tensor, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if tensor in merged:
                raise BuildError(f"{folder}: tensor {tensor} is in more than one shard ({name} and another)")
            begin, end = info["data_offsets"]
            merged[tensor] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + end - begin]}
            tables.append((folder / name, start + begin, end - begin))
            offset += end - begin
    text = json.dumps({"__metadata__": {"format": "pt"}, **merged}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for path, start, size in tables:
            with open(path, "rb") as src:
                src.seek(start)
                left = size
                while left:
                    chunk = src.read(min(COPY_CHUNK, left))
                    if not chunk:
                        raise BuildError(f"{path}: shorter than its header says")
                    f.write(chunk)
                    left -= len(chunk)
    return _count(merged)


def copy_tokenizer(folder: Path, out: Path) -> dict:
    """The folder's tokenizer as a tokenizer entry: tokenizer.json and tokenizer_config.json as
    they are, `special_tokens_map.json` with the bos/eos/unk/pad tokens it names (as plain
    strings: what Ingot's builders read), and `chat_template.jinja` when the tokenizer has a chat
    template (the file, or tokenizer_config.json's `chat_template`). Returns the special tokens
    and whether there is a template."""
    source = folder / "tokenizer.json"
    if not source.is_file():
        raise BuildError(f"{folder}: no tokenizer.json; a SentencePiece tokenizer.model alone is not read: save the "
                         "tokenizer once with transformers (`AutoTokenizer...save_pretrained`) to get one")
    link_or_copy(source.resolve(), out / "tokenizer.json")
    config_path = folder / "tokenizer_config.json"
    config = _json(config_path) if config_path.is_file() else {}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    names = _json(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}
    specials = {}
    for role in ROLES:
        value = config.get(f"{role}_token", names.get(f"{role}_token"))
        if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str) and value:
            specials[f"{role}_token"] = value
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    template = chat_template(folder, config)
    if template is not None:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return {"special_tokens": specials, "chat_template": template is not None}


def chat_template(folder: Path, config: dict) -> str | None:
    """A tokenizer's own chat template: chat_template.jinja (transformers 5 writes it apart), or
    tokenizer_config.json's `chat_template` (a string, or named templates: the `default` one)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value else None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: not a JSON mapping")
    return data


def copy_optional(folder: Path, out: Path, names: tuple[str, ...]) -> list[str]:
    """Copy the files of `names` the folder has; the names copied."""
    copied = []
    for name in names:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
            copied.append(name)
    return copied
