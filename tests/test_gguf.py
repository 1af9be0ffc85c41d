"""GGUF builder, through a real project: what llama.cpp (llama-cpp-python) and transformers'
GGUF loader make of the files, against the torch model they came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from compiler import quants
from conftest import REPO, Project, code_project, ran, require_llama_cpp, tiny_corpus

pytestmark = pytest.mark.slow  # trains small models and loads every file in llama.cpp

ALL = ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
MODELS = {  # every width a multiple of 256, so every type fits every matrix
    "wide": dict(hidden_size=256, intermediate_size=512, layers=2, heads=4, kv_heads=2),
    "headdim": dict(hidden_size=256, intermediate_size=256, layers=1, heads=8, head_dim=64),  # 8 x 64 != 256
    "gqa": dict(hidden_size=256, intermediate_size=256, layers=1, heads=8, kv_heads=2),
    "tied": dict(hidden_size=256, intermediate_size=256, layers=1, heads=4, tie_embeddings=True),
}
VARIANTS = ["headdim", "gqa", "tied"]
TRAIN = {"kind": "train", "tokenizer": "tok", "data": "docs", "batch_size": 8, "seq_len": 64,
         "optimizer": {"lr": 0.003}, "schedule": {"warmup_steps": 2}, "eval": {"every": 100, "batches": 1}}
PROMPTS = ["The len() function returns the number of items of an object.",
           "def add(a, b):\n    return a + b\n",
           "A class definition defines a class object; its suite is executed in a new frame."]
TEXT = ("Grüße aus Köln — ¿qué tal? Ça va très bien. Привет, мир! 你好，世界。こんにちは。 안녕하세요 "
        "🤖🚀👍🏽 naïve café\n\ndef f(x: int) -> int:\n\treturn x ** 2  # 12345 3.14159 1e-6 0xFF\n"
        "   leading spaces,  double  spaces, trailing \n\n\nA\tB\r\nmixed CASE and 2024-11-23T10:00Z")


def model_yaml(name: str, **fields) -> str:
    return yaml.safe_dump({"kind": "model", "name": name, "vocab_size": 512, "max_positions": 128, **fields})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    """Tokenizer of 400 tokens (so the 512-row models have 112 padding ids), four small models
    trained briefly so their logits are peaked, every type of the widest one, and f32/f16/q8_0
    of the head-dim, GQA and tied ones."""
    require_llama_cpp()
    p = code_project(tmp_path_factory.mktemp("gguf") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/templates/chat.jinja", (REPO / "specs" / "templates" / "chat.jinja").read_text())
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n")
    for name, fields in MODELS.items():
        p.write(f"specs/models/{name}.yaml", model_yaml(name, **fields))
    steps = {"tok": {"kind": "tokenizer", "dataset": "docs", "vocab_size": 400}}
    for name in MODELS:
        steps[name] = {**TRAIN, "model": name, "max_steps": 40 if name == "wide" else 15}
        steps[f"{name}-gguf"] = {"kind": "export", "format": "gguf", "model": name,
                                 "types": ALL if name == "wide" else ["f32", "f16", "q8_0"]}
    p.write("specs/pipelines/main.yaml", yaml.safe_dump({"kind": "pipeline", "name": "main", "steps": steps}))
    p.doit()
    return p


def manifest(p: Project, step: str) -> dict:
    return json.loads((p.root / "build" / "main" / step / "manifest.json").read_text())


def torch_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position, with a float32 KV cache (its default, f16, would add
    its own rounding to every type's)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2, seed=0,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def hf_ids(p: Project, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(p.root / "build" / "main" / "tok")(text)["input_ids"]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """Max absolute logit difference, mean KL(reference || other) per position, top-1 agreement."""
    p, q = log_softmax(reference.astype(np.float64)), log_softmax(other)
    kl = float((np.exp(p) * (p - q)).sum(axis=-1).mean())
    return float(np.abs(reference - other).max()), kl, float((reference.argmax(-1) == other.argmax(-1)).mean())


@pytest.fixture(scope="module")
def measured(built) -> dict[str, tuple[float, float, float]]:
    """Per type of the wide model: (max |logit diff|, mean KL, top-1 agreement) over the prompts."""
    out = {}
    prompts = [hf_ids(built, text) for text in PROMPTS]
    reference = [torch_logits(built.root / "build/main/wide", ids) for ids in prompts]
    for name in ALL:
        path = built.root / "build/main/wide-gguf" / f"model-{name}.gguf"
        rows = [agreement(ref, llama_logits(path, ids)) for ref, ids in zip(reference, prompts)]
        out[name] = (max(r[0] for r in rows), float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows])))
    print("\n".join(f"{t:7} max|d| {d:.2e}  KL {kl:.2e}  top-1 {a:.3f}" for t, (d, kl, a) in out.items()))
    return out


def test_float_types_give_torch_logits_in_llama_cpp(measured):
    assert measured["f32"][0] < 1e-3
    assert measured["f16"][0] < 5e-3 and measured["bf16"][0] < 3e-2
    for name in ("f32", "f16", "bf16"):
        assert measured[name][2] == 1.0, f"{name} changes the most likely token somewhere"


def test_quantized_types_order_as_llama_cpp_says(measured):
    """Mean KL from the torch model: bounded per type, and ordered as llama.cpp's tables order
    the types by quality (Q8_0 closest, then Q6_K, Q5_K_M, Q4_K_M, Q4_0)."""
    kl = {t: measured[t][1] for t in ALL}
    order = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
    assert [kl[t] for t in order] == sorted(kl[t] for t in order), kl
    bounds = {"q8_0": 1e-4, "q6_k": 1e-3, "q5_k_m": 3e-3, "q5_1": 3e-3, "q5_0": 3e-3,
              "q4_k_m": 1e-2, "q4_1": 1e-2, "q4_0": 1e-2, "q3_k_m": 5e-2, "q2_k": 2e-1}
    assert all(kl[t] < bound for t, bound in bounds.items()), kl
    top1 = {t: measured[t][2] for t in ALL}
    assert top1["q8_0"] >= 0.99 and top1["q6_k"] >= 0.97 and min(top1[t] for t in bounds) >= 0.8, top1


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(built):
    from llama_cpp import Llama

    llm = Llama(str(built.root / "build/main/wide-gguf/model-q8_0.gguf"), vocab_only=True, verbose=False)
    ids = hf_ids(built, TEXT)
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=False) == ids
    assert llm.detokenize(ids).decode() == TEXT
    # special tokens are control tokens: one id each where text may hold them, as in transformers
    assert llm.tokenize(b"<s>Hi</s>", add_bos=False, special=True) == hf_ids(built, "<s>Hi</s>")
    assert hf_ids(built, "<s>Hi</s>")[0] == 0


def test_metadata_says_what_llama_cpp_needs(built):
    import gguf

    reader = gguf.GGUFReader(built.root / "build/main/wide-gguf/model-f16.gguf")
    kv = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tok = json.loads((built.root / "build/main/tok/tokenizer.json").read_text())
    tokens = kv.pop("tokenizer.ggml.tokens")
    types = kv.pop("tokenizer.ggml.token_type")
    merges = kv.pop("tokenizer.ggml.merges")
    assert kv.pop("tokenizer.chat_template") == (REPO / "specs/templates/chat.jinja").read_text()
    assert kv == {
        "general.architecture": "llama", "general.type": "model", "general.name": "wide",
        "general.quantization_version": 2, "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "general.sampling.temp": pytest.approx(0.8), "general.sampling.top_p": pytest.approx(0.95),
        "llama.context_length": 128, "llama.embedding_length": 256, "llama.block_count": 2,
        "llama.feed_forward_length": 512, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "llama.rope.freq_base": 10000.0,
        "llama.rope.dimension_count": 64, "llama.vocab_size": 512,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 2, "tokenizer.ggml.padding_token_id": 3,
    }
    vocab = {i: t for t, i in tok["model"]["vocab"].items()} | {a["id"]: a["content"] for a in tok["added_tokens"]}
    assert tokens == [vocab.get(i, f"[PAD{i}]") for i in range(512)]
    assert types == [3] * 4 + [1] * 396 + [5] * 112  # control, normal, unused (padding rows)
    assert merges == [" ".join(m) for m in tok["model"]["merges"]]


def test_a_pre_tokenizer_llama_cpp_has_no_name_for_is_an_error():
    from targets import BuildError
    from targets.vocab import pre_tokenizer

    spec = {"model": {"type": "BPE"}, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert pre_tokenizer(spec) == "gpt-2"
    spec["pre_tokenizer"]["add_prefix_space"] = True
    with pytest.raises(BuildError) as info:
        pre_tokenizer(spec)
    assert str(info.value) == (
        'no llama.cpp tokenizer matches this tokenizer (model BPE, normalizer null, pre_tokenizer {"type": '
        '"ByteLevel", "add_prefix_space": true, "use_regex": true}); Ingot embeds byte-level BPE split by GPT-2\'s '
        "regex (ByteLevel with use_regex, no prefix space) without a normalizer (llama.cpp's 'gpt-2'); byte-level "
        "BPE split by Llama 3's regex without a normalizer ('llama-bpe' with ignore_merges, 'smaug-bpe' without); "
        "byte-level BPE split by Qwen2's regex, NFC or no normalizer ('qwen2'); SentencePiece-style BPE with byte "
        "fallback, its spaces made '▁' by a Prepend + Replace normalizer or a Metaspace pre-tokenizer without split "
        "(llama.cpp's 'llama')")


def test_manifest_records_every_tensor_and_the_files_facts(built):
    import gguf

    files = manifest(built, "wide-gguf")["metrics"]["files"]
    assert sorted(files) == sorted(ALL)
    for name, facts in files.items():
        path = built.root / "build/main/wide-gguf" / f"model-{name}.gguf"
        reader = gguf.GGUFReader(path)
        assert facts["tensors"] == {t.name: t.tensor_type.name for t in reader.tensors}
        assert facts["bytes"] == path.stat().st_size
        assert facts["parameters"] == sum(int(t.n_elements) for t in reader.tensors) == 1_443_072
        assert facts["bits_per_weight"] == round(8 * sum(int(t.n_bytes) for t in reader.tensors) / 1_443_072, 4)
        assert sum(facts["histogram"].values()) == len(facts["tensors"]) == 21
        assert {facts["tensors"][t] for t in facts["tensors"] if "norm" in t} == {"F32"}
        matrices = {t for n, t in facts["tensors"].items() if "norm" not in n}
        gtype = quants.TYPES[name]
        if gtype.writer == "gguf-py":
            assert matrices == {gtype.ggml}, name
        else:  # llama.cpp's mix: its main type, with more bits for some tensors
            assert gtype.ggml in matrices and matrices <= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}, (name, matrices)
    bits = [files[t]["bits_per_weight"] for t in ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q2_k")]
    assert bits == sorted(bits, reverse=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_gives_torch_logits_in_llama_cpp(built, variant):
    ids = hf_ids(built, PROMPTS[0])
    reference = torch_logits(built.root / "build/main" / variant, ids)
    diff, kl, top1 = agreement(reference, llama_logits(built.root / f"build/main/{variant}-gguf/model-f32.gguf", ids))
    assert diff < 1e-3 and top1 == 1.0, (diff, kl)
    tensors = manifest(built, f"{variant}-gguf")["metrics"]["files"]["f32"]["tensors"]
    assert ("output.weight" in tensors) == (variant != "tied")


@pytest.mark.parametrize("variant", ["wide", *VARIANTS])
@pytest.mark.parametrize("name", ["f32", "f16", "q8_0"])
def test_transformers_loads_the_file_back(built, variant, name):
    """`from_pretrained(gguf_file=)` undoes the Q/K permutation and dequantizes; every tensor
    equals the original within the type's rounding: exact, half an f16 ulp, half a Q8_0 step."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    folder = built.root / "build/main" / f"{variant}-gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=f"model-{name}.gguf", dtype=torch.float32)
    loaded = {k: v.numpy() for k, v in model.state_dict().items()}
    original = load_file(built.root / "build/main" / variant / "model.safetensors")
    if variant == "tied":
        original["lm_head.weight"] = original["model.embed_tokens.weight"]
    assert set(loaded) == set(original)
    for key, want in original.items():
        got = loaded[key]
        if name == "f32" or want.ndim == 1:
            np.testing.assert_array_equal(got, want, err_msg=key)
        elif name == "f16":
            np.testing.assert_allclose(got, want, rtol=2.0 ** -11, atol=2.0 ** -25, err_msg=key)
        else:  # 32 values share a scale of amax/127 (itself an f16): at most ~0.57 of a step off
            step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert (np.abs(got.reshape(-1, 32) - want.reshape(-1, 32)) <= 0.57 * step + 1e-12).all(), key


