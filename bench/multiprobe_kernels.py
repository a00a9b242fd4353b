#!/usr/bin/env python
"""Multi-probe kernels tried for batched 1:N search, against ``PackedGallery.search_many``.

The question (issue 15 point 4): does comparing a whole batch of probes per template word in
one compiled kernel beat ``search_many``'s shared NumPy pass? Two kernels, each timed in the
same process as ``search_many`` on the same random gallery (m = 512, q = 16 by default, ids
``0..n-1``, probes = enrolled codes):

- ``xla``: the batch against each chunk of the gallery in one jitted JAX program on the CPU
  (``(G[None] ^ P[:, None])``, OR over the bit planes, ``population_count``, sum, ``top_k``),
  chunks of ``--xla_chunks`` templates. JAX is a pinned dependency, so this always runs.
- ``numba``: ``@njit(parallel=True)`` over blocks of 512 templates, the batch's probes looped
  over a block while it is in cache, SWAR popcount; the mismatch counts only (no top-k), checked
  equal to ``PackedGallery.mismatches``. numba is NOT a dependency: it runs only where it can be
  imported, e.g. after ``pip install --target /tmp/nbsite numba==0.68.1 llvmlite==0.50.0`` and
  ``--numba_path /tmp/nbsite``.

Each timing is one call after an untimed one (compilation, warm-up). Printed: queries a second
for each method, and as the last line a JSON object of them.

    python bench/multiprobe_kernels.py --n 200000 --probes 64 --skip_numba
    python bench/multiprobe_kernels.py --n 1000000 --probes 64 --skip_xla --numba_path /tmp/nbsite
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import arg_parser, emit, loadavg, say  # noqa: E402
from iom.search.packing import pack_codes, unpack_codes  # noqa: E402
from iom.search.gallery import PackedGallery  # noqa: E402


def timed(fn) -> float:
    """Seconds of ``fn()``, after one untimed call."""
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def xla_rate(gallery: PackedGallery, probes: np.ndarray, top_k: int, chunk: int) -> float:
    """Queries a second of the jitted JAX kernel over chunks of ``chunk`` templates."""
    import jax
    import jax.numpy as jnp

    n, bits, words = len(gallery), gallery.bits, gallery.words
    table = jnp.asarray(gallery.packed().reshape(n, -1))
    packed_probes = jnp.asarray(pack_codes(probes, gallery.q).reshape(len(probes), -1))

    @jax.jit
    def best(block, batch):
        x = (block[None, :, :] ^ batch[:, None, :]).reshape(batch.shape[0], block.shape[0], bits, words)
        acc = x[:, :, 0]
        for j in range(1, bits):
            acc = acc | x[:, :, j]
        mismatches = jax.lax.population_count(acc).astype(jnp.int32).sum(-1)
        return jax.lax.top_k(-mismatches, top_k)

    def run():
        jax.block_until_ready([best(table[s:s + chunk], packed_probes) for s in range(0, n, chunk)])

    return len(probes) / timed(run)


def numba_rate(gallery: PackedGallery, probes: np.ndarray) -> float:
    """Queries a second of the numba kernel (mismatch counts only), checked against
    ``PackedGallery.mismatches``."""
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def mismatch_batch(data, n, batch, bits, words, out):
        block = 512
        m1, m2 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333)
        m4, h01 = np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(0x0101010101010101)
        for b in prange((n + block - 1) // block):
            s, e = b * block, min(n, b * block + block)
            total = np.zeros(block, np.uint64)
            acc = np.empty(block, np.uint64)
            for p in range(batch.shape[0]):
                total[:] = 0
                for w in range(words):
                    for t in range(s, e):
                        acc[t - s] = data[w, t] ^ batch[p, w]
                    for j in range(1, bits):
                        r = j * words + w
                        for t in range(s, e):
                            acc[t - s] |= data[r, t] ^ batch[p, r]
                    for i in range(e - s):
                        x = acc[i]
                        x = x - ((x >> np.uint64(1)) & m1)
                        x = (x & m2) + ((x >> np.uint64(2)) & m2)
                        x = (x + (x >> np.uint64(4))) & m4
                        total[i] += (x * h01) >> np.uint64(56)
                for i in range(e - s):
                    out[p, s + i] = total[i]

    n = len(gallery)
    data = gallery._data[:, :n]                      # word-major (bits*words, n)
    batch = pack_codes(probes, gallery.q).reshape(len(probes), -1)
    out = np.empty((len(probes), n), np.int32)
    seconds = timed(lambda: mismatch_batch(data, n, batch, gallery.bits, gallery.words, out))
    for i in range(min(4, len(probes))):
        assert np.array_equal(out[i], gallery.mismatches(probes[i])), "numba kernel disagrees"
    return len(probes) / seconds


def main() -> None:
    p = arg_parser(__doc__, full=True)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--q", type=int, default=16)
    p.add_argument("--probes", type=int, default=64)
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--xla_chunks", type=int, nargs="*", default=[8192, 32768])
    p.add_argument("--skip_xla", action="store_true")
    p.add_argument("--skip_numba", action="store_true")
    p.add_argument("--numba_path", default=None, help="a folder holding numba (pip install --target)")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    gallery = PackedGallery(args.m, args.q)
    for start in range(0, args.n, 200_000):
        size = min(200_000, args.n - start)
        gallery.add(np.arange(start, start + size), rng.integers(0, args.q, (size, args.m), dtype=np.uint8))
    probes = unpack_codes(gallery.packed()[rng.choice(args.n, args.probes)], args.m, args.q)
    result = {"n": args.n, "m": args.m, "q": args.q, "probes": args.probes, "loadavg_before": loadavg()}
    result["search_many"] = round(args.probes / timed(lambda: gallery.search_many(probes, args.top_k)), 1)
    say(f"search_many: {result['search_many']} queries/s")
    if not args.skip_xla:
        for chunk in args.xla_chunks:
            rate = round(xla_rate(gallery, probes, args.top_k, chunk), 1)
            result[f"xla_chunk_{chunk}"] = rate
            say(f"xla, chunks of {chunk}: {rate} queries/s")
    if not args.skip_numba:
        if args.numba_path:
            sys.path.insert(0, args.numba_path)
        if importlib.util.find_spec("numba") is None:
            say("numba: not importable (not a dependency; see the docstring)")
        else:
            result["numba_mismatches_only"] = round(numba_rate(gallery, probes), 1)
            say(f"numba (mismatches, no top-k): {result['numba_mismatches_only']} queries/s")
    result["loadavg_after"] = loadavg()
    emit(result)


if __name__ == "__main__":
    main()
