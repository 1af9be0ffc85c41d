"""Tokens builder: a dataset's documents as one flat stream of token ids per split.

Reads: the `train-*.jsonl` / `validation-*.jsonl` shards of the dataset entry
(`job.inputs["dataset"]`, in the dataset's own order) and `tokenizer.json` /
`special_tokens_map.json` of the tokenizer entry (`job.inputs["tokenizer"]`).
Writes: `train.bin` and `validation.bin`, each every document's ids followed by the
eos id, as raw little-endian uint16 (a vocabulary of at most 65,536 tokens) or
uint32, which `np.memmap(path, dtype)` reads back; and `tokens.json` with the dtype,
the special ids, the vocabulary size and per-split document and token counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from targets import BuildError, Job

OUTPUTS = ("train.bin", "validation.bin", "tokens.json")
SPLITS = ("train", "validation")
CHUNK_CHARS = 4 << 20  # text handed to encode_batch at once: bounds memory, keeps its threads busy


def dtype_for(vocab_size: int) -> str:
    """The narrowest unsigned type that holds every id of a `vocab_size` vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def build(job: Job) -> dict:
    tok, ids = load_tokenizer(job.inputs["tokenizer"])
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = dtype_for(vocab)
    splits = {}
    for split in SPLITS:
        shards = sorted(job.inputs["dataset"].glob(f"{split}-*.jsonl"))
        splits[split] = write_split(tok, ids["eos"], dtype, shards, job.out / f"{split}.bin", job.log)
        job.log(f"{split}: {splits[split]['documents']:,} documents, {splits[split]['tokens']:,} tokens ({dtype})")
    meta = {"dtype": dtype, "eos_id": ids["eos"], "bos_id": ids["bos"], "pad_id": ids["pad"],
            "vocab_size": vocab, "splits": splits}
    (job.out / "tokens.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_tokenizer(entry: Path):
    """The tokenizer of a tokenizer entry and the ids of its bos, eos and pad tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(entry / "tokenizer.json"))
    # a document that says "</s>" means the four characters, not the end of a document:
    # encode special tokens' text as plain text, so eos only ever separates documents
    tok.encode_special_tokens = True
    names = json.loads((entry / "special_tokens_map.json").read_text())
    ids = {}
    for role in ("bos", "eos", "pad"):
        token = names.get(f"{role}_token")
        ids[role] = tok.token_to_id(token) if token is not None else None
    if ids["eos"] is None:
        raise BuildError(f"the tokenizer has no eos token ({names.get('eos_token')!r} is not in its vocabulary), "
                         "so documents cannot be separated; give the tokenizer step `special_tokens: {eos: ...}`")
    return tok, ids


def write_split(tok, eos: int, dtype: str, shards: list[Path], path: Path, log) -> dict:
    """Tokenize the documents of `shards` chunk by chunk, appending each chunk's ids to `path`."""
    import numpy as np

    documents = tokens = 0
    with open(path, "wb") as f:
        for texts in chunks(shards):
            if documents:  # progress between chunks; build() says the totals
                log(f"{path.stem}: {documents:,} documents, {tokens:,} tokens so far")
            flat: list[int] = []
            for encoding in tok.encode_batch(texts, add_special_tokens=False):
                flat += encoding.ids
                flat.append(eos)
            np.asarray(flat, dtype=np.dtype(dtype).newbyteorder("<")).tofile(f)
            documents += len(texts)
            tokens += len(flat)
    return {"documents": documents, "tokens": tokens}


def chunks(shards: list[Path]) -> Iterator[list[str]]:
    """The documents' texts in order, in lists of about CHUNK_CHARS characters."""
    texts: list[str] = []
    size = 0
    for shard in shards:
        with open(shard, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise BuildError(f"{shard.name}, line {n}: not a dataset record with a `text` field") from None
                texts.append(text)
                size += len(text)
                if size >= CHUNK_CHARS:
                    yield texts
                    texts, size = [], 0
    if texts:
        yield texts
