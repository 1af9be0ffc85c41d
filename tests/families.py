"""Small tokenizers of real families, and strings to test them on.

`make_tokenizer(family, folder)` trains, with the `tokenizers` library, a tokenizer of about a
thousand tokens on the Python documentation that ships with CPython (`pydoc_data.topics`), and
writes it as a Hugging Face tokenizer folder: `tokenizer.json`, `tokenizer_config.json` (chat
template, special tokens, `add_bos_token`, `tokenizer_class`) and `special_tokens_map.json`,
which `tokenizers.Tokenizer.from_file` and `transformers.AutoTokenizer.from_pretrained` load.
Only the vocabulary is small: the normalizer, pre-tokenizer, decoder, post-processor, special
tokens (text, order, place after the base vocabulary) and chat template are those the real
models ship, so whatever reads a real tokenizer of the family can be tested on these in seconds:

- `gpt2`: GPT-2's byte-level BPE (ByteLevel pre-tokenizer with its own regex), `<|endoftext|>`
  as bos, eos and unk, no bos added.
- `llama3`: Llama 3's byte-level BPE (a Split by its regex, then ByteLevel without regex;
  `ignore_merges`), `<|begin_of_text|>` added in front by the post-processor, the chat tokens
  (`<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`) and reserved ones after the vocabulary.
- `qwen2`: Qwen2's byte-level BPE (NFC, a Split by its regex, ByteLevel), no bos, the 22 added
  tokens of Qwen2.5 (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ...; the tool and FIM ones
  not special) after the vocabulary.
- `llama2`: Llama 2's / TinyLlama's / Mistral's SentencePiece-style BPE as tokenizer.json holds
  it: byte fallback to `<0x00>`..`<0xFF>` (ids 3..258, after `<unk>`, `<s>`, `</s>`), a normalizer
  that prepends "▁" and turns spaces into "▁", no pre-tokenizer, bos added; its merges list every
  split of every piece into two pieces, by the piece's rank, as transformers' converter writes
  them from a SentencePiece model; no pad token. `metaspace=True` gives the newer form of the
  same tokenizer (no normalizer; a Metaspace pre-tokenizer with `prepend_scheme: first`, which
  prepends "▁" to the first section only, and not where it starts with a space).

The families' definitions are those Ingot's tokenizer builder trains (targets/tokenizer_families.py,
where `llama2` is `sentencepiece`); this module adds what a real model's folder holds besides:
its roles, `tokenizer_class` and chat template.

`strings(n)` gives n varied test strings (code, Unicode, whitespace, digits, special-token texts,
near-empty ones). Nothing here knows about the project that uses it.

`tokenizers.Tokenizer.from_file` runs exactly what tokenizer.json says. transformers 5 does so for
`gpt2`, `llama3` and `qwen2`, but its `LlamaTokenizer` (the class Llama 2's folders name) builds
its own pre-tokenizer instead: a Metaspace that prepends "▁" only where the text does not start
with one, so on text that starts with a space it differs from this tokenizer.json (and from
llama.cpp and SentencePiece), as it does for the real Llama 2.
"""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

from targets.tokenizer_families import (  # noqa: F401  (the regexes and merges: part of this module's interface)
    ADDS_BOS, BYTE_TOKENS, GPT2_REGEX, LLAMA3_REGEX, LLAMA3_SPECIAL, QWEN2_ADDED, QWEN2_REGEX, SENTENCEPIECE_SPECIAL,
    sentencepiece_merges, train)

FAMILIES = ("gpt2", "llama3", "qwen2", "llama2")
LLAMA2_SPECIAL = SENTENCEPIECE_SPECIAL
VOCAB_SIZE = 1000  # base vocabulary trained (bytes or byte symbols included), before added tokens
TRAINED = {"gpt2": "gpt2", "llama3": "llama3", "qwen2": "qwen2", "llama2": "sentencepiece"}  # family trained

TEMPLATES = {
    # transformers' former default for GPT-2, which ships none
    "gpt2": "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}",
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
        "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "qwen2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
}


