"""Architectures: Llama (plain, and with linear or llama3 RoPE scaling), Qwen2 and Mistral.

For each, a tiny model written as the init builder writes it (its config from
`targets.weights.hf_config`, with weights large enough that the logits are peaked and, for
Qwen2, non-zero biases) loads in transformers with the spec's values, and its GGUF files
(f32, f16) give transformers' logits in llama.cpp on a sequence longer than the original
context of the scaled RoPE, within test_gguf.py's tolerances. Then manifests of Qwen2 and
Mistral models initialize, train, distill, export and load through the project pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import runner
from compiler import graph, params, project, quants
from compiler.errors import SpecError
from compiler.specs import Export, ModelSpec
from conftest import REPO, Project, code_project, require_llama_cpp, tiny_corpus

pytestmark = pytest.mark.slow  # builds models in transformers and llama.cpp

SHAPE = dict(hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2, vocab_size=512, max_positions=128)
LLAMA3 = {"type": "llama3", "factor": 8.0, "original_max_positions": 32}  # Llama 3.1's scheme, 8192 -> 32
CASES = {
    "llama": dict(architecture="llama"),
    "llama-linear": dict(architecture="llama", rope_scaling={"type": "linear", "factor": 4.0}),
    "llama-llama3": dict(architecture="llama", rope_scaling=LLAMA3),
    "qwen2": dict(architecture="qwen2", tie_embeddings=True),
    "mistral": dict(architecture="mistral"),
}
TOLERANCE = {"f32": 1e-3, "f16": 5e-3}  # max |logit difference|, as test_gguf.py bounds them
DOCS = 120  # documents the pipeline's dataset holds
TEXT = " ".join(tiny_corpus(4))  # far more than the 100 tokens the logits are compared on
N_TOKENS = 100  # > original_max_positions (32): past the context where scaled and plain RoPE agree
TRAIN = {"kind": "train", "tokenizer": "tok", "data": "docs", "max_steps": 3, "batch_size": 2, "seq_len": 32,
         "eval": {"every": 3, "batches": 1}, "checkpoints": {"every": 3, "keep": 1}}


def spec_of(name: str, **fields) -> ModelSpec:
    return ModelSpec.model_validate({"kind": "model", "name": name, **SHAPE, **CASES.get(name, {}), **fields})


# ---------------------------------------------------------------- the pipeline

def model_yaml(name: str, **fields) -> str:
    return yaml.safe_dump({"kind": "model", "name": name, **SHAPE, **fields}, sort_keys=False)


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """A project with a Qwen2 and a Mistral model; its tokenizer serves every test here."""
    p = code_project(tmp_path_factory.mktemp("arch") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(DOCS)))
    p.write("specs/templates/chat.jinja", (REPO / "specs" / "templates" / "chat.jinja").read_text())
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n"
                                        "    glob: data/*.jsonl\nsplit:\n  validation: 0.2\n")
    p.write("specs/models/qwen.yaml", model_yaml("qwen", architecture="qwen2", tie_embeddings=True))
    p.write("specs/models/mistral.yaml", model_yaml("mistral", architecture="mistral", head_dim=24))
    steps = {
        "tok": {"kind": "tokenizer", "dataset": "docs", "vocab_size": 400},
        "qinit": {"kind": "init", "model": "qwen", "tokenizer": "tok", "seed": 3},
        "qwen": {**TRAIN, "init": "qinit"},
        "mistral": {**TRAIN, "model": "mistral"},
        "student": {**TRAIN, "model": "mistral", "objective": "distill", "max_steps": None,
                    "distill": {"teachers": {"q": {"step": "qwen"}}, "phases": [{"steps": 2, "teachers": {"q": 1.0}}]}},
    }
    for name in ("qwen", "mistral"):
        steps[f"{name}-hf"] = {"kind": "export", "model": name}
        steps[f"{name}-gguf"] = {"kind": "export", "format": "gguf", "model": name, "types": ["f32", "f16"]}
    p.write("specs/pipelines/main.yaml", yaml.safe_dump({"kind": "pipeline", "name": "main", "steps": steps}))
    return p


@pytest.fixture(scope="module")
def tok(proj) -> Path:
    g = graph.compile_graph(project.load(proj.root))
    for task in ("dataset.docs", "main.tok"):
        assert runner.run(g, task) is None, task
    return proj.root / "build" / "main" / "tok"


@pytest.fixture(scope="module")
def built(proj, tok) -> Path:
    g = graph.compile_graph(project.load(proj.root))
    for task in g.plans:
        assert runner.run(g, task) is None, task
    return proj.root / "build" / "main"


# ---------------------------------------------------------------- tiny models, written directly

EXPORT = Export.model_validate({"kind": "export", "model": "m", "format": "gguf", "display_name": "tiny"})


def write_model(folder: Path, spec: ModelSpec, ids: dict) -> None:
    """config.json and model.safetensors as the init builder writes them, with matrices four
    times the init's spread (peaked logits), norms around one and Qwen2's biases ~ N(0, 0.5), so
    that every tensor, and every position's rotation, moves the logits."""
    from safetensors.numpy import save_file

    from targets.weights import hf_config, init_state

    folder.mkdir(parents=True)
    state = init_state(spec, ids, 1)
    rng = np.random.default_rng(2)
    for name, value in state.items():
        if value.ndim == 2:
            value *= 4
        else:  # norms and biases
            value += rng.standard_normal(value.shape, dtype=np.float32) * (0.5 if name.endswith(".bias") else 0.1)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(spec, ids, "float32"), indent=2))


