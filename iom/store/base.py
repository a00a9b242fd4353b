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

Schema (version 3)::

    schema_info(version INTEGER NOT NULL)                        -- one row
    templates(template_id  INTEGER PRIMARY KEY / BIGSERIAL,
              subject_id TEXT, purpose TEXT, code BLOB/BYTEA, salt BLOB/BYTEA,
              key_version INTEGER, model_id TEXT, m INTEGER, q INTEGER, n_photos INTEGER,
              created_at TEXT, revoked_at TEXT NULL, checksum BLOB/BYTEA)   -- all NOT NULL
                                                                            -- but revoked_at
    UNIQUE INDEX templates_one_active ON templates(subject_id, purpose) WHERE revoked_at IS NULL
    events(seq BIGINT PRIMARY KEY, subject_id TEXT, op TEXT, revoked_ids TEXT, new_ids TEXT,
           at TEXT, mac BLOB/BYTEA)                              -- version 2: the change log
    attempts(attempt_id, subject_id TEXT, client TEXT, op TEXT, outcome TEXT, at TEXT,
             mac BLOB/BYTEA)                                     -- mac: version 3
    settings(name TEXT PRIMARY KEY, value BLOB/BYTEA, seq BIGINT, mac BLOB/BYTEA)

The partial unique index is what makes two active templates of one purpose for one subject
impossible, even under concurrency. Timestamps are UTC ISO-8601 strings
(``2025-01-31T12:00:00.000000+00:00``). Subject ids are compared in NFC and lookalike ids are
refused (:func:`check_subject_id`).

Authentication. ``checksum`` is an HMAC-SHA256 over a canonical, length-prefixed encoding of
every other column (:func:`record_checksum`), under the key given to :meth:`TemplateStore.authenticate`
(the service derives it from the application secret); it is recomputed on revocation and
verified whenever a template is read (a mismatch is a :class:`~iom.errors.StoreError`
naming the template id). Without a key the store uses :data:`PUBLIC_ROW_KEY`, which detects
corruption, not forgery. Every enrolment, revocation and reissue appends an entry to
``events`` whose MAC chains to the previous one (:func:`event_mac`); the store verifies the
new entries at each transaction, so an edited or truncated log, or a row that is active
although the log revoked it (a replayed old row), is a ``StoreError``. A rollback of the
whole database to an earlier consistent state is noticed by a process that saw the later
log, and, with a *witness* file kept off the database's storage, by any process.
A subject's *version* counts its own log entries (1 after its enrolment, 2 after a reissue, ...;
other subjects' changes leave it alone); ``revoke`` and
``reissue`` take an ``expected_version`` and raise :class:`~iom.errors.ConflictError`
when it moved.

