"""Teacher-outputs builder: what a distillation teacher predicts over a student's data, computed
once and stored, so that every student reading the same (teacher, tokens, window length, top_k,
temperature, alignment) reads it instead of running the teacher, and a student edited in its
own hyperparameters (lr, steps, alpha, weights) runs no teacher at all.

Reads: the teacher's weights (`job.inputs[MODEL]`, the model.safetensors and config.json of an
init, train or pretrained entry; no remote code) and the student's tokens of one dataset
(`tokens.<dataset>`: train.bin, memory-mapped); for `align: uld` or `map` also the student's
tokenizer (`tokenizer`) and the teacher's (`teacher_tokenizer`), whose token bytes
targets/align.py aligns.

Writes: the train split cut into consecutive windows of L + 1 tokens, L the student's seq_len
(window w is x[0..L] = tokens w·L … w·L + L; windows = (tokens - 1) // L; the student feeds
x[0..L-1] and predicts x[1..L]), and for each window its *groups*, as targets/align.py forms
them: a group is student tokens x[a..b] (inclusive, 1 <= a <= b <= L, predicted from the
student's logit rows a-1 .. b-1) and the teacher's distribution over them, merged along the
group. For `align: same` every predicted token is its own group, (a, b) = (t, t) for t = 1..L,
and the distribution is the teacher's at row t - 1 of the same window; for `uld` and `map` the
teacher reads the window's text after its bos (or eos), and groups close where both
tokenizations end a token at the same byte (`align.groups`). Per shard of consecutive windows:

- `shard-NNNNN.offsets.npy` int64 [windows + 1]: window j's groups are rows offsets[j] …
  offsets[j+1] - 1 of the shard's other arrays;
- `shard-NNNNN.spans.npy` int32 [groups, 2]: each group's (a, b);
- `shard-NNNNN.logprobs.npy` LOGPROBS_DTYPE [groups, k]: the teacher's (merged) log-probabilities
  of softmax(logits / T) at the step's temperature, largest first (for `all` with `same`: the
  whole distribution, in id order);
- `shard-NNNNN.ids.npy` int32 [groups, k]: their ids in the *student's* vocabulary (`same`;
  `map`: the teacher's ids carried over by `align.vocab_map`, -1 where none maps); none for
  `all` with `same`, whose columns are the ids, nor for `uld`, whose values are compared sorted;
- `shard-NNNNN.rest.npy` float32 [groups]: log of the merged mass outside the k (-inf for none);

`mapping.npy` int64 [teacher vocabulary] for `map` (`align.vocab_map`: teacher id -> student id,
-1 for none), and `teacher.json` (`compiler.entries.TeacherOutputsInfo`) describing them, also
the manifest's metrics: `forwards` counts the teacher's forward passes, `coverage` the share of
the student's predicted tokens that some group holds (1.0 for `same`), `mapped` (for `map`) the
share of the teacher's ids that map onto a student id.

The temperature is applied before the top-k is taken: the k log-probabilities and the rest are
exactly those of softmax(z / T), which the top-k of softmax(z) cannot give (the tempered mass of
the rest depends on every logit in it). So the temperature is in the key: a temperature edit
runs the teacher again; a learning-rate edit does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compiler import entries
from compiler.inputs import MODEL, TEACHER_TOKENIZER, TOKENIZER, Role, of_role
from targets import BuildError, Job

OUTPUTS = ("teacher.json", "shard-*.offsets.npy", "shard-*.spans.npy", "shard-*.logprobs.npy", "shard-*.rest.npy")
OPTIONAL_OUTPUTS = ("shard-*.ids.npy", "mapping.npy")  # ids: not for `all` with `same`, nor `uld`; mapping: `map`
# float16 log-probabilities move the KD term by < 1e-4 of it (tests/test_teacher.py: at most 5e-5
# measured), for 3/4 of float32's bytes at k = 64 (396 bytes per token, not 524) and half at `all`
LOGPROBS_DTYPE = "float16"
SHARD_BYTES = 1 << 28       # a shard holds whole windows, about this many bytes at most
LOGITS_BUDGET = 1 << 25     # logits (float32 values) of one forward pass: windows per pass follow from it


def build(job: Job) -> dict:
    spec = job.spec
    (name, folder), = of_role(job.inputs, Role.TOKENS).items()
    tokens = entries.read_tokens_info(folder)
    stream = _stream(folder / "train.bin", tokens.dtype)
    length = spec.seq_len
    windows = (len(stream) - 1) // length
    if spec.windows is not None:  # the first ones only (`distill.windows`)
        windows = min(windows, spec.windows)
    if windows < 1:
        raise BuildError(f"dataset '{name}' has {len(stream):,} train tokens, fewer than one window of seq_len + 1 = "
                         f"{length + 1:,}: lower seq_len or add documents")
    model, device = _teacher(job)
    vocab = model.config.vocab_size
    side = Same(spec, stream, tokens.vocab_size, vocab) if spec.align == "same" else Aligned(job, stream, vocab)
    per_shard = max(1, SHARD_BYTES // (length * (side.k * (_itemsize() + 4 * side.ids) + 12)))
    per_pass = max(1, min(64, LOGITS_BUDGET // (side.positions * vocab)))
    shards, forwards, covered = [], 0, 0
    for first in range(0, windows, per_shard):
        shard = {"name": f"shard-{len(shards):05d}", "first_window": first, "windows": min(per_shard, windows - first)}
        passes, shard["groups"], held = _shard(job.out, shard, side, model, device, per_pass)
        shards.append(shard)
        forwards, covered = forwards + passes, covered + held
        job.log(f"{shard['name']}: windows {first:,}-{first + shard['windows'] - 1:,} of {windows:,}, "
                f"{shard['groups']:,} groups")
    if spec.align == "map":
        np.save(job.out / "mapping.npy", side.mapping)
    meta = {"format": 1, "align": spec.align, "top_k": spec.top_k, "k": side.k, "ids": side.ids,
            "logprobs_dtype": LOGPROBS_DTYPE, "temperature": spec.temperature, "seq_len": length,
            "tokens": len(stream), "windows": windows, "groups": sum(s["groups"] for s in shards),
            "vocab_size": vocab, "coverage": round(covered / (windows * length), 6),
            "mapped": round(side.mapped, 6) if spec.align == "map" else None, "forwards": forwards,
            "shards": shards}
    entries.TeacherOutputsInfo.model_validate(meta)  # what students read back, checked as it is written
    (job.out / entries.TEACHER_INFO).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _itemsize() -> int:
    return 2 if LOGPROBS_DTYPE == "float16" else 4


def _stream(path: Path, dtype: str):
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)


def _teacher(job: Job):
    """The teacher in float32, eval mode, on the step's device: outputs do not depend on the
    precision a student trains in, so students of any dtype share them."""
    import torch
    from transformers.utils import logging as hf_logging

    from targets.architectures import causal_lm  # a plug-in's weights too

    device = job.spec.device
    if device == "cuda" and not torch.cuda.is_available():
        raise BuildError("device cuda was decided at compile time, but torch sees no CUDA device: compile again")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load is instant: no bar
    try:
        model = causal_lm(job.root, job.inputs[MODEL], torch.float32, f"teacher '{job.spec.teacher}'")
    except (OSError, ValueError) as exc:
        raise BuildError(f"teacher '{job.spec.teacher}' could not be loaded: {exc}") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    job.log(f"teacher '{job.spec.teacher}': {model.num_parameters():,} parameters on {device.type}")
    return model.to(device).eval().requires_grad_(False), device


def _shard(out: Path, shard: dict, side, model, device, per_pass: int) -> tuple[int, int, int]:
    """Run the teacher over a shard's windows, `per_pass` at a time, and write the shard; returns
    (forward passes, groups, student tokens the groups hold)."""
    arrays = {"offsets": [np.zeros(1, np.int64)], "spans": [], "logprobs": [], "ids": [], "rest": []}
    first, end = shard["first_window"], shard["first_window"] + shard["windows"]
    for at in range(first, end, per_pass):
        for part, value in side.run(model, device, range(at, min(at + per_pass, end))).items():
            arrays[part].append(value)
    return (-(-shard["windows"] // per_pass), *_write(out / shard["name"], arrays, side.ids))


def _write(prefix: Path, arrays: dict, ids: bool) -> tuple[int, int]:
    """One shard's files from its chunks; returns its number of groups, and of the student's
    predicted tokens they hold."""
    counts = np.concatenate(arrays["offsets"])
    np.save(f"{prefix}.offsets.npy", np.cumsum(counts).astype(np.int64))
    spans = np.concatenate(arrays["spans"])
    for part in ("spans", "logprobs", "rest") + (("ids",) if ids else ()):
        np.save(f"{prefix}.{part}.npy", spans if part == "spans" else np.concatenate(arrays[part]))
    return int(counts.sum()), int((spans[:, 1] - spans[:, 0] + 1).sum())


def top_k(logits, k: int, temperature: float):
    """(log-probabilities of softmax(logits / T), largest k first; their ids; log of the mass
    of the rest) at each position. With k the whole vocabulary: every log-probability in id order,
    no ids, and a rest of -inf. Computed a few rows at a time (`align.row_chunks`)."""
    import torch

    from targets.align import row_chunks

    flat = logits.reshape(-1, logits.shape[-1])
    parts = [_top_k(flat[rows], k, temperature) for rows in row_chunks(*flat.shape)]
    values, ids, rest = (None if part[0] is None else torch.cat(part) for part in zip(*parts))
    lead = logits.shape[:-1]
    return values.reshape(*lead, -1), None if ids is None else ids.reshape(*lead, -1), rest.reshape(lead)


def _top_k(logits, k: int, temperature: float):
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if k >= logp.shape[-1]:
        return logp, None, torch.full(logp.shape[:-1], float("-inf"), device=logp.device)
    values, ids = logp.topk(k, dim=-1, sorted=True)
    # the rest's mass from the rest itself, not as log(1 - Σ top-k): exact however small it is
    left = logp.scatter_(-1, ids, float("-inf")).logsumexp(-1)  # in place: logp is read no more
    return values, ids.to(torch.int32), left


class Same:
    """`align: same`: the teacher reads the student's window itself; one group per predicted token."""

    def __init__(self, spec, stream, tokens_vocab: int, vocab: int):
        if tokens_vocab > vocab:
            raise BuildError(f"teacher '{spec.teacher}' has {vocab:,} logits, fewer than the {tokens_vocab:,} tokens "
                             f"of the student's tokenizer: distill from a teacher of this tokenizer")
        self.spec, self.stream, self.length = spec, stream, spec.seq_len
        self.k = vocab if spec.top_k == "all" or spec.top_k >= vocab else spec.top_k
        self.ids, self.positions = self.k < vocab, self.length

    def run(self, model, device, windows: range) -> dict:
        import torch

        n, length = len(windows), self.length
        starts = np.arange(windows.start, windows.stop) * length
        x = torch.from_numpy(self.stream[starts[:, None] + np.arange(length)].astype(np.int64)).to(device)
        with torch.inference_mode():
            values, ids, rest = top_k(model(input_ids=x, use_cache=False).logits, self.k, self.spec.temperature)
        t = np.tile(np.arange(1, length + 1, dtype=np.int32), n)
        out = {"offsets": np.full(n, length, np.int64), "spans": np.stack([t, t], axis=1),
               "logprobs": values.reshape(-1, self.k).cpu().numpy().astype(LOGPROBS_DTYPE),
               "rest": rest.reshape(-1).cpu().numpy().astype(np.float32)}
        if ids is not None:
            out["ids"] = ids.reshape(-1, self.k).cpu().numpy()
        return out


