"""Bad manifests: one clear error (file, line, field, expected, found, fix), exit 2, no
traceback, and build/ untouched. Most cases go through the real `python -m doit`; the
rarer YAML shapes are loaded in-process, where a case costs microseconds, not 0.3 s."""

from __future__ import annotations

import json
import textwrap

import pytest

from compiler import graph, project
from compiler.errors import SpecError, did_you_mean, either
from compiler.yamlfile import read
from conftest import ran

DATASET, MODEL, PIPELINE = "specs/datasets/docs.yaml", "specs/models/tiny.yaml", "specs/pipelines/main.yaml"

# A valid project; each case replaces one or two files. Line numbers in the expected
# messages count from these texts, so keep them as they are.
VALID = {
    DATASET: """
        kind: dataset
        name: docs
        sources:
          - type: files
            glob: data/*.jsonl
    """,
    MODEL: """
        kind: model
        name: tiny
        hidden_size: 32
        intermediate_size: 64
        layers: 2
        heads: 4
        kv_heads: 2
        vocab_size: 512
    """,
    PIPELINE: """
        kind: pipeline
        name: main
        steps:
          tok:
            kind: tokenizer
            dataset: docs
            vocab_size: 400
          init:
            kind: init
            model: tiny
            tokenizer: tok
        profiles:
          ci:
            steps:
              tok:
                vocab_size: 300
    """,
}


def valid(rel: str) -> str:
    """VALID[rel] as it lands in the file, for cases that append to it."""
    return textwrap.dedent(VALID[rel]).lstrip("\n")


def model(*lines: str) -> dict[str, str]:
    """The model manifest with `lines` in place of its architecture (from line 3 on)."""
    return {MODEL: "kind: model\nname: tiny\n" + "".join(line + "\n" for line in lines)}


def pipeline(steps: str, name: str = "main") -> dict[str, str]:
    """A pipeline manifest `name` with the given `steps:` block (steps start on line 4)."""
    return {PIPELINE: f"kind: pipeline\nname: {name}\nsteps:\n" + textwrap.indent(textwrap.dedent(steps), "  ")}


def dataset(glob: str) -> dict[str, str]:
    return {DATASET: f"kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: {glob}\n"}


ARCH = ("hidden_size: 32", "intermediate_size: 64", "layers: 2", "heads: 4", "vocab_size: 512")
TOK = "tok:\n  kind: tokenizer\n  dataset: docs\n  vocab_size: 400\n"


def stderr(*problems: str) -> str:
    """The whole of what `doit` prints for these problems."""
    n = len(problems)
    return f"ingot: {n} problem{'s' if n > 1 else ''} found; nothing was built\n" + "\n".join(problems) + "\n"


KNOWN_MODEL_KEYS = ("name, description, profiles, kind, architecture, hidden_size, intermediate_size, layers, "
                    "heads, kv_heads, head_dim, vocab_size, max_positions, rope_theta, rope_scaling, sliding_window, rms_norm_eps, "
                    "tie_embeddings, options, expect_params")
KNOWN_TOKENIZER_KEYS = "description, resources, path, hub, revision, kind, dataset, family, vocab_size, min_frequency, special_tokens, add_bos_token, max_length"

