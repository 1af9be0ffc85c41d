"""Dataset builder: normalization, filters, exact dedup, the stable split, shards, sources, bad input.

Most tests call `targets.dataset.build` directly with a `Job`; the last ones go through
a real project and `doit`, as a user would.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import xxhash

from compiler.specs import DatasetSpec
from conftest import ran
from targets import BuildError, Job, dataset
from targets.filters import REASONS

SPLITS = ("train", "validation")


def make_spec(**fields) -> DatasetSpec:
    data = {"kind": "dataset", "name": "t", "sources": [{"type": "files", "glob": "data/*"}], **fields}
    return DatasetSpec.model_validate(data)


def write_jsonl(path: Path, records) -> Path:
    """One line per record; a str record is `{"text": record}`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r if isinstance(r, dict) else {"text": r}, ensure_ascii=False) for r in records)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


class Built:
    """What one build wrote: its stats and each split's records, shards read in order."""

    def __init__(self, out: Path, stats: dict):
        self.out, self.stats = out, stats
        self.records = {s: [json.loads(line) for shard in sorted(out.glob(f"{s}-*.jsonl"))
                            for line in shard.read_text(encoding="utf-8").splitlines()] for s in SPLITS}

    def texts(self, split: str = "train") -> list[str]:
        return [r["text"] for r in self.records[split]]

    def side(self) -> dict[str, str]:
        return {r["text"]: s for s in SPLITS for r in self.records[s]}

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir())}


def build(tmp_path: Path, files: list[list[Path]], **fields) -> Built:
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    out.mkdir()
    stats = dataset.build(Job("dataset.t", make_spec(**fields), out, files=files, root=tmp_path,
                              work=tmp_path / f"work-{out.name}"))
    assert json.loads((out / "stats.json").read_text()) == stats
    return Built(out, stats)


def removed(**counts: int) -> dict[str, int]:
    """stats.json's `removed`: every filter and exact dedup, zero unless given."""
    return {**{r: 0 for r in (*REASONS, "exact_duplicate")}, **counts}


# ---------------------------------------------------------------- normalization, filters, dedup

ACCENTS = ["\ufb01nal cafe\u0301", "caf\u00e9 \u2460 x\u00b2"]  # "ﬁ" ligature + combining acute; circled 1, ²


@pytest.mark.parametrize("form, expected", [
    ("NFC", ["\ufb01nal caf\u00e9", "caf\u00e9 \u2460 x\u00b2"]),
    ("NFKC", ["final caf\u00e9", "caf\u00e9 1 x2"]),
    ("NFD", ["\ufb01nal cafe\u0301", "cafe\u0301 \u2460 x\u00b2"]),
    ("none", ACCENTS),
])
def test_unicode_normalization(tmp_path, form, expected):
    data = write_jsonl(tmp_path / "data/a.jsonl", ACCENTS)
    built = build(tmp_path, [[data]], normalize=form, split={"validation": 0})
    assert built.texts() == expected
    assert [r["id"] for r in built.records["train"]] == [xxhash.xxh3_64_hexdigest(t.encode()) for t in expected]


def test_line_endings_and_surrounding_whitespace_are_normalized(tmp_path):
    data = write_jsonl(tmp_path / "data/a.jsonl", ["\n  one\r\ntwo\rthree \t\n"])
    assert build(tmp_path, [[data]], split={"validation": 0}).texts() == ["one\ntwo\nthree"]


def test_dedup_is_exact_after_normalization(tmp_path):
    # precomposed and combining "café" are one document once normalized, distinct without
    texts = ["caf\u00e9 au lait", "cafe\u0301 au lait", "  caf\u00e9 au lait\n", "tea"]
    data = write_jsonl(tmp_path / "data/a.jsonl", texts)
    nfc = build(tmp_path, [[data]], split={"validation": 0})
    assert nfc.texts() == ["caf\u00e9 au lait", "tea"]
    assert nfc.stats["removed"] == removed(exact_duplicate=2)
    raw = build(tmp_path, [[data]], normalize="none", split={"validation": 0})
    assert raw.texts() == ["caf\u00e9 au lait", "cafe\u0301 au lait", "tea"]
    assert raw.stats["removed"]["exact_duplicate"] == 1
    kept = build(tmp_path, [[data]], dedup="none", split={"validation": 0})
    assert kept.texts() == ["caf\u00e9 au lait", "caf\u00e9 au lait", "caf\u00e9 au lait", "tea"]
    assert kept.stats["removed"]["exact_duplicate"] == 0


