"""Throughput, precision and recall of Ingot's near-duplicate detection against datasketch's
MinHashLSH on a generated corpus, in the same run; and Ingot's peak memory on a million documents.

Corpus (seeded, deterministic, nothing downloaded): a vocabulary of 50,000 random lowercase
words drawn with Zipf-like frequencies (weight 1/(rank + 10)); base documents of 40-150 such
words, each starting with a capital; 10% of base documents get 1-3 edited copies. A copy's
edit fraction p is drawn uniformly from [0, p_max], then it gets Binomial(words, p) edits at
random places (half substitutions, a quarter insertions, a quarter deletions); p_max is
chosen so that a substitution-only copy at p_max would have a word 3-gram Jaccard of about
threshold - 0.2, so the planted pairs spread around and above the threshold (their
distribution is printed). All documents are then shuffled.

Both sides get the same shingles: word 3-grams of the case-folded text split on ASCII
whitespace (a document shorter than 3 words is one shingle), the same `num_perm` (default 128)
and threshold (default 0.8), and start from the list of texts; shingling is timed.

* Ingot: `targets.neardup.Index(Params(threshold, num_perm))` (its own bands and rows, the
  shingle spill file in a temporary folder), `add` per chunk of 10,000 texts, `result()` (LSH
  candidates verified by exact Jaccard, clusters). A document is flagged when its cluster has
  another member. It runs twice: in one process before datasketch, and after it with one
  worker process per core (the dataset builder's default; the result must be the same). The
  goal is checked on the second, and the one-process ratio is printed beside it.
* peer, datasketch 2.0.0 `MinHashLSH`, used the fastest way its documentation shows:
  `MinHashLSH(threshold, num_perm)` (its default bands and rows, from its optimizer, which is
  timed), `MinHash.generator` (one initialized MinHash copied per document) with
  `update_batch` of the shingles as bytes and `hashfunc=xxhash.xxh32_intdigest` (its docs
  suggest a fast non-cryptographic hash in place of the default SHA1), inserted with
  `insertion_session`, then `query` of every document. A document is flagged when its query returns another
  document. A second line adds what its `query` docs advise: keep only results whose
  `MinHash.jaccard` estimate reaches the threshold (timed on top of the first).

Ground truth: a document is a true near-duplicate when some other document has a shingle-set
Jaccard >= threshold with it, computed exactly on Python sets of the 3-gram bytes (not with
Ingot's hashes) for every pair inside a planted cluster and every pair either side reports
(Ingot's verified pairs, every datasketch query hit). Other pairs are not checked: documents
of independent random words share almost no 3-grams; the largest exact Jaccard of any reported
pair outside the planted clusters is printed as a check. Precision = flagged and true /
flagged; recall = flagged and true / true, over documents.

`--million`: 1,000,000 short documents (10-30 words, same recipe), generated chunk by chunk
(10,000 documents from their own seeded generator, copies planted within the chunk) inside a
fresh child process that feeds each chunk to `Index.add` and then calls `result()`, so the
corpus is never whole in memory. The child reports its own peak resident memory (VmHWM of
/proc/self/status as it ends; a child's rusage was seen to carry an earlier child's peak),
its wall time, and documents/s with the generation time taken out. Goal: under 2,000 MB.

`--ray`: Ingot alone on the 100,000-document corpus, its chunks hashed in this process, in one
local process per core, and as Ray tasks (1 worker, and one per core) on a local Ray started once
for the bench (its start is printed, not counted: a build started without RAY_ADDRESS pays it once,
a cluster not at all), in alternating rounds; documents/s of the hashing (every chunk added and
taken back) and of the whole (with the LSH and verification), medians. Chunks of `--chunk`
documents (10,000; the dataset builder's are 2,048).

Run: `python bench/dedup.py [--docs 100000] [--threshold 0.8] [--num-perm 128] [--seed 0]`,
`python bench/dedup.py --million` and `python bench/dedup.py --ray [--chunk 2048] [--rounds 3]`
(which needs `pip install ray==2.60.0`). datasketch is not a dependency of the package
(requirements.txt pins it for the tests and this bench): `pip install datasketch==2.0.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from targets.neardup import Index, Params  # noqa: E402

VOCAB = 50_000
NGRAM = 3
CHUNK = 10_000          # documents per Index.add, and per generated chunk with --million
COPY_FRACTION = 0.1     # base documents that get 1-3 edited copies
LONG, SHORT = (40, 150), (10, 30)
PEER_VERSION = "2.0.0"
GOAL_RATIO, GOAL_QUALITY, GOAL_MB = 5.0, 0.95, 2000


def vocabulary(seed: int) -> tuple[list[str], np.ndarray]:
    """VOCAB distinct random lowercase words of 2-10 letters, and the cumulative distribution
    of their Zipf-like frequencies."""
    rng = np.random.default_rng([seed, 1])
    words: dict[str, None] = {}  # a dict, not a set: insertion order keeps the vocabulary deterministic
    while len(words) < VOCAB:
        lengths = rng.integers(2, 11, VOCAB)
        letters = rng.integers(ord("a"), ord("z") + 1, int(lengths.sum()), dtype=np.uint8).tobytes().decode()
        cuts = np.r_[0, np.cumsum(lengths)]
        words.update(dict.fromkeys(letters[a:b] for a, b in zip(cuts[:-1], cuts[1:])))
    cdf = np.cumsum(1.0 / (np.arange(VOCAB) + 10.0))
    return list(words)[:VOCAB], cdf / cdf[-1]


def draw(rng: np.random.Generator, cdf: np.ndarray, k: int) -> np.ndarray:
    """`k` word ids (what rng.choice(p=...) does, without recomputing the distribution each call)."""
    return np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), VOCAB - 1)


def max_edit(threshold: float) -> float:
    """Edit fraction at which a substitution-only copy has 3-gram Jaccard about threshold - 0.2:
    each substituted word changes NGRAM shingles, so J ~ (1 - 3p) / (1 + 3p)."""
    low = threshold - 0.2
    return (1 - low) / (NGRAM * (1 + low))


def edited(ids: list[int], p: float, rng: np.random.Generator, cdf: np.ndarray) -> list[int]:
    """A copy of `ids` with Binomial(len(ids), p) edits at random places: half substitutions,
    a quarter insertions, a quarter deletions."""
    out = list(ids)
    k = int(rng.binomial(len(ids), p))
    ops, where, new = rng.integers(0, 4, k), rng.random(k), draw(rng, cdf, k)
    for op, w, word in zip(ops, where, new):
        at = int(w * len(out))
        if op < 2:
            out[at] = int(word)
        elif op == 2:
            out.insert(at, int(word))
        elif len(out) > 1:
            del out[at]
    return out


def corpus(n: int, rng: np.random.Generator, vocab: tuple[list[str], np.ndarray], lengths: tuple[int, int],
           p_max: float) -> tuple[list[str], list[list[int]]]:
    """`n` shuffled texts and the planted clusters (each a list of indices: base first, then copies)."""
    words, cdf = vocab
    copies = np.where(rng.random(n) < COPY_FRACTION, rng.integers(1, 4, n), 0)
    ends = np.cumsum(1 + copies)
    bases = int(np.searchsorted(ends, n, side="right"))
    copies = np.r_[copies[:bases], np.zeros(n - (int(ends[bases - 1]) if bases else 0), np.int64)]
    sizes = rng.integers(lengths[0], lengths[1] + 1, len(copies))
    flat = draw(rng, cdf, int(sizes.sum()))
    cuts = np.r_[0, np.cumsum(sizes)]
    docs, clusters = [], []
    for k, c in enumerate(copies):
        base = flat[cuts[k]:cuts[k + 1]].tolist()
        if c:
            clusters.append(list(range(len(docs), len(docs) + 1 + int(c))))
        docs.append(base)
        docs.extend(edited(base, float(rng.uniform(0, p_max)), rng, cdf) for _ in range(int(c)))
    order = rng.permutation(n)
    where = np.empty(n, np.int64)
    where[order] = np.arange(n)
    texts = [" ".join(words[i] for i in docs[j]).capitalize() for j in order]
    return texts, [[int(where[i]) for i in cluster] for cluster in clusters]


def word_shingles(text: str) -> list[bytes]:
    """Ingot's word shingles, as bytes: 3-grams of case-folded words split on ASCII whitespace."""
    words = text.casefold().encode("utf-8").split()
    if len(words) < NGRAM:
        return [b" ".join(words)] if words else []
    return [b" ".join(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def run_ingot(texts: list[str], params: Params, workers: int = 1):
    """Ingot's dedup from the texts: chunks into an Index (hashed in `workers` processes), then
    its result."""
    with tempfile.TemporaryDirectory(prefix="ingot-dedup-bench-") as tmp:
        index = Index(params, Path(tmp) / "shingles.u32", workers)
        for start in range(0, len(texts), CHUNK):
            index.add(texts[start:start + CHUNK])
        return index.result()


def run_datasketch(texts: list[str], threshold: float, num_perm: int, seed: int):
    """datasketch from the texts: MinHash of every document, insert all, query each."""
    import xxhash
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sketches = list(MinHash.generator((word_shingles(t) for t in texts), num_perm=num_perm, seed=seed,
                                      hashfunc=xxhash.xxh32_intdigest))
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m)
    return sketches, [lsh.query(m) for m in sketches], (lsh.b, lsh.r)


def quality(flagged: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    hits = int((flagged & true).sum())
    return hits / max(int(flagged.sum()), 1), hits / max(int(true.sum()), 1)


def ground_truth(texts: list[str], pairs: set[tuple[int, int]], threshold: float) -> tuple[dict, np.ndarray]:
    """Exact Jaccard of every pair in `pairs`, and per document whether one reaches the threshold."""
    sets: dict[int, set[bytes]] = {}
    jaccard = {}
    for i, j in pairs:
        a = sets[i] if i in sets else sets.setdefault(i, set(word_shingles(texts[i])))
        b = sets[j] if j in sets else sets.setdefault(j, set(word_shingles(texts[j])))
        union = len(a | b)
        jaccard[i, j] = len(a & b) / union if union else 1.0
    true = np.zeros(len(texts), bool)
    for (i, j), s in jaccard.items():
        if s >= threshold:
            true[i] = true[j] = True
    return jaccard, true


def histogram(values: list[float], threshold: float) -> str:
    edges = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    counts, _ = np.histogram(values, bins=edges)
    cells = [f"[{a:.1f},{b:.1f}{']' if b == 1.0 else ')'} {c:,}" for a, b, c in zip(edges, edges[1:], counts)]
    above = sum(v >= threshold for v in values)
    return "; ".join(cells) + f"; >= {threshold}: {above:,} of {len(values):,} ({above / max(len(values), 1):.0%})"


def compare(args: argparse.Namespace) -> None:
    from importlib.metadata import version

    import importlib.util

    if importlib.util.find_spec("datasketch") is None:
        raise SystemExit(f"the peer is not installed: run `pip install datasketch=={PEER_VERSION}`")
    if version("datasketch") != PEER_VERSION:
        print(f"note: datasketch {version('datasketch')} installed, this bench was written against {PEER_VERSION}")
    n = args.docs or 100_000
    started = time.perf_counter()
    texts, planted = corpus(n, np.random.default_rng(args.seed), vocabulary(args.seed), LONG, max_edit(args.threshold))
    planted_pairs = {(min(a, b), max(a, b)) for c in planted for a, b in combinations(c, 2)}
    words = np.array([len(t.split()) for t in texts])
    print(f"corpus: {n:,} documents ({words.min()}-{words.max()} words, mean {words.mean():.0f}), "
          f"{len(planted):,} planted clusters of 2-4, {len(planted_pairs):,} planted pairs; "
          f"edit fraction 0-{max_edit(args.threshold):.3f}; made in {time.perf_counter() - started:.1f} s", flush=True)

    params = Params(threshold=args.threshold, num_perm=args.num_perm, seed=args.seed + 1)
    times = {}
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    result = run_ingot(texts, params)
    times["ingot 1"] = time.perf_counter() - started
    print(f"ingot, 1 process: {times['ingot 1']:.2f} s", flush=True)
    started = time.perf_counter()
    sketches, hits, (b, r) = run_datasketch(texts, args.threshold, args.num_perm, args.seed + 1)
    times["datasketch"] = time.perf_counter() - started
    print(f"datasketch: {times['datasketch']:.2f} s", flush=True)
    started = time.perf_counter()
    estimated = [[k for k in found if k != i and sketches[i].jaccard(sketches[k]) >= args.threshold]
                 for i, found in enumerate(hits)]
    times["filter"] = time.perf_counter() - started
    started = time.perf_counter()
    again = run_ingot(texts, params, cores)
    times["ingot n"] = time.perf_counter() - started
    print(f"ingot, {cores} processes (the builder's default: one per core): {times['ingot n']:.2f} s", flush=True)
    assert np.array_equal(again.cluster, result.cluster), "Ingot's result changed with the number of processes"

    ingot_flag = np.bincount(result.cluster, minlength=n)[result.cluster] > 1
    ds_flag = np.array([any(k != i for k in found) for i, found in enumerate(hits)])
    est_flag = np.array([bool(found) for found in estimated])
    ingot_pairs = {(int(i), int(j)) for i, j in result.pairs}
    ds_pairs = {(min(i, k), max(i, k)) for i, found in enumerate(hits) for k in found if k != i}
    jaccard, true = ground_truth(texts, planted_pairs | ingot_pairs | ds_pairs, args.threshold)
    outside = [jaccard[p] for p in (ingot_pairs | ds_pairs) - planted_pairs]

    print(f"planted pairs, exact Jaccard: {histogram([jaccard[p] for p in planted_pairs], args.threshold)}")
    print(f"true near-duplicate documents (a partner at exact Jaccard >= {args.threshold}): {int(true.sum()):,}; "
          f"reported pairs outside planted clusters: {len(outside):,}, largest exact Jaccard "
          f"{max(outside, default=0.0):.3f}")
    print(f"LSH: ingot {result.bands} bands x {result.rows} rows ({result.candidates:,} candidate pairs, "
          f"{len(result.pairs):,} verified); datasketch {b} bands x {r} rows ({len(ds_pairs):,} pairs from queries)")
    slow = times["ingot n"]
    rows = [("ingot, 1 process", times["ingot 1"], ingot_flag), (f"ingot, {cores} processes", slow, ingot_flag),
            ("datasketch MinHashLSH", times["datasketch"], ds_flag),
            ("datasketch + jaccard filter", times["datasketch"] + times["filter"], est_flag)]
    print(f"{'':30} {'seconds':>8} {'docs/s':>9} {'flagged':>8} {'precision':>9} {'recall':>7}")
    for name, seconds, flagged in rows:
        precision, recall = quality(flagged, true)
        print(f"{name:30} {seconds:8.2f} {n / seconds:9,.0f} {int(flagged.sum()):8,} {precision:9.4f} {recall:7.4f}")
    ratio = times["datasketch"] / slow
    ip, ir = quality(ingot_flag, true)
    dp, dr = quality(ds_flag, true)
    print(f"\nsummary: {n:,} documents, {len(planted_pairs):,} planted pairs, threshold {args.threshold}, "
          f"num_perm {args.num_perm}, ingot {result.bands}x{result.rows} / datasketch {b}x{r} bands x rows")
    print(f"  ingot      {n / slow:9,.0f} docs/s  precision {ip:.4f}  recall {ir:.4f}  ({cores} processes; "
          f"{n / times['ingot 1']:,.0f} docs/s in one)")
    print(f"  datasketch {n / times['datasketch']:9,.0f} docs/s  precision {dp:.4f}  recall {dr:.4f}  (one process)")
    print(f"  ratio ingot / datasketch: {ratio:.2f}x with {cores} processes, {times['datasketch'] / times['ingot 1']:.2f}x "
          f"in one (goal >= {GOAL_RATIO:.0f}x at precision and recall >= {GOAL_QUALITY}: "
          f"{'met' if ratio >= GOAL_RATIO and min(ip, ir) >= GOAL_QUALITY else 'NOT met'})")


def hashing(args: argparse.Namespace) -> None:
    """`--ray`: Ingot's near-dedup on the same corpus with its chunks hashed in this process, in
    local processes, and as Ray tasks on a local Ray (started once, its start timed apart), in
    alternating rounds; the median of each. Every run must find the same clusters."""
    import importlib.util
    import logging

    if importlib.util.find_spec("ray") is None:
        raise SystemExit("--ray needs Ray: run `pip install ray==2.60.0`")
    import ray

    from targets.neardup import InProcess, Processes, RayTasks

    n, cores, chunk = args.docs or 100_000, os.cpu_count() or 1, args.chunk
    started = time.perf_counter()
    texts, _ = corpus(n, np.random.default_rng(args.seed), vocabulary(args.seed), LONG, max_edit(args.threshold))
    print(f"corpus: {n:,} documents, made in {time.perf_counter() - started:.1f} s; chunks of {chunk:,}; "
          f"{cores} cores", flush=True)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR)
    print(f"local Ray of {cores} CPUs started in {time.perf_counter() - started:.1f} s (not counted below)", flush=True)
    params = Params(threshold=args.threshold, num_perm=args.num_perm, seed=args.seed + 1)
    ways = {"1 process (here)": InProcess, f"{cores} local processes": lambda: Processes(cores),
            "Ray, 1 worker": lambda: RayTasks(1, lambda line: None),
            f"Ray, {cores} workers": lambda: RayTasks(cores, lambda line: None)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    first = None
    for round_ in range(args.rounds):
        for name, executor in ways.items():
            with tempfile.TemporaryDirectory(prefix="ingot-dedup-bench-") as tmp:
                t0 = time.perf_counter()
                index = Index(params, Path(tmp) / "shingles.u32", executor())
                for start in range(0, n, chunk):
                    index.add(texts[start:start + chunk])
                index.drain()
                t1 = time.perf_counter()
                result = index.result()
                times[name].append((t1 - t0, time.perf_counter() - t0))
            first = result if first is None else first
            assert np.array_equal(result.cluster, first.cluster), f"{name} found other clusters"
            print(f"round {round_ + 1}, {name}: hashing {t1 - t0:.2f} s, in all {times[name][-1][1]:.2f} s", flush=True)
    ray.shutdown()
    print(f"\nsummary: {n:,} documents, chunks of {chunk:,}, median of {args.rounds} rounds "
          f"(the same clusters every run)")
    print(f"{'':24} {'hashing docs/s':>15} {'in all docs/s':>14} {'vs 1 process':>13}")
    base = float(np.median([h for h, _ in times["1 process (here)"]]))
    for name, runs in times.items():
        h, whole = float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs]))
        print(f"{name:24} {n / h:15,.0f} {n / whole:14,.0f} {base / h:12.2f}x")


