"""Export builder: a Hugging Face model folder from an init or train step's weights.

Reads: `model.safetensors` and `config.json` of the weights entry (`job.inputs[MODEL]`),
`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` of the tokenizer
entry (`job.inputs[TOKENIZER]`), and the Jinja chat template `job.spec.chat_template`
(relative to the project root). Writes: those six files as they are (the weights as a hard
link where the file system allows: they are never loaded or rewritten, only their
safetensors header is checked; `model_max_length` of the tokenizer config lowered to
the model's context where it is longer), `chat_template.jinja`, and
`generation_config.json` with the model's special ids and the step's sampling defaults.
`AutoModelForCausalLM` and `AutoTokenizer` load the folder as it is.

With `adapter: true` (the weights entry is a LoRA train step's), a PEFT folder instead: the
`adapter_model.safetensors` (hard-linked) and `adapter_config.json` of the entry's `adapter/`
as they are, with
the tokenizer files and `chat_template.jinja`; `PeftModel.from_pretrained(base, folder)` loads
it over the base model the step started from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from compiler.inputs import MODEL, TOKENIZER
from targets import Job, architectures, link_or_copy, safetensors_header
from targets.chat import template_path
from targets.hf import ROLES, check_safetensors, check_template, check_tokenizer
from targets.layout import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS

WEIGHTS = ("model.safetensors", "config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OUTPUTS = (*WEIGHTS, "generation_config.json", *TOKENIZER_FILES, "chat_template.jinja")
ADAPTER = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
ADAPTER_OUTPUTS = (*ADAPTER, *TOKENIZER_FILES, "chat_template.jinja")


def outputs(spec) -> tuple[str, ...]:
    return ADAPTER_OUTPUTS if spec.adapter else OUTPUTS


def build(job: Job) -> dict:
    if job.spec.adapter:
        return build_adapter(job)
    model, tokenizer = job.inputs[MODEL], job.inputs[TOKENIZER]
    config = json.loads((model / "config.json").read_text())
    plugin = architectures.is_plugin(config)
    if plugin:  # a plug-in architecture writes its folder with its own `export_hf`
        config = architectures.export_hf(job.root, model, job.out, f"the weights of '{job.spec.model}'")
    tensors = check_safetensors((job.out if plugin else model) / "model.safetensors", config)
    check_tokenizer(config, tokenizer)
    template = template_path(job).read_text(encoding="utf-8")
    check_template(template, job.spec.chat_template, tokenizer)

    if not plugin:
        link_or_copy(model / "model.safetensors", job.out / "model.safetensors")
        shutil.copyfile(model / "config.json", job.out / "config.json")
    tokenizer_files(job.out, tokenizer, config, template)
    generation = generation_config(config, job.spec)
    (job.out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    job.log(f"{tensors} tensors of a {config['num_hidden_layers']}-layer {config['model_type']} model, "
            f"vocabulary {config['vocab_size']:,}, {'sampling' if generation['do_sample'] else 'greedy'} by default")
    return {"tensors": tensors, "weights_bytes": (job.out / "model.safetensors").stat().st_size}


def build_adapter(job: Job) -> dict:
    """The PEFT folder of a LoRA train step's adapter: its two files as they are, and the tokenizer's."""
    model, tokenizer = job.inputs[MODEL], job.inputs[TOKENIZER]
    config = json.loads((model / "config.json").read_text())
    adapter = model / ADAPTER_DIR
    header, _ = safetensors_header(adapter / ADAPTER[0])
    check_tokenizer(config, tokenizer)
    template = template_path(job).read_text(encoding="utf-8")
    check_template(template, job.spec.chat_template, tokenizer)
    link_or_copy(adapter / ADAPTER[0], job.out / ADAPTER[0])
    shutil.copyfile(adapter / ADAPTER[1], job.out / ADAPTER[1])
    tokenizer_files(job.out, tokenizer, config, template)
    lora = json.loads((adapter / ADAPTER[1]).read_text())
    job.log(f"LoRA adapter of rank {lora['r']} (alpha {lora['lora_alpha']:g}) on {', '.join(lora['target_modules'])}: "
            f"{len(header)} tensors")
    return {"tensors": len(header), "weights_bytes": (job.out / ADAPTER[0]).stat().st_size}


def tokenizer_files(out: Path, tokenizer: Path, config: dict, template: str) -> None:
    """The tokenizer entry's files, its length fit to the model's context, and the chat template."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / name, out / name)
    fit_max_length(out / "tokenizer_config.json", config["max_position_embeddings"])
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def fit_max_length(path: Path, positions: int) -> None:
    """The tokenizer truncates (`truncation=True`) at the model's context, not at a longer length
    the tokenizer step was given; the rest of tokenizer_config.json stays as it was."""
    config = json.loads(path.read_text())
    if config.get("model_max_length", positions) > positions:
        path.write_text(json.dumps({**config, "model_max_length": positions}, indent=2) + "\n")


def generation_config(config: dict, spec) -> dict:
    """transformers' `GenerationConfig` fields; sampling ones only when sampling (temperature > 0)."""
    generation = {f"{r}_token_id": config.get(f"{r}_token_id") for r in ROLES}
    generation.update(max_new_tokens=spec.max_new_tokens, do_sample=spec.temperature > 0)
    if generation["do_sample"]:
        generation.update(temperature=spec.temperature, top_p=spec.top_p)
    return generation
