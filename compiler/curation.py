"""Compile-time checks of a dataset's curation settings (`filters:`): see check().

Reads: a dataset node's `Filters` and the steps of the project. Writes nothing but
`node.deps[TOKENIZER]`: the tokenizer step `filters.tokenizer` names becomes an input of
the dataset (its entry reaches the builder as `job.inputs[TOKENIZER]`, and the cycle
check sees the edge). Every mistake raises `SpecError`. py3langid is never imported here
(it loads a model); LANGUAGES is its list of languages, which a test keeps equal.
"""

from __future__ import annotations

import re

from .errors import a_step, did_you_mean
from .inputs import TOKENIZER
from .nodes import Node, Project, need_step
from .specs import Filters

# Every label py3langid 0.4.0 identifies: ISO 639-1 where the language has one, else ISO 639-3
# (`zxx`: no linguistic content).
LANGUAGES = tuple("""
ace af am an ar ary arz as az ba bcl be bg bn br bs ca crh cs cy da de dz el en eo es et eu ext fa
fi fo fr fuv fy ga gcf gcr gd gl gom grc gu gug guw ha hbo he hi hr ht hu hy id ig is it ja jv ka
kab kik kk km kn ko ku ky la lb lg lij ln lo lt ltg lv mg mk ml mn mr ms mt my ne nl nn no nso oc om
or pa pcm pl ps pt qu ro ru rw sa sdh se si sk sl sn so sq sr st sv sw ta te tg th tk tl tr tt ug uk
ur uz uzs vec vi vo wa wuu xh yo yue zh zu zxx
""".split())

# The ISO 639-3 and 639-2/B codes of the two-letter languages above (from Debian's iso-codes):
# what someone writing `eng`, `deu` or `ger` means.
THREE_LETTER = dict(pair.split(":") for pair in """
afr:af alb:sq amh:am ara:ar arg:an arm:hy asm:as aze:az bak:ba baq:eu bel:be ben:bn bos:bs bre:br
bul:bg bur:my cat:ca ces:cs chi:zh cym:cy cze:cs dan:da deu:de dut:nl dzo:dz ell:el eng:en epo:eo
est:et eus:eu fao:fo fas:fa fin:fi fra:fr fre:fr fry:fy geo:ka ger:de gla:gd gle:ga glg:gl gre:el
guj:gu hat:ht hau:ha heb:he hin:hi hrv:hr hun:hu hye:hy ibo:ig ice:is ind:id isl:is ita:it jav:jv
jpn:ja kan:kn kat:ka kaz:kk khm:km kin:rw kir:ky kor:ko kur:ku lao:lo lat:la lav:lv lin:ln lit:lt
ltz:lb lug:lg mac:mk mal:ml mar:mr may:ms mkd:mk mlg:mg mlt:mt mon:mn msa:ms mya:my nep:ne nld:nl
nno:nn nor:no oci:oc ori:or orm:om pan:pa per:fa pol:pl por:pt pus:ps que:qu ron:ro rum:ro rus:ru
san:sa sin:si slk:sk slo:sk slv:sl sme:se sna:sn som:so sot:st spa:es sqi:sq srp:sr swa:sw swe:sv
tam:ta tat:tt tel:te tgk:tg tgl:tl tha:th tuk:tk tur:tr uig:ug ukr:uk urd:ur uzb:uz vie:vi vol:vo
wel:cy wln:wa xho:xh yor:yo zho:zh zul:zu
""".split())

# Country codes often written for a language: `jp` for Japanese.
COUNTRY_CODES = {"cn": "zh", "cz": "cs", "dk": "da", "gr": "el", "il": "he", "jp": "ja", "kr": "ko",
                 "ua": "uk", "vn": "vi"}

BOUNDS = (("min_chars", "max_chars"), ("min_tokens", "max_tokens"),
          ("min_mean_word_length", "max_mean_word_length"))