def test_dedup_spans_sources_and_keeps_the_first(tmp_path):
    a = write_jsonl(tmp_path / "data/a.jsonl", ["shared text", "only in a"])
    b = tmp_path / "data/b.txt"
    b.write_text("shared text\n", encoding="utf-8")
    built = build(tmp_path, [[a], [b]], sources=[{"type": "files", "glob": "data/*.jsonl"},
                                                 {"type": "files", "glob": "data/*.txt"}], split={"validation": 0})
    assert [(r["text"], r["source"]) for r in built.records["train"]] == [("shared text", "a.jsonl:1"),
                                                                         ("only in a", "a.jsonl:2")]
    assert built.stats["removed"]["exact_duplicate"] == 1


def test_length_filters_count_normalized_chars(tmp_path):
    texts = ["ab", "  abc  ", "abcde", "abcdefgh", "abcdefghi", "\ufb01\ufb01"]  # "ﬁﬁ" is 2 chars, or 4 in NFKC
    data = write_jsonl(tmp_path / "data/a.jsonl", texts)
    nfc = build(tmp_path, [[data]], filters={"min_chars": 3, "max_chars": 8}, split={"validation": 0})
    assert nfc.texts() == ["abc", "abcde", "abcdefgh"]
    assert nfc.stats["removed"] == removed(min_chars=2, max_chars=1)
    nfkc = build(tmp_path, [[data]], normalize="NFKC", filters={"min_chars": 3, "max_chars": 8},
                 split={"validation": 0})
    assert nfkc.texts() == ["abc", "abcde", "abcdefgh", "fifi"]
    assert nfkc.stats["removed"] == removed(min_chars=1, max_chars=1)


def test_empty_documents_are_dropped_by_the_default_min_chars(tmp_path):
    data = write_jsonl(tmp_path / "data/a.jsonl", ["", "   \n", "x"])
    built = build(tmp_path, [[data]], split={"validation": 0})
    assert built.texts() == ["x"]
    assert built.stats["removed"]["min_chars"] == 2


def test_a_filtered_document_is_not_remembered_for_dedup(tmp_path):
    # the long copy is dropped by max_chars, so it is counted there and not as a duplicate
    data = write_jsonl(tmp_path / "data/a.jsonl", ["x" * 20, "x" * 20, "short"])
    built = build(tmp_path, [[data]], filters={"max_chars": 10}, split={"validation": 0})
    assert built.texts() == ["short"]
    assert built.stats["removed"] == removed(max_chars=2)


def test_stats_add_up(tmp_path):
    a = write_jsonl(tmp_path / "data/a.jsonl", ["hello world", "hi", "hello world", "a" * 50, "bonjour"])
    b = tmp_path / "data/b.txt"
    b.write_text("guten tag", encoding="utf-8")
    built = build(tmp_path, [[a], [b]], filters={"min_chars": 3, "max_chars": 40}, split={"validation": 0},
                  sources=[{"type": "files", "glob": "data/*.jsonl"}, {"type": "files", "glob": "data/*.txt"}])
    assert built.stats == {
        "documents_in": 6,
        "by_source": [{"source": 0, "type": "files", "documents": 5, "kept": 2},
                      {"source": 1, "type": "files", "documents": 1, "kept": 1}],
        "removed": removed(min_chars=1, max_chars=1, exact_duplicate=1),
        "documents_out": 3,
        "splits": {"train": {"documents": 3, "chars": 11 + 7 + 9, "shards": ["train-00000.jsonl"]},
                   "validation": {"documents": 0, "chars": 0, "shards": ["validation-00000.jsonl"]}},
        "by_domain": {}, "by_origin": {}, "languages": {},
    }
    s = built.stats
    assert s["documents_in"] == sum(s["removed"].values()) + s["documents_out"]
    assert s["documents_in"] == sum(x["documents"] for x in s["by_source"])


# ---------------------------------------------------------------- near duplicates

NEAR = {"threshold": 0.7, "num_perm": 128}


