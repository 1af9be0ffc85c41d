"""Turn pydantic's validation errors into `Problem`s a person can act on.

Each pydantic error location is mapped back to the YAML path (dropping the tags of
discriminated unions) and so to the line; each error type gets a plain-words
"expected", the value found, and a fix where one is known (a did-you-mean for
unknown keys and choices, the meaning of a missing field, a valid spelling of a name).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import Problem, did_you_mean, one_of
from .yamlfile import Document

EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "finite_number": "a finite number", "int_parsing_size": "an integer",
}
LONG_INT = 10**18  # an integer this large is shown by its number of digits, not its digits


def found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'"
    if value is None:
        return "an empty value"  # `key:` with nothing after it
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LONG_INT:
        return f"{'-' if value < 0 else ''}an integer of {len(str(abs(value))):,} digits"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a number (.nan)" if math.isnan(value) else \
            f"{'minus ' if value < 0 else ''}infinity (.inf, or a number past a float's range)"
    return json.dumps(value) if isinstance(value, (bool, int, float)) else f"{value} (a {type(value).__name__})"


def problems(exc: ValidationError, cls: type[BaseModel], doc: Document) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        if _echo(err):
            continue
        # a bad dict key (a step name) comes as `loc + ("[key]",)`: the key's own line is the place
        loc = err["loc"][:-1] if err["loc"][-1:] == ("[key]",) else err["loc"]
        path, model, tp = _yaml_path(doc.data, loc, cls)
        out.append(_problem(err, path, model, tp, doc))
    return out


def _echo(err: dict) -> bool:
    """A list that is long enough but counted short only because some item failed: pydantic
    reports it too, and "expected at least 1 item; found 1" would only confuse."""
    value, least = err.get("input"), err.get("ctx", {}).get("min_length")
    return err["type"] == "too_short" and hasattr(value, "__len__") and least is not None and len(value) >= least


def _problem(err: dict, path: tuple, model: Any, tp: Any, doc: Document) -> Problem:
    value, ctx = err.get("input"), err.get("ctx", {})
    expected, shown, fix = EXPECTED.get(err["type"]), found(value), ""
    explain = _EXPLAIN.get(err["type"])
    if explain is not None:
        expected, shown, fix, path = explain(value, ctx, path, model, tp)
    if expected is None:
        expected = err["msg"][0].lower() + err["msg"][1:]
    return Problem(doc.file, doc.line(path), doc.field(path), expected, shown, fix)


def _written(model) -> dict:
    """A model's fields by the key a manifest writes: the alias where there is one (`from`)."""
    return {info.alias or name: info for name, info in getattr(model, "model_fields", {}).items()}


def _missing(value, ctx, path, model, tp):
    # the field's docstring says what the value means, which is what someone adding it needs
    info = _written(model).get(path[-1])
    about = (info.description or "").split("\n")[0].split(". ")[0].rstrip(".") if info else ""
    fix = f"add `{path[-1]}:`" + (f" ({about})" if about else "")
    return "a value for this required field", "nothing", fix, path


def _extra(value, ctx, path, model, tp):
    known = list(_written(model))
    expected = "a known key (" + ", ".join(known) + ")" if known else "no key here"
    return expected, f"unknown key '{path[-1]}'", did_you_mean(path[-1], known) or "remove it", path


def _union_tag(value, ctx, path, model, tp):
    # pydantic names the tag only when it is wrong; the choices come from the union itself
    tag = ctx.get("discriminator", "'kind'").strip("'")
    tags = sorted(t for m in (_union_members(_unwrap(tp)) or []) for t in _tags(m)) \
        or [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",") if t.strip()]
    if "tag" not in ctx:
        return one_of(tags), "nothing", "add " + _either_code(f"{tag}: {t}" for t in tags), path + (tag,)
    return one_of(tags), found(ctx["tag"]), did_you_mean(ctx["tag"], tags), path + (tag,)


