"""Init builder: a seeded, randomly initialized Llama model for a model spec.

Initialization follows transformers' Llama scheme (every matrix ~ N(0, 0.02), norms
one, the pad row of the embedding zero), drawn with numpy from the seed over the
tensor table of `compiler.params`, so this step needs neither torch nor transformers.

Reads: the model spec (`job.models["model"]`) and the paired tokenizer entry (for
its special-token ids). Writes: `model.safetensors` (no pickle) and `config.json`,
which `transformers.LlamaForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import shutil

from compiler import params
from targets import Job, special_ids

OUTPUTS = ("model.safetensors", "config.json")
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


def build(job: Job) -> dict:
    spec, model = job.spec, job.models["model"]
    ids = special_ids(job.inputs["tokenizer"])
    config = hf_config(model, ids, spec.dtype)
    state = init_state(model, ids, spec.seed)
    (job.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _save(state, job.out / "model.safetensors", spec.dtype)
    # safetensors writes 0600 files; give the weights the umask's mode, as every other output has,
    # so a store shared between users or restored by CI stays readable
    shutil.copymode(job.out / "config.json", job.out / "model.safetensors")
    n = params.count(model)
    job.log(f"{n:,} parameters, seed {spec.seed}, {spec.dtype}")
    return {"parameters": n}


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


def _save(state: dict, path, dtype: str) -> None:
    """Write safetensors in `dtype`; numpy has no bfloat16, so that one goes through torch."""
    if dtype == "bfloat16":
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}, str(path),
                  metadata={"format": "pt"})
        return
    from safetensors.numpy import save_file

    save_file({k: v.astype(dtype) for k, v in state.items()}, str(path), metadata={"format": "pt"})
