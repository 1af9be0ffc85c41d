"""A tokenizer entry as llama.cpp's `tokenizer.ggml.*` GGUF metadata: the vocabulary padded to
the model's embedding rows, token types, merges or scores, special ids, whether bos and eos are
added, and the chat template. Reads `tokenizer.json`, `tokenizer_config.json` and
`special_tokens_map.json` of the entry; no torch.

Which of llama.cpp's tokenizers reproduces the entry is decided from the tokenizer's own
definition (model, normalizer, pre-tokenizer, the split regex compared with the exact patterns
llama.cpp implements), never from a list of known vocabularies:

- byte-level BPE split by GPT-2's regex, no normalizer: `gpt2` model, pre `gpt-2`;
- byte-level BPE split by Llama 3's regex: pre `llama-bpe` with `ignore_merges` (llama.cpp then
  takes a word that is a whole token as that token), `smaug-bpe` without (the same regex, merges
  always applied);
- byte-level BPE split by Qwen2's regex, NFC or no normalizer: pre `qwen2` (llama.cpp does not
  normalize: text that is not in NFC is tokenized as written);
- SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral): `llama` model, which
  has no merges but scores: any two adjacent pieces that make a vocabulary token join, the
  highest score first. Each token scores minus the rank of its first merge, so llama.cpp joins
  in the BPE's merge order (tests/test_vocab.py checks the ids on a thousand strings). Its
  `add_space_prefix` puts "▁" in front of the text and of any text after a special token, as the
  Prepend normalizer does. A Metaspace pre-tokenizer (the newer form) puts none in front of text
  that starts with a space, nor, with `prepend_scheme: first`, after a special token; llama.cpp
  has no setting for either, and tokenizes such text as the Prepend form does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from targets import BuildError, read_tokenizer_json

# token types of gguf's TokenType: what llama.cpp makes of each vocabulary entry
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# split regexes as tokenizer.json holds them: those llama.cpp implements for `gpt-2` (ByteLevel's
# own), `llama-bpe` (and `smaug-bpe`) and `qwen2`
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {  # (split regex, ignore_merges) -> llama.cpp pre-tokenizer
    (GPT2_REGEX, False): "gpt-2", (LLAMA3_REGEX, True): "llama-bpe", (LLAMA3_REGEX, False): "smaug-bpe",
    (QWEN2_REGEX, False): "qwen2",
}
NORMALIZERS = {"qwen2": (None, {"type": "NFC"})}  # a pre-tokenizer's accepted normalizers; others: none
SPACE = "▁"  # SentencePiece's escaped space, U+2581
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
EMBEDDABLE = (
    "byte-level BPE split by GPT-2's regex (ByteLevel with use_regex, no prefix space) without a normalizer "
    "(llama.cpp's 'gpt-2'); byte-level BPE split by Llama 3's regex without a normalizer ('llama-bpe' with "
    "ignore_merges, 'smaug-bpe' without); byte-level BPE split by Qwen2's regex, NFC or no normalizer ('qwen2'); "
    "SentencePiece-style BPE with byte fallback, its spaces made '▁' by a Prepend + Replace normalizer or a "
    "Metaspace pre-tokenizer without split (llama.cpp's 'llama')")
ROLES = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


@dataclass(frozen=True)
class Family:
    """How llama.cpp reads a tokenizer: `tokenizer.ggml.model`, `.pre` and, for SentencePiece-style
    ones, `.add_space_prefix` (a "▁" in front of the text and of text after a special token)."""
    model: str
    pre: str
    space_prefix: bool | None = None


def family(tokenizer_json: dict) -> Family:
    """The llama.cpp tokenizer that reproduces this one, from its actual configuration; one
    llama.cpp has no tokenizer for is an error, never a guess."""
    model = tokenizer_json.get("model") or {}
    normalizer, pre = tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")
    if model.get("type") == "BPE" and model.get("byte_fallback") and not model.get("ignore_merges"):
        prefix = sentencepiece_prefix(normalizer, pre)
        if prefix is not None:
            return Family("llama", "default", prefix)
    elif model.get("type") == "BPE" and not model.get("byte_fallback"):
        name = BYTE_LEVEL.get((byte_level_regex(pre), bool(model.get("ignore_merges"))))
        if name and normalizer in NORMALIZERS.get(name, (None,)):
            return Family("gpt2", name)
    flags = "".join(f" with {f}" for f in ("byte_fallback", "ignore_merges") if model.get(f))
    normalizer, pre = (json.dumps(x, ensure_ascii=False) for x in (normalizer, pre))
    raise BuildError(f"no llama.cpp tokenizer matches this tokenizer (model {model.get('type')}{flags}, normalizer "
                     f"{normalizer}, pre_tokenizer {pre}); Ingot embeds {EMBEDDABLE}")


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (`default` for SentencePiece-style)."""
    return family(tokenizer_json).pre


