"""Tokens builder: a dataset's documents as one flat stream of token ids per split.

Reads: the `train-*.jsonl` / `validation-*.jsonl` shards of the dataset entry
(`job.inputs[DATASET]`, in the dataset's own order) and `tokenizer.json` /
`special_tokens_map.json` of the tokenizer entry (`job.inputs[TOKENIZER]`).
Writes: `train.bin` and `validation.bin`, each every document's ids followed by the
eos id, as raw little-endian uint16 (a vocabulary of at most 65,536 tokens) or
uint32, which `np.memmap(path, dtype)` reads back; and `tokens.json` with the dtype,
the special ids, the vocabulary size and per-split document and token counts.

An instruction/response dataset (the spec names a `chat_template`, a Jinja file of the
project) is rendered record by record as a user turn and an assistant turn, and each
split also gets `<split>.mask.bin`, one uint8 per token: 1 for the tokens the assistant
says (the response, what the template closes it with, and the separating eos), 0 for the
prompt. tokens.json then says `"mask": true`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from compiler.inputs import DATASET, TOKENIZER
from targets import BuildError, Job, load_tokenizer, special_ids, special_tokens
from targets.chat import chat_renderer, template_path

OUTPUTS = ("train.bin", "validation.bin", "tokens.json")
OPTIONAL_OUTPUTS = ("train.mask.bin", "validation.mask.bin")  # instruction/response datasets only
SPLITS = ("train", "validation")
CHUNK_CHARS = 4 << 20  # text handed to encode_batch at once: bounds memory, keeps its threads busy


def dtype_for(vocab_size: int) -> str:
    """The narrowest unsigned type that holds every id of a `vocab_size` vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def build(job: Job) -> dict:
    tok, ids = stream_tokenizer(job.inputs[TOKENIZER])
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = dtype_for(vocab)
    chat = job.spec.chat_template is not None
    render = chat_renderer(template_path(job), job.inputs[TOKENIZER]) if chat else None
    splits = {}
    for split in SPLITS:
        shards = sorted(job.inputs[DATASET].glob(f"{split}-*.jsonl"))
        if chat:
            splits[split] = write_chat_split(tok, ids["eos"], dtype, shards, job.out / f"{split}.bin", render)
        else:
            splits[split] = write_split(tok, ids["eos"], dtype, shards, job.out / f"{split}.bin", job.log)
        job.log(f"{split}: {splits[split]['documents']:,} documents, {splits[split]['tokens']:,} tokens ({dtype})")
    meta = {"dtype": dtype, "eos_id": ids["eos"], "bos_id": ids["bos"], "pad_id": ids["pad"],
            "vocab_size": vocab, "splits": splits}
    if chat:
        meta["mask"] = True
    (job.out / "tokens.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def stream_tokenizer(entry: Path):
    """The tokenizer of a tokenizer entry, set to encode documents, and the ids of its bos, eos
    and pad tokens."""
    tok = load_tokenizer(entry)
    # a document that says "</s>" means the four characters, not the end of a document:
    # encode special tokens' text as plain text, so eos only ever separates documents
    tok.encode_special_tokens = True
    known = special_ids(entry, tok)
    ids = {role: known.get(role) for role in ("bos", "eos", "pad")}
    if ids["eos"] is None:
        raise BuildError(f"the tokenizer has no eos token ({special_tokens(entry).get('eos')!r} is not in its "
                         "vocabulary), so documents cannot be separated; give the tokenizer step "
                         "`special_tokens: {eos: ...}`")
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
    for batch in records(shards, ("text",), "a dataset record with a `text` field"):
        yield [text for _, _, text in batch]


def records(shards: list[Path], fields: tuple[str, ...], what: str) -> Iterator[list[tuple]]:
    """(shard, line, *fields) of the records in order, in lists of about CHUNK_CHARS characters,
    so memory stays bounded whatever the dataset's size."""
    batch: list[tuple] = []
    size = 0
    for shard in shards:
        with open(shard, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    values = tuple(record[k] for k in fields)
                except (ValueError, KeyError, TypeError):
                    raise BuildError(f"{shard.name}, line {n}: not {what}") from None
                batch.append((shard, n, *values))
                size += sum(len(v) for v in values)
                if size >= CHUNK_CHARS:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------- instruction/response records

def write_chat_split(tok, eos: int, dtype: str, shards: list[Path], path: Path, render) -> dict:
    """Each record's rendered conversation then eos into `path`, and its mask into `<split>.mask.bin`.

    The template's own special tokens (bos, eos) are meant as tokens here, as `apply_chat_template`
    of the exported tokenizer reads them; the prompt must tokenize to a prefix of the conversation,
    or the mask would cut a token in two."""
    import numpy as np

    tok.encode_special_tokens = False
    documents = tokens = 0
    mask_path = path.with_name(path.stem + ".mask.bin")
    with open(path, "wb") as f, open(mask_path, "wb") as m:
        for batch in records(shards, ("instruction", "response"),
                             "an instruction/response record (`instruction` and `response` fields)"):
            rendered = [render(inst, resp) for _, _, inst, resp in batch]
            prompts = tok.encode_batch([p for p, _ in rendered], add_special_tokens=False)
            fulls = tok.encode_batch([c for _, c in rendered], add_special_tokens=False)
            ids: list[int] = []
            mask: list[int] = []
            for (shard, n, _, _), prompt, full in zip(batch, prompts, fulls):
                cut = len(prompt.ids)
                if full.ids[:cut] != prompt.ids:
                    raise BuildError(f"{shard.name}, line {n}: the prompt's tokens are not a prefix of the "
                                     f"conversation's, so the response cannot be masked; end the template's "
                                     f"generation prompt at a token boundary (e.g. with a newline)")
                ids += full.ids + [eos]
                mask += [0] * cut + [1] * (len(full.ids) - cut + 1)
            np.asarray(ids, dtype=np.dtype(dtype).newbyteorder("<")).tofile(f)
            np.asarray(mask, dtype=np.uint8).tofile(m)
            documents += len(batch)
            tokens += len(ids)
    return {"documents": documents, "tokens": tokens}
