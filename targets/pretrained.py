"""Pretrained builder: an existing Hugging Face model taken into the store.

Reads: the step's `path:` folder, or the files of its `hub:` model at `revision:` from
huggingface_hub's cache (downloaded into it first, with progress bars); only safetensors,
JSON and the chat template. Writes: the weights entry every weights consumer reads
(`model.safetensors`, one file: a hard link to the single file, or the shards joined;
`config.json`; `generation_config.json` when there is one) and the tokenizer entry every
tokenizer consumer reads (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`, and `chat_template.jinja` when the tokenizer has one).
"""

from __future__ import annotations

import json
import shutil

from targets import BuildError, Job
from targets.existing import TOKENIZER_OUT, copy_optional, copy_tokenizer, join_weights, source_folder

OUTPUTS = ("model.safetensors", "config.json", *TOKENIZER_OUT)
OPTIONAL_OUTPUTS = ("generation_config.json", "chat_template.jinja")


def build(job: Job) -> dict:
    folder = source_folder(job, "weights, config and tokenizer")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BuildError(f"{folder}: no config.json; a pretrained step needs a Hugging Face model folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model = job.models["model"]
    if config.get("model_type") != model.architecture or config.get("vocab_size") != model.vocab_size:
        raise BuildError(f"{folder}/config.json describes a {config.get('model_type')} model with a vocabulary of "
                         f"{config.get('vocab_size')}, not the {model.architecture} model with {model.vocab_size:,} "
                         "the step was compiled for (the folder changed since: run doit again)")
    shutil.copyfile(config_path, job.out / "config.json")
    copy_optional(folder, job.out, ("generation_config.json",))
    parameters = join_weights(folder, job.out / "model.safetensors")
    tokenizer = copy_tokenizer(folder, job.out)
    job.log(f"{model.architecture} model, {parameters:,} parameters, vocabulary {model.vocab_size:,}"
            f"{', with a chat template' if tokenizer['chat_template'] else ''}")
    return {"parameters": parameters, "architecture": model.architecture, "source": job.spec.origin(), **tokenizer}