def byte_level_regex(pre: dict | None) -> str | None:
    """The regex a byte-level pre-tokenizer splits by: ByteLevel's own (GPT-2's), or that of a
    Split (isolating its matches) followed by a ByteLevel without regex; None for anything else."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        return byte_level_regex(pre["pretokenizers"][0])
    if pre.get("type") == "ByteLevel":
        return GPT2_REGEX if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return None
    split, level = pre["pretokenizers"]
    if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
            and level.get("type") == "ByteLevel" and not level.get("use_regex", True)
            and not level.get("add_prefix_space")):
        return (split.get("pattern") or {}).get("Regex")
    return None


def sentencepiece_prefix(normalizer: dict | None, pre: dict | None) -> bool | None:
    """Whether a SentencePiece-style tokenizer puts "▁" in front of the text (llama.cpp's
    add_space_prefix), read from the normalizer that makes spaces "▁" (Llama 2's form) or the
    Metaspace pre-tokenizer (the newer form); None when spaces are not made "▁" either way."""
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    steps = normalizer.get("normalizers") if (normalizer or {}).get("type") == "Sequence" else [normalizer]
    if pre is None and steps == [{"type": "Prepend", "prepend": SPACE}, replace]:
        return True
    if pre is None and steps == [replace]:
        return False
    if (normalizer is None and (pre or {}).get("type") == "Metaspace" and pre.get("replacement") == SPACE
            and not pre.get("split", True)):
        scheme = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space") else "never")
        return scheme != "never"
    return None


# ---------------------------------------------------------------- metadata

def tokenizer_metadata(tokenizer: Path, vocab_size: int, template: str, config: dict | None = None) -> dict:
    """`tokenizer.ggml.*` keys: the vocabulary padded to the model's embedding rows (padding ids
    are unused tokens), merges (byte-level) or scores (SentencePiece-style), special ids, whether
    bos and eos are added, and the chat template. `config`: the weights' config.json, whose
    `*_token_id` stand for roles the tokenizer names no token for (as gguf-py's SpecialVocab)."""
    spec = read_tokenizer_json(tokenizer)
    settings = _json(tokenizer / "tokenizer_config.json")
    kind = family(spec)
    tokens, types = vocabulary(spec, vocab_size, kind)
    ids = special_ids(tokenizer, spec, settings, config or {})
    add_bos, add_eos = added_specials(spec, settings, ids)
    out = {"tokenizer.ggml.model": kind.model, "tokenizer.ggml.pre": kind.pre,
           "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    if kind.model == "llama":
        out["tokenizer.ggml.scores"] = scores(spec, vocab_size)
        out["tokenizer.ggml.add_space_prefix"] = kind.space_prefix
    else:
        out["tokenizer.ggml.merges"] = merges(spec)
    out.update({"tokenizer.ggml.add_bos_token": add_bos, "tokenizer.ggml.add_eos_token": add_eos,
                "tokenizer.chat_template": template})
    out.update({f"tokenizer.ggml.{ROLES[role]}": i for role, i in ids.items()})
    return out


def vocabulary(spec: dict, vocab_size: int, kind: Family) -> tuple[list[str], list[int]]:
    """Token texts and types by id, `vocab_size` of them: model vocabulary NORMAL (`<0xXX>`
    BYTE for SentencePiece-style), added tokens CONTROL when special else USER_DEFINED, the
    unknown token UNKNOWN (SentencePiece-style, as llama.cpp's converter types it), and
    `[PADn]` UNUSED for ids no token has (sparse ids and the embedding's padding rows)."""
    spm = kind.model == "llama"
    if spm:
        _require_bytes(spec["model"]["vocab"])
    entries = [(text, i, BYTE if spm and BYTE_TOKEN.fullmatch(text) else NORMAL)
               for text, i in spec["model"]["vocab"].items()]
    entries += [(a["content"], a["id"], CONTROL if a.get("special") else USER_DEFINED)
                for a in spec.get("added_tokens", [])]
    unk = spec["model"].get("unk_token") if spm else None
    entries = [(text, i, UNKNOWN if text == unk else kind_of) for text, i, kind_of in entries]
    tokens: list[str | None] = [None] * vocab_size
    types = [UNUSED] * vocab_size
    for text, i, kind_of in entries:
        if i >= vocab_size:
            raise BuildError(f"token {text!r} has id {i:,}, but the model has only {vocab_size:,} embedding rows")
        tokens[i], types[i] = text, kind_of
    tokens = [f"[PAD{i}]" if text is None else text for i, text in enumerate(tokens)]
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if seen.setdefault(text, i) != i:
            raise BuildError(f"token {text!r} has ids {seen[text]:,} and {i:,}; llama.cpp needs each text once")
    return tokens, types


def _require_bytes(vocab: dict) -> None:
    missing = [t for t in (f"<0x{b:02X}>" for b in range(256)) if t not in vocab]
    if missing:
        raise BuildError(f"this byte-fallback tokenizer lacks {len(missing)} of the 256 byte tokens "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); llama.cpp falls back to "
                         "<0x00>..<0xFF> for text outside the vocabulary and fails without them")


def merges(spec: dict) -> list[str]:
    """Merges in GGUF's "left right" form (tokenizer.json has them so, or as pairs)."""
    out = []
    for m in spec["model"]["merges"]:
        if not isinstance(m, str):
            if any(" " in part for part in m):
                raise BuildError(f"merge {m!r} has a space in a part, which GGUF's 'left right' form cannot carry")
            m = " ".join(m)
        out.append(m)
    return out


def scores(spec: dict, vocab_size: int) -> list[float]:
    """Per id, minus the rank of the first merge that makes the token (0 for tokens no merge
    makes: llama.cpp scores only the join of two pieces), so llama.cpp joins in the merges'
    order. One score per token: the merges that make a token must come together, as they do in
    a tokenizer trained by BPE (one merge per token) or converted from SentencePiece (a block of
    merges per piece)."""
    vocab = spec["model"]["vocab"]
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    first: dict[str, int] = {}
    previous = None
    for rank, (left, right) in enumerate(pairs):
        token = left + right
        if token != previous and token in first:
            raise BuildError(f"the merges making {token!r} are not together (ranks {first[token]:,} and {rank:,}, with "
                             "others between); llama.cpp's SentencePiece tokenizer gives each token one score")
        first.setdefault(token, rank)
        previous = token
    out = [0.0] * vocab_size
    for token, rank in first.items():
        if token in vocab:
            out[vocab[token]] = -float(rank)
    return out


def special_ids(tokenizer: Path, spec: dict, settings: dict, config: dict) -> dict[str, int]:
    """Role (bos, eos, unk, pad) -> id of the token tokenizer_config.json names for it (else
    special_tokens_map.json), else config.json's `ROLE_token_id`; roles with neither are left out."""
    names = {**_names(_json(tokenizer / "special_tokens_map.json")), **_names(settings)}
    ids = {text: i for text, i in spec["model"]["vocab"].items()}
    ids.update({a["content"]: a["id"] for a in spec.get("added_tokens", [])})
    out = {}
    for role in ROLES:
        text = names.get(role)
        if text is not None and text not in ids:
            raise BuildError(f"the tokenizer's configuration names {text!r} as its {role} token, "
                             "but it has no such token")
        i = ids[text] if text is not None else config.get(f"{role}_token_id")
        if isinstance(i, int):
            out[role] = i
    return out


def _names(settings: dict) -> dict[str, str]:
    """Role -> token text of a tokenizer_config.json or special_tokens_map.json, whose values
    are a text, an AddedToken's dict or null."""
    out = {}
    for role in ROLES:
        value = settings.get(f"{role}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[role] = value
    return out


def added_specials(spec: dict, settings: dict, ids: dict[str, int]) -> tuple[bool, bool]:
    """Whether encoding adds bos in front and eos at the end: tokenizer_config.json's
    `add_bos_token`/`add_eos_token` where it says, else what the post-processor's template
    adds (as gguf-py's SpecialVocab reads them). llama.cpp adds only these two."""
    front, back = _template_ends(spec.get("post_processor"))
    out = []
    for role, ends, where in (("bos", front, "in front"), ("eos", back, "at the end")):
        if ends and ends != [ids.get(role)]:
            which = f"id {ids[role]}" if role in ids else "and the tokenizer names none"
            raise BuildError(f"the tokenizer's post-processor adds ids {ends} {where}; llama.cpp can add only the "
                             f"{role} token there ({which})")
        said = settings.get(f"add_{role}_token")
        add = said if isinstance(said, bool) else bool(ends)
        if add and role not in ids:
            raise BuildError(f"the tokenizer adds a {role} token but names none")
        out.append(add)
    return out[0], out[1]


def _template_ends(processor: dict | None) -> tuple[list[int], list[int]]:
    """Ids a TemplateProcessing (alone or in a Sequence) puts before and after a single text."""
    if not processor:
        return [], []
    if processor.get("type") == "Sequence":
        ends = [_template_ends(p) for p in processor.get("processors", [])]
        return [i for f, _ in ends for i in f], [i for _, b in ends for i in b]
    if processor.get("type") != "TemplateProcessing":
        return [], []
    single, known = processor.get("single", []), processor.get("special_tokens", {})
    at = [n for n, piece in enumerate(single) if "Sequence" in piece]
    if not at:
        return [], []

    def ids(pieces):
        return [i for p in pieces for i in known.get(p["SpecialToken"]["id"], {}).get("ids", [])]

    return ids(single[: at[0]]), ids(single[at[-1] + 1:])


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
