"""Dataset builder: read sources, normalize, filter, dedup (exact and near), split by hash, write shards.

Reads: the files the compiler resolved for each source (`job.files`): the Python
documentation corpus (`pydoc_data/topics.py` and standard-library sources, parsed with
`ast`, never imported) and local `.txt` / `.jsonl` files, streamed in batches of BATCH
records; for a `type: failures` source, `items.jsonl` of its evaluate step's entry
(`job.inputs[failures(STEP)]`: see `FailedItems`); and, when `filters` counts tokens, the
tokenizer entry (`job.inputs[TOKENIZER]`).
Writes: `train-NNNNN.jsonl` and `validation-NNNNN.jsonl` shards of `{"id", "text", "source"}`
records, or `{"id", "instruction", "response", "source"}` when the sources map
instruction/response fields, with `meta` (domain, difficulty, source) where the sources map
those, or (source, index, scoring, passed, verdict) for a failed item (at least one shard per
split, possibly empty); `stats.json` (documents in and out,
per source, every filter's removals, exact and near duplicates, skipped bad records, output
per domain and origin, identified languages); and with `near_dedup`, `dedup.json` (see
`near_dedup`). A record is filtered, deduplicated and split by its canonical text
(`canonical`). Near-dedup needs every document before it can decide: kept records are
staged in the work folder and written in a second pass. Its hashing runs in local processes
(`near_dedup.workers`), or with `workers` > 1 as Ray tasks (`neardup.RayTasks`): the same bytes.
"""

from __future__ import annotations

import ast
import codecs
import json
import math
import os
import sysconfig
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import xxhash

from compiler.inputs import TOKENIZER
from compiler.inputs import failures as failures_input
from targets import BuildError, Job, StatusLine, neardup
from targets.filters import REASONS, DocumentFilter

OUTPUTS = ("train-*.jsonl", "validation-*.jsonl", "stats.json")
OPTIONAL_OUTPUTS = ("dedup.json",)  # with near_dedup
BATCH = 2048          # records filtered (and near-dup hashed) together
SAMPLE_PAIRS = 20     # near-duplicate pairs shown in dedup.json
SNIPPET = 200         # characters of each sample pair's texts
BAD_RECORDS = ("invalid_utf8", "invalid_json", "not_an_object", "missing_field")
SPLITS = ("train", "validation")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def build(job: Job) -> dict:
    index = near_index(job)
    try:
        return curate(job, index)
    finally:
        if index is not None:  # stops its workers (and a local Ray) when the build fails
            index.close()


def near_index(job: Job) -> neardup.Index | None:
    """The near-duplicate index, hashing chunks as Ray tasks with `workers` > 1, else in
    `near_dedup.workers` local processes (default one per core); None without near_dedup."""
    spec, near = job.spec, job.spec.near_dedup
    if near is None:
        if spec.workers > 1:
            job.log(f"workers: {spec.workers} shards only near-dedup's hashing over Ray, and this dataset has no "
                    f"near_dedup: nothing to shard, built here")
        return None
    if spec.workers > 1 and near.workers is not None:
        job.log(f"near_dedup.workers ({near.workers} local processes) is not used: workers: {spec.workers} "
                f"hashes on Ray")
    executor = neardup.RayTasks(spec.workers, job.log) if spec.workers > 1 else near.workers or os.cpu_count() or 1
    job.work.mkdir(parents=True, exist_ok=True)
    params = neardup.Params(near.threshold, near.num_perm, near.shingle, near.ngram, near.seed, near.verify)
    return neardup.Index(params, job.work / "shingles.bin", executor)


