"""Template store: protected templates (packed IoM codes) in a real database.

The store keeps only what a protected template is: the packed code, the 16-byte salt its
key was derived with, the key version, the model identifier, the code shape ``(m, q)``,
the number of photos fused, timestamps and a checksum. It never sees raw features,
photos, user tokens or the application secret: :class:`TemplateRecord` has no field for
them.

Two back ends behind one interface, :class:`TemplateStore`:

* :class:`~iom.service.sqlite_store.SQLiteStore` (default): one file, WAL journal,
  ``synchronous=FULL``, writers serialised by ``BEGIN IMMEDIATE`` with a busy timeout, so
  several processes may share a file; a process killed mid-write leaves no trace.
* :class:`~iom.service.postgres_store.PostgresStore`: for deployments with several
  application servers; writers of one subject serialised by a transaction-scoped advisory
  lock.

:func:`open_store` picks one from a URL (``sqlite:///path``, a plain path, or
``postgresql://...``).

Every operation is one transaction: it happens completely or not at all, and every error
bad input can trigger (:mod:`iom.service.errors`) leaves the store unchanged.

Schema (version 1)::

    schema_info(version INTEGER NOT NULL)                        -- one row
    templates(template_id  INTEGER PRIMARY KEY / BIGSERIAL,
              subject_id TEXT, purpose TEXT, code BLOB/BYTEA, salt BLOB/BYTEA,
              key_version INTEGER, model_id TEXT, m INTEGER, q INTEGER, n_photos INTEGER,
              created_at TEXT, revoked_at TEXT NULL, checksum BLOB/BYTEA)   -- all NOT NULL
                                                                            -- but revoked_at
    UNIQUE INDEX templates_one_active ON templates(subject_id, purpose) WHERE revoked_at IS NULL

The partial unique index is what makes two active templates of one purpose for one subject
impossible, even under concurrency. Timestamps are UTC ISO-8601 strings
(``2025-01-31T12:00:00.000000+00:00``). ``checksum`` is SHA-256 over a canonical,
length-prefixed encoding of every other column (:func:`record_checksum`); it is recomputed
on revocation and verified whenever a template is read (a mismatch is a
:class:`~iom.service.errors.StoreError` naming the template id).

Migrations: :data:`MIGRATIONS` is an ordered list ``[(version, [sql, ...]), ...]``; opening
an older database applies the missing ones, each in its own transaction together with the
update of ``schema_info``; a database newer than the code is refused. A new version is
added by appending to the list (SQL may use ``{blob}`` and ``{id_pk}``, which each back end
fills in for its dialect).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar

from iom.service.errors import (DuplicateEnrollmentError, InvalidInputError, RevokedTemplateError,
                                StoreError, UnknownSubjectError)

#: purposes a template may have: "verify" (under the user's key), "identify" (application key)
PURPOSES = ("verify", "identify")
SALT_BYTES = 16
MAX_CODE_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_INT = 2**31 - 1          # INTEGER columns are 32-bit in PostgreSQL

#: ordered schema migrations: (version, statements); version k brings the schema to k
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE templates (
            template_id {id_pk},
            subject_id TEXT NOT NULL,
            purpose TEXT NOT NULL,
            code {blob} NOT NULL,
            salt {blob} NOT NULL,
            key_version INTEGER NOT NULL,
            model_id TEXT NOT NULL,
            m INTEGER NOT NULL,
            q INTEGER NOT NULL,
            n_photos INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT,
            checksum {blob} NOT NULL)""",
        "CREATE UNIQUE INDEX templates_one_active ON templates (subject_id, purpose) "
        "WHERE revoked_at IS NULL",
        "CREATE INDEX templates_by_subject ON templates (subject_id, template_id)",
        "CREATE INDEX templates_identify ON templates (model_id, template_id) "
        "WHERE revoked_at IS NULL AND purpose = 'identify'",
    ]),
]

# columns of a template row, in the order SELECTs return them and the checksum covers them
COLUMNS = ("template_id", "subject_id", "purpose", "code", "salt", "key_version", "model_id",
           "m", "q", "n_photos", "created_at", "revoked_at")
_SELECT = f"SELECT {', '.join(COLUMNS)}, checksum FROM templates"
_INSERT = ("INSERT INTO templates (subject_id, purpose, code, salt, key_version, model_id, m, q, "
           "n_photos, created_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING template_id")
_CHECKSUM_DOMAIN = b"iomface.template.v1\x00"


