"""Read one YAML manifest safely, remembering the line of every key.

Reads: a `.yaml` file. Returns: plain Python data (dicts, lists, scalars) and a map
from field path (a tuple of keys and list indices) to its 1-based line, so that
every later error can point at the line the user wrote. Duplicate keys, which
PyYAML would silently collapse, are errors here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()


@dataclass
class Document:
    """One parsed manifest: its data, its file (relative to the project) and key lines."""

    file: str
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, path: tuple) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def fmt_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read(path: Path, rel: str) -> Document:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError.one(rel, line, "", "valid YAML", problem,
                            "check the indentation and quoting on that line") from None
    doc = Document(rel, None)
    doc.data = _build(node, (), doc) if node is not None else None
    doc.lines.setdefault((), 1)
    return doc


def _scalar(node: yaml.ScalarNode) -> Any:
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    return _constructor.construct_object(node, deep=True)


def _build(node: yaml.Node, path: tuple, doc: Document) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key == "<<":
                raise SpecError.one(doc.file, key_node.start_mark.line + 1, fmt_path(path),
                                    "plain keys", "a YAML merge key '<<'", "write the keys out, or use profiles")
            if key in out:
                raise SpecError.one(doc.file, key_node.start_mark.line + 1, fmt_path(path + (key,)),
                                    "each key once", f"'{key}' again (first on line {doc.lines[path + (key,)]})",
                                    "remove or rename one of them")
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            doc.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_build(item, path + (i,), doc))
        return items
    return _scalar(node)