def test_near_duplicates_leave_one_document_per_cluster(tmp_path):
    from test_neardup import corpus

    from targets import neardup

    docs, groups = corpus(3000, seed=11)
    data = write_jsonl(tmp_path / "data/a.jsonl", docs)
    built = build(tmp_path, [[data]], near_dedup=NEAR, split={"validation": 0.1})
    report = json.loads((built.out / "dedup.json").read_text())
    out = [r["text"] for s in SPLITS for r in built.records[s]]
    assert built.stats["removed"] == removed(near_duplicate=report["removed"])
    assert built.stats["documents_out"] == 3000 - report["removed"] == len(out)
    assert built.stats["near_dedup"] == {k: report[k] for k in ("documents", "candidate_pairs", "pairs",
                                                                "clusters", "removed")}
    assert report["params"] == {**NEAR, "shingle": "word", "ngram": 3, "verify": True, "seed": 1,
                                "bands": 20, "rows": 6}
    assert sum(int(size) * n for size, n in report["cluster_sizes"].items()) - report["clusters"] == report["removed"]
    # no two surviving documents of a planted group are near-duplicates (exact Jaccard), but for
    # the few the LSH missed; and every survivor is the first document of its group that survives
    params = neardup.Params(**NEAR)
    flat, offsets = neardup.shingles(docs, params)
    kept = set(out)
    missed = pairs = 0
    for group in groups:
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                i, j = group[a], group[b]
                if neardup.exact_jaccard(flat[offsets[i]:offsets[i + 1]], flat[offsets[j]:offsets[j + 1]]) >= 0.7:
                    pairs += 1
                    missed += docs[i] in kept and docs[j] in kept
    assert pairs > 200 and missed / pairs < 0.05, (missed, pairs)
    ids = {r["id"] for split in SPLITS for r in built.records[split]}
    assert len(report["sample_pairs"]) == 20
    for sample in report["sample_pairs"]:  # a verified pair, of which at most one document survives
        assert sample["jaccard"] >= 0.7 and not (sample["a_kept"] and sample["b_kept"])
        for side in "ab":
            assert (sample[f"{side}_id"] in ids) == sample[f"{side}_kept"]
            assert len(sample[f"{side}_text"]) <= 200
            assert any(d.startswith(sample[f"{side}_text"]) for d in docs)


def test_near_dedup_output_is_byte_identical_across_builds(tmp_path):
    from test_neardup import corpus

    docs, _ = corpus(1500, seed=12)
    data = write_jsonl(tmp_path / "data/a.jsonl", docs)
    first = build(tmp_path, [[data]], near_dedup=NEAR)
    second = build(tmp_path, [[data]], near_dedup=NEAR)
    assert first.files() == second.files() and first.stats["removed"]["near_duplicate"] > 50


# ---------------------------------------------------------------- near-dedup hashed on Ray

RAY_DOCS = 6000  # three batches of dataset.BATCH records: three chunks hashed


@pytest.fixture(scope="module")
def local_ray():
    from test_neardup import start_local_ray

    yield from start_local_ray()


@pytest.mark.slow
def test_ray_workers_write_the_bytes_of_one_process_and_of_local_processes(local_ray, tmp_path, capfd):
    from test_neardup import corpus

    docs, _ = corpus(RAY_DOCS, seed=13)
    data = write_jsonl(tmp_path / "data/a.jsonl", docs)
    here = build(tmp_path, [[data]], near_dedup={**NEAR, "workers": 1})
    processes = build(tmp_path, [[data]], near_dedup={**NEAR, "workers": 2})
    capfd.readouterr()
    on_ray = build(tmp_path, [[data]], near_dedup=NEAR, workers=2)
    log = capfd.readouterr().err
    assert sorted(here.files()) == ["dedup.json", "stats.json", "train-00000.jsonl", "validation-00000.jsonl"]
    assert here.files() == processes.files() == on_ray.files()
    assert here.stats["removed"]["near_duplicate"] > 200
    kept = here.stats["near_dedup"]["documents"]
    assert f"near-dedup: 3 chunks ({kept:,} documents) hashed as Ray tasks on {local_ray}, 2 at a time" in log
    assert "near_dedup.workers" not in log and "RAY_ADDRESS" not in log  # Ray was running: nothing started


@pytest.mark.slow  # the module's local Ray takes seconds to start
def test_ray_workers_with_local_process_workers_say_which_is_used(local_ray, tmp_path, capfd):
    data = write_jsonl(tmp_path / "data/a.jsonl", ["one two three four", "one two three four five", "six"])
    build(tmp_path, [[data]], near_dedup={**NEAR, "workers": 3}, workers=2)
    log = capfd.readouterr().err
    assert "near_dedup.workers (3 local processes) is not used: workers: 2 hashes on Ray" in log
    assert "near-dedup: 1 chunk (3 documents) hashed as Ray tasks" in log


