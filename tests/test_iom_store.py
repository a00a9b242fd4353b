"""Template store (iom.store.base): SQLite and a real, throw-away PostgreSQL server.

Every behaviour test runs on both back ends, each on a fresh database (a tmp_path file; a
new PostgreSQL schema per test, on a session-wide server started by tests/pg_server.py).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from iom.store import schema as store_mod
from iom.errors import (ConflictError, DuplicateEnrollmentError, InvalidInputError, RevokedTemplateError,
                        StoreError, TemplateError, UnknownSubjectError)
from iom.store.sqlite import SQLiteStore
from iom.store.base import TemplateStore
from iom.store.records import TemplateRecord, record_checksum, utc_now, validate_record
from iom.store.schema import MIGRATIONS
from iom.store.factory import open_store
from tests.pg_server import fresh_database, fresh_schema, postgres_server, unavailable_reason

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def pg_dsn():
    """DSN (superuser, database ``postgres``) of a throw-away PostgreSQL server."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests need a local server: {reason}")
    with postgres_server() as server:
        yield server.dsn


class Backend:
    """Opens stores on one fresh database and edits it behind the store's back."""

    def __init__(self, name: str, target: str):
        self.name, self.target = name, target
        self.opened: list[TemplateStore] = []

    @property
    def cls(self) -> type[TemplateStore]:
        if self.name == "sqlite":
            return SQLiteStore
        from iom.store.postgres import PostgresStore

        return PostgresStore

    def open(self, cls=None, **kwargs) -> TemplateStore:
        s = (cls or self.cls)(self.target, **kwargs)
        self.opened.append(s)
        return s

    def raw(self, sql: str, params=()) -> list:
        """Run SQL directly (``?`` placeholders), committed; its rows."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.target, isolation_level=None)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params or None)
            return cur.fetchall() if cur.description else []

    def close_all(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "db" / "templates.db"))
        yield b
        b.close_all()
    else:
        with fresh_schema(request.getfixturevalue("pg_dsn")) as dsn:
            b = Backend("postgres", dsn)
            yield b
            b.close_all()


@pytest.fixture
def store(backend):
    return backend.open()


def rec(subject="alice", purpose="verify", code=None, salt=None, **kw) -> TemplateRecord:
    fields = dict(subject_id=subject, purpose=purpose,
                  code=code if code is not None else f"code:{subject}:{purpose}".encode() * 4,
                  salt=salt if salt is not None else (f"{subject}:{purpose}".encode() * 16)[:16],
                  key_version=1, model_id="arcface-r50/iom-512x16", m=512, q=16, n_photos=3)
    fields.update(kw)
    return TemplateRecord(**fields)


def pair(subject="alice", **kw) -> list[TemplateRecord]:
    return [rec(subject, "verify", **kw), rec(subject, "identify", **kw)]


def same_content(a: TemplateRecord, b: TemplateRecord) -> bool:
    strip = dict(template_id=None, created_at=None, revoked_at=None)
    return dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)


# ---------------------------------------------------------------------------- basics
def test_errors_are_typed():
    from arcface.errors import IomfaceError

    for cls in (UnknownSubjectError, DuplicateEnrollmentError, RevokedTemplateError, StoreError,
                InvalidInputError):
        assert issubclass(cls, TemplateError) and issubclass(cls, IomfaceError)
    assert issubclass(RevokedTemplateError, UnknownSubjectError)   # "no active template"
    assert issubclass(InvalidInputError, ValueError)


def test_checksum_covers_every_field():
    base = dataclasses.replace(rec(), template_id=7, created_at="2025-01-01T00:00:00.000000+00:00")
    seen = {record_checksum(base)}
    changes = dict(subject_id="bob", purpose="identify", code=b"x", salt=b"s" * 16, key_version=2,
                   model_id="other", m=256, q=8, n_photos=4, template_id=8,
                   created_at="2025-01-01T00:00:00.000001+00:00", revoked_at="2025-01-02T00:00:00+00:00")
    for field, value in changes.items():
        seen.add(record_checksum(dataclasses.replace(base, **{field: value})))
    assert len(seen) == len(changes) + 1
    # length prefixes: moving a byte from one field to the next changes the checksum
    a = dataclasses.replace(base, subject_id="ab", purpose="c")
    b = dataclasses.replace(base, subject_id="a", purpose="bc")
    assert record_checksum(a) != record_checksum(b)


def test_round_trip(backend, store):
    assert store.schema_version() == len(MIGRATIONS) == LATEST
    before = datetime.now(timezone.utc)
    ids = store.enroll(pair("alice"))
    assert len(ids) == 2 and ids[0] < ids[1]
    bob_ids = store.enroll([rec("bob", "verify")])
    active = store.active("alice")
    assert set(active) == {"verify", "identify"}
    for purpose, tid in zip(("verify", "identify"), ids):
        r = active[purpose]
        assert r.template_id == tid and r.revoked_at is None and r.active
        assert same_content(r, rec("alice", purpose))
        created = datetime.fromisoformat(r.created_at)
        assert created.utcoffset().total_seconds() == 0 and created >= before.replace(microsecond=0)
    assert store.subjects() == ["alice", "bob"]
    head, gallery = store.identify_gallery("arcface-r50/iom-512x16")
    assert head == store.head() == 2 and gallery == [active["identify"]]
    assert gallery[0].code == rec("alice", "identify").code
    assert store.identify_gallery("another-model") == (2, [])
    assert [r.template_id for r in store.history("alice")] == ids
    assert [r.template_id for r in store.history("bob")] == bob_ids
    # a second connection sees the same
    other = backend.open()
    assert other.active("alice") == active


def test_revoke_reissue_history(backend, store):
    old = store.enroll(pair("alice"))
    store.enroll(pair("bob"))
    assert store.revoke("alice") == 2
    with pytest.raises(RevokedTemplateError, match="alice.*revoked"):
        store.active("alice")
    assert store.subjects() == ["bob"]
    assert store.subjects(include_revoked=True) == ["alice", "bob"]
    assert [r.subject_id for r in store.identify_gallery("arcface-r50/iom-512x16")[1]] == ["bob"]
    with pytest.raises(RevokedTemplateError):
        store.revoke("alice")
    with pytest.raises(RevokedTemplateError):
        store.reissue("alice", pair("alice"))
    # a revoked subject may enroll again
    again = store.enroll(pair("alice", key_version=2))
    # reissue: the active ones revoked, new ones in their place
    new_code = b"\x01\x02" * 100
    new = store.reissue("alice", [rec("alice", "verify", code=new_code, salt=b"\x07" * 16),
                                  rec("alice", "identify", code=new_code[::-1], salt=b"\x08" * 16)])
    assert store.active("alice")["verify"].code == new_code
    assert {r.template_id for r in store.active("alice").values()} == set(new)
    history = store.history("alice")
    assert [r.template_id for r in history] == old + again + new
    assert [r.revoked_at is None for r in history] == [False] * 4 + [True] * 2
    assert all(r.revoked_at >= r.created_at for r in history if r.revoked_at)
    gallery = store.identify_gallery("arcface-r50/iom-512x16")[1]
    ids = [r.template_id for r in gallery]
    assert [r.subject_id for r in gallery] == ["bob", "alice"] and gallery[1].code == new_code[::-1]
    assert ids == sorted(ids)
    # reissue may change which purposes the subject has
    store.reissue("bob", [rec("bob", "verify", code=b"only-verify")])
    assert set(store.active("bob")) == {"verify"}
    assert [r.subject_id for r in store.identify_gallery("arcface-r50/iom-512x16")[1]] == ["alice"]


def test_a_subjects_version_counts_its_own_changes(backend, store):
    """expected_version refers to the subject's own changes (1 after its enrolment, 2 after a
    reissue, ...), whatever else the log holds; a stale one is a ConflictError that writes nothing."""
    for k in range(9):                                   # nine people enrolled before
        store.enroll(pair(f"p{k}"))
    store.put_setting("some.setting", b"x")               # settings and attempts are in the log too
    store.record_attempt("p0", "door", "verify", "rejected")
    assert store.version("aaron") == 0
    store.enroll(pair("aaron"))
    store.enroll(pair("zoe"))
    assert store.version("aaron") == 1 and store.version("zoe") == 1 and store.version("p3") == 1
    head, before = store.head(), store.dump()
    for stale in (0, 2, store.head()):
        with pytest.raises(ConflictError, match=f"at version 1, not the expected {stale}"):
            store.reissue("aaron", pair("aaron", code=b"new"), expected_version=stale)
        with pytest.raises(ConflictError):
            store.revoke("aaron", expected_version=stale)
    assert store.dump() == before and store.head() == head
    store.reissue("aaron", pair("aaron", code=b"new"), expected_version=1)
    assert store.version("aaron") == 2
    other = backend.open()                               # another connection sees the same versions
    assert other.version("aaron") == 2 and other.version("zoe") == 1
    # a change of the subject made meanwhile elsewhere: the version read before is stale
    store.reissue("aaron", pair("aaron", code=b"newer"))
    with pytest.raises(ConflictError, match="at version 3, not the expected 2"):
        other.revoke("aaron", expected_version=2)
    store.reissue("zoe", pair("zoe", code=b"z"), expected_version=1)       # another subject: no effect
    assert other.revoke("aaron", expected_version=3) == 2
    assert store.version("aaron") == 4
    store.enroll(pair("aaron"))
    assert store.version("aaron") == 5 and store.version("zoe") == 2
    # the log itself is as before: one entry per change, consecutive, chained
    events = store.events_since(0)
    assert [e.seq for e in events] == list(range(1, store.head() + 1))
    assert [e.op for e in events if e.subject_id == "aaron"] == ["enroll", "reissue", "reissue", "revoke", "enroll"]


def test_concurrent_changes_at_one_version_one_wins(backend):
    s = backend.open()
    for k in range(5):
        s.enroll(pair(f"p{k}"))
    s.enroll(pair("alice"))
    version = s.version("alice")
    assert version == 1
    results = _race(backend, 3, lambda st, i: st.reissue("alice", pair("alice", code=f"r{i}".encode()),
                                                          expected_version=version))
    assert sorted(type(r).__name__ for r in results) == ["ConflictError"] * 2 + ["list"], results
    assert s.version("alice") == 2
    check_invariants(s)


def test_duplicate_enrollment_changes_nothing(store):
    store.enroll(pair("alice"))
    before = store.dump()
    with pytest.raises(DuplicateEnrollmentError, match="alice"):
        store.enroll(pair("alice", code=b"other"))
    with pytest.raises(DuplicateEnrollmentError, match="'identify'"):
        store.enroll([rec("alice", "identify", code=b"other")])
    assert store.dump() == before
    # only the verify template active: enrolling both purposes still fails as a whole
    store.enroll([rec("carol", "verify")])
    before = store.dump()
    with pytest.raises(DuplicateEnrollmentError, match="carol.*'verify'"):
        store.enroll(pair("carol"))
    assert store.dump() == before
    # but the missing purpose alone may be added
    store.enroll([rec("carol", "identify")])
    assert set(store.active("carol")) == {"verify", "identify"}


def test_unknown_subject_changes_nothing(store):
    store.enroll(pair("alice"))
    before = store.dump()
    for call in (lambda: store.active("nobody"), lambda: store.revoke("nobody"),
                 lambda: store.reissue("nobody", pair("nobody")), lambda: store.history("nobody")):
        with pytest.raises(UnknownSubjectError, match="'nobody' was never enrolled") as info:
            call()
        assert not isinstance(info.value, RevokedTemplateError)
        assert info.value.subject_id == "nobody"
    assert store.dump() == before


BAD_FIELDS = [
    ("subject_id", ""), ("subject_id", None), ("subject_id", 5), ("subject_id", "a" * 257),
    ("subject_id", "ali\nce"), ("subject_id", "ali\x00ce"), ("subject_id", "\ud800"),
    ("purpose", "login"), ("purpose", None),
    ("code", b""), ("code", "text"), ("code", b"x" * (64 * 1024 + 1)), ("code", None),
    ("salt", b"short"), ("salt", b"x" * 17), ("salt", "s" * 16),
    ("key_version", 0), ("key_version", 1.0), ("key_version", True), ("key_version", 2**31),
    ("model_id", ""), ("model_id", "m" * 257), ("model_id", 3), ("model_id", "a\tb"),
    ("m", 0), ("m", -1), ("m", "512"),
    ("q", 1), ("q", 257), ("q", 16.0),
    ("n_photos", 0), ("n_photos", None),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r:.12}" for f, v in BAD_FIELDS])
def test_invalid_record_field(field, value):
    with pytest.raises(InvalidInputError, match=field):
        validate_record(dataclasses.replace(rec(), **{field: value}))


def test_invalid_input_changes_nothing(store):
    store.enroll(pair("alice"))
    before = store.dump()
    bad_batches = [
        [], [rec("bob", code=b"")], rec("bob"), ["not a record"],
        [rec("bob", "verify"), rec("carol", "identify")],        # two subjects
        [rec("bob", "verify"), rec("bob", "verify")],            # a purpose twice
        [rec("bob", "verify"), rec("bob", "identify", salt=b"short")],
    ]
    for batch in bad_batches:
        with pytest.raises(InvalidInputError):
            store.enroll(batch)
    for field, value in BAD_FIELDS:
        with pytest.raises(InvalidInputError, match=field):
            store.enroll([rec("bob", "verify"), dataclasses.replace(rec("bob", "identify"), **{field: value})])
    for bad_id in ("", None, "x\n", "y" * 300):
        for call in (store.active, store.revoke, store.history):
            with pytest.raises(InvalidInputError, match="subject_id"):
                call(bad_id)
    with pytest.raises(InvalidInputError, match="not 'alice'"):
        store.reissue("alice", pair("bob"))
    with pytest.raises(InvalidInputError, match="model_id"):
        store.identify_gallery("")
    assert store.dump() == before


def test_reissue_is_atomic(backend, store):
    store.enroll(pair("alice"))
    before = store.dump()
    # the second new record is invalid: nothing revoked, nothing inserted
    with pytest.raises(InvalidInputError, match="salt"):
        store.reissue("alice", [rec("alice", "verify", code=b"new"), rec("alice", "identify", salt=b"bad")])
    assert store.dump() == before
    # the database fails on the second insert, after the revocation: all rolled back
    real_exec, inserts = store._exec, []

    def failing_exec(sql, params=()):
        if sql.startswith("INSERT INTO templates"):
            inserts.append(sql)
            if len(inserts) == 2:
                raise store.DB_ERROR("injected failure on the second insert")
        return real_exec(sql, params)

    store._exec = failing_exec
    with pytest.raises(StoreError, match="injected failure"):
        store.reissue("alice", pair("alice", code=b"new"))
    assert store.dump() == before
    inserts.clear()
    with pytest.raises(StoreError, match="injected failure"):
        store.enroll(pair("bob"))
    assert store.dump() == before
    store._exec = real_exec
    assert {r.code for r in store.active("alice").values()} == {r.code for r in pair("alice")}
    # and the store still works
    store.reissue("alice", pair("alice", code=b"new"))
    assert store.active("alice")["verify"].code == b"new"


def test_corrupt_row_is_detected(backend, store):
    ids = store.enroll(pair("alice"))
    store.enroll(pair("bob"))
    backend.raw("UPDATE templates SET code = ? WHERE template_id = ?", (b"tampered", ids[1]))
    with pytest.raises(StoreError, match=f"template {ids[1]} is corrupt"):
        store.active("alice")
    with pytest.raises(StoreError, match=f"template {ids[1]} is corrupt"):
        store.identify_gallery("arcface-r50/iom-512x16")
    with pytest.raises(StoreError, match=f"template {ids[1]} is corrupt"):
        store.history("alice")
    before = store.dump()
    with pytest.raises(StoreError, match="corrupt"):
        store.revoke("alice")
    assert store.dump() == before
    assert set(store.active("bob")) == {"verify", "identify"}
    # a revoked template re-activated behind the store's back is caught too
    store.revoke("bob")
    backend.raw("UPDATE templates SET revoked_at = NULL WHERE subject_id = 'bob'")
    with pytest.raises(StoreError, match="corrupt"):
        store.active("bob")


def test_store_closed_and_context_manager(backend):
    with backend.open() as s:
        s.enroll(pair("alice"))
    with pytest.raises(StoreError, match="closed"):
        s.active("alice")
    s.close()                                   # idempotent
    with backend.open() as s2:
        assert set(s2.active("alice")) == {"verify", "identify"}


# ---------------------------------------------------------------------------- schema
LATEST = len(MIGRATIONS)                 # the schema version of this code
NEXT = LATEST + 1
V2 = (NEXT, ["CREATE TABLE audit (event_id INTEGER NOT NULL, note TEXT NOT NULL)",
          "INSERT INTO audit (event_id, note) SELECT template_id, subject_id FROM templates"])


def test_schema_migration(backend, monkeypatch):
    s1 = backend.open()
    ids = s1.enroll(pair("alice"))
    assert s1.schema_version() == LATEST
    s1.close()

    class StoreV2(backend.cls):
        migrations = [*MIGRATIONS, V2]

    s2 = backend.open(StoreV2)
    assert s2.schema_version() == NEXT
    assert [r.template_id for r in s2.history("alice")] == ids
    dump = s2.dump()
    assert ("audit", ids[0], "alice") in dump and ("schema_info", NEXT) in dump
    s2.enroll(pair("bob"))
    s2.close()
    # code that only knows the older versions refuses the newer database
    with pytest.raises(StoreError, match=f"schema version {NEXT}, newer than this code supports"):
        backend.open()
    # appending to the module's list is all a real new version takes
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, V2])
    assert backend.open().schema_version() == NEXT


def test_fresh_database_gets_every_migration(backend):
    class StoreV2(backend.cls):
        migrations = [*MIGRATIONS, (NEXT, ["CREATE TABLE extra (x INTEGER)"])]

    s = backend.open(StoreV2)
    assert s.schema_version() == NEXT and s.dump() == [("schema_info", NEXT)]


def test_failed_migration_rolls_back(backend):
    s1 = backend.open()
    s1.enroll(pair("alice"))
    before = s1.dump()
    s1.close()

    class Broken(backend.cls):
        migrations = [*MIGRATIONS, (NEXT, ["CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"])]

    with pytest.raises(StoreError, match=f"migration to schema version {NEXT} failed"):
        backend.open(Broken)
    s = backend.open()
    assert s.schema_version() == LATEST and s.dump() == before


def test_version_2_attempt_log_migrates(backend):
    """A version-2 database (attempts without MACs, ids with gaps) opens, migrates to the
    latest version and keeps counting its attempts; the first attempt written adopts the old
    rows (renumbered in time order, authenticated), after which tampering is detected."""
    class StoreV2(backend.cls):
        migrations = MIGRATIONS[:2]

    old = backend.open(StoreV2)
    old.enroll(pair("alice"))
    old.close()
    for attempt_id, subject, age in ((3, "alice", 5.0), (7, "bob", 3.0), (5, "alice", 4.0)):
        backend.raw("INSERT INTO attempts (attempt_id, subject_id, client, op, outcome, at) "
                    "VALUES (?, ?, 'mallory', 'verify', 'rejected', ?)", (attempt_id, subject, utc_now(age)))
    s = backend.open()
    assert s.schema_version() == LATEST == 3
    assert s.count_attempts("alice", "verify", 60) == 2
    assert [(subj, out) for _, subj, _, _, out in s.attempts()] == [("alice", "rejected")] * 2 + [("bob", "rejected")]
    assert s.reserve_attempt("alice", "mallory", "verify", 60, 3) == 4       # adopts 1..3, then reserves
    assert s.reserve_attempt("alice", "mallory", "verify", 60, 3) is None
    rows = backend.raw("SELECT attempt_id, subject_id, mac FROM attempts ORDER BY attempt_id")
    assert [r[:2] for r in rows] == [(1, "alice"), (2, "alice"), (3, "bob"), (4, "alice")]
    assert all(len(bytes(r[2])) == 32 for r in rows)
    backend.raw("DELETE FROM attempts WHERE attempt_id = 1")
    with pytest.raises(StoreError, match="deleted or inserted"):
        s.count_attempts("alice", "verify", 60)


def test_migration_list_must_be_ordered(backend):
    class Bad(backend.cls):
        migrations = [(2, ["SELECT 1"])]

    with pytest.raises(StoreError, match="migration versions"):
        backend.open(Bad)


def test_schema_matches_spec(backend, store):
    if backend.name == "sqlite":
        cols = [r[1] for r in backend.raw("PRAGMA table_info(templates)")]
        index_sql = backend.raw("SELECT sql FROM sqlite_master WHERE name = 'templates_one_active'")[0][0]
    else:
        cols = [r[0] for r in backend.raw(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'templates' "
            "AND table_schema = current_schema() "
            "ORDER BY ordinal_position")]
        index_sql = backend.raw("SELECT indexdef FROM pg_indexes WHERE indexname = 'templates_one_active' "
                             "AND schemaname = current_schema()")[0][0]
    assert cols == [*store_mod.COLUMNS, "checksum"]
    assert "UNIQUE" in index_sql.upper() and "revoked_at IS NULL" in index_sql
    # the index itself refuses a second active template, whatever the code does
    store.enroll([rec("alice")])
    row = backend.raw("SELECT subject_id, purpose, code, salt, key_version, model_id, m, q, n_photos, "
                      "created_at, checksum FROM templates")[0]
    with pytest.raises(Exception, match="(?i)unique"):
        backend.raw("INSERT INTO templates (subject_id, purpose, code, salt, key_version, model_id, m, q, "
                    "n_photos, created_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)


# ---------------------------------------------------------------------------- opening
def test_sqlite_foreign_file(tmp_path):
    foreign = tmp_path / "photo.db"
    content = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
    foreign.write_bytes(content)
    with pytest.raises(StoreError, match=str(foreign)):
        SQLiteStore(foreign)
    assert foreign.read_bytes() == content
    with pytest.raises(StoreError, match="folder"):
        SQLiteStore(tmp_path)
    # an SQLite file of some other application
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE templates (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="migration to schema version 1 failed"):
        SQLiteStore(other)


def test_sqlite_settings(tmp_path):
    path = tmp_path / "a" / "b" / "t.db"
    s = SQLiteStore(path)
    assert path.exists()
    assert s._exec("PRAGMA journal_mode") == [("wal",)]
    assert s._exec("PRAGMA synchronous") == [(2,)]          # FULL
    assert s._exec("PRAGMA busy_timeout")[0][0] >= 1000
    assert s._conn.isolation_level is None


def test_open_store_urls(tmp_path, monkeypatch):
    s = open_store(f"sqlite:///{tmp_path}/u.db")               # sqlite:////abs/path
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "u.db"
    monkeypatch.chdir(tmp_path)
    assert open_store("sqlite:///rel.db").path == Path("rel.db")
    assert isinstance(open_store(tmp_path / "p.db"), SQLiteStore)
    assert isinstance(open_store(str(tmp_path / "q.db")), SQLiteStore)
    for bad in ("mysql://x/y", "", "sqlite://", None):
        with pytest.raises(InvalidInputError):
            open_store(bad)


def test_postgres_url_and_bad_connection(pg_dsn):
    import psycopg

    from iom.store.postgres import PostgresStore

    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with fresh_database(pg_dsn) as dsn:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with open_store(f"postgresql://postgres@{info['host']}:{info['port']}/{name}") as s:
            assert isinstance(s, PostgresStore) and s.schema_version() == LATEST
            s.enroll(pair("alice"))
            assert "postgres@" not in repr(s)
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as info:
        PostgresStore(f"postgresql://postgres:secret-pw@127.0.0.1:{port}/x", connect_timeout=2)
    assert "secret-pw" not in str(info.value)


# ---------------------------------------------------------------------------- concurrency
def _race(backend, n_threads, fn):
    """Run fn(store, i) in n_threads threads, each with its own connection, started together."""
    stores = [backend.open() for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)
    results: list = [None] * n_threads

    def work(i):
        barrier.wait()
        try:
            results[i] = fn(stores[i], i)
        except Exception as e:          # noqa: BLE001 - collected for the assertions
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_enroll_same_subject(backend):
    for k in range(4):
        subject = f"racer{k}"
        results = _race(backend, 2, lambda s, i: s.enroll(pair(subject, code=f"c{i}".encode())))
        wins = [r for r in results if isinstance(r, list)]
        dups = [r for r in results if isinstance(r, DuplicateEnrollmentError)]
        assert len(wins) == 1 and len(dups) == 1, results
    s = backend.open()
    check_invariants(s)
    assert s.subjects() == [f"racer{k}" for k in range(4)]


def test_concurrent_reissue_and_revoke(backend):
    s = backend.open()
    s.enroll(pair("alice"))
    results = _race(backend, 3, lambda st, i: st.reissue("alice", pair("alice", code=f"r{i}".encode())))
    assert all(isinstance(r, list) for r in results), results     # one after the other
    assert len(s.history("alice")) == 2 * 4
    check_invariants(s)
    results = _race(backend, 3, lambda st, i: st.revoke("alice"))
    assert sorted(type(r).__name__ for r in results) == ["RevokedTemplateError"] * 2 + ["int"]
    check_invariants(s)


def test_concurrent_open_of_fresh_database(backend):
    """Servers starting together on an empty database create the schema exactly once."""
    barrier, results = threading.Barrier(4), []

    def work(i):
        barrier.wait()
        try:
            st = backend.open()
            st.enroll([rec(f"s{i}")])
            results.append(st.schema_version())
        except Exception as e:          # noqa: BLE001
            results.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [LATEST] * 4
    assert backend.open().subjects() == ["s0", "s1", "s2", "s3"]
    assert [r for r in backend.open().dump() if r[0] == "schema_info"] == [("schema_info", LATEST)]


def check_invariants(s: TemplateStore) -> Counter:
    """Every row passes its checksum; at most one active template per (subject, purpose)."""
    active = Counter()
    for subject in s.subjects(include_revoked=True):
        for r in s.history(subject):                 # verifies every checksum
            if r.revoked_at is None:
                active[(r.subject_id, r.purpose)] += 1
    assert all(n == 1 for n in active.values()), active
    return active


WORKER = textwrap.dedent("""
    import os, random, sys, time
    sys.path.insert(0, {repo!r})
    from iom.errors import DuplicateEnrollmentError, UnknownSubjectError
    from iom.store.sqlite import SQLiteStore
    from iom.store.records import TemplateRecord

    def pair(subject, tag):
        return [TemplateRecord(subject, p, (tag + p).encode() * {code_repeat}, bytes(16), 1, "m", 512, 16, 1)
                for p in ("verify", "identify")]

    s = SQLiteStore({path!r})
    # a one-byte marker file: "T" while a write transaction is open, "-" otherwise
    marker = os.open({marker!r}, os.O_RDWR | os.O_CREAT)
    begin, commit, rollback = s._begin, s._commit, s._rollback
    def traced_begin(write, keys):
        begin(write, keys)
        if write:
            os.pwrite(marker, b"T", 0)
    def traced_end(end):
        def run():
            end()
            os.pwrite(marker, b"-", 0)
        return run
    s._begin, s._commit, s._rollback = traced_begin, traced_end(commit), traced_end(rollback)

    rng = random.Random({seed})
    counts = dict(ok=0, dup=0, unknown=0, t0=time.time())
    i = 0
    while {forever} or i < {n_ops}:
        i += 1
        subject = f"s{{rng.randrange({n_subjects})}}"
        op = rng.choice(["enroll", "enroll", "active", "revoke", "reissue"])
        try:
            if op == "enroll":
                s.enroll(pair(subject, f"{seed}-{{i}}"))
            elif op == "active":
                s.active(subject)
            elif op == "revoke":
                s.revoke(subject)
            else:
                s.reissue(subject, pair(subject, f"{seed}-{{i}}r"))
            counts["ok"] += 1
        except DuplicateEnrollmentError:
            counts["dup"] += 1
        except UnknownSubjectError:
            counts["unknown"] += 1
        if i == 1:
            print("started", flush=True)
    counts["t1"] = time.time()
    print(counts, flush=True)
