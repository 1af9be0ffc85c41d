"""Init builder: a seeded, randomly initialized Llama model for a model spec.

Reads: the model spec (`job.models["model"]`) and the paired tokenizer entry (for
its special-token ids). Writes: `model.safetensors` (no pickle) and `config.json`,
which `transformers.LlamaForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import shutil

from targets import Job

OUTPUTS = ("model.safetensors", "config.json")


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
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        "bos_token_id": tokenizer_ids.get("bos"), "eos_token_id": tokenizer_ids.get("eos"),
        "pad_token_id": tokenizer_ids.get("pad"), "dtype": dtype,
    }


def build(job: Job) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    spec, model = job.spec, job.models["model"]
    ids = _special_ids(job.inputs["tokenizer"])
    config = hf_config(model, ids, spec.dtype)
    torch.manual_seed(spec.seed)
    net = LlamaForCausalLM(LlamaConfig(**config)).to(getattr(torch, spec.dtype))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if model.tie_embeddings:
        state.pop("lm_head.weight", None)  # shared with the embedding; safetensors refuses aliases
    (job.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(job.out / "model.safetensors"), metadata={"format": "pt"})
    # safetensors writes 0600 files; give the weights the umask's mode, as every other output has,
    # so a store shared between users or restored by CI stays readable
    shutil.copymode(job.out / "config.json", job.out / "model.safetensors")
    n = sum(p.numel() for p in net.parameters())
    job.log(f"{n:,} parameters, seed {spec.seed}, {spec.dtype}")
    return {"parameters": n}


def _special_ids(tokenizer_dir) -> dict[str, int]:
    """Ids of bos/eos/unk/pad in the paired tokenizer, for config.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    names = json.loads((tokenizer_dir / "special_tokens_map.json").read_text())
    return {k.removesuffix("_token"): tok.token_to_id(v) for k, v in names.items()}
