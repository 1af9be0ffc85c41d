"""Export builder: a Hugging Face model folder from an init or train step's weights.

Reads: `model.safetensors` and `config.json` of the weights entry (`job.inputs["model"]`),
`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` of the tokenizer
entry (`job.inputs["tokenizer"]`), and the Jinja chat template `job.spec.chat_template`
(relative to the project root). Writes: those six files as they are (the weights as a hard
link where the file system allows: they are never loaded or rewritten, only their
safetensors header is checked; `model_max_length` of the tokenizer config lowered to
the model's context where it is longer), `chat_template.jinja`, and
`generation_config.json` with the model's special ids and the step's sampling defaults.
`AutoModelForCausalLM` and `AutoTokenizer` load the folder as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from targets import BuildError, Job, link_or_copy, safetensors_header, special_ids, special_tokens

WEIGHTS = ("model.safetensors", "config.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OUTPUTS = (*WEIGHTS, "generation_config.json", *TOKENIZER, "chat_template.jinja")
ROLES = ("bos", "eos", "pad")
SAMPLE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 + 2?"}]


def build(job: Job) -> dict:
    model, tokenizer = job.inputs["model"], job.inputs["tokenizer"]
    config = json.loads((model / "config.json").read_text())
    tensors = check_safetensors(model / "model.safetensors", config)
    check_tokenizer(config, tokenizer)
    template = (job.root / job.spec.chat_template).read_text(encoding="utf-8")
    check_template(template, job.spec.chat_template, tokenizer)

    link_or_copy(model / "model.safetensors", job.out / "model.safetensors")
    shutil.copyfile(model / "config.json", job.out / "config.json")
    for name in TOKENIZER:
        shutil.copyfile(tokenizer / name, job.out / name)
    fit_max_length(job.out / "tokenizer_config.json", config["max_position_embeddings"])
    (job.out / "chat_template.jinja").write_text(template, encoding="utf-8")
    generation = generation_config(config, job.spec)
    (job.out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    job.log(f"{tensors} tensors of a {config['num_hidden_layers']}-layer {config['model_type']} model, "
            f"vocabulary {config['vocab_size']:,}, {'sampling' if generation['do_sample'] else 'greedy'} by default")
    return {"tensors": tensors, "weights_bytes": (job.out / "model.safetensors").stat().st_size}


def check_safetensors(path: Path, config: dict) -> int:
    """The number of tensors in `path`, after checking its header (only the header is read)."""
    header, _ = safetensors_header(path)
    embed = header.get("model.embed_tokens.weight", {}).get("shape")
    if embed != [config["vocab_size"], config["hidden_size"]]:
        raise BuildError(f"{path}: embedding of shape {embed}, but config.json says "
                         f"[{config['vocab_size']}, {config['hidden_size']}] (vocab_size, hidden_size)")
    return len(header)


def check_tokenizer(config: dict, tokenizer: Path) -> None:
    """The weights were trained with this tokenizer: every id it makes has a row in the
    embedding, and config.json names the same special ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > config["vocab_size"]:
        raise BuildError(f"the tokenizer has {size:,} tokens but the model's embedding only "
                         f"{config['vocab_size']:,} rows; export a model with the tokenizer it was trained with")
    known = special_ids(tokenizer, tok)
    ids = {r: known.get(r) for r in ROLES}
    wrong = {r: (config.get(f"{r}_token_id"), i) for r, i in ids.items() if config.get(f"{r}_token_id") != i}
    if wrong:
        said = ", ".join(f"{r} {c} in config.json but {i} in the tokenizer" for r, (c, i) in wrong.items())
        raise BuildError(f"the weights and the tokenizer disagree on special token ids ({said}); "
                         "export a model with the tokenizer it was trained with")


def fit_max_length(path: Path, positions: int) -> None:
    """The tokenizer truncates (`truncation=True`) at the model's context, not at a longer length
    the tokenizer step was given; the rest of tokenizer_config.json stays as it was."""
    config = json.loads(path.read_text())
    if config.get("model_max_length", positions) > positions:
        path.write_text(json.dumps({**config, "model_max_length": positions}, indent=2) + "\n")


def check_template(template: str, rel: str, tokenizer: Path) -> None:
    """Render a sample chat with transformers' own renderer (the one `apply_chat_template`
    uses), so a broken template fails the export rather than its first user."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    names = {f"{role}_token": text for role, text in special_tokens(tokenizer).items()}
    try:
        for prompt in (True, False):
            render_jinja_template([SAMPLE_CHAT], chat_template=template, add_generation_prompt=prompt, **names)
    except TemplateError as exc:
        raise BuildError(f"chat template {rel}: {type(exc).__name__}: {exc}") from None


def generation_config(config: dict, spec) -> dict:
    """transformers' `GenerationConfig` fields; sampling ones only when sampling (temperature > 0)."""
    generation = {f"{r}_token_id": config.get(f"{r}_token_id") for r in ROLES}
    generation.update(max_new_tokens=spec.max_new_tokens, do_sample=spec.temperature > 0)
    if generation["do_sample"]:
        generation.update(temperature=spec.temperature, top_p=spec.top_p)
    return generation
