"""The Ray cluster a sharded gallery (:mod:`iom.search.sharded`) lives on, and its address.

:func:`check_cluster` parses a ``--cluster`` value (``"local"``, ``"auto"``, ``HOST:PORT`` of a
Ray head) and :func:`check_reachable` knocks once at a head's port, both without Ray.
:func:`connect` starts a local Ray cluster (``"local"``) or joins one (``"auto"`` or a head's
``HOST:PORT``), once per process; Ray is imported only then. Every node must have iomface and
its dependencies installed (the shards import :mod:`iom.search.gallery`).

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
import re
import secrets
import socket
import stat
import threading
from pathlib import Path

from iom.errors import ClusterError, InvalidInputError

_LOCK = threading.Lock()
_connected: str | None = None          # the cluster this process joined or started (None: not yet)
_log = logging.getLogger(__name__)

#: the only address a local cluster's node has and its ports listen on
LOOPBACK = "127.0.0.1"
#: modes of Ray's token file and of its folder: owner only
TOKEN_FILE_MODE, TOKEN_FOLDER_MODE = 0o600, 0o700
#: seconds to wait for a TCP answer from a cluster's head before saying it is unreachable
REACH_TIMEOUT_S = 5.0
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")


# ---------------------------------------------------------------------------- addresses
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


__all__ = ["LOOPBACK", "REACH_TIMEOUT_S", "TOKEN_FILE_MODE", "TOKEN_FOLDER_MODE", "check_cluster", "check_loopback",
           "check_reachable", "connect", "connected", "host_port", "local_cluster_addresses", "private_temp_dir",
           "require_token_auth", "secure_token_file", "secure_token_folder", "shutdown", "token_file"]
