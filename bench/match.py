#!/usr/bin/env python
"""1:N search speed: packed bit-sliced IoM templates versus plain NumPy, same run.

For each ``--q`` a random gallery of ``--n`` codes of ``--m`` symbols (``uint8``, ids
``0..n-1``) is built, and ``--queries`` probes (each a noisy copy of an enrolled code,
``--noise`` of its symbols redrawn) are searched for their ``--top_k`` best matches by

(a) ``numpy``:  ``(gallery != probe).sum(1)`` on the ``(n, m)`` ``uint8`` array, then the
    top-k by ``np.argpartition`` (the plain NumPy way);
(b) ``packed``: :meth:`iom.search.gallery.PackedGallery.search` on the same codes packed
    bit-sliced (``ceil(log2 q)`` planes of ``m`` bits), chunked over a thread pool of
    ``os.cpu_count()`` threads.

Each method gets 2 untimed warm-up queries, then every query is timed on its own
(``time.perf_counter``); the figure reported is the mean milliseconds a query. Both
methods must return the same top-k similarities (asserted). Printed: a line per method
and q (mean/median/min ms a query, memory of the representation), the speed-up, the
machine (cpu count, load average before the run) and, as the LAST stdout line, one JSON
object::

    {"n": ..., "m": ..., "top_k": ..., "queries": ...,
     "results": [{"q": 8, "method": "numpy", "ms_per_query": ..., "gallery_mb": ...}, ...],
     "speedup": {"8": ..., "16": ...}, "cpu_count": ..., "loadavg_before": [...], "date": ...}

Usage::

    python bench/match.py                       # n = 1,000,000, m = 512, q = 8 and 16
    python bench/match.py --n 100000 --q 16 --queries 50
    python bench/match.py --q 8 --batches 1 16 256    # + batched queries: search_many throughput

``--batches B ...`` also times :meth:`~iom.search.gallery.PackedGallery.search_many` on batches
of B probes (one pass over the gallery a batch: each chunk is compared with every probe while
it is in cache), ``--batch_rounds`` batches each after one warm-up batch, and reports queries a
second; the first batch's answers must equal B single searches (asserted). Its figures go in
the JSON record under ``"batches"``.

``--shards N [N ...]`` (issue 15 point 3) also searches the same gallery split into N shards on
a local Ray cluster (:class:`iom.search.sharded.ShardedGallery`: one Ray actor a shard,
each holding a PackedGallery in its worker's memory, top-k merged in this process), for each N
in turn: the same single probes and the same batches as the in-process gallery, whose answers
they must equal (asserted), plus the templates, packed bytes and resident memory (RSS) of each
shard's worker and the time to load the shards. Its figures go under ``"sharded"``::

    python bench/match.py --n 10000000 --q 16 --shards 2 4 --batches 1 16 --no_numpy

The gallery is drawn in blocks of ``--block`` codes (block b from its own generator, seeded
by (seed, q, b)), so a 10M gallery never exists unpacked; ``--no_numpy`` skips the plain NumPy
method, which needs it whole (n x m bytes).
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (arg_parser, cpu_model, emit, loadavg, machine_line, process_rss_mb, say,  # noqa: E402
                          utc_now)
from iom.search.packing import pack_codes, packed_nbytes  # noqa: E402
from iom.search.gallery import DEFAULT_CHUNK, PackedGallery  # noqa: E402

#: codes drawn (and packed) at a time when building a gallery
DEFAULT_BLOCK = 1_000_000


def numpy_search(gallery: np.ndarray, probe: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain NumPy 1:N: mismatch counts of every row, then the k smallest (unordered)."""
    mismatches = (gallery != probe).sum(1)
    top = np.argpartition(mismatches, k - 1)[:k] if k < len(mismatches) else np.arange(len(mismatches))
    return top, mismatches[top]


def time_queries(fn, probes: np.ndarray, warmup: int = 2) -> tuple[list[float], list]:
    """Run ``fn`` on 2 warm-up probes, then time it on each probe; (ms per query, results)."""
    for probe in probes[:warmup]:
        fn(probe)
    times, results = [], []
    for probe in probes:
        start = time.perf_counter()
        results.append(fn(probe))
        times.append(1e3 * (time.perf_counter() - start))
    return times, results


def add_noise(sources: np.ndarray, q: int, noise: float, rng) -> np.ndarray:
    """Noisy copies of ``sources`` (enrolled codes): ``noise`` of their symbols redrawn."""
    probes = sources.copy()
    redraw = rng.random(probes.shape) < noise
    probes[redraw] = rng.integers(0, q, size=int(redraw.sum()), dtype=np.uint8)
    return probes


def code_blocks(n: int, m: int, q: int, block: int, seed: int):
    """``(start, codes)`` of a random gallery of ``n`` codes, ``block`` rows at a time; block b
    comes from its own generator (seed, q, b), so the same gallery can be drawn again."""
    for b, start in enumerate(range(0, n, block)):
        rng = np.random.default_rng([seed, q, b])
        yield start, rng.integers(0, q, size=(min(block, n - start), m), dtype=np.uint8)


