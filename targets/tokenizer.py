"""Tokenizer builder: train a tokenizer of a family (GPT-2's, Llama 3's or Qwen2's byte-level BPE,
or SentencePiece-style BPE with byte fallback; see targets/tokenizer_families.py) on a dataset's
train split, or take an existing tokenizer from a folder of the project or the hub.

Special tokens: a step's `special_tokens` names the bos/eos/unk/pad roles; left out, the
family's own take them (gpt2's are the spec's defaults, `<s>`, `</s>`, `<unk>`, `<pad>`). For
gpt2 the roles' tokens get the first ids, as Ingot has always trained it; every other family
keeps its own special tokens where its models have them, and a role's token it lacks is added
after them. `add_bos_token` (filled in by the spec with the family's own) decides whether the
post-processor puts bos in front; `vocab_size` counts every token, added ones included.

Reads: the `train-*.jsonl` shards of the dataset entry (`job.inputs[DATASET]`); or the
tokenizer files of the step's `path:` / `hub:` (see targets/existing.py).
Writes: `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`,
which `transformers.AutoTokenizer` loads as a `PreTrainedTokenizerFast`; and for an existing
tokenizer with a chat template, `chat_template.jinja` (a trained one has none: steps use
specs/templates/chat.jinja).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from compiler.inputs import DATASET
from targets import BuildError, Job, load_tokenizer
from targets import tokenizer_families as families
from targets.existing import copy_tokenizer, source_folder

OUTPUTS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OPTIONAL_OUTPUTS = ("chat_template.jinja",)  # an existing tokenizer's own


def build(job: Job) -> dict:
    if not job.spec.trained():
        made = copy_tokenizer(source_folder(job, "tokenizer files"), job.out)
        size = load_tokenizer(job.out).get_vocab_size(with_added_tokens=True)
        job.log(f"tokenizer of {job.spec.origin()}: {size:,} tokens"
                f"{', with a chat template' if made['chat_template'] else ''}")
        return {"vocab_size": size, **made}
    spec = job.spec
    roles = _roles(spec)
    first, after = _placement(spec.family, roles)
    base = _trainer_size(spec, first, after)
    texts = list(_train_texts(job.inputs[DATASET]))
    if not texts:
        raise BuildError(f"dataset '{spec.dataset}' has no training documents to learn a vocabulary from")
    job.log(f"training {spec.family} BPE to {spec.vocab_size:,} tokens on {len(texts):,} documents")
    tok = families.train(spec.family, texts, base, min_frequency=spec.min_frequency, first=first, after=after,
                         unk=roles.unk if spec.family == "gpt2" else None,
                         bos=roles.bos if spec.add_bos_token else None, length=len(texts))
    tok.save(str(job.out / "tokenizer.json"))
    _write_configs(job.out, spec, roles)
    vocab = tok.get_vocab_size()
    if vocab < spec.vocab_size:
        job.log(f"warning: the corpus yields only {vocab:,} tokens of the {spec.vocab_size:,} asked for")
    return {"vocab_size": vocab, "requested_vocab_size": spec.vocab_size, "documents": len(texts),
            "special_token_ids": {t: tok.token_to_id(t) for t in roles.tokens()}}


def _roles(spec) -> families.Roles:
    """The spec's special tokens where it names them (always, for gpt2), else the family's."""
    given = spec.special_tokens
    return families.ROLES[spec.family] if given is None else families.Roles(given.bos, given.eos, given.unk, given.pad)


def _placement(family: str, roles: families.Roles) -> tuple[tuple[str, ...], tuple[tuple[str, bool], ...]]:
    """Special tokens given the first ids, and (text, special) tokens added after the vocabulary:
    for gpt2 the roles' tokens first (as Ingot has always trained it); for the others the
    family's own, then the roles' tokens the family lacks."""
    if family == "gpt2":
        return roles.tokens(), ()
    own = families.own_tokens(family)
    return families.FIRST[family], (*families.AFTER[family], *((t, True) for t in roles.tokens() if t not in own))


def _trainer_size(spec, first: tuple[str, ...], after: tuple) -> int:
    """The vocabulary size the trainer learns to: the added tokens come on top of it, so that the
    whole tokenizer has `vocab_size` tokens (the compiler sizes the model's embedding by it)."""
    least = families.min_vocab_size(spec.family, first) + len(after)
    if spec.vocab_size < least:
        raise BuildError(f"vocab_size {spec.vocab_size:,} leaves no room for a vocabulary: this {spec.family} tokenizer "
                         f"has {len(first) + len(after):,} special or added tokens and 256 byte "
                         f"{'tokens' if spec.family == 'sentencepiece' else 'symbols'}; ask for at least {least:,}")
    return spec.vocab_size - len(after)


def _train_texts(dataset: Path) -> Iterator[str]:
    for shard in sorted(dataset.glob("train-*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def _write_configs(out: Path, spec, roles: families.Roles) -> None:
    """tokenizer_config.json and special_tokens_map.json as transformers loads them: a plain
    PreTrainedTokenizerFast, which runs tokenizer.json as written (transformers 5's LlamaTokenizer
    would build its own pre-tokenizer instead), the roles the tokenizer has, every added token."""
    tokens = {f"{role}_token": t for role, t in roles.named().items()}
    added = sorted(json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"],
                   key=lambda a: a["id"])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
        "model_max_length": spec.max_length,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "special", "lstrip", "rstrip",
                                                                    "normalized", "single_word")} for a in added},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