# ---------------------------------------------------------------- fallbacks

NARROW = model_yaml("tiny", hidden_size=64, intermediate_size=192, layers=2, heads=4, kv_heads=2)
GGUF_STEP = "  gguf:\n    kind: export\n    format: gguf\n    model: init\n    types: [q8_0, q4_k_m]\n"
WARNING = (
    "ingot: specs/pipelines/main.yaml:16: steps.gguf.types[1]: warning: q4_k_m needs rows that are a multiple of "
    "256, and 16 matrices of model 'tiny' have others (rows of 64: token_embd, blk.*.attn_q, blk.*.attn_k, "
    "blk.*.attn_v, blk.*.attn_output, blk.*.ffn_gate, blk.*.ffn_up, output; rows of 192: blk.*.ffn_down); they "
    f"will be written as llama.cpp's choice: {quants.K_FALLBACK}\n"
    "  fix: use widths that are multiples of 256, or set `strict: true` to make this an error\n")


@pytest.fixture
def narrow(tiny_project) -> Project:
    """conftest's tiny project with a 64-wide model and a GGUF export of its init step."""
    tiny_project.write("specs/templates/chat.jinja", (REPO / "specs" / "templates" / "chat.jinja").read_text())
    tiny_project.write("specs/models/tiny.yaml", NARROW)
    tiny_project.write("specs/pipelines/main.yaml", tiny_project.read("specs/pipelines/main.yaml") + GGUF_STEP)
    return tiny_project


