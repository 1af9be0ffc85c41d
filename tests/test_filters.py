"""Document filters (targets/filters.py): each filter at its boundary, the order of the reasons,
token counts against `tokenizers`, and language identification against py3langid itself."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

import pytest

from compiler.specs import Filters, TokenizerStep
from compiler.inputs import DATASET
from conftest import tiny_corpus
from targets import Job, filters
from targets import tokenizer as tokenizer_builder
from targets.filters import REASONS, DocumentFilter, Langid

SENTENCES = {  # one sentence, in each language, and what py3langid makes of it
    "en": "The committee will publish its final report on the new railway line next spring.",
    "fr": "Le comité publiera son rapport final sur la nouvelle ligne de chemin de fer au printemps prochain.",
    "de": "Der Ausschuss wird seinen Abschlussbericht über die neue Bahnstrecke im nächsten Frühjahr veröffentlichen.",
    "es": "El comité publicará su informe final sobre la nueva línea de ferrocarril la próxima primavera.",
    "it": "Il comitato pubblicherà la sua relazione finale sulla nuova linea ferroviaria la prossima primavera.",
    "ru": "Комитет опубликует свой окончательный доклад о новой железнодорожной линии следующей весной.",
    "zh": "委员会将于明年春天发布关于新铁路线的最终报告。",
    "ja": "委員会は来年の春に新しい鉄道路線に関する最終報告書を発表する予定です。",
    "ar": "ستنشر اللجنة تقريرها النهائي عن خط السكك الحديدية الجديد في الربيع المقبل.",
}
ODD = ["", "OK", "12345 67890", "HELLO WORLD, THIS IS SHOUTED ENGLISH TEXT", "x = [i**2 for i in range(10)]",
       "\U0001f916\U0001f44d \u2764\ufe0f", "lone \ud800 surrogate", "a" * 5000]


def reasons(texts: list[str], entry=None, **fields) -> list[str | None]:
    return DocumentFilter(Filters(**fields), entry).reasons(texts)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The entry targets/tokenizer.py writes: a 400-token BPE of the Python docs that adds a bos token."""
    root = tmp_path_factory.mktemp("filters")
    data, out = root / "dataset", root / "tok"
    data.mkdir()
    out.mkdir()
    (data / "train-00000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    spec = TokenizerStep.model_validate({"kind": "tokenizer", "dataset": "docs", "vocab_size": 400,
                                         "add_bos_token": True})
    tokenizer_builder.build(Job("main.tok", spec, out, inputs={DATASET: data}))
    return out


def test_reasons_are_in_this_order():
    assert REASONS == ("min_chars", "max_chars", "min_tokens", "max_tokens", "language", "include", "exclude",
                       "symbol_ratio", "mean_word_length", "repeated_lines")


def test_the_default_filters_drop_only_empty_documents():
    f = DocumentFilter(Filters(), None)
    assert f.reasons(["", " ", "a", "#" * 100_000]) == ["min_chars", None, None, None]
    assert f.reasons([]) == []
    assert f.languages == Counter()


def test_character_bounds_are_inclusive():
    texts = ["ab", "abc", "abcde", "abcdef", "\u00e9t\u00e9"]
    assert reasons(texts, min_chars=3, max_chars=5) == ["min_chars", None, None, "max_chars", None]
    assert reasons(texts, min_chars=0) == [None] * 5


def test_token_counts_are_the_tokenizers_own(tokenizer):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    texts = tiny_corpus()[:50] + ["", "def f(x):\n    return x", "\u65e5\u672c\u8a9e \U0001f916"]
    counts = filters.token_counts(tok, texts)
    assert counts == [len(tok.encode(t, add_special_tokens=False).ids) for t in texts]
    # the bos token the tokenizer adds is not part of the document
    assert [len(tok.encode(t).ids) for t in texts] == [n + 1 for n in counts]


