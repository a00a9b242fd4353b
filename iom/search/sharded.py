"""1:N search over an identification gallery split into shards held by Ray actors.

:class:`ShardedGallery` has the interface of :class:`~iom.search.gallery.PackedGallery`
(``add``, ``add_packed``, ``remove``, ``search``, ``search_many``, ``len``, ``in``, ``ids``,
``nbytes``) and returns exactly its answers for the same contents. Its templates live in
``shards`` Ray actors, each holding a :class:`PackedGallery` in its worker's memory and
scanning it with that gallery's kernel:

* **Placement.** A template id goes to shard ``splitmix64(id) mod shards``
  (:func:`shard_of`): a fixed function of the id, not Python's salted ``hash``, so an
  enrolment and the later revocation of the same id reach the same shard, and a gallery
  rebuilt on a restarted cluster places every id where it was.
* **Search.** Every non-empty shard searches the probes concurrently (one remote call each;
  a large batch is put once in Ray's object store, a small one travels in the calls) and returns its own top-k ids and similarities;
  the driver merges them by PackedGallery's rule: most similar first, equal similarity →
  smaller id first. Each shard's top-k holds every template that can be in the global
  top-k, so the merge is exact.
* **Changes.** ``add`` and ``remove`` first ask the shards concerned whether the ids are
  there (already enrolled / not enrolled raise PackedGallery's errors, nothing changed),
  then send each shard its part. Like PackedGallery's, they must not run concurrently with
  anything else on the gallery (the service serialises them).

The cluster (:mod:`iom.search.cluster`): the gallery starts a local Ray cluster or joins one
with :func:`~iom.search.cluster.connect`. Ray is imported only when a sharded gallery is made
or a cluster joined. Every node must have iomface and its dependencies installed (the shards
import :mod:`iom.search.gallery`). A lost shard (its worker or node died) raises
:class:`~iom.errors.ClusterError`; the service then drops the gallery and rebuilds it from
the store at the next identification.
"""

from __future__ import annotations

import os

import numpy as np

from iom.errors import ClusterError
from iom.search.packing import _check_m, _check_q, pack_codes, packed_shape
from iom.search.gallery import DEFAULT_CHUNK, PackedGallery, checked_codes, checked_ids, checked_packed
# connect, and the cluster's other names this module held before iom.search.cluster: importable from here still
from iom.search.cluster import (LOOPBACK, TOKEN_FILE_MODE, TOKEN_FOLDER_MODE, check_loopback, connect, connected,
                                local_cluster_addresses, private_temp_dir, require_token_auth, secure_token_file,
                                secure_token_folder, shutdown, token_file)

#: probe batches up to this size travel inside each call; larger ones once through the object store
INLINE_BYTES = 64 * 1024
_actor_class = None                    # the Ray actor class of a shard, made on first use

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


# ---------------------------------------------------------------------------- placement
def splitmix64(ids) -> np.ndarray:
    """SplitMix64's finaliser of each id (as 64-bit two's complement), ``uint64``: a fixed,
    well-mixed function of the id (consecutive ids land on shards at random)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def shards_of(ids, shards: int) -> np.ndarray:
    """The shard (``0..shards-1``, ``int64``) of each template id."""
    return (splitmix64(np.atleast_1d(ids)) % np.uint64(shards)).astype(np.int64)


def shard_of(template_id: int, shards: int) -> int:
    """The shard of one template id among ``shards``."""
    return int(shards_of([int(template_id)], shards)[0])


# ---------------------------------------------------------------------------- a shard
class _Shard:
    """One shard: a :class:`PackedGallery` in a Ray worker's memory (run as a Ray actor)."""

    def __init__(self, m: int, q: int, chunk_size: int, workers: int | None, capacity: int):
        self.gallery = PackedGallery(m, q, chunk_size=chunk_size, workers=workers, capacity=capacity)

    def ready(self) -> int:
        return os.getpid()

    def present(self, ids: np.ndarray) -> list[int]:
        return [int(i) for i in ids if int(i) in self.gallery]

    def add_packed(self, ids: np.ndarray, packed: np.ndarray) -> int:
        self.gallery.add_packed(ids, packed)
        return len(self.gallery)

    def remove(self, ids: np.ndarray) -> int:
        self.gallery.remove(ids)
        return len(self.gallery)

    def contains(self, template_id: int) -> bool:
        return template_id in self.gallery

    def ids(self) -> np.ndarray:
        return np.array(self.gallery.ids)

    def search_many(self, probes: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's top-k of each probe: ids ``(p, k')`` and similarities ``(p, k')``,
        ``k' = min(top_k, len)``, as PackedGallery ranks and scores them."""
        found = self.gallery.search_many(probes, top_k)
        k = len(found[0]) if found else 0
        ids = np.array([[i for i, _ in hits] for hits in found], np.int64).reshape(len(found), k)
        sims = np.array([[s for _, s in hits] for hits in found], np.float64).reshape(len(found), k)
        return ids, sims

    def stats(self) -> dict:
        """Templates, bytes of packed codes, the worker's pid and node, and its resident memory
        (``rss_bytes``; of which ``rss_anon_bytes`` private, ``rss_shmem_bytes`` pages of Ray's
        shared object store mapped in; ``None`` where /proc is not there)."""
        import ray

        memory = dict.fromkeys(("VmRSS", "RssAnon", "RssShmem"))
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in memory:
                        memory[key] = int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return {"n": len(self.gallery), "nbytes": self.gallery.nbytes, "pid": os.getpid(),
                "node": ray.util.get_node_ip_address(), "rss_bytes": memory["VmRSS"],
                "rss_anon_bytes": memory["RssAnon"], "rss_shmem_bytes": memory["RssShmem"]}


def _shard_actor():
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_restarts=0)(_Shard)
    return _actor_class