def test_a_k_quant_that_does_not_fit_warns_at_compile_time(narrow):
    require_llama_cpp()
    listed = narrow.doit("list")
    assert listed.stderr == WARNING
    built = narrow.doit()
    assert WARNING in built.stderr and ran(built) == ["dataset.docs", "main.tok", "main.init", "main.gguf"]
    files = manifest(narrow, "gguf")["metrics"]["files"]
    assert files["q8_0"]["histogram"] == {"F32": 5, "Q8_0": 16}
    types = files["q4_k_m"]["tensors"]
    # what the warning said: no matrix is a K-quant; llama.cpp's legacy types in their place
    assert {t for n, t in types.items() if "norm" not in n} <= {"Q5_0", "Q5_1", "Q8_0", "Q4_0", "F16"}
    assert types["output.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q5_0"


def test_strict_turns_the_fallback_into_an_error(narrow):
    require_llama_cpp()
    narrow.edit("specs/pipelines/main.yaml", "    types: [q8_0, q4_k_m]\n", "    types: [q8_0, q4_k_m]\n    strict: true\n")
    before = narrow.build_files()
    result = narrow.doit(check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "ingot: 1 problem found; nothing was built\n"
        "specs/pipelines/main.yaml:16: steps.gguf.types[1]: expected every matrix of model 'tiny' to take q4_k_m "
        "(rows a multiple of 256), as `strict: true` asks; found 16 that cannot (rows of 64: token_embd, "
        "blk.*.attn_q, blk.*.attn_k, blk.*.attn_v, blk.*.attn_output, blk.*.ffn_gate, blk.*.ffn_up, output; "
        "rows of 192: blk.*.ffn_down)\n"
        "  fix: use widths that are multiples of 256, drop q4_k_m from `types`, or remove `strict: true` to let them "
        f"fall back to llama.cpp's choice: {quants.K_FALLBACK}\n")
    assert narrow.build_files() == before


def test_a_legacy_type_falls_back_to_f16_where_rows_do_not_fit(narrow):
    narrow.write("specs/models/tiny.yaml", model_yaml("tiny", hidden_size=64, intermediate_size=176, layers=2,
                                                        heads=4, kv_heads=2))
    narrow.edit("specs/pipelines/main.yaml", "types: [q8_0, q4_k_m]", "types: [q8_0]")
    result = narrow.doit()
    assert result.stderr.startswith(
        "ingot: specs/pipelines/main.yaml:16: steps.gguf.types[0]: warning: q8_0 needs rows that are a multiple of "
        "32, and 2 matrices of model 'tiny' have others (rows of 176: blk.*.ffn_down); they will be written as f16\n"
        "  fix: use widths that are multiples of 32, or set `strict: true` to make this an error\n")
    types = manifest(narrow, "gguf")["metrics"]["files"]["q8_0"]["tensors"]
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == "F16"
    assert types["blk.0.ffn_up.weight"] == "Q8_0"


# ---------------------------------------------------------------- memory

def test_rows_read_a_few_at_a_time_write_the_same_bytes(built, tmp_path, monkeypatch):
    """The writer converts a tensor in chunks of whole RoPE groups; the smallest chunks (one head
    of Q or K, one row of anything else) write the same file as whole tensors do."""
    from targets import gguf as builder

    weights = built.root / "build/main/wide/model.safetensors"
    config = json.loads((built.root / "build/main/wide/config.json").read_text())
    for name in ("f32", "q8_0", "q4_1"):
        builder.write(tmp_path / f"whole-{name}.gguf", weights, config, quants.TYPES[name], {"general.name": "w"})
        monkeypatch.setattr(builder, "CHUNK_BYTES", 1)
        builder.write(tmp_path / f"rows-{name}.gguf", weights, config, quants.TYPES[name], {"general.name": "w"})
        monkeypatch.undo()
        assert (tmp_path / f"rows-{name}.gguf").read_bytes() == (tmp_path / f"whole-{name}.gguf").read_bytes()


def test_tensors_are_streamed_into_the_file(tmp_path):
    """Writing a 31M-parameter model (126 MB of float32) to Q8_0 raises the process's peak memory
    by far less than one copy of the model: a few MB of rows are in memory at a time."""
    from compiler.specs import ModelSpec
    from safetensors.numpy import save_file
    from targets.weights import hf_config, init_state

    model = ModelSpec(kind="model", name="m", hidden_size=512, intermediate_size=1024, layers=12, heads=8,
                      vocab_size=512, max_positions=128)
    ids = {"bos": 0, "eos": 1, "unk": 2, "pad": 3}
    state = init_state(model, ids, 0)
    save_file(state, str(tmp_path / "model.safetensors"))
    size = sum(v.nbytes for v in state.values())
    del state
    (tmp_path / "config.json").write_text(json.dumps(hf_config(model, ids, "float32")))
    # the child's own high-water mark (VmHWM), before and after the write
    script = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
import gguf, numpy
from compiler import quants
from targets import gguf as builder
def peak():
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
root = Path({str(tmp_path)!r})
config = json.loads((root / "config.json").read_text())
before = peak()
builder.write(root / "m.gguf", root / "model.safetensors", config, quants.TYPES["q8_0"], {{"general.name": "m"}})
print(before, peak())
"""
    before, after = map(int, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                            check=True).stdout.split())
    assert (tmp_path / "m.gguf").stat().st_size > size / 4
    print(f"peak grew by {(after - before) / 1e6:.1f} MB writing a {size / 1e6:.0f} MB model")
    assert after - before < 0.2 * size, f"peak grew by {(after - before) / 1e6:.0f} MB writing a {size / 1e6:.0f} MB model"
