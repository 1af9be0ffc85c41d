"""MinHash LSH near-duplicate detection against exact Jaccard on a corpus with planted
near-duplicates, and against datasketch's choice of bands and rows."""

from __future__ import annotations

import os
import random
from itertools import combinations

import numpy as np
import pytest

from targets import neardup

PARAMS = neardup.Params(threshold=0.7, num_perm=128)


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """`n` documents of random words from a 20,000-word vocabulary (so unrelated documents
    share almost no 3-grams), a tenth of them followed by 1-3 copies edited at 1-10% of words;
    returns the documents and the planted groups (indices)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    docs: list[str] = []
    groups: list[list[int]] = []
    while len(docs) < n:
        base = [rng.choice(vocab) for _ in range(rng.randint(30, 90))]
        docs.append(" ".join(base))
        if rng.random() < 0.1:
            group = [len(docs) - 1]
            for _ in range(rng.randint(1, 3)):
                words = list(base)
                for _ in range(max(1, int(len(words) * rng.uniform(0.01, 0.10)))):
                    i = rng.randrange(len(words))
                    op = rng.random()
                    if op < 0.5:
                        words[i] = rng.choice(vocab)
                    elif op < 0.75:
                        del words[i]
                    else:
                        words.insert(i, rng.choice(vocab))
                docs.append(" ".join(words))
                group.append(len(docs) - 1)
            groups.append(group)
    return docs[:n], [[i for i in g if i < n] for g in groups]


def run(docs: list[str], params: neardup.Params, tmp_path, chunk: int = 1000, workers: int = 1) -> neardup.Result:
    index = neardup.Index(params, tmp_path / f"spill-{chunk}-{workers}.bin", workers)
    for start in range(0, len(docs), chunk):
        index.add(docs[start:start + chunk])
    return index.result()


def truth(docs: list[str], groups: list[list[int]], reported: np.ndarray, params: neardup.Params) -> set[int]:
    """Documents with another document at exact Jaccard ≥ threshold, looked for among the
    planted groups and every pair the index reported (unrelated random documents cannot
    reach the threshold: their 3-grams almost never meet)."""
    flat, offsets = neardup.shingles(docs, params)

    def jaccard(i: int, j: int) -> float:
        return neardup.exact_jaccard(flat[offsets[i]:offsets[i + 1]], flat[offsets[j]:offsets[j + 1]])

    pairs = {p for g in groups for p in combinations(sorted(g), 2)} | {tuple(p) for p in reported.tolist()}
    return {k for i, j in pairs if jaccard(i, j) >= params.threshold for k in (i, j)}


def test_planted_near_duplicates_are_found_with_high_precision_and_recall(tmp_path):
    docs, groups = corpus(5000)
    result = run(docs, PARAMS, tmp_path)
    true = truth(docs, groups, result.pairs, PARAMS)
    sizes = np.bincount(result.cluster, minlength=len(docs))
    flagged = {i for i in range(len(docs)) if sizes[result.cluster[i]] > 1}
    precision = len(flagged & true) / len(flagged)
    recall = len(flagged & true) / len(true)
    assert len(true) > 500
    assert precision == 1.0  # every pair is verified by exact Jaccard
    assert recall >= 0.95, recall
    assert (result.jaccard >= PARAMS.threshold).all()
    # one survivor per cluster: the first document of it in input order
    assert int((~result.keep).sum()) == len(flagged) - sum(result.sizes.values())
    for i in flagged:
        assert result.cluster[i] == min(j for j in flagged if result.cluster[j] == result.cluster[i])


def test_without_verification_candidates_count_as_they_are(tmp_path):
    docs, _ = corpus(2000)
    raw = run(docs, neardup.Params(threshold=0.7, num_perm=128, verify=False), tmp_path)
    assert len(raw.pairs) == raw.candidates and np.isnan(raw.jaccard).all()
    # unverified, false positives weigh as much as false negatives: fewer, longer bands
    assert (raw.bands, raw.rows) == neardup.choose_bands(0.7, 128, 0.5, 0.5) == (14, 9)
    assert neardup.Index(PARAMS, tmp_path / "v.bin").bands == 20


def test_the_result_depends_on_the_documents_not_on_the_chunks(tmp_path):
    docs, _ = corpus(3000, seed=3)
    whole = run(docs, PARAMS, tmp_path, chunk=3000)
    pieces = run(docs, PARAMS, tmp_path, chunk=137)
    np.testing.assert_array_equal(whole.cluster, pieces.cluster)
    np.testing.assert_array_equal(whole.pairs, pieces.pairs)
    again = run(docs, PARAMS, tmp_path, chunk=3000)
    np.testing.assert_array_equal(whole.cluster, again.cluster)
    parallel = run(docs, PARAMS, tmp_path, chunk=200, workers=3)  # chunks hashed in 3 processes, taken in order
    np.testing.assert_array_equal(whole.cluster, parallel.cluster)
    np.testing.assert_array_equal(whole.pairs, parallel.pairs)


def test_signatures_estimate_jaccard(tmp_path):
    """The fraction of equal signature entries of two documents estimates their Jaccard."""
    rng = random.Random(5)
    base = [f"w{rng.randrange(10**6)}" for _ in range(400)]
    docs = [" ".join(base)] + [" ".join(base[:k] + [f"x{rng.randrange(10**6)}" for _ in range(400 - k)])
                               for k in (350, 300, 200, 100)]
    flat, offsets = neardup.shingles(docs, PARAMS)
    index = neardup.Index(neardup.Params(num_perm=512), tmp_path / "s.bin")
    sig = neardup.signatures(flat, offsets, index.a, index.b)
    for k in range(1, len(docs)):
        exact = neardup.exact_jaccard(flat[offsets[0]:offsets[1]], flat[offsets[k]:offsets[k + 1]])
        estimate = (sig[0] == sig[k]).mean()
        assert abs(estimate - exact) < 0.07, (k, exact, estimate)


def test_short_and_empty_documents(tmp_path):
    docs = ["", "one", "one two", "one two", "  ", "Two words", "two WORDS"]
    result = run(docs, PARAMS, tmp_path)
    # empty documents are never candidates; shorter than 3 words: the whole text is one shingle
    assert result.cluster.tolist() == [0, 1, 2, 2, 4, 5, 5]
    assert result.keep.tolist() == [True, True, True, False, True, True, False]


def test_character_shingles(tmp_path):
    params = neardup.Params(threshold=0.6, num_perm=128, shingle="char", ngram=5)
    docs = ["The quick brown fox jumps over the lazy dog.", "The quick brown fox jumped over the lazy dog!",
            "Completely different words appear in this one."]
    result = run(docs, params, tmp_path)
    assert result.cluster.tolist() == [0, 0, 2]
    assert result.jaccard[0] >= 0.6


@pytest.mark.parametrize("threshold, num_perm", [(0.5, 128), (0.7, 128), (0.8, 256), (0.9, 64)])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.1, 0.9)])
def test_bands_and_rows_are_datasketchs(threshold, num_perm, weights):
    from datasketch.lsh import _optimal_param

    assert neardup.choose_bands(threshold, num_perm, *weights) == _optimal_param(threshold, num_perm, *weights)


# ---------------------------------------------------------------- chunks hashed as Ray tasks

def require_ray():
    """Ray (`pip install ray==2.60.0`): under CI=true its absence fails, elsewhere the test skips."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed; run `pip install ray==2.60.0`")
        pytest.skip("ray is not installed: run `pip install ray==2.60.0`")


