"""Checks shared by the builders that write a model for others to load (export, gguf): the
weights' safetensors header against config.json, the tokenizer against the weights, and the
chat template rendered with transformers' own renderer. Reads only; writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from targets import BuildError, load_tokenizer, safetensors_header, special_ids, special_tokens

ROLES = ("bos", "eos", "pad")
SAMPLE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 + 2?"}]


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
    tok = load_tokenizer(tokenizer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > config["vocab_size"]:
        raise BuildError(f"the tokenizer has {size:,} tokens but the model's embedding only "
                         f"{config['vocab_size']:,} rows; export a model with the tokenizer it was trained with")
    known = special_ids(tokenizer, tok)
    wrong = {}
    for role in ROLES:
        ours, theirs = known.get(role), config.get(f"{role}_token_id")
        if ours is None or theirs is None:
            continue  # a pretrained model may name a token its tokenizer does not, or the reverse
        if ours not in (theirs if isinstance(theirs, list) else [theirs]):  # Llama-3.1 lists several eos ids
            wrong[role] = (theirs, ours)
    if wrong:
        said = ", ".join(f"{r} {c} in config.json but {i} in the tokenizer" for r, (c, i) in wrong.items())
        raise BuildError(f"the weights and the tokenizer disagree on special token ids ({said}); "
                         "export a model with the tokenizer it was trained with")


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
