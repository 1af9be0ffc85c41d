"""LoRA fine-tuning (targets/lora.py through the train builder) and its exports (targets/export.py,
targets/gguf_lora.py), through a real project: what peft, transformers and llama.cpp make of
the files, against each other; checkpoints that hold the adapters only and a killed build
that resumes to the same bytes; QLoRA refused, whole, on a machine without CUDA.

Most builds run in this interpreter through the runner doit calls; the kill-and-resume test
runs the real `doit` and kills it with SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import runner
from compiler import graph, project, store
from conftest import (REPO, TINY_SPECS, Project, code_project, kill_at_first_checkpoint, require_llama_cpp,
                      tiny_corpus)
from targets import lora, train

pytestmark = pytest.mark.slow  # trains small models and loads GGUF files in llama.cpp

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# the conftest tiny model (2 layers, width 32, 4 heads of 8, 2 KV heads): LoRA from its init step
FT = {"kind": "train", "init": "init", "tokenizer": "tok", "data": "docs", "max_steps": 20, "batch_size": 4,
      "seq_len": 32, "optimizer": {"lr": 0.01}, "schedule": {"kind": "constant"},
      "eval": {"every": 10, "batches": 1}, "checkpoints": {"every": 5, "keep": 2},
      "lora": {"r": 4, "alpha": 8}}
# adapters on Q and K only, scaled up (alpha / r = 16): what llama.cpp's RoPE layout does to their rows shows
QK = {**FT, "lora": {"r": 4, "alpha": 64, "targets": ["q_proj", "k_proj"]}}
STEPS = {
    "ft": FT,
    "qk": QK,
    "adapter": {"kind": "export", "model": "ft", "adapter": True},
    "base-gguf": {"kind": "export", "format": "gguf", "model": "init", "types": ["f32", "f16"]},
    "merged-gguf": {"kind": "export", "format": "gguf", "model": "ft", "types": ["f32", "f16"]},
    "adapter-gguf": {"kind": "export", "format": "gguf", "model": "ft", "adapter": True, "types": ["f32", "f16"]},
    "qk-merged-gguf": {"kind": "export", "format": "gguf", "model": "qk", "types": ["f32"]},
    "qk-adapter-gguf": {"kind": "export", "format": "gguf", "model": "qk", "adapter": True, "types": ["f32"]},
}
F16_TOLERANCE = 5e-3  # tests/test_gguf.py's bound on f16's largest logit difference from torch
PROMPT = [0, 17, 250, 399, 45, 1, 88, 123, 7, 301, 64, 2]  # token ids of the 400-token tokenizer


def new_project(root: Path) -> Project:
    """conftest's tiny project (docs -> tok -> init) with the default chat template."""
    p = code_project(root)
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/templates/chat.jinja", (REPO / "specs/templates/chat.jinja").read_text())
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    return p


def build(p: Project, steps: dict) -> dict:
    """Add `steps` to pipeline main and build everything in this interpreter; each task's
    result (None, or doit's TaskFailed)."""
    pipeline = yaml.safe_load(p.read("specs/pipelines/main.yaml"))
    pipeline["steps"].update(steps)
    p.write("specs/pipelines/main.yaml", yaml.safe_dump(pipeline, sort_keys=False))
    g = graph.compile_graph(project.load(p.root))
    return {task: runner.run(g, task) for task in g.plans}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Project, dict]:
    """The project built, and the state of the trained peft model as it was just before the
    merge (the adapters around the frozen base)."""
    p = new_project(tmp_path_factory.mktemp("lora") / "proj")
    trained: dict = {}
    real = lora.merged

    def spy(model):
        trained.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lora, "merged", spy)
        results = build(p, STEPS)
    assert all(r is None for r in results.values()), results
    return p, trained


def entry(p: Project, step: str) -> Path:
    return p.root / "build" / "main" / step


def logits(folder: Path, adapter: Path | None = None) -> np.ndarray:
    """float32 logits of PROMPT from a Hugging Face folder, with a PEFT adapter folder over it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(torch.tensor([PROMPT])).logits[0].numpy()


def llama_logits(path: Path, adapter: Path | None = None) -> np.ndarray:
    """llama.cpp's logits at every position (float32 KV cache), with a LoRA adapter applied."""
    from llama_cpp import GGML_TYPE_F32, Llama

    extra = {"lora_path": str(adapter)} if adapter is not None else {}
    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, seed=0,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **extra)
    llm.eval(PROMPT)
    return np.array(llm.scores[: len(PROMPT)], dtype=np.float64)


