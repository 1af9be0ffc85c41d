"""The derived parameter count and breakdown, checked against transformers' `LlamaForCausalLM`,
`Qwen2ForCausalLM` and `MistralForCausalLM`, and against the published sizes of real models.

The reference models are built on the meta device (shapes, no memory), from the config
`targets.weights.hf_config` writes, so the spec -> config mapping is checked too.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from compiler import params, project
from compiler.specs import ModelSpec
from conftest import REPO
from targets.weights import CLASSES, hf_config, rope_parameters

CONFIGS = {
    "mha-untied": dict(hidden_size=64, intermediate_size=160, layers=2, heads=4, vocab_size=300),
    "gqa-tied": dict(hidden_size=64, intermediate_size=176, layers=3, heads=8, kv_heads=2, vocab_size=1000,
                     tie_embeddings=True),
    "mqa": dict(hidden_size=48, intermediate_size=96, layers=2, heads=6, kv_heads=1, vocab_size=257),
    "head-dim-wider": dict(hidden_size=48, intermediate_size=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                           vocab_size=500, rope_theta=500_000.0, rms_norm_eps=1e-5, max_positions=512),
    "head-dim-narrower-tied-mqa": dict(hidden_size=64, intermediate_size=100, layers=1, heads=4, kv_heads=1,
                                       head_dim=8, vocab_size=99, tie_embeddings=True),
    "one-layer-one-head": dict(hidden_size=32, intermediate_size=32, layers=1, heads=1, vocab_size=260),
}
ARCHITECTURES = ("llama", "qwen2", "mistral")
SCALINGS = {"linear": {"type": "linear", "factor": 2.0},
            "llama3": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.5, "high_freq_factor": 4.0,
                       "original_max_positions": 256}}


def model_spec(**fields) -> ModelSpec:
    return ModelSpec.model_validate({"kind": "model", "name": "m", **fields})


def meta_model(spec: ModelSpec):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**hf_config(spec, {}, "float32"))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def hf_breakdown(net) -> dict[str, int]:
    """The meta model's parameters summed per component, named as `params.breakdown` names them."""
    out: Counter = Counter()
    for name, p in net.named_parameters():  # a tied lm_head is the embedding, listed once
        name = re.sub(r"^model\.", "", name.removesuffix(".weight"))
        out[re.sub(r"^layers\.\d+\.", "layers.", name)] += p.numel()
    return dict(out)