def check(project: Project, node: Node) -> None:
    """Validate a dataset node's filters; resolve `filters.tokenizer` into node.deps[TOKENIZER]."""
    filters = node.spec.filters
    _bounds(node, filters)
    _tokenizer(project, node, filters)
    _languages(node, filters)
    for name in ("include", "exclude"):
        _patterns(node, name, getattr(filters, name))


def _bounds(node: Node, filters: Filters) -> None:
    for low, high in BOUNDS:
        lo, hi = getattr(filters, low), getattr(filters, high)
        if lo is not None and hi is not None and lo > hi:
            raise node.error(("filters", high), f"at least {low} ({_number(lo)})", _number(hi),
                             f"raise {high} to {_number(lo)} or more, or lower {low}; "
                             "as written, every document is dropped")


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _tokenizer(project: Project, node: Node, filters: Filters) -> None:
    counts = [name for name in ("min_tokens", "max_tokens") if getattr(filters, name) is not None]
    ref = filters.tokenizer
    if ref is None:
        if counts:
            raise node.error(("filters", counts[0]), "`tokenizer` beside it: the tokenizer step whose tokens it counts",
                             "no tokenizer", f"add `tokenizer: PIPELINE.STEP` under filters, or remove {counts[0]}")
        return
    if not counts:
        raise node.error(("filters", "tokenizer"), "min_tokens or max_tokens beside it (the tokenizer only counts "
                                                   "tokens for them)", f"'{ref}' and neither",
                         "add `min_tokens: N` or `max_tokens: N` under filters, or remove tokenizer")
    need_step(project, node, ("filters", "tokenizer"), ref, ref)  # the pattern asks for `pipeline.step`
    kind = project.nodes[ref].kind
    if kind != "tokenizer":  # `dataset.NAME` is a dataset's own task name
        raise node.error(("filters", "tokenizer"), "a tokenizer step",
                         f"'{ref}', {'a dataset' if kind == 'dataset' else a_step(kind)}",
                         "name a step of kind `tokenizer` as `pipeline.step`")
    node.deps[TOKENIZER] = ref


def _languages(node: Node, filters: Filters) -> None:
    if "min_language_score" in filters.model_fields_set and not filters.languages:
        raise node.error(("filters", "min_language_score"), "`languages` beside it: the languages whose "
                                                            "probability it bounds", "no languages",
                         "add `languages: [CODE, ...]`, or remove min_language_score")
    known = set(LANGUAGES)
    for i, code in enumerate(filters.languages):
        if code not in known:
            raise node.error(("filters", "languages", i),
                             f"a language code py3langid identifies (ISO 639-1 where the language has one; "
                             f"{len(LANGUAGES)} in all, LANGUAGES in compiler/curation.py)", f"'{code}'",
                             _language_hint(code))


def _language_hint(code: str) -> str:
    if code in THREE_LETTER:
        return f"did you mean '{THREE_LETTER[code]}'? (the two-letter code of '{code}')"
    if code in COUNTRY_CODES:
        return f"did you mean '{COUNTRY_CODES[code]}'? ('{code}' is a country code)"
    # codes of the same length only: `ast` (Asturian) is not `as` (Assamese)
    return (did_you_mean(code, [c for c in LANGUAGES if len(c) == len(code)])
            or "use a code such as 'en', 'fr', 'de', 'es' or 'zh'")


def _patterns(node: Node, name: str, patterns: tuple[str, ...]) -> None:
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except (re.error, OverflowError) as exc:  # OverflowError: a repetition count past what `re` holds
            why = str(exc)
        except RecursionError:  # `re`'s parser recurses once per nested group
            why = "groups nested too deep for Python's `re` to parse"
        else:
            continue
        shown = pattern if len(pattern) <= 60 else pattern[:60] + "..."
        raise node.error(("filters", name, i), "a regular expression (Python `re`)",
                         f"'{shown}', which does not compile: {why}",
                         "fix the pattern; in YAML, single quotes keep backslashes as written: '\\d+'")
