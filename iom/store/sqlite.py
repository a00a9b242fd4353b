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
for several machines use :class:`~iom.store.postgres.PostgresStore`.

File modes. The templates are protected, but the database still deserves owner-only access
(it lists who is enrolled, and a writable file can be tampered with): a missing folder (and
each missing parent) is created mode 0700, and a new database file is created empty, mode
0600, *before* SQLite opens it. SQLite creates the ``-wal`` and ``-shm`` files with the mode
of the database file, so they are 0600 too (tested). An existing database file keeps its
mode — the operator may share it with a service group on purpose, and a library silently
changing modes breaks such set-ups — but opening it emits an
:class:`InsecureFileModeWarning` naming each of the file, ``-wal`` and ``-shm`` that group or
others can read or write, with the ``chmod 600`` that fixes it.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import stat
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iom.errors import StoreError
from iom.store.base import TemplateStore

DEFAULT_BUSY_TIMEOUT = 30.0


class InsecureFileModeWarning(UserWarning):
    """An existing database file (or its -wal/-shm) is readable or writable by group or
    others; the store leaves its mode alone (see :mod:`iom.store.sqlite`)."""


def _make_private_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each mode 0700 (existing ones are left as
    they are)."""
    missing = []
    for d in [folder, *folder.parents]:
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:       # created meanwhile by another process: not ours to chmod
            continue
        os.chmod(d, 0o700)            # exactly 0700 whatever the umask


def _create_private_file(path: Path) -> None:
    """Create an empty database file mode 0600 before SQLite opens it (SQLite then gives its
    -wal and -shm files the same mode); warn if an existing one is open to group/other."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        loose = {}
        for p in (str(path), f"{path}-wal", f"{path}-shm"):
            try:
                mode = os.stat(p).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISREG(mode) and mode & 0o077:
                loose[p] = stat.S_IMODE(mode)
        if loose:
            warnings.warn("template database file(s) readable or writable by group or others: "
                          + ", ".join(f"{p} ({mode:04o})" for p, mode in loose.items())
                          + "; left as they are; unless that is intended, run: chmod 600 "
                          + " ".join(map(shlex.quote, loose)), InsecureFileModeWarning, stacklevel=3)
        return
    try:
        os.fchmod(fd, 0o600)          # exactly 0600 whatever the umask
    finally:
        os.close(fd)


class SQLiteStore(TemplateStore):
    """Templates in the SQLite file ``path`` (created, with its folder, if absent: a missing
    folder is created 0700 and a new database file 0600, so its -wal/-shm are 0600 too).

    ``busy_timeout``: seconds a write waits for another process's write lock before
    :class:`~iom.errors.StoreError`.
    """

    DDL = {"blob": "BLOB", "id_pk": "INTEGER PRIMARY KEY", "empty_blob": "X''"}
    DB_ERROR = sqlite3.Error

    def __init__(self, path: str | Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        super().__init__()
        self.path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise StoreError("SQLiteStore needs a file path (in-memory and URI databases are not supported)")
        try:
            _make_private_folder(self.path.parent)
            if self.path.is_dir():
                raise StoreError(f"{self.path} is a folder, not a SQLite database file")
            _create_private_file(self.path)
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
