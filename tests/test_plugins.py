"""Plug-in architectures (`architecture: module:PATH:CLASS`): compile-time checks, keys that follow the
plug-in's source, and the shipped example models/trm.py (a recurrent-depth transformer with ACT halting
and a memory) through train, resume, curriculum, distillation, init and evaluation; exporters through a
Llama behind the interface.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import runner
from compiler import graph, project
from compiler.errors import SpecError
from compiler.plugins import PATTERN
from compiler.specs import PLUGIN_PATTERN
from conftest import REPO, TINY_SPECS, Project, build_pipeline as build, code_project, tiny_corpus
from targets import architectures, losses, plugins

TRM_REF = "module:models/trm.py:TRM"
TRM_MODEL = """
    kind: model
    name: trm
    architecture: module:models/trm.py:TRM
    hidden_size: 32
    intermediate_size: 64
    layers: 1
    heads: 4
    kv_heads: 2
    vocab_size: 512
    max_positions: 64
    options:
      max_steps: 3
      memory_slots: 4
      memory_chunk: 8
"""
TRM_PARAMETERS = 72_258  # of TRM_MODEL: checked against the module in test_the_example_trains...
CODE_DATA = "kind: dataset\nname: code\nsources:\n  - type: files\n    glob: extra/*.jsonl\nsplit:\n  validation: 0.1\n"
# a Llama behind the plug-in interface, with both exporters: what an exportable plug-in looks like
WRAPPED = '''
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compiler import params

FIELDS = ("hidden_size", "intermediate_size", "layers", "heads", "kv_heads", "head_dim", "vocab_size",
          "tie_embeddings")


class Wrapped(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.llama = LlamaForCausalLM(LlamaConfig(
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_hidden_layers=config["layers"],
            num_attention_heads=config["heads"], num_key_value_heads=config["kv_heads"], head_dim=config["head_dim"],
            max_position_embeddings=config["max_positions"], rms_norm_eps=config["rms_norm_eps"],
            tie_word_embeddings=config["tie_embeddings"], bos_token_id=config["bos_token_id"],
            eos_token_id=config["eos_token_id"], pad_token_id=config["pad_token_id"]))

    @classmethod
    def from_config(cls, config):
        return cls(config)

    @classmethod
    def parameter_count(cls, config):
        return params.count(SimpleNamespace(architecture="llama", **{f: config[f] for f in FIELDS}))

    def forward(self, input_ids):
        return {"logits": self.llama(input_ids=input_ids).logits}

    def export_hf(self, folder):
        self.llama.save_pretrained(folder)

    def export_gguf(self, folder, files, metadata):
        import json
        import tempfile
        from pathlib import Path

        from compiler import quants
        from targets import gguf

        with tempfile.TemporaryDirectory() as tmp:
            self.llama.save_pretrained(tmp)
            config = json.loads((Path(tmp) / "config.json").read_text())
            shown = SimpleNamespace(display_name=metadata["general.name"], temperature=0.0, top_p=1.0)
            meta = {**gguf.model_metadata(config, shown), **metadata}
            for name, file in files.items():
                gguf.write(Path(folder) / file, Path(tmp) / "model.safetensors", config, quants.TYPES[name], meta)
'''
WRAPPED_MODEL = """
    kind: model
    name: wrapped
    architecture: module:models/wrapped.py:Wrapped
    hidden_size: 32
    intermediate_size: 64
    layers: 1
    heads: 4
    kv_heads: 2
    vocab_size: 512
    max_positions: 64
    tie_embeddings: true
