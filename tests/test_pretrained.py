"""Pretrained steps and existing tokenizers: folders of the project and a hub cache laid out on
disk (HF_HUB_OFFLINE=1), made here with transformers and tokenizers; keys by content; the
tokenizer's own chat template as the default of SFT; refusals named in whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import add_qa, ran, tiny_corpus

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def make_tokenizer(folder: Path) -> int:
    """A byte-level BPE with ChatML special tokens and chat template, saved by transformers as a
    model repository saves it (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def make_model(folder: Path, vocab: int = 512, seed: int = 0, shard: str | None = None) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128,
                         eos_token_id=2, pad_token_id=0, bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))


def make_folder(folder: Path, shard: str | None = None) -> Path:
    make_tokenizer(folder)
    make_model(folder, shard=shard)
    return folder


PIPELINE = """
    kind: pipeline
    name: main
    steps:
      base:
        kind: pretrained
        path: models/base
      tuned:
        kind: train
        init: base
        tokenizer: base
        data: qa
        objective: sft
        max_steps: 3
        batch_size: 2
        seq_len: 64
        eval: {every: 3, batches: 1}
        checkpoints: {every: 3}
      export:
        kind: export
        model: tuned
"""


@pytest.fixture
def proj(make_project):
    p = make_project()
    add_qa(p, 40)
    make_folder(p.root / "models" / "base")
    p.write("specs/pipelines/main.yaml", PIPELINE)
    return p


def test_a_pretrained_folder_is_fine_tuned_with_its_own_chat_template_and_exported(proj):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = proj.doit()
    assert set(ran(result)) >= {"main.base", "main.tuned", "main.export"}
    base = proj.root / "build/main/base"
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "manifest.json"])
    assert json.loads((base / "special_tokens_map.json").read_text()) == {"eos_token": "<|im_end|>",
                                                                          "pad_token": "<|endoftext|>"}
    # the tokens of the SFT data were rendered with the tokenizer's own template (ChatML), not Ingot's
    tokens = proj.root / "build/main/base@qa"
    ids = __import__("numpy").fromfile(tokens / "train.bin", dtype="<u2")
    tok = AutoTokenizer.from_pretrained(base)
    text = tok.decode(ids[:200].tolist())
    assert text.startswith("<|im_start|>user\nExplain ")
    exported = proj.root / "build/main/export"
    assert (exported / "chat_template.jinja").read_text() == CHATML
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.config.model_type == "llama" and model.config.vocab_size == 512
    assert AutoTokenizer.from_pretrained(exported).apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_the_pretrained_weights_are_the_folders_and_training_starts_from_them(proj):
    from safetensors.numpy import load_file

    proj.doit("main.base")
    theirs = load_file(str(proj.root / "models/base/model.safetensors"))
    ours = load_file(str(proj.root / "build/main/base/model.safetensors"))
    assert theirs.keys() == ours.keys() and all((theirs[k] == ours[k]).all() for k in theirs)


def test_one_byte_of_a_weight_file_rekeys_everything_downstream_and_a_move_rekeys_nothing(proj):
    proj.doit()
    # moved within the project: the contents key the step, not its place
    (proj.root / "weights").mkdir()
    shutil.move(proj.root / "models/base", proj.root / "weights/base")
    proj.edit("specs/pipelines/main.yaml", "path: models/base", "path: weights/base")
    assert ran(proj.doit()) == []
    # one byte of the weights changed (the last byte of the file: a tensor's data)
    weights = proj.root / "weights/base/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert "source model.safetensors: changed" in proj.doit("explain", "main.base").stdout
    assert set(ran(proj.doit())) == {"main.base", "main.base@qa", "main.tuned", "main.export"}


def only_base(p, source: str) -> None:
    """A pipeline of one pretrained step `base`, from `source` (`path: ...` or `hub: ...`)."""
    p.write("specs/pipelines/main.yaml", f"kind: pipeline\nname: main\nsteps:\n  base:\n    kind: pretrained\n"
                                         f"    {source}\n")


