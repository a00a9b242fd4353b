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
This module imports neither Ray nor the sharded gallery until a sharded gallery is made,
and :func:`check_cluster` only parses (the command line calls it before anything loads).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from iom.errors import ClusterError, InvalidInputError

#: shards of a sharded gallery when ``--shards`` is not given
DEFAULT_SHARDS = 2
#: seconds to wait for a TCP answer from a cluster's head before saying it is unreachable
REACH_TIMEOUT_S = 5.0
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")


def check_cluster(cluster) -> str | None:
    """``cluster`` checked: ``None`` (in-process), ``"local"``, ``"auto"``, or the
    ``HOST:PORT`` (or ``ray://HOST:PORT``) of a Ray head; :class:`InvalidInputError` otherwise."""
    if cluster is None or cluster in ("local", "auto"):
        return cluster
    if not isinstance(cluster, str):
        raise InvalidInputError(f"cluster must be 'local', 'auto' or HOST:PORT, got {type(cluster).__name__}")
    address = cluster[len("ray://"):] if cluster.startswith("ray://") else cluster
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidInputError(f"--cluster must be 'local' (start a Ray cluster on this machine), 'auto' (the one "
                                f"running here) or HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), got {cluster!r}")
    return cluster


def host_port(cluster: str) -> tuple[str, int]:
    """The ``(host, port)`` of a checked ``HOST:PORT`` / ``ray://HOST:PORT`` address."""
    address = cluster[len("ray://"):] if cluster.startswith("ray://") else cluster
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_reachable(cluster: str | None, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """For a ``HOST:PORT`` cluster, that something accepts TCP connections there (one connect,
    closed at once; no Ray import): :class:`ClusterError` naming the address otherwise. Ray
    itself would retry for minutes before giving up."""
    if cluster in (None, "local", "auto"):
        return
    host, port = host_port(cluster)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(f"no Ray cluster answers at {cluster} ({e.strerror or e}): start its head with "
                           f"'ray start --head --port {port}' there, or give --cluster local") from None


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
            from iom.search.sharded import connect

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


__all__ = ["DEFAULT_SHARDS", "ClusterError", "GallerySpec", "check_cluster", "check_reachable", "make_gallery"]
