"""Tokenizer builder: train a byte-level BPE on a dataset's train split, or take an existing
tokenizer from a folder of the project or the hub.

Reads: the `train-*.jsonl` shards of the dataset entry (`job.inputs[DATASET]`); or the
tokenizer files of the step's `path:` / `hub:` (see targets/existing.py).
Writes: `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`,
which `transformers.AutoTokenizer` loads as a `PreTrainedTokenizerFast`; and for an existing
tokenizer with a chat template, `chat_template.jinja`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from compiler.inputs import DATASET
from targets import BuildError, Job, load_tokenizer
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = job.spec
    special = spec.special_tokens
    # one entry per distinct token: GPT-2 style specs use one token as bos, eos and pad
    specials = list(dict.fromkeys([special.bos, special.eos, special.unk, special.pad]))
    tok = Tokenizer(models.BPE(unk_token=special.unk, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if spec.add_bos_token:
        # the template transformers itself writes for add_bos_token (second sequence type 1)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{special.bos}:0 $A:0", pair=f"{special.bos}:0 $A:0 {special.bos}:1 $B:1",
            special_tokens=[(special.bos, 0)])  # the trainer gives the special tokens the first ids
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                  special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = list(_train_texts(job.inputs[DATASET]))
    if not texts:
        raise BuildError(f"dataset '{spec.dataset}' has no training documents to learn a vocabulary from")
    job.log(f"training BPE to {spec.vocab_size:,} tokens on {len(texts):,} documents")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.save(str(job.out / "tokenizer.json"))
    _write_configs(job.out, spec, {t: tok.token_to_id(t) for t in specials})
    vocab = tok.get_vocab_size()
    if vocab < spec.vocab_size:
        job.log(f"warning: the corpus yields only {vocab:,} tokens of the {spec.vocab_size:,} asked for")
    return {"vocab_size": vocab, "requested_vocab_size": spec.vocab_size, "documents": len(texts),
            "special_token_ids": {t: tok.token_to_id(t) for t in specials}}


def _train_texts(dataset: Path) -> Iterator[str]:
    for shard in sorted(dataset.glob("train-*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def _write_configs(out: Path, spec, special_ids: dict[str, int]) -> None:
    s = spec.special_tokens
    tokens = {"bos_token": s.bos, "eos_token": s.eos, "unk_token": s.unk, "pad_token": s.pad}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
        "model_max_length": spec.max_length,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False} for t, i in special_ids.items()},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
