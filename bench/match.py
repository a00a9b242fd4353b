#!/usr/bin/env python
"""1:N search speed: packed bit-sliced IoM templates versus plain NumPy, same run.

For each ``--q`` a random gallery of ``--n`` codes of ``--m`` symbols (``uint8``, ids
``0..n-1``) is built, and ``--queries`` probes (each a noisy copy of an enrolled code,
``--noise`` of its symbols redrawn) are searched for their ``--top_k`` best matches by

(a) ``numpy``:  ``(gallery != probe).sum(1)`` on the ``(n, m)`` ``uint8`` array, then the
    top-k by ``np.argpartition`` (the plain NumPy way);
(b) ``packed``: :meth:`iom.service.search.PackedGallery.search` on the same codes packed
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

``--batches B ...`` also times :meth:`~iom.service.search.PackedGallery.search_many` on batches
of B probes (one pass over the gallery a batch: each chunk is compared with every probe while
it is in cache), ``--batch_rounds`` batches each after one warm-up batch, and reports queries a
second; the first batch's answers must equal B single searches (asserted). Its figures go in
the JSON record under ``"batches"``.
"""

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import cpu_model  # noqa: E402
from iom.service.packing import pack_codes, packed_nbytes  # noqa: E402
from iom.service.search import DEFAULT_CHUNK, PackedGallery  # noqa: E402


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


def noisy_probes(gallery: np.ndarray, q: int, count: int, noise: float, rng) -> np.ndarray:
    """``count`` probes, each an enrolled code with ``noise`` of its symbols redrawn."""
    probes = gallery[rng.integers(0, len(gallery), size=count)].copy()
    redraw = rng.random(probes.shape) < noise
    probes[redraw] = rng.integers(0, q, size=int(redraw.sum()), dtype=np.uint8)
    return probes


def time_batches(packed_gallery, gallery: np.ndarray, q: int, size: int, args, rng) -> dict:
    """Queries a second of ``search_many`` on batches of ``size`` probes (one warm-up batch,
    then ``args.batch_rounds`` timed); the first batch is checked against single searches."""
    first = noisy_probes(gallery, q, size, args.noise, rng)
    found = packed_gallery.search_many(first, args.top_k)
    assert found == [packed_gallery.search(p, args.top_k) for p in first], (q, size)
    seconds = []
    for _ in range(args.batch_rounds):
        probes = noisy_probes(gallery, q, size, args.noise, rng)
        start = time.perf_counter()
        packed_gallery.search_many(probes, args.top_k)
        seconds.append(time.perf_counter() - start)
    mean = float(np.mean(seconds))
    out = {"q": q, "batch": size, "ms_per_batch": round(1e3 * mean, 1),
           "ms_per_query": round(1e3 * mean / size, 2), "queries_per_s": round(size / mean, 1)}
    print(f"q={q:3d} search_many batch {size:4d}: {out['ms_per_batch']:9.1f} ms a batch, "
          f"{out['ms_per_query']:7.2f} ms a query, {out['queries_per_s']:8.1f} queries/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args = parser.parse_args()

    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {os.cpu_count()} cpus ({cpu_model()}), numpy {np.__version__}, "
          f"load average {loadavg_before}", flush=True)
    print(f"gallery: n={args.n:,} m={args.m} top_k={args.top_k} queries={args.queries} "
          f"(+2 warm-up)", flush=True)
    rng = np.random.default_rng(args.seed)
    results, speedup, batches = [], {}, []
    for q in args.q:
        gallery = rng.integers(0, q, size=(args.n, args.m), dtype=np.uint8)
        rows = rng.integers(0, args.n, size=args.queries)
        probes = gallery[rows].copy()
        redraw = rng.random(probes.shape) < args.noise
        probes[redraw] = rng.integers(0, q, size=int(redraw.sum()), dtype=np.uint8)

        start = time.perf_counter()
        packed_gallery = PackedGallery(args.m, q, chunk_size=args.chunk_size, workers=args.workers,
                                       capacity=args.n)
        packed_gallery.add_packed(np.arange(args.n), pack_codes(gallery, q))
        build_s = time.perf_counter() - start

        ms_numpy, found_numpy = time_queries(lambda p: numpy_search(gallery, p, args.top_k), probes)
        ms_packed, found_packed = time_queries(lambda p: packed_gallery.search(p, args.top_k), probes)
        for row, (_, mism), hits in zip(rows, found_numpy, found_packed):
            want = np.sort(1.0 - mism / args.m)[::-1]
            got = np.array([s for _, s in hits])
            assert np.array_equal(want, got), (q, want, got)
            if args.noise <= 0.5:                             # the noisy copy finds its source
                assert hits[0][0] == row, (q, row, hits[0])

        for method, ms, mb in (("numpy", ms_numpy, gallery.nbytes / 1e6),
                               ("packed", ms_packed, packed_gallery.nbytes / 1e6)):
            results.append({"q": q, "method": method, "ms_per_query": round(float(np.mean(ms)), 2),
                            "ms_median": round(float(np.median(ms)), 2),
                            "ms_min": round(float(np.min(ms)), 2), "gallery_mb": round(mb, 1)})
            print(f"q={q:3d} {method:6s}: {np.mean(ms):8.2f} ms/query (median {np.median(ms):.2f}, "
                  f"min {np.min(ms):.2f}) gallery {mb:7.1f} MB", flush=True)
        for size in args.batches:
            batches.append(time_batches(packed_gallery, gallery, q, size, args, rng))
        speedup[str(q)] = round(float(np.mean(ms_numpy) / np.mean(ms_packed)), 1)
        print(f"q={q:3d} speed-up packed/numpy: {speedup[str(q)]}x; packed code "
              f"{packed_nbytes(args.m, q)} B vs {args.m} B; pack + enrol {build_s:.1f} s", flush=True)
        del gallery, packed_gallery

    loadavg_after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average after: {loadavg_after}", flush=True)
    print(json.dumps({
        "n": args.n, "m": args.m, "top_k": args.top_k, "queries": args.queries,
        "results": results, "speedup": speedup, "batches": batches,
        "chunk_size": args.chunk_size,
        "workers": args.workers or os.cpu_count(),
        "cpu_count": os.cpu_count(), "cpu": cpu_model(), "numpy": np.__version__,
        "loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }))


if __name__ == "__main__":
    main()