Attempts and the failure lock. ``attempts`` records failed and refused attempts (rate limits,
audit) and *reservations*: :meth:`TemplateStore.reserve_attempt` counts a subject's failures
and pending reservations in a window and, below the limit, inserts a ``pending`` row, in one
write transaction, which every writer serialises (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
the subject's advisory lock and the event-log lock every writer takes), so no two callers
both take the last free slot. :meth:`TemplateStore.finish_attempt` then makes it
``rejected`` (a failure), ``accepted`` or ``cancelled`` (no longer counted, not listed); a
reservation left ``pending`` by a crash counts as a failure until it leaves the window.
Every attempt row carries an HMAC under the row key over all its columns, its id included
(:func:`attempt_mac`); ids are consecutive, and the authenticated setting
:data:`ATTEMPT_MARK` (whose creation is an entry of the event log) holds the retained range
``first..last`` (ids below ``first`` were pruned, after :data:`ATTEMPT_RETENTION_S`) and the
time of the last row (new rows are never stamped earlier, so times grow with ids). Counting
checks that the table holds exactly the ids of the mark and authenticates every row of the
window plus the last row before it, so a deleted, inserted or edited row that could change a
decision is a :class:`~iom.errors.StoreError` (the caller refuses); :meth:`attempts`
(the audit read) authenticates every retained row. A mark replayed from an earlier copy
(together with the rows written since deleted) is detected by a process that saw the later
mark, not by one started after it.

Migrations: :data:`MIGRATIONS` is an ordered list ``[(version, [sql, ...]), ...]``; opening
an older database applies the missing ones, each in its own transaction together with the
update of ``schema_info``; a database newer than the code is refused. A new version is
added by appending to the list (SQL may use ``{blob}``, ``{id_pk}`` and ``{empty_blob}``, which
each back end fills in for its dialect).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import hmac
import os
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar

from iom.errors import (ConflictError, DuplicateEnrollmentError, InvalidInputError,
                                RevokedTemplateError, StoreError, UnknownSubjectError)

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
    (2, [
        # the append-only, HMAC-chained log of every enrolment, revocation and reissue
        """CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            subject_id TEXT NOT NULL,
            op TEXT NOT NULL,
            revoked_ids TEXT NOT NULL,
            new_ids TEXT NOT NULL,
            at TEXT NOT NULL,
            mac {blob} NOT NULL)""",
        "CREATE INDEX events_by_subject ON events (subject_id, seq)",
        # failed and refused attempts (verification failures, rate-limit hits, failed proofs)
        """CREATE TABLE attempts (
            attempt_id {id_pk},
            subject_id TEXT NOT NULL,
            client TEXT NOT NULL,
            op TEXT NOT NULL,
            outcome TEXT NOT NULL,
            at TEXT NOT NULL)""",
        "CREATE INDEX attempts_by_subject ON attempts (subject_id, op, at)",
        # service settings (the administrator verifier), each authenticated and logged
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value {blob} NOT NULL,
            seq BIGINT NOT NULL,
            mac {blob} NOT NULL)""",
    ]),
    (3, [
        # every attempt row authenticated (rows written before: an empty MAC until adopted)
        "ALTER TABLE attempts ADD COLUMN mac {blob} NOT NULL DEFAULT {empty_blob}",
    ]),
]

# columns of a template row, in the order SELECTs return them and the checksum covers them
COLUMNS = ("template_id", "subject_id", "purpose", "code", "salt", "key_version", "model_id",
           "m", "q", "n_photos", "created_at", "revoked_at")
_SELECT = f"SELECT {', '.join(COLUMNS)}, checksum FROM templates"
_INSERT = ("INSERT INTO templates (subject_id, purpose, code, salt, key_version, model_id, m, q, "
           "n_photos, created_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING template_id")
_CHECKSUM_DOMAIN = b"iomface.template.v2\x00"
_EVENT_DOMAIN = b"iomface.event.v2\x00"
#: the MAC key of a store nobody authenticated (:meth:`TemplateStore.authenticate`): it
#: detects corruption but not forgery, since everyone knows it
PUBLIC_ROW_KEY = b"iomface.public-row-key"
EVENT_OPS = ("enroll", "revoke", "reissue", "setting")
_SETTING_DOMAIN = b"iomface.setting.v2\x00"
#: attempts older than this are pruned when new ones are written
ATTEMPT_RETENTION_S = 7 * 24 * 3600.0
#: the reserved setting holding the attempt log's authenticated mark (:class:`AttemptMark`)
ATTEMPT_MARK = "attempts.mark"
#: columns of an attempt row, in the order SELECTs return them and its MAC covers them
ATTEMPT_COLUMNS = ("attempt_id", "subject_id", "client", "op", "outcome", "at")
_ATTEMPT_SELECT = f"SELECT {', '.join(ATTEMPT_COLUMNS)}, mac FROM attempts"
_ATTEMPT_DOMAIN = b"iomface.attempt.v3\x00"
#: the outcome of a reservation (:meth:`TemplateStore.reserve_attempt`) not yet resolved
PENDING = "pending"
#: how a reservation may be resolved (:meth:`TemplateStore.finish_attempt`)
RESOLUTIONS = ("rejected", "accepted", "cancelled")
#: outcomes that are not failures: neither counted against the limit nor listed for audit
NOT_FAILURES = ("accepted", "cancelled")


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


#: scripts that may share one subject id (Japanese and Korean mix them legitimately)
_SCRIPT_GROUPS = ({"CJK", "HIRAGANA", "KATAKANA"}, {"CJK", "HANGUL"})


def _script(c: str) -> str:
    """The script of a letter: the first word of its Unicode name (LATIN, CYRILLIC, ...)."""
    return unicodedata.name(c, "UNKNOWN").split(" ")[0]


#: the characters besides letters, digits and combining marks a subject id may hold: none that a
#: shell or a URL path gives a meaning to (``!``, ``/``, ``?``, ``#``, ``%``, ``&``, ``*``, ...)
SUBJECT_ID_PUNCTUATION = " ._-@+'"


def check_subject_id(subject_id: Any) -> str:
    """The canonical form of a subject id, or :class:`InvalidInputError` naming the problem.

    Ids are compared in Unicode NFC, so composed and decomposed spellings are one subject.
    Refused, because they make two ids that look alike: invisible format characters
    (zero-width space, bidirectional overrides), separators other than the ASCII space,
    leading or trailing space, compatibility forms (full-width letters, ligatures,
    super- and subscripts: NFKC would change them) and letters of several scripts in one
    id (``аlice`` with a Cyrillic ``а``), and any character other than letters, digits, combining
    marks and :data:`SUBJECT_ID_PUNCTUATION` (``bad id!``: ``!`` means something to a shell, ``/``,
    ``?``, ``#`` and ``%`` to a URL). Ids written entirely in another script that merely resemble
    a Latin id (whole-script confusables) are not detected.
    """
    value = _check_text(subject_id, "subject_id")
    value = unicodedata.normalize("NFC", value)
    for c in value:
        category = unicodedata.category(c)
        if category in ("Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (category == "Zs" and c != " "):
            raise InvalidInputError(f"subject_id {value!r:.80} contains the invisible or separator "
                                    f"character U+{ord(c):04X} ({unicodedata.name(c, category)})")
    if value != value.strip():
        raise InvalidInputError(f"subject_id {value!r:.80} starts or ends with a space")
    for c in value:
        if not (unicodedata.category(c)[0] in "LMN" or c in SUBJECT_ID_PUNCTUATION):
            raise InvalidInputError(f"subject_id {value!r:.80} contains {c!r} (U+{ord(c):04X} "
                                    f"{unicodedata.name(c, 'control character')}): ids are letters, digits, "
                                    f"spaces and {' '.join(SUBJECT_ID_PUNCTUATION.strip())}")
    if unicodedata.normalize("NFKC", value) != value:
        raise InvalidInputError(f"subject_id {value!r:.80} contains compatibility characters "
                                f"(full-width forms, ligatures, super/subscripts); write "
                                f"{unicodedata.normalize('NFKC', value)!r:.80} instead")
    scripts = {_script(c) for c in value if unicodedata.category(c).startswith("L")}
    if len(scripts) > 1 and not any(scripts <= group for group in _SCRIPT_GROUPS):
        raise InvalidInputError(f"subject_id {value!r:.80} mixes letters of several scripts "
                                f"({', '.join(sorted(scripts))}): ids that look alike must be one id")
    return value


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
    subject_id = check_subject_id(record.subject_id)
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


def record_checksum(record: TemplateRecord, key: bytes = PUBLIC_ROW_KEY) -> bytes:
    """HMAC-SHA256 under ``key`` over the canonical encoding of every column of the row
    (:data:`COLUMNS`, in that order; each value typed and length-prefixed), template id and
    revocation included. Under the service's secret-derived key it authenticates the row;
    under :data:`PUBLIC_ROW_KEY` it only detects corruption."""
    h = hmac.new(key, _CHECKSUM_DOMAIN, hashlib.sha256)
    h.update(len(COLUMNS).to_bytes(4, "big"))
    for name in COLUMNS:
        h.update(_encode_field(name))
        h.update(_encode_field(getattr(record, name)))
    return h.digest()


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
    row (:data:`ATTEMPT_COLUMNS`, its id included), as :func:`record_checksum` for templates."""
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


def utc_now(seconds_ago: float = 0.0) -> str:
    """The current UTC time (or ``seconds_ago`` before it), ISO-8601 with microseconds: the
    store's timestamp format, which sorts as text in time order."""
    moment = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - seconds_ago, timezone.utc)
    return moment.isoformat(timespec="microseconds")


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
        self._migrating = True
        try:
            self._apply_migrations()
        finally:
            self._migrating = False

    def _apply_migrations(self) -> None:
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

    # ------------------------------------------------------------ the event log
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

    # ------------------------------------------------------------ attempts (the failure lock)
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