def curate(job: Job, index: neardup.Index | None) -> dict:
    """Pass 1 over the sources, and with near-dedup pass 2 over the staged documents."""
    spec = job.spec
    filters = DocumentFilter(spec.filters, job.inputs.get(TOKENIZER))
    if index is not None:
        staged = open(job.work / "kept.jsonl", "w", encoding="utf-8")  # pass 1 -> pass 2
    writers = {s: ShardWriter(job.out, s, spec.shard_docs) for s in SPLITS}
    removed: Counter = Counter({r: 0 for r in (*REASONS, "exact_duplicate")})
    skipped: Counter = Counter({r: 0 for r in BAD_RECORDS}) if spec.bad_records == "skip" else None
    per_source: list[dict] = []
    seen: set[int] = set()
    total = 0
    progress = StatusLine()
    failed: list[FailedItems] = []
    for i, (source, paths) in enumerate(zip(spec.sources, job.files)):
        count = kept = 0
        reader = read_source(source, paths, skipped, job.inputs)
        for batch in batches(reader):
            count += len(batch)
            fresh: list[str] = []  # kept texts of this batch, for the near-duplicate index
            records = [(normalized(value, spec.normalize), origin, meta) for value, origin, meta in batch]
            texts = [canonical(fields) for fields, _, _ in records]
            for (fields, origin, meta), text, reason in zip(records, texts, filters.reasons(texts)):
                if reason is None and spec.dedup == "exact":
                    digest = xxhash.xxh3_64_intdigest(text.encode("utf-8"))
                    reason = "exact_duplicate" if digest in seen else None
                    seen.add(digest)
                if reason:
                    removed[reason] += 1
                    continue
                kept += 1
                if index is None:
                    writers[split_of(text, spec.split)].write(text, fields, origin, meta)
                else:
                    staged.write(json.dumps([fields, origin, meta], ensure_ascii=False) + "\n")
                    fresh.append(text)
            if fresh:
                index.add(fresh)
            done = total + count
            rate = done / (time.perf_counter() - progress.t0)
            progress.show(f"[{job.task}] read {done:,} documents, {rate:,.0f}/s")
        per_source.append({"source": i, "type": source.type, "documents": count, "kept": kept})
        total += count
        progress.close()
        job.log(f"source {i} ({source.type}): {count:,} documents read, {kept:,} kept "
                f"({total / max(time.perf_counter() - progress.t0, 1e-9):,.0f} documents/s)")
        if isinstance(reader, FailedItems):
            per_source[-1]["items"] = reader.items  # of the evaluate step: the documents are its failures
            failed.append(reader)
            if not count:
                job.log(reader.nothing())
    if failed and total == 0:  # nothing to train on: say why, rather than leave an empty dataset to a train step
        raise BuildError("; ".join(f.nothing() for f in failed) + ": the dataset would have no records (evaluate "
                         "a weaker model, or a harder prompt set, or add another source)")
    stats = {"documents_in": total, "by_source": per_source}
    if index is not None:
        staged.close()
        stats["near_dedup"] = near_dedup(job, index, writers, removed)
    stats.update(removed=dict(removed), documents_out=sum(w.docs for w in writers.values()),
                 splits={s: w.close() for s, w in writers.items()},
                 by_domain=_counts(writers, "domain"), by_origin=_counts(writers, "source"),
                 languages=dict(sorted(filters.languages.items())))
    if skipped is not None:
        stats["skipped"] = dict(skipped)
    (job.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    splits = stats["splits"]
    job.log(f"{stats['documents_out']:,} of {total:,} documents kept ({splits['train']['documents']:,} train, "
            f"{splits['validation']['documents']:,} validation)")
    return stats


def batches(items, size: int = BATCH) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def near_dedup(job: Job, index, writers: dict, removed: Counter) -> dict:
    """Pass 2: cluster the staged documents, write the first of each cluster, and the report."""
    started = time.perf_counter()
    result = index.result()
    keep = result.keep
    samples = {int(i) for pair in result.pairs[:SAMPLE_PAIRS] for i in pair}
    texts: dict[int, tuple[str, str]] = {}
    with open(job.work / "kept.jsonl", encoding="utf-8") as staged:
        for n, line in enumerate(staged):
            fields, origin, meta = json.loads(line)
            text = canonical(fields)
            if n in samples:
                texts[n] = (xxhash.xxh3_64_hexdigest(text.encode("utf-8")), text)
            if keep[n]:
                writers[split_of(text, job.spec.split)].write(text, fields, origin, meta)
            else:
                removed["near_duplicate"] += 1
    near = job.spec.near_dedup
    report = {
        "params": {**near.model_dump(exclude={"workers"}), "bands": result.bands, "rows": result.rows},
        "documents": len(keep), "candidate_pairs": result.candidates,
        "pairs": len(result.pairs), "clusters": sum(result.sizes.values()),
        "cluster_sizes": {str(k): v for k, v in sorted(result.sizes.items())},
        "removed": int((~keep).sum()),
        "sample_pairs": [{"jaccard": None if math.isnan(x) else round(float(x), 4),
                          **{f"{side}_{k}": v for side, d in (("a", int(i)), ("b", int(j)))
                             for k, v in (("id", texts[d][0]), ("kept", bool(keep[d])),
                                          ("text", texts[d][1][:SNIPPET]))}}
                         for (i, j), x in zip(result.pairs[:SAMPLE_PAIRS], result.jaccard[:SAMPLE_PAIRS])],
    }
    (job.out / "dedup.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for name in ("kept.jsonl", "shingles.bin"):
        (job.work / name).unlink(missing_ok=True)
    job.log(f"near-duplicates: {report['removed']:,} of {len(keep):,} documents in {report['clusters']:,} "
            f"clusters ({result.bands} bands x {result.rows} rows, {result.candidates:,} candidate pairs) "
            f"in {time.perf_counter() - started:.1f} s")
    return {k: report[k] for k in ("documents", "candidate_pairs", "pairs", "clusters", "removed")}


def _counts(writers: dict, key: str) -> dict[str, int]:
    """Output documents per value of a metadata field (domain, source), over both splits."""
    total: Counter = Counter()
    for w in writers.values():
        total.update(w.meta_counts[key])
    return dict(sorted(total.items()))


def normalized(value, form: str) -> dict[str, str]:
    """A source value (text, or an (instruction, response) pair) as normalized fields."""
    fields = {"text": value} if isinstance(value, str) else dict(zip(("instruction", "response"), value))
    return {k: normalize(v, form) for k, v in fields.items()}


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


def split_of(text: str, split) -> str:
    """A document's side depends only on its own text and the salt, never on the others."""
    h = xxhash.xxh3_64_intdigest(text.encode("utf-8"), seed=xxhash.xxh32_intdigest(split.salt.encode("utf-8")))
    return "validation" if h / 2**64 < split.validation else "train"


class ShardWriter:
    """Writes records to `<split>-00000.jsonl`, `<split>-00001.jsonl`, ... of `per_shard` each."""

    def __init__(self, out: Path, split: str, per_shard: int):
        self.out, self.split, self.per_shard = out, split, per_shard
        self.docs = self.chars = 0
        self.meta_counts: dict[str, Counter] = {"domain": Counter(), "source": Counter()}
        self.shards: list[str] = []
        self.file = None
        self._next_shard()

    def _next_shard(self) -> None:
        if self.file:
            self.file.close()
        name = f"{self.split}-{len(self.shards):05d}.jsonl"
        self.shards.append(name)
        self.file = open(self.out / name, "w", encoding="utf-8")

    def write(self, text: str, fields: dict[str, str], origin: str, meta: dict[str, str]) -> None:
        """One record: id (xxh3 of the text), the fields, where it was read (`source`), and the
        metadata the source maps (`meta`: domain, difficulty, source), when it maps any."""
        if self.docs and self.docs % self.per_shard == 0:
            self._next_shard()
        record = {"id": xxhash.xxh3_64_hexdigest(text.encode("utf-8")), **fields, "source": origin}
        if meta:
            record["meta"] = meta
            for key, counts in self.meta_counts.items():
                if key in meta:
                    counts[meta[key]] += 1
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.docs += 1
        self.chars += len(text)

    def close(self) -> dict:
        self.file.close()
        return {"documents": self.docs, "chars": self.chars, "shards": self.shards}


# ---------------------------------------------------------------- sources

def read_source(source, paths: list[Path], skipped: Counter | None = None,
                inputs: dict | None = None) -> Iterable[tuple]:
    """(value, origin, meta) of each record of one source, in file order: value is the text, or
    (instruction, response) when the source maps those fields; meta the mapped metadata fields.
    A bad record raises BuildError naming file and line, or with `skipped` (bad_records: skip)
    is counted there by kind and left out. A failures source reads the entry of its evaluate
    step, from `inputs` (`FailedItems`)."""
    if source.type == "failures":
        return FailedItems(source, (inputs or {})[failures_input(source.from_)])
    return _read_files(source, paths, skipped)


def _read_files(source, paths: list[Path], skipped: Counter | None) -> Iterator[tuple]:
    for path in paths:
        if source.type == "pydocs":
            topics = path.name == "topics.py" and path.parent.name == "pydoc_data"
            for text, origin in (_topics(path) if topics else _docstrings(path)):
                yield (_pair(text, origin) if source.pairs() else text), origin, {}
        elif path.suffix == ".txt":
            try:
                yield _read_text(path), path.name, {}
            except BuildError:
                if skipped is None:
                    raise
                skipped["invalid_utf8"] += 1
        else:
            yield from _jsonl(path, source.fields, skipped)


def _read_text(path: Path) -> str:
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # editors on Windows add one
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BuildError(_not_utf8(path, line, data[exc.start])) from None


def _not_utf8(path: Path, line: int, byte: int) -> str:
    return f"{path}:{line}: expected UTF-8 text; found the byte {byte:#04x} (re-encode the file as UTF-8)"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of each line, streamed: a JSONL file can be larger than memory."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            yield n, raw.removeprefix(codecs.BOM_UTF8) if n == 1 else raw


META = ("domain", "difficulty", "source")


def _jsonl(path: Path, fields, skipped: Counter | None) -> Iterator[tuple]:
    names = ("instruction", "response") if fields.chat() else ("text",)
    for n, raw in _lines(path):
        try:
            record = _record(path, n, raw)
            if record is None:
                continue
            values = tuple(_field(record, getattr(fields, role), role, path, n) for role in names)
            meta = {key: _field(record, getattr(fields, key), key, path, n)
                    for key in META if getattr(fields, key) is not None}
        except _BadRecord as bad:
            if skipped is None:
                raise BuildError(str(bad)) from None
            skipped[bad.kind] += 1
            continue
        yield values[0] if len(values) == 1 else values, f"{path.name}:{n}", meta


class _BadRecord(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _record(path: Path, n: int, raw: bytes) -> dict | None:
    """The JSON object on line `n`, or None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord("invalid_utf8", _not_utf8(path, n, raw[exc.start])) from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise _BadRecord("invalid_json", f"{path}:{n}: expected one JSON object per line; found invalid JSON "
                                         f"({exc.msg})") from None
    if not isinstance(record, dict):
        raise _BadRecord("not_an_object", f"{path}:{n}: expected one JSON object per line; found "
                                          f"{_json_type(record)}")
    return record


def _field(record: dict, field: str, role: str, path: Path, n: int) -> str:
    if not isinstance(record.get(field), str):
        found = (f"{_json_type(record[field])} there" if field in record else
                 f"no such field (the record has {', '.join(repr(k) for k in record) or 'no fields'})")
        raise _BadRecord("missing_field", f"{path}:{n}: expected a string in field '{field}'; found {found}; "
                                          f"map another field with `fields: {{{role}: NAME}}`")
    value = record[field]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape of half a surrogate pair: no character at all
        raise _BadRecord("invalid_utf8", f"{path}:{n}: expected text in field '{field}'; found the lone "
                                         f"surrogate \\u{ord(value[exc.start]):04x} (fix the JSON escape)") from None
    return value


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


def _pair(text: str, origin: str) -> tuple[str, str]:
    """An instruction about what a topic or docstring documents, and its text as the response."""
    if origin.startswith("pydoc:"):
        return f"Explain the Python topic '{origin.removeprefix('pydoc:')}'.", text.strip()
    head, _, body = text.partition("\n\n")
    return f"What does `{head.removeprefix('Module ')}` do?", body.strip()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(STDLIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---------------------------------------------------------------- failures of an evaluate step

ITEMS = "items.jsonl"  # of an evaluate entry that scores a prompt set: one JSON object per prompt
SCORINGS = ("exact", "number", "python", "judge")
VERDICTS = ("win", "loss", "tie")
ITEMS_FIX = ("targets/evaluate.py wrote what this reader does not know, or the entry was edited by hand: "
             "`doit verify --repair` moves the entry aside, so the next `doit` rebuilds it")
# each field of an evaluated item, what it must be, and the types (None: null) that are that
ITEM_FIELDS = {
    "index": ("an integer", (int,)), "instruction": ("a string", (str,)),
    "expected": ("a string or null", (str, None)), "answer": ("a string", (str,)),
    "reference": ("a string or null", (str, None)), "scoring": (f"one of {', '.join(SCORINGS)}", SCORINGS),
    "passed": ("a boolean or null", (bool, None)),
    "verdict": (f"one of {', '.join(VERDICTS)}, or null", (*VERDICTS, None)), "detail": ("a string or null", (str, None)),
}


class FailedItems:
    """The failed items of an evaluate entry (its items.jsonl), as records in the order of the
    prompt set (by `index`): an item fails when `passed` is false (exact, number or python
    scoring) or its verdict is one of the source's `include` (judge scoring). The instruction
    is the prompt; the response the reference model's answer or the prompt set's own
    (`response`), never the model's wrong one; the meta says which item of which step it was.
    items.jsonl is Ingot's own output, so a missing file or a malformed line stops the build
    naming file and line (`bad_records: skip` does not apply). Once iterated, `items` is the
    number of items the step evaluated."""

    def __init__(self, source, entry: Path):
        self.source, self.path = source, Path(entry) / ITEMS
        self.items = 0
        self.scorings: set[str] = set()

    def __iter__(self) -> Iterator[tuple]:
        items = self._read()
        self.items, self.scorings = len(items), {item["scoring"] for _, item in items}
        for n, item in items:
            if item["passed"] is False or item["verdict"] in self.source.include:
                meta = {"source": self.source.from_, **{k: item[k] for k in ("index", "scoring", "passed", "verdict")}}
                yield (item["instruction"], self._response(n, item)), f"{self.source.from_}:{item['index']}", meta

    def nothing(self) -> str:
        """What an evaluate step without a failure had, said the way its scoring counts them."""
        verdicts = " or ".join({"loss": "losses", "tie": "ties"}[v] for v in sorted(self.source.include))
        what = (verdicts if self.scorings == {"judge"} else "failed items" if "judge" not in self.scorings
                else f"failed items, {verdicts}")
        return f"evaluate step {self.source.from_} had no {what} among its {self.items:,} items"

    def _read(self) -> list[tuple[int, dict]]:
        """(line, item) of every item, by index."""
        if not self.path.is_file():
            raise BuildError(f"{self.path}: expected the per-item results of evaluate step {self.source.from_}; "
                             f"found no such file ({ITEMS_FIX})")
        lines: dict[int, int] = {}
        items = []
        for n, raw in _lines(self.path):
            try:
                item = _record(self.path, n, raw)
            except _BadRecord as bad:
                raise BuildError(f"{bad} ({ITEMS_FIX})") from None
            if item is None:
                continue
            _check_item(self.path, n, item)
            if item["index"] in lines:
                raise BuildError(f"{self.path}:{n}: expected each item's index once; found index {item['index']}, "
                                 f"also on line {lines[item['index']]} ({ITEMS_FIX})")
            lines[item["index"]] = n
            items.append((n, item))
        return sorted(items, key=lambda pair: pair[1]["index"])

    def _response(self, n: int, item: dict) -> str:
        pick = self.source.response
        for name in (pick,) if pick else ("reference", "expected"):
            if item[name] is not None:
                return item[name]
        fix = {"reference": "only judge scoring has reference answers: set `response: expected`, or leave it out",
               "expected": "give the prompt set's record a response, or set `response: reference` (judge scoring)",
               None: "give the prompt set's record a response"}[pick]
        missing = f"a {pick} answer" if pick else "a reference or an expected answer"
        raise BuildError(f"{self.path}:{n}: expected {missing} to train on for item {item['index']}; found null "
                         f"({fix})")


def _check_item(path: Path, n: int, item: dict) -> None:
    """Every field of an evaluated item present, of its type, and no other."""
    for key in item:
        if key not in ITEM_FIELDS:
            raise BuildError(f"{path}:{n}: expected the fields of an evaluated item ({', '.join(ITEM_FIELDS)}); "
                             f"found the field '{key}' too ({ITEMS_FIX})")
    for key, (what, allowed) in ITEM_FIELDS.items():
        found = ("no such field" if key not in item else None if any(_is(item[key], a) for a in allowed)
                 else repr(item[key]) if isinstance(item[key], str) else _json_type(item[key]))
        if found:
            raise BuildError(f"{path}:{n}: expected {what} in field '{key}'; found {found} ({ITEMS_FIX})")


def _is(value, allowed) -> bool:
    """Whether a JSON value is what `allowed` stands for: null (None), that string, or of that type."""
    if allowed is None or isinstance(allowed, str):
        return value == allowed
    return isinstance(value, allowed) and not (allowed is int and isinstance(value, bool))  # JSON's true is no index
