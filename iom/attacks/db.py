"""A database-file attacker: raw SQLite reads and writes, behind the service's back.

It knows the schema (public) but no secret: it can read every row, edit any column,
recompute any checksum whose function is public, copy rows between subjects, and take and
restore backups of single rows or of the whole file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

import numpy as np

from iom.search.packing import from_bytes, to_bytes, pack_codes, unpack_codes


@contextlib.contextmanager
def connect(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A write connection to the file (one transaction, committed on success)."""
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def rows(path: str | Path, where: str = "1", params=()) -> list[dict]:
    """Template rows (every column, ``checksum`` included) matching ``where``, by id."""
    with connect(path) as con:
        cur = con.execute(f"SELECT * FROM templates WHERE {where} ORDER BY template_id", params)
        names = [d[0] for d in cur.description]
        return [{k: bytes(v) if isinstance(v, memoryview) else v for k, v in zip(names, r)}
                for r in cur.fetchall()]


def active_row(path: str | Path, subject: str, purpose: str) -> dict:
    """The subject's active row of one purpose."""
    found = rows(path, "subject_id = ? AND purpose = ? AND revoked_at IS NULL", (subject, purpose))
    if len(found) != 1:
        raise LookupError(f"{len(found)} active {purpose} rows for {subject!r}")
    return found[0]


def write_row(path: str | Path, row: dict) -> None:
    """Insert or replace a whole row (every column given, ``template_id`` included)."""
    names = list(row)
    with connect(path) as con:
        con.execute(f"INSERT OR REPLACE INTO templates ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' * len(names))})", [row[k] for k in names])


def delete_rows(path: str | Path, template_ids) -> None:
    with connect(path) as con:
        con.executemany("DELETE FROM templates WHERE template_id = ?", [(int(i),) for i in template_ids])


def codes_of(rows_: list[dict], m: int, q: int) -> np.ndarray:
    """The stored codes (n, m) of rows."""
    if not rows_:
        return np.zeros((0, m), np.uint8)
    return unpack_codes(np.stack([from_bytes(r["code"], m, q) for r in rows_]), m, q)


def code_bytes(code: np.ndarray, q: int) -> bytes:
    """One code (m,) packed as the store keeps it."""
    return to_bytes(pack_codes(np.asarray(code)[None], q)[0])


def backup(path: str | Path, to: str | Path) -> Path:
    """A consistent copy of the whole database (SQLite backup API, WAL included)."""
    Path(to).unlink(missing_ok=True)
    src, dst = sqlite3.connect(str(path)), sqlite3.connect(str(to))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return Path(to)


def restore(path: str | Path, copy: str | Path) -> None:
    """Roll the whole database back to a :func:`backup` (through SQLite, so open connections
    of the service see the old content on their next transaction)."""
    src, dst = sqlite3.connect(str(copy)), sqlite3.connect(str(path), timeout=30)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