def test_token_bounds_are_inclusive(tokenizer):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    words = tiny_corpus()[0].split()
    texts = [" ".join(words[:k]) for k in (2, 4, 6, 8, 10)]
    n = [len(tok.encode(t, add_special_tokens=False).ids) for t in texts]
    assert n == sorted(set(n))  # five distinct lengths
    assert reasons(texts, tokenizer, tokenizer="main.tok", min_tokens=n[1], max_tokens=n[3]) == [
        "min_tokens", None, None, None, "max_tokens"]
    assert reasons(texts, tokenizer, tokenizer="main.tok", max_tokens=n[0]) == [None] + ["max_tokens"] * 4


def test_counting_tokens_needs_the_tokenizer_entry():
    with pytest.raises(ValueError) as info:
        DocumentFilter(Filters(tokenizer="main.tok", min_tokens=5), None)
    assert str(info.value) == "min_tokens/max_tokens need the entry of the tokenizer step `filters.tokenizer` names"


def test_short_sentences_are_identified():
    assert [lang for lang, _ in Langid().classify(list(SENTENCES.values()))] == list(SENTENCES)


def test_a_multilingual_batch_keeps_the_languages_asked_for():
    texts = list(SENTENCES.values()) + ["OK"]
    f = DocumentFilter(Filters(languages=("en", "fr", "de", "zh")), None)
    assert f.reasons(texts) == [None, None, None, "language", "language", "language", None, "language", "language",
                                "language"]
    # every document the filter looked at is counted, kept or not, and the counts add up over batches
    assert f.languages == Counter({lang: 1 for lang in SENTENCES} | {"sr": 1})  # featureless 'OK': a uniform guess
    f.reasons([SENTENCES["fr"], SENTENCES["ja"]])
    assert f.languages == Counter({lang: 1 for lang in SENTENCES} | {"sr": 1, "fr": 2, "ja": 2})


def test_the_language_score_is_a_lower_bound():
    """Spanish comes out at about 0.74: the score itself passes, the next float above it fails."""
    text = SENTENCES["es"]
    [(lang, p)] = Langid().classify([text])
    assert lang == "es" and 0.7 < p < 0.8
    assert reasons([text], languages=("es",), min_language_score=p) == [None]
    assert reasons([text], languages=("es",), min_language_score=math.nextafter(p, 1)) == ["language"]
    assert reasons([text], languages=("es",), min_language_score=0) == [None]
    assert reasons([text], languages=("pt",), min_language_score=0) == ["language"]


def test_documents_dropped_earlier_are_not_identified():
    f = DocumentFilter(Filters(min_chars=10, languages=("en",)), None)
    assert f.reasons(["Bonjour", SENTENCES["en"], SENTENCES["de"]]) == ["min_chars", None, "language"]
    assert f.languages == Counter({"en": 1, "de": 1})


def test_include_keeps_matches_and_exclude_drops_them():
    texts = ["import os  # Python", "see https://example.com", "# A heading", "plain text", "Python on http://x.org"]
    assert reasons(texts, include=(r"\bPython\b", r"^#")) == [None, "include", None, "include", None]
    assert reasons(texts, exclude=(r"https?://", "(?i)plain")) == [None, "exclude", None, "exclude", "exclude"]
    # `search`, not `match`: a pattern counts anywhere in the text
    assert reasons(texts, include=("Python",), exclude=("http",)) == [None, "include", "include", "include",
                                                                      "exclude"]


def test_symbol_ratio_bound_is_inclusive():
    texts = ["ab!c", "a!!b", "ab!cd", "a!b", "a ! b", "a_b", "\u00e9\u00bd\u0663 \u00b2", "\U0001f916abc"]
    assert filters.symbol_ratios(texts) == [0.25, 0.5, 0.2, 1 / 3, 0.2, 1 / 3, 0.0, 0.25]
    assert reasons(texts, max_symbol_ratio=0.25) == [None, "symbol_ratio", None, "symbol_ratio", None,
                                                     "symbol_ratio", None, None]
    assert filters.symbol_ratios(["", "!"]) == [0.0, 1.0]


