"""Turn pydantic's validation errors into `Problem`s a person can act on.

Each pydantic error location is mapped back to the YAML path (dropping the tags of
discriminated unions) and so to the line; each error type gets a plain-words
"expected", the value found, and a fix (a did-you-mean for unknown keys).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import Problem, did_you_mean, one_of
from .yamlfile import Document, fmt_path

EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "finite_number": "a finite number",
}


def found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'"
    return json.dumps(value) if value is None or isinstance(value, (bool, int, float)) else repr(value)


def problems(exc: ValidationError, cls: type[BaseModel], doc: Document) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        path, model = _yaml_path(doc.data, err["loc"], cls)
        out.append(_problem(err, path, model, doc))
    return out


def _problem(err: dict, path: tuple, model: Any, doc: Document) -> Problem:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    expected, fix, shown = EXPECTED.get(kind), "", found(value)
    if kind == "missing":
        expected, shown, fix = "a value for this required field", "nothing", f"add `{path[-1]}:`"
    elif kind == "extra_forbidden":
        known = list(getattr(model, "model_fields", {}))
        expected = "a known key (" + ", ".join(known) + ")" if known else "no key here"
        shown = f"unknown key '{path[-1]}'"
        fix = did_you_mean(path[-1], known) or "remove it"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx.get("discriminator", "'kind'").strip("'")
        tags = [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",") if t.strip()]
        path = path + (tag,)
        expected = f"`{tag}` {one_of(tags)}"
        shown = found(ctx.get("tag")) if kind == "union_tag_invalid" else "nothing"
        fix = did_you_mean(ctx.get("tag", ""), tags) if kind == "union_tag_invalid" else f"add `{tag}:`"
    elif kind == "literal_error":
        expected = "one of " + ctx.get("expected", "")
        options = [o.strip().strip("'") for o in ctx.get("expected", "").replace(" or ", ",").split(",")]
        fix = did_you_mean(value, options) if isinstance(value, str) else ""
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        expected, fix = f"a number {sign} {bound}", f"use a value {sign} {bound}"
    elif kind == "string_pattern_mismatch":
        expected = "a name of lowercase letters, digits, '-' and '_'" if "a-z0-9" in ctx.get("pattern", "") \
            else f"a string matching {ctx.get('pattern')}"
        if "." in ctx.get("pattern", ""):
            expected += ", optionally `pipeline.step`"
    elif kind in ("too_short", "too_long"):
        n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        limit = "at least" if kind == "too_short" else "at most"
        expected = f"{limit} {n} {'item' if n == 1 else 'items'}" if not isinstance(value, str) \
            else f"{limit} {n} characters"
        shown = f"{len(value)}" if hasattr(value, "__len__") else shown
    if expected is None:
        expected = err["msg"][0].lower() + err["msg"][1:]
    return Problem(doc.file, doc.line(path), fmt_path(path), expected, shown, fix)


def _yaml_path(data: Any, loc: tuple, cls: type) -> tuple[tuple, Any]:
    """The path of `loc` in the YAML data, and the model class holding its last key."""
    path: list = []
    node, tp, parent = data, cls, None
    for part in loc:
        tp = _unwrap(tp)
        members = _union_members(tp)
        if members is not None:
            tagged = [m for m in members if part in _tags(m)]
            if tagged and not (isinstance(node, dict) and part in node):
                tp = tagged[0]  # pydantic names the union member; YAML has no such level
                continue
            tp = _by_data(members, node)
        parent = tp
        path.append(part)
        tp = _child_type(tp, part)
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
    return tuple(path), parent if is_model else None


def _by_data(members: list, node: Any) -> Any:
    if isinstance(node, dict):
        tags = {v for v in (node.get("kind"), node.get("type")) if isinstance(v, str)}
        for m in members:
            if tags & _tags(m):
                return m
    return members[0]


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
            else:
                return tp
        else:
            return tp


def _union_members(tp: Any) -> list | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
        if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
            return members
    return None


def _tags(model: type) -> set:
    tags = set()
    for fname in ("kind", "type"):
        info = model.model_fields.get(fname)
        if info is not None and typing.get_origin(info.annotation) is typing.Literal:
            tags |= set(typing.get_args(info.annotation))
    return tags


def _child_type(tp: Any, part: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(part)
        return info.annotation if info else None
    origin = typing.get_origin(tp)
    if origin is dict:
        return typing.get_args(tp)[1]
    if origin in (list, tuple):
        return typing.get_args(tp)[0]
    return None
