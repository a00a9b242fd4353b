"""The event log: :class:`Event`, its chained MAC (:func:`event_mac`), the witness file, and
the store's log and settings methods (:class:`EventLogMixin`, part of
:class:`~iom.store.base.TemplateStore`).

Every enrolment, revocation and reissue appends an entry to ``events`` whose MAC chains to
the previous one (:func:`event_mac`); the store verifies the new entries at each
transaction, so an edited or truncated log, or a row that is active although the log
revoked it (a replayed old row), is a :class:`~iom.errors.StoreError`. A rollback of the
whole database to an earlier consistent state is noticed by a process that saw the later
log, and, with a *witness* file kept off the database's storage, by any process.
A subject's *version* counts its own log entries (1 after its enrolment, 2 after a reissue, ...;
other subjects' changes leave it alone); ``revoke`` and
``reissue`` take an ``expected_version`` and raise :class:`~iom.errors.ConflictError`
when it moved.

Settings (the administrator verifier, the attempt log's mark) are authenticated rows whose
every change is an entry of the log, so an older value replayed is detected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iom.errors import InvalidInputError, StoreError
from iom.store.attempts import ATTEMPT_MARK
from iom.store.records import PUBLIC_ROW_KEY, _check_text, _encode_field, check_subject_id, utc_now

_EVENT_DOMAIN = b"iomface.event.v2\x00"
EVENT_OPS = ("enroll", "revoke", "reissue", "setting")
_SETTING_DOMAIN = b"iomface.setting.v2\x00"


@dataclass(frozen=True)
class Event:
    """One entry of the event log: an enrolment, revocation or reissue of a subject."""

    seq: int
    subject_id: str
    op: str
    revoked_ids: tuple[int, ...]
    new_ids: tuple[int, ...]
    at: str
    mac: bytes = b""

    def row(self) -> tuple:
        return (self.seq, self.subject_id, self.op, _ids_text(self.revoked_ids),
                _ids_text(self.new_ids), self.at, self.mac)


def _ids_text(ids: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in ids)


def _ids_parse(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",")) if text else ()


def event_mac(event: Event, previous_mac: bytes, key: bytes = PUBLIC_ROW_KEY) -> bytes:
    """HMAC-SHA256 of an event chained to the MAC of the event before it (``b""`` for the
    first): removing, reordering or editing an entry breaks every MAC after it."""
    h = hmac.new(key, _EVENT_DOMAIN, hashlib.sha256)
    h.update(_encode_field(previous_mac))
    for value in (event.seq, event.subject_id, event.op, _ids_text(event.revoked_ids),
                  _ids_text(event.new_ids), event.at):
        h.update(_encode_field(value))
    return h.digest()


# ---------------------------------------------------------------------------- the store's log methods
class EventLogMixin:
    """The event-log and settings methods of :class:`~iom.store.base.TemplateStore` (which
    provides ``_transaction``, ``_exec``, ``_row_key``, ``location``, ``_witness`` and the
    log state ``_head``, ``_revoked``, ``_pending`` and ``_synced``)."""

    def _event_from_row(self, row: Sequence[Any]) -> Event:
        seq, subject_id, op, revoked, new, at, mac = row
        return Event(int(seq), subject_id, op, _ids_parse(revoked), _ids_parse(new), at, bytes(mac))

    def _sync_events(self) -> None:
        """Verify the log entries written since this object last looked (inside a
        transaction): the known head must still be there, unchanged, and every new entry
        must continue the MAC chain. A failure is a :class:`StoreError`: the database was
        rolled back or its log edited."""
        seq, mac = self._pending[0] if self._pending else self._head
        if seq:
            rows = self._exec("SELECT mac FROM events WHERE seq = ?", (seq,))
            if not rows or not hmac.compare_digest(bytes(rows[0][0]), mac):
                raise StoreError(f"{self.location()}: the event log no longer holds entry {seq} as it was: "
                                 "the database was rolled back or its log was edited")
        rows = self._exec("SELECT seq, subject_id, op, revoked_ids, new_ids, at, mac FROM events "
                          "WHERE seq > ? ORDER BY seq", (seq,))
        revoked: set[int] = set()
        for row in rows:
            event = self._event_from_row(row)
            if event.seq != seq + 1 or event.op not in EVENT_OPS or \
                    not hmac.compare_digest(event_mac(event, mac, self._row_key), event.mac):
                if self._wrong_key(rows):
                    raise StoreError(f"{self.location()}: the application secret does not open this database: "
                                     f"none of the {len(rows)} entries of its event log checked authenticates "
                                     "under it. Is IOMFACE_APP_SECRET (or --secret_file) the secret this "
                                     "database was created with? (Else every entry of its log was forged.)")
                raise StoreError(f"{self.location()}: event {event.seq} of the log fails authentication "
                                 "(edited, removed or inserted entries)")
            seq, mac = event.seq, event.mac
            revoked.update(event.revoked_ids)
        self._head = (seq, mac)
        self._revoked |= revoked
        self._synced = True

    def _wrong_key(self, rows: Sequence[tuple]) -> bool:
        """Whether every entry of ``rows`` (consecutive log rows) fails its MAC against the MAC
        stored before it: a wrong key, not an edited entry (an edit breaks one entry's MAC,
        the entries after it still check against the stored chain)."""
        events = [self._event_from_row(r) for r in rows]
        before = {e.seq: e.mac for e in events}
        first = self._exec("SELECT mac FROM events WHERE seq = ?", (events[0].seq - 1,)) if events[0].seq > 1 \
            else [(b"",)]
        before[events[0].seq - 1] = bytes(first[0][0]) if first else b""
        return all(e.seq - 1 in before and not hmac.compare_digest(
            event_mac(e, before[e.seq - 1], self._row_key), e.mac) for e in events)

    def _append_event(self, subject_id: str, op: str, revoked_ids: Sequence[int],
                      new_ids: Sequence[int]) -> None:
        """Add an entry to the log (inside the write transaction that made the change); the
        head moves when the transaction commits."""
        (seq, mac), revoked = self._pending or (self._head, set())
        event = Event(seq + 1, subject_id, op, tuple(revoked_ids), tuple(new_ids), utc_now())
        event = dataclasses.replace(event, mac=event_mac(event, mac, self._row_key))
        self._exec("INSERT INTO events (seq, subject_id, op, revoked_ids, new_ids, at, mac) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", event.row())
        self._pending = ((event.seq, event.mac), revoked | set(revoked_ids))

    def _check_witness(self) -> None:
        """The log must still hold the entry the witness file recorded (inside a transaction)."""
        if self._witness is None or not self._witness.exists():
            return
        try:
            seq_text, mac_hex = self._witness.read_text().split()
            seq, mac = int(seq_text), bytes.fromhex(mac_hex)
        except (OSError, ValueError) as e:
            raise StoreError(f"witness file {self._witness} is unreadable: {e}") from None
        if seq > self._head[0]:
            raise StoreError(f"{self.location()}: the event log ends at entry {self._head[0]} but the witness "
                             f"{self._witness} recorded entry {seq}: the database was rolled back (if it was "
                             "replaced on purpose, delete the witness file)")
        rows = self._exec("SELECT mac FROM events WHERE seq = ?", (seq,)) if seq else [(b"",)]
        if not rows or not hmac.compare_digest(bytes(rows[0][0]), mac):
            raise StoreError(f"{self.location()}: entry {seq} of the event log differs from the one the "
                             f"witness {self._witness} recorded: the database was rolled back or replaced "
                             "(if it was replaced on purpose, delete the witness file)")

    def _write_witness(self) -> None:
        """Record the head in the witness file (atomically, mode 0600) if it moved forward."""
        if self._witness is None:
            return
        seq, mac = self._head
        try:
            old = int(self._witness.read_text().split()[0]) if self._witness.exists() else -1
        except (OSError, ValueError, IndexError):
            old = -1
        if seq <= old:
            return
        tmp = self._witness.with_name(f".{self._witness.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{seq} {mac.hex()}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._witness)

    # ------------------------------------------------------------ reading the log
    def _version(self, subject_id: str) -> int:
        rows = self._exec("SELECT COUNT(*) FROM events WHERE subject_id = ? AND op <> 'setting'", (subject_id,))
        return int(rows[0][0] or 0)

    def version(self, subject_id: str) -> int:
        """The subject's version: how many changes of this subject the log holds (0 if none,
        1 after its enrolment); every enrolment, revocation and reissue of the subject raises it
        by one, changes of other subjects leave it alone."""
        subject_id = check_subject_id(subject_id)
        with self._transaction(write=False):
            return self._version(subject_id)

    def head(self) -> int:
        """The sequence number of the latest entry of the (verified) event log."""
        with self._transaction(write=False):
            return self._head[0]

    def events_since(self, seq: int) -> list[Event]:
        """The verified log entries after ``seq``, oldest first."""
        with self._transaction(write=False):
            rows = self._exec("SELECT seq, subject_id, op, revoked_ids, new_ids, at, mac FROM events "
                              "WHERE seq > ? AND seq <= ? ORDER BY seq", (int(seq), self._head[0]))
        return [self._event_from_row(r) for r in rows]

    # ------------------------------------------------------------ settings
    def _setting_mac(self, name: str, value: bytes, seq: int) -> bytes:
        h = hmac.new(self._row_key, _SETTING_DOMAIN, hashlib.sha256)
        for field in (name, value, seq):
            h.update(_encode_field(field))
        return h.digest()

    def get_setting(self, name: str) -> bytes | None:
        """An authenticated setting (``None`` if never set). A row whose MAC fails, or that is
        not the one the log's latest change of it wrote (a replayed old value), is a
        :class:`StoreError`."""
        with self._transaction(write=False):
            rows = self._exec("SELECT value, seq, mac FROM settings WHERE name = ?", (name,))
            latest = self._exec("SELECT MAX(seq) FROM events WHERE op = 'setting' AND subject_id = ?", (name,))
        latest_seq = latest[0][0]
        if not rows:
            if latest_seq is not None:
                raise StoreError(f"setting {name!r} was set (event log entry {latest_seq}) but is missing")
            return None
        value, seq, mac = bytes(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])
        if not hmac.compare_digest(self._setting_mac(name, value, seq), mac) or seq != latest_seq:
            raise StoreError(f"setting {name!r} fails authentication (forged, or an older value replayed)")
        return value

    def put_setting(self, name: str, value: bytes) -> None:
        """Set a setting (one transaction; the change is logged)."""
        name = _check_text(name, "setting name")
        if name == ATTEMPT_MARK:
            raise InvalidInputError(f"setting name {name!r} is reserved for the attempt log")
        with self._transaction(write=True, lock_keys=[name]):
            self._append_event(name, "setting", (), ())
            seq = self._pending[0][0]
            self._exec("DELETE FROM settings WHERE name = ?", (name,))
            self._exec("INSERT INTO settings (name, value, seq, mac) VALUES (?, ?, ?, ?)",
                       (name, bytes(value), seq, self._setting_mac(name, bytes(value), seq)))
