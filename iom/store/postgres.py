"""PostgreSQL back end of the template store, for deployments with several application
servers. Same schema, SQL and behaviour as the SQLite store; the dialect differences are
the DDL words (``BYTEA`` for blobs, ``BIGSERIAL PRIMARY KEY``), the ``%s`` placeholders and
how writers are serialised.

Concurrency. The connection runs in autocommit mode and every operation issues its own
``BEGIN``:

* writes: ``BEGIN ISOLATION LEVEL READ COMMITTED``, then
  ``SELECT pg_advisory_xact_lock(k)`` with ``k`` a 64-bit hash of the subject id. Writers of
  one subject therefore run one after the other (the lock is released at COMMIT/ROLLBACK),
  and because READ COMMITTED takes a fresh snapshot for every statement, each sees what the
  previous one committed: of two concurrent enrollments of one subject exactly one succeeds,
  the other gets :class:`~iom.errors.DuplicateEnrollmentError`; two reissues never
  both revoke the same templates. The partial unique index ``templates_one_active`` stays
  the last line of defence (a violation is reported as DuplicateEnrollmentError). No retry
  loop is needed: nothing takes two subject locks, so there is no deadlock and no
  serialisation failure. Every writer also takes the event log's lock (a reserved key), so
  writes of different subjects wait for each other too; it orders the log and the attempt
  log's mark (one row for all subjects). The failure lock's ``reserve_attempt`` counts and
  inserts under both, so concurrent verifications of one subject never reserve more than
  the limit together.
* reads: ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`` (one snapshot per operation).
* schema migrations take the advisory lock of a reserved key, so servers starting together
  migrate once.

``lock_timeout`` (30 s by default) bounds how long a writer waits, like SQLite's
``busy_timeout``; exceeding it is a :class:`~iom.errors.StoreError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from iom.errors import StoreError
from iom.store.base import TemplateStore
from iom.store.dsn import scrub_dsn

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as e:          # pragma: no cover - psycopg is a dependency
    raise StoreError("the PostgreSQL store needs psycopg: pip install 'psycopg[binary]>=3.2'") from e

DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10


def advisory_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (the first 8 bytes of its SHA-256)."""
    digest = hashlib.sha256(b"iomface.store.lock\x00" + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresStore(TemplateStore):
    """Templates in the PostgreSQL database of ``dsn`` (a ``postgresql://`` URL or a libpq
    ``key=value`` string); tables live in the connection's current schema."""

    DDL = {"blob": "BYTEA", "id_pk": "BIGSERIAL PRIMARY KEY", "empty_blob": "''::bytea"}
    DB_ERROR = psycopg.Error

    def __init__(self, dsn: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 connect_timeout: int = DEFAULT_CONNECT_TIMEOUT):
        super().__init__()
        self._where = _describe_dsn(dsn)
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error as e:
            # libpq echoes a malformed URI whole, password included: scrub the message, and
            # chain nothing (a traceback would print the driver's own message)
            raise StoreError(scrub_dsn(f"cannot connect to PostgreSQL {self._where}: {e}", dsn)) from None

        def configure():
            self._conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
            self._conn.execute("SET client_encoding = 'UTF8'")

        try:
            self._open(configure, psycopg.Error, f"PostgreSQL {self._where}")
        except StoreError as e:
            message = scrub_dsn(str(e), dsn)
            if message != str(e):
                raise StoreError(message) from None
            raise

    # ------------------------------------------------------------ hooks
    def _begin(self, write: bool, lock_keys: Sequence[str]) -> None:
        if not write:
            self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return
        self._conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        for key in sorted({advisory_key(k) for k in lock_keys}):
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self._conn.execute(sql.replace("?", "%s"), tuple(params) if params else None)
        return cur.fetchall() if cur.description is not None else []

    def _table_names(self) -> list[str]:
        rows = self._exec("SELECT table_name FROM information_schema.tables "
                          "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
        return [r[0] for r in rows]

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, pg_errors.UniqueViolation)

    def _close_connection(self) -> None:
        self._conn.close()

    def location(self) -> str:
        return self._where

    def _rollback(self) -> None:
        if not self._conn.closed and \
                self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("ROLLBACK")


def _describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, without user or password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    host = info.get("host") or info.get("hostaddr") or "localhost"
    port = info.get("port") or "5432"
    return scrub_dsn(f"postgresql://{host}:{port}/{info.get('dbname') or ''}", dsn)