# ---------------------------------------------------------------- training

def test_only_the_adapters_train(built):
    """The base weights inside the trained peft model are the init step's, bit for bit; every
    adapter B moved from zero; the optimizer held the adapters and nothing else."""
    import torch
    from safetensors.torch import load_file

    p, trained = built
    init = load_file(entry(p, "init") / "model.safetensors")
    base = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
            for k, v in trained.items() if "lora_" not in k}
    assert base.keys() == init.keys()
    assert all(torch.equal(base[k], init[k]) for k in init)
    b = {k: v for k, v in trained.items() if ".lora_B." in k}
    assert len(b) == 2 * len(TARGETS) and all(v.abs().max() > 0 for v in b.values())

    ckpt = entry(p, "ft") / "checkpoints" / "step-000020"
    with open(ckpt / "optimizer.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    tree = json.loads(header.pop("__metadata__")["optimizer"])
    assert [len(g["params"]) for g in tree["param_groups"]] == [4 * len(TARGETS)]  # A and B of 2 x 7 layers
    assert sorted(header) == sorted(f"state.{i}.{s}" for i in range(4 * len(TARGETS))
                                    for s in ("exp_avg", "exp_avg_sq", "step"))


def test_checkpoints_hold_the_adapters_only(built):
    from safetensors.torch import load_file

    p, _ = built
    ckpt = entry(p, "ft") / "checkpoints" / "step-000020"
    assert sorted(f.name for f in ckpt.iterdir()) == ["adapter_model.safetensors", "optimizer.safetensors",
                                                     "state.json"]
    names = sorted(load_file(ckpt / "adapter_model.safetensors"))
    expected = sorted(f"base_model.model.model.layers.{n}.{'self_attn' if t in TARGETS[:4] else 'mlp'}.{t}.lora_{ab}.weight"
                      for n in range(2) for t in TARGETS for ab in "AB")
    assert names == expected
    print("\n".join(names))
    # the entry's adapter is the last checkpoint's
    assert (ckpt / "adapter_model.safetensors").read_bytes() == (
        entry(p, "ft") / "adapter" / "adapter_model.safetensors").read_bytes()


def test_outputs_of_a_lora_step(built):
    p, _ = built
    manifest = json.loads((entry(p, "ft") / "manifest.json").read_text())
    assert {n for n in manifest["outputs"] if not n.startswith("checkpoints/")} == {
        "model.safetensors", "config.json", "metrics.jsonl", "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json", "tensorboard/main.ft/events.out.tfevents.ingot"}
    config = json.loads((entry(p, "ft") / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.0)
    assert config["target_modules"] == sorted(TARGETS) and config["inference_mode"] is True
    assert config["base_model_name_or_path"] is None  # not the init entry's path on this machine
    assert train.outputs(project.load(p.root).nodes["main.ft"].spec) == (*train.OUTPUTS, *lora.OUTPUTS)


def test_the_merged_entry_loads_as_a_plain_model(built):
    """transformers applies an adapter_config.json it finds beside config.json: the adapter sits
    in adapter/, so whatever loads the entry (evaluate, a teacher, `init:`) gets the merged
    model once, not the adapters a second time."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    p, _ = built
    model = AutoModelForCausalLM.from_pretrained(entry(p, "ft"))
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    saved = load_file(entry(p, "ft") / "model.safetensors")
    assert all((model.state_dict()[k] == v).all() for k, v in saved.items())


def test_merged_model_is_the_base_with_the_adapter(built):
    """The merged folder's logits are those of PeftModel.from_pretrained(base, adapter export)
    within 1e-5 (float32), and the adapter changed them."""
    p, _ = built
    merged = logits(entry(p, "ft"))
    over = logits(entry(p, "init"), entry(p, "adapter"))
    diff = float(np.abs(merged - over).max())
    moved = float(np.abs(merged - logits(entry(p, "init"))).max())
    print(f"merged vs base + adapter (peft): max |logit diff| {diff:.2e}; the adapter moved logits by {moved:.3f}")
    assert diff < 1e-5
    assert moved > 0.05


def test_adapter_export_is_a_peft_folder(built):
    p, _ = built
    folder = entry(p, "adapter")
    assert {f.name for f in folder.iterdir()} == {"adapter_model.safetensors", "adapter_config.json",
                                                 "tokenizer.json", "tokenizer_config.json",
                                                 "special_tokens_map.json", "chat_template.jinja", "manifest.json"}
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (folder / name).read_bytes() == (entry(p, "ft") / "adapter" / name).read_bytes()
    assert os.path.samefile(folder / "adapter_model.safetensors", entry(p, "ft") / "adapter" / "adapter_model.safetensors")


# ---------------------------------------------------------------- GGUF adapter

@pytest.mark.parametrize("step, t", [("ft", "f32"), ("ft", "f16"), ("qk", "f32")])
def test_gguf_adapter_in_llama_cpp_gives_the_merged_models_logits(built, step, t):
    """llama.cpp applying the GGUF adapter over the base's GGUF file computes what the merged
    model's GGUF file computes, within f16's tolerance of tests/test_gguf.py."""
    require_llama_cpp()
    p, _ = built
    prefix = "" if step == "ft" else f"{step}-"
    base = entry(p, "base-gguf") / f"model-{t}.gguf"
    applied = llama_logits(base, entry(p, f"{prefix}adapter-gguf") / f"adapter-{t}.gguf")
    merged = llama_logits(entry(p, f"{prefix}merged-gguf") / f"model-{t}.gguf")
    diff = float(np.abs(applied - merged).max())
    moved = float(np.abs(llama_logits(base) - merged).max())
    print(f"{step} {t}: base + GGUF adapter vs merged GGUF: max |logit diff| {diff:.2e} (the adapter moves {moved:.3f})")
    assert diff < F16_TOLERANCE
    assert moved > 20 * F16_TOLERANCE  # the adapter's effect is far above the tolerance


def test_gguf_adapter_without_the_rope_permutation_would_be_wrong(built, tmp_path, monkeypatch):
    """The row permutation of Q and K's lora_b is what makes llama.cpp agree: written without it,
    the same adapter gives other logits."""
    require_llama_cpp()
    from compiler import quants
    from targets import gguf_lora

    p, _ = built
    monkeypatch.setattr(gguf_lora, "rope_group", lambda name, config: 1)
    config = json.loads((entry(p, "qk") / "config.json").read_text())
    matrices = gguf_lora.adapter_matrices(entry(p, "qk") / "adapter" / "adapter_model.safetensors", config)
    metadata = {"general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 64.0}
    gguf_lora.write(tmp_path / "unpermuted.gguf", matrices, "llama", quants.TYPES["f32"], metadata)
    applied = llama_logits(entry(p, "base-gguf") / "model-f32.gguf", tmp_path / "unpermuted.gguf")
    merged = llama_logits(entry(p, "qk-merged-gguf") / "model-f32.gguf")
    diff = float(np.abs(applied - merged).max())
    print(f"qk f32 without the permutation: max |logit diff| {diff:.3f}")
    assert diff > 10 * F16_TOLERANCE


def test_gguf_adapter_metadata_and_tensors(built):
    import gguf

    p, _ = built
    path = entry(p, "adapter-gguf") / "adapter-f16.gguf"
    reader = gguf.GGUFReader(path)
    kv = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert kv == {"general.architecture": "llama", "general.type": "adapter", "general.name": "tiny",
                  "general.quantization_version": 2, "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
                  "adapter.type": "lora", "adapter.lora.alpha": 8.0}
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    outs = {"q_proj": 32, "k_proj": 16, "v_proj": 16, "o_proj": 32, "gate_proj": 64, "up_proj": 64, "down_proj": 32}
    ins = {t: 64 if t == "down_proj" else 32 for t in TARGETS}
    shapes = {t.name: (list(map(int, t.shape)), t.tensor_type.name) for t in reader.tensors}
    # GGUF shapes are ne: lora_a [in, r], lora_b [r, out], as llama.cpp checks them against the base
    assert shapes == {f"blk.{n}.{names[t]}.weight.lora_{ab}": ([ins[t], 4] if ab == "a" else [4, outs[t]], "F16")
                      for n in range(2) for t in TARGETS for ab in "ab"}
    manifest = json.loads((entry(p, "adapter-gguf") / "manifest.json").read_text())
    assert sorted(manifest["outputs"]) == ["adapter-f16.gguf", "adapter-f32.gguf"]
    assert manifest["metrics"]["files"]["f16"]["histogram"] == {"F16": 28}


# ---------------------------------------------------------------- QLoRA on a machine without CUDA

def test_qlora_without_cuda_fails_before_any_compute(tmp_path, monkeypatch):
    """`quantize_base: nf4` on a CPU machine: the step fails with one whole message, before
    its data is read or a model loaded."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA runs here")

    def never(*args, **kwargs):
        raise AssertionError("read data or loaded a model before refusing QLoRA")

    for name in ("TokenData", "build_model"):
        monkeypatch.setattr(train, name, never)
    monkeypatch.setattr(lora, "quantized_base", never)
    p = new_project(tmp_path / "proj")
    results = build(p, {"q": {**FT, "quantize_base": "nf4"}})
    assert str(results["main.q"]) == (
        "TaskFailed\nmain.q: quantize_base: nf4 (QLoRA) needs a CUDA GPU, and this step runs on the cpu: "
        "bitsandbytes' 4-bit layers run on CUDA only. Build it on a machine with a GPU, or remove `quantize_base` "
        "to train the adapters over the unquantized base\n")
    assert not (p.root / "build" / "main" / "q").exists()


def test_qlora_on_cuda_without_bitsandbytes_names_the_extra(monkeypatch):
    import importlib.util

    import torch

    from targets import BuildError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(BuildError) as exc:
        lora.require_qlora(torch.device("cuda", 0))
    assert str(exc.value) == ("quantize_base: nf4 (QLoRA) needs bitsandbytes, which is not installed: "
                              "pip install -r requirements-cuda.txt")
    assert (REPO / "requirements-cuda.txt").read_text().splitlines()[-1] == "bitsandbytes==0.50.2"


def test_qlora_plumbing_with_the_float_base_standing_in_ends_as_lora(built, monkeypatch):
    """What of QLoRA runs without a GPU: with the 4-bit load stood in by the float one, a
    `quantize_base` step trains the same adapters as the LoRA step and merges them into the base
    rebuilt unquantized on the CPU: the same bytes, the same losses."""
    from types import SimpleNamespace

    from compiler.inputs import INIT
    from targets import Job, trainloop

    def float_base(folder, device):
        return trainloop.build_model(Job("stand-in", SimpleNamespace(init="init"), folder, inputs={INIT: folder}),
                                     device)[0]

    p, _ = built
    monkeypatch.setattr(lora, "require_qlora", lambda device: None)
    monkeypatch.setattr(lora, "quantized_base", float_base)
    assert build(p, {"q": {**FT, "quantize_base": "nf4"}})["main.q"] is None
    for name in ("model.safetensors", "config.json", "adapter/adapter_model.safetensors"):
        assert (entry(p, "q") / name).read_bytes() == (entry(p, "ft") / name).read_bytes(), name
    losses = [[json.loads(r)["loss"] for r in (entry(p, s) / "metrics.jsonl").read_text().splitlines()]
              for s in ("q", "ft")]
    assert losses[0] == losses[1]


# ---------------------------------------------------------------- a real kill -9

KILLED = {**FT, "max_steps": 60, "batch_size": 8, "seq_len": 64, "checkpoints": {"every": 5, "keep": 2},
          "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}  # dropout draws: the RNG must be restored too


def test_killed_lora_build_resumes_to_the_same_bytes(tmp_path_factory):
    """doit is killed with SIGKILL once the first checkpoint exists; the next `doit` resumes
    from it and ends with the bytes of an uninterrupted build in another project: merged model,
    adapter and every loss."""
    a, b = (new_project(tmp_path_factory.mktemp(n) / "proj") for n in ("killed", "whole"))
    for p in (a, b):
        p.write("specs/pipelines/run.yaml", yaml.safe_dump(
            {"kind": "pipeline", "name": "run", "steps": {"s": {**KILLED, "init": "main.init",
                                                               "tokenizer": "main.tok"}}}))
    work = kill_at_first_checkpoint(a, "run.s")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    key = graph.compile_graph(project.load(a.root)).key("run.s")
    assert not store.is_complete(a.root, key)
    done = [p.name for p in (work / key / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert done and "step-000060" not in done

    result = subprocess.run([sys.executable, "-m", "doit", "run.s"], cwd=a.root, env=env, capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert "resuming from checkpoint build/store/.work/" in result.stderr.decode()
    resumed = a.root / "build" / "run" / "s"
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert 5 <= manifest["metrics"]["resumed_from"] < 60

    g = graph.compile_graph(project.load(b.root))
    assert all(runner.run(g, task) is None for task in g.plans)
    whole = b.root / "build" / "run" / "s"
    assert json.loads((whole / "manifest.json").read_text())["key"] == key
    for name in ("model.safetensors", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    losses = [[json.loads(line)["loss"] for line in (e / "metrics.jsonl").read_text().splitlines()]
              for e in (resumed, whole)]
    assert losses[0] == losses[1] and len(losses[0]) == 60