"""
STEP = {"kind": "train", "model": "trm", "tokenizer": "main.tok", "data": "docs", "max_steps": 10, "batch_size": 4,
        "seq_len": 32, "optimizer": {"lr": 0.003}, "schedule": {"warmup_steps": 2},
        "eval": {"every": 5, "batches": 2}, "checkpoints": {"every": 5, "keep": 2}}
EVALUATE = {"kind": "evaluate", "model": "s", "seq_len": 32, "windows": 4, "max_new_tokens": 4,
            "prompts": [{"name": "lists", "text": "What is a list?"}]}


def plugin_project(root: Path) -> Project:
    """conftest's tiny project (docs -> tok -> init), a second dataset, models/trm.py as the
    checkout ships it, the `trm` model, and the `wrapped` Llama plug-in."""
    p = code_project(root)
    texts = tiny_corpus(600)
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts[:300]))
    p.write("extra/code.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts[300:]))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("specs/templates/chat.jinja", (REPO / "specs" / "templates" / "chat.jinja").read_text())
    p.write("specs/datasets/code.yaml", CODE_DATA)
    (root / "models").mkdir()
    shutil.copy(REPO / "models" / "trm.py", root / "models" / "trm.py")
    p.write("specs/models/trm.yaml", TRM_MODEL)
    p.write("models/wrapped.py", WRAPPED)
    p.write("specs/models/wrapped.yaml", WRAPPED_MODEL)
    return p


def with_(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    out.update(changes)
    return out


def rows(entry: Path) -> list[dict]:
    return [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]


def manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())


def key_of(p: Project, task: str) -> str:
    return graph.compile_graph(project.load(p.root)).key(task)


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """The project with the example trained (`plug.s`, 10 steps) and evaluated (`plug.ev`)."""
    p = plugin_project(tmp_path_factory.mktemp("plugins") / "proj")
    assert build(p, "plug", {"s": STEP, "ev": EVALUATE}) == {"plug.s": None, "plug.ev": None}
    return p


@pytest.fixture(scope="module")
def trained(proj) -> Path:
    return proj.root / "build" / "plug" / "s"


@pytest.fixture(scope="module")
def TRM():
    return plugins.load(REPO, TRM_REF, "the example")


def config(**changes) -> dict:
    """A TRM config as a train step hands it over (`architectures.config_of`)."""
    base = {"architecture": TRM_REF, "ingot_plugin": True, "hidden_size": 32, "intermediate_size": 64, "layers": 1,
            "heads": 4, "kv_heads": 2, "head_dim": 8, "vocab_size": 97, "max_positions": 64, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6, "tie_embeddings": False, "options": {"memory_chunk": 4}, "bos_token_id": 0,
            "eos_token_id": 1, "pad_token_id": 3, "dtype": "float32"}
    return {**base, **changes}


# ---------------------------------------------------------------- the example module itself

def test_pattern_of_the_manifest_is_the_plugins_one():
    assert PLUGIN_PATTERN == PATTERN


CONFIGS = {
    "default": {},
    "tied": {"tie_embeddings": True},
    "no-memory": {"options": {"memory_slots": 0}},
    "deep": {"layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
             "options": {"prelude_layers": 0, "coda_layers": 2, "max_steps": 6, "memory_slots": 5, "memory_chunk": 3}},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_count_is_the_modules_without_building_it(TRM, name, monkeypatch):
    import torch

    c = config(**CONFIGS[name])
    model = TRM.from_config(c)
    built = sum(p.numel() for p in model.parameters())
    with monkeypatch.context() as m:  # counting builds nothing: no layer is even constructed
        m.setattr(torch.nn.Linear, "__init__", lambda *a, **k: pytest.fail("parameter_count built a layer"))
        assert TRM.parameter_count(c) == built


def test_a_32m_configuration_counts_by_arithmetic(TRM):
    """A 32k-vocabulary, 512-wide TRM (1 prelude, 2 core, 1 coda blocks, 64 slots), counted by hand."""
    c = config(hidden_size=512, intermediate_size=1536, layers=2, heads=8, kv_heads=4, head_dim=64, vocab_size=32000,
               max_positions=1024, tie_embeddings=True, options={"max_steps": 8, "memory_slots": 64, "memory_chunk": 64})
    d = 512
    block = 2 * d + d * 64 * (2 * 8 + 2 * 4) + 3 * d * 1536
    memory = 64 * d + (d + 3 * d * d + 2 * d * d + d) + (2 * d + 4 * d * d + d + 1)
    assert TRM.parameter_count(c) == 32000 * d + 4 * block + (d + 2 * d * d + d + 1) + memory + d == 31_891_458


@pytest.mark.parametrize("name", ["default", "tied", "deep"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_position_sees_a_later_one(TRM, name, mode):
    """Changing token t changes no logit before t (through attention, the memory, or halting), and
    does change position t's."""
    import torch

    torch.manual_seed(0)
    model = getattr(TRM.from_config(config(**CONFIGS[name])), mode)()
    x = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(x).logits
        for t in (0, 3, 4, 5, 11, 19):  # chunk starts (memory_chunk 4, or 3 in `deep`), middles, the end
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % 97
            out = model(y).logits
            assert torch.equal(out[:, :t], base[:, :t]), t
            assert not torch.equal(out[:, t], base[:, t]), t


