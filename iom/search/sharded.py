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

The cluster: :func:`connect` starts a local Ray cluster (``"local"``) or joins one
(``"auto"`` or a head's ``HOST:PORT``), once per process. Ray is imported here only, and
only when a sharded gallery is made or a cluster joined. Every node must have iomface and
its dependencies installed (the shards import :mod:`iom.search.gallery`). A lost shard
(its worker or node died) raises :class:`~iom.errors.ClusterError`; the service
then drops the gallery and rebuilds it from the store at the next identification.

Who may join: Ray 2.60 authenticates every node and driver with a shared token
(``RAY_AUTH_MODE=token``). Before Ray starts, :func:`secure_token_file` makes the file Ray
reads it from (``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) mode 0600 in a folder of
mode 0700, both owned by this process's user, writing a new token there for a local cluster
that has none; a token given in ``RAY_AUTH_TOKEN`` itself needs no file. A local cluster is a
node at 127.0.0.1 (:func:`_loopback_node`): Ray then binds its GCS, raylet (node and object
manager), workers and agents to loopback only, and :func:`check_loopback` refuses a cluster
that reports another address. A remote cluster's node addresses are what its nodes were
started with (``ray start --node-ip-address``): the operator's to keep on a private interface.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import stat
import threading
from pathlib import Path

import numpy as np

from iom.errors import ClusterError
from iom.search.packing import _check_m, _check_q, pack_codes, packed_shape
from iom.search.gallery import DEFAULT_CHUNK, PackedGallery, checked_codes, checked_ids, checked_packed

#: probe batches up to this size travel inside each call; larger ones once through the object store
INLINE_BYTES = 64 * 1024
_LOCK = threading.Lock()
_connected: str | None = None          # the cluster this process joined or started (None: not yet)
_actor_class = None                    # the Ray actor class of a shard, made on first use
_log = logging.getLogger(__name__)

#: the only address a local cluster's node has and its ports listen on
LOOPBACK = "127.0.0.1"
#: modes of Ray's token file and of its folder: owner only
TOKEN_FILE_MODE, TOKEN_FOLDER_MODE = 0o600, 0o700

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


# ---------------------------------------------------------------------------- the cluster
def connect(cluster: str = "local", *, num_cpus: int | None = None, object_store_memory: int | None = None):
    """Start (``"local"``) or join (``"auto"``, ``HOST:PORT``, ``ray://HOST:PORT``) a Ray
    cluster, once per process, and return the ``ray`` module. ``num_cpus`` and
    ``object_store_memory`` size a local cluster (default: Ray's, all CPUs and 30% of memory).
    A local cluster listens on 127.0.0.1 only and admits only holders of its token, kept in a
    private file (:func:`_start_local`); joining, a token file found here is made private
    (:func:`_join`). :class:`ClusterError` naming the address or path when Ray is missing, the
    cluster cannot be started or joined, its token cannot be kept private, or this process is
    already on another cluster."""
    global _connected
    from iom.search.galleries import check_cluster, check_reachable

    cluster = check_cluster(cluster)
    if cluster is None:
        raise ClusterError("a sharded gallery needs a cluster: 'local', 'auto' or HOST:PORT of a Ray head")
    try:
        import ray
    except ImportError as e:
        raise ClusterError(f"--cluster {cluster} needs Ray ({e}); install the pinned version: "
                           "pip install -r requirements.txt") from None
    if cluster != _connected:                 # (not again for every gallery made on the cluster joined)
        check_reachable(cluster)              # a dead HOST:PORT: Ray itself would retry it for minutes
    with _LOCK:
        if ray.is_initialized():
            if _connected is not None and _connected != cluster:
                raise ClusterError(f"this process is already on the Ray cluster {_connected!r}; it cannot join "
                                   f"{cluster!r} as well")
            _connected = _connected or cluster
            return ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")        # no usage reports leave the machine
        if cluster == "local":
            _start_local(ray, num_cpus=num_cpus, object_store_memory=object_store_memory)
        else:
            _join(ray, cluster)
        _connected = cluster
    return ray


def _ray_init(ray, what: str, **options) -> None:
    """``ray.init(**options)``, quiet; :class:`ClusterError` saying what failed (``what``:
    "start a local Ray cluster", "join the Ray cluster at HOST:PORT") and Ray's reason."""
    try:
        ray.init(log_to_driver=False, logging_level=logging.ERROR, **options)
    except (Exception, SystemExit) as e:   # Ray exits the process when it gives up on a head
        message = " ".join(str(e).split())[:300] or type(e).__name__
        raise ClusterError(f"cannot {what}: {message}") from None


def _start_local(ray, *, num_cpus: int | None, object_store_memory: int | None) -> None:
    """Start a local cluster that only this machine's user of the service can join: token
    authentication on (:func:`require_token_auth`), its token file private before Ray starts
    (:func:`secure_token_file`), its node at 127.0.0.1 so every port binds loopback
    (:func:`_loopback_node`, no dashboard), checked once started (:func:`check_loopback`;
    the cluster is stopped if it is not)."""
    require_token_auth(ray)
    secure_token_file(create=True)
    with _loopback_node(ray):
        _ray_init(ray, "start a local Ray cluster", num_cpus=num_cpus, object_store_memory=object_store_memory,
                  include_dashboard=False, dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
                  _temp_dir=str(private_temp_dir()))
    try:
        check_loopback(ray)
    except ClusterError:
        ray.shutdown()
        raise


def private_temp_dir() -> Path:
    """The folder of a local cluster's sessions (logs, sockets, spilled objects), mode 0700 and
    this process's user's: Ray's default, ``/tmp/ray``, is shared by every user of the machine
    and left world-writable (``$IOMFACE_RAY_TMP``, else ``/tmp/iomface-ray-UID``; short, since
    Ray's socket paths under it must fit 107 bytes)."""
    folder = Path(os.environ.get("IOMFACE_RAY_TMP") or f"/tmp/iomface-ray-{os.geteuid()}")
    secure_token_folder(folder)
    return folder


def _join(ray, cluster: str) -> None:
    """Join the running cluster at ``cluster`` (``"auto"``, ``HOST:PORT``, ``ray://...``). Its
    token is the operator's to give out of band (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``, with ``RAY_AUTH_MODE=token``); a token file found here is made
    private first (:func:`secure_token_file`, nothing created). The addresses the nodes
    listen on are those they were started with (``ray start --node-ip-address``). A loopback
    address (or ``auto``: a cluster on this machine) is kept as given (:func:`_loopback_node`):
    Ray would otherwise dial the machine's routable address, where a local cluster of
    :func:`connect` does not listen."""
    from iom.search.galleries import host_port

    secure_token_file(create=False)
    on_this_machine = cluster == "auto" or _is_loopback(host_port(cluster)[0])
    with _loopback_node(ray) if on_this_machine else contextlib.nullcontext():
        _ray_init(ray, f"join the Ray cluster at {cluster}", address=cluster)


# ---------------------------------------------------------------------------- who may join
def token_file() -> Path:
    """The file Ray 2.60 reads the cluster's token from when ``RAY_AUTH_TOKEN`` does not hold
    it: ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's own order)."""
    given = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(given).expanduser() if given else Path.home() / ".ray" / "auth_token"


def _owned_private(path: Path, info: os.stat_result, mode: int, chmod) -> None:
    """Refuse ``path`` (described by ``info``) unless this process's user owns it; set it to
    exactly ``mode`` with ``chmod(mode)`` when it differs (with a warning when group or others
    had access). :class:`ClusterError` naming the path, its mode and its owner when it is
    another user's or cannot be changed."""
    have = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise ClusterError(f"Ray's token path {path} (mode {have:04o}) belongs to uid {info.st_uid}, not to this "
                           f"service's user (uid {os.geteuid()}): give a token file of your own with "
                           "RAY_AUTH_TOKEN_PATH")
    if have != mode:
        try:
            chmod(mode)
        except OSError as e:
            raise ClusterError(f"cannot make Ray's token path {path} private: it is mode {have:04o} and "
                               f"chmod {mode:04o} failed ({e.strerror or e})") from None
        if have & 0o077:
            _log.warning("Ray's token path %s was mode %04o (open to other users): now %04o; if another user could "
                         "have read the token, make a new one", path, have, mode)


def secure_token_folder(folder: Path) -> None:
    """Make the folder of Ray's token file: created with mode 0700 when missing, else checked
    to be a real folder (not a link) of this process's user and tightened to 0700.
    :class:`ClusterError` naming the folder otherwise."""
    try:
        folder.mkdir(mode=TOKEN_FOLDER_MODE, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as e:
        raise ClusterError(f"cannot make the folder {folder} for Ray's token: {e.strerror or e}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ClusterError(f"Ray's token folder {folder} is not a folder (mode {info.st_mode:o}, perhaps a link): "
                           "give a token file in a private folder with RAY_AUTH_TOKEN_PATH")
    _owned_private(folder, info, TOKEN_FOLDER_MODE, lambda mode: os.chmod(folder, mode))


def _write_new_token(path: Path) -> None:
    """Write a new token to ``path``, a file created here with mode 0600 (never readable by
    others, whatever the umask): 256 random bits in hex, as Ray's own generator makes them
    (``ray._private.authentication.authentication_token_generator``). Ray, which caches the
    token it loaded, is told to read it again."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, TOKEN_FILE_MODE)
    except OSError as e:
        raise ClusterError(f"cannot write Ray's token file {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, TOKEN_FILE_MODE)
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _reset_ray_token_cache()


def secure_token_file(path: Path | None = None, *, create: bool = True) -> Path | None:
    """Make Ray's token file private before Ray starts: mode 0600, owned by this process's
    user, in a folder of mode 0700 (:func:`secure_token_folder`); looser modes are tightened.
    ``path``: default :func:`token_file`. A missing (or empty) file gets a new token when
    ``create`` (a local cluster), created 0600 from the start, so no one else can ever read it;
    otherwise it is left missing for Ray to report (a remote cluster's token is given out of
    band). Nothing to do when ``RAY_AUTH_TOKEN`` holds the token and no path is given. Returns
    the file, or ``None`` when there is none. :class:`ClusterError` naming the path when it is
    a link, not a regular file, another user's, or cannot be made private."""
    if path is None:
        if os.environ.get("RAY_AUTH_TOKEN"):
            return None
        path = token_file()
    path = Path(path)
    if not create and not os.path.lexists(path):
        return None
    secure_token_folder(path.parent)         # first: from now on no one else can reach the file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        if not create:
            return None
        _write_new_token(path)
        return path
    except OSError as e:
        raise ClusterError(f"cannot open Ray's token file {path} ({e.strerror or e}): it must be a regular file, "
                           "not a link") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ClusterError(f"Ray's token file {path} is not a regular file (mode {info.st_mode:o})")
        _owned_private(path, info, TOKEN_FILE_MODE, lambda mode: os.fchmod(fd, mode))
    finally:
        os.close(fd)
    if create and info.st_size == 0:         # Ray reads an empty file as no token
        _write_new_token(path)
    return path


def _reset_ray_token_cache() -> None:
    """Make Ray read the token file again (it caches the token it loaded), when Ray is here."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return
    AuthenticationTokenLoader.instance().reset_cache()


def require_token_auth(ray) -> None:
    """Token authentication for a local cluster: ``RAY_AUTH_MODE=token`` (set when unset;
    Ray's nodes, workers and joining drivers inherit it). :class:`ClusterError` when the
    environment turned it off: the cluster's loopback ports are open to every user of this
    machine, and only the token keeps them out."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.strip().lower() != "token":
        raise ClusterError(f"RAY_AUTH_MODE={mode}: a local Ray cluster needs token authentication (every user of "
                           f"this machine reaches its ports on {LOOPBACK}); unset RAY_AUTH_MODE or set it to 'token'")
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")                    # Ray caches its config: read the mode again (as Ray itself does)


@contextlib.contextmanager
def _loopback_node(ray):
    """While a local cluster starts (or a driver joins one): let Ray keep the node address
    127.0.0.1. ``ray.init`` replaces a loopback ``_node_ip_address`` (and a loopback cluster
    address) with the machine's routable address unless
    ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is false (what the environment variable
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets, read once when Ray is imported); with the node
    at 127.0.0.1 the GCS, raylet and worker gRPC servers bind 127.0.0.1 instead of every
    interface. Restored afterwards: joining a remote cluster later needs the real address."""
    constants = ray._private.ray_constants
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (``localhost``, or an IP address, IPv4-mapped IPv6 included) is a
    loopback address."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def local_cluster_addresses(ray) -> dict[str, str]:
    """The addresses the running cluster reports: ``gcs`` (``HOST:PORT``), ``driver`` (this
    process's node address) and, for each live node, the host its node manager, object manager
    and runtime-env agent listen on (``node <id>``)."""
    node = ray._private.worker._global_node
    addresses = {"gcs": ray.get_runtime_context().gcs_address, "driver": node.node_ip_address if node else ""}
    for n in ray.nodes():
        if n.get("Alive"):
            addresses[f"node {n['NodeID'][:12]}"] = n["NodeManagerAddress"]
    return addresses


def check_loopback(ray) -> None:
    """That the local cluster Ray started is on 127.0.0.1 only (its GCS, this driver, and each
    node's node and object manager): :class:`ClusterError` naming the address otherwise (a Ray
    version that no longer keeps a loopback node address would open its ports to the network)."""
    for what, address in local_cluster_addresses(ray).items():
        host = address.rsplit(":", 1)[0] if what == "gcs" else address
        if not _is_loopback(host):
            raise ClusterError(f"the local Ray cluster's {what} is at {address}, not on {LOOPBACK}: its ports would "
                               "be open to the network; stopped")


def connected() -> str | None:
    """The cluster this process started or joined with :func:`connect`, else ``None``."""
    return _connected


def shutdown() -> None:
    """Leave the cluster (a local one stops; its shards go with it)."""
    global _connected
    with _LOCK:
        if _connected is not None:
            import ray

            ray.shutdown()
            _connected = None


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


__all__ = ["ShardedGallery", "connect", "connected", "shard_of", "shards_of", "shutdown", "splitmix64"]
