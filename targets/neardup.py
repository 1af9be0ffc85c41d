"""Near-duplicate detection: MinHash signatures and LSH banding, vectorized with numpy.

Shingles: word n-grams (case-folded words split on ASCII whitespace) or character n-grams
(of the case-folded text with whitespace runs as one space). Each
word, or each character window, is hashed with xxh3; a word n-gram combines its words'
hashes with a fixed polynomial over 64-bit integers, so no n-gram string is ever built.
A shingle is the top 32 bits of its hash. A document shorter than n words is one shingle.

MinHash: `num_perm` hash functions h_k(x) = ((a_k·x + b_k) mod 2^64) >> 32 (multiply-shift,
a_k odd), each document's signature the minimum of every function over its shingles. A
chunk of documents is hashed at once: one (shingles × num_perm) block of a few MB at a time,
reduced per document with `np.minimum.reduceat`; there is no Python loop per permutation.
Chunks are hashed by an `Executor`: here (`InProcess`), in local processes (`Processes`) or as
Ray tasks (`RayTasks`), and always taken back in the order they were added.

LSH: `bands` bands of `rows` rows, chosen for the Jaccard threshold by minimizing the
weighted false-positive and false-negative areas under the S-curve 1 - (1 - s^rows)^bands
(as datasketch does; weights in `Params.weights`); each band of a signature is mixed into
one 64-bit key, and documents that share a key in any band are candidates. A candidate
pair is each member of a bucket with the bucket's first document, and with the member
before it.

Candidates are optionally verified by the exact Jaccard of their shingle sets, joined into
clusters (label propagation with pointer jumping over the pairs), and every cluster keeps
its first document in input order, so the result depends only on the documents and their
order. Shingles of every document are spilled to a file, so memory holds per document only
its band keys and offsets; `Index.add` takes documents a chunk at a time.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import xxhash

from targets import BuildError

BLOCK = 1 << 13        # shingles hashed against every permutation at once: num_perm x 8,192 x 8 bytes
MASK64 = (1 << 64) - 1


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm minimizing the weighted areas of false positives
    (pairs below the threshold that collide) and false negatives (pairs above it that do not)."""
    grid_low = np.linspace(0.0, threshold, 201)
    grid_high = np.linspace(threshold, 1.0, 201)
    best, choice = np.inf, (1, num_perm)
    for rows in range(1, num_perm + 1):
        bands = np.arange(1, num_perm // rows + 1)[:, None]
        fp = np.trapezoid(1 - (1 - grid_low ** rows) ** bands, grid_low, axis=1)
        fn = np.trapezoid((1 - grid_high ** rows) ** bands, grid_high, axis=1)
        error = fp_weight * fp + fn_weight * fn
        k = int(np.argmin(error))
        if error[k] < best - 1e-12:
            best, choice = float(error[k]), (int(bands[k, 0]), rows)
    return choice


def _constants(seed: int, n: int) -> np.ndarray:
    """`n` odd 64-bit constants drawn from `seed` (the same on every machine)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(0, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.8
    num_perm: int = 128
    shingle: str = "word"     # "word" or "char"
    ngram: int = 3
    seed: int = 1
    verify: bool = True

    def weights(self) -> tuple[float, float]:
        """(false-positive, false-negative) weights of the bands-and-rows choice. Verified, a
        false positive costs one exact Jaccard, so the bands favour recall; unverified, both
        errors weigh the same (datasketch's default)."""
        return (0.1, 0.9) if self.verify else (0.5, 0.5)


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The xxh3 of every case-folded word (split on ASCII whitespace) of `texts`, concatenated
    (uint64), and the number of words of each text."""
    split = [t.casefold().encode("utf-8").split() for t in texts]
    lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    words = np.fromiter(map(xxhash.xxh3_64_intdigest, chain.from_iterable(split)), dtype=np.uint64,
                        count=int(lengths.sum()))
    return words, lengths


def shingles(texts: list[str], params: Params) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of `texts` concatenated (uint32), and each text's start offset
    (len(texts) + 1 offsets)."""
    n = params.ngram
    if params.shingle == "char":
        parts = []
        for t in texts:
            t = " ".join(t.casefold().split())
            grams = [t[i:i + n].encode("utf-8") for i in range(max(1, len(t) - n + 1))] if t else []
            parts.append(np.fromiter(map(xxhash.xxh3_64_intdigest, grams), dtype=np.uint64, count=len(grams)))
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        flat = np.concatenate(parts) >> np.uint64(32) if parts else np.zeros(0, np.uint64)
        return flat.astype(np.uint32), offsets
    words, lengths = word_hashes(texts)
    mult = _constants(params.seed ^ 0x5EED, n)
    starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    # polynomial over each window of n words of the concatenation, kept where the window ends in
    # the document it starts in
    m = max(0, len(words) - n + 1)
    combined = np.zeros(m, np.uint64)
    for j in range(n):
        combined += words[j:j + m] * mult[j]
    combined ^= combined >> np.uint64(31)
    combined *= np.uint64(0x9E3779B97F4A7C15)
    owner = np.repeat(np.arange(len(lengths)), lengths)[:m]
    inside = np.arange(m) + n - 1 < starts[owner + 1]
    whole = lengths >= n
    counts = np.where(whole, lengths - n + 1, (lengths > 0).astype(np.int64))
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), np.uint64)
    from_windows = np.repeat(whole, counts)
    flat[from_windows] = combined[inside] >> np.uint64(32)
    short = [k for k in np.flatnonzero(~whole & (lengths > 0)).tolist()]
    for k, at in zip(short, np.flatnonzero(~from_windows).tolist()):
        # shorter than one n-gram: the whole document is its one shingle
        g = 0
        for j, h in enumerate(words[starts[k]:starts[k + 1]].tolist()):
            g = (g + h * int(mult[j])) & MASK64
        flat[at] = g >> 32
    return flat.astype(np.uint32), offsets


