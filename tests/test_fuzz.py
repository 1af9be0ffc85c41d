"""Whatever is done to the default project's manifests, compiling either succeeds or says what
is wrong: a `SpecError` whose every problem names a file and a line. Any other exception (a
traceback, a hang, a numpy or recursion error) is a failure, and build/ stays as it was.

The manifests of specs/ are copied into one temporary project beside this checkout's code;
each example restores them, mutates one or two (values, types, keys, YAML structure, whole
files) and compiles in-process: `project.load` then `graph.plans`, no doit, nothing built.
INGOT_FUZZ_EXAMPLES sets the number of examples (2,000 unless set; CI may ask for more).
Each crash it found is fixed where it arose and kept as a whole-message test beside that
module's others (test_yamlfile.py, test_project.py).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import yaml
from conftest import REPO, code_project, copy_project_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from compiler import graph, project, specs
from compiler.errors import SpecError

EXAMPLES = int(os.environ.get("INGOT_FUZZ_EXAMPLES", "2000"))
MANIFESTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "specs").rglob("*.yaml") if "templates" not in p.parts)
ORIGINAL = {rel: (REPO / rel).read_text(encoding="utf-8") for rel in MANIFESTS}
# the pipelines and the dataset hold most of what can go wrong between files: drawn more often
WEIGHTED = [rel for rel in MANIFESTS for _ in range(1 if "/models/" in rel else 4)]


def _field_names() -> list[str]:
    """Every key the manifest language knows: renaming a key to another real one makes the
    mistakes that get past the unknown-key check."""
    names = set()
    for cls in vars(specs).values():
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            names |= set(cls.model_fields)
    return sorted(names)


KEYS = _field_names()
NAMES = sorted({"pydocs", "gladius", "gladius-full", "tokenizer", "student", "teacher-a", "teacher-b", "export",
                "gguf", "evaluate", "report", "gladius-tiny", "gladius-125m", "teacher-a-tiny", "ci",
                "gladius.tokenizer", "gladius.student", "gladius-full.student", "specs/templates/chat.jinja",
                "data/*.jsonl", "**/*.txt", "build", ".git", "specs", "/etc/passwd", "../x", "compiler"})
# YAML a person could type where a value goes: numbers past every bound and past what Python
# reads, non-finite floats, dates that are not, tags, anchors, aliases, block scalars, flow
LITERALS = ["0", "-1", "1.5", "10000000000000", "1" + "0" * 100, "9" * 4000, "9" * 5000, "1e999", "-1e999",
            ".inf", "-.inf", ".nan", "0x1F", "0o17", "1_000", "190:20:30", "2024-13-45", "2024-01-01", "~", "''",
            "yes", "on", "[]", "{}", "[1, 2]", "{a: 1}", "[[[[1]]]]", "!!int x", "!!float x", "!!bool x",
            "!!binary x", "!!timestamp x", "!!str 5", "!!set {a}", "!!python/object:os.system", "!custom 1",
            "&a 1", "*a", "*undefined", "|\n  text", ">-\n  text", '"\\0"', '"\\x00x"', "'" + "a" * 3000 + "'",
            "<<", "=", "@x", "`x`", "%x", "- 1", "? a", "a: b: c", "\t1", "\"unterminated", "[1, 2", "{a: 1",
            "[" * 100 + "]" * 100, "[" + "0," * 120_000 + "0]"]
CHARS = list("[]{}:,&*!|>'\"#%@`-? \t\n\\=<") + ["\ufeff", "\u2028", "\x07", "\x85", "é", "\U0001f600"]

VALUES = st.one_of(
    st.integers(), st.integers(min_value=10**6, max_value=10**40), st.sampled_from([0, -1, 2**31, 2**63, 10**12,
                                                                                     10**100, 10**4000]),
    st.floats(), st.text(max_size=12), st.none(), st.booleans(), st.sampled_from(KEYS), st.sampled_from(NAMES),
    st.lists(st.one_of(st.integers(-2, 9), st.sampled_from(NAMES)), max_size=3),
    st.dictionaries(st.sampled_from(KEYS + NAMES), st.one_of(st.integers(-2, 9), st.sampled_from(NAMES)),
                    max_size=2),
)


# ---------------------------------------------------------------- mutations of the text

def _lines(text: str) -> list[str]:
    return text.split("\n")


def _pick_line(data, lines: list[str]) -> int:
    return data.draw(st.integers(0, max(0, len(lines) - 1)))


def delete_line(data, text):
    lines = _lines(text)
    del lines[_pick_line(data, lines)]
    return "\n".join(lines)


def duplicate_line(data, text):  # a key written twice, a list item twice
    lines = _lines(text)
    i = _pick_line(data, lines)
    lines.insert(i, lines[i])
    return "\n".join(lines)


def swap_lines(data, text):
    lines = _lines(text)
    i, j = _pick_line(data, lines), _pick_line(data, lines)
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def reindent(data, text):
    lines = _lines(text)
    i = _pick_line(data, lines)
    body = lines[i].lstrip(" ")
    lines[i] = " " * data.draw(st.integers(0, 12)) + data.draw(st.sampled_from(["", "\t"])) + body
    return "\n".join(lines)


def truncate(data, text):
    return text[: data.draw(st.integers(0, len(text)))]


def insert_chars(data, text):
    at = data.draw(st.integers(0, len(text)))
    return text[:at] + "".join(data.draw(st.lists(st.sampled_from(CHARS), min_size=1, max_size=3))) + text[at:]


def _key_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]


def replace_scalar(data, text):
    """`key: value` -> `key: LITERAL`."""
    lines = _lines(text)
    candidates = _key_lines(lines)
    if not candidates:
        return text
    i = data.draw(st.sampled_from(candidates))
    head = lines[i][: lines[i].index(":") + 1]
    lines[i] = f"{head} {data.draw(st.sampled_from(LITERALS))}"
    return "\n".join(lines)


REFERENCES = {"tokenizer", "model", "init", "data", "train", "evaluate", "gguf", "dataset", "step", "kind",
              "format", "objective", "path", "template", "chat_template", "type", "glob"}
CHOICES = NAMES + ["train", "init", "export", "tokenizer", "report", "hf", "sft", "distill", "pretrain", "files",
                   "pydocs", "gladius.gguf", "gladius.evaluate", "gladius-full.teacher-a", "dataset.pydocs"]


def rewire(data, text):
    """A reference or a kind changed to another name the project knows: what gets past every
    check of one file and leaves the checks between steps to catch."""
    lines = _lines(text)
    candidates = [i for i in _key_lines(lines) if lines[i].split(":", 1)[0].strip(" -{") in REFERENCES]
    if not candidates:
        return text
    i = data.draw(st.sampled_from(candidates))
    head = lines[i][: lines[i].index(":") + 1]
    lines[i] = f"{head} {data.draw(st.sampled_from(CHOICES))}"
    return "\n".join(lines)


def rename_key(data, text):
    lines = _lines(text)
    candidates = _key_lines(lines)
    if not candidates:
        return text
    i = data.draw(st.sampled_from(candidates))
    line = lines[i]
    indent = line[: len(line) - len(line.lstrip(" -"))]
    key, _, rest = line[len(indent):].partition(":")
    new = data.draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.just(key[:-1]), st.just(key.upper())))
    lines[i] = f"{indent}{new}:{rest}"
    return "\n".join(lines)


def alias(data, text):
    """An anchor on one value and its alias in place of another."""
    lines = _lines(text)
    candidates = [i for i in _key_lines(lines) if lines[i].split(":", 1)[1].strip()]
    if len(candidates) < 2:
        return text
    i, j = sorted(data.draw(st.lists(st.sampled_from(candidates), min_size=2, max_size=2, unique=True)))
    key_i, _, value_i = lines[i].partition(":")
    key_j, _, _ = lines[j].partition(":")
    lines[i] = f"{key_i}: &x {value_i.strip()}"
    lines[j] = f"{key_j}: *x"
    return "\n".join(lines)


def add_block(data, text):
    """A line the file does not expect: a merge key, a second document, a profile overlay."""
    lines = _lines(text)
    block = data.draw(st.sampled_from(["<<: {name: x}", "---", "profiles:\n  ci:\n    name: other",
                                       "profiles:\n  ci:\n    steps:\n      student: {seq_len: 100000000}",
                                       "profiles:\n  ci: [1]", "profiles:\n  Bad Name: {}", "? [a]\n: 1",
                                       "%YAML 1.1", "a: &r [*r]", "&top", "... ", "extra: value"]))
    lines.insert(_pick_line(data, lines), block)
    return "\n".join(lines)


# ---------------------------------------------------------------- mutations of the data

def _paths(node, path=()):
    yield path
    if len(path) > 20:  # an alias may make the tree recursive
        return
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def structural(data, text):
    """Parse, change one place of the tree (replace, delete, rename or add a key), dump back."""
    try:
        tree = yaml.safe_load(text)
    except Exception:  # PyYAML's own loader fails in more ways than Ingot's reader may
        return text
    paths = [p for p in _paths(tree) if p]
    if not paths:
        return text
    path = data.draw(st.sampled_from(paths))
    parent = tree
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    how = data.draw(st.sampled_from(["replace", "replace", "delete", "rename", "add"]))
    if how == "replace":
        parent[last] = data.draw(VALUES)
    elif how == "delete":
        del parent[last]
    elif how == "rename" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(KEYS))] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[data.draw(st.sampled_from(KEYS))] = data.draw(VALUES)
    else:
        parent.append(data.draw(VALUES))
    try:
        return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    except Exception:  # a recursive tree
        return text


TEXT_MUTATIONS = [delete_line, duplicate_line, swap_lines, reindent, truncate, insert_chars, replace_scalar,
                  replace_scalar, rename_key, alias, add_block, structural, structural, structural, structural,
                  rewire, rewire, rewire, rewire]


# ---------------------------------------------------------------- the property

@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    """One project with the default manifests; llama.cpp seen as installed, so that the compile
    goes as far on a machine without the extra as on one with it (nothing is built)."""
    root = code_project(tmp_path_factory.mktemp("fuzz") / "proj").root
    copy_project_files(root)
    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp" else real(name, *a))
        graph.plans(project.load(root))  # the unmutated project compiles
        yield root


def build_state(root) -> dict:
    build = root / "build"
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in build.rglob("*")} if build.exists() else {}


def mutate(data, root) -> dict[str, str | None]:
    """Mutate one or two manifests (or remove one, or copy one beside itself); the new texts by
    file, None for a removed file."""
    out: dict[str, str | None] = {}
    for rel in data.draw(st.lists(st.sampled_from(WEIGHTED), min_size=1, max_size=2, unique=True)):
        what = data.draw(st.sampled_from(["text"] * 18 + ["remove", "copy"]))
        if what == "remove":
            out[rel] = None
        elif what == "copy":  # the same name twice, in two files
            out[rel.replace(".yaml", "-copy.yaml")] = ORIGINAL[rel]
        else:
            text = ORIGINAL[rel]
            for mutation in data.draw(st.lists(st.sampled_from(TEXT_MUTATIONS), min_size=1, max_size=3)):
                text = mutation(data, text)
            out[rel] = text
    return out


def check_compile(root) -> None:
    before = build_state(root)
    try:
        graph.plans(project.load(root))
    except SpecError as exc:
        assert exc.problems, "a SpecError without problems"
        for p in exc.problems:
            assert p.file and isinstance(p.line, int) and p.line >= 1, f"a problem without file and line: {p!r}"
        assert build_state(root) == before, "a bad manifest touched build/"


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large,
                                                                        HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_the_manifests_compiles_or_is_a_spec_error(fuzz_root, data):
    changed = mutate(data, fuzz_root)
    try:
        for rel, text in changed.items():
            path = fuzz_root / rel
            if text is None:
                path.unlink()
            else:
                path.write_text(text, encoding="utf-8")
        check_compile(fuzz_root)
    finally:
        for rel in changed:
            if rel in ORIGINAL:
                (fuzz_root / rel).write_text(ORIGINAL[rel], encoding="utf-8")
            else:
                (fuzz_root / rel).unlink(missing_ok=True)