def load_gallery(gallery, args, q: int, rows: np.ndarray | None = None) -> tuple[float, np.ndarray | None]:
    """Fill ``gallery`` (ids ``0..n-1``) block by block; ``(seconds, codes of rows)``."""
    picked = None if rows is None else np.zeros((len(rows), args.m), np.uint8)
    start_s = time.perf_counter()
    for start, codes in code_blocks(args.n, args.m, q, args.block, args.seed):
        gallery.add_packed(np.arange(start, start + len(codes)), pack_codes(codes, q))
        if rows is not None:
            inside = (rows >= start) & (rows < start + len(codes))
            picked[inside] = codes[rows[inside] - start]
    return time.perf_counter() - start_s, picked


def time_batches(search_many, q: int, batches: list[np.ndarray], top_k: int, label: str = "") -> tuple[dict, list]:
    """Queries a second of ``search_many`` over ``batches[1:]`` (``batches[0]``: untimed, its
    answers returned for checking); ``(figures, answers to batches[0])``."""
    first = search_many(batches[0], top_k)
    seconds = []
    for probes in batches[1:]:
        start = time.perf_counter()
        search_many(probes, top_k)
        seconds.append(time.perf_counter() - start)
    size = len(batches[0])
    mean = float(np.mean(seconds))
    out = {"q": q, "batch": size, "ms_per_batch": round(1e3 * mean, 1),
           "ms_per_query": round(1e3 * mean / size, 2), "queries_per_s": round(size / mean, 1)}
    print(f"q={q:3d} {label}search_many batch {size:4d}: {out['ms_per_batch']:9.1f} ms a batch, "
          f"{out['ms_per_query']:7.2f} ms a query, {out['queries_per_s']:8.1f} queries/s", flush=True)
    return out, first


