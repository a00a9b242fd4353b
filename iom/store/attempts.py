"""The attempt log and the failure lock: :class:`Attempt` rows, their MAC (:func:`attempt_mac`),
the authenticated mark (:class:`AttemptMark`) and the store's attempt methods
(:class:`AttemptLogMixin`, part of :class:`~iom.store.base.TemplateStore`).

``attempts`` records failed and refused attempts (rate limits, audit) and *reservations*:
:meth:`AttemptLogMixin.reserve_attempt` counts a subject's failures and pending reservations
in a window and, below the limit, inserts a ``pending`` row, in one write transaction, which
every writer serialises (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the subject's advisory lock
and the event-log lock every writer takes), so no two callers both take the last free slot.
:meth:`AttemptLogMixin.finish_attempt` then makes it ``rejected`` (a failure), ``accepted`` or
``cancelled`` (no longer counted, not listed); a reservation left ``pending`` by a crash counts
as a failure until it leaves the window.

Every attempt row carries an HMAC under the row key over all its columns, its id included
(:func:`attempt_mac`); ids are consecutive, and the authenticated setting
:data:`ATTEMPT_MARK` (whose creation is an entry of the event log) holds the retained range
``first..last`` (ids below ``first`` were pruned, after :data:`ATTEMPT_RETENTION_S`) and the
time of the last row (new rows are never stamped earlier, so times grow with ids). Counting
checks that the table holds exactly the ids of the mark and authenticates every row of the
window plus the last row before it, so a deleted, inserted or edited row that could change a
decision is a :class:`~iom.errors.StoreError` (the caller refuses);
:meth:`AttemptLogMixin.attempts` (the audit read) authenticates every retained row. A mark
replayed from an earlier copy (together with the rows written since deleted) is detected by a
process that saw the later mark, not by one started after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iom.errors import InvalidInputError, StoreError
from iom.store.records import MAX_ID_CHARS, PUBLIC_ROW_KEY, _encode_field, check_subject_id, utc_now
from iom.store.schema import ATTEMPT_COLUMNS

#: attempts older than this are pruned when new ones are written
ATTEMPT_RETENTION_S = 7 * 24 * 3600.0
#: the reserved setting holding the attempt log's authenticated mark (:class:`AttemptMark`)
ATTEMPT_MARK = "attempts.mark"
_ATTEMPT_SELECT = f"SELECT {', '.join(ATTEMPT_COLUMNS)}, mac FROM attempts"
_ATTEMPT_DOMAIN = b"iomface.attempt.v3\x00"
#: the outcome of a reservation (:meth:`AttemptLogMixin.reserve_attempt`) not yet resolved
PENDING = "pending"
#: how a reservation may be resolved (:meth:`AttemptLogMixin.finish_attempt`)
RESOLUTIONS = ("rejected", "accepted", "cancelled")
#: outcomes that are not failures: neither counted against the limit nor listed for audit
NOT_FAILURES = ("accepted", "cancelled")


#: the prefix of the attempt log's rows about a device (its API key's name) rather than a subject:
#: subject ids hold no ``:``, so the two never meet
DEVICE_ATTEMPTS = "device:"


def attempt_subject(value: Any) -> str:
    """Whom an attempt row is about: ``""`` (no one), a subject id (checked), or
    ``"device:NAME"`` (NAME checked like a subject id)."""
    if not value:
        return ""
    if isinstance(value, str) and value.startswith(DEVICE_ATTEMPTS):
        return DEVICE_ATTEMPTS + check_subject_id(value[len(DEVICE_ATTEMPTS):])
    return check_subject_id(value)


@dataclass(frozen=True)
class Attempt:
    """One row of the attempt log: a failed or refused attempt, or a reservation."""

    attempt_id: int
    subject_id: str
    client: str
    op: str
    outcome: str
    at: str

    def row(self) -> tuple:
        """The column values, in :data:`ATTEMPT_COLUMNS` order."""
        return tuple(getattr(self, name) for name in ATTEMPT_COLUMNS)

    def is_failure(self, subject_id: str, op: str, since: str) -> bool:
        """Whether it counts against ``subject_id``'s limit of ``op`` from time ``since`` on."""
        return (self.subject_id == subject_id and self.op == op and self.at >= since
                and self.outcome not in NOT_FAILURES)