def test_halting_follows_act(TRM):
    """Every position halts when its summed halting probabilities reach the threshold: forced to
    p ≈ 1 it stops after one step (N = 1, R = 1); forced to p ≈ 0 it runs max_steps (N = 3, R ≈ 1).
    The aux loss is ponder_weight · mean(N + R)."""
    import torch

    model = TRM.from_config(config(options={"max_steps": 3, "ponder_weight": 0.5, "memory_chunk": 4}))
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    for bias, steps, ponder in ((20.0, 1.0, 2.0), (-20.0, 3.0, 4.0)):
        with torch.no_grad():
            model.halt.bias.fill_(bias)
            out = model(x)
        assert float(out.metrics["halting_steps"]) == steps
        assert float(out.aux_loss) == pytest.approx(0.5 * ponder, abs=1e-6)
    assert 1 / 4 <= float(out.metrics["memory_usage"]) <= 1 and 0 < float(out.metrics["memory_gate"]) < 1


def test_unknown_options_are_refused_by_name(TRM):
    with pytest.raises(ValueError) as info:
        TRM.from_config(config(options={"max_step": 8}))
    assert str(info.value) == ("TRM has no option 'max_step'; its options are prelude_layers, coda_layers, max_steps, "
                               "halt_threshold, ponder_weight, memory_slots, memory_chunk, init_std")


# ---------------------------------------------------------------- compile time

def refused(p: Project, files: dict[str, str]) -> str:
    """The whole SpecError of compiling `p` with `files` written (then put back)."""
    before = {rel: (p.root / rel).read_text() if (p.root / rel).exists() else None for rel in files}
    try:
        for rel, text in files.items():
            p.write(rel, text)
        with pytest.raises(SpecError) as info:
            project.load(p.root)
        return str(info.value)
    finally:
        for rel, text in before.items():
            if text is None:
                (p.root / rel).unlink()
            else:
                (p.root / rel).write_text(text)