# (files replacing those of VALID, command-line arguments after `list`, the whole stderr)
CASES = {
    "yaml-syntax": (model("hidden_size: [32", "layers: 2"), (), stderr(
        "specs/models/tiny.yaml:4: expected valid YAML; found a syntax error: did not find expected ',' or ']' "
        "(while parsing a flow sequence that starts on line 3)\n"
        "  fix: check the indentation, quoting and brackets on this line and the ones above it")),
    "unknown-key-typo": (model(*ARCH, "hiden_size: 3"), (), stderr(
        f"specs/models/tiny.yaml:8: hiden_size: expected a known key ({KNOWN_MODEL_KEYS}); found unknown key 'hiden_size'\n"
        "  fix: did you mean 'hidden_size'?")),
    "wrong-type": (model("hidden_size: 32", "intermediate_size: 64", "layers: two", "heads: 4", "vocab_size: 512"), (),
                   stderr("specs/models/tiny.yaml:5: layers: expected an integer; found 'two'")),
    "negative-size": (model("hidden_size: -32", *ARCH[1:]), (), stderr(
        "specs/models/tiny.yaml:3: hidden_size: expected a number ≥ 1; found -32\n"
        "  fix: use a value ≥ 1")),
    "missing-dataset": (pipeline(TOK.replace("dataset: docs", "dataset: doc")), (), stderr(
        "specs/pipelines/main.yaml:6: steps.tok.dataset: expected the name of a dataset (one of 'docs'); found 'doc'\n"
        "  fix: did you mean 'docs'?")),
    "missing-step": (pipeline(TOK + "init:\n  kind: init\n  model: tiny\n  tokenizer: tokk\n"), (), stderr(
        "specs/pipelines/main.yaml:11: steps.init.tokenizer: expected a step of this pipeline (one of 'tok'); "
        "found 'tokk'\n"
        "  fix: did you mean 'tok'?")),
    "missing-pipeline": (pipeline("init:\n  kind: init\n  model: tiny\n  tokenizer: other.tok\n"), (), stderr(
        "specs/pipelines/main.yaml:7: steps.init.tokenizer: expected `pipeline.step` naming a declared pipeline "
        "(one of 'main'); found 'other.tok', but no pipeline is named 'other'\n"
        "  fix: declare pipeline 'other', or fix the name")),
    "cycle": (pipeline("a:\n  kind: init\n  model: tiny\n  tokenizer: b\n"
                       "b:\n  kind: init\n  model: tiny\n  tokenizer: a\n"), (), stderr(
        "specs/pipelines/main.yaml:11: steps.b.tokenizer: expected a step that does not depend on itself; "
        "found the cycle main.a -> main.b -> main.a\n"
        "  fix: one of these steps must take its input from elsewhere")),
    "self-reference": (pipeline("init:\n  kind: init\n  model: tiny\n  tokenizer: init\n"), (), stderr(
        "specs/pipelines/main.yaml:7: steps.init.tokenizer: expected another step; found 'init', the step itself\n"
        "  fix: a step cannot consume its own output; name the step it builds on")),
    "not-a-tokenizer": (pipeline(TOK + "a:\n  kind: init\n  model: tiny\n  tokenizer: tok\n"
                                 "b:\n  kind: init\n  model: tiny\n  tokenizer: a\n"), (), stderr(
        "specs/pipelines/main.yaml:15: steps.b.tokenizer: expected a tokenizer or pretrained step; found 'a', an init step\n"
        "  fix: name a step of kind `tokenizer`, or a `pretrained` one (its tokenizer)")),
    "duplicate-name": ({"specs/models/tiny2.yaml": "kind: model\nname: tiny\n" + "\n".join(ARCH) + "\n"}, (), stderr(
        "specs/models/tiny2.yaml:2: name: expected a model name not used before; found 'tiny', "
        "already the name of the model in specs/models/tiny.yaml:2\n"
        "  fix: rename one of them")),
    "duplicate-yaml-key": (model(*ARCH[:4], "heads: 8", ARCH[4]), (), stderr(
        "specs/models/tiny.yaml:7: heads: expected each key once; found 'heads' again (first on line 6)\n"
        "  fix: remove or merge one of them: YAML would silently keep only the last")),
    "heads-not-dividing": (model("hidden_size: 32", "intermediate_size: 64", "layers: 2", "heads: 5",
                                 "vocab_size: 512"), (), stderr(
        "specs/models/tiny.yaml:6: heads: expected a divisor of hidden_size (32); found 5\n"
        "  fix: use 2, 4 or 8")),
    "kv-heads-not-dividing": (model(*ARCH[:4], "kv_heads: 3", ARCH[4]), (), stderr(
        "specs/models/tiny.yaml:7: kv_heads: expected a divisor of heads (4); found 3\n"
        "  fix: use 1, 2 or 4")),
    "model-vocab-below-tokenizer": (model(*ARCH[:4], "vocab_size: 300"), (), stderr(
        "specs/pipelines/main.yaml:10: steps.init.model: expected a model whose vocab_size is at least the "
        "tokenizer's (400, step 'main.tok'); found model 'tiny' with vocab_size 300\n"
        "  fix: raise vocab_size of model 'tiny' (specs/models/tiny.yaml:7) to 400 or more, "
        "or lower the tokenizer's vocab_size")),
    "wrong-expect-params": (model(*ARCH, "expect_params: 50000"), (), stderr(
        "specs/models/tiny.yaml:8: expect_params: expected 53,408, the parameter count derived from the "
        "architecture; found 50,000\n"
        "  fix: if the architecture is right, set `expect_params: 53408`; "
        "if 50,000 is right, the architecture has 3,408 too many")),
    "glob-escapes-project": (dataset("../x/*.txt"), (), stderr(
        "specs/datasets/docs.yaml:5: sources[0].glob: expected a glob relative to the project root that stays "
        "inside it; found '../x/*.txt', a path that leaves the project through '..'\n"
        "  fix: copy the data into the project, e.g. under data/, and point the glob there")),
    "glob-absolute": (dataset("/etc/*.txt"), (), stderr(
        "specs/datasets/docs.yaml:5: sources[0].glob: expected a glob relative to the project root that stays "
        "inside it; found '/etc/*.txt', an absolute path\n"
        "  fix: copy the data into the project, e.g. under data/, and point the glob there")),
    "glob-matches-nothing": (dataset("data/*.txt"), (), stderr(
        "specs/datasets/docs.yaml:5: sources[0].glob: expected a glob that matches at least one .txt or .jsonl "
        "file; found no file matching 'data/*.txt'\n"
        "  fix: check the pattern; it is relative to the project root")),
    "unknown-manifest-kind": ({MODEL: "kind: modle\nname: tiny\n"}, (), stderr(
        "specs/models/tiny.yaml:1: kind: expected one of 'dataset', 'model', 'pipeline'; found 'modle'\n"
        "  fix: did you mean 'model'?")),
    "unknown-step-kind": (pipeline(TOK.replace("kind: tokenizer", "kind: tokeniser")), (), stderr(
        "specs/pipelines/main.yaml:5: steps.tok.kind: expected one of 'evaluate', 'export', 'init', 'pretrained', 'report', 'tokenizer', 'train'; "
        "found 'tokeniser'\n"
        "  fix: did you mean 'tokenizer'?")),
    "missing-step-kind": (pipeline(TOK.replace("  kind: tokenizer\n", "")), (), stderr(
        "specs/pipelines/main.yaml:4: steps.tok.kind: expected one of 'evaluate', 'export', 'init', 'pretrained', 'report', 'tokenizer', 'train'; "
        "found nothing\n"
        "  fix: add `kind: evaluate`, `kind: export`, `kind: init`, `kind: pretrained`, `kind: report`, `kind: tokenizer` or `kind: train`")),
    "missing-required-field": (model(*[a for a in ARCH if not a.startswith("layers")]), (), stderr(
        "specs/models/tiny.yaml:1: layers: expected a value for this required field; found nothing\n"
        "  fix: add `layers:` (Number of decoder layers)")),
    "unknown-profile": ({}, ("profile=nope",), stderr(
        "command line: profile: expected a profile some manifest declares (one of 'ci'); found 'nope'\n"
        "  fix: use profile=ci, or run `doit` without profile=")),
    "typo-in-unselected-profile": ({PIPELINE: valid(PIPELINE).replace("vocab_size: 300", "vocab_sise: 5")}, (), stderr(
        f"specs/pipelines/main.yaml:16: profiles.ci.steps.tok.vocab_sise: expected a known key "
        f"({KNOWN_TOKENIZER_KEYS}); found unknown key 'vocab_sise'\n"
        "  fix: did you mean 'vocab_size'?")),
    "profile-breaks-pairing": ({PIPELINE: valid(PIPELINE).replace("vocab_size: 300", "vocab_size: 600")},
                               ("profile=ci",), stderr(
        "specs/pipelines/main.yaml:10: steps.init.model (with profile 'ci'): expected a model whose vocab_size is "
        "at least the tokenizer's (600, step 'main.tok'); found model 'tiny' with vocab_size 512\n"
        "  fix: raise vocab_size of model 'tiny' (specs/models/tiny.yaml:8) to 600 or more, "
        "or lower the tokenizer's vocab_size")),
    "reserved-pipeline-name": (pipeline(TOK, name="dataset"), (), stderr(
        "specs/pipelines/main.yaml:2: name: expected a pipeline name other than 'cache', 'dataset' or 'store'; "
        "found 'dataset'\n"
        "  fix: rename the pipeline: build/dataset/ is Ingot's own folder")),
    # sizes beyond reason: a bound named in the message, not a hang in the divisor search
    "hidden-size-beyond-reason": (model("hidden_size: 1000000000000", *ARCH[1:3], "heads: 7", ARCH[4]), (), stderr(
        "specs/models/tiny.yaml:3: hidden_size: expected a number ≤ 131,072; found 1000000000000\n"
        "  fix: use a value ≤ 131,072")),
    # each file is validated on its own: a typo in the model does not hide the pipeline's
    "problems-in-several-files": ({**model(*ARCH, "hiden_size: 3"),
                                   **pipeline(TOK.replace("vocab_size: 400", "vocab_size: 400\n  vocab: 4"))}, (),
                                  stderr(
        f"specs/models/tiny.yaml:8: hiden_size: expected a known key ({KNOWN_MODEL_KEYS}); found unknown key "
        "'hiden_size'\n"
        "  fix: did you mean 'hidden_size'?",
        f"specs/pipelines/main.yaml:8: steps.tok.vocab: expected a known key ({KNOWN_TOKENIZER_KEYS}); found unknown "
        "key 'vocab'\n"
        "  fix: did you mean 'vocab_size'?")),
    "several-problems-at-once": (model("hidden_size: 0", "intermediate_size: x", "layers: 2", "heads: 4",
                                       "vocab_size: 512", "colour: red"), (), stderr(
        "specs/models/tiny.yaml:3: hidden_size: expected a number ≥ 1; found 0\n  fix: use a value ≥ 1",
        "specs/models/tiny.yaml:4: intermediate_size: expected an integer; found 'x'",
        f"specs/models/tiny.yaml:8: colour: expected a known key ({KNOWN_MODEL_KEYS}); found unknown key 'colour'\n"
        "  fix: remove it")),
}


