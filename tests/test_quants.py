"""The GGUF type table of the compiler against the facts of gguf-py and llama.cpp it restates:
block sizes, file types, tensor names, and which matrices of a model fall back."""

from __future__ import annotations

import gguf
import pytest

from compiler import params, quants
from compiler.specs import ModelSpec
from conftest import require_llama_cpp


@pytest.mark.parametrize("name", quants.TYPES)
def test_each_type_matches_gguf_py(name):
    gtype = quants.TYPES[name]
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[gtype.ggml]]
    assert gtype.block == block
    assert gguf.LlamaFileType[gtype.ftype].name == gtype.ftype
    if gtype.writer == "gguf-py":  # gguf-py can write it (f32 and f16 are numpy casts)
        import numpy as np

        rows = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
        data = gguf.quants.quantize(rows, gguf.GGMLQuantizationType[gtype.ggml])
        assert np.abs(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[gtype.ggml]) - rows).max() < 0.1


def test_k_quants_are_llama_cpp_file_types():
    require_llama_cpp()
    import llama_cpp

    for gtype in quants.TYPES.values():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_{gtype.ftype}") == int(gguf.LlamaFileType[gtype.ftype])


MODEL = ModelSpec(kind="model", name="m", hidden_size=64, intermediate_size=176, layers=3, heads=4, kv_heads=2,
                  vocab_size=300)


def test_tensor_names_are_gguf_py_names():
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, MODEL.layers)
    for hf in params.tensors(MODEL):
        assert quants.gguf_name(hf) == names.get_name(hf, try_suffixes=(".weight",))


def test_misfits_and_their_description():
    assert quants.misfits(MODEL, quants.TYPES["f16"]) == []
    assert quants.misfits(MODEL, quants.TYPES["q8_0"]) == [f"blk.{i}.ffn_down.weight" for i in range(3)]
    k = quants.misfits(MODEL, quants.TYPES["q6_k"])
    assert len(k) == 1 + 3 * 7 + 1  # every matrix: embedding, 7 per layer, LM head
    assert quants.describe(MODEL, k) == ("rows of 64: token_embd, blk.*.attn_q, blk.*.attn_k, blk.*.attn_v, "
                                         "blk.*.attn_output, blk.*.ffn_gate, blk.*.ffn_up, output; "
                                         "rows of 176: blk.*.ffn_down")
    assert quants.planned_type((64,), quants.TYPES["q4_0"]) == "F32"
    assert quants.planned_type((8, 176), quants.TYPES["q4_0"]) == "F16"
    assert quants.planned_type((8, 176), quants.TYPES["q4_k_m"]) == "fallback"