def attempt_mac(attempt: Attempt, key: bytes = PUBLIC_ROW_KEY) -> bytes:
    """HMAC-SHA256 under ``key`` over the canonical encoding of every column of an attempt
    row (:data:`ATTEMPT_COLUMNS`, its id included), as :func:`~iom.store.records.record_checksum` for templates."""
    h = hmac.new(key, _ATTEMPT_DOMAIN, hashlib.sha256)
    h.update(len(ATTEMPT_COLUMNS).to_bytes(4, "big"))
    for name, value in zip(ATTEMPT_COLUMNS, attempt.row()):
        h.update(_encode_field(name))
        h.update(_encode_field(value))
    return h.digest()


@dataclass(frozen=True)
class AttemptMark:
    """The attempt log's high-water mark (kept in the setting :data:`ATTEMPT_MARK`): ids
    ``first..last`` are retained (``first > last``: none), every id below ``first`` was pruned,
    ``last_at`` is the latest row's time. ``seq``: the event-log entry that created the mark
    (the setting's sequence number, not part of the value)."""

    first: int
    last: int
    last_at: str
    seq: int

    def encode(self) -> bytes:
        """The setting's value."""
        return f"{self.first} {self.last} {self.last_at}".encode("ascii")

    @classmethod
    def decode(cls, value: bytes, seq: int) -> "AttemptMark":
        """The mark of a setting value (``ValueError`` if malformed)."""
        first, last, last_at = value.decode("ascii").split(" ")
        return cls(int(first), int(last), last_at, seq)