def corpus() -> list[str]:
    """The training text: every pydoc topic of the running CPython, in name order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def make_tokenizer(family: str, folder: Path, *, vocab_size: int = VOCAB_SIZE, metaspace: bool = False) -> Path:
    """Train a tokenizer of `family` (one of FAMILIES) and write its Hugging Face folder at
    `folder` (created); returns `folder`. Deterministic: the same files every call.
    `metaspace`: `llama2` only, the newer tokenizer.json form (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {', '.join(FAMILIES)}")
    if metaspace and family != "llama2":
        raise ValueError("metaspace=True is a form of the llama2 family only")
    bos = CONFIGS[family]["bos_token"] if ADDS_BOS[TRAINED[family]] else None  # added by the post-processor
    tok = train(TRAINED[family], corpus(), vocab_size, bos=bos, metaspace=metaspace)
    config = {**CONFIGS[family], **({"legacy": not metaspace} if family == "llama2" else {})}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    _write_configs(folder, tok, family, config)
    return folder


# what each family's real folders say besides tokenizer.json (`legacy` of llama2: by form)
END = "<|endoftext|>"
CONFIGS = {
    "gpt2": {"tokenizer_class": "GPT2Tokenizer", "bos_token": END, "eos_token": END, "unk_token": END,
             "add_bos_token": False, "add_prefix_space": False, "model_max_length": 1024},
    # as Llama 3 ships it: no add_bos_token; the post-processor adds bos
    "llama3": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": LLAMA3_SPECIAL[0], "eos_token": "<|eot_id|>",
               "clean_up_tokenization_spaces": True, "model_max_length": 8192},
    "qwen2": {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": END,
              "unk_token": None, "add_prefix_space": False, "errors": "replace", "split_special_tokens": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 32768},
    "llama2": {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": True,
               "clean_up_tokenization_spaces": False, "model_max_length": 4096},
}


