"""Read one YAML manifest safely, remembering the line of every key.

Reads: a `.yaml` file. Returns: plain Python data (dicts, lists, scalars) and a map
from field path (a tuple of keys and list indices) to its 1-based line, so that
every later error can point at the line the user wrote. Duplicate keys, which
PyYAML would silently collapse, are errors here; so are merge keys (`<<:`) and tags
(`!!python/...`), which would hide where a value came from or what it is.

A manifest is small and hand-written, so what no hand writes is refused before it is
composed, with one error naming the file: more than MAX_BYTES, lists and mappings nested
deeper than MAX_DEPTH (the C composer recurses on the C stack, and a deep enough
`[[[[...` crashes the process), and more than MAX_VALUES values once every alias is
counted as what it repeats (a 300-byte "billion laughs" of nested aliases otherwise
expands into billions of values, minutes and gigabytes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

MAX_BYTES = 1 << 20       # 1 MiB; the largest manifest Ingot ships is under 4 kB
MAX_DEPTH = 64            # lists and mappings inside each other; the shipped manifests nest 7 deep
MAX_VALUES = 100_000      # keys, values and list items, each alias counted as all it repeats

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()
_STD = "tag:yaml.org,2002:"
_PLAIN = {_STD + "map", _STD + "seq"}
# what the safe constructor makes of each scalar tag; `=` and `<<` as values are plain text
_SCALARS = {_STD + t: getattr(yaml.constructor.SafeConstructor, f"construct_yaml_{t}")
            for t in ("null", "bool", "int", "float", "binary", "timestamp")}
_TEXT = {_STD + "str", _STD + "value", _STD + "merge"}
_WHAT = {"null": "an empty value", "bool": "true or false", "int": "an integer", "float": "a number",
         "binary": "base64 data", "timestamp": "a date (YYYY-MM-DD)"}


@dataclass
class Document:
    """One parsed manifest: its data, its file (relative to the project) and key lines.

    A document with overlays merged over it (a profile's, then a pipeline variant's)
    remembers which paths each overlay wrote, so that an error there names the overlay's own
    path (`profiles.ci.steps...`, `variants.fast.steps...`).
    """

    file: str
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)
    profile: str | None = None
    overlaid: dict[tuple, tuple] = field(default_factory=dict)  # path written -> its overlay's base
    variant: str | None = None

    def line(self, path: tuple) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def field(self, path: tuple) -> str:
        """How an error names `path`: as written in the file, including `profiles.NAME.` or
        `variants.NAME.` when that overlay wrote it, or flagged with the profile and variant
        when only the merge broke it."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.overlaid:
                return fmt_path(self.overlaid[path[:n]] + path)
        merged = [f"profile '{self.profile}'"] * (self.profile is not None) + \
                 [f"variant '{self.variant}'"] * (self.variant is not None)
        if not merged:
            return fmt_path(path)
        return f"{fmt_path(path)} (with {' and '.join(merged)})" if path else f"with {' and '.join(merged)}"


def fmt_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read(path: Path, rel: str) -> Document:
    text = _text(path, rel)
    try:
        _scan(text, rel)
        node = yaml.compose(text, Loader=Loader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow anywhere
        raise _bad_character(exc, text, rel) from None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, rel) from None
    doc = Document(rel, None)
    doc.data = _build(node, (), doc) if node is not None else None
    doc.lines.setdefault((), 1)
    return doc


