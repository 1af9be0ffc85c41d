"""A tokenizer entry as llama.cpp's `tokenizer.ggml.*` GGUF metadata: the vocabulary padded to
the model's embedding rows, token types, merges, special ids and the chat template, with the
pre-tokenizer decided from the tokenizer's own definition. Reads only; no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from targets import BuildError, read_tokenizer_json, special_ids

# token types of gguf's TokenType: what llama.cpp makes of each vocabulary entry
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, from its actual configuration;
    a configuration llama.cpp has no name for is an error, never a guess."""
    pre, normalizer = tokenizer_json.get("pre_tokenizer"), tokenizer_json.get("normalizer")
    model = tokenizer_json.get("model", {}).get("type")
    if (model == "BPE" and normalizer is None and isinstance(pre, dict) and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)):
        return "gpt-2"  # GPT-2's split regex over bytes-as-unicode, no prefix space
    raise BuildError(f"no llama.cpp pre-tokenizer matches this tokenizer (model {model}, normalizer "
                     f"{json.dumps(normalizer)}, pre_tokenizer {json.dumps(pre)}); Ingot embeds byte-level "
                     "BPE tokenizers without a prefix space and without a normalizer (llama.cpp's 'gpt-2')")


def tokenizer_metadata(tokenizer: Path, vocab_size: int, template: str) -> dict:
    """`tokenizer.ggml.*` keys: the vocabulary padded to the model's embedding rows (padding ids
    are unused tokens), merges, special ids and the chat template."""
    spec = read_tokenizer_json(tokenizer)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokens: list[str | None] = [None] * vocab_size
    types = [UNUSED] * vocab_size
    for text, i in spec["model"]["vocab"].items():
        tokens[i], types[i] = text, NORMAL
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i] = f"[PAD{i}]"
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    out = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre_tokenizer(spec),
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.add_bos_token": bool(config.get("add_bos_token", False)),
        "tokenizer.ggml.add_eos_token": bool(config.get("add_eos_token", False)),
        "tokenizer.chat_template": template,
    }
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    for role, i in special_ids(tokenizer).items():
        if i is not None and role in keys:
            out[f"tokenizer.ggml.{keys[role]}"] = i
    return out