def _write_configs(folder: Path, tok, family: str, config: dict) -> None:
    added = json.loads(tok.to_str())["added_tokens"]
    roles = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k) is not None}
    full = {**config, "chat_template": TEMPLATES[family],
            "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                         "single_word", "special")} for a in added}}
    (folder / "tokenizer_config.json").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(roles, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- test strings

SPECIAL_TEXTS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<unk>",
                 "<|fim_prefix|>", "<tool_call>", "<|reserved_special_token_3|>")
LOOKALIKES = ("<|im_start", "im_end|>", "< s>", "<s >", "<<s>>", "</s", "<|endoftext|", "<|EOT_ID|>", "<0x41>",
              "<0x0A>", "[PAD900]", "[PAD1000]", "<pad>", "<|", "|>")
UNICODE = (
    "你好，世界。这是一个测试。", "日本語のテキストとカタカナ、ひらがな。", "안녕하세요, 세계!", "繁體中文與简体中文混合",
    "🤖🚀👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "❤️ and ❤ and ♥", "naïve café résumé", "Grüße aus Köln",
    "Ça va très bien, ¿qué tal?", "e\u0301 combining acute", "n\u0303o\u0308 combining", "A\u030a vs \u00c5 vs \u212b",
    "ﬁ ligature and ﬀ", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "שלום עולם", "مرحبا بالعالم", "עברית and English mixed",
    "\u202eright-to-left override\u202c", "हिन्दी में पाठ", "ภาษาไทยไม่มีช่องว่าง", "Ελληνικά κείμενα", "Привет, мир!",
    "∀x∈ℝ: x² ≥ 0", "½ ¾ ⅓ ⅔", "x\u200by zero\u200dwidth", "\ufeffBOM first", "non\u00a0breaking\u00a0space",
    "ideographic\u3000space", "tab\u2003em space", "Ὀδυσσεύς", "ǅemal ǈ ǋ", "İstanbul ı I i", "ß ẞ SS", "ﷺ ﷽",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙", "𓀀𓀁 hieroglyphs", "한글 漢字 かな mixed", "…—–‐“”‘’«»„", "\x00nul\x01ctl\x1b[0m\x7f",
)
WHITESPACE_ATOMS = (" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t ", "\n\n\n\n",
                    "        ", " \r\n\t", "\u3000", "\u00a0")
WORDS = ("hello", "world", "def", "return", "The", "len()", "x", "it's", "DON'T", "I'll", "we're", "you've",
         "she'd", "I'm", "class", "import", "print", "None", "True", "self")
NEAR_EMPTY = ("", " ", "  ", "\n", "\t", "\r", "\r\n", "a", "A", ".", ",", "'", "'s", "'S", "''", "\"", "-", "_",
              "0", "00", "é", "▁", "▁▁", " ▁", "\u2581x", "Ġ", "Ċ", "ĠĠ", "   a", "a   ", "\n\na", "a\n\n")


def strings(n: int = 1000) -> list[str]:
    """n distinct test strings, the same on every call: Python code from the standard library,
    Unicode (CJK, emoji, accents, combining marks, RTL, unusual spaces), whitespace runs, numbers,
    special-token texts inside text, near-empty strings and prose of the Python docs. Every kind
    comes early in the list, so a small n still holds some of each."""
    rng = random.Random(20240601)
    kinds = [_code(rng), _unicode(rng), _whitespace(rng), _digits(rng), _specials(rng), list(NEAR_EMPTY), _prose(rng)]
    out: dict[str, None] = {}
    while len(out) < n and any(kinds):
        for kind in kinds:
            if kind and len(out) < n:
                out.setdefault(kind.pop(0))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct test strings can be made; asked for {n}")
    return list(out)


def _code(rng: random.Random) -> list[str]:
    """Snippets of 1 to 12 lines of a few standard-library modules, tabs and trailing spaces kept."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for name in ("textwrap.py", "json/decoder.py", "string.py", "fractions.py", "shlex.py", "colorsys.py"):
        if (stdlib / name).exists():
            lines += (stdlib / name).read_text(encoding="utf-8").splitlines(keepends=True)
    out = []
    while lines and len(out) < 400:
        start = rng.randrange(len(lines))
        out.append("".join(lines[start:start + rng.randint(1, 12)]))
    return out + ["def f(x):\n\treturn x**2  # tab\n", "if a:\n    pass\r\nelse:\n\tpass", "x = {'a': [1, 2]}\n"]


def _unicode(rng: random.Random) -> list[str]:
    out = list(UNICODE)
    for _ in range(200):
        a, b = rng.sample(UNICODE, 2)
        out.append(rng.choice([f"{a} {b}", f"{a}{b}", f"{rng.choice(WORDS)} {a}", f"{a}\n{rng.choice(WORDS)}"]))
    return out


def _whitespace(rng: random.Random) -> list[str]:
    out = list(WHITESPACE_ATOMS)
    for _ in range(200):
        parts = [rng.choice(WORDS if rng.random() < 0.5 else WHITESPACE_ATOMS) for _ in range(rng.randint(1, 7))]
        out.append("".join(parts))
    return out


def _digits(rng: random.Random) -> list[str]:
    out = ["0", "7", "42", "123", "1234", "12345", "123456789012345678901234567890", "3.14159", "1e-10", "0xFF",
           "1,000,000", "2024-11-23T10:00Z", "+1 (555) 010-9999", "a1b2c3", "abc123def", "1st 2nd 3rd 4th",
           "v1.2.3-rc4", "٠١٢٣٤٥٦٧٨٩", "１２３４５", "Ⅻ Ⅳ", "x=1;y=22;z=333", "0.000001", "-17", "10**100", "1_000_000"]
    for _ in range(150):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        out.append(rng.choice([digits, f"{rng.choice(WORDS)}{digits}", f"{digits}{rng.choice(WORDS)}",
                               f"{digits} {digits[::-1]}", f"{digits[:3]}.{digits[3:]}", f"x{digits}y{digits[:2]}"]))
    return out


def _specials(rng: random.Random) -> list[str]:
    texts = SPECIAL_TEXTS + LOOKALIKES
    out = [*texts, "".join(SPECIAL_TEXTS), "<s><s></s>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
           "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>", "<s>[INST] Hi [/INST] Hello </s>"]
    for _ in range(200):
        t, w = rng.choice(texts), rng.choice(WORDS)
        out.append(rng.choice([f"{w}{t}", f"{t}{w}", f"{w} {t} {w}", f"{t} {w}", f"{w}\n{t}\n", f" {t}",
                               f"{t}{rng.choice(texts)}", f"{w}{t}{w}{rng.choice(texts)}"]))
    return out


def _prose(rng: random.Random) -> list[str]:
    paragraphs = [p.strip() for text in corpus() for p in text.split("\n\n") if p.strip()]
    rng.shuffle(paragraphs)
    return [p[: rng.randint(20, 400)] for p in paragraphs]
