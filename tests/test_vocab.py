"""targets/vocab.py against llama.cpp: for a tokenizer of each family (tests/families.py) a GGUF
file is written from random weights and the metadata of `tokenizer_metadata`, loaded by
llama.cpp (llama-cpp-python, vocabulary only), and made to tokenize and detokenize a thousand
varied strings as `tokenizers` does.

Like is compared with like: both sides add what the tokenizer adds (`add_special_tokens=True`
in `tokenizers`; `add_bos=True` in llama.cpp, which then adds bos only where the GGUF file says
so), and both take special-token texts inside the text as those tokens (`tokenizers` always
does for added tokens; llama.cpp does with `special=True`). Where llama.cpp cannot do what the
tokenizer does, the test states which strings differ and proves the cause, rather than skipping
them: Qwen2's NFC normalizer (llama.cpp tokenizes text as written), a Metaspace pre-tokenizer
(which prepends no "▁" to text that starts with a space, nor after a special token), llama.cpp's
clean-up of spaces when detokenizing for `gpt-2` and `llama-bpe`, and the FIM tokens llama.cpp
makes control tokens by their text.
"""

from __future__ import annotations

import ctypes
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import families
from conftest import require_llama_cpp
from targets import BuildError

CASES = {  # case -> (family, make_tokenizer options, edit of tokenizer.json)
    "gpt2": ("gpt2", {}, None), "llama3": ("llama3", {}, None), "qwen2": ("qwen2", {}, None),
    "llama2": ("llama2", {}, None), "llama2-metaspace": ("llama2", {"metaspace": True}, None),
    "llama3-merges": ("llama3", {}, lambda t: t["model"].update(ignore_merges=False)),  # llama.cpp's smaug-bpe
}
TEXTS = families.strings(1000)
CLEANING = ("gpt-2", "llama-bpe", "smaug-bpe")  # pre-tokenizers llama.cpp's detokenizer cleans spaces for
AUTO_CONTROL = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


@dataclass
class Built:
    folder: Path       # the tokenizer folder
    gguf: Path         # f32 GGUF of random weights with its tokenizer
    metadata: dict     # what tokenizer_metadata gave
    rows: int          # the model's embedding rows


def write_gguf(folder: Path, out: Path, family: str) -> Built:
    """Random weights of a tiny Llama whose embedding has 64 to 127 rows more than the
    tokenizer's ids, and its f32 GGUF file with the tokenizer's metadata and chat template."""
    from safetensors.numpy import save_file

    from compiler import quants
    from compiler.specs import ModelSpec
    from targets import gguf, load_tokenizer, special_ids
    from targets.vocab import tokenizer_metadata
    from targets.weights import hf_config, init_state

    tok = load_tokenizer(folder)
    rows = (tok.get_vocab_size() // 64 + 2) * 64
    model = ModelSpec(kind="model", name="tiny", hidden_size=64, intermediate_size=128, layers=1, heads=2,
                      vocab_size=rows, max_positions=64)
    ids = special_ids(folder)
    config = hf_config(model, ids, "float32")
    if family == "qwen2":  # Qwen2's config.json names <|endoftext|> as bos, which its tokenizer does not
        config["bos_token_id"] = tok.token_to_id("<|endoftext|>")
    out.mkdir(parents=True)
    save_file(init_state(model, ids, 0), str(out / "model.safetensors"))
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    metadata = tokenizer_metadata(folder, rows, template, config)
    spec = SimpleNamespace(display_name=family, temperature=0.8, top_p=0.95)
    gguf.write(out / "model-f32.gguf", out / "model.safetensors", config, quants.TYPES["f32"],
               {**gguf.model_metadata(config, spec), **metadata})
    return Built(folder, out / "model-f32.gguf", metadata, rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("families")
    out = {}
    for case, (family, options, edit) in CASES.items():
        folder = families.make_tokenizer(family, root / case / "tokenizer", **options)
        if edit:
            spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            edit(spec)
            (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        out[case] = write_gguf(folder, root / case / "gguf", family)
    return out


# ---------------------------------------------------------------- llama.cpp's side

def open_vocab(path: Path):
    require_llama_cpp()
    from llama_cpp import Llama

    return Llama(str(path), vocab_only=True, verbose=False)


def pieces(llm, ids: list[int], special: bool) -> str:
    """llama.cpp's text of each token, joined (special: control tokens as their text)."""
    import llama_cpp

    out, buf = b"", ctypes.create_string_buffer(256)
    for i in ids:
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, i, buf, len(buf), 0, special)
        assert 0 <= n <= len(buf), n
        out += buf.raw[:n]
    return out.decode("utf-8", "replace")


def detokenize(llm, ids: list[int]) -> str:
    """llama.cpp's detokenizer (llama_detokenize): special tokens dropped, the SentencePiece
    space prefix taken off, spaces cleaned up where the pre-tokenizer asks for it."""
    import llama_cpp

    arr, size = (llama_cpp.llama_token * max(len(ids), 1))(*ids), 4 * len(ids) + 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, size, False, False)
    if n < 0:  # it says how much it needs
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, -n, False, False)
    return buf.raw[:n].decode("utf-8", "replace")