def test_workers_without_near_dedup_have_nothing_to_shard(tmp_path, capfd):
    data = write_jsonl(tmp_path / "data/a.jsonl", ["alpha beta", "gamma delta", "alpha beta"])
    alone = build(tmp_path, [[data]])
    sharded = build(tmp_path, [[data]], workers=4)
    assert alone.files() == sharded.files()
    assert ("workers: 4 shards only near-dedup's hashing over Ray, and this dataset has no near_dedup: nothing "
            "to shard, built here") in capfd.readouterr().err


RAY_SPEC = """
    kind: dataset
    name: docs
    sources:
      - type: files
        glob: data/*.jsonl
    near_dedup:
      threshold: 0.7
    workers: 2
"""


def ray_project(make_project, docs: list[str]):
    project = make_project()
    project.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in docs))
    project.write("specs/datasets/docs.yaml", RAY_SPEC)
    return project


def one_process(project, tmp_path: Path) -> Built:
    """RAY_SPEC built by the builder in this process, hashing here."""
    return build(tmp_path, [[project.root / "data" / "docs.jsonl"]], near_dedup={"threshold": 0.7, "workers": 1},
                 sources=[{"type": "files", "glob": "data/*.jsonl"}])


def entry_files(project) -> dict[str, bytes]:
    entry = project.root / "build" / "dataset" / "docs"
    return {n: (entry / n).read_bytes() for n in json.loads((entry / "manifest.json").read_text())["outputs"]}


@pytest.mark.slow
def test_doit_hashes_on_the_ray_cluster_at_ray_address(local_ray, make_project, tmp_path, monkeypatch):
    from test_neardup import corpus

    docs, _ = corpus(RAY_DOCS, seed=14)
    project = ray_project(make_project, docs)
    monkeypatch.setenv("RAY_ADDRESS", local_ray)
    result = project.doit("dataset.docs")
    assert entry_files(project) == one_process(project, tmp_path).files()
    assert f"hashed as Ray tasks on {local_ray}, 2 at a time" in result.stderr
    assert "started a local Ray" not in result.stderr


@pytest.mark.slow
def test_doit_without_ray_address_starts_a_local_ray_for_the_build(make_project, tmp_path, monkeypatch):
    from test_neardup import corpus, require_ray

    require_ray()
    docs, _ = corpus(RAY_DOCS, seed=15)
    project = ray_project(make_project, docs)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = project.doit("dataset.docs")
    assert entry_files(project) == one_process(project, tmp_path).files()
    assert re.search(r"RAY_ADDRESS is not set: started a local Ray \(\d+ CPUs\) for this build; set RAY_ADDRESS to "
                     r"use a cluster\n", result.stderr)
    assert "hashed as Ray tasks on a local Ray started for this build, 2 at a time" in result.stderr


def test_an_unreachable_ray_address_fails_the_task_naming_it_and_the_fix(make_project, monkeypatch):
    import socket

    from test_neardup import require_ray

    require_ray()
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    project = ray_project(make_project, ["one two three four five"])
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    result = project.doit("dataset.docs", check=False)
    assert result.returncode == 1 and ran(result) == ["dataset.docs"]
    assert (f"dataset.docs: RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there (Connection refused); start "
            f"the cluster (`ray start --head` on its head node) or set RAY_ADDRESS to the address it printed; or "
            f"unset RAY_ADDRESS to start a local Ray for this build\n") in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert complete_entries(project.root) == []


# ---------------------------------------------------------------- records and metadata

def test_metadata_fields_are_kept_and_counted(tmp_path):
    records = [{"q": "What is a list?", "a": "An ordered sequence.", "dom": "python", "lvl": "easy", "from": "faq"},
               {"q": "What is a dict?", "a": "A mapping of keys.", "dom": "python", "lvl": "easy", "from": "docs"},
               {"q": "Capital of France?", "a": "Paris.", "dom": "geography", "lvl": "easy", "from": "faq"}]
    data = write_jsonl(tmp_path / "data/a.jsonl", records)
    fields = {"instruction": "q", "response": "a", "domain": "dom", "difficulty": "lvl", "source": "from"}
    built = build(tmp_path, [[data]], sources=[{"type": "files", "glob": "data/*", "fields": fields}],
                  split={"validation": 0})
    assert [r["meta"] for r in built.records["train"]] == [
        {"domain": "python", "difficulty": "easy", "source": "faq"},
        {"domain": "python", "difficulty": "easy", "source": "docs"},
        {"domain": "geography", "difficulty": "easy", "source": "faq"}]
    assert built.stats["by_domain"] == {"geography": 1, "python": 2}
    assert built.stats["by_origin"] == {"docs": 1, "faq": 2}


