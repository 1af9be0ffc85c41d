"""Reading one manifest: what no hand writes (files past 1 MiB, nesting past 64 levels, aliases
that expand past 100,000 values, an alias inside itself) and scalars PyYAML cannot construct
are one error naming the file and the line, fast, before anything is composed or built."""

from __future__ import annotations

import time

import pytest

from compiler import yamlfile
from compiler.errors import SpecError
from compiler.yamlfile import read

REL = "specs/models/x.yaml"


def error(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "x.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(SpecError) as info:
        read(path, REL)
    return str(info.value)


def laughs(levels: int) -> str:
    """The "billion laughs": each level a list of nine aliases of the one before (9^levels values)."""
    lines = ["kind: model", "name: bomb", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghijklmn", "bcdefghijklmno"[: levels - 1]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


VALUES_ERROR = ("specs/models/x.yaml:8: expected at most 100,000 values (keys, values and list items, each alias "
                "counted as every value it repeats); found 141,174 by this line, where the alias '*e' repeats "
                "66,430 values\n"
                "  fix: write the values out instead of nesting aliases in aliases, and keep a manifest under "
                "100,000 values: put records in files under data/ that a dataset's `glob:` reads")


@pytest.mark.parametrize("levels", [6, 9, 12])
def test_billion_laughs_is_refused_in_well_under_a_second(tmp_path, levels):
    # 9 levels (400 bytes) took 2 minutes and 9.8 GB at 7 levels, and ran out of memory at 8, before
    started = time.perf_counter()
    assert error(tmp_path, laughs(levels)) == VALUES_ERROR
    assert time.perf_counter() - started < 0.5


def test_aliases_within_the_limit_read_as_their_values_with_lines(tmp_path):
    (tmp_path / "x.yaml").write_text("base: &b {lr: 0.1, betas: [0.9, 0.95]}\nother: *b\n")
    doc = read(tmp_path / "x.yaml", REL)
    assert doc.data == {"base": {"lr": 0.1, "betas": [0.9, 0.95]}, "other": {"lr": 0.1, "betas": [0.9, 0.95]}}
    assert doc.line(("other", "betas", 1)) == 1  # an aliased value is found where it was written


def test_a_manifest_of_exactly_the_value_limit_is_read(tmp_path):
    items = yamlfile.MAX_VALUES - 3  # the root mapping, the key, the list
    (tmp_path / "x.yaml").write_text("items: [" + ",".join(["1"] * items) + "]\n")
    assert len(read(tmp_path / "x.yaml", REL).data["items"]) == items
    (tmp_path / "x.yaml").write_text("items: [" + ",".join(["1"] * (items + 1)) + "]\n")
    with pytest.raises(SpecError, match="found 100,001 by this line"):
        read(tmp_path / "x.yaml", REL)


DEPTH_ERROR = ("specs/models/x.yaml:3: expected lists and mappings nested at most 64 deep; found nesting 65 deep on "
               "this line\n"
               "  fix: flatten the structure: no manifest field nests more than a few levels, and 64 is the most "
               "Ingot reads")


@pytest.mark.parametrize("depth", [65, 10_000, 500_000])
def test_deep_nesting_is_refused_before_the_composer_recurses(tmp_path, depth):
    # 10,000 levels raised RecursionError; 500,000 crashed the process in libyaml's composer (SIGSEGV)
    assert error(tmp_path, "kind: model\nname: deep\nx: " + "[" * depth + "]" * depth + "\n") == DEPTH_ERROR


def test_sixty_four_levels_are_read(tmp_path):
    (tmp_path / "x.yaml").write_text("x: " + "[" * 63 + "1" + "]" * 63 + "\n")  # the root mapping is the 64th
    data = read(tmp_path / "x.yaml", REL).data["x"]
    for _ in range(63):
        data = data[0]
    assert data == 1


def test_an_alias_that_nests_past_the_limit_is_refused(tmp_path):
    deep = "[" * 40 + "1" + "]" * 40
    assert error(tmp_path, f"a: &d {deep}\nb: {'[' * 30}*d{']' * 30}\n") == (
        "specs/models/x.yaml:2: expected lists and mappings nested at most 64 deep; found an alias that nests them "
        "71 deep on this line\n"
        "  fix: flatten the structure: no manifest field nests more than a few levels, and 64 is the most Ingot reads")


def test_an_alias_inside_the_value_it_names_is_refused(tmp_path):
    # PyYAML builds a list that contains itself, and walking it recursed until RecursionError
    assert error(tmp_path, "kind: model\nname: x\na: &r [1, *r]\n") == (
        "specs/models/x.yaml:3: expected an alias to a value written before it; found '*r' inside the value '&r' "
        "names, which would contain itself\n"
        "  fix: write the value out instead of the alias")


def test_a_file_past_one_mebibyte_is_refused_without_reading_it_all(tmp_path):
    text = "kind: model\nname: big\ndescription: '" + "a" * (2 << 20) + "'\n"
    assert error(tmp_path, text) == (
        "specs/models/x.yaml: expected a manifest of at most 1,048,576 bytes (1 MiB); found 2,097,190 bytes\n"
        "  fix: a manifest describes data and does not hold it: keep it under 1 MiB, and put records in files "
        "under data/ that a dataset's `glob:` reads")


SCALARS = {
    # Python reads at most 4,300 digits: PyYAML's int() raised ValueError
    "huge-integer": ("kind: model\nname: x\nhidden_size: " + "9" * 5000 + "\n",
                     "specs/models/x.yaml:3: hidden_size: expected an integer of at most 4,300 digits (the most "
                     "Python reads); found an integer of 5,000 digits\n"
                     "  fix: write the number meant; no field takes one that large, and each says its bound"),
    # the resolver takes it for a date; datetime.date() raised ValueError
    "impossible-date": ("kind: model\nname: x\ndescription: 2024-13-45\n",
                        "specs/models/x.yaml:3: description: expected a date (YYYY-MM-DD); found '2024-13-45', "
                        "which is not one\n"
                        "  fix: write a date (YYYY-MM-DD), or quote the value to keep it as text"),
    # explicit tags the safe constructor cannot apply: KeyError, ValueError, AttributeError before
    "bool-tag": ("kind: model\nname: x\ntie_embeddings: !!bool maybe\n",
                 "specs/models/x.yaml:3: tie_embeddings: expected true or false; found 'maybe', which is not one\n"
                 "  fix: write true or false, or quote the value to keep it as text"),
    "int-tag": ("kind: model\nname: x\nlayers: !!int two\n",
                "specs/models/x.yaml:3: layers: expected an integer; found 'two', which is not one\n"
                "  fix: write an integer, or quote the value to keep it as text"),
    "float-tag": ("kind: model\nname: x\nrope_theta: !!float ten\n",
                  "specs/models/x.yaml:3: rope_theta: expected a number; found 'ten', which is not one\n"
                  "  fix: write a number, or quote the value to keep it as text"),
    "timestamp-tag": ("kind: model\nname: x\ndescription: !!timestamp soon\n",
                      "specs/models/x.yaml:3: description: expected a date (YYYY-MM-DD); found 'soon', which is "
                      "not one\n"
                      "  fix: write a date (YYYY-MM-DD), or quote the value to keep it as text"),
    # a control character: PyYAML's ReaderError has no line, and its text said "position 19"
    "control-character": ("kind: model\nname: x\x1f\n",
                          "specs/models/x.yaml:2: expected printable text (YAML allows no control character but "
                          "tab and line breaks); found the character U+001F\n"
                          '  fix: remove it; to mean it, write the escape "\\x1f" inside double quotes'),
}


@pytest.mark.parametrize("text, expected", SCALARS.values(), ids=SCALARS.keys())
def test_scalars_pyyaml_cannot_construct(tmp_path, text, expected):
    assert error(tmp_path, text) == expected


def test_equals_and_merge_signs_as_values_are_text(tmp_path):
    (tmp_path / "x.yaml").write_text("a: =\nb: <<\n")
    assert read(tmp_path / "x.yaml", REL).data == {"a": "=", "b": "<<"}


def test_a_control_character_after_non_ascii_text_is_on_its_line(tmp_path):
    # libyaml counts the position in bytes: 'é' is two of them
    assert error(tmp_path, "kind: model\nname: café\ndescription: ééé\x07\n").splitlines()[0] == (
        "specs/models/x.yaml:3: expected printable text (YAML allows no control character but tab and line breaks); "
        "found the character U+0007")
