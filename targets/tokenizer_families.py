"""Tokenizer families as their real models define them in tokenizer.json, trained with `tokenizers`.

The tokenizer builder (targets/tokenizer.py) trains them for a tokenizer step; the tests'
small tokenizers of each family (tests/families.py) are made by the same code. Reads and
writes nothing: `train` returns a `tokenizers.Tokenizer`, which the caller saves.

Only the vocabulary is learned; the rest is each family's own:

- `gpt2`: GPT-2's byte-level BPE: a ByteLevel pre-tokenizer with its own regex, no normalizer,
  the ByteLevel decoder and post-processor; `<|endoftext|>` after the vocabulary.
- `llama3`: Llama 3's byte-level BPE: a Split by its regex, then ByteLevel without regex;
  `ignore_merges` (a word that is a whole token is that token); `<|begin_of_text|>`,
  `<|end_of_text|>`, the chat tokens (`<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`)
  and reserved ones after the vocabulary (the first ten of Llama 3's 256: a small vocabulary
  has no room for the 246 reserved ones after them); bos added by the post-processor.
- `qwen2`: Qwen2's byte-level BPE: NFC, a Split by its regex, ByteLevel; the 22 added tokens of
  Qwen2.5 (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ...; the tool and FIM ones not
  special) after the vocabulary; no bos.
- `sentencepiece`: Llama 2's / TinyLlama's / Mistral's SentencePiece-style BPE as tokenizer.json
  holds it: `<unk>`, `<s>`, `</s>` (ids 0, 1, 2), byte fallback to `<0x00>`..`<0xFF>` (ids
  3..258), a normalizer that prepends "▁" and turns spaces into "▁", no pre-tokenizer, merges
  listing every split of every piece into two pieces by the piece's rank (as transformers'
  converter writes them from a SentencePiece model); bos added by the post-processor.
  `metaspace=True` gives the newer form of the same tokenizer (no normalizer; a Metaspace
  pre-tokenizer with `prepend_scheme: first`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

FAMILIES = ("gpt2", "llama3", "qwen2", "sentencepiece")

# split regexes exactly as the families' tokenizer.json files hold them
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
LLAMA3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>")
QWEN2_ADDED = (  # (text, special) in id order, as Qwen2.5 has them
    *((t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                          "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                          "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")),
    *((t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                           "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")))
SENTENCEPIECE_SPECIAL = ("<unk>", "<s>", "</s>")

# each family's own tokens: special ones given the first ids (before the byte tokens of
# `sentencepiece`), and (text, special) ones added after the vocabulary, in id order
FIRST = {"gpt2": (), "llama3": (), "qwen2": (), "sentencepiece": SENTENCEPIECE_SPECIAL}
AFTER = {"gpt2": (("<|endoftext|>", True),), "llama3": tuple((t, True) for t in LLAMA3_SPECIAL),
         "qwen2": QWEN2_ADDED, "sentencepiece": ()}


@dataclass(frozen=True)
class Roles:
    """The tokens that are bos, eos, unk and pad (None: the tokenizer has none for the role)."""
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pad: str | None = None

    def named(self) -> dict[str, str]:
        return {role: t for role, t in vars(self).items() if t is not None}

    def tokens(self) -> tuple[str, ...]:
        """The distinct tokens, in role order (GPT-2 style tokenizers use one for several roles)."""
        return tuple(dict.fromkeys(self.named().values()))


# each family's roles as its base model ships them; whether its post-processor adds bos
ROLES = {"gpt2": Roles("<|endoftext|>", "<|endoftext|>", "<|endoftext|>"),
         "llama3": Roles(bos="<|begin_of_text|>", eos="<|end_of_text|>"),
         "qwen2": Roles(eos="<|endoftext|>", pad="<|endoftext|>"),
         "sentencepiece": Roles(bos="<s>", eos="</s>", unk="<unk>")}
ADDS_BOS = {"gpt2": False, "llama3": True, "qwen2": False, "sentencepiece": True}
UNK = {"sentencepiece": "<unk>"}  # the model's unknown token (byte-level BPE needs none)


def own_tokens(family: str) -> set[str]:
    """Every token the family itself places (byte tokens included)."""
    return {*FIRST[family], *(t for t, _ in AFTER[family]), *(BYTE_TOKENS if family == "sentencepiece" else ())}


def train(family: str, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
          first: tuple[str, ...] | None = None, after: tuple[tuple[str, bool], ...] | None = None,
          unk: str | None = None, bos: str | None = None, length: int | None = None, metaspace: bool = False):
    """A tokenizer of `family` with a vocabulary learned from `texts`: `vocab_size` tokens, the
    `first` special tokens (the family's own when None) and the byte tokens of `sentencepiece`
    included; then the `after` tokens ((text, special), the family's own when None) added after
    it. `unk`: the model's unknown token, one of `first` (the family's when None); `bos`: the
    token the post-processor puts in front (None: none). `metaspace`: `sentencepiece` only, the
    newer form (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {', '.join(FAMILIES)}")
    if metaspace and family != "sentencepiece":
        raise ValueError("metaspace=True is a form of the sentencepiece family only")
    first = FIRST[family] if first is None else first
    after = AFTER[family] if after is None else after
    unk = UNK.get(family) if unk is None else unk
    if vocab_size < min_vocab_size(family, first):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for a vocabulary; at least "
                         f"{min_vocab_size(family, first)} for {family} with {len(first)} first special tokens")
    if family == "sentencepiece":
        tok = _sentencepiece(texts, vocab_size, min_frequency, first, unk, length, metaspace)
    else:
        tok = _byte_level(family, texts, vocab_size, min_frequency, first, unk, length)
    _add(tok, after)
    tok.decoder = _decoder(family)
    tok.post_processor = _post_processor(family, bos, None if bos is None else tok.token_to_id(bos))
    return tok


def min_vocab_size(family: str, first: tuple[str, ...] | None = None) -> int:
    """The smallest `vocab_size` of `train`: its special tokens and byte symbols (byte-level) or
    byte tokens and one character (`sentencepiece`)."""
    first = FIRST[family] if first is None else first
    return len(first) + 256 + (family == "sentencepiece")


# ---------------------------------------------------------------- byte-level BPE families

def _byte_level(family: str, texts, vocab_size: int, min_frequency: int, first, unk, length):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    ignore_merges = family == "llama3"
    tok = Tokenizer(models.BPE(unk_token=unk, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges))
    tok.normalizer = normalizers.NFC() if family == "qwen2" else None
    tok.pre_tokenizer = _byte_level_pre(family)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(first),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    tok.model.ignore_merges = ignore_merges  # the trainer makes a new model
    return tok


def _byte_level_pre(family: str):
    from tokenizers import Regex, pre_tokenizers

    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    regex, trim = (LLAMA3_REGEX, True) if family == "llama3" else (QWEN2_REGEX, False)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=trim, use_regex=False)])