def test_a_record_without_its_metadata_field_names_file_and_line(tmp_path):
    data = write_jsonl(tmp_path / "data/a.jsonl", [{"text": "one", "dom": "x"}, {"text": "two"}])
    with pytest.raises(BuildError) as exc:
        build(tmp_path, [[data]], sources=[{"type": "files", "glob": "data/*", "fields": {"domain": "dom"}}])
    assert str(exc.value) == (f"{data}:2: expected a string in field 'dom'; found no such field (the record has "
                              "'text'); map another field with `fields: {domain: NAME}`")


def test_bad_records_can_be_skipped_and_counted(tmp_path):
    path = bad_file(tmp_path, "a.jsonl", b'{"text": "fine one"}\n{"text": \n["a list"]\n{"body": "x"}\n'
                                         b'{"text": "caf\xe9"}\n{"text": "fine two"}\n')
    bad_txt = bad_file(tmp_path, "b.txt", b"bad \xff here\n")
    built = build(tmp_path, [[path, bad_txt]], bad_records="skip", split={"validation": 0})
    assert built.texts() == ["fine one", "fine two"]
    assert built.stats["skipped"] == {"invalid_utf8": 2, "invalid_json": 1, "not_an_object": 1, "missing_field": 1}
    assert built.stats["documents_in"] == 2


# ---------------------------------------------------------------- split and shards

def numbered(start: int, stop: int) -> list[str]:
    return [f"document {i}: the quick brown fox jumps over {i * 7 % 13} lazy dogs" for i in range(start, stop)]


def test_split_is_deterministic_and_near_the_fraction(tmp_path):
    data = write_jsonl(tmp_path / "data/a.jsonl", numbered(0, 400))
    first = build(tmp_path, [[data]], split={"validation": 0.2})
    second = build(tmp_path, [[data]], split={"validation": 0.2})
    assert first.files() == second.files()
    held_out = first.stats["splits"]["validation"]["documents"]
    assert 50 <= held_out <= 110, held_out  # 400 * 0.2 = 80 expected
    assert held_out + first.stats["splits"]["train"]["documents"] == 400


def test_split_is_stable_when_documents_are_added(tmp_path):
    base = numbered(0, 300)
    small = build(tmp_path, [[write_jsonl(tmp_path / "data/a.jsonl", base)]], split={"validation": 0.2})
    # a superset, reordered, in two files: every old document keeps its side
    more = [write_jsonl(tmp_path / "more/b.jsonl", numbered(300, 600) + base[::2]),
            write_jsonl(tmp_path / "more/c.jsonl", base[1::2][::-1])]
    big = build(tmp_path, [more], split={"validation": 0.2})
    small_side, big_side = small.side(), big.side()
    assert len(small_side) == 300 and len(big_side) == 600
    assert {t: big_side[t] for t in small_side} == small_side
    assert set(small_side.values()) == {"train", "validation"}


def test_salt_draws_another_split(tmp_path):
    data = write_jsonl(tmp_path / "data/a.jsonl", numbered(0, 200))
    one = build(tmp_path, [[data]], split={"validation": 0.3}).side()
    other = build(tmp_path, [[data]], split={"validation": 0.3, "salt": "another"}).side()
    assert one.keys() == other.keys()
    assert sum(one[t] != other[t] for t in one) > 20


def test_validation_zero_keeps_everything_for_training(tmp_path):
    data = write_jsonl(tmp_path / "data/a.jsonl", numbered(0, 50))
    built = build(tmp_path, [[data]], split={"validation": 0})
    assert len(built.texts("train")) == 50
    assert built.records["validation"] == []
    assert (built.out / "validation-00000.jsonl").read_bytes() == b""


@pytest.mark.parametrize("docs, sizes", [(10, [3, 3, 3, 1]), (9, [3, 3, 3]), (1, [1])])
def test_shards_hold_shard_docs_each(tmp_path, docs, sizes):
    data = write_jsonl(tmp_path / "data/a.jsonl", numbered(0, docs))
    built = build(tmp_path, [[data]], shard_docs=3, split={"validation": 0})
    names = [f"train-{i:05d}.jsonl" for i in range(len(sizes))]
    assert sorted(built.files()) == sorted(names + ["validation-00000.jsonl", "stats.json"])
    assert [len((built.out / n).read_text().splitlines()) for n in names] == sizes
    assert built.stats["splits"]["train"]["shards"] == names
    assert built.texts() == numbered(0, docs)  # shards in order hold the documents in order


