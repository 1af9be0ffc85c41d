"""Evaluate builder, through a real project: its perplexities recomputed independently (torch
over the same validation windows, llama.cpp's files against the checkpoint) and its
generation benchmark checked for what it claims to count."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from compiler import entries
from compiler.entries import GgufEntry
from compiler.specs import DEFAULT_PROMPTS
from conftest import REPO, Project, code_project, require_llama_cpp, tiny_corpus, TINY_SPECS
from targets import BuildError

pytestmark = pytest.mark.slow  # trains a small model and loads GGUF files in llama.cpp

STEPS = {
    "student": {"kind": "train", "model": "tiny", "tokenizer": "tok", "data": "docs", "max_steps": 15,
                "batch_size": 4, "seq_len": 32, "optimizer": {"lr": 0.003}, "eval": {"every": 100, "batches": 1}},
    "gguf": {"kind": "export", "format": "gguf", "model": "student", "types": ["f32", "q8_0"]},
    "evaluate": {"kind": "evaluate", "model": "student", "gguf": "gguf", "seq_len": 32, "windows": 6,
                 "max_new_tokens": 8},
    "short": {"kind": "evaluate", "model": "student", "seq_len": 32, "windows": 2, "max_new_tokens": 4,
              "prompts": [{"name": "hi", "text": "Hi there."}]},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    require_llama_cpp()
    p = code_project(tmp_path_factory.mktemp("evaluate") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/templates/chat.jinja", (REPO / "specs/templates/chat.jinja").read_text())
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    pipeline = yaml.safe_load(p.read("specs/pipelines/main.yaml"))
    pipeline["steps"].update(STEPS)
    p.write("specs/pipelines/main.yaml", yaml.safe_dump(pipeline, sort_keys=False))
    p.doit()
    return p


def metrics(p: Project, step: str = "evaluate") -> dict:
    return json.loads((p.root / "build/main" / step / "metrics.json").read_text())


def windows(p: Project, seq_len: int, n: int) -> np.ndarray:
    stream = np.fromfile(p.root / "build/main/tok@docs/validation.bin", dtype="<u2")
    return stream[: n * seq_len].reshape(n, seq_len).astype(np.int64)


def test_checkpoint_perplexity_is_the_mean_next_token_loss_on_the_validation_windows(built):
    import torch
    from transformers import AutoModelForCausalLM

    m = metrics(built)
    ids = torch.from_numpy(windows(built, 32, 6))
    model = AutoModelForCausalLM.from_pretrained(built.root / "build/main/student", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].double()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()
    assert m["data"] == {"dataset": "docs", "split": "validation", "seq_len": 32, "windows": 6, "tokens": 6 * 31}
    assert m["checkpoint"]["loss"] == pytest.approx(loss, abs=1e-9)
    assert m["checkpoint"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-9)
    assert m["checkpoint"]["parameters"] == 51_360 and m["checkpoint"]["weights_bytes"] == 4 * 51_360


def test_each_gguf_file_is_measured_on_the_same_tokens(built):
    m = metrics(built)
    files = entries.load(built.root / "build/main/gguf", GgufEntry).metrics.files
    assert list(m["gguf"]) == ["f32", "q8_0"]
    for name, row in m["gguf"].items():
        assert row["file"] == f"model-{name}.gguf"
        assert (row["bytes"], row["bits_per_weight"]) == (files[name].bytes, files[name].bits_per_weight)
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
        assert row["perplexity_ratio"] == pytest.approx(row["perplexity"] / m["checkpoint"]["perplexity"])
    # llama.cpp on the f32 file computes what torch computes; q8_0 is close, not equal
    assert m["gguf"]["f32"]["loss"] == pytest.approx(m["checkpoint"]["loss"], abs=1e-4)
    assert m["gguf"]["q8_0"]["loss"] != m["gguf"]["f32"]["loss"]
    assert m["gguf"]["q8_0"]["perplexity_ratio"] == pytest.approx(1.0, abs=0.01)


def test_generation_benchmark_counts_what_it_says(built):
    from transformers import AutoTokenizer

    m = metrics(built)["generation"]
    tok = AutoTokenizer.from_pretrained(built.root / "build/main/tok")
    template = (REPO / "specs/templates/chat.jinja").read_text()
    assert m["max_new_tokens"] == 8
    assert m["prompts"] == [{"name": p.name, "text": p.text} for p in DEFAULT_PROMPTS]
    assert [p.name for p in DEFAULT_PROMPTS] == ["greeting", "tool-routing", "code", "factual", "explanation"]
    assert list(m["engines"]) == ["torch", "gguf-f32", "gguf-q8_0"]
    for name, engine in m["engines"].items():
        runs = engine["runs"]
        assert [r["prompt"] for r in runs] == [p.name for p in DEFAULT_PROMPTS]
        for run, prompt in zip(runs, DEFAULT_PROMPTS):
            # the prompt as transformers' apply_chat_template renders and tokenizes it
            ids = tok.apply_chat_template([{"role": "user", "content": prompt.text}], chat_template=template,
                                          add_generation_prompt=True, tokenize=True, return_dict=False)
            assert run["input_tokens"] == len(ids), (name, prompt.name)
            assert 0 <= run["output_tokens"] <= 8
            assert 0 < run["first_token_s"] <= run["latency_s"]
            assert run["tokens_per_s"] == pytest.approx(run["output_tokens"] / run["latency_s"])
            assert tok.decode(tok(run["text"], add_special_tokens=False)["input_ids"]) == run["text"]
        assert engine["avg_latency_s"] == pytest.approx(sum(r["latency_s"] for r in runs) / 5)
        assert engine["avg_tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in runs) / 5)
        assert engine["peak_tokens_per_s"] == max(r["tokens_per_s"] for r in runs)
        assert engine["output_tokens"] == sum(r["output_tokens"] for r in runs)
        assert engine["load_seconds"] > 0 and engine["weights_bytes"] > 0
    assert m["engines"]["torch"]["weights_bytes"] == 4 * 51_360
    gguf_files = entries.load(built.root / "build/main/gguf", GgufEntry).metrics.files
    # llama.cpp's own count of the weights' bytes is the file's tensor data
    assert m["engines"]["gguf-q8_0"]["weights_bytes"] == gguf_files["q8_0"].tensor_bytes


def test_a_manifest_prompt_set_and_no_gguf(built):
    m = metrics(built, "short")
    assert m["gguf"] == {} and list(m["generation"]["engines"]) == ["torch"]
    assert [r["prompt"] for r in m["generation"]["engines"]["torch"]["runs"]] == ["hi"]
    assert m["data"]["windows"] == 2
    assert m["checkpoint"]["loss"] != metrics(built)["checkpoint"]["loss"]  # 2 windows, not 6


def test_a_validation_split_shorter_than_a_window_is_an_error(tmp_path):
    from targets.evaluate import validation_windows

    (tmp_path / "tokens.json").write_text(json.dumps({"dtype": "uint16", "eos_id": 2, "bos_id": None, "pad_id": None,
                                                      "vocab_size": 400, "splits": {}}))
    np.arange(40, dtype="<u2").tofile(tmp_path / "validation.bin")
    assert len(validation_windows(tmp_path, 16, 10)) == 2
    with pytest.raises(BuildError) as info:
        validation_windows(tmp_path, 64, 10)
    assert str(info.value) == ("the validation split has 40 tokens, fewer than one window of seq_len 64; lower "
                               "seq_len or give the dataset a larger validation split")
