"""1:N search of a probe IoM code over a gallery of bit-sliced packed templates.

:class:`PackedGallery` keeps the packed codes (see :mod:`iom.search.packing`) of ``N``
enrolled templates in one ``uint64`` array together with the caller's template ids, and
computes, for a probe code, the number of differing groups against every template at once:

    mismatches = popcount(OR over planes of (gallery XOR probe)), summed over words

Layout. The array is an ``(N, bits*words)`` matrix stored *word-major* (a Fortran-ordered
matrix: physically ``(bits*words, capacity)``, column ``j`` of all templates contiguous),
so that each NumPy ufunc call runs over one long contiguous run of a chunk of templates,
with the probe word a broadcast scalar. On a 2-core AMD EPYC (N = 10^6, m = 512, one
thread) this measured 16.6 ms against 55 ms (q=16) and 13.5 against 45 ms (q=8) for the
row-major ``(N, bits*words)`` layout, whose OR over planes runs on rows only ``words``
long. With both cores a query (~11 ms at q=8, ~13 ms at q=16) is close to the time one
streaming pass over the packed codes takes on that machine (~10 ms for 256 MB), i.e.
memory-bandwidth bound; ``bench/match.py`` measures it against plain NumPy.

Kernel. The gallery is cut into chunks of ``chunk_size`` templates (the per-chunk
buffers stay in cache); for one chunk, into per-thread preallocated buffers:

1. ``np.bitwise_xor(gallery[:, chunk], probe[:, None], out=buf)``     (bits*words, n)
2. ``np.bitwise_or(buf[plane 0], buf[plane j], out=buf[plane 0])``   for j = 1..bits-1
3. ``np.bitwise_count(buf[plane 0], out=cnt)``                        (words, n) uint8
4. fold the word rows in halves in ``uint8`` (at most 2 x 64), then sum them into int32.

Chunks run on a :class:`concurrent.futures.ThreadPoolExecutor` with ``os.cpu_count()``
workers (the ufuncs release the GIL). For :meth:`PackedGallery.search` each chunk also
selects its own best ``top_k`` candidates (``np.partition``), and the few candidates of
all chunks are merged, so no full-length sort is ever made.

Ranking: most similar first; equal similarity → smaller id first (deterministic).

A gallery is safe to *search* from several threads at once; :meth:`~PackedGallery.add`
and :meth:`~PackedGallery.remove` must not run concurrently with anything else on the
same gallery (the caller serialises writes, e.g. with a lock).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from iom.search.packing import _check_m, _check_q, pack_codes, packed_shape, unpack_codes

#: templates a chunk by default (q=16, m=512: 32 x 8 B x 16384 = 4 MiB of XOR buffer)
DEFAULT_CHUNK = 16384

_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()


def checked_ids(ids, count: int) -> np.ndarray:
    """``ids`` as ``int64``: a 1-D array of ``count`` distinct integers, else :class:`ValueError`."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != count:
        raise ValueError(f"need a 1-D array of {count} ids, got shape {ids.shape}")
    if count and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if len(np.unique(ids)) != count:
        raise ValueError("ids repeat within the batch")
    return ids


