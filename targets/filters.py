"""Document filters of a dataset (`filters:`): which documents to drop, and why.

Reads: the tokenizer entry's `tokenizer.json` when `min_tokens` / `max_tokens` are set, and
py3langid's model (inside the package, offline) when `languages` is set, each loaded once.
Writes nothing: `DocumentFilter.reasons` names, per document, the first filter that drops it.

Filters run in REASONS order, each over the documents every earlier one kept, and only the
filters the spec turns on run: a default `Filters()` costs one `len` per document.

- min_chars / max_chars: `len(text)` below min_chars / above max_chars.
- min_tokens / max_tokens: the number of token ids `tokenizers` gives for the text without
  special tokens, below min_tokens / above max_tokens.
- language: py3langid's most probable language (probabilities normalized over its languages)
  is not in `languages`, or its probability is below min_language_score.
- include: no pattern of `include` is found (`re.search`) in the text; exclude: one of
  `exclude` is.
- symbol_ratio: the fraction of characters that are neither alphanumeric (`str.isalnum`) nor
  whitespace (`str.isspace`) is above max_symbol_ratio (0 for an empty text).
- mean_word_length: the mean length of the whitespace-separated words (`str.split()`) is below
  min_mean_word_length or above max_mean_word_length; a text without words fails a minimum and
  passes a maximum.
- repeated_lines: among the lines (`str.splitlines`) that are not empty once stripped, the
  fraction equal (stripped) to an earlier one is above max_repeated_lines (0 without lines).
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from targets import load_tokenizer

if TYPE_CHECKING:  # for the type hint only: the builder does not run the specs module
    from compiler.specs import Filters

REASONS = ("min_chars", "max_chars", "min_tokens", "max_tokens", "language", "include", "exclude",
           "symbol_ratio", "mean_word_length", "repeated_lines")

CHUNK = 1 << 20  # bytes of text a vectorized filter takes at once

Stage = Callable[[list[str]], list[str | None]]


class DocumentFilter:
    """The filters of one dataset spec, ready to run over batches of documents."""

    def __init__(self, filters: Filters, tokenizer_entry: Path | None):
        self.filters = filters
        self.languages: Counter = Counter()  # identified language of every document the language filter saw
        self._identifier = None
        self._tokenizer = None
        if filters.min_tokens is not None or filters.max_tokens is not None:
            if tokenizer_entry is None:
                raise ValueError("min_tokens/max_tokens need the entry of the tokenizer step `filters.tokenizer` names")
            self._tokenizer = load_tokenizer(Path(tokenizer_entry))
        self._include = [re.compile(p) for p in filters.include]
        self._exclude = [re.compile(p) for p in filters.exclude]
        self._stages = self._enabled()

    def _enabled(self) -> list[Stage]:
        f = self.filters
        wanted = [(True, self._chars), (self._tokenizer is not None, self._tokens), (bool(f.languages), self._language),
                  (bool(self._include), self._included), (bool(self._exclude), self._excluded),
                  (f.max_symbol_ratio is not None, self._symbols),
                  (f.min_mean_word_length is not None or f.max_mean_word_length is not None, self._word_length),
                  (f.max_repeated_lines is not None, self._repeated)]
        return [stage for on, stage in wanted if on]

    def reasons(self, texts: list[str]) -> list[str | None]:
        """Per text, the first filter in REASONS order that drops it, or None to keep it."""
        out: list[str | None] = [None] * len(texts)
        alive = range(len(texts))
        for stage in self._stages:
            batch = texts if len(alive) == len(texts) else [texts[i] for i in alive]
            kept = []
            for i, reason in zip(alive, stage(batch)):
                if reason is None:
                    kept.append(i)
                else:
                    out[i] = reason
            alive = kept
            if not alive:
                break
        return out

    # ---------------------------------------------------------------- stages: a reason per text

    def _chars(self, texts: list[str]) -> list[str | None]:
        lo, hi = self.filters.min_chars, self.filters.max_chars
        if hi is None:
            return ["min_chars" if len(t) < lo else None for t in texts]
        return ["min_chars" if n < lo else "max_chars" if n > hi else None for n in map(len, texts)]

    def _tokens(self, texts: list[str]) -> list[str | None]:
        lo, hi = self.filters.min_tokens or 0, self.filters.max_tokens
        counts = token_counts(self._tokenizer, texts)
        if hi is None:
            return ["min_tokens" if n < lo else None for n in counts]
        return ["min_tokens" if n < lo else "max_tokens" if n > hi else None for n in counts]

    def _language(self, texts: list[str]) -> list[str | None]:
        if self._identifier is None:
            self._identifier = Langid()
        keep, score = set(self.filters.languages), self.filters.min_language_score
        found = self._identifier.classify(texts)
        self.languages.update(lang for lang, _ in found)
        return [None if lang in keep and p >= score else "language" for lang, p in found]

    def _included(self, texts: list[str]) -> list[str | None]:
        searches = [p.search for p in self._include]
        return [None if any(s(t) for s in searches) else "include" for t in texts]

    def _excluded(self, texts: list[str]) -> list[str | None]:
        searches = [p.search for p in self._exclude]
        return ["exclude" if any(s(t) for s in searches) else None for t in texts]

    def _symbols(self, texts: list[str]) -> list[str | None]:
        hi = self.filters.max_symbol_ratio
        return ["symbol_ratio" if r > hi else None for r in symbol_ratios(texts)]

    def _word_length(self, texts: list[str]) -> list[str | None]:
        lo, hi = self.filters.min_mean_word_length, self.filters.max_mean_word_length
        out: list[str | None] = []
        for t in texts:
            mean = mean_word_length(t)
            fails = (mean is None and lo is not None) or (
                mean is not None and ((lo is not None and mean < lo) or (hi is not None and mean > hi)))
            out.append("mean_word_length" if fails else None)
        return out

    def _repeated(self, texts: list[str]) -> list[str | None]:
        hi = self.filters.max_repeated_lines
        return ["repeated_lines" if repeated_lines(t) > hi else None for t in texts]


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Token ids per text, special tokens left out; `tokenizers` encodes the batch in parallel."""
    return [len(e) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def symbol_ratios(texts: list[str]) -> list[float]:
    """Per text, its characters that are neither alphanumeric nor whitespace over all its
    characters (0 for ''): looked up by code point, a chunk of the batch at once."""
    plain = _plain_characters()
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    out: list[float] = []
    for a, b in chunks(lengths, CHUNK // 4):
        codes = np.frombuffer("".join(texts[a:b]).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        symbols = np.concatenate(([0], np.cumsum(~plain[codes])))  # symbols before each position
        ends = np.cumsum(lengths[a:b])
        out += ((symbols[ends] - symbols[ends - lengths[a:b]]) / np.maximum(lengths[a:b], 1)).tolist()
    return out


@functools.cache
def _plain_characters() -> np.ndarray:
    """Per code point: alphanumeric (str.isalnum) or whitespace (str.isspace)."""
    n = sys.maxunicode + 1
    return np.fromiter((chr(c).isalnum() or chr(c).isspace() for c in range(n)), dtype=bool, count=n)


def chunks(sizes: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive runs of items whose sizes add up to at most `budget`, each
    run one item at least: bounds the memory of the vectorized filters on a batch of long texts."""
    ends = np.cumsum(sizes).tolist()
    start, before = 0, 0
    while start < len(ends):
        end = max(bisect.bisect_right(ends, before + budget, lo=start), start + 1)
        yield start, end
        start, before = end, ends[end - 1]


def mean_word_length(text: str) -> float | None:
    """Mean length of the whitespace-separated words; None without words."""
    words = text.split()
    return sum(map(len, words)) / len(words) if words else None


def repeated_lines(text: str) -> float:
    """Among the non-empty stripped lines, the fraction equal to an earlier one (0 without lines)."""
    lines = [s for s in map(str.strip, text.splitlines()) if s]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


class Langid:
    """py3langid's identifier (its model ships in the package; offline) with normalized
    probabilities, loaded once: `classify(texts)` gives (language, probability) per text."""

    def __init__(self):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        return [(lang, float(p)) for lang, p in map(self.model.classify, texts)]