MODEL_FILE = "specs/models/trm.yaml"
BAD = "specs/pipelines/bad.yaml"
PIPE = "kind: pipeline\nname: bad\ndefault: false\nsteps:\n"
TRAIN = "  s: {kind: train, model: trm, tokenizer: main.tok, data: docs, max_steps: 3, seq_len: 32}\n"
COMPILE_ERRORS = {
    "no-such-file": (
        {MODEL_FILE: TRM_MODEL.replace("models/trm.py", "models/nope.py")},
        "specs/models/trm.yaml:3: architecture: expected an existing file or folder (relative to the project root); "
        "found 'models/nope.py', which does not exist\n  fix: check the path; it is relative to the project root"),
    "no-such-class": (
        {MODEL_FILE: TRM_MODEL.replace("trm.py:TRM", "trm.py:Trm")},
        "specs/models/trm.yaml:3: architecture: expected a top-level `Trm` in 'models/trm.py'; found none: it "
        "defines the classes Attention, Block, Memory, RMSNorm, TRM, TRMOutput\n"
        "  fix: define class Trm in models/trm.py, or name one of its classes"),
    "not-a-reference": (
        {MODEL_FILE: TRM_MODEL.replace("models/trm.py:TRM", "models/trm:TRM")},
        "specs/models/trm.yaml:3: architecture: expected one of 'llama', 'qwen2' or 'mistral', or a plug-in "
        "`module:PATH:CLASS` (PATH a .py file from the project root, CLASS a class it defines); found "
        "'module:models/trm:TRM'"),
    "does-not-parse": (
        {MODEL_FILE: TRM_MODEL.replace("trm.py:TRM", "broken.py:TRM"), "models/broken.py": "class TRM(:\n"},
        "specs/models/trm.yaml:3: architecture: expected a plug-in module that parses; found 'models/broken.py', "
        "line 1: invalid syntax\n  fix: fix the module's syntax"),
    "options-without-a-plugin": (
        {MODEL_FILE: TRM_MODEL.replace("module:models/trm.py:TRM", "llama")},
        "specs/models/trm.yaml:11: options: expected no `options` for architecture llama, whose hyperparameters are "
        "the fields above (remove `options`, or name a plug-in `architecture: module:PATH:CLASS`); found "
        "`max_steps`, `memory_slots` and `memory_chunk`"),
    "an-option-of-several-values": (
        {MODEL_FILE: TRM_MODEL + "      steps: [1, 2]\n"},
        "specs/models/trm.yaml:15: options.steps: expected a number, true or false, or a string (each option is one "
        "value); found a list"),
    "rope-scaling": (
        {MODEL_FILE: TRM_MODEL + "    rope_scaling: {type: linear, factor: 2}\n"},
        "specs/models/trm.yaml:15: rope_scaling: expected no `rope_scaling` for the plug-in architecture "
        "module:models/trm.py:TRM, which places positions its own way (remove `rope_scaling`, and give the plug-in "
        "what it needs under `options`); found `type` and `factor`"),
    "sliding-window": (
        {MODEL_FILE: TRM_MODEL + "    sliding_window: 16\n"},
        "specs/models/trm.yaml:15: sliding_window: expected no `sliding_window` for the plug-in architecture "
        "module:models/trm.py:TRM (remove `sliding_window`, and give the plug-in its window under `options` if it "
        "has one); found 16"),
    "hf-export": (
        {BAD: PIPE + TRAIN + "  x: {kind: export, model: s, format: hf}\n"},
        "specs/pipelines/bad.yaml:6: steps.x.format: expected a model Ingot can write as a Hugging Face folder: of "
        "architecture llama, qwen2 or mistral, or of a plug-in whose class defines `export_hf`; found model 'trm' "
        "(specs/models/trm.yaml:3) of the plug-in architecture module:models/trm.py:TRM, whose class TRM defines no "
        "`export_hf`\n  fix: define `def export_hf(self, folder)` in class TRM of models/trm.py (README: \"Plug-in "
        "architectures\"), or remove this export"),
    "gguf-export": (
        {BAD: PIPE + TRAIN + "  x: {kind: export, model: s, format: gguf, types: [f16]}\n"},
        "specs/pipelines/bad.yaml:6: steps.x.format: expected a model Ingot can write as GGUF files: of "
        "architecture llama, qwen2 or mistral, or of a plug-in whose class defines `export_gguf`; found model 'trm' "
        "(specs/models/trm.yaml:3) of the plug-in architecture module:models/trm.py:TRM, whose class TRM defines no "
        "`export_gguf`\n  fix: define `def export_gguf(self, folder, files, metadata)` in class TRM of "
        "models/trm.py (README: \"Plug-in architectures\"), or remove this export"),
    "init-step": (
        {BAD: PIPE + "  i: {kind: init, model: trm, tokenizer: main.tok}\n"},
        "specs/pipelines/bad.yaml:5: steps.i.model: expected a model of architecture llama, qwen2 or mistral (an "
        "init step writes their tensors from Ingot's table); found model 'trm' (specs/models/trm.yaml:3) of the "
        "plug-in architecture module:models/trm.py:TRM\n  fix: start a train step from `model: trm` instead (a "
        "plug-in initializes its own weights there, under the step's seed), and remove this init step"),
    "lora": (
        {BAD: PIPE + TRAIN + "  l: {kind: train, init: s, tokenizer: main.tok, data: docs, max_steps: 3, seq_len: 32, "
                             "lora: {r: 4}}\n"},
        "specs/pipelines/bad.yaml:6: steps.l.lora: expected a model of an architecture whose layers LoRA knows (one "
        "of 'llama', 'mistral', 'qwen2'); found model 'trm' of architecture 'module:models/trm.py:TRM'\n"
        "  fix: remove `lora:` to train every weight"),
}


@pytest.mark.parametrize("case", COMPILE_ERRORS)
def test_compile_errors_name_the_manifest_and_the_fix(proj, case):
    files, message = COMPILE_ERRORS[case]
    assert refused(proj, files) == message


def test_an_exporter_in_a_base_class_of_the_same_file_counts(proj):
    base = WRAPPED.replace("class Wrapped(torch.nn.Module):", "class Exporting(torch.nn.Module):\n"
                           "    def export_hf(self, folder):\n        pass\n\n\nclass Wrapped(Exporting):")
    proj.write(BAD, PIPE + "  s: {kind: train, model: wrapped, tokenizer: main.tok, data: docs, max_steps: 3, "
                           "seq_len: 32}\n  x: {kind: export, model: s, format: hf}\n")
    original = proj.read("models/wrapped.py")
    try:
        proj.write("models/wrapped.py", base.replace("    def export_hf(self, folder):\n        "
                                                     "self.llama.save_pretrained(folder)\n", ""))
        project.load(proj.root)
    finally:
        proj.write("models/wrapped.py", original)
        (proj.root / BAD).unlink()