def _either_code(items) -> str:
    """`a`, `a` or `b`, `a`, `b` or `c`: choices written as code."""
    items = [f"`{i}`" for i in items]
    return " or ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _value_error(value, ctx, path, model, tp):
    # A validator of ours words its rule as an instruction, with a count of what it saw
    # ("give exactly one of `step`, `path` or `hub` (found 2)"): the rule is what was
    # expected, and the keys the mapping does give say more than the count.
    rule = re.sub(r"\s*\(found [^)]*\)$", "", str(ctx.get("error", "")))
    expected = re.sub(r"^give ", "", rule)
    if not isinstance(value, dict):
        return expected, found(value), "", path
    given = [f"`{k}`" for k, v in value.items() if v is not None]
    shown = " and ".join([", ".join(given[:-1]), given[-1]] if len(given) > 1 else given)
    return expected, shown or ("an empty mapping" if not value else "only empty values"), "", path


def _literal(value, ctx, path, model, tp):
    options = [o.strip().strip("'") for o in ctx.get("expected", "").replace(" or ", ",").split(",")]
    fix = did_you_mean(value, options) if isinstance(value, str) else ""
    return "one of " + ctx.get("expected", ""), found(value), fix, path


def _bound(value, ctx, path, model, tp):
    sign = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    op, bound = next(iter(ctx.items()))
    bound = f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"  # 131,072; 0 rather than 0.0
    return f"a number {sign[op]} {bound}", found(value), f"use a value {sign[op]} {bound}", path


def _finite(value, ctx, path, model, tp):
    return "a finite number", found(value), "write a number; .inf, .nan and numbers past about 1.8e308 are not", path


def _float_type(value, ctx, path, model, tp):
    if isinstance(value, int) and not isinstance(value, bool):  # an integer too large for a float
        return "a number within a float's range (about ±1.8e308)", found(value), "", path
    return "a number", found(value), "", path


def _pattern(value, ctx, path, model, tp):
    pattern = ctx.get("pattern", "")
    if "a-z0-9" not in pattern:
        return f"a string matching {pattern}", found(value), "", path
    expected = "a name of lowercase letters, digits, '-' and '_'"
    if "\\.)?" in pattern:  # the pipeline is optional: `step` or `pipeline.step`
        expected += ", or `pipeline.step`"
    elif "\\." in pattern:
        expected = "`pipeline.step`: names of lowercase letters, digits, '-' and '_'"
    name = re.sub(r"[^a-z0-9_.-]+", "-", str(value).lower()).strip("-_.")
    fix = f"write '{name}'" if name and re.match(pattern, name) else ""
    return expected, found(value), fix, path


def _length(value, ctx, path, model, tp):
    short = "min_length" in ctx
    n = ctx.get("min_length") if short else ctx.get("max_length")
    unit = "character" if isinstance(value, str) else "item"
    shown = _count(len(value), unit) if hasattr(value, "__len__") else found(value)
    return f"{'at least' if short else 'at most'} {_count(n, unit)}", shown, "", path


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


_EXPLAIN = {
    "missing": _missing, "extra_forbidden": _extra, "union_tag_invalid": _union_tag,
    "union_tag_not_found": _union_tag, "literal_error": _literal, "greater_than_equal": _bound,
    "greater_than": _bound, "less_than_equal": _bound, "less_than": _bound,
    "string_pattern_mismatch": _pattern, "too_short": _length, "too_long": _length,
    "value_error": _value_error, "finite_number": _finite, "float_type": _float_type,
}


def _yaml_path(data: Any, loc: tuple, cls: type) -> tuple[tuple, Any, Any]:
    """The path of `loc` in the YAML data, the model class holding its last key, and the
    declared type at `loc` (for a discriminated union: the union, to list its tags)."""
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
    return tuple(path), parent if is_model else None, tp


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
        info = _written(tp).get(part)
        return info.annotation if info else None
    origin = typing.get_origin(tp)
    if origin is dict:
        return typing.get_args(tp)[1]
    if origin in (list, tuple):
        return typing.get_args(tp)[0]
    return None