def start_local_ray():
    """One local Ray of 2 CPUs for a module's tests (starting one takes seconds): builds in this
    process reuse it, a `doit` subprocess reaches it by RAY_ADDRESS, which this yields."""
    require_ray()
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    yield from start_local_ray()


@pytest.mark.slow  # the module's local Ray takes seconds to start
def test_ray_tasks_give_the_result_and_spill_of_one_process(local_ray, tmp_path):
    docs, _ = corpus(3000, seed=3)
    here = run(docs, PARAMS, tmp_path, chunk=3000)
    log: list[str] = []
    index = neardup.Index(PARAMS, tmp_path / "ray.bin", neardup.RayTasks(2, log.append))
    for start in range(0, len(docs), 200):
        index.add(docs[start:start + 200])
    on_ray = index.result()
    np.testing.assert_array_equal(here.cluster, on_ray.cluster)
    np.testing.assert_array_equal(here.pairs, on_ray.pairs)
    np.testing.assert_array_equal(here.jaccard, on_ray.jaccard)
    assert (tmp_path / "ray.bin").read_bytes() == (tmp_path / "spill-3000-1.bin").read_bytes()
    assert log == [f"near-dedup: 15 chunks (3,000 documents) hashed as Ray tasks on {local_ray}, 2 at a time"]


@pytest.mark.slow  # the module's local Ray takes seconds to start
def test_ray_tasks_run_elsewhere_at_most_workers_at_a_time_and_come_back_in_order(local_ray):
    import time

    def slow(texts, pause):
        started = time.time()
        time.sleep(pause * (2 if texts[0] == "0" else 1))  # the first chunk finishes last
        return os.getpid(), started, time.time(), texts[0]

    for workers in (1, 2):
        tasks = neardup.RayTasks(workers, lambda line: None)
        tasks.open(slow, 0.3)
        handles = [tasks.submit([str(k)]) for k in range(5)]
        results = [h.result() for h in handles]
        tasks.close()
        assert [r[3] for r in results] == ["0", "1", "2", "3", "4"]
        assert os.getpid() not in {r[0] for r in results}
        spans = [(r[1], r[2]) for r in results]
        most = max(sum(a < t < b for a, b in spans) for t in [s for s, _ in spans])
        assert most == workers - 1, (workers, spans)  # other tasks running when each one starts


@pytest.mark.slow  # the module's local Ray takes seconds to start
def test_a_ray_task_that_dies_is_a_build_error_naming_the_chunk(local_ray):
    from targets import BuildError

    def dies_on(texts):
        if "die" in texts:
            os._exit(1)  # the worker process ends, as when the kernel kills it for memory
        return (len(texts),)

    tasks = neardup.RayTasks(2, lambda line: None, retries=0)
    tasks.open(dies_on)
    first, second = tasks.submit(["a", "b", "c"]), tasks.submit(["d", "die"])
    assert first.result() == (3,)
    with pytest.raises(BuildError, match=r"^near-dedup chunk 1 \(kept documents 3 to 4, in reading order\) "
                                         r"died on Ray \(WorkerCrashedError: .*; retried 0 times\); build again"):
        second.result()
    tasks.close()


@pytest.mark.slow  # the module's local Ray takes seconds to start
def test_a_ray_worker_without_a_library_is_a_build_error_naming_it(local_ray):
    from targets import BuildError

    def needs_a_missing_library(texts):
        import ingot_no_such_library  # noqa: F401

    tasks = neardup.RayTasks(1, lambda line: None)
    tasks.open(needs_a_missing_library)
    with pytest.raises(BuildError, match=r"^near-dedup chunk 0 \(kept documents 0 to 0, in reading order\) failed "
                                         r"on Ray: its worker cannot import ingot_no_such_library \(install"):
        tasks.submit(["x"]).result()
    tasks.close()
