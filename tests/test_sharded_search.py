"""Sharded 1:N search on a real local Ray cluster (issue 15 point 3): iom.search.sharded,
iom.search.cluster, iom.search.galleries, the service's ``gallery_spec`` and ``iomface identify
--cluster``.

A sharded gallery must return exactly PackedGallery's top-k (same ids, same similarities, same
order with many ties), place each id on the shard ``shard_of`` names, reach it on removal,
and raise PackedGallery's errors. One local cluster (2 CPUs, a small object store) serves the
whole module and is shut down at its end; a subprocess joins it by its address. Its token file
starts as the security review found Ray's own (mode 0644 in a folder of mode 0755) and must be
private once the cluster runs, and every port of the cluster must listen on loopback only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: the sharded identification gallery (--cluster) "
                                        "needs it (requirements.txt pins it)")

from iom.search import cluster as search_cluster  # noqa: E402
from iom.search import sharded as sharded_search  # noqa: E402
from iom.errors import ClusterError, InvalidInputError  # noqa: E402
from iom.search.galleries import GallerySpec, check_cluster, make_gallery  # noqa: E402
from iom.search.gallery import PackedGallery  # noqa: E402
from iom.search.sharded import ShardedGallery, shard_of, shards_of  # noqa: E402
from tests.conftest import REPO  # noqa: E402


LOOSE_TOKEN = "0123456789abcdef" * 4           # a token that was already there, readable by others


@pytest.fixture(scope="module")
def token_path(tmp_path_factory):
    """Ray's token file for this module's cluster (``RAY_AUTH_TOKEN_PATH``; ~/.ray is left
    alone), made as the review found Ray's own: mode 0644 in a folder of mode 0755."""
    folder = tmp_path_factory.mktemp("ray-token")
    path = folder / "auth_token"
    path.write_text(LOOSE_TOKEN)
    os.chmod(path, 0o644)
    os.chmod(folder, 0o755)
    mode_before = os.environ.pop("RAY_AUTH_MODE", None)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
        env.delenv("RAY_AUTH_TOKEN", raising=False)
        yield path
    os.environ.pop("RAY_AUTH_MODE", None)               # connect() sets it; put back what was there
    if mode_before is not None:
        os.environ["RAY_AUTH_MODE"] = mode_before


@pytest.fixture(scope="module")
def cluster(token_path):
    """A real local Ray cluster for this module; yields its address (a head's HOST:PORT)."""
    search_cluster.connect("local", num_cpus=2, object_store_memory=100 * 2**20)
    yield ray.get_runtime_context().gcs_address
    search_cluster.shutdown()


def _pair(m, q, ids, codes, shards=3):
    local = PackedGallery(m, q, chunk_size=256)        # several chunks: the per-chunk top-k matters too
    local.add(ids, codes)
    sharded = ShardedGallery(m, q, shards=shards, chunk_size=256)
    sharded.add(ids, codes)
    return local, sharded


def _split_by_shard(gallery: ShardedGallery) -> list[np.ndarray]:
    return np.split(np.asarray(gallery.ids), np.cumsum(gallery.shard_sizes())[:-1])


# ---------------------------------------------------------------------------- placement (no cluster)
def test_placement_is_a_fixed_function_of_the_id():
    # pinned: a gallery rebuilt on a restarted cluster (or by a new version) places ids where they were
    assert int(sharded_search.splitmix64([0])[0]) == 0xE220A8397B1DCDAF      # SplitMix64's reference value
    assert shards_of(np.arange(12), 4).tolist() == [3, 1, 2, 1, 2, 2, 0, 3, 2, 0, 2, 1]
    assert [shard_of(i, 7) for i in (0, 1, -1, 2**62)] == [2, 2, 0, 4]
    ids = np.arange(-50, 100_000)
    where = shards_of(ids, 8)
    assert all(shard_of(int(i), 8) == s for i, s in zip(ids[:300], where[:300]))
    counts = np.bincount(where, minlength=8)
    assert counts.min() > 0.97 * len(ids) / 8 and counts.max() < 1.03 * len(ids) / 8   # even split
    assert shards_of([5], 1).tolist() == [0]


