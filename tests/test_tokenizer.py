"""Tokenizer builder, through a real project: what `AutoTokenizer`, `tokenizers` and the GGUF
writer make of its output, for a tokenizer of each family; and gpt2's files byte for byte as
the builder wrote them before families existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import families
from conftest import code_project, TINY_SPECS, Project, ran, tiny_corpus
from compiler.inputs import DATASET
from targets import BuildError, Job
from targets import tokenizer as tokenizer_builder

FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
SPECIALS = {"bos": ("<s>", 0), "eos": ("</s>", 1), "unk": ("<unk>", 2), "pad": ("<pad>", 3)}
TEXTS = {
    "code": 'def f(x: int) -> int:\n    """Square x."""\n    return x ** 2  # done\n',
    "unicode": "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e, "
               "\u0645\u0631\u062d\u0628\u0627, \u0393\u03b5\u03b9\u03ac",
    "emoji": "\U0001f916\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
    "digits": "3.14159 2,026 0x1F 1e-6 -42 \u0669\u0660",
    "whitespace": "  two leading\ttab\n\n\r\n   trailing   \u00a0\u3000",
    "specials-in-text": "</s> inside <s> and <pad>",
    "empty": "",
}


def new_project(root: Path) -> Project:
    """The tiny project of conftest, in a directory that lives as long as the module's tests."""
    project = code_project(root)
    project.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    for rel, text in TINY_SPECS.items():
        project.write(rel, text)
    return project