# ---------------------------------------------------------------- sources

def test_jsonl_field_mapping(tmp_path):
    data = tmp_path / "data/a.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"id": 1, "body": "first body", "text": 5}\n\n{"body": "second body"}\n', encoding="utf-8")
    built = build(tmp_path, [[data]], sources=[{"type": "files", "glob": "data/*.jsonl", "fields": {"text": "body"}}],
                  split={"validation": 0})
    assert [(r["text"], r["source"]) for r in built.records["train"]] == [("first body", "a.jsonl:1"),
                                                                         ("second body", "a.jsonl:3")]


QA_FIELDS = {"instruction": "q", "response": "a"}


def qa_source(**fields) -> list[dict]:
    return [{"type": "files", "glob": "data/*.jsonl", "fields": {**QA_FIELDS, **fields}}]


def test_instruction_response_records(tmp_path):
    """Pairs are normalized one field at a time and filtered, deduplicated, named and split by
    their canonical text, instruction + blank line + response."""
    data = write_jsonl(tmp_path / "data/qa.jsonl", [
        {"q": " Explain len()\r\n", "a": "It returns the number of items.  ", "text": "ignored"},
        {"q": "Explain len()", "a": "It returns the number of items."},   # a duplicate once normalized
        {"q": "Explain len()", "a": "It returns the length."},            # another response: kept
        {"q": "Hi", "a": "Yo"},                                            # 8 chars joined: filtered
    ])
    built = build(tmp_path, [[data]], sources=qa_source(), filters={"min_chars": 10}, split={"validation": 0})
    canonical = ["Explain len()\n\nIt returns the number of items.", "Explain len()\n\nIt returns the length."]
    assert built.records["train"] == [
        {"id": xxhash.xxh3_64_hexdigest(canonical[0].encode()), "instruction": "Explain len()",
         "response": "It returns the number of items.", "source": "qa.jsonl:1"},
        {"id": xxhash.xxh3_64_hexdigest(canonical[1].encode()), "instruction": "Explain len()",
         "response": "It returns the length.", "source": "qa.jsonl:3"}]
    assert built.stats["removed"] == removed(min_chars=1, exact_duplicate=1)
    assert built.stats["splits"]["train"]["chars"] == sum(map(len, canonical))
    assert dataset.split_of(canonical[0], make_spec().split) == "train"
    both = build(tmp_path, [[data]], sources=qa_source(), filters={"min_chars": 10}, split={"validation": 0.5})
    assert {r["id"]: s for s in SPLITS for r in both.records[s]} == {
        xxhash.xxh3_64_hexdigest(t.encode()): dataset.split_of(t, make_spec(split={"validation": 0.5}).split)
        for t in canonical}


@pytest.mark.parametrize("record, message", [
    ({"q": "x"}, "expected a string in field 'a'; found no such field (the record has 'q'); "
                 "map another field with `fields: {response: NAME}`"),
    ({"q": 3, "a": "y"}, "expected a string in field 'q'; found a number there; "
                         "map another field with `fields: {instruction: NAME}`"),
])
def test_a_missing_instruction_or_response_names_file_and_line(tmp_path, record, message):
    data = write_jsonl(tmp_path / "data/qa.jsonl", [{"q": "fine", "a": "fine"}, record])
    with pytest.raises(BuildError) as exc:
        build(tmp_path, [[data]], sources=qa_source())
    assert str(exc.value) == f"{data}:2: {message}"


def test_a_dataset_is_texts_or_pairs(tmp_path):
    with pytest.raises(ValueError, match="give both `instruction` and `response`"):
        make_spec(sources=[{"type": "files", "glob": "a", "fields": {"instruction": "q"}}])
    with pytest.raises(ValueError, match="this dataset mixes both"):
        make_spec(sources=qa_source() + [{"type": "pydocs"}])
    assert make_spec(sources=qa_source()).chat() and not make_spec().chat()


def test_txt_files_are_one_document_each(tmp_path):
    paths = []
    for name, text in [("a.txt", "first line\nsecond line\n\nnew paragraph\n"), ("b.txt", "\ufeffwith a BOM\r\n")]:
        paths.append(tmp_path / "data" / name)
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(text.encode("utf-8"))
    built = build(tmp_path, [paths], split={"validation": 0})
    assert [(r["text"], r["source"]) for r in built.records["train"]] == [
        ("first line\nsecond line\n\nnew paragraph", "a.txt"), ("with a BOM", "b.txt")]