def write(p, files: dict[str, str]) -> None:
    """VALID with `files` laid over it, and one small data file for the glob."""
    p.write("data/docs.jsonl", "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    for rel, text in {**VALID, **files}.items():
        p.write(rel, text)


def assert_refused(result, expected: str) -> None:
    assert result.stderr == expected
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("files, args, expected", CASES.values(), ids=CASES.keys())
def test_bad_manifest_is_refused_and_build_untouched(make_project, files, args, expected):
    p = make_project()
    write(p, files)
    p.write("build/store/0123abcd/manifest.json", "{}\n")  # an earlier build's entry, which must survive
    before = p.build_files()
    assert_refused(p.doit("list", *args, check=False), expected)
    assert p.build_files() == before


def test_bad_manifest_in_fresh_project_creates_no_build_folder(make_project):
    p = make_project()
    write(p, model(*ARCH[:4], "kv_heads: 3", ARCH[4]))
    assert_refused(p.doit(check=False), CASES["kv-heads-not-dividing"][2])
    assert not (p.root / "build").exists()


def test_breaking_a_built_project_leaves_its_store_alone(make_project):
    p = make_project()
    write(p, {})
    assert ran(p.doit("dataset.docs")) == ["dataset.docs"]  # a real store entry, link and doit database
    before = p.build_files()
    assert any(name.startswith("store/") for name in before)
    p.write(MODEL, CASES["model-vocab-below-tokenizer"][0][MODEL])
    for args in ((), ("clean",), ("forget",)):
        assert_refused(p.doit(*args, check=False), CASES["model-vocab-below-tokenizer"][2])
    assert p.build_files() == before


def test_profile_overlay_applies_only_when_selected(make_project):
    p = make_project()
    write(p, {})
    default, ci = p.doit("list").stdout, p.doit("list", "profile=ci").stdout
    assert "byte-level BPE of 400 tokens" in default and "300 tokens" not in default
    assert "byte-level BPE of 300 tokens" in ci and "-> build/@ci/main/tok" in ci


def test_a_large_overlay_keeps_every_line(make_project):
    """Each value an overlay writes keeps its own line, nested ones too (found in one pass over
    the lines: 20,000 overlay keys took 76 s when each key scanned them all, 1.5 s now)."""
    p = make_project()
    keys = "".join(f"      k{i}: {i}\n" for i in range(2000))
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: pydocs\nprofiles:\n  ci:\n"
                                        "    split:\n      validation: 0.2\n    filters:\n" + keys)
    with pytest.raises(SpecError) as info:
        project.load(p.root, "ci")
    problems = info.value.problems
    assert len(problems) == 2000
    assert [(x.line, x.field) for x in problems[:2]] == [(10, "profiles.ci.filters.k0"), (11, "profiles.ci.filters.k1")]
    assert (problems[-1].line, problems[-1].field) == (2009, "profiles.ci.filters.k1999")


