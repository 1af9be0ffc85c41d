"""Exact parameter counts of a model spec, per component, without torch.

The names follow Hugging Face's `LlamaForCausalLM` state dict, so a breakdown row
can be checked against the real model tensor by tensor.
"""

from __future__ import annotations

from .specs import ModelSpec


def layer_breakdown(m: ModelSpec) -> dict[str, int]:
    """Parameters of one decoder layer, by projection and norm."""
    q_width, kv_width = m.heads * m.head_dim, m.kv_heads * m.head_dim
    return {
        "self_attn.q_proj": m.hidden_size * q_width,
        "self_attn.k_proj": m.hidden_size * kv_width,
        "self_attn.v_proj": m.hidden_size * kv_width,
        "self_attn.o_proj": q_width * m.hidden_size,
        "mlp.gate_proj": m.hidden_size * m.intermediate_size,
        "mlp.up_proj": m.hidden_size * m.intermediate_size,
        "mlp.down_proj": m.intermediate_size * m.hidden_size,
        "input_layernorm": m.hidden_size,
        "post_attention_layernorm": m.hidden_size,
    }


def breakdown(m: ModelSpec) -> dict[str, int]:
    """Parameters by component: embedding, all layers' parts summed, final norm, LM head."""
    out = {"embed_tokens": m.vocab_size * m.hidden_size}
    out.update({f"layers.{name}": n * m.layers for name, n in layer_breakdown(m).items()})
    out["norm"] = m.hidden_size
    out["lm_head"] = 0 if m.tie_embeddings else m.vocab_size * m.hidden_size
    return out


def count(m: ModelSpec) -> int:
    return sum(breakdown(m).values())