def cleaned(text: str) -> str:
    """llama.cpp's clean-up of detokenized text for `gpt-2` and `llama-bpe` (transformers'
    clean_up_tokenization_spaces, its three passes): no space before ? ! . , ; " ' " becomes
    "'"; no space before 's 'm 're 've."""
    text = re.sub(r" (?=[?!.,])", "", text)
    text = text.replace(" ' ", "'")
    return re.sub(r" '(?=[sm]|re|ve)", "'", text)


# ---------------------------------------------------------------- parity

@pytest.mark.parametrize("case", CASES)
def test_llama_cpp_tokenizes_like_tokenizers(built, case):
    """Every string gives the same ids in llama.cpp as in `tokenizers`, except those the case's
    known llama.cpp limitation explains (and then llama.cpp's ids are proven to be what that
    limitation predicts)."""
    from tokenizers import Tokenizer

    b = built[case]
    tok, llm = Tokenizer.from_file(str(b.folder / "tokenizer.json")), open_vocab(b.gguf)
    ours = {s: llm.tokenize(s.encode(), add_bos=True, special=True) for s in TEXTS}
    differ = [s for s in TEXTS if ours[s] != tok.encode(s).ids]
    if case == "qwen2":
        # llama.cpp applies no NFC: it gives for the text what tokenizers gives for its NFC form
        assert all(unicodedata.normalize("NFC", s) != s for s in differ)
        assert all(llm.tokenize(unicodedata.normalize("NFC", s).encode(), add_bos=True, special=True)
                   == tok.encode(s).ids for s in differ)
    elif case == "llama2-metaspace":
        # llama.cpp prepends "▁" as the legacy form does: also to text that starts with a space
        # (or "▁"), and to text after a special token (Metaspace's `first`: to the first section)
        legacy = Tokenizer.from_file(str(built["llama2"].folder / "tokenizer.json"))
        assert all(ours[s] == legacy.encode(s).ids for s in TEXTS)
        specials = [a.content for a in tok.get_added_tokens_decoder().values()]
        assert all(s.startswith((" ", "▁")) or any(t in s for t in specials) for s in differ)
    else:
        assert differ == []
    print(f"{case}: {len(TEXTS)} strings, {len(TEXTS) - len(differ)} with the same ids")


@pytest.mark.parametrize("case", CASES)
def test_llama_cpp_detokenizes_like_tokenizers(built, case):
    """On the ids `tokenizers` gives, llama.cpp's token texts join to what `tokenizers` decodes
    (special tokens shown); and text that `tokenizers` decodes back to itself, llama.cpp's
    detokenizer gives back too, but for its clean-up of spaces (gpt-2, llama-bpe, smaug-bpe) and
    the FIM tokens it makes control tokens by their text (qwen2), which it drops."""
    from tokenizers import Tokenizer

    b = built[case]
    tok, llm = Tokenizer.from_file(str(b.folder / "tokenizer.json")), open_vocab(b.gguf)
    for s in TEXTS:
        ids = tok.encode(s).ids
        assert pieces(llm, ids, special=True) == tok.decode(ids, skip_special_tokens=False), s
    cleaning = b.metadata["tokenizer.ggml.pre"] in CLEANING
    back = {}
    for s in TEXTS:
        ids = tok.encode(s, add_special_tokens=False).ids
        if tok.decode(ids) == s:
            back[s] = detokenize(llm, llm.tokenize(s.encode(), add_bos=False, special=True))
    lost = [s for s, text in back.items() if text != s]
    for s in lost:
        expected = cleaned(s) if cleaning else s
        assert back[s] == re.sub("|".join(map(re.escape, AUTO_CONTROL)), "", expected), s
    print(f"{case}: {len(TEXTS)} strings, {len(back)} decoded back by tokenizers, {len(back) - len(lost)} by llama.cpp "
          f"({len(lost)} changed: {'spaces cleaned up' if cleaning else 'FIM tokens dropped' if lost else 'none'})")