def test_the_key_follows_the_plugin_and_the_files_it_imports(proj, trained):
    """A step's key holds the plug-in's file and the project files it imports; no other file, and
    the steps of other models do not follow it. An evaluate step of the plug-in's weights runs it."""
    proj.write("models/deep.py", "from models.trm import TRM\n\n\nclass Deep(TRM):\n    pass\n")
    proj.write("specs/models/deep.yaml", TRM_MODEL.replace("name: trm", "name: deep").replace("trm.py:TRM", "deep.py:Deep"))
    proj.write(BAD, PIPE + "  d: {kind: train, model: deep, tokenizer: main.tok, data: docs, max_steps: 3, seq_len: 32}\n"
               "  l: {kind: train, model: tiny, tokenizer: main.tok, data: docs, max_steps: 3, seq_len: 32}\n")
    original = proj.read("models/trm.py")
    tasks = ("plug.s", "plug.ev", "bad.d", "bad.l")
    try:
        before = {t: key_of(proj, t) for t in tasks}
        assert None not in before.values()
        proj.write("models/other.py", "X = 1\n")  # a file no plug-in imports
        assert {t: key_of(proj, t) for t in tasks} == before
        proj.write("models/deep.py", proj.read("models/deep.py") + "# edited\n")
        middle = {t: key_of(proj, t) for t in tasks}
        assert {t: middle[t] != before[t] for t in tasks} == {"plug.s": False, "plug.ev": False, "bad.d": True,
                                                             "bad.l": False}
        proj.write("models/trm.py", original + "# edited\n")  # imported by deep.py
        assert {t: key_of(proj, t) != middle[t] for t in tasks} == {"plug.s": True, "plug.ev": True, "bad.d": True,
                                                                    "bad.l": False}
    finally:
        proj.write("models/trm.py", original)
        for rel in ("models/deep.py", "models/other.py", "specs/models/deep.yaml", BAD):
            (proj.root / rel).unlink()


# ---------------------------------------------------------------- training

def test_the_example_trains_and_logs_its_aux_metrics(proj, trained, TRM):
    log = rows(trained)
    assert [r["step"] for r in log] == list(range(1, 11))
    assert log[-1]["loss"] < log[0]["loss"] - 0.1 and log[-1]["ce"] < log[0]["ce"] - 0.1
    for r in log:  # the loss is the LM loss plus the ponder cost
        assert sorted(r["aux"]) == ["halting_steps", "memory_gate", "memory_usage"]
        assert 1 <= r["aux"]["halting_steps"] <= 3 and 0 < r["aux"]["memory_usage"] <= 1
        assert r["loss"] == pytest.approx(r["ce"] + r["aux_loss"], rel=1e-5) and r["aux_loss"] > 0
    written = json.loads((trained / "config.json").read_text())
    assert written == {"architecture": TRM_REF, "ingot_plugin": True, "hidden_size": 32, "intermediate_size": 64,
                       "layers": 1, "heads": 4, "kv_heads": 2, "head_dim": 8, "vocab_size": 512, "max_positions": 64,
                       "rope_theta": 10000.0, "rms_norm_eps": 1e-06, "tie_embeddings": False,
                       "options": {"max_steps": 3, "memory_slots": 4, "memory_chunk": 8}, "bos_token_id": 0,
                       "eos_token_id": 1, "pad_token_id": 3, "dtype": "float32"}
    model, _ = architectures.load(proj.root, trained, "the trained weights")
    assert TRM.parameter_count(written) == sum(p.numel() for p in model.parameters()) == TRM_PARAMETERS
    assert manifest(trained)["metrics"]["parameters"] == TRM_PARAMETERS
    from safetensors.torch import load_file

    assert load_file(str(trained / "model.safetensors")).keys() == model.state_dict().keys()