""")


def _worker(path, seed, n_ops=0, forever=False, n_subjects=8, code_repeat=4):
    code = WORKER.format(repo=str(REPO), path=str(path), marker=f"{path}.{seed}.marker", seed=seed,
                         n_ops=n_ops, forever=forever, n_subjects=n_subjects, code_repeat=code_repeat)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sqlite_four_processes(tmp_path):
    """4 processes enroll, read, revoke and reissue on one file at once: nothing fails,
    every row is whole, no subject ever has two active templates of one purpose."""
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    procs = [_worker(path, seed, n_ops=300) for seed in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    counts = [eval(out.strip().splitlines()[-1]) for out, _ in outs]    # noqa: S307
    assert sum(c["ok"] for c in counts) > 300 and sum(c["dup"] for c in counts) > 0, counts
    assert max(c["t0"] for c in counts) < min(c["t1"] for c in counts), "the 4 workers never overlapped"
    s = SQLiteStore(path)
    assert s._exec("PRAGMA integrity_check") == [("ok",)]
    check_invariants(s)


def test_sqlite_sigkill_mid_enrollment(tmp_path):
    """A writer killed with SIGKILL inside a write transaction leaves a consistent store:
    every row passes its checksum, no half-written enrollment, no two active templates of
    one purpose, and the next writer does not wait on a stale lock."""
    path = tmp_path / "crash.db"
    SQLiteStore(path).close()
    mid_transaction = 0
    for seed in range(8):
        # big codes (2 x ~40 KB, synchronous=FULL) keep the worker inside transactions
        proc = _worker(path, seed, forever=True, n_subjects=30, code_repeat=3000)
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        time.sleep(0.1 + 0.05 * seed)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        mid_transaction += Path(f"{path}.{seed}.marker").read_bytes() == b"T"
        if mid_transaction >= 2 and seed >= 2:
            break
    assert mid_transaction >= 1, "no kill landed inside a write transaction"
    s = SQLiteStore(path)
    assert s._exec("PRAGMA integrity_check") == [("ok",)]
    active = check_invariants(s)
    assert len(active) > 0
    rows = [r for r in s.dump() if r[0] == "templates"]
    for row in rows:
        code, revoked_at = row[4], row[12]
        # whole enrollments: each subject's active codes come from one and the same call
        assert len(code) > 0 and len(row[-1]) == 32
    by_subject: dict = {}
    for row in rows:
        if row[12] is None:
            by_subject.setdefault(row[2], set()).add(row[4][: row[4].index(b"verify" if row[3] == "verify"
                                                                          else b"identify")])
    assert all(len(tags) == 1 for tags in by_subject.values()), by_subject
    assert all(len([r for r in rows if r[2] == subj and r[12] is None]) == 2 for subj in by_subject)
    # and the store takes writes again right away (no stale lock)
    t0 = time.monotonic()
    s.enroll(pair("after-crash"))
    assert time.monotonic() - t0 < 5


def test_sqlite_file_holds_only_given_fields(tmp_path):
    """The raw database bytes contain the code and salt, and no token or secret that went
    into making them (the store never receives them)."""
    user_token, app_secret = os.urandom(32), os.urandom(32)
    code, salt = b"\xc0\xde" + os.urandom(190), os.urandom(16)
    path = tmp_path / "raw.db"
    with SQLiteStore(path) as s:
        tid, = s.enroll([rec("alice", code=code, salt=salt)])
        dump = s.dump()
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("raw.db"))
    assert code in raw and salt in raw
    assert user_token not in raw and app_secret not in raw
    assert user_token.hex().encode() not in raw and app_secret.hex().encode() not in raw
    # the rows hold exactly the record's fields, the id, a timestamp and the checksum
    (row,) = [r for r in dump if r[0] == "templates"]
    given = rec("alice", code=code, salt=salt)
    assert row[1:] == (tid, "alice", "verify", code, salt, 1, given.model_id, 512, 16, 3, row[11], None,
                       row[13])
    assert len(row[13]) == 32
    # and the event log entry of the enrolment (no attempts were made)
    assert {r[0] for r in dump} == {"templates", "schema_info", "events"}
    (event,) = [r[1:] for r in dump if r[0] == "events"]
    assert event[:5] == (1, "alice", "enroll", "", str(tid)) and event[5] >= row[11] and len(event[6]) == 32
