"""Cross-tokenizer distillation math: a student and a teacher with different tokenizers compared
on the same text, after TRL's GOLD trainer (alignment groups closed where both tokenizations
put a token boundary at the same byte; a group's probabilities merged along the observed
tokens) and the ULD loss of Boizard et al. 2024 (arXiv 2402.12030: L1 between the sorted
probability vectors, the shorter vocabulary padded with zeros).

Reads a tokenizer folder's `tokenizer.json` (`token_bytes`) and nothing else: the rest are pure
functions of token ids and logits, numpy for the alignment and torch for the losses (both
imported inside the functions, as everywhere in targets/).

A caller goes through them in this order:

1. `token_bytes(folder)` per tokenizer, once: the bytes each id stands for (`Ġword` and
   `▁word` both b" word"); `vocab_map(student_table, teacher_table)` once per pair, for the
   map loss.
2. Per student window x[0..L-1]: `teacher_text(x, student_table)` is what the teacher
   tokenizes (into y[0..M-1], ideally after a token that stands for no text, its bos or eos, so
   that every byte of the text is predicted); `groups(x, student_table, y, teacher_table)` gives
   rows (a, b, c, d): student tokens x[a..b] and teacher tokens y[c..d] (inclusive) that cover
   the same bytes; `coverage(groups, L)` says how many of the student's tokens they hold.
3. `student_merged` and `teacher_merged` (or, from a teacher's cached top-k, `teacher_cache`
   then `teacher_merged_topk`): each group's merged log-distribution over one vocabulary.
4. `uld_loss` / `uld_loss_topk` (any two vocabularies) or `map_loss` / `map_loss_topk` (the
   ids whose bytes both vocabularies have).

Index conventions, everywhere: row t of a model's logits on a window is its distribution of
token t+1, so token t is *predicted* from position t-1 and token 0 is predicted by no position.
Groups hold predicted tokens only (a >= 1, c >= 1). Shapes: L, M window lengths; Vs, Vt the
widths of the student's and teacher's logits (at least their tables' lengths: embedding rows
past the tokenizer's ids are ids with no token); G groups; k cached entries per position.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from targets import BuildError, read_tokenizer_json

if TYPE_CHECKING:
    import numpy as np
    import torch

SPACE = "▁"  # SentencePiece's escaped space, U+2581
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a byte-fallback token
ANCHOR = 4   # bytes that must agree to resume the byte map after a difference (`_byte_map`)
REACH = 64   # how far past a difference (in bytes, each side) the byte map looks for that
FILL = -1e9  # log-mass of an empty bucket: finite, so that no NaN reaches a gradient
# logits per chunk of rows when a teacher's distributions are reduced to their top-k: a few MB,
# which stay in cache; whole passes over [N, 151,936] (a Qwen2 vocabulary) take ~1.5x as long
ROWS_BUDGET = 1 << 20


# ---------------------------------------------------------------- bytes of tokens

def token_bytes(tokenizer_folder: Path | str) -> list[bytes]:
    """The bytes each id of a tokenizer folder's `tokenizer.json` stands for, indexed by id;
    `len()` is one past the largest id (ids no token has get b"").

    - byte-level BPE (GPT-2, Llama 3, Qwen2: a ByteLevel pre-tokenizer or decoder): each
      character of the piece mapped back through GPT-2's bytes-to-unicode table (`Ġ` -> b" ");
    - SentencePiece-style BPE with byte fallback (Llama 2, Mistral): `▁` -> b" ", `<0xNN>` ->
      that byte, the rest UTF-8;
    - added tokens that are not special (Qwen2's `<tool_call>`): their content as UTF-8, since
      the tokenizer makes them from exactly that text;
    - special (control) tokens and the unknown token: b"", as they stand for no text (bos, eos,
      chat markers). They take no bytes in `teacher_text`, never sit inside a group, and in
      `vocab_map` pair with the other side's b"" tokens (control mass onto control tokens).

    Concatenated, the bytes of the ids of an encoding are the bytes of the text it encodes, with
    two exceptions a tokenizer makes and `groups` absorbs: the "▁" a SentencePiece-style
    normalizer puts in front of the text (Llama 2's Prepend; a Metaspace pre-tokenizer adds none
    to text that starts with a space), so that its ids' bytes are b" " + text, and any other
    change a normalizer makes (Qwen2's NFC). The table is per id and cannot know a token's place,
    so it keeps the space (`▁Hello` is b" Hello" wherever it stands); `groups` drops the first
    byte of the teacher's bytes when it is such an added space (found by comparing them with the
    text the teacher was given), so `▁Hello` in front aligns with the student's `Hello`, and
    leaves out the tokens a normalizer changed. The student's own bytes are its text by
    definition: spaces its tokenizer put in front of each document are part of what the teacher
    is given."""
    spec = read_tokenizer_json(Path(tokenizer_folder))
    piece_bytes = _piece_decoder(spec)
    model = spec["model"]
    added = spec.get("added_tokens", [])
    table = [b""] * (1 + max([*model["vocab"].values(), *(a["id"] for a in added)], default=-1))
    for piece, i in model["vocab"].items():
        table[i] = piece_bytes(piece)
    for a in added:
        table[a["id"]] = b"" if a.get("special") else a["content"].encode("utf-8")
    if model.get("unk_token") in model["vocab"]:
        table[model["vocab"][model["unk_token"]]] = b""
    return table


def _piece_decoder(spec: dict):
    """piece -> bytes for the tokenizer's family; one whose pieces are not bytes is an error."""
    import json

    model = spec.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _sentencepiece_bytes
    where = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if model.get("type") == "BPE" and '"ByteLevel"' in where:
        return _byte_level_bytes
    raise BuildError(f"cannot tell the bytes of this tokenizer's tokens (model {model.get('type')}, no ByteLevel "
                     "pre-tokenizer or decoder, no byte_fallback); cross-tokenizer distillation reads byte-level "
                     "BPE (GPT-2, Llama 3, Qwen2) and SentencePiece-style BPE with byte fallback (Llama 2, Mistral)")


def _byte_level_bytes(piece: str) -> bytes:
    try:
        return bytes(_UNICODE_TO_BYTE[ch] for ch in piece)
    except KeyError as e:
        raise BuildError(f"token {piece!r} of a byte-level tokenizer holds {e.args[0]!r}, which stands for no "
                         "byte in GPT-2's bytes-to-unicode table") from None


def _sentencepiece_bytes(piece: str) -> bytes:
    byte = BYTE_TOKEN.fullmatch(piece)
    return bytes([int(byte[1], 16)]) if byte else piece.replace(SPACE, " ").encode("utf-8")


def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's table, inverted: printable bytes stand for themselves, the other 68 for 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


_UNICODE_TO_BYTE = _unicode_to_byte()


# ---------------------------------------------------------------- the teacher's text

def teacher_text(student_ids, student_table: list[bytes]) -> bytes:
    """The text of a student window for the teacher to tokenize: its ids' bytes, cut so they are
    valid UTF-8 (`.decode("utf-8")` never fails). A window may start or end inside a character
    (byte-level and byte-fallback tokens split characters): up to 3 leading continuation bytes
    (of a character begun before the window) and a trailing incomplete character are cut off,
    and the student tokens holding them align with nothing. Bytes that are invalid inside the
    window (ids a student sampled, not text it was given) become U+FFFD, which `groups` sees as
    a difference and leaves out."""
    window = _joined(student_ids, student_table)
    head, end = _valid_span(window)
    return window[head:end].decode("utf-8", "replace").encode("utf-8")


def _joined(ids, table: list[bytes]) -> bytes:
    return b"".join(table[int(i)] for i in ids)


def _valid_span(data: bytes) -> tuple[int, int]:
    """(head, end): `data[head:end]` without a partial character at either edge."""
    head = 0
    while head < min(3, len(data)) and 0x80 <= data[head] < 0xC0:
        head += 1
    lead = len(data) - 1
    while lead > max(head, len(data) - 4) and 0x80 <= data[lead] < 0xC0:
        lead -= 1
    if lead >= head and data[lead] >= 0xC0:
        size = 2 if data[lead] < 0xE0 else 3 if data[lead] < 0xF0 else 4
        if len(data) - lead < size:
            return head, lead
    return head, len(data)


# ---------------------------------------------------------------- alignment

def groups(student_ids, student_table: list[bytes], teacher_ids, teacher_table: list[bytes]) -> np.ndarray:
    """Alignment groups of a student window x[0..L-1] (`student_ids`) and the teacher's ids
    y[0..M-1] of `teacher_text(x, student_table)`, as TRL's GOLD trainer forms them: an int64
    array [G, 4] of rows (a, b, c, d), student tokens x[a..b] and teacher tokens y[c..d]
    (inclusive), whose bytes are the same bytes of the text; rows in text order, 1 <= a <= b,
    1 <= c <= d.

    Only predicted tokens (x[1..], y[1..]) are aligned: walking both byte-offset arrays, a group
    closes each time a student and a teacher token end at the same byte (computed at once: the
    groups lie between consecutive byte offsets that are token boundaries on both sides). Left out are tokens
    that cannot be aligned: those before the first boundary both sides share and after the last
    (the window's edges: x[0] and y[0] are no one's prediction, so give the teacher a token with
    no text in front, its bos or eos, to have it predict every byte), tokens of no bytes (bos,
    eos: a group never holds one) and tokens whose bytes the teacher's tokenizer changed
    (Qwen2's NFC, a "▁" in the text that Llama 2's tokenizer makes a space) or `teacher_text`
    cut off: the teacher's bytes are mapped onto the window's by `_byte_map`, and a group holds
    only bytes both sides have, unchanged. A space the teacher's tokenizer put in front of the
    text (a SentencePiece-style normalizer's "▁") is dropped first: the teacher's first token
    with bytes then stands for its bytes without it (see `token_bytes`), so in every group the
    student's bytes equal the teacher's, that one space left out. `coverage(rows, L)` says what
    share of the student's predicted tokens the groups hold."""
    import numpy as np

    window, other = _joined(student_ids, student_table), _joined(teacher_ids, teacher_table)
    start = _valid_span(window)[0]
    lengths = _lengths(teacher_ids, teacher_table)
    if _added_space(window, start, other):  # as if the tokenizer had not put it there
        other = other[1:]
        lengths[np.argmax(lengths > 0)] -= 1
    s_start, s_end = _spans(_lengths(student_ids, student_table))
    s_ok = s_end > s_start
    t_start, t_end, t_ok = _mapped_spans(lengths, _byte_map(window, other, start))
    s_ok[:1] = t_ok[:1] = False  # x[0] and y[0] are predicted by no position
    shared = np.intersect1d(np.union1d(s_start[s_ok], s_end[s_ok]), np.union1d(t_start[t_ok], t_end[t_ok]))
    lo, hi = shared[:-1], shared[1:]
    a, b, s_found = _tiling(s_start, s_end, s_ok, lo, hi)
    c, d, t_found = _tiling(t_start, t_end, t_ok, lo, hi)
    keep = s_found & t_found
    return np.stack([a[keep], b[keep], c[keep], d[keep]], axis=1).astype(np.int64)


def coverage(rows, student_length: int) -> float:
    """Share of a window's predicted student tokens (x[1..L-1], L = `student_length`) that
    `rows` (from `groups`) hold; 0.0 for a window of fewer than two tokens."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    return float((rows[:, 1] - rows[:, 0] + 1).sum() / (student_length - 1)) if student_length > 1 else 0.0


def _lengths(ids, table: list[bytes]) -> np.ndarray:
    import numpy as np

    return np.array([len(table[int(i)]) for i in ids], dtype=np.int64)


def _spans(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each token's [start, end) byte offsets in its sequence's concatenated bytes."""
    import numpy as np

    end = np.cumsum(lengths)
    return end - lengths, end


def _mapped_spans(lengths: np.ndarray, source: np.ndarray):
    """The teacher's token spans in the student window's byte offsets (`source`: `_byte_map`),
    and which tokens are whole there: of some bytes, every byte mapped, to consecutive bytes."""
    import numpy as np

    start, end = _spans(lengths)
    run_break = np.ones(len(source) + 1, dtype=np.int64)  # 1 where byte j does not continue byte j-1's run
    run_break[1:-1] = (source[1:] < 0) | (source[1:] != source[:-1] + 1)
    breaks = np.concatenate([[0], np.cumsum(run_break)])
    first = np.minimum(start, max(len(source) - 1, 0))
    ok = (end > start) & (source[first] >= 0 if len(source) else False)
    ok &= breaks[end] - breaks[np.minimum(start + 1, end)] == 0
    mapped = np.where(ok, source[first], -1)
    return mapped, mapped + lengths, ok


def _tiling(start, end, ok, lo, hi):
    """For each byte span [lo, hi): the first and last token of a run of usable (`ok`) tokens that
    covers it exactly, without a gap or an unusable token between, and whether one does."""
    import numpy as np

    index = np.flatnonzero(ok)
    if not len(index) or not len(lo):
        empty = np.zeros(len(lo), dtype=np.int64)
        return empty, empty, np.zeros(len(lo), dtype=bool)
    first, last = start[index], end[index]  # increasing: usable tokens have bytes and keep their order
    i = np.searchsorted(first, lo).clip(max=len(index) - 1)
    k = np.searchsorted(last, hi).clip(max=len(index) - 1)
    gaps = np.concatenate([[0], np.cumsum(first[1:] != last[:-1])])
    found = (first[i] == lo) & (last[k] == hi) & (k - i == index[k] - index[i]) & (gaps[k] == gaps[i])
    return index[i], index[k], found


def _added_space(window: bytes, start: int, other: bytes) -> bool:
    """Whether the teacher's bytes begin with a space its tokenizer put in front of the text (a
    SentencePiece-style normalizer's "▁"): they do when they agree with the text for longer
    without their first byte than with it."""
    import numpy as np

    a, b = np.frombuffer(window, dtype=np.uint8), np.frombuffer(other, dtype=np.uint8)
    return other[:1] == b" " and _agree(a, start, b, 1) > _agree(a, start, b, 0)


def _byte_map(window: bytes, other: bytes, start: int) -> np.ndarray:
    """For each byte of `other` (the teacher's bytes), its offset in `window` (the student's),
    -1 where they differ; the teacher's text begins at `window[start]` (`teacher_text`'s cut).
    Runs of equal bytes are matched in order; after a difference the map resumes at the nearest
    pair of offsets (fewest bytes passed over on both sides together, at most REACH each) where
    ANCHOR bytes agree, or where both rests agree to the end. A normalizer changes text locally
    (NFC, a replaced character), so the nearest agreement is the right one; were it ever not,
    the groups would still hold equal bytes on both sides."""
    import numpy as np

    out = np.full(len(other), -1, dtype=np.int64)
    a, b = np.frombuffer(window, dtype=np.uint8), np.frombuffer(other, dtype=np.uint8)
    i, j = start, 0
    while i < len(a) and j < len(b):
        n = _agree(a, i, b, j)
        out[j:j + n] = np.arange(i, i + n)
        i, j = i + n, j + n
        if i < len(a) and j < len(b):
            resumed = _resume(window, i, other, j)
            if resumed is None:
                break
            i, j = resumed
    return out


def _agree(a: np.ndarray, i: int, b: np.ndarray, j: int) -> int:
    """How many bytes a[i:] and b[j:] agree on from their start."""
    import numpy as np

    n = max(0, min(len(a) - i, len(b) - j))
    differ = np.flatnonzero(a[i:i + n] != b[j:j + n])
    return int(differ[0]) if len(differ) else n


def _resume(a: bytes, i: int, b: bytes, j: int) -> tuple[int, int] | None:
    """Where `_byte_map` goes on after a[i] != b[j]: the nearest (p, q) whose bytes agree."""
    for skipped in range(1, 2 * REACH + 1):
        for da in range(max(0, skipped - REACH), min(skipped, REACH) + 1):
            p, q = i + da, j + skipped - da
            x, y = a[p:p + ANCHOR], b[q:q + ANCHOR]
            if x and x == y and (len(x) == ANCHOR or (p + len(x) == len(a) and q + len(y) == len(b))):
                return p, q
    return None


# ---------------------------------------------------------------- merged distributions

def merge(logits, ids, first, last, temperature: float = 1.0) -> torch.Tensor:
    """Merged log-distributions of groups of one side, as GOLD merges probabilities: float32
    [G, V], row g = log_softmax(logits[first[g] - 1] / T) + Σ_{t = first[g]+1 .. last[g]}
    log_softmax(logits[t - 1] / T)[ids[t]]: the distribution at the position before the group's
    first token times the probabilities of the group's other tokens that actually follow.

    logits [L, V] (row t predicts ids[t+1]), ids [L], first/last [G] (group g is ids[first..last],
    first >= 1). Rows are not normalized: their mass is the product of the group's following
    tokens' probabilities (1 for a one-token group). Differentiable in `logits`."""
    import torch

    first, last = (torch.as_tensor(_ints(v), device=logits.device) for v in (first, last))
    ids = torch.as_tensor(_ints(ids), device=logits.device)
    if len(first) and int(first.min()) < 1:
        raise ValueError("a group starts at token 0, which no position predicts; groups hold tokens 1 and later")
    base = torch.log_softmax(logits[first - 1].float() / temperature, dim=-1)
    group, token = _following(first, last)
    rows = logits[token - 1].float() / temperature
    follow = rows.gather(-1, ids[token, None])[:, 0] - torch.logsumexp(rows, dim=-1)
    return base + base.new_zeros(len(first)).index_add(0, group, follow)[:, None]


def student_merged(student_logits, student_ids, rows, temperature: float = 1.0) -> torch.Tensor:
    """[G, Vs]: `merge` of the student's side of `rows` (from `groups`: x[a..b] from positions
    a-1..b-1 of `student_logits` [L, Vs]); differentiable in `student_logits`."""
    rows = _rows(rows)
    return merge(student_logits, student_ids, rows[:, 0], rows[:, 1], temperature)


def teacher_merged(teacher_logits, teacher_ids, rows, temperature: float = 1.0) -> torch.Tensor:
    """[G, Vt]: `merge` of the teacher's side of `rows` (y[c..d] from positions c-1..d-1 of
    `teacher_logits` [M, Vt]), outside autograd: no gradient reaches the teacher."""
    import torch

    rows = _rows(rows)
    with torch.no_grad():
        return merge(teacher_logits, teacher_ids, rows[:, 2], rows[:, 3], temperature)


def teacher_cache(teacher_logits, teacher_ids, k: int, temperature: float = 1.0):
    """What a teacher's window needs to be stored as, per position u of y[0..M-1]: (top-k
    log-probabilities [M, k] of log_softmax(logits[u] / T), sorted descending; their teacher ids
    [M, k] (int64); log_softmax(logits[u] / T)[y[u+1]] [M], the log-probability of the token that
    actually follows, 0.0 at the last position, which none follows). The temperature is baked
    in: a cache serves the temperature it was made with. `teacher_merged_topk` merges it."""
    import torch

    ids = torch.as_tensor(_ints(teacher_ids), device=teacher_logits.device)
    values, indices, following = [], [], []
    with torch.no_grad():
        for rows in row_chunks(*teacher_logits.shape):
            logp = torch.log_softmax(teacher_logits[rows].float() / temperature, dim=-1)
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            values.append(top.values)
            indices.append(top.indices)
            # the log-probability of the token after each row; the last row of all has none: 0.0
            after = ids[rows.start + 1:rows.stop + 1]
            following.append(torch.cat([logp[:len(after)].gather(-1, after[:, None])[:, 0],
                                        logp.new_zeros(len(logp) - len(after))]))
        return torch.cat(values), torch.cat(indices), torch.cat(following)


def row_chunks(rows: int, width: int) -> list[slice]:
    """Slices of consecutive rows of a [rows, width] matrix, about ROWS_BUDGET values each."""
    step = max(1, ROWS_BUDGET // max(1, width))
    return [slice(a, min(a + step, rows)) for a in range(0, rows, step)]


def teacher_merged_topk(topk_logprobs, topk_ids, following, rows):
    """The teacher's merged groups from its cache (`teacher_cache`): (log-probs [G, k], sorted
    descending; their teacher ids [G, k]; rest [G], the merged mass outside the top-k).

    Row g is the top-k of position c-1 shifted by e = Σ_{u = c+1..d} following[u-1] (the log-
    probability of the group's other tokens: one number per row, so the order and the ids stay),
    and rest = exp(e) · (1 - Σ exp(top-k log-probs at c-1)): the merged row's mass is exp(e), so
    the top-k and the rest together hold exactly what `teacher_merged` would."""
    import torch

    rows = _rows(rows)
    first, last = (torch.as_tensor(rows[:, i], device=topk_logprobs.device) for i in (2, 3))
    group, token = _following(first, last)
    shift = topk_logprobs.new_zeros(len(first)).index_add(0, group, following[token - 1].float())
    base = topk_logprobs[first - 1].float()
    outside = (1 - base.double().exp().sum(-1)).clamp(min=0).float()
    return base + shift[:, None], topk_ids[first - 1], shift.exp() * outside


def _following(first, last):
    """(group, token) of every token after the first of each group (first[g]+1..last[g])."""
    import torch

    counts = last - first
    group = torch.repeat_interleave(torch.arange(len(first), device=first.device), counts)
    begin = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    token = torch.repeat_interleave(first + 1, counts) + torch.arange(len(group), device=first.device) - begin
    return group, token


def _rows(rows) -> np.ndarray:
    import numpy as np

    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def _ints(values) -> np.ndarray:
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64)


# ---------------------------------------------------------------- ULD: sorted probabilities

def uld_loss(student_merged, teacher_merged) -> torch.Tensor:
    """ULD (Boizard et al. 2024) on merged groups: (1/G) Σ_g Σ_i |s_g(i) - t_g(i)|, where s_g and
    t_g are the probabilities (exp) of row g of `student_merged` [G, Vs] and `teacher_merged`
    [G, Vt], each sorted in descending order, the shorter one zero-padded to max(Vs, Vt): the
    Wasserstein-1 distance between the two distributions when every token is at the same cost
    from every other. Rows are compared as merged, not renormalized (as GOLD does): a group's
    mass, the probability of its later tokens, is part of what the student learns. 0.0 (still
    attached to the graph) when G = 0."""
    import torch.nn.functional as F

    if not len(student_merged):
        return student_merged.sum() * 0.0
    s = student_merged.float().exp().sort(dim=-1, descending=True).values
    t = teacher_merged.float().exp().sort(dim=-1, descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s, t = F.pad(s, (0, width - s.shape[-1])), F.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(-1).mean()


def uld_loss_topk(student_merged, teacher_logprobs, teacher_rest) -> torch.Tensor:
    """`uld_loss` with the teacher given as its k largest merged log-probs [G, k] (sorted
    descending, from `teacher_merged_topk`) and its remaining mass r_g [G]:

        (1/G) Σ_g [ Σ_{i<=k} |s_g(i) - t_g(i)| + |S_g - r_g| ],  S_g = Σ_{i>k} s_g(i),

    s_g sorted descending and zero-padded to k. The rest enters as one more coordinate: the
    student's mass beyond its k largest against the teacher's remaining mass. Since the full
    loss's tail Σ_{i>k} |s_g(i) - t_g(i)| lies between |S_g - r_g| and S_g + r_g (triangle
    inequality), 0 <= uld_loss - uld_loss_topk <= (2/G) Σ_g min(S_g, r_g) <= 2 · mean(r)."""
    import torch.nn.functional as F

    if not len(student_merged):
        return student_merged.sum() * 0.0
    s = student_merged.float().exp()
    k = teacher_logprobs.shape[-1]
    top = s.topk(min(k, s.shape[-1]), dim=-1).values
    tail = (s.sum(-1) - top.sum(-1)).clamp(min=0)
    top = F.pad(top, (0, k - top.shape[-1]))
    return ((top - teacher_logprobs.float().exp()).abs().sum(-1) + (tail - teacher_rest.float()).abs()).mean()


# ---------------------------------------------------------------- map: shared ids

def vocab_map(student_table: list[bytes], teacher_table: list[bytes]) -> tuple[np.ndarray, float]:
    """(teacher_to_student, share): int64 [len(teacher_table)], the student id with the same
    bytes as each teacher id, -1 where no student token has them; and the share of teacher ids
    that map. Where several ids of a side have the same bytes (a SentencePiece vocabulary's
    `<0x20>` and `▁`; the tokens of no text, b""), both sides' ids are paired from the highest
    id down and extra teacher ids go to the highest student id: identical tables map each id to
    itself, and a SentencePiece student receives a byte's mass on its piece (after the
    `<0xNN>` block, which the tokenizer uses only where no piece has the bytes)."""
    import numpy as np

    by_bytes: dict[bytes, list[int]] = {}
    for i in range(len(student_table) - 1, -1, -1):
        by_bytes.setdefault(student_table[i], []).append(i)
    out = np.full(len(teacher_table), -1, dtype=np.int64)
    seen: dict[bytes, int] = {}
    for i in range(len(teacher_table) - 1, -1, -1):
        ids = by_bytes.get(teacher_table[i])
        if ids:
            n = seen[teacher_table[i]] = seen.get(teacher_table[i], -1) + 1
            out[i] = ids[n] if n < len(ids) else ids[0]
    return out, float((out >= 0).mean()) if len(out) else 0.0


def student_ids_of(teacher_ids, teacher_to_student) -> np.ndarray:
    """Teacher ids (any shape; a cache's top-k ids) as student ids, -1 where none maps, ids past
    the teacher's table (embedding padding) included."""
    import numpy as np

    ids = _ints(teacher_ids)
    mapping = np.asarray(teacher_to_student, dtype=np.int64)
    inside = ids < len(mapping)
    return np.where(inside, mapping[np.where(inside, ids, 0)], -1)


def map_loss(student_merged, teacher_merged, teacher_to_student, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) over the student's ids, averaged over groups, times T² (as
    `targets.losses.distill_loss`; T is the temperature the rows were merged at).

    Buckets: each student id some teacher id maps to gets the teacher's mass on those teacher
    ids; one remainder bucket gets the teacher's mass on ids that map nowhere, against the
    student's mass on the ids no teacher id maps to (where every student id is mapped, the
    teacher's unmapped mass is dropped and the rest renormalized: the student cannot hold it).

    Both rows are renormalized first (log_softmax of the merged row). KL needs distributions,
    and a merged row is the distribution at the group's first position plus one number, so
    renormalized it is exactly the distribution of the next token after the group's starting
    byte, the same text prefix on both sides; the two rows' masses are products along different
    first tokens and are not comparable term by term (`uld_loss` keeps them). With identical
    tokenizers every group is one token and this is `distill_loss`'s KD term.

    student_merged [G, Vs], teacher_merged [G, Vt] (merged log-rows), teacher_to_student from
    `vocab_map` (ids past it map nowhere). 0.0 (still attached to the graph) when G = 0."""
    import torch

    if not len(student_merged):
        return student_merged.sum() * 0.0
    logq = torch.log_softmax(student_merged.float(), dim=-1)
    p = torch.softmax(teacher_merged.float(), dim=-1)
    mapping = torch.as_tensor(student_ids_of(range(p.shape[-1]), teacher_to_student), device=p.device)
    mapped = mapping >= 0
    carried = p.new_zeros(logq.shape).index_add(1, mapping[mapped], p[:, mapped])
    targeted = _targeted(teacher_to_student, logq.shape[-1], logq.device)
    rest = _masked_logsumexp(logq, ~targeted.expand_as(logq))
    masses = torch.cat([carried, p[:, ~mapped].sum(-1, keepdim=True)], dim=-1)
    present = torch.cat([targeted, (~targeted).any(0, keepdim=True)]).expand_as(masses)
    return _kl(masses, torch.cat([logq, rest[:, None]], dim=-1), present).mean() * temperature**2


def map_loss_topk(student_merged, teacher_ids, teacher_logprobs, teacher_rest, teacher_to_student,
                  temperature: float = 1.0) -> torch.Tensor:
    """`map_loss` with the teacher given as its top-k: `teacher_ids` [G, k] *student* ids
    (`student_ids_of` the cached teacher ids; -1 where one maps nowhere), `teacher_logprobs`
    [G, k] their merged log-probs and `teacher_rest` [G] the merged mass outside the top-k
    (`teacher_merged_topk`); the teacher's row is normalized by its total, Σ exp + rest.

    Buckets: each student id the top-k maps to; the remainder (the top-k's unmapped mass, against
    the student's mass on ids no teacher id maps to); and one bucket for the teacher's mass
    outside the top-k, whose ids are not known, against the student's mass on the mapped ids the
    top-k does not name (where that mass would land if it mapped). A bucket the student has no
    id in drops its teacher mass (the rest renormalized). The full loss splits the last bucket
    id by id, so the two differ by about the teacher's rest (`tests/test_align.py` measures a
    relative difference of 0.6-0.7 times the mean rest). 0.0 when G = 0."""
    import torch

    if not len(student_merged):
        return student_merged.sum() * 0.0
    logq = torch.log_softmax(student_merged.float(), dim=-1)
    lp = teacher_logprobs.float()
    total = lp.exp().sum(-1) + teacher_rest.float()
    p, outside = lp.exp() / total[:, None], teacher_rest.float() / total
    ids = torch.as_tensor(_ints(teacher_ids), device=logq.device)
    mapped = ids >= 0
    carried = p.new_zeros(logq.shape).scatter_add(1, ids.clamp(min=0), p * mapped)
    named = torch.zeros_like(logq, dtype=torch.long).scatter_add(1, ids.clamp(min=0), mapped.long()) > 0
    targeted = _targeted(teacher_to_student, logq.shape[-1], logq.device).expand_as(logq)
    others = targeted & ~named
    masses = torch.cat([carried, (p * ~mapped).sum(-1, keepdim=True), outside[:, None]], dim=-1)
    log_masses = torch.cat([logq, _masked_logsumexp(logq, ~targeted)[:, None],
                            _masked_logsumexp(logq, others)[:, None]], dim=-1)
    present = torch.cat([named, (~targeted).any(-1, keepdim=True), others.any(-1, keepdim=True)], dim=-1)
    return _kl(masses, log_masses, present).mean() * temperature**2


def _targeted(teacher_to_student, width: int, device):
    """[width] bool: the student ids some teacher id maps to."""
    import numpy as np
    import torch

    mapping = np.asarray(teacher_to_student, dtype=np.int64)
    out = torch.zeros(width, dtype=torch.bool, device=device)
    out[torch.as_tensor(np.unique(mapping[mapping >= 0]), device=device)] = True
    return out


def _masked_logsumexp(logq, mask):
    """Row-wise log of the mass on `mask`; FILL where a row's mask is empty (finite, so that the
    zero teacher mass there gives a zero term and no NaN gradient)."""
    import torch

    return torch.logsumexp(logq.masked_fill(~mask, FILL), dim=-1)


def _kl(masses, log_masses, present):
    """Σ_j P_j (log P_j - log Q_j) per row over buckets the student has (`present`), the
    teacher's masses P renormalized over those; 0 log 0 = 0."""
    import torch

    kept = masses * present
    kept = kept / kept.sum(-1, keepdim=True).clamp(min=torch.finfo(kept.dtype).tiny)
    return (torch.xlogy(kept, kept) - kept * log_masses.masked_fill(~present, 0.0)).sum(-1)