def checked_codes(codes, m: int) -> np.ndarray:
    """``codes`` as an array of shape ``(k, m)``, else :class:`ValueError`."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != m:
        raise ValueError(f"codes must have shape (k, {m}), got {codes.shape}")
    return codes


def checked_packed(packed, bits: int, words: int) -> np.ndarray:
    """``packed`` as a ``(k, bits, words)`` ``uint64`` array, else :class:`ValueError`."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint64 or packed.ndim != 3 or packed.shape[1:] != (bits, words):
        raise ValueError(f"packed codes must be uint64 of shape (k, {bits}, {words}), "
                         f"got {packed.dtype} {packed.shape}")
    return packed


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide thread pool of ``workers`` threads (created once, shared)."""
    with _EXECUTORS_LOCK:
        pool = _EXECUTORS.get(workers)
        if pool is None:
            pool = _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="iom-search")
        return pool


class PackedGallery:
    """Packed IoM templates of ``N`` enrolled ids, searchable 1:N by Hamming similarity.

    Parameters
    ----------
    m, q
        Code length and alphabet size (``2 <= q <= 256``) of every template.
    chunk_size
        Templates processed per task (default :data:`DEFAULT_CHUNK`).
    workers
        Threads that process chunks (default ``os.cpu_count()``; 1 runs in the caller).
    capacity
        Templates to reserve room for up front (the array grows by doubling anyway).
    """

    def __init__(self, m: int, q: int, *, chunk_size: int = DEFAULT_CHUNK,
                 workers: int | None = None, capacity: int = 0):
        self.m, self.q = _check_m(m), _check_q(q)
        self.bits, self.words = packed_shape(self.m, self.q)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        capacity = max(0, int(capacity))
        self._data = np.zeros((self.bits * self.words, capacity), np.uint64)  # word-major
        self._ids = np.zeros(capacity, np.int64)
        self._n = 0
        self._row_of: dict[int, int] = {}
        self._local = threading.local()

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return self._n

    def __contains__(self, template_id) -> bool:
        return int(template_id) in self._row_of

    def __repr__(self) -> str:
        return f"PackedGallery(m={self.m}, q={self.q}, n={self._n}, nbytes={self.nbytes})"

    @property
    def ids(self) -> np.ndarray:
        """Template ids, row order (a read-only view; changes on :meth:`add`/:meth:`remove`)."""
        view = self._ids[:self._n]
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes held (``N * packed_nbytes(m, q)``, not counting spare room)."""
        return self._n * self.bits * self.words * 8

    def packed(self) -> np.ndarray:
        """The packed codes, row order, as a new ``(N, bits, words)`` ``uint64`` array."""
        return np.ascontiguousarray(self._data[:, :self._n].T).reshape(self._n, self.bits, self.words)

    def codes(self) -> np.ndarray:
        """The codes, row order (aligned with :attr:`ids`), unpacked to ``(N, m)`` ``uint8``."""
        return unpack_codes(self.packed(), self.m, self.q)

    # ------------------------------------------------------------------ changes
    def _check_new_ids(self, ids, count: int) -> np.ndarray:
        ids = checked_ids(ids, count)
        present = [int(i) for i in ids if int(i) in self._row_of]
        if present:
            raise ValueError(f"ids already enrolled: {present[:10]}")
        return ids

    def _reserve(self, total: int) -> None:
        capacity = self._data.shape[1]
        if total <= capacity:
            return
        new_capacity = max(total, 2 * capacity, 1024)
        data = np.zeros((self._data.shape[0], new_capacity), np.uint64)
        data[:, :self._n] = self._data[:, :self._n]
        ids = np.zeros(new_capacity, np.int64)
        ids[:self._n] = self._ids[:self._n]
        self._data, self._ids = data, ids

    def add(self, ids, codes) -> None:
        """Enrol templates: ``ids`` (k,) integers, new and distinct; ``codes`` (k, m) symbols."""
        self.add_packed(ids, pack_codes(checked_codes(codes, self.m), self.q))

    def add_packed(self, ids, packed) -> None:
        """Enrol already packed templates, ``(k, bits, words)`` ``uint64`` (e.g. from a store)."""
        packed = checked_packed(packed, self.bits, self.words)
        k = len(packed)
        ids = self._check_new_ids(ids, k)
        self._reserve(self._n + k)
        start, stop = self._n, self._n + k
        self._data[:, start:stop] = packed.reshape(k, -1).T
        self._ids[start:stop] = ids
        self._row_of.update(zip(ids.tolist(), range(start, stop)))
        self._n = stop

    def remove(self, ids) -> None:
        """Withdraw templates by id (swap-with-last, O(k)); unknown id → :class:`KeyError`."""
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise KeyError(f"ids not enrolled: {missing[:10]}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids repeat within the batch")
        for template_id in ids:
            row = self._row_of.pop(template_id)
            last = self._n - 1
            if row != last:
                moved = int(self._ids[last])
                self._data[:, row] = self._data[:, last]
                self._ids[row] = moved
                self._row_of[moved] = row
            self._n = last

    # ------------------------------------------------------------------ matching
    def _probe_columns(self, probes) -> np.ndarray:
        """Probe codes (p, m) symbols → (p, bits*words, 1) uint64, ready to broadcast."""
        probes = np.asarray(probes)
        if probes.ndim != 2 or probes.shape[1] != self.m:
            raise ValueError(f"probe codes must have shape (p, {self.m}), got {probes.shape}")
        return pack_codes(probes, self.q).reshape(len(probes), -1, 1)

    def _one_probe(self, probe_code) -> np.ndarray:
        probe = np.asarray(probe_code)
        if probe.shape != (self.m,):
            raise ValueError(f"a probe code has shape ({self.m},), got {probe.shape}")
        return self._probe_columns(probe[None])[0]

    def _buffers(self):
        """This thread's (xor buffer, popcount buffer, mismatch buffer) for one chunk."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None or bufs[0].shape[1] != self.chunk_size:
            bufs = (np.empty((self.bits * self.words, self.chunk_size), np.uint64),
                    np.empty((self.words, self.chunk_size), np.uint8),
                    np.empty(self.chunk_size, np.int32))
            self._local.bufs = bufs
        return bufs

    def _kernel(self, start: int, stop: int, probe_col: np.ndarray, out: np.ndarray) -> None:
        """``out[:stop-start]`` = mismatches of templates ``start:stop`` against one probe."""
        buf, cnt, _ = self._buffers()
        n, w = stop - start, self.words
        x = buf[:, :n]
        np.bitwise_xor(self._data[:, start:stop], probe_col, out=x)
        acc = x[:w]
        for j in range(1, self.bits):
            np.bitwise_or(acc, x[j * w:(j + 1) * w], out=acc)
        c = cnt[:, :n]
        np.bitwise_count(acc, out=c)
        if w >= 2 and w % 2 == 0:            # 2 x 64 <= 255: fold halves in uint8 first
            h = w // 2
            np.add(c[:h], c[h:], out=c[:h])
            c = c[:h]
        np.add.reduce(c, axis=0, dtype=np.int32, out=out[:n])

    def _chunks(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.chunk_size, self._n)) for s in range(0, self._n, self.chunk_size)]

    def _run(self, fn, chunks):
        if self.workers == 1 or len(chunks) == 1:
            return [fn(c) for c in chunks]
        return list(_executor(self.workers).map(fn, chunks))

    def mismatches(self, probe_code) -> np.ndarray:
        """Differing groups between ``probe_code`` (m,) and every template, ``(N,)`` ``int32``."""
        probe_col = self._one_probe(probe_code)
        out = np.empty(self._n, np.int32)

        def task(chunk):
            self._kernel(chunk[0], chunk[1], probe_col, out[chunk[0]:chunk[1]])

        self._run(task, self._chunks())
        return out

    def similarities(self, probe_code) -> np.ndarray:
        """Normalised Hamming similarity ``1 - mismatches/m`` to every template, ``(N,)`` float32."""
        sim = self.mismatches(probe_code).astype(np.float32)
        sim *= np.float32(-1.0 / self.m)
        sim += np.float32(1.0)
        return sim

    def search(self, probe_code, top_k: int = 10) -> list[tuple[int, float]]:
        """The ``top_k`` most similar templates as ``[(id, similarity), ...]``, best first.

        Equal similarity → smaller id first. An empty gallery gives ``[]``.
        """
        probe = np.asarray(probe_code)
        if probe.shape != (self.m,):
            raise ValueError(f"a probe code has shape ({self.m},), got {probe.shape}")
        return self.search_many(probe[None], top_k)[0]

    def search_many(self, probes, top_k: int = 10) -> list[list[tuple[int, float]]]:
        """:meth:`search` for each row of ``probes`` (p, m); one pass over the gallery.

        Each chunk is compared with every probe while it is in cache.
        """
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        probe_cols = self._probe_columns(probes)
        if self._n == 0:
            return [[] for _ in range(len(probe_cols))]
        ids = self._ids

        def task(chunk):
            start, stop = chunk
            mm = self._buffers()[2][:stop - start]
            found = []
            for probe_col in probe_cols:
                self._kernel(start, stop, probe_col, mm)
                found.append(_chunk_best(mm, ids[start:stop], top_k, start))
            return found

        per_chunk = self._run(task, self._chunks())
        results = []
        for p in range(len(probe_cols)):
            rows = np.concatenate([found[p][0] for found in per_chunk])
            mms = np.concatenate([found[p][1] for found in per_chunk])
            order = np.lexsort((ids[rows], mms))[:top_k]
            results.append([(int(ids[rows[i]]), 1.0 - int(mms[i]) / self.m) for i in order])
        return results


def _chunk_best(mm: np.ndarray, chunk_ids: np.ndarray, k: int, offset: int):
    """Rows (offset added) and mismatches of a chunk's best ``k`` (ties → smaller id)."""
    if len(mm) <= k:
        rows = np.arange(len(mm))
    else:
        kth = np.partition(mm, k - 1)[k - 1]
        below = np.flatnonzero(mm < kth)
        tied = np.flatnonzero(mm == kth)
        need = k - len(below)
        if len(tied) > need:
            tied = tied[np.argpartition(chunk_ids[tied], need - 1)[:need]]
        rows = np.concatenate([below, tied])
    return rows + offset, mm[rows]
