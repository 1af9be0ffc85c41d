"""Curation settings at compile time (compiler/curation.py): the tokenizer step `filters.tokenizer`
names becomes an input of the dataset, and each mistake in `filters:` gets its whole message.
Loaded in-process: a case costs milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import curation, graph, project
from compiler.errors import SpecError
from compiler.inputs import TOKENIZER
from conftest import TINY_SPECS, write_files

WEB = "specs/datasets/web.yaml"
PIPELINE = "specs/pipelines/main.yaml"
FILES = {
    "specs/datasets/docs.yaml": "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n",
    "specs/models/tiny.yaml": TINY_SPECS["specs/models/tiny.yaml"],
    PIPELINE: TINY_SPECS[PIPELINE],  # tok (on docs) and init
    WEB: r"""
        kind: dataset
        name: web
        sources:
          - type: files
            glob: web/*.jsonl
        filters:
          min_chars: 20
          max_chars: 100000
          tokenizer: main.tok
          min_tokens: 8
          languages: [en, fr]
          include: ['\w']
          exclude: ['lorem ipsum', 'https?://']
          max_symbol_ratio: 0.3
          min_mean_word_length: 2
          max_mean_word_length: 12
    """,
}


def write(p, **replace: tuple[str, str]) -> None:
    """FILES with (old, new) replaced once in the file named by each keyword (web, pipeline)."""
    p.write("data/docs.jsonl", "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    p.write("web/web.jsonl", json.dumps({"text": "a page of the web, in English"}) + "\n")
    write_files(p, FILES, {"web": WEB, "pipeline": PIPELINE}, **replace)


def load_error(p, **replace) -> str:
    write(p, **replace)
    with pytest.raises(SpecError) as info:
        project.load(p.root)
    return str(info.value)


def test_the_filters_tokenizer_is_an_input_of_the_dataset(make_project):
    p = make_project()
    write(p)
    loaded = project.load(p.root)
    assert loaded.nodes["dataset.web"].deps == {TOKENIZER: "main.tok"}
    assert loaded.nodes["dataset.docs"].deps == {}
    plans = graph.plans(loaded)
    assert plans["dataset.web"].inputs == {"tokenizer": "main.tok"}
    assert plans["dataset.docs"].inputs == {}
    # the tokenizer is an input: the dataset's key follows what it writes (compiler/plan.py), so
    # retraining it re-filters the dataset; the dataset's own spec and sources are unchanged
    before = {t: plan.base for t, plan in plans.items()}
    p.edit(PIPELINE, "vocab_size: 400", "vocab_size: 300")
    after = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    assert sorted(t for t in before if before[t] != after[t]) == ["main.tok"]


def test_filters_without_a_tokenizer_add_no_input(make_project):
    p = make_project()
    write(p, web=("  tokenizer: main.tok\n  min_tokens: 8\n", ""))
    assert project.load(p.root).nodes["dataset.web"].deps == {}


def test_equal_bounds_are_allowed(make_project):
    """min == max keeps the documents of exactly that length: every bound is inclusive."""
    p = make_project()
    write(p, web=("min_tokens: 8\n", "min_tokens: 8\n  max_tokens: 8\n"))
    assert project.load(p.root).nodes["dataset.web"].spec.filters.max_tokens == 8


CASES = {
    "tokenizer-of-an-unknown-pipeline": (
        dict(web=("tokenizer: main.tok", "tokenizer: mian.tok")),
        "specs/datasets/web.yaml:9: filters.tokenizer: expected `pipeline.step` naming a declared pipeline "
        "(one of 'main'); found 'mian.tok', but no pipeline is named 'mian'\n"
        "  fix: did you mean 'main'?"),
    "tokenizer-unknown-step": (
        dict(web=("tokenizer: main.tok", "tokenizer: main.tk")),
        "specs/datasets/web.yaml:9: filters.tokenizer: expected a step of pipeline 'main' (one of 'main.init', "
        "'main.tok'); found 'main.tk'\n"
        "  fix: did you mean 'main.tok'?"),
    "tokenizer-is-an-init-step": (
        dict(web=("tokenizer: main.tok", "tokenizer: main.init")),
        "specs/datasets/web.yaml:9: filters.tokenizer: expected a tokenizer step; found 'main.init', an init step\n"
        "  fix: name a step of kind `tokenizer` as `pipeline.step`"),
    "tokenizer-is-a-dataset": (
        dict(web=("tokenizer: main.tok", "tokenizer: dataset.docs")),
        "specs/datasets/web.yaml:9: filters.tokenizer: expected a tokenizer step; found 'dataset.docs', a dataset\n"
        "  fix: name a step of kind `tokenizer` as `pipeline.step`"),
    "tokenizer-without-a-pipeline": (
        dict(web=("tokenizer: main.tok", "tokenizer: tok")),
        "specs/datasets/web.yaml:9: filters.tokenizer: expected `pipeline.step`: names of lowercase letters, digits, "
        "'-' and '_'; found 'tok'"),
    "min-tokens-without-tokenizer": (
        dict(web=("  tokenizer: main.tok\n", "")),
        "specs/datasets/web.yaml:9: filters.min_tokens: expected `tokenizer` beside it: the tokenizer step whose "
        "tokens it counts; found no tokenizer\n"
        "  fix: add `tokenizer: PIPELINE.STEP` under filters, or remove min_tokens"),
    "max-tokens-without-tokenizer": (
        dict(web=("  tokenizer: main.tok\n  min_tokens: 8\n", "  max_tokens: 2000\n")),
        "specs/datasets/web.yaml:9: filters.max_tokens: expected `tokenizer` beside it: the tokenizer step whose "
        "tokens it counts; found no tokenizer\n"
        "  fix: add `tokenizer: PIPELINE.STEP` under filters, or remove max_tokens"),
    "tokenizer-without-token-bounds": (
        dict(web=("  min_tokens: 8\n", "")),
        "specs/datasets/web.yaml:9: filters.tokenizer: expected min_tokens or max_tokens beside it (the tokenizer "
        "only counts tokens for them); found 'main.tok' and neither\n"
        "  fix: add `min_tokens: N` or `max_tokens: N` under filters, or remove tokenizer"),
    "max-chars-below-min-chars": (
        dict(web=("max_chars: 100000", "max_chars: 19")),
        "specs/datasets/web.yaml:8: filters.max_chars: expected at least min_chars (20); found 19\n"
        "  fix: raise max_chars to 20 or more, or lower min_chars; as written, every document is dropped"),
    "max-tokens-below-min-tokens": (
        dict(web=("min_tokens: 8\n", "min_tokens: 1200\n  max_tokens: 1024\n")),
        "specs/datasets/web.yaml:11: filters.max_tokens: expected at least min_tokens (1,200); found 1,024\n"
        "  fix: raise max_tokens to 1,200 or more, or lower min_tokens; as written, every document is dropped"),
    "max-mean-word-length-below-min": (
        dict(web=("max_mean_word_length: 12", "max_mean_word_length: 1.5")),
        "specs/datasets/web.yaml:16: filters.max_mean_word_length: expected at least min_mean_word_length (2); "
        "found 1.5\n"
        "  fix: raise max_mean_word_length to 2 or more, or lower min_mean_word_length; as written, every document "
        "is dropped"),
    "exclude-pattern-does-not-compile": (
        dict(web=("'https?://'", "'(https?://'")),
        "specs/datasets/web.yaml:13: filters.exclude[1]: expected a regular expression (Python `re`); found "
        "'(https?://', which does not compile: missing ), unterminated subpattern at position 0\n"
        "  fix: fix the pattern; in YAML, single quotes keep backslashes as written: '\\d+'"),
    "include-pattern-does-not-compile": (
        dict(web=(r"include: ['\w']", r"include: ['\w', '[a-z', '\w']")),
        "specs/datasets/web.yaml:12: filters.include[1]: expected a regular expression (Python `re`); found "
        "'[a-z', which does not compile: unterminated character set at position 0\n"
        "  fix: fix the pattern; in YAML, single quotes keep backslashes as written: '\\d+'"),
    # `re` raised RecursionError and OverflowError for these, not re.error
    "pattern-nested-past-the-parser": (
        dict(web=("'https?://'", "'" + "(" * 3000 + ")" * 3000 + "'")),
        "specs/datasets/web.yaml:13: filters.exclude[1]: expected a regular expression (Python `re`); found "
        f"'{'(' * 60}...', which does not compile: groups nested too deep for Python's `re` to parse\n"
        "  fix: fix the pattern; in YAML, single quotes keep backslashes as written: '\\d+'"),
    "pattern-repeat-count-past-its-range": (
        dict(web=("'https?://'", "'a{99999999999999999999}'")),
        "specs/datasets/web.yaml:13: filters.exclude[1]: expected a regular expression (Python `re`); found "
        "'a{99999999999999999999}', which does not compile: the repetition number is too large\n"
        "  fix: fix the pattern; in YAML, single quotes keep backslashes as written: '\\d+'"),
    "language-three-letter-code": (
        dict(web=("[en, fr]", "[en, fra]")),
        "specs/datasets/web.yaml:11: filters.languages[1]: expected a language code py3langid identifies (ISO 639-1 "
        "where the language has one; 140 in all, LANGUAGES in compiler/curation.py); found 'fra'\n"
        "  fix: did you mean 'fr'? (the two-letter code of 'fra')"),
    "language-bibliographic-code": (
        dict(web=("[en, fr]", "[ger]")),
        "specs/datasets/web.yaml:11: filters.languages[0]: expected a language code py3langid identifies (ISO 639-1 "
        "where the language has one; 140 in all, LANGUAGES in compiler/curation.py); found 'ger'\n"
        "  fix: did you mean 'de'? (the two-letter code of 'ger')"),
    "language-country-code": (
        dict(web=("[en, fr]", "[en, jp]")),
        "specs/datasets/web.yaml:11: filters.languages[1]: expected a language code py3langid identifies (ISO 639-1 "
        "where the language has one; 140 in all, LANGUAGES in compiler/curation.py); found 'jp'\n"
        "  fix: did you mean 'ja'? ('jp' is a country code)"),
    "language-typo-of-a-three-letter-code": (
        dict(web=("[en, fr]", "[yeu]")),
        "specs/datasets/web.yaml:11: filters.languages[0]: expected a language code py3langid identifies (ISO 639-1 "
        "where the language has one; 140 in all, LANGUAGES in compiler/curation.py); found 'yeu'\n"
        "  fix: did you mean 'yue'?"),
    "language-unknown": (
        dict(web=("[en, fr]", "[en, qq]")),
        "specs/datasets/web.yaml:11: filters.languages[1]: expected a language code py3langid identifies (ISO 639-1 "
        "where the language has one; 140 in all, LANGUAGES in compiler/curation.py); found 'qq'\n"
        "  fix: use a code such as 'en', 'fr', 'de', 'es' or 'zh'"),
    "language-score-without-languages": (
        dict(web=("languages: [en, fr]", "min_language_score: 0.8")),
        "specs/datasets/web.yaml:11: filters.min_language_score: expected `languages` beside it: the languages whose "
        "probability it bounds; found no languages\n"
        "  fix: add `languages: [CODE, ...]`, or remove min_language_score"),
    "tokenizer-trained-on-the-dataset-it-filters": (
        dict(pipeline=("dataset: docs", "dataset: web")),
        "specs/pipelines/main.yaml:6: steps.tok.dataset: expected a step that does not depend on itself; found the "
        "cycle dataset.web -> main.tok -> dataset.web\n"
        "  fix: one of these steps must take its input from elsewhere"),
}


@pytest.mark.parametrize("case", CASES)
def test_curation_errors(make_project, case):
    replace, message = CASES[case]
    assert load_error(make_project(), **replace) == message


def test_a_cycle_that_closes_on_a_datasets_tokenizer_names_filters_tokenizer(make_project):
    """Dataset `aa` (visited first) counts tokens of main.tok, which trains on `web`, which counts
    tokens of main.tok: the loop is found on web's `filters.tokenizer`, and named there."""
    p = make_project()
    write(p, pipeline=("dataset: docs", "dataset: web"))
    p.write("specs/datasets/aa.yaml", "kind: dataset\nname: aa\nsources:\n  - type: files\n    glob: data/*.jsonl\n"
                                      "filters:\n  tokenizer: main.tok\n  max_tokens: 100\n")
    with pytest.raises(SpecError) as info:
        project.load(p.root)
    assert str(info.value) == (
        "specs/datasets/web.yaml:9: filters.tokenizer: expected a step that does not depend on itself; found the "
        "cycle main.tok -> dataset.web -> main.tok\n"
        "  fix: one of these steps must take its input from elsewhere")


def test_an_error_in_a_profile_is_named_by_the_profile(make_project):
    p = make_project()
    write(p, web=("max_mean_word_length: 12\n", "max_mean_word_length: 12\nprofiles:\n  ci:\n    filters:\n"
                                                "      languages: [en, eng]\n"))
    with pytest.raises(SpecError) as info:
        project.load(p.root, profile="ci")
    assert str(info.value) == (
        "specs/datasets/web.yaml:20: profiles.ci.filters.languages[1]: expected a language code py3langid "
        "identifies (ISO 639-1 where the language has one; 140 in all, LANGUAGES in compiler/curation.py); found "
        "'eng'\n"
        "  fix: did you mean 'en'? (the two-letter code of 'eng')")


def test_languages_are_the_ones_py3langid_identifies():
    """The compiler keeps py3langid's labels as data (importing it loads a model)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    labels = LanguageIdentifier.from_model_file(MODEL_FILE).labels
    assert sorted(curation.LANGUAGES) == sorted(labels)
    assert len(set(curation.LANGUAGES)) == len(curation.LANGUAGES) == 140


ISO_CODES = Path("/usr/share/iso-codes/json")


def test_three_letter_codes_are_iso_639():
    """THREE_LETTER against Debian's iso-codes, which it was made from: every ISO 639-3 and 639-2
    (terminology and bibliographic) code of a two-letter language py3langid identifies."""
    if not (ISO_CODES / "iso_639-3.json").is_file():
        pytest.skip(f"Debian's iso-codes is not installed (no {ISO_CODES}): apt-get install iso-codes")
    known = set(curation.LANGUAGES)
    expected = {e["alpha_3"]: e["alpha_2"] for e in json.loads((ISO_CODES / "iso_639-3.json").read_text())["639-3"]
                if e.get("alpha_2") in known}
    for e in json.loads((ISO_CODES / "iso_639-2.json").read_text())["639-2"]:
        if e.get("alpha_2") in known:
            for code in (e["alpha_3"], e.get("bibliographic")):
                if code:
                    expected.setdefault(code, e["alpha_2"])
    assert curation.THREE_LETTER == expected
    assert set(curation.THREE_LETTER.values()) == {c for c in known if len(c) == 2}
    assert not set(curation.THREE_LETTER) & known
