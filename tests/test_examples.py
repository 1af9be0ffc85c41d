"""The example pipelines of specs/pipelines, built as they ship, at their `tiny` profile:
cogumi (curate -> LoRA SFT -> judged evaluation -> failures -> targeted LoRA -> evaluation
again -> GGUF, with llama.cpp's OpenAI-compatible server as reference and judge) and forge
(three variants of a plug-in recurrent-depth model on a three-stage curriculum)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, Project, code_project, copy_project_files, require_llama_cpp
from servers import LlamaServer

COGUMI = "specs/pipelines/cogumi.yaml"
PLACEHOLDER = "http://127.0.0.1:8080/v1"  # where cogumi.yaml expects the reference/judge server


def example_project(root: Path) -> Project:
    """This checkout's code, manifests, data and plug-in models, and nothing built."""
    p = code_project(root)
    copy_project_files(root)
    return p


def masked_loss(folder: Path, tokens: Path, seq_len: int = 128) -> float:
    """Mean next-token loss of the model in entry `folder` on the response tokens of the train
    split in tokens entry `tokens` (what an sft step learns), in windows of `seq_len`."""
    import torch
    from transformers import AutoModelForCausalLM

    info = json.loads((tokens / "tokens.json").read_text())
    ids = np.fromfile(tokens / "train.bin", dtype=info["dtype"]).astype(np.int64)
    mask = np.fromfile(tokens / "train.mask.bin", dtype=np.uint8)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            x = torch.from_numpy(ids[start:start + seq_len + 1])[None]
            m = torch.from_numpy(mask[start + 1:start + seq_len + 1].astype(bool))
            logits = model(input_ids=x[:, :-1]).logits[0]
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
            total += float(nll[m].sum())
            count += int(m.sum())
    return total / count


@pytest.mark.slow  # five small trainings, two judged evaluations on a llama.cpp server (~2 min)
def test_cogumi_turns_a_weak_models_losses_into_data_that_lowers_its_loss(tmp_path):
    require_llama_cpp()
    p = example_project(tmp_path / "proj")
    p.doit("profile=tiny", "cogumi.reference-gguf")
    build = p.root / "build" / "@tiny"
    server = LlamaServer(build / "cogumi" / "reference-gguf" / "model-q8_0.gguf", tmp_path / "server")
    try:
        text = p.read(COGUMI)
        assert text.count(PLACEHOLDER) == 2  # the judge's and the reference's: not keyed, so nothing rekeys
        p.write(COGUMI, text.replace(PLACEHOLDER, server.url))
        p.doit("profile=tiny", "cogumi.gguf", "cogumi.re-evaluate")
        asked = server.chat_requests()
    finally:
        server.stop()
    items = [json.loads(line) for line in (build / "cogumi" / "evaluate" / "items.jsonl").read_text().splitlines()]
    prompts = (p.root / "data" / "cogumi" / "prompts.jsonl").read_text().splitlines()
    assert [i["instruction"] for i in items] == [json.loads(line)["prompt"] for line in prompts]
    failed = [i for i in items if i["verdict"] in ("loss", "tie")]
    assert failed, "the weak model lost or tied nothing"
    stats = json.loads((build / "dataset" / "cogumi-failures" / "stats.json").read_text())
    assert stats["documents_out"] == len(failed)
    shards = sorted((build / "dataset" / "cogumi-failures").glob("*.jsonl"))
    records = [json.loads(line) for s in shards for line in s.read_text().splitlines()]
    by_instruction = {i["instruction"]: i for i in failed}
    assert {r["instruction"] for r in records} == set(by_instruction)
    # the tiny profile's failures learn the prompt set's answers (its reference says next to nothing)
    assert all(r["response"] == by_instruction[r["instruction"]]["expected"] != "" for r in records)
    # the second evaluation asked the reference nothing: 20 reference answers and 20 verdicts, then 20 verdicts
    assert asked == 3 * len(items)
    again = json.loads((build / "cogumi" / "re-evaluate" / "manifest.json").read_text())["metrics"]["prompt_set"]
    assert again["cache"]["reference"] == {"hits": len(items), "misses": 0}
    tokens = build / "cogumi" / "tokenizer@cogumi-failures"
    before, after = (masked_loss(build / "cogumi" / s, tokens) for s in ("sft", "targeted"))
    assert after < before - 0.1, (before, after)
    assert (build / "cogumi" / "gguf" / "model-q8_0.gguf").is_file()


FORGE_TRAIN = ("forge@reasoning.train", "forge@memory.train", "forge@speed.train")


@pytest.mark.slow  # three tiny 12-step trainings of the plug-in and four reports (~1 min)
def test_forge_trains_three_variants_of_the_plugin_sharing_their_data(tmp_path):
    from compiler import graph, project

    p = example_project(tmp_path / "proj")
    first = p.doit("profile=tiny", "forge.compare", *(t.replace(".train", ".report") for t in FORGE_TRAIN))
    build = p.root / "build" / "@tiny"
    # one tokenizer and one set of token shards for the three variants
    g = graph.compile_graph(project.load(p.root, "tiny"))
    forge = sorted(t for t in g.plans if t.startswith("forge"))
    assert [t for t in forge if "@" not in t.split(".")[0]] == [
        "forge.compare", "forge.tokenizer"] + [f"forge.tokenizer@forge-{d}" for d in
                                               ("data", "language", "logic", "numbers", "systems", "text")]
    assert first.stdout.count(".  forge.tokenizer\n") == 1
    keys = set()
    for task in FORGE_TRAIN:
        entry = build / task.replace(".", "/")
        m = json.loads((entry / "manifest.json").read_text())
        keys.add(m["key"])
        assert m["spec"]["optimizer"]["kind"] == "muon" and m["spec"]["optimizer"]["qk_clip"] == 30
        rows = [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]
        assert [r["stage"] for r in rows][::4] == ["foundation", "reasoning", "advanced"] or task.startswith(
            "forge@reasoning")
        assert all(set(r["aux"]) == {"halting_steps", "memory_gate", "memory_usage"} for r in rows)
        assert list((entry / "tensorboard").iterdir())  # its TensorBoard run
        report = (build / task.replace(".train", "/report") / "report.md").read_text()
        assert "### Auxiliary metrics" in report and "| advanced | halting_steps |" in report
    assert len(keys) == 3
    compare = (build / "forge" / "compare" / "report.md").read_text()
    table = compare.split("## Side by side")[1].split("\n## ", 1)[0]
    assert [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| forge@")] == list(FORGE_TRAIN)
    # an edit to one variant's override rebuilds that variant, and the comparison that reads it
    p.edit("specs/pipelines/forge.yaml", "speed: {steps: {train: {seq_len: 16,", "speed: {steps: {train: {seq_len: 24,")
    again = p.doit("profile=tiny", "forge.compare", *(t.replace(".train", ".report") for t in FORGE_TRAIN))
    assert sorted(line[3:] for line in again.stdout.splitlines() if line.startswith(".  ")) == [
        "forge.compare", "forge@speed.report", "forge@speed.train"]


def test_the_forge_model_has_the_parameters_its_manifest_states():
    """The full-size forge-trm (not its tiny profile): the module built at that size holds
    exactly the count the manifest states, which is what `parameter_count` says."""
    from compiler import project
    from targets import architectures

    model = project.load(REPO).models["forge-trm"][0]
    config = architectures.config_of(model, {"bos": 0, "eos": 1, "pad": 3})
    built = architectures.build_module(REPO, config, expect=model.expect_params)
    assert sum(p.numel() for p in built.parameters()) == model.expect_params == 32_677_890
