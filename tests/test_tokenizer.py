"""Tokenizer builder, through a real project: what `AutoTokenizer` and `tokenizers` make of its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`main.tok` as the tiny project defines it, and `main.tokbos`, the same with add_bos_token."""
    project = new_project(tmp_path_factory.mktemp("tokenizer") / "proj")
    project.edit("specs/pipelines/main.yaml", "  init:", "  tokbos:\n    kind: tokenizer\n    dataset: docs\n"
                                                        "    vocab_size: 400\n    add_bos_token: true\n  init:")
    result = project.doit("main.tok", "main.tokbos")
    assert ran(result) == ["dataset.docs", "main.tok", "main.tokbos"]
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