def _text(path: Path, rel: str) -> str:
    """The file as text, read no further than MAX_BYTES + 1 bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError.one(rel, None, "", "a readable file", f"{exc.strerror or exc}",
                            "check the file's permissions, or remove it from specs/") from None
    if len(raw) > MAX_BYTES:
        raise SpecError.one(rel, None, "", f"a manifest of at most {MAX_BYTES:,} bytes (1 MiB)",
                            f"{path.stat().st_size:,} bytes",
                            "a manifest describes data and does not hold it: keep it under 1 MiB, and put "
                            "records in files under data/ that a dataset's `glob:` reads")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise SpecError.one(rel, line, "", "UTF-8 text", f"the byte {exc.object[exc.start]:#04x}, which is not UTF-8",
                            "save the file as UTF-8") from None


@dataclass
class _Open:
    """A list or mapping the scan is inside: the values counted before it, its anchor, its
    nesting level, and the deepest level reached inside it."""

    before: int
    anchor: str | None
    level: int
    deepest: int


def _scan(text: str, rel: str) -> None:
    """Refuse a file nested deeper than MAX_DEPTH, one of more than MAX_VALUES values, and an
    alias inside the value it names, before anything is composed or built."""
    _Scan(rel).run(text)


class _Scan:
    """The parser's events, walked once: a flat stream (no recursion), in which an alias is one
    event, counted as the values and the nesting of what its anchor names."""

    def __init__(self, rel: str):
        self.rel, self.count = rel, 0
        self.stack: list[_Open] = []
        self.anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, nesting) of what it names

    def run(self, text: str) -> None:
        for event in yaml.parse(text, Loader=Loader):
            if isinstance(event, yaml.CollectionEndEvent):
                self._close()
            elif isinstance(event, (yaml.CollectionStartEvent, yaml.AliasEvent, yaml.ScalarEvent)):
                self._check(event, *self._size(event))

    def _size(self, event: yaml.Event) -> tuple[int, int]:
        """(values, nesting level reached) of one event."""
        if isinstance(event, yaml.CollectionStartEvent):
            level = len(self.stack) + 1
            self.stack.append(_Open(self.count, event.anchor, level, level))
            return 1, level
        if isinstance(event, yaml.AliasEvent):
            if any(o.anchor == event.anchor for o in self.stack):
                raise self._error(event, "an alias to a value written before it",
                                  f"'*{event.anchor}' inside the value '&{event.anchor}' names, which would contain "
                                  "itself", "write the value out instead of the alias")
            values, depth = self.anchors.get(event.anchor, (1, 0))  # an unknown one: the composer says so
            return values, len(self.stack) + depth
        if event.anchor is not None:
            self.anchors[event.anchor] = (1, 0)
        return 1, len(self.stack)

    def _close(self) -> None:
        done = self.stack.pop()
        if self.stack:
            self.stack[-1].deepest = max(self.stack[-1].deepest, done.deepest)
        if done.anchor is not None:
            self.anchors[done.anchor] = (self.count - done.before, done.deepest - done.level + 1)

    def _check(self, event: yaml.Event, values: int, reach: int) -> None:
        self.count += values
        if self.stack:
            self.stack[-1].deepest = max(self.stack[-1].deepest, reach)
        alias = isinstance(event, yaml.AliasEvent)
        if reach > MAX_DEPTH:
            raise self._error(event, f"lists and mappings nested at most {MAX_DEPTH} deep",
                              f"{'an alias that nests them' if alias else 'nesting'} {reach} deep on this line",
                              f"flatten the structure: no manifest field nests more than a few levels, and "
                              f"{MAX_DEPTH} is the most Ingot reads")
        if self.count > MAX_VALUES:
            how = f", where the alias '*{event.anchor}' repeats {values:,} values" if alias else ""
            raise self._error(event, f"at most {MAX_VALUES:,} values (keys, values and list items, each alias "
                                     "counted as every value it repeats)", f"{self.count:,} by this line{how}",
                              f"write the values out instead of nesting aliases in aliases, and keep a manifest "
                              f"under {MAX_VALUES:,} values: put records in files under data/ that a dataset's "
                              "`glob:` reads")

    def _error(self, event: yaml.Event, expected: str, found: str, fix: str) -> SpecError:
        return SpecError.one(self.rel, event.start_mark.line + 1, "", expected, found, fix)


def _bad_character(exc: yaml.reader.ReaderError, text: str, rel: str) -> SpecError:
    # libyaml counts the position in UTF-8 bytes, PyYAML's own reader in characters
    before = text.encode("utf-8")[: exc.position] if Loader is not yaml.SafeLoader else text[: exc.position]
    line = before.count(b"\n" if isinstance(before, bytes) else "\n") + 1
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return SpecError.one(rel, line, "", "printable text (YAML allows no control character but tab and line breaks)",
                         f"the character U+{code:04X}",
                         f'remove it; to mean it, write the escape "\\x{code:02x}" inside double quotes'
                         if code < 256 else "remove it")


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
    if node.tag in _TEXT:
        return node.value
    construct = _SCALARS.get(node.tag)
    if construct is None:  # a tag the safe loader refuses, e.g. `!!python/object`
        raise _tagged(node, doc, path)
    try:
        return construct(_constructor, node)
    except (ValueError, KeyError, AttributeError, TypeError, yaml.YAMLError):
        raise _unreadable(node, doc, path) from None


def _unreadable(node: yaml.ScalarNode, doc: Document, path: tuple) -> SpecError:
    """A scalar the resolver took for a number or date, or one tagged `!!int` and the like,
    that its constructor cannot read: `2024-13-45`, an integer of 5,000 digits, `!!int x`."""
    line, what = node.start_mark.line + 1, node.tag.replace(_STD, "")
    digits = sum(c.isdigit() for c in node.value)
    if what == "int" and digits > sys.get_int_max_str_digits() > 0:
        return SpecError.one(doc.file, line, fmt_path(path), f"an integer of at most "
                             f"{sys.get_int_max_str_digits():,} digits (the most Python reads)",
                             f"an integer of {digits:,} digits", "write the number meant; no field takes one that "
                             "large, and each says its bound")
    shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
    return SpecError.one(doc.file, line, fmt_path(path), _WHAT[what], f"'{shown}', which is not one",
                         f"write {_WHAT[what]}, or quote the value to keep it as text")


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