@dataclass(frozen=True)
class TemplateRecord:
    """One protected template.

    ``purpose`` is ``"verify"`` (code under the user's key) or ``"identify"`` (code under
    the application key). ``code`` is the packed code (opaque to the store, at most 64 KiB);
    ``salt`` the 16 bytes the key was derived with. ``template_id``, ``created_at`` and
    ``revoked_at`` are assigned by the store (ignored when writing, set when read back).
    """

    subject_id: str
    purpose: str
    code: bytes
    salt: bytes
    key_version: int
    model_id: str
    m: int
    q: int
    n_photos: int
    template_id: int | None = None
    created_at: str | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


# ---------------------------------------------------------------------------- validation
def _check_text(value: Any, field: str, what: str = "") -> str:
    label = f"{field}{what}"
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{label} must be a non-empty string, got {value!r:.80}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInputError(f"{label} is longer than {MAX_ID_CHARS} characters")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise InvalidInputError(f"{label} {value!r:.80} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{label} {value!r:.80} is not valid Unicode text") from None
    return value


def check_subject_id(subject_id: Any) -> str:
    """``subject_id`` if it is a valid subject id, else :class:`InvalidInputError`."""
    return _check_text(subject_id, "subject_id")


def _check_int(value: Any, field: str, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInputError(f"{field}{what} must be an integer in [{lo}, {hi}], got {value!r:.80}")
    return int(value)


def _check_bytes(value: Any, field: str, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"{field}{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def validate_record(record: Any) -> TemplateRecord:
    """The record, normalised (bytes-like fields as ``bytes``; store-assigned fields
    cleared), or :class:`InvalidInputError` naming the bad field."""
    if not isinstance(record, TemplateRecord):
        raise InvalidInputError(f"expected a TemplateRecord, got {type(record).__name__}")
    subject_id = _check_text(record.subject_id, "subject_id")
    what = f" of subject {subject_id!r}"
    if record.purpose not in PURPOSES:
        raise InvalidInputError(f"purpose{what} must be one of {PURPOSES}, got {record.purpose!r:.80}")
    code = _check_bytes(record.code, "code", what)
    if not 0 < len(code) <= MAX_CODE_BYTES:
        raise InvalidInputError(f"code{what} must be 1 to {MAX_CODE_BYTES} bytes, got {len(code)}")
    salt = _check_bytes(record.salt, "salt", what)
    if len(salt) != SALT_BYTES:
        raise InvalidInputError(f"salt{what} must be exactly {SALT_BYTES} bytes, got {len(salt)}")
    return TemplateRecord(
        subject_id=subject_id, purpose=record.purpose, code=code, salt=salt,
        key_version=_check_int(record.key_version, "key_version", 1, MAX_INT, what),
        model_id=_check_text(record.model_id, "model_id", what),
        m=_check_int(record.m, "m", 1, MAX_INT, what),
        q=_check_int(record.q, "q", 2, 256, what),
        n_photos=_check_int(record.n_photos, "n_photos", 1, MAX_INT, what))


def _validate_batch(records: Any, subject_id: str | None = None) -> list[TemplateRecord]:
    """Validated records of one subject with distinct purposes."""
    if isinstance(records, TemplateRecord) or not isinstance(records, Sequence) or not records:
        raise InvalidInputError("records must be a non-empty list of TemplateRecord")
    out = [validate_record(r) for r in records]
    subjects = {r.subject_id for r in out}
    if len(subjects) != 1:
        raise InvalidInputError(f"records of one call must share one subject_id, got {sorted(subjects)}")
    if subject_id is not None and out[0].subject_id != subject_id:
        raise InvalidInputError(f"records are of subject {out[0].subject_id!r}, not {subject_id!r}")
    purposes = [r.purpose for r in out]
    if len(set(purposes)) != len(purposes):
        raise InvalidInputError(f"records of subject {out[0].subject_id!r} repeat a purpose: {purposes}")
    return out


# ---------------------------------------------------------------------------- checksum
def _encode_field(value: Any) -> bytes:
    if value is None:
        tag, data = b"N", b""
    elif isinstance(value, bool):
        raise TypeError("bool is not a column type")
    elif isinstance(value, int):
        tag, data = b"I", str(value).encode("ascii")
    elif isinstance(value, str):
        tag, data = b"S", value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        tag, data = b"B", bytes(value)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")
    return tag + len(data).to_bytes(8, "big") + data


def record_checksum(record: TemplateRecord) -> bytes:
    """SHA-256 over the canonical encoding of every column of the row (:data:`COLUMNS`, in
    that order; each value typed and length-prefixed), template id and revocation included."""
    h = hashlib.sha256(_CHECKSUM_DOMAIN)
    h.update(len(COLUMNS).to_bytes(4, "big"))
    for name in COLUMNS:
        h.update(_encode_field(name))
        h.update(_encode_field(getattr(record, name)))
    return h.digest()


def utc_now() -> str:
    """The current UTC time, ISO-8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _record_from_row(row: Sequence[Any]) -> TemplateRecord:
    """A record from a ``_SELECT`` row, after checking its checksum."""
    values = [bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in row]
    record = TemplateRecord(**dict(zip(COLUMNS, values[:-1])))
    try:
        ok = record_checksum(record) == values[-1]
    except TypeError:
        ok = False
    if not ok:
        raise StoreError(f"template {record.template_id} is corrupt (checksum mismatch)")
    return record


def _sort_key(row: Sequence[Any]) -> tuple:
    return tuple((0, b"") if v is None else (1, v) for v in row)


# ---------------------------------------------------------------------------- the store
class TemplateStore(abc.ABC):
    """Protected templates in a database; one transaction an operation.

    A store object holds one connection and may be shared by threads (operations are
    serialised by a lock); processes and servers each open their own.
    """

    #: migrations this class applies; ``None`` means the module's :data:`MIGRATIONS`
    migrations: ClassVar[Sequence[tuple[int, Sequence[str]]] | None] = None
    #: DDL words that differ between dialects ({blob}, {id_pk})
    DDL: ClassVar[dict[str, str]] = {}
    #: the driver's base exception class
    DB_ERROR: ClassVar[type[BaseException]] = Exception

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False

    # ------------------------------------------------------------ back-end hooks
    @abc.abstractmethod
    def _begin(self, write: bool, lock_keys: Sequence[str]) -> None:
        """Start a transaction; for writes, also take whatever locks serialise writers of
        the subjects in ``lock_keys`` (strings)."""

    @abc.abstractmethod
    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement (``?`` placeholders); its result rows, ``[]`` if none."""

    @abc.abstractmethod
    def _table_names(self) -> list[str]:
        """The store's tables (inside a transaction)."""

    @abc.abstractmethod
    def _is_unique_violation(self, exc: BaseException) -> bool:
        """Whether a driver error is a violated unique constraint."""

    @abc.abstractmethod
    def _close_connection(self) -> None:
        """Close the connection."""

    @abc.abstractmethod
    def location(self) -> str:
        """Where the store lives (for messages; no passwords)."""

    def _commit(self) -> None:
        self._exec("COMMIT")

    def _rollback(self) -> None:
        self._exec("ROLLBACK")

    def _open(self, configure: Callable[[], None], errors: type[BaseException] | tuple,
               failure: str) -> None:
        """Configure the fresh connection and migrate the schema; on any failure close the
        connection first, driver ``errors`` becoming :class:`StoreError` ``"<failure>: …"``."""
        try:
            configure()
            self._migrate()
        except errors as e:
            self._abandon()
            raise StoreError(f"{failure}: {e}") from e
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        self._conn.close()
        self._closed = True

    # ------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def _transaction(self, write: bool, lock_keys: Sequence[str] = ()) -> Iterator[None]:
        """One transaction: committed if the block completes, rolled back on any exception;
        driver errors become :class:`StoreError`."""
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.location()} is closed")
            try:
                self._begin(write, lock_keys)
            except self.DB_ERROR as e:
                self._try_rollback()
                raise StoreError(f"{self.location()}: cannot start a transaction: {e}") from e
            try:
                yield
            except BaseException as exc:
                self._try_rollback()
                if isinstance(exc, self.DB_ERROR):
                    raise StoreError(f"{self.location()}: {exc}") from exc
                raise
            try:
                self._commit()
            except self.DB_ERROR as e:
                self._try_rollback()
                raise StoreError(f"{self.location()}: commit failed: {e}") from e

    def _try_rollback(self) -> None:
        try:
            self._rollback()
        except self.DB_ERROR:
            pass

    # ------------------------------------------------------------ migrations
    def _migrations(self) -> list[tuple[int, Sequence[str]]]:
        migrations = list(MIGRATIONS if self.migrations is None else self.migrations)
        versions = [v for v, _ in migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise StoreError(f"migration versions must be 1, 2, ... in order, got {versions}")
        return migrations

    def _read_version(self) -> int | None:
        """The schema version inside a transaction (``None``: no schema_info table)."""
        if "schema_info" not in self._table_names():
            return None
        rows = self._exec("SELECT version FROM schema_info")
        if len(rows) > 1:
            raise StoreError(f"{self.location()}: schema_info has {len(rows)} rows")
        return int(rows[0][0]) if rows else 0

    def _check_version(self, version: int, latest: int) -> None:
        if version > latest:
            raise StoreError(f"{self.location()} has schema version {version}, newer than this code "
                             f"supports ({latest}); upgrade iomface")

    def _migrate(self) -> None:
        """Bring the schema to the latest version, one transaction a migration."""
        migrations = self._migrations()
        latest = len(migrations)
        with self._transaction(write=False):
            version = self._read_version()
        if version is not None:
            self._check_version(version, latest)
            if version == latest:
                return
        while True:
            with self._transaction(write=True, lock_keys=["\x00schema"]):
                self._exec("CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL)")
                version = self._read_version() or 0
                self._check_version(version, latest)
                if version == latest:
                    if not self._exec("SELECT version FROM schema_info"):
                        self._exec("INSERT INTO schema_info (version) VALUES (?)", (version,))
                    return
                target, statements = migrations[version]
                try:
                    for sql in statements:
                        self._exec(sql.format(**self.DDL))
                except self.DB_ERROR as e:
                    raise StoreError(f"{self.location()}: migration to schema version {target} "
                                     f"failed: {e}") from e
                self._exec("DELETE FROM schema_info")
                self._exec("INSERT INTO schema_info (version) VALUES (?)", (target,))

    # ------------------------------------------------------------ internals
    def _active_rows(self, subject_id: str) -> list[TemplateRecord]:
        rows = self._exec(f"{_SELECT} WHERE subject_id = ? AND revoked_at IS NULL ORDER BY template_id",
                          (subject_id,))
        return [_record_from_row(r) for r in rows]

    def _no_active(self, subject_id: str) -> UnknownSubjectError:
        """The error for a subject without active templates: revoked, or never enrolled."""
        rows = self._exec("SELECT COUNT(*), MAX(revoked_at) FROM templates WHERE subject_id = ?",
                          (subject_id,))
        count, last = rows[0]
        if count:
            return RevokedTemplateError(f"subject {subject_id!r} has no active template: its {count} "
                                        f"template(s) were revoked (last at {last})", subject_id)
        return UnknownSubjectError(f"subject {subject_id!r} was never enrolled", subject_id)

    def _insert(self, records: list[TemplateRecord]) -> list[int]:
        """Insert validated records (inside a write transaction); their ids."""
        now, ids = utc_now(), []
        for rec in records:
            try:
                (tid,), = self._exec(_INSERT, (rec.subject_id, rec.purpose, rec.code, rec.salt,
                                               rec.key_version, rec.model_id, rec.m, rec.q, rec.n_photos,
                                               now, b""))
            except self.DB_ERROR as e:
                if self._is_unique_violation(e):
                    raise DuplicateEnrollmentError(
                        f"subject {rec.subject_id!r} already has an active {rec.purpose!r} template",
                        rec.subject_id) from None
                raise
            stored = dataclasses.replace(rec, template_id=int(tid), created_at=now)
            self._exec("UPDATE templates SET checksum = ? WHERE template_id = ?",
                       (record_checksum(stored), int(tid)))
            ids.append(int(tid))
        return ids

    def _revoke_rows(self, rows: list[TemplateRecord]) -> None:
        now = utc_now()
        for rec in rows:
            revoked = dataclasses.replace(rec, revoked_at=now)
            self._exec("UPDATE templates SET revoked_at = ?, checksum = ? "
                       "WHERE template_id = ? AND revoked_at IS NULL",
                       (now, record_checksum(revoked), rec.template_id))

    # ------------------------------------------------------------ operations
    def enroll(self, records: Sequence[TemplateRecord]) -> list[int]:
        """Store the templates of one subject (e.g. a verify and an identify template);
        their ids. :class:`DuplicateEnrollmentError` if the subject already has an active
        template of any of these purposes; nothing is written on any error."""
        records = _validate_batch(records)
        subject_id = records[0].subject_id
        with self._transaction(write=True, lock_keys=[subject_id]):
            taken = sorted({r.purpose for r in self._active_rows(subject_id)}
                           & {r.purpose for r in records})
            if taken:
                raise DuplicateEnrollmentError(
                    f"subject {subject_id!r} already has an active {' and '.join(map(repr, taken))} "
                    f"template (revoke or reissue it instead)", subject_id)
            return self._insert(records)

    def active(self, subject_id: str) -> dict[str, TemplateRecord]:
        """The subject's active templates, purpose → record. :class:`UnknownSubjectError`
        (:class:`RevokedTemplateError` if they were revoked) when there is none."""
        subject_id = check_subject_id(subject_id)
        with self._transaction(write=False):
            rows = self._active_rows(subject_id)
            if not rows:
                raise self._no_active(subject_id)
        return {r.purpose: r for r in rows}

    def revoke(self, subject_id: str) -> int:
        """Mark every active template of the subject revoked; how many.
        :class:`UnknownSubjectError` if it has none."""
        subject_id = check_subject_id(subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            rows = self._active_rows(subject_id)
            if not rows:
                raise self._no_active(subject_id)
            self._revoke_rows(rows)
        return len(rows)

    def reissue(self, subject_id: str, records: Sequence[TemplateRecord]) -> list[int]:
        """Revoke the subject's active templates and store ``records`` in their place, in one
        transaction; the new ids. :class:`UnknownSubjectError` if it has no active template."""
        subject_id = check_subject_id(subject_id)
        records = _validate_batch(records, subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            rows = self._active_rows(subject_id)
            if not rows:
                raise self._no_active(subject_id)
            self._revoke_rows(rows)
            return self._insert(records)

    def subjects(self, include_revoked: bool = False) -> list[str]:
        """Subjects with an active template (or with any template), sorted."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._transaction(write=False):
            rows = self._exec(f"SELECT DISTINCT subject_id FROM templates{where}")
        return sorted(r[0] for r in rows)

    def history(self, subject_id: str) -> list[TemplateRecord]:
        """Every template of the subject, revoked ones included, oldest first.
        :class:`UnknownSubjectError` if it was never enrolled."""
        subject_id = check_subject_id(subject_id)
        with self._transaction(write=False):
            rows = self._exec(f"{_SELECT} WHERE subject_id = ? ORDER BY template_id", (subject_id,))
        if not rows:
            raise UnknownSubjectError(f"subject {subject_id!r} was never enrolled", subject_id)
        return [_record_from_row(r) for r in rows]

    def identify_gallery(self, model_id: str) -> tuple[list[int], list[str], list[bytes]]:
        """Template ids, subject ids and codes of the active "identify" templates of
        ``model_id``, ordered by template id (every row's checksum is verified)."""
        model_id = _check_text(model_id, "model_id")
        with self._transaction(write=False):
            rows = self._exec(f"{_SELECT} WHERE model_id = ? AND purpose = 'identify' "
                              "AND revoked_at IS NULL ORDER BY template_id", (model_id,))
        records = [_record_from_row(r) for r in rows]
        return ([r.template_id for r in records], [r.subject_id for r in records],
                [r.code for r in records])

    def schema_version(self) -> int:
        """The database's schema version."""
        with self._transaction(write=False):
            version = self._read_version()
        return version or 0

    def dump(self) -> list[tuple]:
        """Every row of every table as ``(table, *values)``, sorted (for comparing contents)."""
        out: list[tuple] = []
        with self._transaction(write=False):
            for table in sorted(self._table_names()):
                rows = self._exec(f'SELECT * FROM "{table}"')
                norm = [tuple(bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in r)
                        for r in rows]
                out.extend((table, *r) for r in sorted(norm, key=_sort_key))
        return out

    def close(self) -> None:
        """Close the connection (idempotent); later operations raise :class:`StoreError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._close_connection()
                except self.DB_ERROR:
                    pass

    def __enter__(self) -> "TemplateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location()!r})"


def open_store(url: str | Path, **kwargs: Any) -> TemplateStore:
    """A store from a URL: ``postgresql://...`` (or ``postgres://``) → PostgresStore;
    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path → SQLiteStore."""
    if isinstance(url, Path):
        url = str(url)
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"store URL must be a non-empty string or path, got {url!r:.80}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        from iom.service.postgres_store import PostgresStore

        return PostgresStore(url, **kwargs)
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise InvalidInputError(f"SQLite URL must be sqlite:///path, got {url!r}")
        path = path[1:]
    elif scheme:
        raise InvalidInputError(f"unsupported store URL scheme {scheme!r} (use sqlite:/// or postgresql://)")
    else:
        path = url
    from iom.service.sqlite_store import SQLiteStore

    return SQLiteStore(path, **kwargs)