# ---------------------------------------------------------------------------- the store's attempt methods
class AttemptLogMixin:
    """The attempt-log methods of :class:`~iom.store.base.TemplateStore` (which provides
    ``_transaction``, ``_exec``, ``_row_key``, ``location``, the event log's ``_append_event``,
    ``_pending`` and ``_setting_mac``, and ``_attempts_seen``)."""

    def record_attempt(self, subject_id: str, client: str, op: str, outcome: str) -> None:
        """Log a failed or refused attempt (one transaction); attempts older than
        :data:`ATTEMPT_RETENTION_S` are pruned on the way."""
        subject_id = attempt_subject(subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            self._append_attempt(subject_id, str(client)[:MAX_ID_CHARS], op, outcome)

    def reserve_attempt(self, subject_id: str, client: str, op: str, window_s: float,
                        limit: int) -> int | None:
        """Count the subject's failures and pending reservations of ``op`` in the last
        ``window_s`` seconds and, if fewer than ``limit``, add a ``pending`` attempt: its id
        (resolve it with :meth:`finish_attempt`); ``None`` at the limit. One write transaction,
        serialised with every other writer, so concurrent callers never exceed ``limit``
        together. A tampered attempt log is a :class:`StoreError` (nothing reserved)."""
        subject_id = attempt_subject(subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            if self._failures(subject_id, op, window_s) >= limit:
                return None
            return self._append_attempt(subject_id, str(client)[:MAX_ID_CHARS], op, PENDING)

    def finish_attempt(self, subject_id: str, attempt_id: int, outcome: str) -> None:
        """Resolve the pending reservation ``attempt_id`` of the subject (one transaction):
        ``"rejected"`` keeps it a failure, ``"accepted"`` and ``"cancelled"`` (an error before
        any decision) stop it counting. A reservation that is missing, forged, of another
        subject or already resolved is a :class:`StoreError`."""
        if outcome not in RESOLUTIONS:
            raise InvalidInputError(f"outcome must be one of {RESOLUTIONS}, got {outcome!r:.80}")
        subject_id = attempt_subject(subject_id)
        with self._transaction(write=True, lock_keys=[subject_id]):
            rows = self._exec(f"{_ATTEMPT_SELECT} WHERE attempt_id = ?", (int(attempt_id),))
            if not rows:
                raise StoreError(f"{self.location()}: reservation {attempt_id} is missing from the attempt log")
            attempt = self._attempt_from_row(rows[0])
            if attempt.subject_id != subject_id or attempt.outcome != PENDING:
                raise StoreError(f"{self.location()}: attempt {attempt_id} is not a pending reservation of "
                                 f"{subject_id!r} (it is {attempt.outcome!r}, of {attempt.subject_id!r})")
            resolved = dataclasses.replace(attempt, outcome=outcome)
            self._exec("UPDATE attempts SET outcome = ?, mac = ? WHERE attempt_id = ?",
                       (outcome, attempt_mac(resolved, self._row_key), resolved.attempt_id))

    def count_attempts(self, subject_id: str, op: str, window_s: float) -> int:
        """Failed, refused and pending attempts of ``op`` on the subject in the last
        ``window_s`` seconds (authenticated: a tampered attempt log is a :class:`StoreError`)."""
        subject_id = attempt_subject(subject_id)
        with self._transaction(write=False):
            return self._failures(subject_id, op, window_s)

    def attempts(self) -> list[tuple[str, str, str, str, str]]:
        """Every logged attempt but accepted and cancelled reservations: (at, subject_id,
        client, op, outcome), oldest first (audit; every retained row authenticated)."""
        with self._transaction(write=False):
            log = self._attempt_log(since=None)
        return [(a.at, a.subject_id, a.client, a.op, a.outcome) for a in log if a.outcome not in NOT_FAILURES]

    def _failures(self, subject_id: str, op: str, window_s: float) -> int:
        """What counts against the subject's limit of ``op`` now (inside a transaction)."""
        since = utc_now(window_s)
        return sum(a.is_failure(subject_id, op, since) for a in self._attempt_log(since))

    def _attempt_log(self, since: str | None) -> list[Attempt]:
        """The attempts of time ``since`` on (``None``: all), authenticated, by id; with
        ``since``, also the last one before it (which proves that no later row was moved
        out of the window). Before the first attempt under version 3: the old rows as they are."""
        mark = self._read_attempt_mark()
        if mark is None:
            return self._legacy_attempts()
        self._check_attempt_range(mark)
        start = mark.first
        if since is not None:
            rows = self._exec("SELECT attempt_id FROM attempts WHERE at < ? ORDER BY attempt_id DESC LIMIT 1",
                              (since,))
            start = max(start, int(rows[0][0])) if rows else start
        rows = self._exec(f"{_ATTEMPT_SELECT} WHERE attempt_id >= ? ORDER BY attempt_id", (start,))
        return [self._attempt_from_row(r) for r in rows]

    def _legacy_attempts(self) -> list[Attempt]:
        """The rows of a log without a mark: written before version 3, so without a MAC;
        a row with one is a :class:`StoreError` (its mark was removed)."""
        rows = self._exec(f"{_ATTEMPT_SELECT} ORDER BY attempt_id")
        if any(bytes(r[-1]) for r in rows):
            raise StoreError(f"{self.location()}: the attempt log has authenticated rows but no mark: "
                             "its mark was removed")
        return [Attempt(int(r[0]), *r[1:-1]) for r in rows]

    def _attempt_from_row(self, row: Sequence[Any]) -> Attempt:
        """An attempt from an ``_ATTEMPT_SELECT`` row, after checking its MAC."""
        attempt = Attempt(int(row[0]), *row[1:-1])
        try:
            ok = hmac.compare_digest(attempt_mac(attempt, self._row_key), bytes(row[-1]))
        except TypeError:
            ok = False
        if not ok:
            raise StoreError(f"{self.location()}: attempt {attempt.attempt_id} of the attempt log is corrupt "
                             "or forged (its MAC does not match)")
        return attempt

    def _check_attempt_range(self, mark: AttemptMark) -> None:
        """The table must hold exactly the ids ``mark.first..mark.last`` (ids are unique, so a
        matching count, minimum and maximum mean each once); otherwise rows were deleted
        or inserted: :class:`StoreError`."""
        (count, low, high), = self._exec("SELECT COUNT(*), MIN(attempt_id), MAX(attempt_id) FROM attempts")
        have = (int(count), None if low is None else int(low), None if high is None else int(high))
        want = (mark.last - mark.first + 1, mark.first, mark.last) if mark.last >= mark.first else (0, None, None)
        if have != want:
            raise StoreError(f"{self.location()}: the attempt log holds {have[0]} rows (ids {have[1]}..{have[2]}) "
                             f"where its mark says {want[0]} (ids {mark.first}..{mark.last}): attempt rows "
                             "were deleted or inserted")

    def _read_attempt_mark(self) -> AttemptMark | None:
        """The attempt log's authenticated mark (inside a transaction); ``None`` if no
        attempt was written under version 3 yet. A mark that is missing although the event
        log created it (or this object saw it), fails its MAC, or lies behind one this
        object saw (an earlier copy replayed) is a :class:`StoreError`."""
        rows = self._exec("SELECT value, seq, mac FROM settings WHERE name = ?", (ATTEMPT_MARK,))
        created = self._exec("SELECT MAX(seq) FROM events WHERE op = 'setting' AND subject_id = ?",
                             (ATTEMPT_MARK,))[0][0]
        if not rows:
            if created is not None or self._attempts_seen is not None:
                raise StoreError(f"{self.location()}: the mark of the attempt log (created by event log entry "
                                 f"{created}) is missing: the attempt log was tampered with")
            return None
        value, seq, mac = bytes(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])
        try:
            ok = seq == created and hmac.compare_digest(self._setting_mac(ATTEMPT_MARK, value, seq), mac)
            mark = AttemptMark.decode(value, seq) if ok else None
        except ValueError:
            mark = None
        if mark is None:
            raise StoreError(f"{self.location()}: the mark of the attempt log fails authentication (forged or edited)")
        self._note_attempt_mark(mark)
        return mark

    def _note_attempt_mark(self, mark: AttemptMark) -> None:
        """Remember the mark; one behind the last seen means the log was rolled back."""
        seen = self._attempts_seen
        if seen is not None and (mark.last < seen.last or mark.first < seen.first):
            raise StoreError(f"{self.location()}: the attempt log was rolled back (its mark says ids "
                             f"{mark.first}..{mark.last}, this process saw {seen.first}..{seen.last})")
        self._attempts_seen = mark

    def _write_attempt_mark(self, mark: AttemptMark) -> None:
        """Store the mark, authenticated as the setting :data:`ATTEMPT_MARK` of entry ``mark.seq``."""
        value = mark.encode()
        self._exec("DELETE FROM settings WHERE name = ?", (ATTEMPT_MARK,))
        self._exec("INSERT INTO settings (name, value, seq, mac) VALUES (?, ?, ?, ?)",
                   (ATTEMPT_MARK, value, mark.seq, self._setting_mac(ATTEMPT_MARK, value, mark.seq)))

    def _insert_attempt(self, attempt: Attempt) -> None:
        self._exec("INSERT INTO attempts (attempt_id, subject_id, client, op, outcome, at, mac) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (*attempt.row(), attempt_mac(attempt, self._row_key)))

    def _append_attempt(self, subject_id: str, client: str, op: str, outcome: str) -> int:
        """Add an attempt under the next id, never stamped before the previous one, prune the
        expired ones and move the mark (inside a write transaction); its id."""
        mark = self._read_attempt_mark() or self._start_attempt_log()
        attempt = Attempt(mark.last + 1, subject_id, client, op, outcome, max(utc_now(), mark.last_at))
        self._insert_attempt(attempt)
        mark = dataclasses.replace(mark, last=attempt.attempt_id, last_at=attempt.at)
        self._write_attempt_mark(self._prune_attempts(mark))
        return attempt.attempt_id

    def _start_attempt_log(self) -> AttemptMark:
        """Create the mark at the first attempt under version 3 (inside a write transaction):
        older rows are renumbered 1..n in time order and authenticated, and the creation is
        logged in the event log, so that a later removal of the mark is evident."""
        legacy = sorted(self._legacy_attempts(), key=lambda a: (a.at, a.attempt_id))
        self._exec("DELETE FROM attempts")
        for new_id, attempt in enumerate(legacy, 1):
            self._insert_attempt(dataclasses.replace(attempt, attempt_id=new_id))
        self._append_event(ATTEMPT_MARK, "setting", (), ())
        return AttemptMark(1, len(legacy), max((a.at for a in legacy), default=""), self._pending[0][0])

    def _prune_attempts(self, mark: AttemptMark) -> AttemptMark:
        """Delete the attempts up to the last one older than :data:`ATTEMPT_RETENTION_S`, after
        authenticating it (so rows cannot be aged by editing them to be pruned); the mark
        with ``first`` moved past it."""
        rows = self._exec(f"{_ATTEMPT_SELECT} WHERE at < ? ORDER BY attempt_id DESC LIMIT 1",
                          (utc_now(ATTEMPT_RETENTION_S),))
        if not rows:
            return mark
        boundary = self._attempt_from_row(rows[0])
        self._exec("DELETE FROM attempts WHERE attempt_id <= ?", (boundary.attempt_id,))
        return dataclasses.replace(mark, first=max(mark.first, boundary.attempt_id + 1))