# ---------------------------------------------------------------------------- the gallery
class ShardedGallery:
    """Packed IoM templates spread over ``shards`` Ray actors; PackedGallery's interface.

    Parameters
    ----------
    m, q
        Code length and alphabet size of every template.
    shards
        Number of shards (Ray actors); ids are placed by :func:`shard_of`.
    cluster
        ``"local"`` (start a Ray cluster on this machine if this process has none),
        ``"auto"`` or a head's ``HOST:PORT`` (see :func:`connect`).
    chunk_size, workers
        Each shard's :class:`PackedGallery` options (``workers``: its threads, default the
        CPUs of its machine).
    capacity
        Templates to reserve room for in all (each shard reserves its expected share).
    actor_options
        Extra Ray actor options for the shards (e.g. ``{"num_cpus": 1}``, ``{"resources": ...}``).
    """

    def __init__(self, m: int, q: int, *, shards: int = 2, cluster: str = "local", chunk_size: int = DEFAULT_CHUNK,
                 workers: int | None = None, capacity: int = 0, actor_options: dict | None = None):
        self.m, self.q = _check_m(m), _check_q(q)
        if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
            raise ValueError(f"shards must be a positive integer, got {shards!r}")
        self.bits, self.words = packed_shape(self.m, self.q)
        self._check = PackedGallery(self.m, self.q, chunk_size=chunk_size, workers=1)   # validates like one
        self.chunk_size = self._check.chunk_size
        self.cluster = cluster
        self._ray = connect(cluster)
        share = -(-max(0, int(capacity)) // int(shards))
        share = share + 4 * int(share ** 0.5) if share else 0      # room for an uneven split
        actor = _shard_actor().options(**(actor_options or {}))
        self._shards = [actor.remote(self.m, self.q, self.chunk_size, workers, share) for _ in range(int(shards))]
        self._sizes = np.zeros(int(shards), np.int64)
        self.pids = self._gather([s.ready.remote() for s in self._shards])

    # ------------------------------------------------------------------ contents
    @property
    def shards(self) -> int:
        return len(self._sizes)

    def __len__(self) -> int:
        return int(self._sizes.sum())

    def __contains__(self, template_id) -> bool:
        template_id = int(template_id)
        return bool(self._gather([self._live()[shard_of(template_id, self.shards)].contains.remote(template_id)])[0])

    def __repr__(self) -> str:
        return (f"ShardedGallery(m={self.m}, q={self.q}, n={len(self)}, shards={self.shards}, "
                f"cluster={self.cluster!r})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def ids(self) -> np.ndarray:
        """Template ids, shard after shard (each in its row order); a read-only copy."""
        parts = self._gather([s.ids.remote() for s in self._live()])
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        ids.flags.writeable = False
        return ids

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes held, all shards (``N * packed_nbytes(m, q)``)."""
        return len(self) * self.bits * self.words * 8

    def shard_of(self, template_id) -> int:
        """The shard that holds (or would hold) ``template_id``."""
        return shard_of(int(template_id), self.shards)

    def shard_sizes(self) -> list[int]:
        """Templates held by each shard."""
        return [int(n) for n in self._sizes]

    def shard_nbytes(self) -> list[int]:
        """Bytes of packed codes held by each shard."""
        return [int(n) * self.bits * self.words * 8 for n in self._sizes]

    def shard_stats(self) -> list[dict]:
        """Each shard's templates, packed bytes, worker pid, resident memory (bytes) and node."""
        return self._gather([s.stats.remote() for s in self._live()])

    def close(self) -> None:
        """Stop the shards (their memory is freed); the gallery is unusable afterwards."""
        shards, self._shards = self._shards, []
        for s in shards:
            try:
                self._ray.kill(s)
            except Exception:          # already gone with its cluster
                pass

    # ------------------------------------------------------------------ changes
    def _groups(self, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, positions in ids)`` for each shard that some id goes to."""
        where = shards_of(ids, self.shards)
        return [(s, np.flatnonzero(where == s)) for s in np.unique(where).tolist()]

    def _present(self, ids: np.ndarray, groups) -> set[int]:
        live = self._live()
        found = self._gather([live[s].present.remote(ids[rows]) for s, rows in groups])
        return {i for part in found for i in part}

    def add(self, ids, codes) -> None:
        """Enrol templates: ``ids`` (k,) integers, new and distinct; ``codes`` (k, m) symbols."""
        self.add_packed(ids, pack_codes(checked_codes(codes, self.m), self.q))

    def add_packed(self, ids, packed) -> None:
        """Enrol already packed templates, ``(k, bits, words)`` ``uint64``; each goes to its shard."""
        packed = checked_packed(packed, self.bits, self.words)
        ids = checked_ids(ids, len(packed))
        if not len(ids):
            return
        groups = self._groups(ids)
        present = self._present(ids, groups)
        if present:
            raise ValueError(f"ids already enrolled: {[int(i) for i in ids if int(i) in present][:10]}")
        live = self._live()
        sizes = self._gather([live[s].add_packed.remote(ids[rows], packed[rows]) for s, rows in groups])
        for (s, _), n in zip(groups, sizes):
            self._sizes[s] = n

    def remove(self, ids) -> None:
        """Withdraw templates by id, each from its shard; unknown id → :class:`KeyError`."""
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        if not ids:
            return
        array = np.asarray(ids, np.int64)
        groups = self._groups(array)
        present = self._present(array, groups)
        missing = [i for i in ids if i not in present]
        if missing:
            raise KeyError(f"ids not enrolled: {missing[:10]}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids repeat within the batch")
        live = self._live()
        sizes = self._gather([live[s].remove.remote(array[rows]) for s, rows in groups])
        for (s, _), n in zip(groups, sizes):
            self._sizes[s] = n

    # ------------------------------------------------------------------ matching
    def search(self, probe_code, top_k: int = 10) -> list[tuple[int, float]]:
        """The ``top_k`` most similar templates as ``[(id, similarity), ...]``, best first
        (equal similarity → smaller id first); ``[]`` for an empty gallery."""
        probe = np.asarray(probe_code)
        if probe.shape != (self.m,):
            raise ValueError(f"a probe code has shape ({self.m},), got {probe.shape}")
        return self.search_many(probe[None], top_k)[0]

    def search_many(self, probes, top_k: int = 10) -> list[list[tuple[int, float]]]:
        """:meth:`search` for each row of ``probes`` (p, m): one remote call per shard."""
        empty = self._check.search_many(probes, top_k)    # PackedGallery's checks and errors
        top_k = int(top_k)
        live = self._live()
        busy = [s for s, n in zip(live, self._sizes) if n]
        if not busy or not empty:
            return empty
        probes = np.ascontiguousarray(probes, dtype=np.uint8)       # symbols checked: < q <= 256
        if probes.nbytes > INLINE_BYTES and len(busy) > 1:
            probes = self._ray.put(probes)                          # stored once, read by every shard
        parts = self._gather([s.search_many.remote(probes, top_k) for s in busy])
        ids = np.concatenate([p[0] for p in parts], axis=1)
        sims = np.concatenate([p[1] for p in parts], axis=1)
        order = np.lexsort((ids, -sims), axis=1)[:, :top_k]
        ids = np.take_along_axis(ids, order, axis=1).tolist()
        sims = np.take_along_axis(sims, order, axis=1).tolist()
        return [list(zip(i, s)) for i, s in zip(ids, sims)]

    # ------------------------------------------------------------------ Ray
    def _live(self) -> list:
        if not self._shards:
            raise ClusterError("this sharded gallery was closed")
        return self._shards

    def _gather(self, refs: list) -> list:
        """``ray.get`` of remote calls: a shard's own ValueError / KeyError as it was raised;
        a dead shard or cluster as :class:`ClusterError`."""
        ray = self._ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, (ValueError, KeyError)):
                raise cause from None
            raise ClusterError(f"a shard of the identification gallery failed: {_one_line(e)}") from None
        except ray.exceptions.RayError as e:
            raise ClusterError(f"a shard of the identification gallery on {self.cluster} was lost "
                               f"({type(e).__name__}); rebuild the gallery from the store") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


__all__ = ["ShardedGallery", "shard_of", "shards_of", "splitmix64",
           # re-exported from iom.search.cluster
           "LOOPBACK", "TOKEN_FILE_MODE", "TOKEN_FOLDER_MODE", "check_loopback", "connect", "connected",
           "local_cluster_addresses", "private_temp_dir", "require_token_auth", "secure_token_file",
           "secure_token_folder", "shutdown", "token_file"]