# ---------------------------------------------------------------- in-process: rarer shapes

def load_error(p, files: dict[str, str], profile: str | None = None) -> str:
    write(p, files)
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root, profile))
    assert not (p.root / "build").exists()
    return str(info.value)


IN_PROCESS = {
    "empty-file": ({MODEL: ""},
                   "specs/models/tiny.yaml:1: expected a mapping with `kind:` and `name:`; found an empty file\n"
                   "  fix: start the file with `kind: dataset`, `kind: model` or `kind: pipeline`"),
    "two-documents": ({MODEL: "kind: model\n---\nname: tiny\n"},
                      "specs/models/tiny.yaml:2: expected a single document; found another document\n"
                      "  fix: keep one manifest per file, without `---` between documents"),
    "tab-indent": ({MODEL: "kind: model\nname: tiny\n\thidden_size: 32\n"},
                   "specs/models/tiny.yaml:3: expected valid YAML; found a syntax error: a tab character that "
                   "violates indentation\n"
                   "  fix: indent with spaces, never tabs"),
    "merge-key": ({MODEL: "kind: model\nname: tiny\n<<: {layers: 2}\n"},
                  "specs/models/tiny.yaml:3: expected plain keys; found a YAML merge key '<<'\n"
                  "  fix: write the keys out, or use profiles"),
    "python-tag": ({MODEL: "kind: model\nname: !!python/object/apply:os.system [ls]\n"},
                   "specs/models/tiny.yaml:2: name: expected a plain value (text, number, true/false, list or "
                   "mapping); "
                   "found a value tagged '!!python/object/apply:os.system'\n"
                   "  fix: remove the tag; manifests are data, never code"),
    "empty-value": (model("hidden_size:", *ARCH[1:]),
                    "specs/models/tiny.yaml:3: hidden_size: expected an integer; found an empty value"),
    "bad-step-name": (pipeline(TOK.replace("tok:", "Tok:")),
                      "specs/pipelines/main.yaml:4: steps.Tok: expected a name of lowercase letters, digits, "
                      "'-' and '_'; found 'Tok'\n"
                      "  fix: write 'tok'"),
    "choice-in-wrong-case": ({DATASET: valid(DATASET) + "normalize: nfc\n"},
                             "specs/datasets/docs.yaml:6: normalize: expected one of 'NFC', 'NFKC', 'NFD', 'NFKD' "
                             "or 'none'; found 'nfc'\n"
                             "  fix: did you mean 'NFC'?"),
    # one bad item of a list must not also report the list as too short
    "bad-source-item": ({DATASET: valid(DATASET) + "    feilds: {text: body}\n"},
                        "specs/datasets/docs.yaml:6: sources[0].feilds: expected a known key (type, glob, fields); "
                        "found unknown key 'feilds'\n"
                        "  fix: did you mean 'fields'?"),
    "empty-list": ({DATASET: "kind: dataset\nname: docs\nsources: []\n"},
                   "specs/datasets/docs.yaml:3: sources: expected at least 1 item; found 0 items"),
    "profile-breaks-model": (model(*ARCH, "profiles:", "  ci:", "    hidden_size: 30"),
                             "specs/models/tiny.yaml:6: heads (with profile 'ci'): expected a divisor of "
                             "hidden_size (30); found 4\n"
                             "  fix: use 2, 3 or 5"),
    "infinite-float": (model(*ARCH, "rope_theta: .inf"),
                       "specs/models/tiny.yaml:8: rope_theta: expected a finite number; found infinity (.inf, or a "
                       "number past a float's range)\n"
                       "  fix: write a number; .inf, .nan and numbers past about 1.8e308 are not"),
    "float-past-its-range": (model(*ARCH, "rms_norm_eps: 1e999"),
                             "specs/models/tiny.yaml:8: rms_norm_eps: expected a finite number; found '1e999'\n"
                             "  fix: write a number; .inf, .nan and numbers past about 1.8e308 are not"),
    "not-a-number": (model(*ARCH, "rms_norm_eps: .nan"),
                     "specs/models/tiny.yaml:8: rms_norm_eps: expected a finite number; found not a number (.nan)\n"
                     "  fix: write a number; .inf, .nan and numbers past about 1.8e308 are not"),
    "integer-past-a-float": (model(*ARCH, "rope_theta: 1" + "0" * 400),
                             "specs/models/tiny.yaml:8: rope_theta: expected a number within a float's range (about "
                             "±1.8e308); found an integer of 401 digits"),
    # found by the fuzzer: counting the parameters looped over every layer, here for hours
    "layers-beyond-reason": (model(*ARCH[:2], "layers: 1000000000000", *ARCH[3:], "expect_params: 1"),
                             "specs/models/tiny.yaml:5: layers: expected a number ≤ 1,024; found 1000000000000\n"
                             "  fix: use a value ≤ 1,024"),
    "hundred-digit-vocabulary": (model(*ARCH[:4], "vocab_size: 1" + "0" * 100),
                                 "specs/models/tiny.yaml:7: vocab_size: expected a number ≤ 4,194,304; found an "
                                 "integer of 101 digits\n"
                                 "  fix: use a value ≤ 4,194,304"),
    "five-thousand-digit-integer": (model("hidden_size: " + "1" * 5000, *ARCH[1:]),
                                    "specs/models/tiny.yaml:3: hidden_size: expected an integer of at most 4,300 "
                                    "digits (the most Python reads); found an integer of 5,000 digits\n"
                                    "  fix: write the number meant; no field takes one that large, and each says its "
                                    "bound"),
    # found by the fuzzer: `kind: [model]` was looked up in a dict (TypeError: unhashable type)
    "kind-is-a-list": ({MODEL: "kind: [model]\nname: tiny\n"},
                       "specs/models/tiny.yaml:1: kind: expected one of 'dataset', 'model', 'pipeline'; found a list\n"
                       "  fix: add `kind: dataset`, `kind: model` or `kind: pipeline`"),
    "profile-adds-step-without-kind": ({PIPELINE: valid(PIPELINE) + "      extra:\n        vocab_size: 500\n"},
                                       "specs/pipelines/main.yaml:17: profiles.ci.steps.extra.kind: expected one of "
                                       "'evaluate', 'export', 'init', 'pretrained', 'report', 'tokenizer', 'train'; found nothing\n"
                                       "  fix: add `kind: evaluate`, `kind: export`, `kind: init`, `kind: pretrained`, `kind: report`, `kind: tokenizer` or `kind: train`"),
}


