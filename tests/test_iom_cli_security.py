"""Secrets and files of the ``iomface`` command line and the stores it opens.

* no secret in argv: tokens come from ``--token_file`` (``-``: stdin); ``--token VALUE`` and
  friends are refused without echoing the value; a ``--db`` URL with a password is refused;
* DSNs: :func:`iom.store.factory.scrub_dsn` keeps ``user:password`` out of every message; a
  libpq ``key=value`` string is refused instead of becoming a SQLite file of that name;
  :func:`iom.store.factory.open_store` lives beside the stores;
* files: a new SQLite database is 0600 (its -wal/-shm too), a new folder 0700; an existing
  file keeps its mode with a warning; a secret file open to group/other is refused;
* ``--model`` is a name inside models/, never a path;
* the CLI on the service API: decisions and ranks, embeddings only with ``--allow_embeddings``,
  revoke/reissue with a proof (token + face, or the administrator secret), ``--expected_version``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

from iom.errors import InvalidInputError, StoreError

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-Xq9"
TOKEN = "Kq7vR2mXp9Lz"          # strong enough for the policy's token floor
TOKEN2 = "Wt4nB8yHc3Jd"
ADMIN = b"administrator-secret-for-tests-0123456789"


# ---------------------------------------------------------------------------- helpers
def _default_hasher_dim() -> int:
    from arcface.pretrained import MODELS_DIR
    from iom.defaults import DEFAULT_HASHER

    with open(os.path.join(MODELS_DIR, DEFAULT_HASHER, "hasher.json")) as f:
        return json.load(f)["dim"]


def people(n=3, per=3, seed=0, noise=0.35):
    """Unit embeddings of n people, ``per`` samples each (same person = close)."""
    dim = _default_hasher_dim()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, dim))
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n * per, dim)) * np.sqrt(
        np.mean(centres ** 2))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).reshape(n, per, dim)


def private_file(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def subprocess_cli(*args, cwd, env=None, stdin=None):
    """``python -m iom.cli ARGS`` (the real argv), IOMFACE_* cleared unless in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    return subprocess.run([sys.executable, "-m", "iom.cli", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=600,
                          env={**base, "TF_CPP_MIN_LOG_LEVEL": "3", "XDG_STATE_HOME": str(cwd / "state"),
                               **(env or {})})


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Runs ``iomface`` in this process (the model loads fast the second time): call it with
    the arguments, optional ``stdin`` text and ``env``; returns ``(rc, stdout, stderr)``.
    Works in ``tmp_path``; IOMFACE_* cleared, IOMFACE_APP_SECRET set unless ``env`` says."""
    from iom.cli.main import main

    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("IOMFACE_")]:
        monkeypatch.delenv(key)

    def run(*args, stdin=None, env=None):
        env = {"IOMFACE_APP_SECRET": "app-secret-for-tests", "XDG_STATE_HOME": str(tmp_path / "state"),
               **(env or {})}
        with monkeypatch.context() as m:
            for key, value in env.items():
                if value is None:
                    m.delenv(key, raising=False)
                else:
                    m.setenv(key, value)
            m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((stdin or "").encode())))
            capsys.readouterr()
            rc = main([str(a) for a in args])
            out, err = capsys.readouterr()
        return rc, out, err

    return run


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------------- open_store, DSNs
def test_open_store_lives_beside_the_stores(tmp_path, monkeypatch):
    from iom.store.sqlite import SQLiteStore
    from iom.store.factory import open_store

    with open_store(f"sqlite:///{tmp_path}/u.db") as s:
        assert isinstance(s, SQLiteStore) and s.path == tmp_path / "u.db"
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel.db") as s:
        assert s.path == Path("rel.db")
    with open_store(tmp_path / "p.db") as s:
        assert isinstance(s, SQLiteStore)
    with open_store("sqlite:///a=b.db") as s:          # '=' in a file name: say it is SQLite
        assert s.path == Path("a=b.db")
    for bad in ("mysql://x/y", "", "sqlite://", None, "no scheme://x"):
        with pytest.raises(InvalidInputError):
            open_store(bad)


@pytest.mark.parametrize("dsn", [
    f"host=db.example user=app password={PASSWORD} dbname=templates",
    f"dbname=templates password='{PASSWORD} x'",
    "dbname=templates",
])
def test_libpq_key_value_string_is_refused_not_a_sqlite_file(dsn, tmp_path, monkeypatch):
    from iom.store.factory import open_store

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="key=value") as info:
        open_store(dsn)
    assert "dbname" in str(info.value) and PASSWORD not in str(info.value)
    assert list(tmp_path.iterdir()) == []                 # no SQLite file named after the DSN


@pytest.mark.parametrize("dsn, text, gone, kept", [
    (f"postgresql://bob:{PASSWORD}@db:5432/t", f"invalid URI: \"postgresql://bob:{PASSWORD}@db:5432/t\"",
     ["bob:", PASSWORD], ["postgresql://***@db:5432/t"]),
    ("postgresql://bob:p%40ss%20w0rd@db/t", "bad postgresql://bob:p%40ss%20w0rd@db/t; password 'p@ss w0rd'",
     ["p%40ss", "p@ss w0rd"], ["@db/t"]),
    ("postgresql://bob@db/t?password=s3cr%21t&sslmode=require",
     "invalid postgresql://bob@db/t?password=s3cr%21t&sslmode=require (s3cr!t)",
     ["s3cr%21t", "s3cr!t", "bob@"], ["sslmode=require"]),
    (f"host=db password={PASSWORD} user=bob", f"cannot parse host=db password={PASSWORD} user=bob",
     [PASSWORD], ["host=db", "password=***"]),
    ("host=db password='it\\'s secret' user=bob", "cannot parse host=db password='it\\'s secret' user=bob; it's secret",
     ["it's secret", "secret'"], ["host=db"]),
    ("postgresql://bob:p@ss@db/t", "failed to resolve host 'ss@db'", ["ss@", "p@ss"], ["@db"]),
    (None, f"see postgres://eve:{PASSWORD}@h/x and password={PASSWORD}", [PASSWORD, "eve:"], ["@h/x"]),
    ("/var/lib/iomface/t.db", "cannot open SQLite store /var/lib/iomface/t.db: unable to open",
     [], ["cannot open SQLite store /var/lib/iomface/t.db: unable to open"]),
])
def test_scrub_dsn_removes_user_and_password(dsn, text, gone, kept):
    from iom.store.dsn import scrub_dsn

    scrubbed = scrub_dsn(text, dsn)
    for secret in gone:
        assert secret not in scrubbed, scrubbed
    for part in kept:
        assert part in scrubbed, scrubbed
    assert scrub_dsn(scrubbed, dsn) == scrubbed                       # idempotent


@pytest.mark.parametrize("url", [
    f"postgresql://bob:{PASSWORD}@[::1/db",                 # malformed IPv6 host: libpq echoes the URI
    f"postgresql://bob:{PASSWORD}%zz@127.0.0.1:1/db",       # bad %-escape: libpq echoes the password
    f"postgresql://bob@127.0.0.1:1/db?password={PASSWORD}%zz&sslmode=disable",
])
def test_malformed_postgres_uri_never_shows_the_password(url):
    pytest.importorskip("psycopg")
    from iom.store.factory import open_store

    with pytest.raises(StoreError) as info:
        open_store(url, connect_timeout=2)
    shown = "".join(traceback.format_exception(info.value))
    assert "cannot connect to PostgreSQL" in shown
    assert PASSWORD not in shown and "bob:" not in shown, shown


# ---------------------------------------------------------------------------- SQLite file modes
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_new_sqlite_store_is_private_with_its_wal_and_shm(tmp_path, umask):
    from iom.store.sqlite import SQLiteStore

    old = os.umask(umask)
    try:
        path = tmp_path / "new" / "sub" / "t.db"
        with SQLiteStore(path) as s:
            s.schema_version()                      # WAL mode, schema written: -wal and -shm exist
            files = {p: stat.S_IMODE(os.stat(p).st_mode)
                     for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))}
        folders = {d: stat.S_IMODE(os.stat(d).st_mode) for d in (tmp_path / "new", tmp_path / "new" / "sub")}
    finally:
        os.umask(old)
    assert set(files.values()) == {0o600}, {str(k): oct(v) for k, v in files.items()}
    assert set(folders.values()) == {0o700}, {str(k): oct(v) for k, v in folders.items()}


def test_existing_sqlite_file_keeps_its_mode_with_a_warning(tmp_path):
    from iom.store import sqlite as sqlite_store
    from iom.store.sqlite import SQLiteStore

    path = tmp_path / "t.db"
    SQLiteStore(path).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # a private file: no warning
        SQLiteStore(path).close()
    os.chmod(path, 0o640)
    with pytest.warns(sqlite_store.InsecureFileModeWarning, match="chmod 600") as record:
        SQLiteStore(path).close()
    assert str(path) in str(record[0].message) and "0640" in str(record[0].message)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640          # left as it was


# ---------------------------------------------------------------------------- model names
@pytest.mark.parametrize("name", ["../../x", "../models/iom_mbfn_celeba299_64x8", "/etc",
                                  "iom_mbfn_celeba299_64x8/", ".hidden", "", "no_such_hasher", None])
def test_model_names_are_names_inside_models(name):
    from iom.service.pipeline import Pipeline

    with pytest.raises(InvalidInputError, match="model name|not a folder"):
        Pipeline.from_pretrained(name)


def _shipped_copy(tmp_path, monkeypatch, stage1_model=None) -> Path:
    """A models/ folder in tmp_path (monkeypatched as MODELS_DIR) holding a copy of a shipped
    hasher as ``outside/`` next to it; returns the models folder."""
    import shutil

    import arcface.pretrained

    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(Path(arcface.pretrained.MODELS_DIR) / "iom_mbfn_celeba299_64x8", outside)
    if stage1_model is not None:
        spec = json.loads((outside / "hasher.json").read_text())
        spec["stage1_model"] = stage1_model
        (outside / "hasher.json").write_text(json.dumps(spec))
    monkeypatch.setattr(arcface.pretrained, "MODELS_DIR", str(models))
    return models


def test_model_name_may_not_escape_models_by_a_symlink(tmp_path, monkeypatch):
    from iom.service.pipeline import Pipeline

    models = _shipped_copy(tmp_path, monkeypatch)
    (models / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidInputError, match="not a folder in"):
        Pipeline.from_pretrained("evil")


def test_stage1_model_named_by_a_hasher_is_checked_too(tmp_path, monkeypatch):
    import shutil

    from iom.service.pipeline import Pipeline

    models = _shipped_copy(tmp_path, monkeypatch, stage1_model="../../mobilefacenet_ms1m")
    shutil.move(tmp_path / "outside", models / "h")
    with pytest.raises(InvalidInputError, match="stage-1 model of hasher 'h'.*not a valid model name"):
        Pipeline.from_pretrained("h")


# ---------------------------------------------------------------------------- tokens
def test_read_token_one_line(tmp_path):
    from iom.cli.main import read_token

    for content, token in [(f"{TOKEN}\n", TOKEN), (f"{TOKEN}\r\n", TOKEN), (TOKEN, TOKEN),
                           (f" {TOKEN} \n", f" {TOKEN} ")]:                  # only the newline goes
        assert read_token(str(private_file(tmp_path / "t", content))) == token.encode()
    for content, message in [("\n", "empty"), ("", "empty"), (f"{TOKEN}\nsecond\n", "more than one line"),
                             ("x" * 5000, "larger than")]:
        with pytest.raises(InvalidInputError, match=message) as info:
            read_token(str(private_file(tmp_path / "t", content)))
        assert TOKEN not in str(info.value)
    with pytest.raises(InvalidInputError, match="--token_file .*nope"):
        read_token(str(tmp_path / "nope"))
    stdin = io.BytesIO(f"{TOKEN}\n{TOKEN2}\n".encode())                     # '-': one line each
    assert read_token("-", stdin=stdin) == TOKEN.encode()
    assert read_token("-", "--new_token_file", stdin=stdin) == TOKEN2.encode()
    with pytest.raises(InvalidInputError, match="standard input.*empty"):
        read_token("-", stdin=stdin)


@pytest.mark.parametrize("args, instead", [
    (["enroll", "alice", "--embeddings", "a.npz", "--token", TOKEN], "--token_file"),
    (["enroll", "alice", "--embeddings", "a.npz", f"--token={TOKEN}"], "--token_file"),
    (["verify", "alice", "--embeddings", "a.npz", "--token", TOKEN], "--token_file"),
    (["reissue", "alice", "--embeddings", "a.npz", "--new_token", TOKEN], "--new_token_file"),
    (["--secret", TOKEN, "list"], "--secret_file"),
    (["revoke", "alice", "--admin_secret", TOKEN], "--admin_secret_file"),
])
def test_a_secret_on_the_command_line_is_refused(tmp_path, args, instead):
    from arcface.embeddings_io import save_embeddings

    save_embeddings(tmp_path / "a.npz", ["a0", "a1", "a2"], people()[0])
    done = subprocess_cli("--db", "t.db", *args, cwd=tmp_path, env={"IOMFACE_APP_SECRET": "s3cret"})
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and instead in line and "ps" in line, line
    assert TOKEN not in done.stderr + done.stdout
    assert not (tmp_path / "t.db").exists()                 # refused before anything was opened


def test_abbreviated_options_are_not_taken_for_token_files(tmp_path):
    done = subprocess_cli("enroll", "alice", "--tok", TOKEN, cwd=tmp_path, env={"IOMFACE_APP_SECRET": "s"})
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and "--tok" in line and TOKEN not in done.stderr


# ---------------------------------------------------------------------------- secret files
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o622])
def test_secret_files_open_to_group_or_others_are_refused(tmp_path, mode):
    from iom.cli.main import read_secret_file

    path = private_file(tmp_path / "secret", "app-secret\n", mode)
    with pytest.raises(InvalidInputError, match="chmod 600") as info:
        read_secret_file(str(path), "--secret_file")
    assert str(path) in str(info.value) and f"{mode:04o}" in str(info.value)
    assert "app-secret" not in str(info.value)
    os.chmod(path, 0o600)
    assert read_secret_file(str(path)) == b"app-secret"
    os.chmod(path, 0o400)
    assert read_secret_file(str(path)) == b"app-secret"


@pytest.mark.parametrize("option", ["--secret_file", "--admin_secret_file"])
def test_cli_refuses_a_loose_secret_file(tmp_path, option):
    path = private_file(tmp_path / "secret", "the-secret\n", 0o644)
    done = subprocess_cli("--db", "t.db", option, str(path), "list", cwd=tmp_path,
                          env={"IOMFACE_APP_SECRET": "s3cret"})
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and option in line and str(path) in line and "chmod 600" in line
    assert not (tmp_path / "t.db").exists()


# ---------------------------------------------------------------------------- --db
@pytest.mark.parametrize("url", [
    f"postgresql://bob:{PASSWORD}@127.0.0.1:1/templates",
    f"postgres://bob:{PASSWORD}@127.0.0.1:1/templates?sslmode=disable",
    f"postgresql://bob@127.0.0.1:1/templates?password={PASSWORD}",
])
def test_db_url_with_a_password_is_refused(tmp_path, url):
    done = subprocess_cli("--db", url, "list", cwd=tmp_path, env={"IOMFACE_APP_SECRET": "s3cret"})
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and "IOMFACE_DB" in line and "pgpass" in line, line
    assert PASSWORD not in done.stderr + done.stdout and "bob:" not in done.stderr


def test_db_key_value_string_is_refused(tmp_path):
    done = subprocess_cli("--db", f"host=127.0.0.1 port=1 password={PASSWORD} dbname=t", "list",
                          cwd=tmp_path, env={"IOMFACE_APP_SECRET": "s3cret"})
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and "key=value" in line and PASSWORD not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_store_location_rules(monkeypatch):
    from iom.cli.main import store_location

    url = f"postgresql://bob:{PASSWORD}@db/t"
    assert store_location(None, {}) == "iomface.db"
    assert store_location(None, {"IOMFACE_DB": url}) == url          # the environment may hold one
    assert store_location("x.db", {"IOMFACE_DB": url}) == "x.db"
    assert store_location("postgresql://bob@db/t", {}) == "postgresql://bob@db/t"
    with pytest.raises(InvalidInputError, match="IOMFACE_DB") as info:
        store_location(url, {})
    assert PASSWORD not in str(info.value)


def test_malformed_store_url_from_the_environment_is_scrubbed(cli):
    rc, out, err = cli("list", env={"IOMFACE_DB": f"postgresql://bob:{PASSWORD}@[::1/db"})
    line = one_error_line(err)
    assert rc == 2 and "PostgreSQL" in line and PASSWORD not in err + out and "bob:" not in err


def test_bad_model_name_on_the_command_line(cli, tmp_path):
    rc, out, err = cli("--db", "t.db", "--model", "../../etc", "list")
    assert rc == 2 and "not a valid model name" in one_error_line(err)
    assert not (tmp_path / "t.db").exists()


# ---------------------------------------------------------------------------- the CLI on the service
@pytest.fixture
def samples(tmp_path):
    from arcface.embeddings_io import save_embeddings

    x = people()
    save_embeddings(tmp_path / "a.npz", ["a0", "a1", "a2"], x[0])
    save_embeddings(tmp_path / "a_probe.npz", ["a0"], x[0, :1])
    save_embeddings(tmp_path / "b.npz", ["b0", "b1", "b2"], x[1])
    private_file(tmp_path / "token", TOKEN + "\n")
    private_file(tmp_path / "token2", TOKEN2 + "\n")
    private_file(tmp_path / "admin", ADMIN)
    return tmp_path


def test_cli_embeddings_need_allow_embeddings(cli, samples):
    rc, _, err = cli("enroll", "alice", "--embeddings", "a.npz", "--token_file", "token")
    assert rc == 2 and "--allow_embeddings" in one_error_line(err)
    rc, _, err = cli("revoke", "alice", "--token_file", "token", "--proof_embeddings", "a.npz")
    assert rc == 2 and "--allow_embeddings" in one_error_line(err)
    assert not (samples / "iomface.db").exists()


def test_cli_new_database_is_private_and_iomface_db_is_honoured(cli, samples):
    def enroll():
        return cli("--allow_embeddings", "--json", "enroll", "alice", "--embeddings", "a.npz",
                   "--token_file", "-", stdin=TOKEN + "\n", env={"IOMFACE_DB": "db/t.db"})

    rc, out, err = enroll()                        # a folder that does not exist (a typo?): nothing made
    assert rc == 2 and "the folder" in one_error_line(err) and "does not exist" in one_error_line(err)
    assert not (samples / "db").exists() and not (samples / "iomface.db").exists()
    (samples / "db").mkdir()
    old = os.umask(0o022)
    try:
        rc, out, err = enroll()
    finally:
        os.umask(old)
    assert rc == 0, err
    assert stat.S_IMODE(os.stat(samples / "db" / "t.db").st_mode) == 0o600
    assert not (samples / "iomface.db").exists()


def test_cli_revoke_and_reissue_need_a_proof(cli, samples):
    def iomface(*args, **kw):
        return cli("--allow_embeddings", "--json", *args, **kw)

    rc, out, err = iomface("enroll", "alice", "--embeddings", "a.npz", "--token_file", "token")
    assert rc == 0, err
    rc, out, err = iomface("show", "alice")
    assert rc == 0, err
    version = json.loads(out)[0]["version"]

    rc, _, err = iomface("revoke", "alice")                                     # no proof at all
    assert rc == 2 and "proof" in one_error_line(err)
    rc, _, err = iomface("revoke", "alice", "--token_file", "token")            # token without a face
    assert rc == 2 and "--proof" in one_error_line(err)
    rc, _, err = iomface("revoke", "alice", "--token_file", "token2", "--proof_embeddings", "a_probe.npz")
    assert rc == 2 and one_error_line(err)                                      # wrong token
    rc, _, err = iomface("revoke", "alice", "--token_file", "token", "--proof_embeddings", "b.npz")
    assert rc == 2 and one_error_line(err)                                      # wrong face
    rc, out, err = iomface("list")
    assert rc == 0 and json.loads(out) == ["alice"], err

    # the administrator credential is the verifier set-admin keeps in the store, never the value
    # the caller presents: before one is set, and after, another secret is refused
    rc, _, err = iomface("--admin_secret_file", "token", "revoke", "alice")
    assert rc == 2 and "administrator credential refused" in one_error_line(err)
    rc, out, err = iomface("set-admin", "--new_admin_secret_file", "admin")
    assert rc == 0, err
    rc, _, err = iomface("--admin_secret_file", "token", "set-admin", "--new_admin_secret_file", "token")
    assert rc == 2 and "current one" in one_error_line(err)
    # reissue with the administrator secret, at a stale version: refused; at the current one: done
    rc, _, err = iomface("--admin_secret_file", "admin", "reissue", "alice", "--embeddings", "a.npz",
                         "--new_token_file", "token2", "--expected_version", str(version + 1000))
    assert rc == 2 and one_error_line(err)
    rc, out, err = iomface("reissue", "alice", "--embeddings", "a.npz", "--new_token_file", "token2",
                           "--expected_version", str(version), env={"IOMFACE_ADMIN_SECRET": ADMIN.decode()})
    assert rc == 0, err
    rc, out, err = iomface("verify", "alice", "--embeddings", "a_probe.npz", "--token_file", "token2")
    decision = json.loads(out)
    assert rc == 0 and (decision["subject"], decision["accepted"]) == ("alice", True), err

    # revoke with the new token and a matching face, stdin for the token
    rc, out, err = iomface("revoke", "alice", "--token_file", "-", "--proof_embeddings", "a_probe.npz",
                           stdin=TOKEN2 + "\n")
    assert rc == 0 and json.loads(out)["revoked"] >= 1, err
    rc, out, err = iomface("list")
    assert rc == 0 and json.loads(out) == [], err


def test_cli_prints_decisions_and_ranks_only(cli, samples):
    def iomface(*args, **kw):
        return cli("--allow_embeddings", *args, **kw)

    for who, f in (("alice", "a.npz"), ("bob", "b.npz")):
        rc, _, err = iomface("enroll", who, "--embeddings", f, "--token_file", "token")
        assert rc == 0, err
    rc, out, err = iomface("--json", "identify", "--embeddings", "a_probe.npz")
    assert rc == 0, err
    hits = json.loads(out)["candidates"]
    assert hits and hits[0] == {"subject": "alice", "rank": 1}
    assert all(set(h) == {"subject", "rank"} for h in hits)
    rc, out, err = iomface("verify", "alice", "--embeddings", "a_probe.npz", "--token_file", "token")
    assert rc == 0 and out.startswith("alice: accepted at FAR ") and "expected TAR" in out, out
    rc, out, err = iomface("verify", "bob", "--embeddings", "a_probe.npz", "--token_file", "token")
    assert rc == 1 and out.startswith("bob: rejected at FAR "), out          # exit 1: rejected
    assert "similarity" not in out
    rc, out, err = iomface("--json", "verify", "bob", "--embeddings", "a_probe.npz", "--token_file", "token")
    decision = json.loads(out)
    assert rc == 1 and decision["accepted"] is False and "similarity" not in decision
    assert set(decision["operating_point"]) == {"threshold", "far_target", "expected_tar", "expected_far",
                                                "calibration_set"}
    rc, out, err = cli("show", "alice", env={"IOMFACE_APP_SECRET": None})      # show needs the secret
    assert rc == 2 and "IOMFACE_APP_SECRET" in one_error_line(err)


def test_cli_on_postgres_with_the_password_in_the_environment(cli, samples):
    from tests.pg_server import fresh_database, postgres_server, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests need a local server: {reason}")
    import psycopg

    with postgres_server() as server, fresh_database(server.dsn) as dsn:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        url = f"postgresql://postgres:{PASSWORD}@{server.host}:{server.port}/{name}"   # trust auth
        rc, out, err = cli("--allow_embeddings", "--json", "enroll", "alice", "--embeddings", "a.npz",
                           "--token_file", "token", env={"IOMFACE_DB": url})
        assert rc == 0, err
        rc, out, err = cli("--json", "list", env={"IOMFACE_DB": url})
        assert rc == 0 and json.loads(out) == ["alice"], err
        rc, out, err = cli("--db", url, "list")                                 # --db: refused
        assert rc == 2 and "IOMFACE_DB" in one_error_line(err) and PASSWORD not in err
        missing = f"postgresql://postgres:{PASSWORD}@{server.host}:{server.port}/no_such_db"
        rc, out, err = cli("list", env={"IOMFACE_DB": missing})                 # a driver error
        assert rc == 2 and "no_such_db" in one_error_line(err) and PASSWORD not in err


def test_cli_keeps_a_witness_and_refuses_a_rolled_back_database(cli, samples):
    """Every command is a new process: the default witness (one per store, under
    $XDG_STATE_HOME/iomface) is what notices a database restored from a backup."""
    import shutil

    def iomface(*args, **kw):
        return cli("--allow_embeddings", "--json", *args, **kw)

    assert iomface("enroll", "alice", "--embeddings", "a.npz", "--token_file", "token")[0] == 0
    shutil.copy(samples / "iomface.db", samples / "backup.db")
    rc, _, err = iomface("revoke", "alice", "--token_file", "token", "--proof_embeddings", "a_probe.npz")
    assert rc == 0, err
    for suffix in ("-wal", "-shm"):
        (samples / f"iomface.db{suffix}").unlink(missing_ok=True)
    shutil.copy(samples / "backup.db", samples / "iomface.db")
    rc, out, err = iomface("verify", "alice", "--embeddings", "a_probe.npz", "--token_file", "token")
    assert rc == 2 and "rolled back" in one_error_line(err), out
    witnesses = list((samples / "state" / "iomface").iterdir())
    assert len(witnesses) == 1 and stat.S_IMODE(os.stat(samples / "state" / "iomface").st_mode) == 0o700