def test_symbols_are_what_str_says_for_every_code_point(monkeypatch):
    """The code-point table against str.isalnum and str.isspace over all of Unicode, in 1,000-character
    texts and in chunks small enough that a batch takes many."""
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    texts = [everything[i:i + 1000] for i in range(0, len(everything), 1000)]
    expected = [sum(not (c.isalnum() or c.isspace()) for c in t) / len(t) for t in texts]
    monkeypatch.setattr(filters, "CHUNK", 1 << 16)
    assert filters.symbol_ratios(texts) == expected


def test_mean_word_length_bounds_are_inclusive():
    texts = ["ab cd", "abc de", "abc", "abcde", "abcdef", "ab\tcd\nefgh\u00a0ijkl", "   "]
    assert [filters.mean_word_length(t) for t in texts] == [2, 2.5, 3, 5, 6, 3, None]
    assert reasons(texts, min_mean_word_length=3, max_mean_word_length=5) == [
        "mean_word_length", "mean_word_length", None, None, "mean_word_length", None, "mean_word_length"]
    # a document without words is not too long
    assert reasons(texts, max_mean_word_length=5) == [None, None, None, None, "mean_word_length", None, None]


def test_repeated_lines_bound_is_inclusive():
    texts = ["a\nb\nc\na", "a\na\nb", " a\n\n  \na \n", "x\ny", "\n\n", "a\nb\na\nb\na"]
    assert [filters.repeated_lines(t) for t in texts] == [0.25, 1 / 3, 0.5, 0.0, 0.0, 0.6]
    assert reasons(texts, max_repeated_lines=0.25) == [None, "repeated_lines", "repeated_lines", None, None,
                                                       "repeated_lines"]
    assert reasons(texts, max_repeated_lines=0) == ["repeated_lines"] * 3 + [None, None, "repeated_lines"]


def test_the_first_failing_filter_names_the_reason(tokenizer):
    """Each text fails the filter of its reason and most fail later ones too: the first in REASONS order wins."""
    f = DocumentFilter(Filters(min_chars=10, max_chars=300, tokenizer="main.tok", min_tokens=12, max_tokens=100,
                               languages=("en",), include=(r"\bthe\b",), exclude=("spam",), max_symbol_ratio=0.1,
                               min_mean_word_length=3, max_mean_word_length=8, max_repeated_lines=0.3), tokenizer)
    spam = "spam\n" * 3 + "!!!!!!!!"
    texts = [
        "spam!!!",                                                    # short: every filter after fails too
        "Le rapport " * 40,                                           # long, many tokens, French, no 'the'
        "spam !!! ok",                                                # 10 tokens
        "The committee published the report on the railway. " * 5,   # 255 characters, 145 tokens
        "Le comité publiera son rapport final au printemps. " + spam,  # French
        "A report on railways, published next spring. " + spam,      # no 'the', spam, symbols, repeats
        "Read the report on the railway, spam and all. " + spam,      # spam, symbols, repeats
        "Read the report on the railway!!! Now!!! " + "\ndone\ndone",  # symbols, repeats
        "Read the report on the rail way at a new gate by me\nok\nok",  # short words, repeats
        "Read the report on the railway\nsoon\nsoon\nsoon",           # repeats
        SENTENCES["en"].replace("its", "the"),                         # kept
    ]
    assert f.reasons(texts) == list(REASONS) + [None]
    # only what reached the language filter was identified
    assert sum(f.languages.values()) == len(texts) - 4


def test_chunks_bound_the_text_of_each_run():
    import numpy as np

    assert list(filters.chunks(np.array([3, 3, 3, 10, 1, 0, 2]), 6)) == [(0, 2), (2, 3), (3, 4), (4, 7)]
    assert list(filters.chunks(np.array([], dtype=np.int64), 6)) == []