# ---------------------------------------------------------------------------- who may join the cluster
def _mode(path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_local_cluster_token_is_private_and_is_the_one_ray_uses(cluster, token_path):
    # the loose token that was there is tightened in place (folder first), not replaced
    assert (_mode(token_path), _mode(token_path.parent)) == (0o600, 0o700)
    assert os.stat(token_path).st_uid == os.geteuid() == os.stat(token_path.parent).st_uid
    assert token_path.read_text() == LOOSE_TOKEN
    from ray._raylet import AuthenticationTokenLoader

    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert AuthenticationTokenLoader.instance().get_raw_token() == LOOSE_TOKEN


def test_a_new_token_file_is_private_from_the_start(tmp_path, monkeypatch):
    path = tmp_path / "new" / "auth_token"
    old_umask = os.umask(0)                    # even when the umask would leave everything open
    try:
        assert search_cluster.secure_token_file(path) == path
    finally:
        os.umask(old_umask)
    token = path.read_text()
    assert (_mode(path), _mode(path.parent)) == (0o600, 0o700)
    assert len(token) == 64 and int(token, 16) >= 0
    assert search_cluster.secure_token_file(path) == path and path.read_text() == token   # kept
    path.write_text("")                        # an empty file is no token to Ray: a new one
    search_cluster.secure_token_file(path)
    assert len(path.read_text()) == 64 and path.read_text() != token and _mode(path) == 0o600
    # joining a remote cluster: a missing token is the operator's to give, nothing is created
    gone = tmp_path / "absent" / "auth_token"
    assert search_cluster.secure_token_file(gone, create=False) is None and not gone.parent.exists()
    # the default path follows Ray's order; a token in RAY_AUTH_TOKEN needs no file
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(gone))
    assert search_cluster.token_file() == gone
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    assert search_cluster.token_file() == Path.home() / ".ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 64)
    assert search_cluster.secure_token_file() is None


def test_a_loose_token_file_is_tightened_or_refused(tmp_path, monkeypatch):
    folder = tmp_path / "ray"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    path = folder / "auth_token"
    path.write_text(LOOSE_TOKEN)
    os.chmod(path, 0o644)
    assert search_cluster.secure_token_file(path, create=False) == path           # joining: tightened too
    assert (_mode(path), _mode(folder), path.read_text()) == (0o600, 0o700, LOOSE_TOKEN)

    os.chmod(path, 0o644)
    monkeypatch.setattr(search_cluster.os, "fchmod", _refuse)                      # chmod not allowed
    with pytest.raises(ClusterError, match=re.escape(str(path)) + ".*mode 0644"):
        search_cluster.secure_token_file(path)
    monkeypatch.undo()
    monkeypatch.setattr(search_cluster.os, "geteuid", lambda: os.getuid() + 4242)  # another user's file
    with pytest.raises(ClusterError, match=re.escape(str(folder)) + f".*belongs to uid {os.getuid()}"):
        search_cluster.secure_token_file(path)
    monkeypatch.undo()

    link = folder / "linked_token"
    link.symlink_to(path)
    with pytest.raises(ClusterError, match=re.escape(str(link)) + ".*not a link"):
        search_cluster.secure_token_file(link)
    with pytest.raises(ClusterError, match=re.escape(str(folder)) + ".*not a regular file"):
        search_cluster.secure_token_file(folder)
    linked_folder = tmp_path / "linked_folder"
    linked_folder.symlink_to(folder)
    with pytest.raises(ClusterError, match=re.escape(str(linked_folder)) + ".*not a folder"):
        search_cluster.secure_token_file(linked_folder / "auth_token")


def _refuse(*args):
    raise PermissionError(1, "Operation not permitted")