def test_jsonl_with_a_bom_and_crlf_line_endings(tmp_path):
    data = tmp_path / "data/a.jsonl"
    data.parent.mkdir(parents=True)
    data.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "two"}\r\n')
    assert build(tmp_path, [[data]], split={"validation": 0}).texts() == ["one", "two"]


class ImportSpy:
    """A meta-path finder that records any attempt to import the watched modules."""

    def __init__(self, names: set[str]):
        self.names, self.seen = names, []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            self.seen.append(name)
        return None


def test_pydocs_reads_topics_and_docstrings_without_importing(tmp_path):
    from pydoc_data.topics import topics

    watched = {"graphlib", "tabnanny"}
    assert not watched & set(sys.modules), "the test needs modules nothing has imported yet"
    spy = ImportSpy(watched)
    sys.meta_path.insert(0, spy)
    try:
        built = build(tmp_path, [[dataset.STDLIB / "pydoc_data" / "topics.py"],
                                 [dataset.STDLIB / "graphlib.py", dataset.STDLIB / "tabnanny.py"]],
                      sources=[{"type": "pydocs", "modules": []}, {"type": "pydocs", "topics": False,
                                                                        "modules": ["graphlib", "tabnanny"]}],
                      split={"validation": 0}, dedup="none")
    finally:
        sys.meta_path.remove(spy)
    assert spy.seen == [] and not watched & set(sys.modules)
    docs = {r["source"]: r["text"] for r in built.records["train"]}
    assert built.stats["by_source"][0]["documents"] == len(topics)
    assert docs["pydoc:assert"] == topics["assert"].strip()
    assert docs["pydoc:assert"].startswith('The "assert" statement')
    # graphlib has no module docstring; its classes and methods have
    assert "doc:graphlib" not in docs
    assert docs["doc:graphlib.TopologicalSorter"].startswith(
        "class graphlib.TopologicalSorter\n\nProvides functionality")
    assert docs["doc:graphlib.TopologicalSorter.add"].startswith(
        "def graphlib.TopologicalSorter.add(self, node, *predecessors)\n\n")
    assert "doc:graphlib.TopologicalSorter.__init__" not in docs  # no docstring, no document
    assert docs["doc:tabnanny"].startswith("Module tabnanny\n\nThe Tab Nanny")
    assert docs["doc:tabnanny.check"].startswith("def tabnanny.check(file)\n\ncheck(file_or_dir)")
    assert not [s for s in docs if not s.startswith(("pydoc:", "doc:graphlib", "doc:tabnanny"))]


# ---------------------------------------------------------------- bad input

def bad_file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


BAD = [
    ("a.jsonl", b'{"text": "fine"}\n{"text": \n',
     "2: expected one JSON object per line; found invalid JSON (Expecting value)"),
    ("a.jsonl", b'{"text": "fine"}\n\n["a list"]\n',
     "3: expected one JSON object per line; found an array"),
    ("a.jsonl", b'{"text": "fine"}\n{"body": "x", "id": 3}\n',
     "2: expected a string in field 'text'; found no such field (the record has 'body', 'id'); "
     "map another field with `fields: {text: NAME}`"),
    ("a.jsonl", b'{"text": null}\n',
     "1: expected a string in field 'text'; found null there; map another field with `fields: {text: NAME}`"),
    ("a.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n',
     "2: expected UTF-8 text; found the byte 0xe9 (re-encode the file as UTF-8)"),
    ("a.txt", b"line one\nline two\nbad \xff here\n",
     "3: expected UTF-8 text; found the byte 0xff (re-encode the file as UTF-8)"),
    ("a.jsonl", b'{"text": "fine"}\n{"text": "half \\ud800 a pair"}\n',
     "2: expected text in field 'text'; found the lone surrogate \\ud800 (fix the JSON escape)"),
]


@pytest.mark.parametrize("name, content, message", BAD)
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = bad_file(tmp_path, name, content)
    with pytest.raises(BuildError) as exc:
        build(tmp_path, [[path]])
    assert str(exc.value) == f"{path}:{message}"