def _add(tok, added) -> None:
    """Added tokens after the vocabulary, one at a time so their ids keep the given order."""
    from tokenizers import AddedToken

    for text, special in added:
        token = AddedToken(text, special=special, normalized=False)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])


def _decoder(family: str):
    from tokenizers import decoders

    if family == "sentencepiece":
        return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                  decoders.Strip(" ", 1, 0)])
    qwen2 = family == "qwen2"  # Qwen2's keeps every space: no prefix, no trimmed offsets
    return decoders.ByteLevel(add_prefix_space=not qwen2, trim_offsets=not qwen2, use_regex=not qwen2)


def _post_processor(family: str, bos: str | None, bos_id: int | None):
    from tokenizers import processors

    # the template transformers itself writes for a bos token (second sequence type 1)
    template = None if bos is None else processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    if family == "sentencepiece" or (family == "gpt2" and template):
        return template
    qwen2 = family == "qwen2"
    level = processors.ByteLevel(add_prefix_space=not qwen2, trim_offsets=False, use_regex=not qwen2)
    return processors.Sequence([level, template]) if template else level


# ---------------------------------------------------------------- SentencePiece-style BPE

def _sentencepiece(texts, vocab_size: int, min_frequency: int, first, unk, length, metaspace: bool):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # for training only: pieces begin at a word (after any run of "▁"), as SentencePiece's do
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    specials = [*first, *BYTE_TOKENS]  # ids 0..258 for Llama 2's three
    # characters beyond the room left fall back to bytes, so the vocabulary stays within vocab_size
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=specials, limit_alphabet=vocab_size - len(specials))
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    data = json.loads(tok.to_str())
    data["added_tokens"] = [a for a in data["added_tokens"] if a["content"] in first]
    data["model"]["merges"] = sentencepiece_merges(data["model"]["vocab"], skip=set(specials))
    data["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    if metaspace:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    return tok


def sentencepiece_merges(vocab: dict[str, int], skip: set[str]) -> list[list[str]]:
    """Every split of every piece into two pieces, pieces in id order (a SentencePiece BPE
    model's score order) and the longer left part first, as transformers' converter writes a
    SentencePiece model's merges; `skip`: tokens that are no piece (special and byte tokens)."""
    merges = []
    for piece in sorted(vocab, key=vocab.get):
        if piece in skip:
            continue
        for i in range(len(piece) - 1, 0, -1):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab and left not in skip and right not in skip:
                merges.append([left, right])
    return merges
