"""A model spec as Hugging Face weights: its transformers config (`LlamaConfig`, `Qwen2Config` or
`MistralConfig` fields) and its seeded initial weights, shared by the init builder and a train
step that starts from `model:` (the same weights for the same seed). Pure numpy: no torch, no
transformers.
"""

from __future__ import annotations

from compiler import params

INIT_STD = 0.02  # transformers' initializer_range of all three configs
CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def hf_config(model, tokenizer_ids: dict[str, int], dtype: str) -> dict:
    """The transformers config fields of a model spec (transformers 5 layout)."""
    return {
        "architectures": [CLASSES[model.architecture]], "model_type": model.architecture,
        "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.layers, "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads, "head_dim": model.head_dim,
        "vocab_size": model.vocab_size, "max_position_embeddings": model.max_positions,
        "rms_norm_eps": model.rms_norm_eps, "tie_word_embeddings": model.tie_embeddings,
        "rope_parameters": rope_parameters(model), "hidden_act": "silu", **_family(model),
        "initializer_range": INIT_STD,
        "bos_token_id": tokenizer_ids.get("bos"), "eos_token_id": tokenizer_ids.get("eos"),
        "pad_token_id": tokenizer_ids.get("pad"), "dtype": dtype,
    }


def _family(model) -> dict:
    """The fields one architecture's config has and the others lack. Qwen2's biases and Llama's
    and Mistral's lack of them are fixed by transformers' classes, not by the config."""
    if model.architecture == "llama":
        return {"attention_bias": False, "mlp_bias": False}
    if model.architecture == "qwen2":  # Qwen2Config's own default window is 4096: say none
        return {"use_sliding_window": False, "sliding_window": None}
    return {"sliding_window": model.sliding_window}  # MistralConfig's default is 4096, too


def rope_parameters(model) -> dict:
    """transformers 5's `rope_parameters`: the base frequency and the scaling, with the key names
    of its `linear` and `llama3` RoPE initializers."""
    out = {"rope_type": "default", "rope_theta": model.rope_theta}
    s = model.rope_scaling
    if s is not None:
        out.update(rope_type=s.type, factor=s.factor)
    if s is not None and s.type == "llama3":
        out.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                   original_max_position_embeddings=s.original_max_positions)
    return out


def init_state(model, ids: dict[str, int], seed: int) -> dict:
    """The float32 numpy weights of a fresh model: the same for this step and for a train step
    that starts from `model:` with the same seed. Matrices ~ N(0, 0.02), norms one, biases zero
    (as transformers initializes each), drawn in table order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in params.tensors(model).items():
        if name.endswith("norm.weight"):
            state[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            state[name] = np.zeros(shape, np.float32)
        else:
            state[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
    if ids.get("pad") is not None:  # as nn.Embedding(padding_idx=pad) starts: the pad row is zero
        state["model.embed_tokens.weight"][ids["pad"]] = 0
    return state