def test_shards_are_joined_into_one_file(make_project):
    from safetensors.numpy import load_file

    p = make_project()
    folder = make_folder(p.root / "m", shard="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    only_base(p, "path: m")
    p.doit()
    ours = load_file(str(p.root / "build/main/base/model.safetensors"))
    theirs = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        theirs.update(load_file(str(shard)))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def refused(p, expected: str) -> None:
    before = p.build_files()
    result = p.doit("list", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"ingot: 1 problem found; nothing was built\n{expected}\n"
    assert "Traceback" not in result.stderr and p.build_files() == before


def test_pickled_weights_are_refused(make_project):
    p = make_project()
    make_tokenizer(p.root / "m")
    (p.root / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (p.root / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    only_base(p, "path: m")
    refused(p, "specs/pipelines/main.yaml:6: steps.base.path: expected a folder with *.safetensors weights (pickled "
               "weights are never loaded: unpickling runs code); found 'm' with only pytorch_model.bin\n"
               "  fix: convert the weights to safetensors once, where you trust them "
               "(`model.save_pretrained(folder, safe_serialization=True)`), and point `path:` there")


def test_a_hub_model_needs_a_pinned_revision(make_project):
    p = make_project()
    only_base(p, "hub: Qwen/Qwen2.5-1.5B-Instruct")
    result = p.doit("list", check=False)
    assert result.returncode == 2
    assert ("specs/pipelines/main.yaml:4: steps.base: expected a pinned `revision:` with `hub: "
            "Qwen/Qwen2.5-1.5B-Instruct`: the commit hash (40 hex digits) of the files to use") in result.stderr


def hub_cache(root: Path, repo: str, monkeypatch) -> Path:
    """A huggingface_hub cache laid out on disk: blobs, the snapshot's links to them, the ref."""
    import hashlib

    cache = root / "hf-cache"
    store = cache / f"models--{repo.replace('/', '--')}"
    snap = store / "snapshots" / REVISION
    made = make_folder(root / "made")
    snap.mkdir(parents=True)
    (store / "blobs").mkdir()
    for file in made.iterdir():
        blob = store / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snap / file.name).symlink_to(Path("../../blobs") / blob.name)
    (store / "refs").mkdir()
    (store / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snap


def test_a_hub_model_is_read_from_the_hub_cache_offline(make_project, tmp_path, monkeypatch):
    p = make_project()
    snap = hub_cache(tmp_path, "org/tiny", monkeypatch)
    add_qa(p, 40)
    p.write("specs/pipelines/main.yaml", PIPELINE.replace("path: models/base", f"hub: org/tiny\n        revision: {REVISION}"))
    listed = p.doit("list").stdout
    assert "the pretrained model of hub org/tiny@0123456789ab" in listed
    p.doit("main.base")
    assert (p.root / "build/main/base/model.safetensors").read_bytes() == (snap / "model.safetensors").read_bytes()
    # a tokenizer alone from the same revision, its size checked at compile time from the cache
    p.write("specs/models/small.yaml", "kind: model\nname: small\nhidden_size: 32\nintermediate_size: 64\n"
                                       "layers: 2\nheads: 4\nvocab_size: 300\nmax_positions: 128\n")
    p.write("specs/pipelines/tok.yaml", f"kind: pipeline\nname: tok\nsteps:\n  tok:\n    kind: tokenizer\n"
                                        f"    hub: org/tiny\n    revision: {REVISION}\n  init:\n    kind: init\n"
                                        f"    model: small\n    tokenizer: tok\n")
    assert "expected a model whose vocab_size is at least the tokenizer's (400, step 'tok.tok')" in \
        p.doit("list", check=False).stderr
    p.edit("specs/models/small.yaml", "vocab_size: 300", "vocab_size: 400")
    p.doit("tok.init")
    assert (p.root / "build/tok/tok/tokenizer.json").read_bytes() == (snap / "tokenizer.json").read_bytes()


def test_a_hub_model_not_in_the_cache_needs_its_architecture_declared(make_project, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = make_project()
    only_base(p, f"hub: org/absent\n    revision: {REVISION}")
    refused(p, f"specs/pipelines/main.yaml:6: steps.base.hub: expected the config.json of hub model org/absent at "
               f"revision {REVISION} (the compiler reads it to check what uses the model); found none in the hub "
               f"cache ({tmp_path}/empty/models--org--absent/snapshots/{REVISION})\n"
               f"  fix: download it once (`hf download org/absent config.json --revision {REVISION}`), or declare "
               "the architecture with `model: MODEL` (a model manifest)")
    p.write("specs/models/absent.yaml", """
        kind: model
        name: absent
        hidden_size: 32
        intermediate_size: 64
        layers: 2
        heads: 4
        kv_heads: 2
        vocab_size: 512
        max_positions: 128
    """)
    p.edit("specs/pipelines/main.yaml", "kind: pretrained", "kind: pretrained\n    model: absent")
    assert "main.base" in p.doit("list").stdout


def test_a_declared_architecture_must_agree_with_config_json(proj):
    proj.write("specs/models/wrong.yaml", """
        kind: model
        name: wrong
        hidden_size: 32
        intermediate_size: 64
        layers: 3
        heads: 4
        kv_heads: 2
        vocab_size: 512
        max_positions: 128
    """)
    proj.edit("specs/pipelines/main.yaml", "path: models/base", "path: models/base\n    model: wrong")
    refused(proj, "specs/pipelines/main.yaml:7: steps.base.model: expected the architecture models/base/config.json "
                  "describes; found layers 3 in model 'wrong' but 2 in models/base/config.json\n"
                  "  fix: correct model 'wrong' (specs/models/wrong.yaml) or remove `model:` and let config.json say")


def test_a_tokenizer_step_takes_an_existing_tokenizer_and_its_size_is_checked(proj):
    proj.write("specs/models/small.yaml", """
        kind: model
        name: small
        hidden_size: 32
        intermediate_size: 64
        layers: 2
        heads: 4
        vocab_size: 300
        max_positions: 128
    """)
    proj.write("specs/pipelines/main.yaml", """
        kind: pipeline
        name: main
        steps:
          tok:
            kind: tokenizer
            path: models/base
          init:
            kind: init
            model: small
            tokenizer: tok
    """)
    refused(proj, "specs/pipelines/main.yaml:9: steps.init.model: expected a model whose vocab_size is at least the "
                  "tokenizer's (400, step 'main.tok'); found model 'small' with vocab_size 300\n"
                  "  fix: raise vocab_size of model 'small' (specs/models/small.yaml:7) to 400 or more, or use its own "
                  "tokenizer")
    proj.edit("specs/models/small.yaml", "vocab_size: 300", "vocab_size: 400")
    proj.doit()
    tok = proj.root / "build/main/tok"
    assert (tok / "chat_template.jinja").read_text() == CHATML
    assert (tok / "tokenizer.json").read_bytes() == (proj.root / "models/base/tokenizer.json").read_bytes()


# ---------------------------------------------------------------- every tokenizer family, end to end

ARCH = {  # family -> (transformers config class, its fields): each family on the architecture that ships it
    "gpt2": ("MistralConfig", {"sliding_window": None}),
    "llama3": ("LlamaConfig", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 32}}),
    "qwen2": ("Qwen2Config", {"vocab_size": 151936, "tie_word_embeddings": True, "use_sliding_window": False}),
    "llama2": ("LlamaConfig", {}),
}
FAMILY_PROMPTS = ["The len() function returns the number of items of an object.",
                  "def add(a, b):\n    return a + b\n",
                  "Grüße — ¿qué tal? 你好，世界。 🤖 12345 3.14159\n\tindented"]


def family_folder(family: str, folder: Path) -> Path:
    """A pretrained folder as its hub repository would hold it: the family's tokenizer (real
    pre-tokenizer, specials and chat template) and random weights of its architecture, every
    matrix a multiple of 256 wide so every GGUF type fits."""
    import families
    import torch
    import transformers
    from tokenizers import Tokenizer

    families.make_tokenizer(family, folder)
    size = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    cls, fields = ARCH[family]
    config = getattr(transformers, cls)(**{
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": size, "tie_word_embeddings": False,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        **fields})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def families_built(tmp_path_factory):
    """For each family: its pretrained folder, fine-tuned a few steps, exported as a Hugging Face
    folder and as GGUF f16, q8_0 and q4_k_m."""
    import yaml

    from conftest import code_project, require_llama_cpp

    require_llama_cpp()
    p = code_project(tmp_path_factory.mktemp("families") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n")
    steps = {}
    for family in ARCH:
        family_folder(family, p.root / "models" / family)
        steps[family] = {"kind": "pretrained", "path": f"models/{family}"}
        steps[f"{family}-tuned"] = {"kind": "train", "init": family, "tokenizer": family, "data": "docs",
                                    "max_steps": 4, "batch_size": 4, "seq_len": 64, "optimizer": {"lr": 0.003},
                                    "eval": {"every": 4, "batches": 1}, "checkpoints": {"every": 4}}
        steps[f"{family}-hf"] = {"kind": "export", "model": f"{family}-tuned"}
        steps[f"{family}-gguf"] = {"kind": "export", "model": f"{family}-tuned", "format": "gguf",
                                   "types": ["f16", "q8_0", "q4_k_m"]}
    p.write("specs/pipelines/main.yaml", yaml.safe_dump({"kind": "pipeline", "name": "main", "steps": steps}))
    p.doit()
    return p


@pytest.mark.slow
@pytest.mark.parametrize("family", list(ARCH))
def test_each_family_fine_tuned_loads_in_transformers_and_llama_cpp_alike(families_built, family):
    import unicodedata

    import families
    import numpy as np
    from llama_cpp import Llama
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoTokenizer

    from test_gguf import agreement, llama_logits, torch_logits

    hf = families_built.root / "build/main" / f"{family}-hf"
    gguf = families_built.root / "build/main" / f"{family}-gguf"
    assert AutoConfig.from_pretrained(hf).model_type == {"gpt2": "mistral", "qwen2": "qwen2"}.get(family, "llama")
    AutoTokenizer.from_pretrained(hf)
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    # the same ids from llama.cpp as from tokenizers; Qwen2's NFC normalizer is one llama.cpp does
    # not apply, so its strings are given in NFC form (tests/test_vocab.py shows the rest)
    texts = families.strings(1000)
    if family == "qwen2":
        texts = [unicodedata.normalize("NFC", s) for s in texts]
    llm = Llama(str(gguf / "model-f16.gguf"), vocab_only=True, verbose=False)
    differ = [s for s in texts if llm.tokenize(s.encode(), add_bos=True, special=True) != tok.encode(s).ids]
    assert differ == [], differ[:5]
    # logits per type within the per-type tolerances of tests/test_gguf.py
    prompts = [tok.encode(text).ids for text in FAMILY_PROMPTS]
    reference = [torch_logits(hf, ids) for ids in prompts]
    measured = {}
    for name in ("f16", "q8_0", "q4_k_m"):
        rows = [agreement(ref, llama_logits(gguf / f"model-{name}.gguf", ids)) for ref, ids in zip(reference, prompts)]
        measured[name] = (max(r[0] for r in rows), float(np.mean([r[1] for r in rows])), min(r[2] for r in rows))
    print(family, {t: f"max|d| {d:.2e} KL {kl:.2e} top-1 {a:.3f}" for t, (d, kl, a) in measured.items()})
    assert measured["f16"][0] < 5e-3 and measured["f16"][2] == 1.0
    assert measured["q8_0"][1] < 1e-4 and measured["q4_k_m"][1] < 1e-2
    histogram = json.loads((gguf / "manifest.json").read_text())["metrics"]["files"]["q4_k_m"]["histogram"]
    assert "Q4_K" in histogram, histogram  # real K-quants, not a fallback


def test_a_tiny_distill_125m_a_student_taught_by_a_pretrained_folder(make_project):
    """specs/pipelines/distill-125m.yaml at tiny size: a student of its own shape, reading a
    TinyLlama-style tokenizer (SentencePiece-style BPE with byte fallback) of a pretrained
    folder, distilled from that folder's model, exported to GGUF."""
    from tokenizers import Tokenizer

    p = make_project()
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n")
    folder = family_folder("llama2", p.root / "models/tinyllama")
    size = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    p.write("specs/models/student.yaml", f"""
        kind: model
        name: student
        hidden_size: 64
        intermediate_size: 128
        layers: 2
        heads: 4
        kv_heads: 2
        vocab_size: {size}
        max_positions: 128
    """)
    p.write("specs/pipelines/main.yaml", """
        kind: pipeline
        name: main
        steps:
          tinyllama:
            kind: pretrained
            path: models/tinyllama
          student:
            kind: train
            model: student
            tokenizer: tinyllama
            data: docs
            objective: distill
            batch_size: 2
            seq_len: 32
            eval: {every: 4, batches: 1}
            checkpoints: {every: 4}
            distill:
              teachers:
                tinyllama: {step: tinyllama}
              phases:
                - {name: tinyllama, steps: 4, teachers: {tinyllama: 1.0}}
          gguf:
            kind: export
            model: student
            format: gguf
            types: [f16]
    """)
    p.doit()
    rows = [json.loads(line) for line in (p.root / "build/main/student/metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["tinyllama"] * 4
    assert all(r["kd"] is not None and r["kd"] > 0 for r in rows)  # the teacher taught every step
    assert (p.root / "build/main/gguf/model-f16.gguf").stat().st_size > 0


@pytest.mark.slow
def test_a_tiny_llama31_qlora_a_lora_sft_of_a_pretrained_folder_merged_and_exported(make_project):
    """specs/pipelines/llama31-qlora.yaml at tiny size, on the CPU (so LoRA over the float base,
    not NF4): a Llama-3-family folder with llama3 RoPE scaling, fine-tuned on instruction pairs
    rendered with its own chat template, merged and exported to GGUF Q5_K_M; its adapter applied
    by PEFT and by llama.cpp gives the merged model's logits."""
    import numpy as np
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from conftest import require_llama_cpp
    from test_gguf import llama_logits

    require_llama_cpp()
    p = make_project()
    add_qa(p, 40)
    family_folder("llama3", p.root / "models/llama3")
    p.write("specs/pipelines/main.yaml", """
        kind: pipeline
        name: main
        steps:
          base:
            kind: pretrained
            path: models/llama3
          tuned:
            kind: train
            init: base
            tokenizer: base
            data: qa
            objective: sft
            lora: {r: 4, alpha: 16, dropout: 0.05}
            max_steps: 6
            batch_size: 2
            seq_len: 64
            optimizer: {lr: 0.01}
            eval: {every: 6, batches: 1}
            checkpoints: {every: 6}
          gguf:
            kind: export
            model: tuned
            format: gguf
            types: [f32, q5_k_m]
          base-gguf:
            kind: export
            model: base
            format: gguf
            types: [f32]
          adapter:
            kind: export
            model: tuned
            adapter: true
          adapter-gguf:
            kind: export
            model: tuned
            format: gguf
            adapter: true
            types: [f32]
    """)
    p.doit()
    build = p.root / "build/main"
    tok = Tokenizer.from_file(str(build / "base/tokenizer.json"))
    ids = np.fromfile(build / "base@qa/train.bin", dtype="<u2")
    assert tok.decode(ids[:8].tolist(), skip_special_tokens=False).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    # only the adapters trained: the merged weights differ from the base's only in adapted matrices
    base, merged = load_file(str(build / "base/model.safetensors")), load_file(str(build / "tuned/model.safetensors"))
    changed = sorted(k for k in base if not np.array_equal(base[k], merged[k]))
    assert changed and all(k.endswith(("_proj.weight",)) for k in changed), changed
    prompt = tok.encode("Explain the assert statement in Python.").ids
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(build / "tuned", dtype=torch.float32).eval()
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(build / "base", dtype=torch.float32),
                                         build / "adapter").eval()
        a, b = (m(torch.tensor([prompt])).logits[0].numpy() for m in (plain, peft))
    assert float(np.abs(a - b).max()) < 1e-5
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(str(build / "base-gguf/model-f32.gguf"), n_ctx=128, logits_all=True, verbose=False, n_threads=2,
                seed=0, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, lora_path=str(build / "adapter-gguf/adapter-f32.gguf"))
    llm.eval(prompt)
    applied = np.array(llm.scores[: len(prompt)], dtype=np.float64)
    assert float(np.abs(applied - llama_logits(build / "gguf/model-f32.gguf", prompt)).max()) < 5e-3
    facts = json.loads((build / "gguf/manifest.json").read_text())["metrics"]["files"]["q5_k_m"]
    assert "Q5_K" in facts["histogram"], facts["histogram"]
    assert len(llama_logits(build / "gguf/model-q5_k_m.gguf", prompt)) == len(prompt)