def test_resume_after_a_failure_ends_with_the_uninterrupted_bytes(proj, trained, monkeypatch):
    import torch

    real, calls = losses.lm_loss, []

    def nan_at_step_8(logits, labels):
        loss = real(logits, labels)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 8:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses, "lm_loss", nan_at_step_8)
    step = with_(STEP, checkpoints={"every": 5, "keep": 3})  # another key, the same training
    failed = build(proj, "again", {"s": step})["again.s"]
    assert "the loss is nan at optimizer step 8 of 10" in failed.message
    monkeypatch.setattr(losses, "lm_loss", real)
    assert build(proj, "again", {"s": step}) == {"again.s": None}
    entry = proj.root / "build" / "again" / "s"
    assert manifest(entry)["metrics"]["resumed_from"] == 5
    assert [(r["loss"], r["aux"]) for r in rows(entry)] == [(r["loss"], r["aux"]) for r in rows(trained)]
    assert (entry / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    assert (entry / "checkpoints" / "step-000010" / "optimizer.safetensors").read_bytes() == \
        (trained / "checkpoints" / "step-000010" / "optimizer.safetensors").read_bytes()


def test_evaluate_measures_the_plugin(proj, trained):
    """The evaluate step's perplexity is the plug-in's own next-token loss on the validation windows;
    its greedy generation ran."""
    import torch

    from targets.evaluate import validation_windows

    metrics = json.loads((proj.root / "build" / "plug" / "ev" / "metrics.json").read_text())
    model, _ = architectures.load(proj.root, trained, "the trained weights")
    windows = torch.tensor(validation_windows(proj.root / "build" / "main" / "tok@docs", 32, 4))
    with torch.no_grad():
        logits = model.eval()(windows[:, :-1]).logits
    loss = float(torch.nn.functional.cross_entropy(logits.reshape(-1, 512), windows[:, 1:].reshape(-1)))
    assert metrics["checkpoint"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["checkpoint"]["perplexity"] == pytest.approx(math.exp(loss))
    assert metrics["checkpoint"]["parameters"] == TRM_PARAMETERS
    run, = metrics["generation"]["engines"]["torch"]["runs"]
    assert run["prompt"] == "lists" and 1 <= run["output_tokens"] <= 4


def test_a_curriculum_of_two_stages(proj):
    stages = [{"name": "foundation", "datasets": {"docs": 1.0}, "steps": 3, "seq_len": 16},
              {"name": "advanced", "datasets": {"docs": 1.0, "code": 1.0}, "steps": 2}]
    step = with_(STEP, data=None, stages=stages, max_steps=None, eval={"every": 5, "batches": 1},
                 checkpoints={"every": 5, "keep": 1})
    assert build(proj, "cur", {"s": step}) == {"cur.s": None}
    log = rows(proj.root / "build" / "cur" / "s")
    assert [(r["stage"], r["tokens"]) for r in log] == [("foundation", 64)] * 3 + [("advanced", 128)] * 2
    assert all(sorted(r["aux"]) == ["halting_steps", "memory_gate", "memory_usage"] for r in log)


def test_a_plugin_teaches_a_plugin_and_starts_another(proj, trained):
    """Distillation from the trained example through its stored outputs (targets/teacher.py runs the
    plug-in), and a step that continues from its weights (`init:`)."""
    import torch
    from safetensors.torch import load_file

    distill = {"teachers": {"t": {"step": "plug.s"}}, "temperature": 2.0, "alpha": 0.5, "windows": 32,
               "phases": [{"name": "one", "steps": 3, "teachers": {"t": 1.0}}]}
    student = with_(STEP, objective="distill", distill=distill, max_steps=None, seed=1,
                    eval={"every": 3, "batches": 1}, checkpoints={"every": 3, "keep": 1})
    more = with_(STEP, model=None, init="plug.s", max_steps=2, optimizer={"lr": 1e-12}, schedule={"kind": "constant"},
                 eval={"every": 2, "batches": 1}, checkpoints={"every": 2, "keep": 1})
    proj.write("specs/pipelines/kd.yaml", json.dumps({"kind": "pipeline", "name": "kd", "default": False,
                                                      "steps": {"s": student, "more": more}}))
    g = graph.compile_graph(project.load(proj.root))
    teacher = "plug.s~main.tok@docs~s32~k64~t2~w32"  # the teacher's stored outputs, a step of the teacher's pipeline
    assert "models/trm.py" in g.plans[teacher].sources  # it runs the plug-in: its file keys the outputs
    assert {t: runner.run(g, t) for t in (teacher, "kd.s", "kd.more")} == {teacher: None, "kd.s": None,
                                                                          "kd.more": None}
    log = rows(proj.root / "build" / "kd" / "s")
    assert all(r["kd"] > 0 and r["loss"] == pytest.approx(0.5 * r["kd"] + 0.5 * r["ce"] + r["aux_loss"], rel=1e-5)
               for r in log)
    outputs = proj.root / "build" / "plug" / "s~main.tok@docs~s32~k64~t2~w32"
    assert json.loads((outputs / "teacher.json").read_text())["windows"] == 32
    before, after = load_file(trained / "model.safetensors"), load_file(proj.root / "build/kd/more/model.safetensors")
    assert before.keys() == after.keys() and all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert rows(proj.root / "build" / "kd" / "more")[0]["ce"] < rows(trained)[0]["ce"] - 0.1


# ---------------------------------------------------------------- the interface's failures

def fresh_plugin() -> None:
    """Forget the example's module, so the next build imports the file as it is now (a build
    process imports a plug-in once)."""
    import sys

    sys.modules.pop("ingot_plugin.models.trm", None)


def test_a_wrong_parameter_count_or_option_fails_the_build(proj):
    original = proj.read("models/trm.py")
    fresh_plugin()
    try:
        proj.write("models/trm.py", original.replace("return vocab * d + blocks +", "return 1 + vocab * d + blocks +"))
        failed = build(proj, "wrong", {"s": with_(STEP, max_steps=1)})["wrong.s"]
        assert failed.message == (
            f"wrong.s: plug-in {TRM_REF}: parameter_count gives {TRM_PARAMETERS + 1:,} parameters, but the module "
            f"from_config built has {TRM_PARAMETERS:,}: make parameter_count count exactly what from_config builds")
    finally:
        proj.write("models/trm.py", original)
        fresh_plugin()
    try:
        proj.write(MODEL_FILE, TRM_MODEL + "      max_step: 8\n")
        failed = build(proj, "wrong", {"s": with_(STEP, max_steps=1)})["wrong.s"]
        assert failed.message == (
            f"wrong.s: plug-in {TRM_REF}: parameter_count failed: ValueError: TRM has no option 'max_step'; its "
            "options are prelude_layers, coda_layers, max_steps, halt_threshold, ponder_weight, memory_slots, "
            "memory_chunk, init_std")
        proj.write(MODEL_FILE, TRM_MODEL + "    expect_params: 72000\n")
        failed = build(proj, "wrong", {"s": with_(STEP, max_steps=1)})["wrong.s"]
        assert failed.message == (
            f"wrong.s: plug-in {TRM_REF}: the model has {TRM_PARAMETERS:,} parameters, and its manifest's "
            f"expect_params says 72,000: if the architecture is right, set `expect_params: {TRM_PARAMETERS}`")
    finally:
        proj.write(MODEL_FILE, TRM_MODEL)
        (proj.root / "specs" / "pipelines" / "wrong.yaml").unlink()


# ---------------------------------------------------------------- exporters

@pytest.mark.slow
def test_a_plugin_with_exporters_exports_hf_and_gguf(proj):
    """A plug-in that defines export_hf and export_gguf: its tied head is stored once, it trains and
    exports, transformers loads the folder with the plug-in's logits, and the GGUF file reads back."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    step = with_(STEP, model="wrapped", max_steps=3, eval={"every": 3, "batches": 1},
                 checkpoints={"every": 3, "keep": 1})
    steps = {"s": step, "hf": {"kind": "export", "model": "s", "format": "hf"},
             "gguf": {"kind": "export", "model": "s", "format": "gguf", "types": ["f32"]}}
    assert build(proj, "wrap", steps) == {"wrap.s": None, "wrap.hf": None, "wrap.gguf": None}
    entry = proj.root / "build" / "wrap" / "s"
    assert "llama.lm_head.weight" not in load_file(entry / "model.safetensors")  # the alias of the embedding
    plugin, _ = architectures.load(proj.root, entry, "the trained weights")
    folder = proj.root / "build" / "wrap" / "hf"
    assert sorted(p.name for p in folder.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "manifest.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, plugin.eval()(x)["logits"])
    files = manifest(proj.root / "build" / "wrap" / "gguf")["metrics"]["files"]
    assert files["f32"]["file_type"] == "ALL_F32" and files["f32"]["parameters"] == plugin.parameter_count(
        json.loads((entry / "config.json").read_text()))


@pytest.mark.slow
def test_ddp_and_fsdp_train_the_plugin_as_one_process_does(proj):
    """Two gloo processes (DDP, which looks for parameters a plug-in left unused; FSDP, sharding the
    blocks TRM names) give one process's losses and aux metrics."""
    one = with_(STEP, max_steps=4, eval={"every": 4, "batches": 1}, checkpoints={"every": 2, "keep": 1})
    steps = {"one": one, **{s: with_(one, distributed={"strategy": s, "nproc_per_node": 2}) for s in ("ddp", "fsdp")}}
    assert build(proj, "dist", steps) == {"dist.one": None, "dist.ddp": None, "dist.fsdp": None}
    base = rows(proj.root / "build" / "dist" / "one")
    for strategy in ("ddp", "fsdp"):
        log = rows(proj.root / "build" / "dist" / strategy)
        assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in base], rel=1e-5)
        assert [r["aux"]["halting_steps"] for r in log] == [r["aux"]["halting_steps"] for r in base]
        assert [r["aux"]["memory_gate"] for r in log] == pytest.approx([r["aux"]["memory_gate"] for r in base], rel=1e-5)


