"""A model spec as Hugging Face weights: its `LlamaConfig` fields and its seeded initial weights,
shared by the init builder and a train step that starts from `model:` (the same weights for
the same seed). Pure numpy: no torch, no transformers.
"""

from __future__ import annotations

from compiler import params

INIT_STD = 0.02  # transformers' LlamaConfig.initializer_range


def hf_config(model, tokenizer_ids: dict[str, int], dtype: str) -> dict:
    """The Hugging Face `LlamaConfig` fields of a model spec (transformers 5 layout)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.layers, "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads, "head_dim": model.head_dim,
        "vocab_size": model.vocab_size, "max_position_embeddings": model.max_positions,
        "rms_norm_eps": model.rms_norm_eps, "tie_word_embeddings": model.tie_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": INIT_STD,
        "bos_token_id": tokenizer_ids.get("bos"), "eos_token_id": tokenizer_ids.get("eos"),
        "pad_token_id": tokenizer_ids.get("pad"), "dtype": dtype,
    }


def init_state(model, ids: dict[str, int], seed: int) -> dict:
    """The float32 numpy weights of a fresh model: the same for this step and for a train step
    that starts from `model:` with the same seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in params.tensors(model).items():
        state[name] = (np.ones(shape, np.float32) if name.endswith("norm.weight")
                       else rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD))
    if ids.get("pad") is not None:  # as nn.Embedding(padding_idx=pad) starts: the pad row is zero
        state["model.embed_tokens.weight"][ids["pad"]] = 0
    return state
