"""Where the identification gallery lives: in this process, or sharded over a Ray cluster.

A :class:`GallerySpec` says it, and makes the gallery the service searches:

=================================  =====================================================
``GallerySpec()``                  a :class:`~iom.search.gallery.PackedGallery` in this
                                   process (the default; Ray is never imported)
``GallerySpec("local", shards=4)`` a :class:`~iom.search.sharded.ShardedGallery`
                                   of 4 shards on a Ray cluster started on this machine
``GallerySpec("10.0.0.5:6379")``   the same on the existing Ray cluster whose head listens
                                   there (``auto``: the one Ray finds on this machine)
=================================  =====================================================

Both galleries have the same interface and return the same top-k for the same contents.
This module imports neither Ray nor the sharded gallery until a sharded gallery is made. The
address helpers live in :mod:`iom.search.cluster` and are importable from here too:
:func:`check_cluster` only parses (the command line calls it before anything loads).
"""

from __future__ import annotations

from dataclasses import dataclass

from iom.errors import ClusterError, InvalidInputError
# the address helpers were this module's before iom.search.cluster held them: importable from here still
from iom.search.cluster import REACH_TIMEOUT_S, check_cluster, check_reachable, connect, host_port

#: shards of a sharded gallery when ``--shards`` is not given
DEFAULT_SHARDS = 2


@dataclass(frozen=True)
class GallerySpec:
    """Where the identification gallery lives.

    ``cluster``: ``None`` (in this process), ``"local"`` (start a Ray cluster here),
    ``"auto"`` or ``HOST:PORT`` (join an existing one); ``shards``: how many shards a sharded
    gallery has (default :data:`DEFAULT_SHARDS`; only with a cluster); ``shard_workers``:
    threads each shard scans with (default: the CPUs of its machine).
    """

    cluster: str | None = None
    shards: int | None = None
    shard_workers: int | None = None

    def __post_init__(self):
        check_cluster(self.cluster)
        for name in ("shards", "shard_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"--{name} must be a positive integer, got {value!r}")
        if self.cluster is None and self.shards is not None:
            raise InvalidInputError("--shards needs --cluster (local, or the address of a Ray cluster): "
                                    "the in-process gallery is not sharded")

    @property
    def sharded(self) -> bool:
        return self.cluster is not None

    @property
    def shard_count(self) -> int:
        """Shards a gallery made from this spec has (1 in process)."""
        return (self.shards or DEFAULT_SHARDS) if self.sharded else 1

    def describe(self) -> dict:
        return {"cluster": self.cluster, "shards": self.shard_count}

    def connect(self) -> None:
        """Join (or start) the cluster now, so a bad address fails before anything else loads;
        nothing for an in-process gallery. :class:`ClusterError` naming the address."""
        if self.sharded:
            connect(self.cluster)

    def make(self, m: int, q: int, capacity: int = 0):
        """An empty gallery for codes of ``m`` symbols over ``q``, with room for ``capacity``."""
        if not self.sharded:
            from iom.search.gallery import PackedGallery

            return PackedGallery(m, q, capacity=capacity)
        from iom.search.sharded import ShardedGallery

        return ShardedGallery(m, q, shards=self.shard_count, cluster=self.cluster, workers=self.shard_workers,
                              capacity=capacity)


def make_gallery(m: int, q: int, cluster: str | None = None, shards: int | None = None, capacity: int = 0,
                 shard_workers: int | None = None):
    """``GallerySpec(cluster, shards, shard_workers).make(m, q, capacity)``: an in-process
    :class:`~iom.search.gallery.PackedGallery` without ``cluster``, else a
    :class:`~iom.search.sharded.ShardedGallery` on that cluster."""
    return GallerySpec(cluster, shards, shard_workers).make(m, q, capacity)


__all__ = ["DEFAULT_SHARDS", "ClusterError", "GallerySpec", "REACH_TIMEOUT_S", "check_cluster", "check_reachable",
           "host_port", "make_gallery"]
