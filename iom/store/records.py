"""Template records: :class:`TemplateRecord`, the checks of its fields and of subject ids
(:func:`check_subject_id`), the canonical column encoding, the row checksum
(:func:`record_checksum`) and the store's timestamps (:func:`utc_now`).

The store keeps only what a protected template is: the packed code, the 16-byte salt its
key was derived with, the key version, the model identifier, the code shape ``(m, q)``,
the number of photos fused, timestamps and a checksum. It never sees raw features,
photos, user tokens or the application secret: :class:`TemplateRecord` has no field for
them. Subject ids are compared in NFC and lookalike ids are refused (:func:`check_subject_id`).

``checksum`` is an HMAC-SHA256 over a canonical, length-prefixed encoding of every other
column (:func:`record_checksum`), under the key given to
:meth:`~iom.store.base.TemplateStore.authenticate` (the service derives it from the
application secret). Without a key the store uses :data:`PUBLIC_ROW_KEY`, which detects
corruption, not forgery.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from iom.errors import InvalidInputError
from iom.store.schema import COLUMNS

#: purposes a template may have: "verify" (under the user's key), "identify" (application key)
PURPOSES = ("verify", "identify")
SALT_BYTES = 16
MAX_CODE_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_INT = 2**31 - 1          # INTEGER columns are 32-bit in PostgreSQL

_CHECKSUM_DOMAIN = b"iomface.template.v2\x00"
#: the MAC key of a store nobody authenticated (:meth:`~iom.store.base.TemplateStore.authenticate`): it
#: detects corruption but not forgery, since everyone knows it
PUBLIC_ROW_KEY = b"iomface.public-row-key"


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
    (:data:`~iom.store.schema.COLUMNS`, in that order; each value typed and length-prefixed), template id and
    revocation included. Under the service's secret-derived key it authenticates the row;
    under :data:`PUBLIC_ROW_KEY` it only detects corruption."""
    h = hmac.new(key, _CHECKSUM_DOMAIN, hashlib.sha256)
    h.update(len(COLUMNS).to_bytes(4, "big"))
    for name in COLUMNS:
        h.update(_encode_field(name))
        h.update(_encode_field(getattr(record, name)))
    return h.digest()


# ---------------------------------------------------------------------------- timestamps
def utc_now(seconds_ago: float = 0.0) -> str:
    """The current UTC time (or ``seconds_ago`` before it), ISO-8601 with microseconds: the
    store's timestamp format, which sorts as text in time order."""
    moment = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - seconds_ago, timezone.utc)
    return moment.isoformat(timespec="microseconds")