def test_pydocs_as_instruction_response_pairs(tmp_path):
    from pydoc_data.topics import topics

    built = build(tmp_path, [[dataset.STDLIB / "pydoc_data" / "topics.py"], [dataset.STDLIB / "graphlib.py"]],
                  sources=[{"type": "pydocs", "modules": [], "records": "pairs"},
                           {"type": "pydocs", "topics": False, "modules": ["graphlib"], "records": "pairs"}],
                  split={"validation": 0}, dedup="none")
    pairs = {r["source"]: (r["instruction"], r["response"]) for r in built.records["train"]}
    assert pairs["pydoc:assert"] == ("Explain the Python topic 'assert'.", topics["assert"].strip())
    instruction, response = pairs["doc:graphlib.TopologicalSorter.add"]
    assert instruction == "What does `def graphlib.TopologicalSorter.add(self, node, *predecessors)` do?"
    assert response.startswith("Add a new node and its predecessors to the graph.")
    assert all(set(r) == {"id", "instruction", "response", "source"} for r in built.records["train"])


def test_bad_topics_file_is_an_error_not_an_empty_corpus(tmp_path):
    path = bad_file(tmp_path, "pydoc_data/topics.py", b"TOPICS = {}\n")
    with pytest.raises(BuildError) as exc:
        build(tmp_path, [[path]], sources=[{"type": "pydocs", "modules": []}])
    assert str(exc.value) == (f"{path}: expected a `topics = {{...}}` dict literal; found none (this CPython's "
                              f"pydoc_data differs; set `topics: false` on the pydocs source)")


# ---------------------------------------------------------------- through a project

def complete_entries(root: Path) -> list[str]:
    store = root / "build" / "store"
    return sorted(p.name for p in store.iterdir() if (p / "manifest.json").is_file()) if store.exists() else []


def test_project_build_matches_the_builder(tiny_project, tmp_path):
    tiny_project.doit("dataset.docs")
    entry = tiny_project.root / "build" / "dataset" / "docs"
    manifest = json.loads((entry / "manifest.json").read_text())
    stats = json.loads((entry / "stats.json").read_text())
    assert manifest["metrics"] == stats
    assert stats["documents_in"] == 300 == sum(stats["removed"].values()) + stats["documents_out"]
    assert sorted(manifest["outputs"]) == ["stats.json", "train-00000.jsonl", "validation-00000.jsonl"]
    # the same spec built directly gives the same bytes
    direct = build(tmp_path, [[tiny_project.root / "data" / "docs.jsonl"]],
                   sources=[{"type": "files", "glob": "data/*.jsonl"}], filters={"min_chars": 20},
                   split={"validation": 0.1})
    assert direct.files() == {n: (entry / n).read_bytes() for n in manifest["outputs"]}


def test_project_pydocs_includes_a_packages_submodules(make_project):
    project = make_project()
    project.write("specs/datasets/py.yaml", """
        kind: dataset
        name: py
        sources:
          - type: pydocs
            topics: false
            modules: [json]
        split:
          validation: 0
    """)
    project.doit("dataset.py")
    entry = project.root / "build" / "dataset" / "py"
    sources = {json.loads(line)["source"] for line in (entry / "train-00000.jsonl").read_text().splitlines()}
    assert {"doc:json", "doc:json.dumps", "doc:json.decoder.JSONDecoder", "doc:json.decoder.JSONDecoder.decode",
            "doc:json.encoder.JSONEncoder.default"} <= sources
    assert all(s.startswith("doc:json") for s in sources)


@pytest.mark.parametrize("name, content, message", [BAD[0], BAD[2], BAD[4]])
def test_bad_input_fails_the_task_and_stores_nothing(make_project, name, content, message):
    project = make_project()
    project.write("specs/datasets/docs.yaml", """
        kind: dataset
        name: docs
        sources:
          - type: files
            glob: data/*
    """)
    path = bad_file(project.root, name, content)
    result = project.doit(check=False)
    assert result.returncode == 1
    assert ran(result) == ["dataset.docs"]
    output = result.stdout + result.stderr
    assert f"TaskFailed - taskid:dataset.docs\ndataset.docs: {path.resolve()}:{message}\n" in output
    assert "Traceback" not in output
    assert complete_entries(project.root) == []
    staging = project.root / "build" / "store" / ".tmp"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert not (project.root / "build" / "dataset" / "docs").exists()


def test_a_failed_rebuild_keeps_the_previous_entries(tiny_project):
    tiny_project.doit("dataset.docs")
    before = complete_entries(tiny_project.root)
    with open(tiny_project.root / "data" / "docs.jsonl", "a", encoding="utf-8") as f:
        f.write("not json\n")
    result = tiny_project.doit("dataset.docs", check=False)
    assert result.returncode == 1
    assert "docs.jsonl:301: expected one JSON object per line; found invalid JSON (Expecting value)" in result.stdout
    assert complete_entries(tiny_project.root) == before