def run_sharded(shards: int, q: int, args, probes: np.ndarray, found_packed: list, batches: dict,
                batch_answers: dict) -> dict:
    """The sharded gallery of ``shards`` shards on the local Ray cluster: same probes, same
    answers (asserted), its latency, batched throughput and memory per shard."""
    from iom.search.sharded import ShardedGallery

    gallery = ShardedGallery(args.m, q, shards=shards, cluster="local", chunk_size=args.chunk_size,
                             workers=args.shard_workers, capacity=args.n)
    try:
        build_s, _ = load_gallery(gallery, args, q)
        ms, found = time_queries(lambda p: gallery.search(p, args.top_k), probes)
        assert found == found_packed, (q, shards, "single searches differ from the in-process gallery")
        label = f"{shards} shards "
        out = {"q": q, "shards": shards, "ms_per_query": round(float(np.mean(ms)), 2),
               "ms_median": round(float(np.median(ms)), 2), "ms_min": round(float(np.min(ms)), 2),
               "load_s": round(build_s, 1), "batches": []}
        print(f"q={q:3d} {label}: {np.mean(ms):8.2f} ms/query (median {np.median(ms):.2f}, min {np.min(ms):.2f}); "
              f"loaded in {build_s:.1f} s", flush=True)
        for size, probe_batches in batches.items():
            figures, first = time_batches(gallery.search_many, q, probe_batches, args.top_k, label)
            assert first == batch_answers[size], (q, shards, size, "batch answers differ from the in-process gallery")
            out["batches"].append(figures)
        stats = gallery.shard_stats()
        out["shard_templates"] = [s["n"] for s in stats]
        out["shard_packed_mb"] = [round(s["nbytes"] / 1e6, 1) for s in stats]
        for key, name in (("rss_bytes", "shard_rss_mb"), ("rss_anon_bytes", "shard_rss_anon_mb"),
                          ("rss_shmem_bytes", "shard_rss_shmem_mb")):
            out[name] = [None if s[key] is None else round(s[key] / 1e6, 1) for s in stats]
        print(f"q={q:3d} {label}: templates a shard {out['shard_templates']}, packed MB {out['shard_packed_mb']}, "
              f"worker RSS MB {out['shard_rss_mb']} (private {out['shard_rss_anon_mb']}, object store "
              f"{out['shard_rss_shmem_mb']})", flush=True)
        return out
    finally:
        gallery.close()


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="enrolled templates")
    parser.add_argument("--m", type=int, default=512, help="symbols a code")
    parser.add_argument("--q", type=int, nargs="+", default=[8, 16], help="alphabet sizes")
    parser.add_argument("--queries", type=int, default=20, help="timed probes per method and q")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.3, help="share of a probe's symbols redrawn")
    parser.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--workers", type=int, default=None, help="threads (default os.cpu_count())")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, nargs="*", default=[],
                        help="also time search_many on batches of these sizes (e.g. 1 16 256)")
    parser.add_argument("--batch_rounds", type=int, default=3, help="timed batches per size")
    parser.add_argument("--shards", type=int, nargs="*", default=[],
                        help="also search the gallery in this many shards on a local Ray cluster (e.g. 2 4)")
    parser.add_argument("--shard_workers", type=int, default=None,
                        help="threads a shard scans with (default: the machine's CPU count)")
    parser.add_argument("--no_numpy", action="store_true",
                        help="skip the plain NumPy method (it needs the whole gallery unpacked: n x m bytes)")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="codes drawn and packed at a time")
    args = parser.parse_args()

    loadavg_before = loadavg()
    say(f"machine: {machine_line()}, numpy {np.__version__}, load average {loadavg_before}")
    say(f"gallery: n={args.n:,} m={args.m} top_k={args.top_k} queries={args.queries} (+2 warm-up)")
    rng = np.random.default_rng(args.seed)
    results, speedup, batches, sharded = [], {}, [], []
    cluster_start_s = None
    if args.shards:
        from iom.search.sharded import connect

        start = time.perf_counter()
        ray = connect("local")
        cluster_start_s = round(time.perf_counter() - start, 1)
        print(f"local Ray {ray.__version__} cluster started in {cluster_start_s} s "
              f"({ray.cluster_resources().get('CPU', 0):g} CPUs)", flush=True)
    for q in args.q:
        # probe sources first (rows of the gallery), the gallery then drawn block by block
        rows = rng.integers(0, args.n, size=args.queries)
        batch_rows = {size: rng.integers(0, args.n, size=(1 + args.batch_rounds, size)) for size in args.batches}
        wanted = np.concatenate([rows] + [r.ravel() for r in batch_rows.values()])
        packed_gallery = PackedGallery(args.m, q, chunk_size=args.chunk_size, workers=args.workers,
                                       capacity=args.n)
        build_s, sources = load_gallery(packed_gallery, args, q, wanted)
        probes = add_noise(sources[:len(rows)], q, args.noise, rng)
        offset, probe_batches = len(rows), {}
        for size, r in batch_rows.items():
            codes = add_noise(sources[offset:offset + r.size], q, args.noise, rng).reshape(*r.shape, args.m)
            probe_batches[size] = list(codes)
            offset += r.size

        ms_packed, found_packed = time_queries(lambda p: packed_gallery.search(p, args.top_k), probes)
        for row, hits in zip(rows, found_packed):
            if args.noise <= 0.5:                             # the noisy copy finds its source
                assert hits[0][0] == row, (q, row, hits[0])
        timed = [("packed", ms_packed, packed_gallery.nbytes / 1e6)]
        if not args.no_numpy:
            gallery = np.concatenate([c for _, c in code_blocks(args.n, args.m, q, args.block, args.seed)])
            ms_numpy, found_numpy = time_queries(lambda p: numpy_search(gallery, p, args.top_k), probes)
            for (_, mism), hits in zip(found_numpy, found_packed):
                want = np.sort(1.0 - mism / args.m)[::-1]
                got = np.array([s for _, s in hits])
                assert np.array_equal(want, got), (q, want, got)
            timed.insert(0, ("numpy", ms_numpy, gallery.nbytes / 1e6))
            speedup[str(q)] = round(float(np.mean(ms_numpy) / np.mean(ms_packed)), 1)
            del gallery

        for method, ms, mb in timed:
            results.append({"q": q, "method": method, "ms_per_query": round(float(np.mean(ms)), 2),
                            "ms_median": round(float(np.median(ms)), 2),
                            "ms_min": round(float(np.min(ms)), 2), "gallery_mb": round(mb, 1)})
            print(f"q={q:3d} {method:6s}: {np.mean(ms):8.2f} ms/query (median {np.median(ms):.2f}, "
                  f"min {np.min(ms):.2f}) gallery {mb:7.1f} MB", flush=True)
        batch_answers = {}
        for size, probe_batch in probe_batches.items():
            figures, batch_answers[size] = time_batches(packed_gallery.search_many, q, probe_batch, args.top_k)
            assert batch_answers[size] == [packed_gallery.search(p, args.top_k) for p in probe_batch[0]], (q, size)
            batches.append(figures)
        rss = process_rss_mb()
        print(f"q={q:3d} " + (f"speed-up packed/numpy: {speedup[str(q)]}x; " if str(q) in speedup else "") +
              f"packed code {packed_nbytes(args.m, q)} B vs {args.m} B; pack + enrol {build_s:.1f} s" +
              (f"; this process {rss:.0f} MB resident" if rss else ""), flush=True)
        for shards in args.shards:
            sharded.append(run_sharded(shards, q, args, probes, found_packed, probe_batches, batch_answers))
        packed_gallery = None                                # freed before the next q's gallery

    loadavg_after = loadavg()
    say(f"load average after: {loadavg_after}")
    emit({
        "n": args.n, "m": args.m, "top_k": args.top_k, "queries": args.queries,
        "results": results, "speedup": speedup, "batches": batches,
        "sharded": sharded, "cluster_start_s": cluster_start_s, "shard_workers": args.shard_workers,
        "chunk_size": args.chunk_size,
        "workers": args.workers or os.cpu_count(),
        "cpu_count": os.cpu_count(), "cpu": cpu_model(), "numpy": np.__version__,
        "loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
        "date": utc_now(),
    })


if __name__ == "__main__":
    main()
