"""GGUF tensor types: who writes each, which rows it can hold, and what a matrix falls back to.

One table serves the compiler, which warns (or, under `strict`, refuses) before anything is
built, and the gguf builder, which writes the types gguf-py handles exactly as `planned_type`
says. K-quants are llama.cpp's own quantizer's work; what it does with a matrix whose rows do
not fit is llama.cpp's rule (src/llama-quant.cpp of the pinned llama-cpp-python), restated in
`K_FALLBACK` so the warning can say it before the quantizer runs. The manifest of a built
export records the type every tensor really got, read back from the file.
No numpy, no gguf: the compiler imports this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import params

if TYPE_CHECKING:
    from .specs import ModelSpec

LLAMA_EXTRA = "requirements-llama.txt"
LLAMA_INSTALL = f'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -r {LLAMA_EXTRA}'


@dataclass(frozen=True)
class GgufType:
    name: str     # as written in a manifest: `q4_k_m`
    ggml: str     # ggml type of its matrices (the main one of a K-quant mix): `Q4_K`
    block: int    # values per block: every row of a matrix of this type is a multiple of it
    ftype: str    # `general.file_type`, a member of gguf.LlamaFileType
    writer: str   # "gguf-py" (written here) or "llama.cpp" (llama_model_quantize from an F32 file)


TYPES = {t.name: t for t in (
    GgufType("f32", "F32", 1, "ALL_F32", "gguf-py"),
    GgufType("f16", "F16", 1, "MOSTLY_F16", "gguf-py"),
    GgufType("bf16", "BF16", 1, "MOSTLY_BF16", "gguf-py"),
    GgufType("q8_0", "Q8_0", 32, "MOSTLY_Q8_0", "gguf-py"),
    GgufType("q5_1", "Q5_1", 32, "MOSTLY_Q5_1", "gguf-py"),
    GgufType("q5_0", "Q5_0", 32, "MOSTLY_Q5_0", "gguf-py"),
    GgufType("q4_1", "Q4_1", 32, "MOSTLY_Q4_1", "gguf-py"),
    GgufType("q4_0", "Q4_0", 32, "MOSTLY_Q4_0", "gguf-py"),
    GgufType("q6_k", "Q6_K", 256, "MOSTLY_Q6_K", "llama.cpp"),
    GgufType("q5_k_m", "Q5_K", 256, "MOSTLY_Q5_K_M", "llama.cpp"),
    GgufType("q4_k_m", "Q4_K", 256, "MOSTLY_Q4_K_M", "llama.cpp"),
    GgufType("q3_k_m", "Q3_K", 256, "MOSTLY_Q3_K_M", "llama.cpp"),
    GgufType("q2_k", "Q2_K", 256, "MOSTLY_Q2_K", "llama.cpp"),
)}
LEGACY_FALLBACK = "f16"  # a 32-block type whose rows do not fit (convert_hf_to_gguf does the same)
K_FALLBACK = ("q5_0 where its mix picks q4_k, q5_1 for q5_k, q8_0 for q6_k and for the output "
              "layer, q4_0 for q3_k and q2_k, and f16 where a row is not a multiple of 32")

# Hugging Face module -> GGUF tensor name, the same for every architecture Ingot builds
# (gguf.get_tensor_name_map of LLAMA and of QWEN2 agree: tested)
GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def gguf_name(hf_name: str) -> str:
    """`model.layers.3.mlp.down_proj.weight` -> `blk.3.ffn_down.weight`,
    `model.layers.3.self_attn.q_proj.bias` -> `blk.3.attn_q.bias`."""
    layer = LAYER.match(hf_name)
    if layer:
        return f"blk.{layer.group(1)}.{GGUF_NAMES[layer.group(2)]}.{layer.group(3)}"
    return f"{GGUF_NAMES[hf_name.removesuffix('.weight')]}.weight"


def planned_type(shape: tuple[int, ...], gtype: GgufType) -> str:
    """The ggml type a tensor of this (Hugging Face, rows-last) shape is written in: 1-D tensors
    (norms, biases) stay F32, whatever the type, as llama.cpp keeps them; a matrix whose rows are
    not a multiple of the type's block falls back."""
    if len(shape) < 2:
        return "F32"
    if shape[-1] % gtype.block == 0:
        return gtype.ggml
    return "F16" if gtype.writer == "gguf-py" else "fallback"


def misfits(model: ModelSpec, gtype: GgufType) -> list[str]:
    """GGUF names of the matrices that cannot take `gtype`; empty when every matrix can (1-D
    tensors are F32 in every file, so never among them)."""
    return [gguf_name(name) for name, shape in params.tensors(model).items()
            if planned_type(shape, gtype) not in (gtype.ggml, "F32")]


def describe(model: ModelSpec, names: list[str]) -> str:
    """`rows of 64: token_embd, blk.*.attn_q; rows of 176: blk.*.ffn_down` (blocks collapsed)."""
    rows = {gguf_name(n): shape[-1] for n, shape in params.tensors(model).items()}
    groups: dict[int, list[str]] = {}
    for name in names:
        short = re.sub(r"^blk\.\d+\.", "blk.*.", name).removesuffix(".weight")
        if short not in groups.setdefault(rows[name], []):
            groups[rows[name]].append(short)
    return "; ".join(f"rows of {n}: {', '.join(group)}" for n, group in sorted(groups.items()))


def fallback_of(gtype: GgufType) -> str:
    return LEGACY_FALLBACK if gtype.writer == "gguf-py" else f"llama.cpp's choice: {K_FALLBACK}"