def write_gguf(folder: Path, tok: Path, types=("f32", "f16")) -> None:
    from targets.gguf import model_metadata, write
    from targets.vocab import tokenizer_metadata

    config = json.loads((folder / "config.json").read_text())
    template = (REPO / "specs/templates/chat.jinja").read_text()
    metadata = {**model_metadata(config, EXPORT), **tokenizer_metadata(tok, config["vocab_size"], template)}
    for name in types:
        write(folder / f"model-{name}.gguf", folder / "model.safetensors", config, quants.TYPES[name], metadata)


@pytest.fixture(scope="module")
def sequence(tok) -> list[int]:
    from targets import load_tokenizer

    ids = load_tokenizer(tok).encode(TEXT).ids[:N_TOKENS]
    assert len(ids) == N_TOKENS
    return ids


@pytest.fixture(scope="module")
def models(tok, tmp_path_factory) -> dict[str, Path]:
    """Each case's Hugging Face folder, with its f32 and f16 GGUF files beside the weights."""
    from targets import special_ids

    root, ids = tmp_path_factory.mktemp("models"), special_ids(tok)
    out = {}
    for name in CASES:
        out[name] = root / name
        write_model(out[name], spec_of(name), ids)
        write_gguf(out[name], tok)
    return out


@pytest.fixture(scope="module")
def measured(models, sequence) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per case and type: (max |logit diff|, mean KL, top-1 agreement) of llama.cpp against transformers."""
    from test_gguf import agreement, llama_logits, torch_logits

    require_llama_cpp()
    out = {}
    for name, folder in models.items():
        reference = torch_logits(folder, sequence)
        out[name] = {t: agreement(reference, llama_logits(folder / f"model-{t}.gguf", sequence)) for t in TOLERANCE}
    print("\n".join(f"{n:13} {t}  max|d| {d:.2e}  KL {kl:.2e}  top-1 {a:.3f}"
                    for n, row in out.items() for t, (d, kl, a) in row.items()))
    return out


@pytest.mark.parametrize("name", CASES)
def test_transformers_builds_what_the_spec_says(models, name):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from targets.weights import CLASSES, rope_parameters

    spec = spec_of(name)
    model, info = AutoModelForCausalLM.from_pretrained(models[name], output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    assert type(model).__name__ == CLASSES[spec.architecture] and model.config.model_type == spec.architecture
    assert model.config.rope_parameters == rope_parameters(spec)
    assert (model.config.head_dim, model.config.tie_word_embeddings) == (spec.head_dim, spec.tie_embeddings)
    assert model.num_parameters() == params.count(spec)
    state = model.state_dict()
    for key, saved in load_file(models[name] / "model.safetensors").items():
        assert torch.equal(state[key], saved), key
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.bias is not None) == (spec.architecture == "qwen2") and attention.o_proj.bias is None


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("gtype", TOLERANCE)
def test_llama_cpp_gives_transformers_logits(measured, name, gtype):
    diff, kl, top1 = measured[name][gtype]
    assert diff < TOLERANCE[gtype] and top1 == 1.0, (diff, kl, top1)


@pytest.mark.parametrize("name", ["llama-linear", "llama-llama3"])
def test_the_scaling_moves_the_logits_far_more_than_the_tolerance(models, sequence, name, tmp_path):
    """The same weights with plain RoPE give other logits: the comparison above would see a
    scaling llama.cpp dropped."""
    from test_gguf import torch_logits

    from targets.weights import hf_config

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").symlink_to(models[name] / "model.safetensors")
    config = json.loads((models[name] / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**config, "rope_parameters": hf_config(
        spec_of(name, rope_scaling=None), {}, "float32")["rope_parameters"]}))
    assert np.abs(torch_logits(plain, sequence) - torch_logits(models[name], sequence)).max() > 100 * TOLERANCE["f16"]


def reader_of(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith(("GGUF.", "tokenizer."))}
    return kv, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("name", CASES)
def test_gguf_metadata_of_each_architecture(models, name):
    import gguf

    spec = spec_of(name)
    arch = "qwen2" if spec.architecture == "qwen2" else "llama"  # llama.cpp reads Mistral as Llama
    kv, tensors = reader_of(models[name] / "model-f16.gguf")
    assert kv["general.architecture"] == arch
    assert {k.split(".")[0] for k in kv} == {"general", arch}
    assert kv[f"{arch}.rope.freq_base"] == spec.rope_theta and kv[f"{arch}.rope.dimension_count"] == spec.head_dim
    scaling = {k: v for k, v in kv.items() if ".rope.scaling." in k}
    if name == "llama-linear":
        assert scaling == {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    else:
        assert scaling == {}
    assert ("rope_freqs.weight" in tensors) == (name == "llama-llama3")
    assert ("output.weight" in tensors) == (not spec.tie_embeddings)
    biases = {n for n in tensors if n.endswith(".bias")}
    if spec.architecture == "qwen2":
        assert biases == {f"blk.{i}.attn_{x}.bias" for i in range(2) for x in "qkv"}
    else:
        assert biases == set()
    one_d = {n: t.tensor_type for n, t in tensors.items() if len(t.shape) == 1}
    assert set(one_d.values()) == {gguf.GGMLQuantizationType.F32}, one_d  # norms and biases stay F32 in f16


def test_rope_freqs_are_the_factors_transformers_divides_by(models):
    """llama3: rope_freqs.weight[i] = default inv_freq[i] / transformers' scaled inv_freq[i]:
    1 for short wavelengths, `factor` for long ones, interpolated between (all three occur)."""
    import torch
    from transformers import AutoModelForCausalLM

    _, tensors = reader_of(models["llama-llama3"] / "model-f32.gguf")
    freqs = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float64)
    model = AutoModelForCausalLM.from_pretrained(models["llama-llama3"])
    dim = spec_of("llama-llama3").head_dim
    default = 1.0 / (10_000.0 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    np.testing.assert_allclose(freqs, (default / model.model.rotary_emb.inv_freq).numpy(), rtol=1e-6)
    assert freqs[0] == 1.0 and freqs[-1] == LLAMA3["factor"] and ((1 < freqs) & (freqs < 8)).any()


def test_gguf_names_are_gguf_py_names_for_qwen2():
    import gguf

    spec = spec_of("qwen2")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, spec.layers)
    assert gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2] == "qwen2"
    for hf in params.tensors(spec):
        suffix = ".bias" if hf.endswith(".bias") else ".weight"
        assert quants.gguf_name(hf) == names.get_name(hf, try_suffixes=(suffix,)), hf


@pytest.mark.parametrize("name", CASES)
def test_transformers_reads_the_f32_file_back(models, name):
    """transformers' own GGUF reader (which undoes the Llama permutation, and knows Qwen2 needs
    none) gives back every tensor exactly."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[name], gguf_file="model-f32.gguf")
    loaded = {k: v.numpy() for k, v in model.state_dict().items()}
    original = load_file(models[name] / "model.safetensors")
    if spec_of(name).tie_embeddings:
        original["lm_head.weight"] = original["model.embed_tokens.weight"]
    assert set(loaded) == set(original)
    for key, want in original.items():
        np.testing.assert_array_equal(loaded[key], want, err_msg=key)