def test_a_local_cluster_needs_token_authentication(monkeypatch):
    for off in ("disabled", "k8s", ""):
        monkeypatch.setenv("RAY_AUTH_MODE", off)
        with pytest.raises(ClusterError, match=f"RAY_AUTH_MODE={off}: a local Ray cluster needs token"):
            search_cluster.require_token_auth(ray)


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """Every LISTEN TCP socket of this machine's network namespace: ``{inode: (ip, port)}``
    (from /proc/net/tcp and tcp6; IPv6 addresses as the kernel stores them, IPv4-mapped ones too)."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":                                   # TCP_LISTEN
                continue
            ip_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(ip_hex)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))   # per 32-bit word, host order
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    return found


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Ray's GCS, raylet, agents and workers for a driver)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])   # after "(command)"
        except OSError:                                              # gone meanwhile
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _listeners_of(pids) -> list[tuple[int, str, int]]:
    """``(pid, ip, port)`` of each listening TCP socket the processes ``pids`` hold."""
    listening, found = _listening_sockets(), []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:                                              # gone meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in listening:
                found.append((pid, *listening[int(target[8:-1])]))
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="lists sockets from Linux's /proc")
def test_local_cluster_sessions_live_in_a_private_folder(cluster):
    """Ray's logs and sockets: in a folder of the service's user, mode 0700 (not /tmp/ray, 0777)."""
    import stat

    import ray

    from iom.search.cluster import private_temp_dir

    folder = private_temp_dir()
    info = os.lstat(folder)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    session = ray._private.worker._global_node.get_session_dir_path()
    assert os.path.realpath(session).startswith(os.path.realpath(folder) + os.sep)


def test_local_cluster_listens_on_loopback_only(cluster):
    @ray.remote
    def pid():
        return os.getpid()

    worker = ray.get(pid.remote())                                   # a worker with its own gRPC server
    gcs_host, gcs_port = cluster.rsplit(":", 1)
    node = [n for n in ray.nodes() if n["Alive"]]
    assert gcs_host == "127.0.0.1" and len(node) == 1 and node[0]["NodeManagerAddress"] == "127.0.0.1"
    assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"
    listeners = _listeners_of(_descendants(os.getpid()))
    ports = {port for _, _, port in listeners}
    # not vacuous: the GCS, the raylet's node and object managers and the worker are among them
    assert {int(gcs_port), node[0]["NodeManagerPort"], node[0]["ObjectManagerPort"]} <= ports
    assert worker in {p for p, _, _ in listeners}
    open_to_network = [(p, ip, port) for p, ip, port in listeners if not _loopback(ip)]
    assert listeners and open_to_network == [], open_to_network


def test_a_cluster_reporting_another_address_is_refused(monkeypatch):
    monkeypatch.setattr(search_cluster, "local_cluster_addresses",
                        lambda ray: {"gcs": "127.0.0.1:6379", "driver": "127.0.0.1", "node 0a1b": "10.0.0.5"})
    with pytest.raises(ClusterError, match="node 0a1b is at 10.0.0.5, not on 127.0.0.1"):
        search_cluster.check_loopback(ray)
    monkeypatch.setattr(search_cluster, "local_cluster_addresses", lambda ray: {"gcs": "0.0.0.0:6379"})
    with pytest.raises(ClusterError, match="gcs is at 0.0.0.0:6379"):
        search_cluster.check_loopback(ray)
    monkeypatch.setattr(search_cluster, "local_cluster_addresses", lambda ray: {"gcs": "[::1]:6379", "driver": "::1"})
    search_cluster.check_loopback(ray)


# ---------------------------------------------------------------------------- same answers
@pytest.mark.parametrize("m, q", [(8, 2), (16, 4), (64, 16)])     # short codes: many equal similarities
def test_same_top_k_as_in_process_with_ties_and_after_changes(cluster, m, q):
    rng = np.random.default_rng(m * q)
    n = 3000
    ids = rng.choice(np.arange(-10**6, 10**6), size=n, replace=False)    # random, negative ones too
    codes = rng.integers(0, q, size=(n, m))
    local, sharded = _pair(m, q, ids, codes)
    try:
        probes = np.concatenate([codes[:10], rng.integers(0, q, size=(20, m))])
        for k in (1, 7, 60):
            want = local.search_many(probes, k)
            assert sharded.search_many(probes, k) == want
            assert [sharded.search(p, k) for p in probes[:5]] == want[:5]
            assert k == 1 or any(len({s for _, s in hits}) < len(hits) for hits in want)   # ties exercised
        gone = ids[rng.permutation(n)[:1000]]
        local.remove(gone)
        sharded.remove(gone)
        more_ids = np.arange(2 * 10**6, 2 * 10**6 + 500)
        more = rng.integers(0, q, size=(500, m))
        local.add(more_ids, more)
        sharded.add(more_ids, more)
        assert len(sharded) == len(local) == 2500 and sharded.nbytes == local.nbytes
        assert sorted(sharded.ids.tolist()) == sorted(local.ids.tolist())
        for k in (3, 40):
            assert sharded.search_many(probes, k) == local.search_many(probes, k)
        assert sharded.search(probes[0], 5000) == local.search(probes[0], 5000)   # top_k > N: everything
    finally:
        sharded.close()


def test_routing_and_errors_like_packed_gallery(cluster):
    m, q = 32, 8
    rng = np.random.default_rng(1)
    ids = np.arange(100, 400)
    codes = rng.integers(0, q, size=(300, m))
    local, sharded = _pair(m, q, ids, codes, shards=4)
    try:
        assert sharded.shards == 4 and sum(sharded.shard_sizes()) == 300
        assert sharded.shard_nbytes() == [n * local.nbytes // 300 for n in sharded.shard_sizes()]
        for k, part in enumerate(_split_by_shard(sharded)):        # each id on exactly the shard named
            assert len(part) and (shards_of(part, 4) == k).all()
        stats = sharded.shard_stats()
        assert [s["n"] for s in stats] == sharded.shard_sizes() and len({s["pid"] for s in stats}) == 4
        assert all(s["rss_bytes"] is None or s["rss_bytes"] > s["nbytes"] for s in stats)

        victim = 250
        home, before = sharded.shard_of(victim), sharded.shard_sizes()
        assert victim in sharded and 99 not in sharded
        sharded.remove([victim])
        local.remove([victim])
        after = sharded.shard_sizes()
        assert after[home] == before[home] - 1 and sum(after) == 299 and victim not in sharded
        assert victim not in _split_by_shard(sharded)[home]
        sharded.add([victim], codes[:1])                         # back to the same shard
        assert sharded.shard_sizes() == before and victim in _split_by_shard(sharded)[home]
        local.add([victim], codes[:1])

        bad_calls = [
            lambda g: g.remove([victim, 99_999]),              # unknown id
            lambda g: g.remove([victim, victim]),              # repeated
            lambda g: g.add([101], codes[:1]),                 # already enrolled
            lambda g: g.add([7, 7], codes[:2]),                # repeated in the batch
            lambda g: g.add([7], codes[:1, :m - 1]),           # wrong length
            lambda g: g.add([7.5], codes[:1]),                 # not integers
            lambda g: g.add([7, 8], codes[:1]),                # count
            lambda g: g.add([7], np.full((1, m), q)),          # symbol out of range
            lambda g: g.add_packed([7], np.zeros((1, 3, 1), np.uint32)),
            lambda g: g.search(codes[0], 0),                   # top_k
            lambda g: g.search(codes[:2], 3),                  # a batch to search()
            lambda g: g.search_many(codes[:2, :5], 3),         # wrong probe length
            lambda g: g.search_many(codes[:2] + q, 3),         # probe symbol out of range
        ]
        for call in bad_calls:
            errors = []
            for g in (local, sharded):
                with pytest.raises((ValueError, KeyError)) as caught:
                    call(g)
                errors.append((type(caught.value), str(caught.value)))
            assert errors[0] == errors[1]
        assert sharded.search_many(codes[:5], 4) == local.search_many(codes[:5], 4)   # nothing changed
        assert len(sharded) == 300
    finally:
        sharded.close()
    with pytest.raises(ClusterError, match="closed"):
        sharded.search(codes[0], 3)


def test_empty_gallery_and_a_lost_shard(cluster):
    g = ShardedGallery(16, 4, shards=2)
    assert len(g) == 0 and g.search(np.zeros(16, int), 3) == [] and g.search_many(np.zeros((2, 16), int)) == [[], []]
    assert g.ids.tolist() == [] and g.nbytes == 0
    ids = np.arange(50)
    g.add(ids, np.random.default_rng(0).integers(0, 4, size=(50, 16)))
    ray.kill(g._shards[0])                               # a worker dies
    dead_by = time.monotonic() + 60                      # ray.kill is asynchronous: wait until it is gone
    while time.monotonic() < dead_by:
        try:
            ray.get(g._shards[0].ready.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            break
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.05)
    with pytest.raises(ClusterError, match="lost"):
        g.search(np.zeros(16, int), 3)
    g.close()


# ---------------------------------------------------------------------------- the factory
def test_gallery_spec_and_factory_errors(cluster):
    assert isinstance(make_gallery(8, 4), PackedGallery)
    assert GallerySpec().describe() == {"cluster": None, "shards": 1}
    assert GallerySpec("local").describe() == {"cluster": "local", "shards": 2}
    for ok in ("local", "auto", "10.0.0.5:6379", "head.example:6379", "ray://head:10001", "[::1]:6379"):
        assert check_cluster(ok) == ok
    for bad in ("", "head", "head:0", "head:65536", "a b:1", "head:x", "http://head:1", 5):
        with pytest.raises(InvalidInputError, match="cluster"):
            check_cluster(bad)
    with pytest.raises(InvalidInputError, match="--shards needs --cluster"):
        GallerySpec(None, shards=2)
    for shards in (0, -1, True, 2.5):
        with pytest.raises(InvalidInputError, match="--shards must be a positive integer"):
            GallerySpec("local", shards=shards)
    with pytest.raises(ClusterError, match="no Ray cluster answers at 127.0.0.1:1"):    # nothing listens
        make_gallery(8, 4, cluster="127.0.0.1:1", shards=2)
    with pytest.raises(ClusterError, match="already on the Ray cluster 'local'"):
        search_cluster.connect("auto")
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        ShardedGallery(8, 4, shards=0)
    for m, q in ((0, 4), (8, 1), (8, 300)):                             # PackedGallery's own checks
        with pytest.raises(ValueError) as want:
            PackedGallery(m, q)
        with pytest.raises(ValueError) as got:
            ShardedGallery(m, q, shards=2)
        assert str(got.value) == str(want.value)
    spec = GallerySpec("local", shards=3)
    spec.connect()                                                      # already joined: nothing new
    with spec.make(8, 4, capacity=1000) as g:
        assert isinstance(g, ShardedGallery) and g.shards == 3


def test_the_cluster_names_stay_importable_from_their_old_modules():
    from iom.search import galleries

    for name in ("connect", "connected", "shutdown", "secure_token_file", "secure_token_folder", "token_file",
                 "require_token_auth", "private_temp_dir", "check_loopback", "local_cluster_addresses", "LOOPBACK"):
        assert getattr(sharded_search, name) is getattr(search_cluster, name), name
    for name in ("check_cluster", "check_reachable", "host_port", "REACH_TIMEOUT_S"):
        assert getattr(galleries, name) is getattr(search_cluster, name), name


def test_in_process_never_imports_ray():
    code = ("import sys; from iom.service import cli, cli_request, service, galleries; "
            "from iom.server import serve; g = galleries.make_gallery(16, 4); "
            "spec = galleries.GallerySpec(); spec.connect(); "
            "assert type(g).__name__ == 'PackedGallery' and type(spec.make(8, 4)).__name__ == 'PackedGallery'; "
            "assert 'ray' not in sys.modules and 'iom.search.sharded' not in sys.modules, "
            "[m for m in sys.modules if m.startswith('ray')][:5]")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------- the service and the CLI
@pytest.fixture(scope="module")
def hasher():
    from arcface.pretrained import MODELS_DIR
    from iom.defaults import DEFAULT_HASHER
    from iom.hashing.hasher import DeepIoMHasher

    return DeepIoMHasher.load(os.path.join(MODELS_DIR, DEFAULT_HASHER))


def test_service_identifies_the_same_through_shards_and_follows_the_event_log(cluster, hasher, tmp_path):
    from iom.service.pipeline import Pipeline
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore
    from tests.test_iom_service import ADMIN, SECRET, _NoEmbedder, people, research_policy

    x = people(n=8)
    with SQLiteStore(tmp_path / "t.db") as store:
        pipeline = Pipeline(_NoEmbedder(), hasher)
        local = TemplateService(pipeline, store, SECRET, policy=research_policy(), admin_secret=ADMIN)
        sharded = TemplateService(pipeline, store, SECRET, policy=research_policy(), admin_secret=ADMIN,
                                  gallery_spec=GallerySpec("local", shards=3))
        with pytest.raises(InvalidInputError, match="GallerySpec"):
            TemplateService(pipeline, store, SECRET, gallery_spec="local")
        for i in range(6):
            local.enroll(f"s{i}", embeddings=x[i, :2], user_token=f"token-{i}")

        def same(probe, top_k=6):
            a = local.identify(embedding=probe, top_k=top_k)
            b = sharded.identify(embedding=probe, top_k=top_k)
            assert a == b and a                          # subjects, ranks, decisions and similarities
            return a

        assert same(x[3, 2])[0].subject_id == "s3"
        gallery, _ = sharded._current_gallery()
        assert isinstance(gallery, ShardedGallery) and len(gallery) == 6 and gallery.shards == 3
        # a revocation and new enrolments come through the event log to the right shards
        local.revoke("s3", admin_secret=ADMIN)
        local.enroll("s6", embeddings=x[6, :2], user_token="token-6")
        local.enroll("s7", embeddings=x[7, :2], user_token="token-7")
        assert "s3" not in [c.subject_id for c in same(x[3, 2], 8)]
        assert same(x[7, 2])[0].subject_id == "s7"
        assert sharded._current_gallery()[0] is gallery and len(gallery) == 7
        active = sorted(r.template_id for r in store.identify_gallery(pipeline.model_id)[1]
                        if r.purpose == "identify" and r.active)
        assert sorted(gallery.ids.tolist()) == active
        for k, part in enumerate(_split_by_shard(gallery)):
            assert (shards_of(part, 3) == k).all()
        sharded.refresh()                                # rebuilt from the store: same answers
        assert same(x[1, 2])[0].subject_id == "s1"


def test_command_line_cluster_options(cluster, hasher, tmp_path, monkeypatch, capsys):
    """--cluster/--shards are checked before the model loads; an address joins the running
    cluster and gives the same candidates as the in-process service."""
    from arcface.embeddings_io import save_embeddings
    from iom.cli.main import main
    from iom.service.pipeline import Pipeline
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore
    from tests.test_iom_service import _NoEmbedder, people

    secret = "app-secret-for-sharded-tests"
    x = people(n=4)
    db = tmp_path / "cli.db"
    with SQLiteStore(db) as store:
        service = TemplateService(Pipeline(_NoEmbedder(), hasher), store, secret,
                                  policy=ServicePolicy(allow_embeddings=True, scrypt_n=2**10))
        for i in range(4):
            service.enroll(f"p{i}", embeddings=x[i, :2], user_token=f"token-number-{i}-Xq")
        want = [{"subject": c.subject_id, "rank": c.rank} for c in service.identify(embedding=x[2, 2:], top_k=3)]
    save_embeddings(tmp_path / "probe.npz", ["probe"], x[2, 2:])
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    env.update(IOMFACE_APP_SECRET=secret, XDG_STATE_HOME=str(tmp_path / "state"), TF_CPP_MIN_LOG_LEVEL="3")
    base = ["--db", str(db), "--json", "--allow_embeddings", "identify", "--embeddings", str(tmp_path / "probe.npz"),
            "--top_k", "3"]

    import iom.service.pipeline as pipeline_module
    monkeypatch.setattr(pipeline_module.Pipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: pytest.fail("the model loaded")))
    monkeypatch.setenv("IOMFACE_APP_SECRET", secret)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    from iom.server.api_keys import add_key

    add_key(str(tmp_path / "keys.json"), "desk", "admin")     # so serve reaches the cluster's own checks
    capsys.readouterr()
    for extra, says in ((["--shards", "2"], "--shards needs --cluster"),
                        (["--cluster", "local", "--shards", "0"], "--shards must be a positive integer"),
                        (["--cluster", "nowhere"], "--cluster must be 'local'"),
                        (["--cluster", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1")):
        for argv in (base + extra, ["--db", str(db), "serve", "--keys_file", str(tmp_path / "keys.json"), *extra]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1

    done = subprocess.run([sys.executable, "-m", "iom.cli", *base, "--cluster", cluster, "--shards", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["candidates"] == want and want[0]["subject"] == "p2"
    assert done.stderr == ""                                                  # quiet, Ray included
