"""The tensors of a model spec, and its exact parameter count per component, without torch.

One table (`tensors`) gives every tensor's Hugging Face name and shape, in state-dict order,
for each architecture (`LlamaForCausalLM`, `MistralForCausalLM`: the same tensors;
`Qwen2ForCausalLM`: also a bias on the q, k and v projections); counts and the breakdown are
sums over it, and the init builder creates its weights from it, so the count a report shows
is the count of what was built.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: builders import this module, and need no pydantic
    from .specs import ModelSpec

LAYER = re.compile(r"^model\.layers\.\d+\.(.+?)(\.weight)?$")
QKV_BIAS = ("qwen2",)  # architectures with a bias on q_proj, k_proj and v_proj (none on o_proj)


def layer_tensors(m: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of one decoder layer's tensors, by their name inside the layer: a weight by its
    module's name (`mlp.up_proj`), a bias as `MODULE.bias`."""
    h, q_width, kv_width = m.hidden_size, m.heads * m.head_dim, m.kv_heads * m.head_dim
    bias = m.architecture in QKV_BIAS
    attention = {}
    for proj, width in (("q_proj", q_width), ("k_proj", kv_width), ("v_proj", kv_width)):
        attention[f"self_attn.{proj}"] = (width, h)
        if bias:
            attention[f"self_attn.{proj}.bias"] = (width,)
    return {
        **attention, "self_attn.o_proj": (h, q_width),
        "mlp.gate_proj": (m.intermediate_size, h), "mlp.up_proj": (m.intermediate_size, h),
        "mlp.down_proj": (h, m.intermediate_size),
        "input_layernorm": (h,), "post_attention_layernorm": (h,),
    }


def tensors(m: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model with its shape, in state-dict order; a tied LM head has none."""
    out = {"model.embed_tokens.weight": (m.vocab_size, m.hidden_size)}
    layer = {name if name.endswith(".bias") else f"{name}.weight": shape for name, shape in layer_tensors(m).items()}
    for i in range(m.layers):
        out.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    out["model.norm.weight"] = (m.hidden_size,)
    if not m.tie_embeddings:
        out["lm_head.weight"] = (m.vocab_size, m.hidden_size)
    return out


def breakdown(m: ModelSpec) -> dict[str, int]:
    """Parameters by component: embedding, all layers' parts summed (a bias apart from its
    weight), final norm, LM head."""
    out = {"embed_tokens": 0, **{f"layers.{n}": 0 for n in layer_tensors(m)}, "norm": 0, "lm_head": 0}
    for name, shape in tensors(m).items():
        layer = LAYER.match(name)
        part = f"layers.{layer.group(1)}" if layer else name.removeprefix("model.").removesuffix(".weight")
        out[part] += math.prod(shape)
    return out


def count(m: ModelSpec) -> int:
    return sum(math.prod(shape) for shape in tensors(m).values())