@pytest.mark.parametrize("files, expected", IN_PROCESS.values(), ids=IN_PROCESS.keys())
def test_rarer_mistakes_in_process(make_project, files, expected):
    assert load_error(make_project(), files) == expected


def test_profile_asked_for_but_none_declared(make_project):
    plain = valid(PIPELINE)[: valid(PIPELINE).index("profiles:")]
    assert load_error(make_project(), {PIPELINE: plain}, profile="ci") == (
        "command line: profile: expected a profile declared under `profiles:` in some manifest; "
        "found 'ci', and no manifest declares any profile\n"
        "  fix: run `doit` without profile=, or add `profiles: {ci: ...}` to a manifest")


def test_file_that_is_not_utf8(make_project):
    p = make_project()
    write(p, {})
    (p.root / MODEL).write_bytes(b"kind: model\nname: caf\xe9\n")
    with pytest.raises(SpecError) as info:
        project.load(p.root)
    assert str(info.value) == ("specs/models/tiny.yaml:2: expected UTF-8 text; found the byte 0xe9, which is not UTF-8\n"
                               "  fix: save the file as UTF-8")


# ---------------------------------------------------------------- units: yamlfile, pydantic_errors, errors

def test_yaml_lines_of_nested_keys_and_list_items(tmp_path):
    (tmp_path / "x.yaml").write_text("a:\n  b:\n    - c: 1\n\n    - d:\n        e: 2\nf: 3\n")
    doc = read(tmp_path / "x.yaml", "x.yaml")
    assert doc.data == {"a": {"b": [{"c": 1}, {"d": {"e": 2}}]}, "f": 3}
    assert doc.lines == {(): 1, ("a",): 1, ("a", "b"): 2, ("a", "b", 0): 3, ("a", "b", 0, "c"): 3,
                         ("a", "b", 1): 5, ("a", "b", 1, "d"): 5, ("a", "b", 1, "d", "e"): 6, ("f",): 7}
    assert doc.line(("a", "b", 1, "d", "missing")) == 5  # an absent key points at its parent