@pytest.fixture(scope="module")
def shipped():
    return {name: spec for name, (spec, _) in project.load(REPO).models.items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", CONFIGS)
def test_count_matches_transformers(name, arch):
    spec = model_spec(**CONFIGS[name], architecture=arch)
    net = meta_model(spec)
    assert type(net).__name__ == CLASSES[arch]
    assert params.count(spec) == net.num_parameters() == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", CONFIGS)
def test_tensors_are_the_state_dict(name, arch):
    """Every tensor, biases included, with its shape and in state-dict order (the init builder
    draws the weights in this order); a tied LM head is not a tensor of its own."""
    spec = model_spec(**CONFIGS[name], architecture=arch)
    state = {k: tuple(v.shape) for k, v in meta_model(spec).state_dict().items()}
    if spec.tie_embeddings:
        del state["lm_head.weight"]
    assert list(params.tensors(spec).items()) == list(state.items())
    biases = {k for k in state if k.endswith(".bias")}
    assert biases == ({f"model.layers.{i}.self_attn.{x}_proj.bias" for i in range(spec.layers) for x in "qkv"}
                      if arch == "qwen2" else set())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", CONFIGS)
def test_breakdown_matches_named_parameters(name, arch):
    spec = model_spec(**CONFIGS[name], architecture=arch)
    expected = hf_breakdown(meta_model(spec))
    if spec.tie_embeddings:
        expected["lm_head"] = 0
    assert params.breakdown(spec) == expected
    assert sum(params.breakdown(spec).values()) == params.count(spec)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", CONFIGS)
def test_hf_config_carries_every_field(name, arch):
    spec = model_spec(**CONFIGS[name], architecture=arch)
    config = meta_model(spec).config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (
        spec.hidden_size, spec.intermediate_size, spec.layers)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (
        spec.heads, spec.kv_heads, spec.head_dim)
    assert (config.vocab_size, config.max_position_embeddings, config.rms_norm_eps) == (
        spec.vocab_size, spec.max_positions, spec.rms_norm_eps)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": spec.rope_theta}
    assert config.tie_word_embeddings is spec.tie_embeddings
    assert config.model_type == arch and getattr(config, "sliding_window", None) is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_rope_scaling_reaches_transformers_and_reads_back(tmp_path, arch, scaling):
    """The scaling in transformers 5's `rope_parameters`, read back by `from_pretrained` with
    the same values, and used: the model's inverse frequencies are those of the scaled RoPE."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    spec = model_spec(**CONFIGS["head-dim-wider"], architecture=arch, rope_scaling=SCALINGS[scaling])
    (tmp_path / "config.json").write_text(json.dumps(hf_config(spec, {}, "float32")))
    config = AutoConfig.from_pretrained(tmp_path)
    s = SCALINGS[scaling]
    expected = {"rope_type": scaling, "rope_theta": spec.rope_theta, "factor": s["factor"]}
    if scaling == "llama3":
        expected.update(low_freq_factor=1.5, high_freq_factor=4.0, original_max_position_embeddings=256)
    assert config.rope_parameters == rope_parameters(spec) == expected
    plain = AutoConfig.for_model(**hf_config(model_spec(**CONFIGS["head-dim-wider"], architecture=arch), {}, "float32"))
    scaled = AutoModelForCausalLM.from_config(config).model.rotary_emb.inv_freq
    ratio = (AutoModelForCausalLM.from_config(plain).model.rotary_emb.inv_freq / scaled).tolist()
    if scaling == "linear":
        assert ratio == pytest.approx([2.0] * 8)
    else:  # theta 500,000, 16 dims: wavelengths 6, 32 | 167 | 862 and longer, against 256/4 and 256/1.5
        assert ratio[:2] == [1.0, 1.0] and 1 < ratio[2] < 8 and ratio[3:] == pytest.approx([8.0] * 5)


def test_a_mistral_window_reaches_transformers():
    spec = model_spec(**CONFIGS["gqa-tied"], architecture="mistral", sliding_window=16)
    assert meta_model(spec).config.sliding_window == 16


REAL = {  # published parameter counts (model cards, `num_parameters()` of the released weights)
    "Qwen/Qwen2.5-1.5B-Instruct": (dict(architecture="qwen2", hidden_size=1536, intermediate_size=8960, layers=28,
                                        heads=12, kv_heads=2, vocab_size=151936, max_positions=32768,
                                        rope_theta=1_000_000.0, tie_embeddings=True), 1_543_714_304),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": (dict(hidden_size=2048, intermediate_size=5632, layers=22, heads=32,
                                                kv_heads=4, vocab_size=32000), 1_100_048_384),
    "meta-llama/Llama-3.1-8B": (dict(hidden_size=4096, intermediate_size=14336, layers=32, heads=32, kv_heads=8,
                                     vocab_size=128256, max_positions=131072, rope_theta=500_000.0,
                                     rope_scaling={"type": "llama3", "factor": 8.0, "original_max_positions": 8192}),
                                8_030_261_248),
}


@pytest.mark.parametrize("name", REAL)
def test_real_models_have_their_published_size(name):
    """From the spec alone: nothing is allocated, not even on the meta device."""
    fields, published = REAL[name]
    assert params.count(model_spec(**fields)) == published


def test_tied_embedding_shares_one_tensor():
    net = meta_model(model_spec(**CONFIGS["gqa-tied"]))
    assert net.lm_head.weight is net.model.embed_tokens.weight


def test_gladius_125m(shipped):
    spec = shipped["gladius-125m"]
    assert params.count(spec) == 124_668_672 == spec.expect_params
    assert params.count(spec) == meta_model(spec).num_parameters()
    assert params.breakdown(spec) == hf_breakdown(meta_model(spec))
    assert params.breakdown(spec) == {
        "embed_tokens": 32000 * 768,
        "layers.self_attn.q_proj": 12 * 768 * 768,
        "layers.self_attn.k_proj": 12 * 768 * 256,
        "layers.self_attn.v_proj": 12 * 768 * 256,
        "layers.self_attn.o_proj": 12 * 768 * 768,
        "layers.mlp.gate_proj": 12 * 768 * 2048,
        "layers.mlp.up_proj": 12 * 768 * 2048,
        "layers.mlp.down_proj": 12 * 2048 * 768,
        "layers.input_layernorm": 12 * 768,
        "layers.post_attention_layernorm": 12 * 768,
        "norm": 768,
        "lm_head": 32000 * 768,
    }


def test_every_shipped_model_with_expect_params_matches_transformers(shipped):
    # a plug-in's count is its module's own (tests/test_examples.py builds forge-trm at full size)
    checked = [s for s in shipped.values() if s.expect_params is not None and not s.architecture.startswith("module:")]
    assert {s.name for s in checked} >= {"gladius-125m", "gladius-tiny"}
    for spec in checked:
        assert meta_model(spec).num_parameters() == params.count(spec) == spec.expect_params, spec.name
