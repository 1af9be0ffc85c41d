"""Init builder: seeded random weights that `LlamaForCausalLM.from_pretrained` loads as they were saved."""

from __future__ import annotations

import json
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compiler import params, project
from compiler.specs import InitStep
from compiler.inputs import TOKENIZER
from conftest import code_project, TINY_SPECS, Project, ran, tiny_corpus
from targets import Job
from targets import init as init_builder

pytestmark = pytest.mark.slow  # `doit` builds a model in a fresh interpreter: torch and transformers load

TIED = """
    kind: model
    name: tied
    hidden_size: 48
    intermediate_size: 96
    layers: 1
    heads: 4
    kv_heads: 1
    vocab_size: 400
    tie_embeddings: true
"""
TIED_STEP = "  inittied:\n    kind: init\n    model: tied\n    tokenizer: tok\n    seed: 7\n"


def new_project(root: Path) -> Project:
    """The tiny project of conftest plus a tied-embedding model, in a directory the whole module shares."""
    p = code_project(root)
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("specs/models/tied.yaml", TIED)
    p.write("specs/pipelines/main.yaml", p.read("specs/pipelines/main.yaml") + TIED_STEP)
    return p


def build_in_process(p: Project) -> None:
    """Every step of `p` through the runner doit calls, in this interpreter (transformers loads once)."""
    import runner
    from compiler import graph

    g = graph.compile_graph(project.load(p.root))
    for task in g.plans:
        assert runner.run(g, task) is None, task


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """Two independent projects with the same manifests: one built by `doit` in a fresh
    interpreter, the other meanwhile by the same runner in this one."""
    a, b = (new_project(tmp_path_factory.mktemp(name) / "proj") for name in ("a", "b"))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(a.doit)
        build_in_process(b)
        assert sorted(ran(pending.result())) == ["dataset.docs", "main.init", "main.inittied", "main.tok"]
    return a, b


@pytest.fixture(scope="module")
def main(projects):
    return projects[0].root / "build" / "main"


def load(path: Path):
    from transformers import LlamaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning while loading fails the test
        model, info = LlamaForCausalLM.from_pretrained(path, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model


def header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


@pytest.mark.parametrize("step", ["init", "inittied"])
def test_loads_exactly_what_was_saved(main, step):
    import torch
    from safetensors.torch import load_file

    model = load(main / step)
    saved = load_file(main / step / "model.safetensors")
    state = model.state_dict()
    assert set(saved) <= set(state)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name  # nothing re-initialized on load
    assert model.dtype == torch.float32


def test_parameter_count_is_the_derived_count(projects, main):
    specs = {name: spec for name, (spec, _) in project.load(projects[0].root).models.items()}
    for step, name in (("init", "tiny"), ("inittied", "tied")):
        manifest = json.loads((main / step / "manifest.json").read_text())
        assert load(main / step).num_parameters() == manifest["metrics"]["parameters"] == params.count(specs[name])


def test_same_seed_same_bytes_in_two_projects(projects):
    a, b = (p.root / "build" / "main" for p in projects)
    for step in ("init", "inittied"):
        assert (a / step).resolve().name == (b / step).resolve().name  # one key wherever the project lives
        for name in ("model.safetensors", "config.json"):
            assert (a / step / name).read_bytes() == (b / step / name).read_bytes(), (step, name)
    assert (a / "init" / "model.safetensors").read_bytes() != (a / "inittied" / "model.safetensors").read_bytes()


def test_seed_is_what_decides_the_weights(projects, main, tmp_path):
    """A direct build with the step's seed gives the project's bytes; another seed gives others."""
    model = project.load(projects[0].root).models["tiny"][0]
    outs = {}
    for seed in (0, 1):
        outs[seed] = tmp_path / f"seed{seed}"
        outs[seed].mkdir()
        spec = InitStep.model_validate({"kind": "init", "model": "tiny", "tokenizer": "tok", "seed": seed})
        init_builder.build(Job("main.init", spec, outs[seed], inputs={TOKENIZER: main / "tok"},
                               models={"model": model}))
    assert (outs[0] / "model.safetensors").read_bytes() == (main / "init" / "model.safetensors").read_bytes()
    assert (outs[1] / "model.safetensors").read_bytes() != (outs[0] / "model.safetensors").read_bytes()


def test_tied_embeddings(main):
    model = load(main / "inittied")
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    _, head = header(main / "inittied" / "model.safetensors")
    assert "lm_head.weight" not in head and "model.embed_tokens.weight" in head
    untied = load(main / "init")
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_config_special_ids_match_the_tokenizer(main):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(main / "tok")
    config = json.loads((main / "init" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 3)
    model = load(main / "init")
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (0, 1, 3)
    assert model.config.vocab_size >= len(tok)


@pytest.mark.parametrize("step", ["init", "inittied"])
def test_weights_are_safetensors_not_pickle(main, step):
    entry = main / step
    assert {p.name for p in entry.iterdir()} == {"model.safetensors", "config.json", "manifest.json"}
    data = (entry / "model.safetensors").read_bytes()
    assert data[:1] != b"\x80" and data[:2] != b"PK"  # neither a pickle nor torch.save's zip
    n, head = header(entry / "model.safetensors")
    assert head.pop("__metadata__") == {"format": "pt"}
    spans = sorted(tuple(t["data_offsets"]) for t in head.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert 8 + n + spans[-1][1] == len(data)  # header and tensors, nothing else
    assert {t["dtype"] for t in head.values()} == {"F32"}


def test_weights_are_as_readable_as_the_other_outputs(projects):
    for p in projects:
        entry = p.root / "build" / "main" / "init"
        assert (entry / "model.safetensors").stat().st_mode == (entry / "config.json").stat().st_mode


def test_initialization_follows_the_config(main):
    import torch

    model = load(main / "init")
    layer = model.model.layers[0]
    for weight in (model.model.embed_tokens.weight, layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight):
        assert 0.015 < weight.std().item() < 0.025  # initializer_range 0.02
    assert torch.equal(layer.input_layernorm.weight, torch.ones(32))


@pytest.mark.parametrize("step", ["init", "inittied"])
def test_forward_pass(main, step):
    import torch

    model = load(main / step).eval()
    ids = torch.tensor([[0, 17, 250, 399, 1], [0, 5, 6, 7, 3]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 5, model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1])


def test_bfloat16_weights(main, tmp_path):
    import torch

    model_spec = project.load(main.parents[1]).models["tiny"][0]
    spec = InitStep.model_validate({"kind": "init", "model": "tiny", "tokenizer": "tok", "dtype": "bfloat16"})
    init_builder.build(Job("main.init", spec, tmp_path, inputs={TOKENIZER: main / "tok"},
                           models={"model": model_spec}))
    _, head = header(tmp_path / "model.safetensors")
    head.pop("__metadata__")
    assert {t["dtype"] for t in head.values()} == {"BF16"}
    model = load(tmp_path)
    assert model.dtype == torch.bfloat16
    assert model.num_parameters() == params.count(model_spec)