class Aligned:
    """`align: uld` or `map`: the teacher reads each window's text in its own tokens, after a
    token of no text (its bos, else its eos) so that it predicts every byte; its top-k per
    position is merged over the groups `align.groups` finds (targets/align.py)."""

    def __init__(self, job: Job, stream, vocab: int):
        from targets import align, load_tokenizer, special_ids

        spec = self.spec = job.spec
        self.align, self.stream, self.length = align, stream, spec.seq_len
        self.student_table = align.token_bytes(job.inputs[TOKENIZER])
        self.teacher_table = align.token_bytes(job.inputs[TEACHER_TOKENIZER])
        self.tok = load_tokenizer(job.inputs[TEACHER_TOKENIZER])
        self.tok.encode_special_tokens = True  # the window's text is text, special tokens' spellings too
        known = special_ids(job.inputs[TEACHER_TOKENIZER], self.tok)
        self.lead = known.get("bos") if known.get("bos") is not None else known.get("eos")
        if self.lead is None or self.teacher_table[self.lead] != b"":
            raise BuildError(f"the tokenizer of teacher '{spec.teacher}' has no bos or eos token of no text to "
                             "put in front of each window, so its first token would be predicted by nothing")
        self.k = vocab if spec.top_k == "all" else min(spec.top_k, vocab)
        self.ids = spec.align == "map"
        if self.ids:
            self.mapping, self.mapped = align.vocab_map(self.student_table, self.teacher_table)
            job.log(f"{self.mapped:.1%} of the teacher's ids map onto a student id of the same bytes")
        self.positions = 2 * self.length  # a budget: teacher windows are about as long as the student's

    def run(self, model, device, windows: range) -> dict:
        import torch

        xs = [np.asarray(self.stream[w * self.length:(w + 1) * self.length + 1], dtype=np.int64) for w in windows]
        ys = [[self.lead] + self.tok.encode(self.align.teacher_text(x, self.student_table).decode("utf-8"),
                                            add_special_tokens=False).ids for x in xs]
        limit = getattr(model.config, "max_position_embeddings", None)
        longest = max(len(y) for y in ys)
        if limit is not None and longest > limit:
            raise BuildError(f"a window of {self.length} student tokens is {longest:,} tokens of teacher "
                             f"'{self.spec.teacher}', more than its {limit:,} positions: lower seq_len")
        # right-padded: a causal model's logits at a position do not see the positions after it
        batch = torch.zeros(len(ys), longest, dtype=torch.long)
        for i, y in enumerate(ys):
            batch[i, :len(y)] = torch.tensor(y)
        with torch.inference_mode():
            logits = model(input_ids=batch.to(device), use_cache=False).logits
        out = {"offsets": [], "spans": [], "logprobs": [], "ids": [], "rest": []}
        for x, y, row in zip(xs, ys, logits):
            rows = self.align.groups(x, self.student_table, y, self.teacher_table)
            cache = self.align.teacher_cache(row[:len(y)], y, self.k, self.spec.temperature)
            logprobs, ids, rest = self.align.teacher_merged_topk(*cache, rows)
            out["offsets"].append(len(rows))
            out["spans"].append(rows[:, :2].astype(np.int32))
            out["logprobs"].append(logprobs.cpu().numpy().astype(LOGPROBS_DTYPE))
            with np.errstate(divide="ignore"):  # a rest of zero mass is log 0 = -inf
                out["rest"].append(np.log(rest.cpu().numpy().astype(np.float64)).astype(np.float32))
            if self.ids:
                out["ids"].append(self.align.student_ids_of(ids, self.mapping).astype(np.int32))
        return {"offsets": np.array(out["offsets"], np.int64),
                **{part: np.concatenate(v) for part, v in out.items() if part != "offsets" and v}}