def test_yaml_duplicate_key_is_an_error_even_when_nested(tmp_path):
    (tmp_path / "x.yaml").write_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(SpecError) as info:
        read(tmp_path / "x.yaml", "x.yaml")
    assert str(info.value) == ("x.yaml:4: a.b: expected each key once; found 'b' again (first on line 2)\n"
                               "  fix: remove or merge one of them: YAML would silently keep only the last")


def test_pydantic_error_inside_a_tagged_union_points_at_the_nested_key(make_project):
    steps = TOK + "  special_tokens:\n    bos: <s>\n    boss: <b>\n"
    assert load_error(make_project(), pipeline(steps)) == (
        "specs/pipelines/main.yaml:10: steps.tok.special_tokens.boss: expected a known key (bos, eos, unk, pad); "
        "found unknown key 'boss'\n"
        "  fix: did you mean 'bos'?")


def test_did_you_mean_and_either():
    assert did_you_mean("nfkc", ["NFC", "NFKC"]) == "did you mean 'NFKC'?"
    assert did_you_mean("zzz", ["tok", "init"]) == ""
    assert either(["b", "a", "c"]) == "'a', 'b' or 'c'"
    assert either([8, 2]) == "2 or 8"


# ---------------------------------------------------------------- data globs

def test_a_wildcard_glob_never_walks_into_build_or_hidden_folders(make_project):
    from compiler import sources

    p = make_project()
    write(p, dataset("'**/*.jsonl'"))
    p.write("data/more/extra.jsonl", '{"text": "one more document"}\n')
    p.write("top.jsonl", '{"text": "a document at the top"}\n')
    for rel in ("build/store/0123abcd/train-00000.jsonl", "build/dataset/docs/validation-00000.jsonl",
                ".git/x.jsonl", ".venv/lib/y.jsonl", "data/.cache/z.jsonl"):
        p.write(rel, '{"text": "not a source"}\n')
    loaded = project.load(p.root)
    files = sources.dataset_files(loaded.nodes["dataset.docs"], p.root)
    assert [str(f.relative_to(p.root)) for f in files[0]] == ["data/docs.jsonl", "data/more/extra.jsonl", "top.jsonl"]


def test_a_glob_naming_build_itself_still_reads_it(make_project):
    from compiler import sources

    p = make_project()
    write(p, dataset("build/import/*.jsonl"))  # the user asked for that folder by name
    p.write("build/import/a.jsonl", '{"text": "named on purpose"}\n')
    files = sources.dataset_files(project.load(p.root).nodes["dataset.docs"], p.root)
    assert [str(f.relative_to(p.root)) for f in files[0]] == ["build/import/a.jsonl"]


def test_a_glob_through_a_link_out_of_the_project_is_refused(make_project, tmp_path):
    p = make_project()
    write(p, dataset("'linked/*.jsonl'"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "not in the project"}\n')
    (p.root / "linked").symlink_to(outside)
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert str(info.value) == (
        "specs/datasets/docs.yaml:5: sources[0].glob: expected files inside the project; found "
        f"'linked/secret.jsonl', which resolves to {outside / 'secret.jsonl'}\n"
        "  fix: copy the data into the project instead of linking outside it")