FAMILIES = ("gpt2", "llama3", "qwen2", "sentencepiece")
STEPS = {"gpt2": "tok", **{f: f"tok-{f}" for f in FAMILIES[1:]}}  # family -> its step in `built`


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`main.tok` as the tiny project defines it (gpt2), `main.tokbos`, the same with
    add_bos_token, and `main.tok-FAMILY` for each other family, of the same size."""
    project = new_project(tmp_path_factory.mktemp("tokenizer") / "proj")
    steps = "".join(f"  {STEPS[f]}:\n    kind: tokenizer\n    dataset: docs\n    vocab_size: 400\n    family: {f}\n"
                    for f in FAMILIES[1:])
    project.edit("specs/pipelines/main.yaml", "  init:", "  tokbos:\n    kind: tokenizer\n    dataset: docs\n"
                                                        f"    vocab_size: 400\n    add_bos_token: true\n{steps}  init:")
    tasks = ["main.tok", "main.tokbos", *(f"main.{STEPS[f]}" for f in FAMILIES[1:])]
    result = project.doit(*tasks)
    assert ran(result) == ["dataset.docs", *tasks]
    return project.root / "build" / "main"


@pytest.fixture(scope="module")
def hf(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built / "tok")


@pytest.fixture(scope="module")
def raw(built):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(built / "tok" / "tokenizer.json"))


def test_writes_the_three_files_and_nothing_else(built):
    entry = built / "tok"
    assert {p.name for p in entry.iterdir()} == FILES | {"manifest.json"}
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["outputs"]) == FILES
    stats = json.loads((built.parent / "dataset" / "docs" / "stats.json").read_text())
    assert manifest["metrics"] == {"vocab_size": 400, "requested_vocab_size": 400,
                                   "documents": stats["splits"]["train"]["documents"],  # the train split only
                                   "special_token_ids": {t: i for t, i in SPECIALS.values()}}


def test_loads_as_a_fast_tokenizer_of_the_asked_size(hf, raw):
    assert hf.is_fast
    assert len(hf) == hf.vocab_size == raw.get_vocab_size() == 400
    assert hf.model_max_length == 2048
    assert hf.padding_side == "right"


def test_special_tokens_and_ids(built, hf, raw):
    for role, (token, i) in SPECIALS.items():
        assert (getattr(hf, f"{role}_token"), getattr(hf, f"{role}_token_id")) == (token, i), role
        assert raw.token_to_id(token) == i
    assert hf.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "</s>", "<unk>", "<pad>"]
    assert sorted(hf.all_special_ids) == [0, 1, 2, 3]
    config = json.loads((built / "tok" / "tokenizer_config.json").read_text())
    assert {int(i): t["content"] for i, t in config["added_tokens_decoder"].items()} == {
        i: t for t, i in SPECIALS.values()}
    assert json.loads((built / "tok" / "special_tokens_map.json").read_text()) == {
        f"{role}_token": token for role, (token, _) in SPECIALS.items()}


@pytest.mark.parametrize("name", TEXTS)
def test_round_trip_is_exact(hf, raw, name):
    text = TEXTS[name]
    ids = hf.encode(text)
    assert hf.decode(ids) == text
    assert raw.decode(ids, skip_special_tokens=False) == text
    assert raw.encode(text).ids == ids
    assert hf.unk_token_id not in ids  # byte-level: every string has a spelling without <unk>


def test_no_bos_unless_asked(hf):
    assert hf.encode("hello world")[0] != hf.bos_token_id
    assert hf.encode("hello world") == hf.encode("hello world", add_special_tokens=False)


def test_merges_were_learned(hf):
    # a trained vocabulary spells common words in fewer tokens than bytes
    text = "The function returns the value of the expression."
    assert len(hf.encode(text)) < len(text.encode()) / 2


def test_add_bos_token_prepends_bos(built, hf):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    bos = AutoTokenizer.from_pretrained(built / "tokbos")
    raw = Tokenizer.from_file(str(built / "tokbos" / "tokenizer.json"))
    plain = hf.encode("hello world")
    assert bos.encode("hello world") == [0] + plain == raw.encode("hello world").ids
    assert bos.encode("hello world", add_special_tokens=False) == plain
    assert bos.decode(bos.encode("hello world"), skip_special_tokens=True) == "hello world"
    pair = bos("hello", "world")
    assert pair["input_ids"] == [0] + hf.encode("hello") + [0] + hf.encode("world")
    hello, world = hf.encode("hello"), hf.encode("world")
    assert raw.encode("hello", "world").type_ids == [0] * (1 + len(hello)) + [1] * (1 + len(world))
    assert json.loads((built / "tokbos" / "tokenizer_config.json").read_text())["add_bos_token"] is True


def test_one_token_for_several_roles(built, tmp_path):
    """GPT-2 style: bos, eos and pad all `<|endoftext|>`; ids and tokenizer_config agree with tokenizer.json."""
    from compiler.specs import TokenizerStep
    from transformers import AutoTokenizer

    spec = TokenizerStep.model_validate({
        "kind": "tokenizer", "dataset": "docs", "vocab_size": 300,
        "special_tokens": {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"}})
    dataset = built.parent / "dataset" / "docs"
    metrics = tokenizer_builder.build(Job("main.tok", spec, tmp_path, inputs={DATASET: dataset}))
    assert metrics["special_token_ids"] == {"<|endoftext|>": 0, "<unk>": 1}
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 0, 0, 1)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert {i: t["content"] for i, t in config["added_tokens_decoder"].items()} == {"0": "<|endoftext|>", "1": "<unk>"}
    assert tok.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<unk>"]
    assert len(tok) == 300


def test_empty_train_split_is_a_build_error(tmp_path):
    from compiler.specs import TokenizerStep

    data = tmp_path / "dataset"
    data.mkdir()
    (data / "train-00000.jsonl").write_text("")
    spec = TokenizerStep.model_validate({"kind": "tokenizer", "dataset": "docs", "vocab_size": 300})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError) as exc:
        tokenizer_builder.build(Job("main.tok", spec, out, inputs={DATASET: data}))
    assert str(exc.value) == "dataset 'docs' has no training documents to learn a vocabulary from"


# ---------------------------------------------------------------- families

# family -> the roles of its own special tokens; where they sit (first ids or after the
# vocabulary); whether encoding adds bos; llama.cpp's tokenizer (targets.vocab.family)
FAMILY_ROLES = {
    "gpt2": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    "llama3": {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"},
    "qwen2": {"eos": "<|endoftext|>", "pad": "<|endoftext|>"},
    "sentencepiece": {"bos": "<s>", "eos": "</s>", "unk": "<unk>"},
}
ADDS_BOS = {"gpt2": False, "llama3": True, "qwen2": False, "sentencepiece": True}
LLAMA_CPP = {"gpt2": ("gpt2", "gpt-2", None), "llama3": ("gpt2", "llama-bpe", None), "qwen2": ("gpt2", "qwen2", None),
             "sentencepiece": ("llama", "default", True)}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_in_transformers_as_tokenizers_runs_it(built, family):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    folder = built / STEPS[family]
    hf, raw = AutoTokenizer.from_pretrained(folder), Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert hf.is_fast and len(hf) == raw.get_vocab_size() == 400  # added tokens included, as the spec counts them
    texts = families.strings(200)
    assert [hf.encode(s) for s in texts] == [e.ids for e in raw.encode_batch(texts)]
    ids = [e.ids for e in raw.encode_batch(texts)]
    assert [hf.decode(i) for i in ids] == raw.decode_batch(ids, skip_special_tokens=False)
    roles = {role: getattr(hf, f"{role}_token") for role in ("bos", "eos", "unk", "pad")}
    assert roles == {role: FAMILY_ROLES[family].get(role) for role in roles}
    assert json.loads((folder / "special_tokens_map.json").read_text()) == {
        f"{role}_token": t for role, t in FAMILY_ROLES[family].items()}
    assert (hf.encode("hello")[0] == hf.bos_token_id) is ADDS_BOS[family]
    assert hf.encode("hello", add_special_tokens=False) == raw.encode("hello", add_special_tokens=False).ids
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert metrics["special_token_ids"] == {t: raw.token_to_id(t) for t in dict.fromkeys(FAMILY_ROLES[family].values())}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_the_llama_cpp_tokenizer_of_its_name(built, family):
    from tokenizers import Tokenizer

    from targets import read_tokenizer_json
    from targets.vocab import Family, tokenizer_metadata
    from targets.vocab import family as llama_cpp_family

    folder = built / STEPS[family]
    assert llama_cpp_family(read_tokenizer_json(folder)) == Family(*LLAMA_CPP[family])
    kv, raw = tokenizer_metadata(folder, 512, ""), Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert kv["tokenizer.ggml.add_bos_token"] is ADDS_BOS[family]
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    assert {k: v for k, v in kv.items() if k.endswith("_token_id")} == {
        f"tokenizer.ggml.{keys[role]}": raw.token_to_id(t) for role, t in FAMILY_ROLES[family].items()}


def test_each_family_has_its_own_tokens_where_its_models_have_them(built):
    from tokenizers import Tokenizer

    def added(family):
        tok = Tokenizer.from_file(str(built / STEPS[family] / "tokenizer.json"))
        return [(t.content, i, t.special) for i, t in sorted(tok.get_added_tokens_decoder().items())]

    assert added("gpt2") == [("<s>", 0, True), ("</s>", 1, True), ("<unk>", 2, True), ("<pad>", 3, True)]
    assert added("llama3") == [(t, 390 + i, True) for i, t in enumerate(families.LLAMA3_SPECIAL)]
    assert added("qwen2") == [(t, 378 + i, special) for i, (t, special) in enumerate(families.QWEN2_ADDED)]
    assert added("sentencepiece") == [("<unk>", 0, True), ("<s>", 1, True), ("</s>", 2, True)]
    vocab = json.loads((built / STEPS["sentencepiece"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert [t for t, i in sorted(vocab["vocab"].items(), key=lambda kv: kv[1])][3:259] == list(families.BYTE_TOKENS)
    assert vocab["merges"] == families.sentencepiece_merges(vocab["vocab"], {*families.LLAMA2_SPECIAL,
                                                                             *families.BYTE_TOKENS})


def test_written_special_tokens_take_the_roles_and_the_family_keeps_its_own(built, tmp_path):
    """llama3 with `special_tokens:` written: its ten tokens stay; bos and eos are two of them,
    and the unk and pad it lacks are added after them."""
    from compiler.specs import TokenizerStep
    from transformers import AutoTokenizer

    roles = {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "unk": "<unk>", "pad": "<pad>"}
    spec = TokenizerStep.model_validate({"kind": "tokenizer", "dataset": "docs", "vocab_size": 400,
                                         "family": "llama3", "special_tokens": roles})
    metrics = tokenizer_builder.build(Job("main.tok", spec, tmp_path, inputs={DATASET: built.parent / "dataset/docs"}))
    assert metrics["special_token_ids"] == {"<|begin_of_text|>": 388, "<|eot_id|>": 397, "<unk>": 398, "<pad>": 399}
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.convert_ids_to_tokens(list(range(388, 400))) == [*families.LLAMA3_SPECIAL, "<unk>", "<pad>"]
    assert {role: getattr(tok, f"{role}_token") for role in roles} == roles
    assert tok.encode("hi")[0] == 388


# ---------------------------------------------------------------- gpt2 as before families

def legacy_gpt2(spec, dataset: Path, out: Path) -> dict:
    """The tokenizer builder's training path as it was before `family:` (verbatim but for the
    spec's fields, which it reads alike): what gpt2 must still write, byte for byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = spec.special_tokens
    specials = list(dict.fromkeys([special.bos, special.eos, special.unk, special.pad]))
    tok = Tokenizer(models.BPE(unk_token=special.unk, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if spec.add_bos_token:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{special.bos}:0 $A:0", pair=f"{special.bos}:0 $A:0 {special.bos}:1 $B:1",
            special_tokens=[(special.bos, 0)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                  special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = list(tokenizer_builder._train_texts(dataset))
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.save(str(out / "tokenizer.json"))
    tokens = {"bos_token": special.bos, "eos_token": special.eos, "unk_token": special.unk, "pad_token": special.pad}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "add_bos_token": spec.add_bos_token,
              "add_eos_token": False, "model_max_length": spec.max_length, "clean_up_tokenization_spaces": False,
              "padding_side": "right", "added_tokens_decoder": {
                  str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                            "normalized": False, "single_word": False} for t in specials}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    return {"vocab_size": tok.get_vocab_size(), "requested_vocab_size": spec.vocab_size, "documents": len(texts),
            "special_token_ids": {t: tok.token_to_id(t) for t in specials}}


GPT2_SPECS = {  # step of `built` (None: built here) -> its fields
    "tok": {"vocab_size": 400},
    "tokbos": {"vocab_size": 400, "add_bos_token": True},
    "roles": {"vocab_size": 1000, "min_frequency": 3, "max_length": 64,
              "special_tokens": {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<UNK>", "pad": "é"}},
}


@pytest.mark.parametrize("step", GPT2_SPECS)
def test_gpt2_writes_the_files_it_wrote_before_families(built, tmp_path, step):
    from compiler.specs import TokenizerStep

    spec = TokenizerStep.model_validate({"kind": "tokenizer", "dataset": "docs", **GPT2_SPECS[step]})
    assert spec.family == "gpt2"
    dataset, new, old = built.parent / "dataset/docs", tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    assert tokenizer_builder.build(Job("main.tok", spec, new, inputs={DATASET: dataset})) == \
        legacy_gpt2(spec, dataset, old)
    for name in FILES:
        assert (new / name).read_bytes() == (old / name).read_bytes(), name
        if (built / step).is_dir():  # and so did the project's build
            assert (built / step / name).read_bytes() == (old / name).read_bytes(), name


# ---------------------------------------------------------------- spec rules

TOKENIZER_ERRORS = {  # case -> (the step's fields after `kind: tokenizer`, the whole message)
    "family-with-path": (
        "path: models/tok\n    family: llama3\n",
        "specs/pipelines/main.yaml:4: steps.tok: expected no `family` for a tokenizer taken from `path` (they shape "
        "a trained one); found `kind`, `path` and `family`"),
    "family-and-more-with-hub": (
        f"hub: org/tok\n    revision: {'a' * 40}\n    family: qwen2\n    add_bos_token: false\n",
        "specs/pipelines/main.yaml:4: steps.tok: expected no `add_bos_token`, `family` for a tokenizer taken from "
        "`hub` (they shape a trained one); found `kind`, `hub`, `revision`, `family` and `add_bos_token`"),
    "some-roles-of-llama3": (
        "dataset: docs\n    vocab_size: 400\n    family: llama3\n    special_tokens: {pad: <pad>}\n",
        "specs/pipelines/main.yaml:9: steps.tok.special_tokens: expected all of `bos`, `eos`, `unk` and `pad` with "
        "`family: llama3`, or no `special_tokens` to keep the family's own (written, they replace its roles whole); "
        "found `pad`"),
    "bos-qwen2-has-not": (
        "dataset: docs\n    vocab_size: 400\n    family: qwen2\n    add_bos_token: true\n",
        "specs/pipelines/main.yaml:9: steps.tok.add_bos_token: expected no `add_bos_token: true` with `family: "
        "qwen2` and its own special tokens, which have no bos (name one in `special_tokens`, or remove "
        "`add_bos_token`); found true"),
    "unknown-family": (
        "dataset: docs\n    vocab_size: 400\n    family: llama4\n",
        "specs/pipelines/main.yaml:8: steps.tok.family: expected one of 'gpt2', 'llama3', 'qwen2' or "
        "'sentencepiece'; found 'llama4'\n  fix: did you mean 'llama3'?"),
    "llama2-is-sentencepiece": (
        "dataset: docs\n    vocab_size: 400\n    family: llama2\n",
        "specs/pipelines/main.yaml:8: steps.tok.family: expected `family: sentencepiece` for the tokenizer of Llama 2, "
        "TinyLlama and Mistral (SentencePiece-style BPE with byte fallback); found 'llama2'"),
}


@pytest.mark.parametrize("case", TOKENIZER_ERRORS)
def test_family_rules_name_the_rule_and_the_fix(tmp_path, case):
    from compiler import project
    from compiler.errors import SpecError

    fields, message = TOKENIZER_ERRORS[case]
    (tmp_path / "specs" / "pipelines").mkdir(parents=True)
    (tmp_path / "specs" / "datasets").mkdir()
    (tmp_path / "specs" / "datasets" / "docs.yaml").write_text(TINY_SPECS["specs/datasets/docs.yaml"])
    (tmp_path / "specs" / "pipelines" / "main.yaml").write_text(
        f"kind: pipeline\nname: main\nsteps:\n  tok:\n    kind: tokenizer\n    {fields}")
    with pytest.raises(SpecError) as info:
        project.load(tmp_path)
    assert str(info.value) == message


def test_family_defaults_enter_the_key_as_if_written():
    """The family's own `add_bos_token` (and gpt2's special tokens) are filled in, so writing
    them out keeps the key; another family's own special tokens are none written."""
    from compiler.keys import keyed
    from compiler.specs import TokenizerStep

    def spec(**fields):
        return keyed(TokenizerStep.model_validate({"kind": "tokenizer", "dataset": "docs", "vocab_size": 400,
                                                   **fields}))

    assert spec() == spec(add_bos_token=False, special_tokens={"bos": "<s>"}, family="gpt2")
    assert spec(family="llama3") == spec(family="llama3", add_bos_token=True)
    assert spec(family="sentencepiece")["special_tokens"] is None
    assert spec(family="qwen2")["add_bos_token"] is False


def test_a_vocab_size_without_room_for_the_family_is_a_build_error(built, tmp_path):
    from compiler.specs import TokenizerStep

    spec = TokenizerStep.model_validate({"kind": "tokenizer", "dataset": "docs", "vocab_size": 277, "family": "qwen2"})
    with pytest.raises(BuildError) as exc:
        tokenizer_builder.build(Job("main.tok", spec, tmp_path, inputs={DATASET: built.parent / "dataset/docs"}))
    assert str(exc.value) == ("vocab_size 277 leaves no room for a vocabulary: this qwen2 tokenizer has 22 special or "
                              "added tokens and 256 byte symbols; ask for at least 278")