def test_qk_clip_targets_record_each_heads_largest_logit(TRM):
    """What TRM reports to QK-clip is the largest q·kᵀ/√head_dim of each head over the positions it
    attends, over every call of the attention in the forward pass (the core's, once per step)."""
    import sys

    import torch

    rotate = sys.modules[TRM.__module__].rotate  # RoPE as TRM applies it
    torch.manual_seed(0)
    model = TRM.from_config(config(options={"memory_chunk": 4, "max_steps": 3})).train()
    targets = model.qk_clip_targets()
    calls = {id(b.attn): [] for b in (*model.prelude, *model.core, *model.coda)}
    hooks = [b.attn.register_forward_hook(lambda m, args, out: calls[id(m)].append(args))
             for b in (*model.prelude, *model.core, *model.coda)]
    model(torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3)))
    for hook in hooks:
        hook.remove()
    assert [len(c) for c in calls.values()] == [1, 2, 1]  # the core ran two steps (p ≈ 0.5 each)
    for (q_rows, k_rows, heads, max_logits), block in zip(targets, (*model.prelude, *model.core, *model.coda)):
        attn = block.attn
        assert (q_rows[0] is attn.q.weight, k_rows[0] is attn.k.weight, heads) == (True, True, 4)
        expected = None
        for x, cos, sin in calls[id(attn)]:
            q = attn.q(x).view(2, 12, 4, 8).transpose(1, 2)
            k = attn.k(x).view(2, 12, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
            logits = rotate(q, cos, sin) @ rotate(k, cos, sin).transpose(-1, -2) / 8 ** 0.5
            top = logits.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf")).amax(dim=(0, 2, 3))
            expected = top if expected is None else torch.maximum(expected, top)
        torch.testing.assert_close(max_logits(), expected.detach())
        assert max_logits() is None  # each call takes what was recorded since the one before


def test_the_example_trains_with_muon_grokfast_and_qk_clip(proj):
    """The optimizer of the forge example: Muon (AdamW for the embedding, head, norms and biases),
    Grokfast's filter and QK-clip, through TRM's qk_clip_targets."""
    optimizer = {"kind": "muon", "lr": 0.003, "muon": {"lr": 0.02}, "grokfast": {"alpha": 0.98, "lambda": 0.3},
                 "qk_clip": 30}
    step = with_(STEP, max_steps=4, optimizer=optimizer, eval={"every": 4, "batches": 1},
                 checkpoints={"every": 4, "keep": 1})
    assert build(proj, "muon", {"s": step}) == {"muon.s": None}
    log = rows(proj.root / "build" / "muon" / "s")
    assert all(math.isfinite(r["loss"]) and sorted(r["aux"]) == ["halting_steps", "memory_gate", "memory_usage"]
               for r in log)


def test_the_report_of_a_plugin_shows_its_stored_parameters_and_aux_metrics(proj, trained):
    template = "specs/templates/training-report.md.jinja"
    proj.write(template, (REPO / template).read_text())
    assert build(proj, "rep", {"r": {"kind": "report", "train": "plug.s"}}) == {"rep.r": None}
    text = (proj.root / "build" / "rep" / "r" / "report.md").read_text()
    assert f"- Type: plug-in architecture `{TRM_REF}` with options `max_steps: 3`, `memory_slots: 4`, " \
           "`memory_chunk: 8`" in text
    assert f"| **Total** | **{TRM_PARAMETERS:,}** | **100.00%** |" in text
    assert "### Per-layer breakdown" not in text  # a Llama's, which a plug-in has not
    table = text.split("### Auxiliary metrics", 1)[1].split("## ", 1)[0]
    cells = [line.split(" | ") for line in table.splitlines() if line.startswith("| training |")]
    log = rows(trained)
    assert [c[1] for c in cells] == ["halting_steps", "memory_gate", "memory_usage"]
    for c in cells:
        values = [r["aux"][c[1]] for r in log]
        assert c[2:] == [f"{sum(values) / len(values):.4g}", f"{values[0]:.4g}", f"{values[-1]:.4g} |"]
