"""Read one YAML manifest safely, remembering the line of every key.

Reads: a `.yaml` file. Returns: plain Python data (dicts, lists, scalars) and a map
from field path (a tuple of keys and list indices) to its 1-based line, so that
every later error can point at the line the user wrote. Duplicate keys, which
PyYAML would silently collapse, are errors here; so are merge keys (`<<:`) and tags
(`!!python/...`), which would hide where a value came from or what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()
_STD = "tag:yaml.org,2002:"
_PLAIN = {_STD + "map", _STD + "seq"}


@dataclass
class Document:
    """One parsed manifest: its data, its file (relative to the project) and key lines.

    A document with a profile overlaid over it (`profile` set) remembers which paths
    the overlay wrote, so that an error there names the overlay's own path.
    """

    file: str
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)
    profile: str | None = None
    overlaid: set[tuple] = field(default_factory=set)

    def line(self, path: tuple) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def field(self, path: tuple) -> str:
        """How an error names `path`: as written in the file, including `profiles.NAME.` when
        the selected overlay wrote it, or flagged with the profile when only the merge broke it."""
        path = tuple(path)
        if self.profile is None:
            return fmt_path(path)
        if any(path[:n] in self.overlaid for n in range(1, len(path) + 1)):
            return fmt_path(("profiles", self.profile) + path)
        return f"{fmt_path(path)} (with profile '{self.profile}')" if path else f"with profile '{self.profile}'"


def fmt_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read(path: Path, rel: str) -> Document:
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=Loader)
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise SpecError.one(rel, line, "", "UTF-8 text", f"the byte {exc.object[exc.start]:#04x}, which is not UTF-8",
                            "save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, rel) from None
    doc = Document(rel, None)
    doc.data = _build(node, (), doc) if node is not None else None
    doc.lines.setdefault((), 1)
    return doc


def _syntax_error(exc: yaml.YAMLError, rel: str) -> SpecError:
    """PyYAML says `context` (what it was reading, where it started) and `problem` (what
    broke, where): both lines matter, since an unclosed bracket is noticed lines later."""
    mark, start = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    line, context = mark and mark.line + 1, getattr(exc, "context", None) or ""
    problem = (getattr(exc, "problem", None) or str(exc)).removeprefix("but ").removeprefix("found ")
    if context == "expected a single document in the stream":
        return SpecError.one(rel, line, "", "a single document", problem,
                             "keep one manifest per file, without `---` between documents")
    if "tab character" in problem:  # the context ("scanning a plain scalar") would only distract
        return SpecError.one(rel, line, "", "valid YAML", f"a syntax error: {problem}", "indent with spaces, never tabs")
    if context and start and mark and start.line != mark.line:
        problem += f" ({context} that starts on line {start.line + 1})"
    return SpecError.one(rel, line, "", "valid YAML", f"a syntax error: {problem}",
                         "check the indentation, quoting and brackets on this line and the ones above it")


def _scalar(node: yaml.ScalarNode, doc: Document, path: tuple) -> Any:
    if node.tag == _STD + "str":
        return node.value
    try:
        return _constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:  # a tag the safe loader refuses, e.g. `!!python/object`
        raise _tagged(node, doc, path) from None


def _tagged(node: yaml.Node, doc: Document, path: tuple) -> SpecError:
    return SpecError.one(doc.file, node.start_mark.line + 1, fmt_path(path), "a plain value (text, number, "
                         "true/false, list or mapping)", f"a value tagged '{node.tag.replace(_STD, '!!')}'",
                         "remove the tag; manifests are data, never code")


def _key(key_node: yaml.Node, doc: Document, path: tuple) -> Any:
    line = key_node.start_mark.line + 1
    if key_node.tag == _STD + "merge":  # `<<:` merges would hide where a value came from
        raise SpecError.one(doc.file, line, fmt_path(path), "plain keys", "a YAML merge key '<<'",
                            "write the keys out, or use profiles")
    if not isinstance(key_node, yaml.ScalarNode):
        raise SpecError.one(doc.file, line, fmt_path(path), "a plain key",
                            "a list as a key" if isinstance(key_node, yaml.SequenceNode) else "a mapping as a key",
                            "use a plain word as the key")
    return _scalar(key_node, doc, path)


def _build(node: yaml.Node, path: tuple, doc: Document) -> Any:
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN:
        raise _tagged(node, doc, path)  # PyYAML would drop a tag on a list or mapping without a word
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _key(key_node, doc, path)
            if key in out:
                raise SpecError.one(doc.file, key_node.start_mark.line + 1, fmt_path(path + (key,)),
                                    "each key once", f"'{key}' again (first on line {doc.lines[path + (key,)]})",
                                    "remove or merge one of them: YAML would silently keep only the last")
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            doc.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_build(item, path + (i,), doc))
        return items
    return _scalar(node, doc, path)