CHILD_MARK = "--child-million"


def child(n: int, seed: int, threshold: float, num_perm: int) -> None:
    """Inside the measured process: generate and add chunk by chunk, then result; print JSON."""
    started = time.perf_counter()
    generating = 0.0
    vocab = vocabulary(seed)
    generating += time.perf_counter() - started
    params = Params(threshold=threshold, num_perm=num_perm, seed=seed + 1)
    planted_docs = 0
    with tempfile.TemporaryDirectory(prefix="ingot-dedup-million-") as tmp:
        index = Index(params, Path(tmp) / "shingles.u32")
        for k, start in enumerate(range(0, n, CHUNK)):
            t = time.perf_counter()
            texts, planted = corpus(min(CHUNK, n - start), np.random.default_rng([seed, 2, k]), vocab, SHORT,
                                    max_edit(threshold))
            planted_docs += sum(map(len, planted))
            generating += time.perf_counter() - t
            index.add(texts)
        del texts
        result = index.result()
        spill = (Path(tmp) / "shingles.u32").stat().st_size
    wall = time.perf_counter() - started
    peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
    flagged = int((np.bincount(result.cluster, minlength=n)[result.cluster] > 1).sum())
    print(json.dumps({"wall": wall, "generating": generating, "peak": peak, "flagged": flagged,
                      "planted_docs": planted_docs, "candidates": result.candidates, "pairs": len(result.pairs),
                      "bands": result.bands, "rows": result.rows, "spill": spill}))