def signatures(flat: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(documents × num_perm) MinHash signatures, uint32; a document without shingles gets
    all-ones (and is never a candidate). Blocks are (num_perm × shingles), reduced along the
    shingles, and the `>> 32` comes after the minimum (shifting keeps which value is least)."""
    docs = len(offsets) - 1
    sig = np.full((len(a), docs), np.iinfo(np.uint64).max, dtype=np.uint64)
    owner = np.repeat(np.arange(docs), np.diff(offsets))
    x = flat.astype(np.uint64)
    for start in range(0, len(x), BLOCK):
        block = np.multiply.outer(a, x[start:start + BLOCK])
        block += b[:, None]
        ids = owner[start:start + BLOCK]
        cuts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        mins = np.minimum.reduceat(block, cuts, axis=1)
        rows = ids[cuts]  # distinct within a block: a document's shingles are consecutive
        sig[:, rows] = np.minimum(sig[:, rows], mins)
    return (sig >> np.uint64(32)).astype(np.uint32).T.copy()


def band_keys(sig: np.ndarray, bands: int, rows: int, mix: np.ndarray) -> np.ndarray:
    """(documents × bands) 64-bit keys: each band's rows mixed by odd constants, band-salted."""
    keys = np.zeros((len(sig), bands), np.uint64)
    for k in range(bands):
        part = sig[:, k * rows:(k + 1) * rows].astype(np.uint64)
        key = (part * mix[:rows]).sum(axis=1, dtype=np.uint64) + np.uint64((k * int(mix[rows])) & MASK64)
        key ^= key >> np.uint64(29)
        keys[:, k] = key * np.uint64(0xBF58476D1CE4E5B9)
    return keys


@dataclass
class Result:
    keep: np.ndarray                     # bool per document: the first of its cluster, or alone
    cluster: np.ndarray                  # per document: the index of its cluster's first document
    candidates: int                      # candidate pairs from LSH
    pairs: np.ndarray                    # verified (or, without verification, candidate) pairs (i < j)
    jaccard: np.ndarray                  # exact Jaccard of each pair (NaN when not verified)
    bands: int = 0
    rows: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # cluster size -> number of clusters (size ≥ 2)


def hash_chunk(texts: list[str], params: Params, a: np.ndarray, b: np.ndarray, bands: int, rows: int,
               mix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk's band keys, shingle offsets and shingles: the part of `Index.add` that runs in
    worker processes."""
    flat, offsets = shingles(texts, params)
    return band_keys(signatures(flat, offsets, a, b), bands, rows, mix), offsets, flat


class Index:
    """Add documents a chunk at a time; `result()` finds the near-duplicate clusters.

    Keeps per document its band keys (bands × 8 bytes) and shingle offset; the shingles go to
    `spill` (a file), read back by memory map for the exact-Jaccard verification. Chunks are
    shingled and hashed by `executor` (an `Executor`, or a number of local processes: 1 hashes
    them here), at most `executor.ahead` chunks ahead, and taken back in the order they were
    added: the result does not depend on where or in how many workers they were hashed."""

    def __init__(self, params: Params, spill: Path, executor: Executor | int = 1):
        self.params = params
        self.bands, self.rows = choose_bands(params.threshold, params.num_perm, *params.weights())
        perm = _constants(params.seed, 2 * params.num_perm)
        self.a, self.b = perm[:params.num_perm], perm[params.num_perm:] >> np.uint64(1)
        self.mix = _constants(params.seed ^ 0xBA2D, self.rows + 1)
        self.keys: list[np.ndarray] = []
        self.empty: list[np.ndarray] = []
        self.offsets = [np.zeros(1, np.int64)]
        self.count = 0
        if isinstance(executor, int):
            executor = InProcess() if executor <= 1 else Processes(executor)
        self.executor = executor
        self.pending: deque = deque()
        executor.open(hash_chunk, params, self.a, self.b, self.bands, self.rows, self.mix)
        self.spill_path = Path(spill)
        self.spill = open(self.spill_path, "wb")

    def add(self, texts: list[str]) -> None:
        self.pending.append(self.executor.submit(texts))
        while len(self.pending) > self.executor.ahead:
            self._take(self.pending.popleft().result())

    def drain(self) -> None:
        """Take back every chunk still being hashed (`result()` does it first)."""
        while self.pending:
            self._take(self.pending.popleft().result())

    def _take(self, hashed: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """The one merge: chunks appended in the order they were added, wherever they were hashed."""
        keys, offsets, flat = hashed
        self.keys.append(keys)
        self.empty.append(np.diff(offsets) == 0)
        self.offsets.append(offsets[1:] + self.offsets[-1][-1])
        flat.tofile(self.spill)
        self.count += len(offsets) - 1

    def close(self) -> None:
        """Stop the executor and close the spill file; `result()` does it, and a failed build
        (nothing is taken back after it)."""
        self.pending.clear()
        self.executor.close()
        self.spill.close()

    def result(self) -> Result:
        self.drain()
        self.close()
        n = self.count
        keys = np.concatenate(self.keys) if self.keys else np.zeros((0, self.bands), np.uint64)
        empty = np.concatenate(self.empty) if self.empty else np.zeros(0, bool)
        offsets = np.concatenate(self.offsets)
        self.keys, self.empty, self.offsets = [], [], [offsets]
        pairs = candidate_pairs(keys, empty)
        del keys
        candidates = len(pairs)
        jaccard = np.full(len(pairs), np.nan)
        if self.params.verify and len(pairs):
            flat = np.memmap(self.spill_path, dtype=np.uint32, mode="r") if offsets[-1] else np.zeros(0, np.uint32)
            jaccard = jaccards(flat, offsets, pairs)
            keep_pair = jaccard >= self.params.threshold
            pairs, jaccard = pairs[keep_pair], jaccard[keep_pair]
        cluster = clusters(n, pairs)
        first = cluster == np.arange(n)
        sizes = np.bincount(cluster, minlength=n)[first]
        sizes = sizes[sizes > 1]
        hist = {int(s): int(c) for s, c in zip(*np.unique(sizes, return_counts=True))}
        return Result(first, cluster, candidates, pairs, jaccard, self.bands, self.rows, hist)


# ---------------------------------------------------------------- where chunks are hashed

class Executor(Protocol):
    """Runs `fn(texts, *constants)` for chunk after chunk. `open` once with the function and its
    constant arguments, `submit` per chunk (a handle whose `result()` waits for the chunk's
    value), `close` at the end. `Index` takes results back in submission order, and lets `ahead`
    chunks wait before it takes the oldest (0: `submit` computes it)."""

    ahead: int

    def open(self, fn: Callable, *constants) -> None: ...

    def submit(self, texts: list[str]): ...

    def close(self) -> None: ...


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class InProcess:
    """Hashes each chunk as it is submitted, in this process."""

    ahead = 0

    def open(self, fn: Callable, *constants) -> None:
        self.fn, self.constants = fn, constants

    def submit(self, texts: list[str]) -> _Done:
        return _Done(self.fn(texts, *self.constants))

    def close(self) -> None:
        pass


class Processes:
    """Hashes chunks in `workers` local processes, `workers` chunks ahead."""

    def __init__(self, workers: int):
        self.workers = self.ahead = workers
        self.pool = None

    def open(self, fn: Callable, *constants) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.fn, self.constants = fn, constants
        self.pool = ProcessPoolExecutor(self.workers)  # its processes start with the first chunk

    def submit(self, texts: list[str]):
        return self.pool.submit(self.fn, texts, *self.constants)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


class RayTasks:
    """Hashes chunks as Ray tasks of one CPU each: at most `workers` running, and another
    `workers` finished or queued ahead of the one `Index` waits for (so a slow chunk does not idle
    the others, and memory stays flat). The constant arrays go to the object store once.

    Connects as `ray.init(address=RAY_ADDRESS)` would: RAY_ADDRESS set, to that cluster (`auto`:
    the one `ray start` began on this machine); unset, to a local Ray started for this build (and
    stopped by `close`, which `log`s it); inside a Ray driver or task already, to that one. This
    module's functions travel by value, so a cluster's workers need numpy and xxhash, not Ingot.
    A task that dies (after Ray's `retries`) is a BuildError naming the chunk."""

    def __init__(self, workers: int, log: Callable[[str], None] = print, retries: int = 3):
        self.workers, self.ahead = workers, 2 * workers
        self.log, self.retries = log, retries
        self.ray = self.task = self.address = None
        self.started_here = False
        self.running: list = []   # object refs of submitted chunks that may still be running
        self.chunks = self.docs = 0   # submitted
        self.hashed = self.hashed_docs = 0   # come back from Ray

    def open(self, fn: Callable, *constants) -> None:
        try:
            import ray
            import ray.cloudpickle
        except ImportError:
            raise BuildError(f"workers: {self.workers} hashes on Ray, which is not installed: run `pip install "
                             f"ray==2.60.0`, or set `workers: 1` to hash in local processes") from None
        self.ray = ray
        self.address = connect_ray(self.log)
        self.started_here = self.address is None
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        self.task = ray.remote(num_cpus=1, max_retries=self.retries)(fn)
        self.constants = [ray.put(c) if isinstance(c, np.ndarray) else c for c in constants]

    def submit(self, texts: list[str]) -> "_RayChunk":
        while len(self.running) >= self.workers:
            _, self.running = self.ray.wait(self.running, num_returns=1)
        ref = self.task.remote(texts, *self.constants)
        self.running.append(ref)
        chunk = _RayChunk(self, ref, self.chunks, self.docs, len(texts))
        self.chunks += 1
        self.docs += len(texts)
        return chunk

    def close(self) -> None:
        if self.ray is None:
            return
        where = "a local Ray started for this build" if self.started_here else (self.address or "this Ray")
        self.log(f"near-dedup: {self.hashed:,} chunk{'' if self.hashed == 1 else 's'} ({self.hashed_docs:,} "
                 f"documents) hashed as Ray tasks on {where}, {self.workers} at a time")
        self.running = []
        if self.started_here:
            self.ray.shutdown()
        self.ray = None


class _RayChunk:
    def __init__(self, tasks: RayTasks, ref, number: int, first: int, docs: int):
        self.tasks, self.ref, self.number, self.first, self.docs = tasks, ref, number, first, docs

    def result(self):
        from ray import exceptions

        try:
            value = self.tasks.ray.get(self.ref)
        except exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ImportError):
                raise BuildError(f"{self._name()} failed on Ray: its worker cannot import "
                                 f"{exc.cause.name or exc.cause} (install requirements.txt's numpy and xxhash "
                                 f"on every node of the cluster, the versions this machine has)") from None
            raise  # an exception of the hashing code itself: a bug, with its traceback
        except exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            retries = self.tasks.retries
            raise BuildError(f"{self._name()} died on Ray ({type(exc).__name__}: {reason}; retried {retries} "
                             f"time{'' if retries == 1 else 's'}); build again, and if it dies again, read the "
                             f"worker's log on its node (/tmp/ray/session_latest/logs): a worker killed for memory "
                             f"needs fewer `workers` per node or more memory") from None
        self.tasks.hashed += 1
        self.tasks.hashed_docs += self.docs
        # arrays copied out of the object store, which the rest of the build must not pin
        return tuple(np.array(part) if isinstance(part, np.ndarray) else part for part in value)

    def _name(self) -> str:
        last = self.first + self.docs - 1
        return f"near-dedup chunk {self.number} (kept documents {self.first:,} to {last:,}, in reading order)"


def connect_ray(log: Callable[[str], None]) -> str | None:
    """Connect this process to Ray (see `RayTasks`); the address, or None where it started a
    local Ray, which the caller stops."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    address = os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        log(f"RAY_ADDRESS is not set: started a local Ray ({cpus} CPUs) for this build; set RAY_ADDRESS to "
            f"use a cluster")
        return None
    fix = ("start the cluster (`ray start --head` on its head node) or set RAY_ADDRESS to the address it "
           "printed; or unset RAY_ADDRESS to start a local Ray for this build")
    _reachable(address, fix)
    try:
        ray.init(address=address, logging_level=logging.ERROR)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: Ray raises several
        raise BuildError(f"RAY_ADDRESS={address}: could not connect to Ray ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}); {fix}") from None
    return address


def _reachable(address: str, fix: str) -> None:
    """Fail in seconds where nothing listens at `address` (Ray itself retries for minutes)."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not port.isdigit():
        raise BuildError(f"RAY_ADDRESS={address}: expected host:port (or ray://host:port, or auto); {fix}")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10).close()
    except OSError as exc:
        reason = exc.strerror or exc
        raise BuildError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({reason}); {fix}") from None


def candidate_pairs(keys: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Unique (i, j), i < j, of documents sharing a band key: each member of a bucket with the
    bucket's first document and with the member before it (linear in the bucket's size, where
    all pairs would be quadratic on a bucket of exact copies)."""
    ids = np.flatnonzero(~empty)
    found = []
    for k in range(keys.shape[1]):
        col = keys[ids, k]
        order = np.argsort(col, kind="stable")  # equal keys keep input order: the first is the smallest
        ranked = col[order]
        start = np.r_[True, ranked[1:] != ranked[:-1]]
        head = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
        member = ~start
        found.append(np.stack([ids[order[head[member]]], ids[order[member]]], axis=1))
        after_second = member & np.r_[False, member[:-1]]  # members whose predecessor is not the head
        prev = np.flatnonzero(after_second)
        found.append(np.stack([ids[order[prev - 1]], ids[order[prev]]], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def jaccards(flat: np.ndarray, offsets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of every pair's shingle sets at once: each involved document's shingles made
    a sorted set, then (pair, shingle) keys of both sides sorted together, where a shingle of
    both sets shows up twice in a row."""
    docs = np.unique(pairs)
    sets: dict[int, np.ndarray] = {}
    for d in docs.tolist():
        s = np.sort(np.asarray(flat[offsets[d]:offsets[d + 1]]))
        sets[d] = s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s
    left = [sets[i] for i in pairs[:, 0].tolist()]
    right = [sets[j] for j in pairs[:, 1].tolist()]
    size_l = np.fromiter(map(len, left), np.int64, len(left))
    size_r = np.fromiter(map(len, right), np.int64, len(right))
    pair_id = np.repeat(np.arange(len(pairs), dtype=np.uint64), size_l + size_r)
    values = np.concatenate([v for lr in zip(left, right) for v in lr]).astype(np.uint64)
    keys = np.sort((pair_id << np.uint64(32)) | values)
    both = np.flatnonzero(keys[1:] == keys[:-1])
    inter = np.bincount((keys[both] >> np.uint64(32)).astype(np.int64), minlength=len(pairs))
    union = size_l + size_r - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two documents' shingle sets."""
    a, b = np.unique(a), np.unique(b)
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Per document, the smallest index of the documents it is joined to through `pairs`."""
    label = np.arange(n)
    if not len(pairs):
        return label
    i, j = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        while True:  # pointer jumping: follow labels to their roots
            jumped = new[new]
            if (jumped == new).all():
                break
            new = jumped
        if (new == label).all():
            return label
        label = new
