"""Template store: protected templates (packed IoM codes) in a real database.

The store keeps only what a protected template is: the packed code, the 16-byte salt its
key was derived with, the key version, the model identifier, the code shape ``(m, q)``,
the number of photos fused, timestamps and a checksum. It never sees raw features,
photos, user tokens or the application secret: :class:`TemplateRecord` has no field for
them.

Two back ends behind one interface, :class:`TemplateStore`:

* :class:`~iom.store.sqlite.SQLiteStore` (default): one file, WAL journal,
  ``synchronous=FULL``, writers serialised by ``BEGIN IMMEDIATE`` with a busy timeout, so
  several processes may share a file; a process killed mid-write leaves no trace.
* :class:`~iom.store.postgres.PostgresStore`: for deployments with several
  application servers; writers serialised by transaction-scoped advisory locks (one per
  subject, and one for the event log, which needs a single order of changes).

:func:`iom.store.factory.open_store` picks one from a URL (``sqlite:///path``, a plain
path, or ``postgresql://...``).

Every operation is one transaction: it happens completely or not at all, and every error
bad input can trigger (:mod:`iom.errors`) leaves the store unchanged.

Authentication. Every template row carries a checksum, an HMAC under the key given to
:meth:`TemplateStore.authenticate` (:func:`~iom.store.records.record_checksum`); it is
recomputed on revocation and verified whenever a template is read (a mismatch is a
:class:`~iom.errors.StoreError` naming the template id). Every change is an entry of the
HMAC-chained event log, verified at each transaction (:mod:`iom.store.events`); failed
attempts and reservations live in the authenticated attempt log (:mod:`iom.store.attempts`).

This module holds the contract, :class:`TemplateStore` (transactions, the back-end hooks and
the template operations with their shared SQL); the rest of it lives in
:mod:`iom.store.records` (:class:`TemplateRecord`, field and subject-id checks, checksums,
timestamps), :mod:`iom.store.schema` (tables, :data:`MIGRATIONS`, the migration methods),
:mod:`iom.store.events` (the event log, the witness, settings) and :mod:`iom.store.attempts`
(the attempt log and the failure lock), whose public names are re-exported here.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hmac
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, ClassVar

from iom.errors import (ConflictError, DuplicateEnrollmentError, InvalidInputError,
                        RevokedTemplateError, StoreError, UnknownSubjectError)
from iom.store.attempts import (ATTEMPT_MARK, ATTEMPT_RETENTION_S, DEVICE_ATTEMPTS, NOT_FAILURES, PENDING,
                                RESOLUTIONS, Attempt, AttemptLogMixin, AttemptMark, attempt_mac,
                                attempt_subject)
from iom.store.events import EVENT_OPS, Event, EventLogMixin, event_mac
from iom.store.records import (MAX_CODE_BYTES, MAX_ID_CHARS, MAX_INT, PUBLIC_ROW_KEY, PURPOSES, SALT_BYTES,
                               SUBJECT_ID_PUNCTUATION, TemplateRecord, _check_text, _validate_batch,
                               check_subject_id, record_checksum, utc_now, validate_record)
from iom.store.schema import ATTEMPT_COLUMNS, COLUMNS, MIGRATIONS, SchemaMixin

__all__ = [
    # the contract
    "TemplateStore",
    # records (iom.store.records)
    "PURPOSES", "SALT_BYTES", "MAX_CODE_BYTES", "MAX_ID_CHARS", "MAX_INT", "PUBLIC_ROW_KEY",
    "SUBJECT_ID_PUNCTUATION", "TemplateRecord", "check_subject_id", "validate_record",
    "record_checksum", "utc_now",
    # the schema (iom.store.schema)
    "MIGRATIONS", "COLUMNS", "ATTEMPT_COLUMNS",
    # the event log (iom.store.events)
    "EVENT_OPS", "Event", "event_mac",
    # the attempt log (iom.store.attempts)
    "ATTEMPT_RETENTION_S", "ATTEMPT_MARK", "PENDING", "RESOLUTIONS", "NOT_FAILURES",
    "DEVICE_ATTEMPTS", "attempt_subject", "Attempt", "attempt_mac", "AttemptMark",
]

_SELECT = f"SELECT {', '.join(COLUMNS)}, checksum FROM templates"
_INSERT = ("INSERT INTO templates (subject_id, purpose, code, salt, key_version, model_id, m, q, "
           "n_photos, created_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING template_id")


def _sort_key(row: Sequence[Any]) -> tuple:
    return tuple((0, b"") if v is None else (1, v) for v in row)


# ---------------------------------------------------------------------------- the store
class TemplateStore(SchemaMixin, EventLogMixin, AttemptLogMixin, abc.ABC):
    """Protected templates in a database; one transaction an operation.

    A store object holds one connection and may be shared by threads (operations are
    serialised by a lock); processes and servers each open their own.
    """

    #: migrations this class applies; ``None`` means :data:`iom.store.schema.MIGRATIONS`
    migrations: ClassVar[Sequence[tuple[int, Sequence[str]]] | None] = None
    #: DDL words that differ between dialects ({blob}, {id_pk}, {empty_blob})
    DDL: ClassVar[dict[str, str]] = {}
    #: the driver's base exception class
    DB_ERROR: ClassVar[type[BaseException]] = Exception

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._row_key = PUBLIC_ROW_KEY
        self._witness: Path | None = None
        self._reset_log_state()

    def _reset_log_state(self) -> None:
        # what this store object has verified of the event log: its head, the templates it
        # revoked, and the head a pending write transaction will move to once committed
        self._head: tuple[int, bytes] = (0, b"")
        self._revoked: set[int] = set()
        self._pending: tuple[tuple[int, bytes], set[int]] | None = None
        self._synced = False
        self._migrating = False
        # the latest attempt-log mark this object read: a later one may not lie behind it
        self._attempts_seen: AttemptMark | None = None

    # ------------------------------------------------------------ authentication
    def authenticate(self, row_key: bytes, witness: str | Path | None = None) -> None:
        """Authenticate rows and the event log with ``row_key`` (HMAC) from now on.

        ``witness``: a file (on storage a database attacker cannot write) where the head of
        the event log is recorded, so that a rollback of the whole database is detected even
        by a process that starts after it. Without it, only a running process notices.
        Calling again with another key is an :class:`InvalidInputError`.
        """
        if not isinstance(row_key, bytes) or len(row_key) < 16:
            raise InvalidInputError("row_key must be at least 16 bytes")
        with self._lock:
            if self._row_key != PUBLIC_ROW_KEY and not hmac.compare_digest(self._row_key, row_key):
                raise InvalidInputError(f"store {self.location()} is already authenticated with another key")
            self._row_key = row_key
            self._witness = None if witness is None else Path(witness)
            self._reset_log_state()
            with self._transaction(write=False):
                self._check_witness()

    @property
    def authenticated(self) -> bool:
        """Whether rows are checked with a secret key (not just for corruption)."""
        return self._row_key != PUBLIC_ROW_KEY

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
                self._begin(write, [*lock_keys, "\x00events"] if write else lock_keys)
            except self.DB_ERROR as e:
                self._try_rollback()
                raise StoreError(f"{self.location()}: cannot start a transaction: {e}") from e
            self._pending = None
            try:
                # an authenticated store verifies the log on every transaction (a schema without
                # the log table is a StoreError: it was dropped); one with the public key (tools,
                # store tests) only where it appends to it
                if (write or self.authenticated) and not self._migrating:
                    self._sync_events()
                yield
            except BaseException as exc:
                self._try_rollback()
                self._pending = None
                if isinstance(exc, self.DB_ERROR):
                    raise StoreError(f"{self.location()}: {exc}") from exc
                raise
            try:
                self._commit()
            except self.DB_ERROR as e:
                self._try_rollback()
                self._pending = None
                raise StoreError(f"{self.location()}: commit failed: {e}") from e
            if self._pending is not None:
                self._head, revoked = self._pending
                self._revoked |= revoked
                self._pending = None
                self._write_witness()

    def _try_rollback(self) -> None:
        try:
            self._rollback()
        except self.DB_ERROR:
            pass

    # ------------------------------------------------------------ internals
    def _record_from_row(self, row: Sequence[Any]) -> TemplateRecord:
        """A record from a ``_SELECT`` row, after authenticating it: its MAC, and that the log
        has not revoked a template the row calls active (a replayed row)."""
        values = [bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in row]
        record = TemplateRecord(**dict(zip(COLUMNS, values[:-1])))
        try:
            ok = hmac.compare_digest(record_checksum(record, self._row_key), values[-1])
        except TypeError:
            ok = False
        if not ok:
            raise StoreError(f"template {record.template_id} is corrupt or forged (its MAC does not match)")
        if record.active and record.template_id in self._revoked:
            raise StoreError(f"template {record.template_id} was revoked (event log) but its row is active: "
                             "a replayed or rolled-back row")
        return record

    def _active_rows(self, subject_id: str) -> list[TemplateRecord]:
        rows = self._exec(f"{_SELECT} WHERE subject_id = ? AND revoked_at IS NULL ORDER BY template_id",
                          (subject_id,))
        return [self._record_from_row(r) for r in rows]

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
                       (record_checksum(stored, self._row_key), int(tid)))
            ids.append(int(tid))
        return ids

    def _revoke_rows(self, rows: list[TemplateRecord]) -> None:
        now = utc_now()
        for rec in rows:
            revoked = dataclasses.replace(rec, revoked_at=now)
            self._exec("UPDATE templates SET revoked_at = ?, checksum = ? "
                       "WHERE template_id = ? AND revoked_at IS NULL",
                       (now, record_checksum(revoked, self._row_key), rec.template_id))

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
            ids = self._insert(records)
            self._append_event(subject_id, "enroll", (), ids)
            return ids

    def active(self, subject_id: str) -> dict[str, TemplateRecord]:
        """The subject's active templates, purpose → record. :class:`UnknownSubjectError`
        (:class:`RevokedTemplateError` if they were revoked) when there is none."""
        subject_id = check_subject_id(subject_id)
        with self._transaction(write=False):
            rows = self._active_rows(subject_id)
            if not rows:
                raise self._no_active(subject_id)
        return {r.purpose: r for r in rows}

    def _expect_version(self, subject_id: str, expected_version: int | None) -> None:
        if expected_version is not None:
            version = self._version(subject_id)
            if version != expected_version:
                raise ConflictError(f"subject {subject_id!r} is at version {version}, not the expected "
                                    f"{expected_version}: it changed meanwhile; nothing was written")

    def revoke(self, subject_id: str, expected_version: int | None = None) -> int:
        """Mark every active template of the subject revoked; how many.
        :class:`UnknownSubjectError` if it has none; :class:`ConflictError` if
        ``expected_version`` is given and is not the subject's :meth:`version`."""
        subject_id = check_subject_id(subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            rows = self._active_rows(subject_id)
            if not rows:
                raise self._no_active(subject_id)
            self._expect_version(subject_id, expected_version)
            self._revoke_rows(rows)
            self._append_event(subject_id, "revoke", [r.template_id for r in rows], ())
        return len(rows)

    def reissue(self, subject_id: str, records: Sequence[TemplateRecord],
                expected_version: int | None = None) -> list[int]:
        """Revoke the subject's active templates and store ``records`` in their place, in one
        transaction; the new ids. :class:`UnknownSubjectError` if it has no active template;
        :class:`ConflictError` if ``expected_version`` is not the subject's :meth:`version`."""
        subject_id = check_subject_id(subject_id)
        records = _validate_batch(records, subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            rows = self._active_rows(subject_id)
            if not rows:
                raise self._no_active(subject_id)
            self._expect_version(subject_id, expected_version)
            self._revoke_rows(rows)
            ids = self._insert(records)
            self._append_event(subject_id, "reissue", [r.template_id for r in rows], ids)
            return ids

    def templates(self, template_ids: Sequence[int]) -> list[TemplateRecord]:
        """The (authenticated) records of the given template ids that exist, by id."""
        ids = sorted({int(i) for i in template_ids})
        out: list[TemplateRecord] = []
        with self._transaction(write=False):
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                rows = self._exec(f"{_SELECT} WHERE template_id IN ({marks}) ORDER BY template_id", chunk)
                out.extend(self._record_from_row(r) for r in rows)
        return out

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
        return [self._record_from_row(r) for r in rows]

    def identify_gallery(self, model_id: str) -> tuple[int, list[TemplateRecord]]:
        """The log head and the active "identify" templates of ``model_id``, ordered by
        template id (every row authenticated), read in one snapshot."""
        model_id = _check_text(model_id, "model_id")
        with self._transaction(write=False):
            rows = self._exec(f"{_SELECT} WHERE model_id = ? AND purpose = 'identify' "
                              "AND revoked_at IS NULL ORDER BY template_id", (model_id,))
            return self._head[0], [self._record_from_row(r) for r in rows]

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