def million(args: argparse.Namespace) -> None:
    n = args.docs or 1_000_000
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, CHILD_MARK, str(n), str(args.seed), str(args.threshold),
                          str(args.num_perm)], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the measured child failed ({out.returncode})")
    process = time.perf_counter() - started
    r = json.loads(out.stdout.splitlines()[-1])
    dedup = r["wall"] - r["generating"]
    mb = r["peak"] / 1e6
    print(f"{n:,} documents of {SHORT[0]}-{SHORT[1]} words, generated in chunks of {CHUNK:,} inside the child "
          f"({r['planted_docs']:,} documents in planted clusters); threshold {args.threshold}, num_perm "
          f"{args.num_perm}, {r['bands']} bands x {r['rows']} rows")
    print(f"child: {r['wall']:.1f} s inside ({r['generating']:.1f} s generating the corpus, {dedup:.1f} s Ingot), "
          f"{process:.1f} s as a process; {r['candidates']:,} candidate pairs, {r['pairs']:,} verified, "
          f"{r['flagged']:,} documents flagged; shingle spill file {r['spill'] / 1e6:,.0f} MB")
    print(f"\nsummary: {n:,} documents, ingot {n / dedup:,.0f} docs/s (generation excluded), "
          f"peak resident memory {mb:,.0f} MB (VmHWM, whole child process): "
          f"{'under' if mb < GOAL_MB else 'NOT under'} {GOAL_MB:,} MB")


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == CHILD_MARK:
        child(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, help="documents (default 100,000; 1,000,000 with --million)")
    ap.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold of both sides")
    ap.add_argument("--num-perm", type=int, default=128, help="MinHash permutations of both sides")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus (and, plus one, of the hashes)")
    ap.add_argument("--million", action="store_true", help="peak memory of Ingot alone on 1,000,000 short documents")
    ap.add_argument("--ray", action="store_true",
                    help="Ingot alone, its chunks hashed here, in local processes and as Ray tasks (needs ray)")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="documents per Index.add, with --ray (the dataset "
                                                               "builder adds 2,048)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds, with --ray")
    args = ap.parse_args()
    if args.million:
        million(args)
    elif args.ray:
        hashing(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
