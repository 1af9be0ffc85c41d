"""Typed input names: what the compiler composes and the builders read, one type for both."""

from __future__ import annotations

import pytest

from compiler.inputs import DATASET, TOKENIZER, Input, Role, export, of_role, teacher, tokens


def test_text_form_round_trips_and_is_what_manifests_show():
    for i, text in ((TOKENIZER, "tokenizer"), (tokens("pydocs"), "tokens.pydocs"),
                    (teacher("teacher-a"), "teacher.teacher-a"), (export("gguf"), "export.gguf")):
        assert str(i) == text and Input.parse(text) == i


def test_a_role_is_checked_when_the_name_is_made():
    with pytest.raises(ValueError, match="'toknizer' is not a valid Role"):
        Input.parse("toknizer")
    with pytest.raises(ValueError, match="input role 'tokens' needs a name"):
        Input(Role.TOKENS)
    with pytest.raises(ValueError, match="input role 'tokenizer' takes no name"):
        Input(Role.TOKENIZER, "x")


def test_of_role_picks_the_named_inputs_by_name_in_order():
    found = of_role({TOKENIZER: 1, tokens("b"): 2, tokens("a"): 3, DATASET: 4, teacher("t"): 5}, Role.TOKENS)
    assert list(found.items()) == [("a", 3), ("b", 2)]
