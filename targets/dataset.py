"""Dataset builder: read sources, normalize, filter, dedup exactly, split by hash, write shards.

Reads: the files the compiler resolved for each source (`job.files`): the Python
documentation corpus (`pydoc_data/topics.py` and standard-library sources, parsed
with `ast`, never imported) and local `.txt` / `.jsonl` files. Writes:
`train-NNNNN.jsonl` and `validation-NNNNN.jsonl` shards of `{"id", "text", "source"}`
records, or `{"id", "instruction", "response", "source"}` when the sources map
instruction/response fields (at least one shard per split, possibly empty), and `stats.json`.
A pair is filtered, deduplicated and split by its canonical text (`canonical`).
"""

from __future__ import annotations

import ast
import codecs
import json
import sysconfig
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterator

import xxhash

from targets import BuildError, Job

OUTPUTS = ("train-*.jsonl", "validation-*.jsonl", "stats.json")
SPLITS = ("train", "validation")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def build(job: Job) -> dict:
    spec = job.spec
    writers = {s: ShardWriter(job.out, s, spec.shard_docs) for s in SPLITS}
    removed: Counter = Counter()
    per_source: list[dict] = []
    seen: set[int] = set()
    total = 0
    for i, (source, paths) in enumerate(zip(spec.sources, job.files)):
        count = 0
        for value, origin in read_source(source, paths):
            count += 1
            fields = {"text": value} if isinstance(value, str) else dict(zip(("instruction", "response"), value))
            fields = {k: normalize(v, spec.normalize) for k, v in fields.items()}
            text = canonical(fields)
            reason = rejected(text, spec.filters)
            if reason is None and spec.dedup == "exact":
                digest = xxhash.xxh3_64_intdigest(text.encode("utf-8"))
                reason = "exact_duplicate" if digest in seen else None
                seen.add(digest)
            if reason:
                removed[reason] += 1
                continue
            writers[split_of(text, spec.split)].write(text, fields, origin)
        per_source.append({"source": i, "type": source.type, "documents": count})
        total += count
        job.log(f"source {i} ({source.type}): {count:,} documents read")
    stats = {
        "documents_in": total,
        "by_source": per_source,
        "removed": {k: removed[k] for k in ("min_chars", "max_chars", "exact_duplicate")},
        "documents_out": sum(w.docs for w in writers.values()),
        "splits": {s: w.close() for s, w in writers.items()},
    }
    (job.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    job.log(f"{stats['documents_out']:,} of {total:,} documents kept "
            f"({stats['splits']['train']['documents']:,} train, {stats['splits']['validation']['documents']:,} validation)")
    return stats


def normalize(text: str, form: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if form != "none":
        text = unicodedata.normalize(form, text)
    return text.strip()


def canonical(fields: dict[str, str]) -> str:
    """The one text a record is filtered, deduplicated, split and named by."""
    if "text" in fields:
        return fields["text"]
    return fields["instruction"] + "\n\n" + fields["response"]


def rejected(text: str, filters) -> str | None:
    """The name of the first filter that drops `text`, or None."""
    if len(text) < filters.min_chars:
        return "min_chars"
    if filters.max_chars is not None and len(text) > filters.max_chars:
        return "max_chars"
    return None


def split_of(text: str, split) -> str:
    """A document's side depends only on its own text and the salt, never on the others."""
    h = xxhash.xxh3_64_intdigest(text.encode("utf-8"), seed=xxhash.xxh32_intdigest(split.salt.encode("utf-8")))
    return "validation" if h / 2**64 < split.validation else "train"


class ShardWriter:
    """Writes records to `<split>-00000.jsonl`, `<split>-00001.jsonl`, ... of `per_shard` each."""

    def __init__(self, out: Path, split: str, per_shard: int):
        self.out, self.split, self.per_shard = out, split, per_shard
        self.docs = self.chars = 0
        self.shards: list[str] = []
        self.file = None
        self._next_shard()

    def _next_shard(self) -> None:
        if self.file:
            self.file.close()
        name = f"{self.split}-{len(self.shards):05d}.jsonl"
        self.shards.append(name)
        self.file = open(self.out / name, "w", encoding="utf-8")

    def write(self, text: str, fields: dict[str, str], origin: str) -> None:
        if self.docs and self.docs % self.per_shard == 0:
            self._next_shard()
        record = {"id": xxhash.xxh3_64_hexdigest(text.encode("utf-8")), **fields, "source": origin}
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.docs += 1
        self.chars += len(text)

    def close(self) -> dict:
        self.file.close()
        return {"documents": self.docs, "chars": self.chars, "shards": self.shards}


# ---------------------------------------------------------------- sources

def read_source(source, paths: list[Path]) -> Iterator[tuple[str | tuple[str, str], str]]:
    """(text, origin) pairs of one source, in file order; ((instruction, response), origin)
    when the source maps instruction/response fields."""
    for path in paths:
        if source.type == "pydocs":
            yield from (_topics(path) if path.name == "topics.py" and path.parent.name == "pydoc_data"
                        else _docstrings(path))
        elif path.suffix == ".txt":
            yield _read_text(path), path.name
        else:
            yield from _jsonl(path, source.fields)


def _read_text(path: Path) -> str:
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # editors on Windows add one
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BuildError(_not_utf8(path, line, data[exc.start])) from None


def _not_utf8(path: Path, line: int, byte: int) -> str:
    return f"{path}:{line}: expected UTF-8 text; found the byte {byte:#04x} (re-encode the file as UTF-8)"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, streamed: a JSONL file can be larger than memory."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BuildError(_not_utf8(path, n, raw[exc.start])) from None


def _jsonl(path: Path, fields) -> Iterator[tuple[str | tuple[str, str], str]]:
    names = ("instruction", "response") if fields.chat() else ("text",)
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise BuildError(f"{path}:{n}: expected one JSON object per line; found invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise BuildError(f"{path}:{n}: expected one JSON object per line; found {_json_type(record)}")
        values = tuple(_field(record, getattr(fields, role), role, path, n) for role in names)
        yield values[0] if len(values) == 1 else values, f"{path.name}:{n}"


def _field(record: dict, field: str, role: str, path: Path, n: int) -> str:
    if not isinstance(record.get(field), str):
        found = (f"{_json_type(record[field])} there" if field in record else
                 f"no such field (the record has {', '.join(repr(k) for k in record) or 'no fields'})")
        raise BuildError(f"{path}:{n}: expected a string in field '{field}'; found {found}; "
                         f"map another field with `fields: {{{role}: NAME}}`")
    return record[field]


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names[type(value)]


def _topics(path: Path) -> Iterator[tuple[str, str]]:
    """The `topics` dict of pydoc_data/topics.py, read as a literal."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        # `topics = {...}`; an annotated `topics: dict[str, str] = {...}` would do as well
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if getattr(target, "id", "") == "topics" and isinstance(node.value, ast.Dict):
            for name, text in sorted(ast.literal_eval(node.value).items()):
                yield text, f"pydoc:{name}"
            return
    raise BuildError(f"{path}: expected a `topics = {{...}}` dict literal; found none "
                     f"(this CPython's pydoc_data differs; set `topics: false` on the pydocs source)")


def _docstrings(path: Path) -> Iterator[tuple[str, str]]:
    """Docstrings of a module, its classes and functions, each headed by what it documents."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if doc := ast.get_docstring(tree):
        yield f"Module {module}\n\n{doc}", f"doc:{module}"
    stack = [(module, node) for node in tree.body]
    while stack:
        prefix, node = stack.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{node.name}"
            if doc := ast.get_docstring(node):
                head = f"class {name}" if isinstance(node, ast.ClassDef) else f"def {name}({ast.unparse(node.args)})"
                yield f"{head}\n\n{doc}", f"doc:{name}"
            if isinstance(node, ast.ClassDef):
                stack.extend((name, child) for child in node.body)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(STDLIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