# ---------------------------------------------------------------- metadata

def read_back(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}


EXPECTED = {  # case -> model, pre, add_bos, roles' token texts
    "gpt2": ("gpt2", "gpt-2", False, {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"}),
    "llama3": ("gpt2", "llama-bpe", True, {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}),
    "llama3-merges": ("gpt2", "smaug-bpe", True, {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}),
    "qwen2": ("gpt2", "qwen2", False, {"bos": "<|endoftext|>", "eos": "<|im_end|>", "pad": "<|endoftext|>"}),
    "llama2": ("llama", "default", True, {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}),
    "llama2-metaspace": ("llama", "default", True, {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}),
}
KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


@pytest.mark.parametrize("case", CASES)
def test_metadata_of_each_family(built, case):
    from tokenizers import Tokenizer

    b = built[case]
    kv = read_back(b.gguf)
    spec = json.loads((b.folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(b.folder / "tokenizer.json"))
    model, pre, add_bos, roles = EXPECTED[case]
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == (model, pre)
    assert kv["tokenizer.ggml.add_bos_token"] is add_bos and kv["tokenizer.ggml.add_eos_token"] is False
    assert {k: v for k, v in kv.items() if k.endswith("_token_id")} == {
        f"tokenizer.ggml.{KEYS[role]}": tok.token_to_id(text) for role, text in roles.items()}
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == b.rows
    size = tok.get_vocab_size()
    assert tokens[size:] == [f"[PAD{i}]" for i in range(size, b.rows)] and set(types[size:]) == {5}  # unused
    added = {a["id"]: a for a in spec["added_tokens"]}
    for i, a in added.items():
        assert tokens[i] == a["content"]
        assert types[i] == (2 if model == "llama" and a["content"] == "<unk>" else 3 if a["special"] else 4), a
    assert kv["tokenizer.chat_template"] == families.TEMPLATES[CASES[case][0]]
    if model == "llama":  # no merges; scores by merge rank; byte tokens typed BYTE, ids 3..258
        assert "tokenizer.ggml.merges" not in kv and kv["tokenizer.ggml.add_space_prefix"] is True
        assert tokens[3:259] == list(families.BYTE_TOKENS) and set(types[3:259]) == {6}
        scores = kv["tokenizer.ggml.scores"]
        made = {"".join(m): -rank for rank, m in reversed(list(enumerate(spec["model"]["merges"])))}
        assert scores == [float(made.get(t, 0)) for t in tokens]
    else:
        assert "tokenizer.ggml.scores" not in kv and "tokenizer.ggml.add_space_prefix" not in kv
        assert kv["tokenizer.ggml.merges"] == [" ".join(m) for m in spec["model"]["merges"]]
        assert set(types[:size]) - {3, 4} == {1}


def test_qwen2_has_its_added_tokens_after_the_vocabulary(built):
    """151,643 base tokens and 22 added ones in Qwen2.5, in a 151,936-row embedding: here
    1,000 and the same 22 (8 of them not special: user-defined), then padding."""
    kv = read_back(built["qwen2"].gguf)
    types = kv["tokenizer.ggml.token_type"]
    assert kv["tokenizer.ggml.tokens"][1000:1022] == [t for t, _ in families.QWEN2_ADDED]
    assert types[1000:1022] == [3] * 14 + [4] * 8
    assert set(types[1022:]) == {5} and len(types) == 1088


# ---------------------------------------------------------------- refusals

def tokenizer_json(case: str, built) -> dict:
    return json.loads((built[case].folder / "tokenizer.json").read_text(encoding="utf-8"))


def test_a_split_regex_llama_cpp_does_not_implement_is_an_error(built):
    from targets.vocab import pre_tokenizer

    spec = tokenizer_json("llama3", built)
    assert pre_tokenizer(spec) == "llama-bpe"
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,4}| ?\p{L}+|\s+"
    with pytest.raises(BuildError) as info:
        pre_tokenizer(spec)
    assert str(info.value) == (
        'no llama.cpp tokenizer matches this tokenizer (model BPE with ignore_merges, normalizer null, pre_tokenizer '
        '{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\\\p{N}{1,4}| ?\\\\p{L}+|'
        '\\\\s+"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, '
        '"trim_offsets": true, "use_regex": false}]}); Ingot embeds byte-level BPE split by GPT-2\'s regex (ByteLevel '
        "with use_regex, no prefix space) without a normalizer (llama.cpp's 'gpt-2'); byte-level BPE split by Llama "
        "3's regex without a normalizer ('llama-bpe' with ignore_merges, 'smaug-bpe' without); byte-level BPE split "
        "by Qwen2's regex, NFC or no normalizer ('qwen2'); SentencePiece-style BPE with byte fallback, its spaces "
        "made '▁' by a Prepend + Replace normalizer or a Metaspace pre-tokenizer without split (llama.cpp's 'llama')")


def test_a_normalizer_llama_cpp_does_not_apply_is_an_error(built):
    from targets.vocab import pre_tokenizer

    spec = tokenizer_json("llama3", built)
    spec["normalizer"] = {"type": "NFC"}  # accepted for Qwen2's regex only, as Qwen2 ships it
    with pytest.raises(BuildError, match=r"^no llama.cpp tokenizer matches this tokenizer \(model BPE with "
                                         r'ignore_merges, normalizer \{"type": "NFC"\}, pre_tokenizer'):
        pre_tokenizer(spec)
    spec = tokenizer_json("qwen2", built)
    spec["model"]["ignore_merges"] = True  # llama.cpp's qwen2 always applies merges
    with pytest.raises(BuildError, match=r"^no llama.cpp tokenizer matches this tokenizer \(model BPE with "
                                         r'ignore_merges, normalizer \{"type": "NFC"\}, pre_tokenizer'):
        pre_tokenizer(spec)


def test_sentencepiece_forms(built):
    from targets.vocab import family, sentencepiece_prefix

    assert family(tokenizer_json("llama2", built)).space_prefix is True
    assert family(tokenizer_json("llama2-metaspace", built)).space_prefix is True
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": False}
    assert sentencepiece_prefix(None, metaspace) is False
    assert sentencepiece_prefix(None, {**metaspace, "split": True}) is None  # splits words: not llama.cpp's
    assert sentencepiece_prefix({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}, None) is False


def write_edited(built, case: str, tmp_path: Path, edit) -> Path:
    import shutil

    folder = shutil.copytree(built[case].folder, tmp_path / case)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    edit(spec)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return folder


def test_a_byte_fallback_tokenizer_needs_every_byte_token(built, tmp_path):
    from targets.vocab import tokenizer_metadata

    folder = write_edited(built, "llama2", tmp_path, lambda s: s["model"]["vocab"].pop("<0x0A>"))
    with pytest.raises(BuildError) as info:
        tokenizer_metadata(folder, 1088, "")
    assert str(info.value) == (
        "this byte-fallback tokenizer lacks 1 of the 256 byte tokens (<0x0A>); llama.cpp falls back to <0x00>..<0xFF> "
        "for text outside the vocabulary and fails without them")


def test_merges_of_one_token_must_come_together(built, tmp_path):
    from targets.vocab import tokenizer_metadata

    def interleave(spec):
        merges = spec["model"]["merges"]
        merges.insert(0, merges.pop([m[0] + m[1] for m in merges].index("▁the", 1)))

    with pytest.raises(BuildError) as info:
        tokenizer_metadata(write_edited(built, "llama2", tmp_path, interleave), 1088, "")
    assert re.fullmatch(r"the merges making '▁the' are not together \(ranks 0 and \d+, with others between\); "
                        r"llama.cpp's SentencePiece tokenizer gives each token one score", str(info.value))


def test_ids_beyond_the_embedding_and_unknown_special_tokens_are_errors(built, tmp_path):
    from targets.vocab import tokenizer_metadata

    with pytest.raises(BuildError, match=r"^token '<\|im_start\|>' has id 1,001, but the model has only 1,001 "
                                         r"embedding rows$"):
        tokenizer_metadata(built["qwen2"].folder, 1001, "")
    folder = write_edited(built, "gpt2", tmp_path, lambda s: None)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|im_end|>"}))
    with pytest.raises(BuildError, match=r"^the tokenizer's configuration names '<\|im_end\|>' as its eos token, "
                                         r"but it has no such token$"):
        tokenizer_metadata(folder, 1088, "")


def test_llama_cpp_adds_only_bos_in_front(built, tmp_path):
    from targets.vocab import tokenizer_metadata

    def two_in_front(spec):
        spec["post_processor"]["single"].insert(0, {"SpecialToken": {"id": "</s>", "type_id": 0}})
        spec["post_processor"]["special_tokens"]["</s>"] = {"id": "</s>", "ids": [2], "tokens": ["</s>"]}

    with pytest.raises(BuildError, match=r"^the tokenizer's post-processor adds ids \[2, 1\] in front; llama.cpp can "
                                         r"add only the bos token there \(id 1\)$"):
        tokenizer_metadata(write_edited(built, "llama2", tmp_path, two_in_front), 1088, "")
