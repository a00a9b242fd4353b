"""SQLite back end of the template store (the default): one file, WAL, explicit transactions.

Settings, and why:

* ``journal_mode=WAL``: readers never block the writer nor each other, and a process that
  dies mid-transaction leaves its uncommitted frames behind, to be ignored (the store stays
  consistent after SIGKILL).
* ``synchronous=FULL``: a committed enrollment survives a power cut, not just a crash.
* ``busy_timeout`` (30 s by default): concurrent processes wait for the write lock instead
  of failing with "database is locked".
* ``isolation_level=None`` and explicit ``BEGIN IMMEDIATE`` for every write: the write lock
  is taken at the start of the transaction, so a writer's reads are never stale and two
  writers cannot deadlock upgrading read locks; reads use ``BEGIN DEFERRED`` (one snapshot).

Several processes (e.g. worker processes of one server) may share a file on a local disk;
for several machines use :class:`~iom.service.postgres_store.PostgresStore`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iom.service.errors import StoreError
from iom.service.store import TemplateStore

DEFAULT_BUSY_TIMEOUT = 30.0


class SQLiteStore(TemplateStore):
    """Templates in the SQLite file ``path`` (created, with its folder, if absent).

    ``busy_timeout``: seconds a write waits for another process's write lock before
    :class:`~iom.service.errors.StoreError`.
    """

    DDL = {"blob": "BLOB", "id_pk": "INTEGER PRIMARY KEY"}
    DB_ERROR = sqlite3.Error

    def __init__(self, path: str | Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        super().__init__()
        self.path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise StoreError("SQLiteStore needs a file path (in-memory and URI databases are not supported)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise StoreError(f"{self.path} is a folder, not a SQLite database file")
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                         check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open SQLite store {self.path}: {e}") from e

        def configure():
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._set_wal(busy_timeout)
            self._conn.execute("PRAGMA synchronous = FULL")

        self._open(configure, sqlite3.DatabaseError, f"{self.path} is not a readable SQLite template store")

    def _set_wal(self, busy_timeout: float) -> None:
        """``PRAGMA journal_mode=WAL``, retried while another process holds the file locked
        (switching the journal mode does not always go through the busy handler)."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                (mode,), = self._conn.execute("PRAGMA journal_mode = WAL").fetchall()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode!r})")

    # ------------------------------------------------------------ hooks
    def _begin(self, write: bool, lock_keys: Sequence[str]) -> None:
        # one database-wide write lock: BEGIN IMMEDIATE serialises all writers
        self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def _table_names(self) -> list[str]:
        rows = self._exec("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
        return [r[0] for r in rows]

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def _close_connection(self) -> None:
        self._conn.close()

    def location(self) -> str:
        return str(self.path)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
