"""GGUF builder: llama.cpp files of an init or train step's weights, one per requested type.

Reads: `model.safetensors` and `config.json` of the weights entry (`job.inputs[MODEL]`),
`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` of the tokenizer
entry, and the chat template `job.spec.chat_template` (relative to the project root).
Writes: `model-TYPE.gguf` for each of `job.spec.gguf_types()`, with llama.cpp's metadata of the
model's architecture (`llama` for Llama and Mistral, `qwen2` for Qwen2) and the tokenizer
embedded. f32, f16, bf16 and the legacy quants are written here with gguf-py, one tensor at a
time (the weights are memory-mapped, so the peak is about one tensor, not one model); K-quants
are made from an F32 file by llama.cpp's own quantizer (`llama_model_quantize`). Returns, per
file, what was read back from it: size, bits per weight, a histogram of tensor types and the
type of every tensor.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from compiler import quants
from compiler.inputs import MODEL, TOKENIZER
from targets import BuildError, Job, architectures, safetensors_header
from targets.chat import template_path
from targets.hf import check_safetensors, check_template, check_tokenizer
from targets.layout import adapter_file, gguf_file
from targets.vocab import tokenizer_metadata

DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # safetensors dtype -> numpy, as stored
# config.json's model_type -> llama.cpp's architecture (convert_hf_to_gguf.py converts
# MistralForCausalLM as LlamaModel: Mistral is `llama` to llama.cpp)
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# llama.cpp's `llama` RoPE rotates interleaved pairs (LLAMA_ROPE_TYPE_NORM), so Q and K rows are
# permuted from Hugging Face's halves; its `qwen2` rotates halves (NEOX), as Hugging Face does
PERMUTED = ("llama",)
ROPE_FREQS = "rope_freqs.weight"  # gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS]
CHUNK_BYTES = 4 << 20  # float32 rows converted at a time


def outputs(spec) -> tuple[str, ...]:
    if spec.adapter:
        return tuple(adapter_file(t) for t in spec.gguf_types())
    return tuple(gguf_file(t) for t in spec.gguf_types())


def build(job: Job) -> dict:
    if job.spec.adapter:  # a LoRA adapter over the base's GGUF file, not a model (it imports this module)
        from targets.gguf_lora import write_adapters

        return write_adapters(job)
    weights, tokenizer = job.inputs[MODEL], job.inputs[TOKENIZER]
    config = json.loads((weights / "config.json").read_text())
    if architectures.is_plugin(config):  # a plug-in architecture writes its files with its own `export_gguf`
        return plugin_files(job, weights, tokenizer, config)
    check_safetensors(weights / "model.safetensors", config)
    check_tokenizer(config, tokenizer)
    template = template_path(job).read_text(encoding="utf-8")
    check_template(template, job.spec.chat_template, tokenizer)
    metadata = {**model_metadata(config, job.spec), **tokenizer_metadata(tokenizer, config["vocab_size"], template, config)}

    names = job.spec.gguf_types()
    made = {t: quants.TYPES[t] for t in names}
    need_source = any(g.writer == "llama.cpp" for g in made.values())
    order = sorted(names, key=lambda t: (made[t].writer != "gguf-py", t != "f32"))  # F32 first: K-quants read it
    files: dict[str, dict] = {}
    for name in order:
        started = time.time()
        path = job.out / gguf_file(name)
        if made[name].writer == "gguf-py":
            write(path, weights / "model.safetensors", config, made[name], metadata)
        else:
            source = job.out / gguf_file("f32") if "f32" in names else job.work / "source-f32.gguf"
            if not source.exists():
                job.work.mkdir(parents=True, exist_ok=True)
                write(source, weights / "model.safetensors", config, quants.TYPES["f32"], metadata)
            quantize(source, path, made[name])
        files[name] = facts(path)
        files[name]["seconds"] = round(time.time() - started, 3)
        histogram = ", ".join(f"{n} {t}" for t, n in files[name]["histogram"].items())
        job.log(f"{path.name}: {files[name]['bytes'] / 1e6:,.1f} MB, {files[name]['bits_per_weight']:.2f} bits "
                f"per weight ({histogram}) in {files[name]['seconds']:.1f} s")
    if need_source and "f32" not in names:
        (job.work / "source-f32.gguf").unlink(missing_ok=True)
    return {"files": {t: files[t] for t in names}}


def plugin_files(job: Job, weights: Path, tokenizer: Path, config: dict) -> dict:
    """The GGUF files of a plug-in's weights, written by its `export_gguf` with the tokenizer's and
    the `general.*` metadata given, and read back as every GGUF file is."""
    check_tokenizer(config, tokenizer)
    template = template_path(job).read_text(encoding="utf-8")
    check_template(template, job.spec.chat_template, tokenizer)
    names = job.spec.gguf_types()
    metadata = {"general.name": job.spec.display_name, "general.type": "model",
                **tokenizer_metadata(tokenizer, config["vocab_size"], template, config)}
    started = time.time()
    architectures.export_gguf(job.root, weights, job.out, {t: gguf_file(t) for t in names}, metadata,
                              f"the weights of '{job.spec.model}'")
    seconds = round(time.time() - started, 3)  # of the one call that writes every file
    files = {}
    for t in names:
        try:
            files[t] = {**facts(job.out / gguf_file(t)), "seconds": seconds}
        except (KeyError, ValueError) as exc:
            raise BuildError(f"{architectures.what_of(config)}: export_gguf wrote {gguf_file(t)} without a valid "
                             f"general.file_type ({type(exc).__name__}: {exc}): write it, as gguf-py's "
                             "add_file_type does") from None
        job.log(f"{gguf_file(t)}: {files[t]['bytes'] / 1e6:,.1f} MB, {files[t]['bits_per_weight']:.2f} bits per weight")
    return {"files": files}


# ---------------------------------------------------------------- metadata

def model_metadata(config: dict, spec) -> dict:
    """`general.*` keys and the architecture's own (`llama.*`, `qwen2.*`), without the file type,
    which each file sets."""
    arch = architecture(config)
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    rope = rope_of(config)
    theta = rope.get("rope_theta", config.get("rope_theta"))  # transformers 5 keeps it in rope_parameters
    if theta is None:
        raise BuildError("config.json has no rope_theta (neither under rope_parameters nor at the top level)")
    out = {
        "general.type": "model", "general.name": spec.display_name,
        "general.quantization_version": 2,  # gguf.GGML_QUANT_VERSION: the block layouts written here
        "general.sampling.temp": float(spec.temperature), "general.sampling.top_p": float(spec.top_p),
        f"{arch}.context_length": config["max_position_embeddings"], f"{arch}.embedding_length": hidden,
        f"{arch}.block_count": config["num_hidden_layers"], f"{arch}.feed_forward_length": config["intermediate_size"],
        f"{arch}.attention.head_count": heads, f"{arch}.attention.head_count_kv": config["num_key_value_heads"],
        f"{arch}.attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
        f"{arch}.rope.freq_base": float(theta), f"{arch}.rope.dimension_count": head_dim,
        f"{arch}.vocab_size": config["vocab_size"],
    }
    if head_dim * heads != hidden:
        out.update({f"{arch}.attention.key_length": head_dim, f"{arch}.attention.value_length": head_dim})
    if rope_type(rope) == "linear":  # llama3's scaling is a tensor, rope_freqs.weight
        out.update({f"{arch}.rope.scaling.type": "linear", f"{arch}.rope.scaling.factor": float(rope["factor"])})
    return out


def architecture(config: dict) -> str:
    """llama.cpp's architecture of a config.json, after checking that llama.cpp would compute
    what transformers does: no attention window, a RoPE scaling llama.cpp applies."""
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        raise BuildError(f"config.json has model_type {json.dumps(kind)}; GGUF export writes "
                         f"{', '.join(ARCHITECTURES)} models")
    window = config.get("sliding_window") if kind == "mistral" or config.get("use_sliding_window") else None
    if window is not None:
        raise BuildError(f"config.json has a sliding attention window of {window} positions, and llama.cpp "
                         f"attends to every position of a {kind} model: export the Hugging Face folder instead")
    scaling = rope_type(rope_of(config))
    if scaling not in ("default", "linear", "llama3") or (scaling == "llama3" and kind == "qwen2"):
        raise BuildError(f"config.json has RoPE scaling '{scaling}', which llama.cpp's {ARCHITECTURES[kind]} "
                         f"does not compute as transformers' {kind} does: export the Hugging Face folder instead")
    heads, head_dim = config["num_attention_heads"], config.get("head_dim")
    if kind == "qwen2" and head_dim and head_dim * heads != config["hidden_size"]:
        raise BuildError(f"config.json has {heads} heads of {head_dim}, and llama.cpp's qwen2 needs them as wide as "
                         f"hidden_size ({config['hidden_size']}): export the Hugging Face folder instead")
    return ARCHITECTURES[kind]


def rope_of(config: dict) -> dict:
    """The RoPE parameters: transformers 5's `rope_parameters`, or an older config's `rope_scaling`."""
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def rope_type(rope: dict) -> str:
    return rope.get("rope_type", rope.get("type")) or "default"


def rope_freqs(config: dict):
    """llama.cpp's `rope_freqs.weight` of a llama3-scaled model: per frequency of a head, the
    factor its rotation is divided by (llama.cpp divides theta by it), or None for other RoPE.
    convert_hf_to_gguf.py's computation, with the original context from rope_parameters (it reads
    a top-level `original_max_position_embeddings`, 8192 when absent: right for Llama 3.1 only)."""
    import numpy as np

    rope = rope_of(config)
    if rope_type(rope) != "llama3":
        return None
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = rope.get("rope_theta", config.get("rope_theta"))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    wavelen = 2 * np.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = (old / wavelen - low) / (high - low)
    between = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, between)).astype(np.float32)


# ---------------------------------------------------------------- tensors

def hf_tensors(path: Path, config: dict):
    """(Hugging Face name, its rows) for every tensor in file order, where the rows come as
    float32 arrays of a few MB each, in llama.cpp's layout: Q and K rows permuted for its RoPE.
    Read with plain reads, not a memory map (mapped pages of the whole file would count toward
    the process's memory; bench/gguf_export.py measures both)."""
    header, start = safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in DTYPES:
                raise BuildError(f"{path}: tensor {name} is {info['dtype']}; GGUF export reads F32, F16 and BF16")
            yield name, _rows(f, start + info["data_offsets"][0], info, rope_group(name, config))


def _rows(f, offset: int, info: dict, group: int):
    """One tensor's rows, CHUNK_BYTES of float32 at a time, in whole RoPE groups (`group` rows)."""
    import numpy as np

    shape = info["shape"]
    rows, cols = (shape[0], int(np.prod(shape[1:]))) if len(shape) > 1 else (1, shape[0])
    dtype = np.dtype(DTYPES[info["dtype"]])
    step = max(group, CHUNK_BYTES // (4 * cols) // group * group)
    for first in range(0, rows, step):
        n = min(step, rows - first)
        f.seek(offset + first * cols * dtype.itemsize)
        raw = np.fromfile(f, dtype=dtype, count=n * cols)
        # bfloat16 is the top half of a float32: widen by shifting (numpy has no bfloat16)
        data = (raw.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else raw
        data = data.reshape((n, *shape[1:]) if len(shape) > 1 else shape)
        yield permuted(data, group) if group > 1 else data


def rope_group(name: str, config: dict) -> int:
    """Rows that llama.cpp's RoPE layout reorders together: one head of q_proj or k_proj where its
    architecture rotates interleaved pairs (no model of that layout here has Q or K biases), else 1."""
    if ARCHITECTURES.get(config.get("model_type")) not in PERMUTED:
        return 1
    if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
        return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 1


def permuted(data, head_dim: int):
    """Hugging Face rotates the two halves of each head; llama.cpp interleaved pairs: regroup the
    rows of each head (of q_proj, and of k_proj by KV head) to match."""
    rows, cols = data.shape
    return data.reshape(rows // head_dim, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors header alone, in file order."""
    header, _ = safetensors_header(path)
    return {name: tuple(info["shape"])
            for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])}


def write(path: Path, weights: Path, config: dict, gtype: quants.GgufType, metadata: dict) -> None:
    """Write a GGUF file with gguf-py: header, metadata and tensor table first (sizes follow from
    the shapes), then each tensor's rows as they are read and converted, so memory holds a few MB
    of the model at a time, whatever its size. A llama3-scaled model's rope_freqs.weight, which
    llama.cpp reads and transformers computes, comes first, as convert_hf_to_gguf.py puts it."""
    import gguf
    import numpy as np

    table = shapes(weights)
    planned = {name: gguf.GGMLQuantizationType[quants.planned_type(shape, gtype)] for name, shape in table.items()}
    freqs = rope_freqs(config)
    writer = gguf.GGUFWriter(str(path), architecture(config))
    for key, value in metadata.items():
        add(writer, key, value)
    writer.add_file_type(int(gguf.LlamaFileType[gtype.ftype]))
    if freqs is not None:
        writer.add_tensor_info(ROPE_FREQS, freqs.shape, freqs.dtype, freqs.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType.F32)
    for name, shape in table.items():
        block, size = gguf.GGML_QUANT_SIZES[planned[name]]
        nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size
        writer.add_tensor_info(quants.gguf_name(name), shape, np.dtype(np.float32), nbytes, raw_dtype=planned[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    out = writer.fout[0]
    if freqs is not None:
        writer.write_padding(out, out.tell())
        freqs.tofile(out)
    for name, rows in hf_tensors(weights, config):
        writer.write_padding(out, out.tell())  # each tensor starts aligned, as the table says
        for chunk in rows:
            gguf.quants.quantize(chunk, planned[name]).tofile(out)
    writer.write_padding(out, out.tell())
    writer.close()


def add(writer, key: str, value) -> None:
    """A metadata value by its Python type (gguf's own keys, written with its typed adders)."""
    import gguf

    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif key == "tokenizer.ggml.token_type":
        writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    else:
        writer.add_array(key, value)


def quantize(source: Path, path: Path, gtype: quants.GgufType) -> None:
    """llama.cpp's quantizer (llama-cpp-python), from an F32 GGUF file to a K-quant mix."""
    import ctypes
    import tempfile

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{gtype.ftype}")
    params.nthread = os.cpu_count() or 1
    # llama.cpp writes a line per tensor to file descriptor 2; the facts read back from the file
    # say the same, so its output is shown only when it fails
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), ctypes.byref(params))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        said = log.read().decode("utf-8", "replace").strip()
    if status != 0:
        raise BuildError(f"llama.cpp's quantizer failed ({status}) making {gtype.name} from {source.name}:\n{said}")


def facts(path: Path) -> dict:
    """What a GGUF file holds, read back from it: size, bits per weight over all tensors, the
    number of tensors of each type and the type of every tensor."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    elements = sum(int(t.n_elements) for t in reader.tensors)
    data = sum(int(t.n_bytes) for t in reader.tensors)
    histogram: dict[str, int] = {}
    for t in sorted(types.values()):
        histogram[t] = histogram.get(t, 0) + 1
    file_type = reader.fields["general.file_type"].contents()
    return {"file": path.name, "bytes": path.stat().st_size, "tensor_bytes": data, "parameters": elements,
            "bits_per_weight": round(8 * data / elements, 4), "file_type": gguf.LlamaFileType(file_type).name,
            "histogram": histogram, "tensors": types}
