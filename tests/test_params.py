"""The derived parameter count and breakdown, checked against Hugging Face's `LlamaForCausalLM`.

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
from targets.weights import hf_config

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


def model_spec(**fields) -> ModelSpec:
    return ModelSpec.model_validate({"kind": "model", "name": "m", **fields})


def meta_model(spec: ModelSpec):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**hf_config(spec, {}, "float32"))
    with torch.device("meta"):
        return LlamaForCausalLM(config)


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


@pytest.mark.parametrize("name", CONFIGS)
def test_count_matches_transformers(name):
    spec = model_spec(**CONFIGS[name])
    assert params.count(spec) == meta_model(spec).num_parameters()


@pytest.mark.parametrize("name", CONFIGS)
def test_breakdown_matches_named_parameters(name):
    spec = model_spec(**CONFIGS[name])
    expected = hf_breakdown(meta_model(spec))
    if spec.tie_embeddings:
        expected["lm_head"] = 0
    assert params.breakdown(spec) == expected
    assert sum(params.breakdown(spec).values()) == params.count(spec)


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_config_carries_every_field(name):
    spec = model_spec(**CONFIGS[name])
    config = meta_model(spec).config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (
        spec.hidden_size, spec.intermediate_size, spec.layers)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (
        spec.heads, spec.kv_heads, spec.head_dim)
    assert (config.vocab_size, config.max_position_embeddings, config.rms_norm_eps) == (
        spec.vocab_size, spec.max_positions, spec.rms_norm_eps)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": spec.rope_theta}
    assert config.tie_word_embeddings is spec.tie_embeddings


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
    checked = [s for s in shipped.values() if s.expect_params is not None]
    assert {s.name for s in checked} >= {"gladius-125m", "gladius-tiny"}
    for spec in checked:
        assert meta_model(spec).num_parameters() == params.count(spec) == spec.expect_params, spec.name