def test_a_mistral_window_limits_attention_in_transformers():
    """`sliding_window` reaches transformers: the first `window` positions see what an unwindowed
    model sees, later ones less."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from targets.weights import hf_config, init_state

    logits = {}
    for window in (8, None):
        spec = spec_of("mistral", sliding_window=window)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_config(spec, {}, "float32"))).eval()
        model.load_state_dict({k: torch.from_numpy(v) * (4 if v.ndim == 2 else 1)
                               for k, v in init_state(spec, {}, 1).items()}, strict=False)
        assert model.config.sliding_window == window
        with torch.no_grad():
            logits[window] = model(torch.arange(3, 43)[None]).logits[0].numpy()
    gap = np.abs(logits[8] - logits[None]).max(axis=-1)
    assert gap[:8].max() < 1e-5 and gap[8:].min() > 1e-3, gap


# ---------------------------------------------------------------- through the pipeline

def load(folder: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model


def test_a_qwen2_init_step_writes_zero_biases_that_load(built, proj):
    model = load(built / "qinit")
    spec = project.load(proj.root).models["qwen"][0]
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.num_parameters() == params.count(spec)
    for layer in model.model.layers:
        for proj_ in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert not proj_.bias.any()
    manifest = json.loads((built / "qinit" / "manifest.json").read_text())
    assert manifest["metrics"]["parameters"] == params.count(spec)


@pytest.mark.parametrize("name", ["qwen", "mistral"])
def test_a_manifest_of_each_architecture_trains_and_exports(built, name):
    """Trained a few steps (Qwen2 from its init step: its own config.json), exported as a Hugging
    Face folder that loads as the trained weights, and as GGUF files with the torch logits."""
    import torch
    from safetensors.torch import load_file
    from test_gguf import agreement, llama_logits, torch_logits

    require_llama_cpp()
    rows = [json.loads(line) for line in (built / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    model = load(built / f"{name}-hf")
    assert type(model).__name__ == {"qwen": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[name]
    for key, tensor in load_file(built / name / "model.safetensors").items():
        assert torch.equal(model.state_dict()[key], tensor), key
    if name == "qwen":  # started from the init step: its config, as training writes it (float32)
        configs = [json.loads((built / step / "config.json").read_text()) for step in ("qwen", "qinit")]
        assert configs[0] == configs[1]
    ids = list(range(4, 70))
    reference = torch_logits(built / name, ids)
    for gtype in TOLERANCE:
        diff, kl, top1 = agreement(reference, llama_logits(built / f"{name}-gguf" / f"model-{gtype}.gguf", ids))
        assert diff < TOLERANCE[gtype] and top1 == 1.0, (name, gtype, diff, kl)


def test_a_mistral_student_distills_from_a_qwen2_teacher(built):
    rows = [json.loads(line) for line in (built / "student" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["kd"] is not None and r["kd"] > 0 for r in rows)
    assert type(load(built / "student")).__name__ == "MistralForCausalLM"


# ---------------------------------------------------------------- compile-time rules

GGUF_STEP = "  gguf:\n    kind: export\n    format: gguf\n    model: init\n"
REFUSED = ("specs/pipelines/main.yaml:14: steps.gguf.format: expected a model llama.cpp runs as transformers does "
           "(it gives Mistral no attention window, llama3 RoPE scaling to Llama and Mistral only, and Qwen2 heads × "
           "head_dim = hidden_size); found model 'tiny' with {what} (specs/models/tiny.yaml:{line})\n"
           "  fix: export `format: hf` instead, or train a model without {remove}")


@pytest.mark.parametrize("extra, what, line, remove", [
    ("architecture: mistral\nsliding_window: 16\n", "sliding_window 16", 11, "`sliding_window`"),
    ("architecture: qwen2\nrope_scaling: {type: llama3, factor: 8, original_max_positions: 64}\n",
     "qwen2 with llama3 RoPE scaling", 11, "the llama3 `rope_scaling`"),
    ("architecture: qwen2\nhead_dim: 16\n", "qwen2 with heads × head_dim = 64", 11,
     "a head_dim other than hidden_size / heads (8)"),
])
def test_a_gguf_export_llama_cpp_would_compute_otherwise_is_refused(tiny_project, extra, what, line, remove):
    tiny_project.write("specs/models/tiny.yaml", tiny_project.read("specs/models/tiny.yaml") + extra)
    tiny_project.write("specs/pipelines/main.yaml", tiny_project.read("specs/pipelines/main.yaml") + GGUF_STEP)
    tiny_project.write("specs/templates/chat.jinja", (REPO / "specs" / "templates" / "chat.jinja").read_text())
    with pytest.raises(SpecError) as info:
        project.load(tiny_project.root)
    assert str(info.value) == REFUSED.format(what=what, line=line, remove=remove)
    tiny_project.edit("specs/pipelines/main.yaml", "format: gguf", "format: hf")
    project.load(tiny_project.root)  # the Hugging Face folder computes what the weights do


def test_qwen2_and_mistral_need_a_head_dim_only_where_heads_do_not_divide_the_width(tiny_project):
    tiny_project.edit("specs/models/tiny.yaml", "heads: 4\n", "heads: 5\n")
    tiny_project.edit("specs/models/tiny.yaml", "kv_heads: 2\n", "kv_heads: 1\n")
    for arch in ("qwen2", "mistral"):
        tiny_project.write("specs/models/tiny.yaml",
                           tiny_project.read("specs/models/tiny.yaml") + f"architecture: {arch}\n")
        with pytest.raises(SpecError) as info:
            project.load(tiny_project.root)
        assert str(info.value) == (
            "specs/models/tiny.yaml:6: heads: expected a divisor of hidden_size (32), or a `head_dim`; found 5\n"
            "  fix: use 2, 4 or 8, or set `head_dim` (the width of one head, e.g. 6)")
        tiny_project.write("specs/models/tiny.yaml", tiny_project.read("specs/models/tiny.yaml") + "head_dim: 8\n")
        model = project.load(tiny_project.root).models["tiny"][0]
        assert (model.heads, model.head_dim, params.layer_tensors(model)["self_attn.q_proj"]) == (5, 8, (40, 32))
        tiny_project.edit("specs/models/tiny.yaml", f"architecture: {arch}\nhead_dim: 8\n", "")
    with pytest.raises(SpecError, match="heads: expected a divisor of hidden_size \\(32\\); found 5"):
        project.load(tiny_project.root)  # Llama: transformers' LlamaConfig refuses it even with a head_dim
