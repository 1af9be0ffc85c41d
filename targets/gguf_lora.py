"""GGUF LoRA adapters: the adapter of a LoRA train step as llama.cpp applies it over a GGUF
file of the base (`llama_adapter_lora_init`, `--lora`), one file per requested type. Part of
the gguf builder (targets/gguf.py calls `write_adapters` for an export with `adapter: true`).

Reads: `adapter/adapter_model.safetensors` (peft's `base_model.model.<module>.lora_A.weight`, r × in,
and `.lora_B.weight`, out × r) and `adapter/adapter_config.json` (`lora_alpha`) of the train entry, and
its `config.json` for the architecture. Writes: `adapter-TYPE.gguf` for each of
`job.spec.gguf_types()` (f32, f16, bf16, q8_0), as llama.cpp's convert_lora_to_gguf.py writes
them: `general.type` = `adapter`, `adapter.type` = `lora`, `adapter.lora.alpha` (llama.cpp
scales by alpha / r, r read from lora_b, as peft does); no tokenizer. Each target weight
`blk.N.attn_q.weight` gets `blk.N.attn_q.weight.lora_a` (A as it is: GGUF's ne is numpy's shape
reversed, so [in, r]) and `.lora_b` (B: [r, out]); where llama.cpp's RoPE reorders the rows of
Q and K (the `llama` architecture), B's rows are reordered the same way, A's columns stay.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from compiler import quants
from compiler.inputs import MODEL
from targets import BuildError, Job
from targets.gguf import add, architecture, facts, hf_tensors, model_metadata, permuted, rope_group
from targets.layout import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, adapter_file

PEFT_NAME = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")


def write_adapters(job: Job) -> dict:
    folder = job.inputs[MODEL]
    config = json.loads((folder / "config.json").read_text())
    alpha = float(json.loads((folder / ADAPTER_DIR / ADAPTER_CONFIG).read_text())["lora_alpha"])
    general = {k: v for k, v in model_metadata(config, job.spec).items() if k in ("general.name",
                                                                                  "general.quantization_version")}
    metadata = {**general, "general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": alpha}
    matrices = adapter_matrices(folder / ADAPTER_DIR / ADAPTER_WEIGHTS, config)
    files: dict[str, dict] = {}
    for name in job.spec.gguf_types():
        started = time.time()
        path = job.out / adapter_file(name)
        write(path, matrices, architecture(config), quants.TYPES[name], metadata)
        files[name] = {**facts(path), "seconds": round(time.time() - started, 3)}
        job.log(f"{path.name}: LoRA adapter of {len(matrices) // 2} matrices (alpha {alpha:g}), "
                f"{files[name]['bytes'] / 1e3:,.1f} kB in {files[name]['seconds']:.1f} s")
    return {"files": files}


def adapter_matrices(path: Path, config: dict) -> dict:
    """GGUF tensor name -> float32 matrix of every lora_a and lora_b of a peft adapter file, in
    llama.cpp's layout (the rows of B permuted where its RoPE needs the base's rows permuted)."""
    import numpy as np

    out = {}
    for name, rows in hf_tensors(path, config):
        found = PEFT_NAME.match(name)
        if found is None:
            raise BuildError(f"{path}: tensor {name} is not a LoRA matrix (base_model.model.<module>.lora_A.weight "
                             f"or .lora_B.weight); llama.cpp adapters hold those only")
        base, which = f"{found.group(1)}.weight", found.group(2)
        data = np.concatenate(list(rows))  # r rows, or r columns: small
        group = rope_group(base, config) if which == "B" else 1
        out[f"{quants.gguf_name(base)}.lora_{which.lower()}"] = permuted(data, group) if group > 1 else data
    return out


def write(path: Path, matrices: dict, arch: str, gtype: quants.GgufType, metadata: dict) -> None:
    """One adapter file: metadata, then each matrix in `gtype` (a matrix whose rows it cannot
    take falls back as the model writer's do: quants.planned_type)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        add(writer, key, value)
    writer.add_file_type(int(gguf.LlamaFileType[gtype.ftype]))
    for name, data in matrices.items():
        qtype = gguf.GGMLQuantizationType[quants.planned_type(data.shape, gtype)]
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
