"""API keys of the HTTP service: a private file of hashed keys with a role each.

A key is ``iomf_`` followed by 43 URL-safe characters (32 random bytes). The file keeps only
its SHA-256 (a 256-bit random key needs no slow hash: it cannot be guessed), its name and role,
so a stolen file authenticates nobody. The file is JSON, created 0600 and replaced atomically;
like a secret file, one that group or others may read or write is refused.

Roles: ``admin`` (enrol, revoke, reissue, list, show, metrics; verify and identify too) and
``client`` (verify, identify). The server re-reads the file when it changes, so keys added
or removed with ``iomface add-key`` / ``remove-key`` take effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass

from iom.errors import InvalidInputError

KEY_PREFIX = "iomf_"
ROLES = ("admin", "client")
FORMAT = "iomface-api-keys/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Credential:
    """Who a request authenticated as: the key's ``name`` and ``role`` (never the key)."""

    name: str
    role: str


def new_key() -> str:
    """A fresh random API key (shown once, never stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"key name {name!r:.70} must be 1-64 letters, digits, '.', '_', '@' or '-' "
                                "(starting with a letter or digit)")
    return name


def read_keys(path: str) -> list[dict]:
    """The entries of a key file (``name``, ``role``, ``sha256``, ``created_at``), checked."""
    from iom.cli.inputs import read_secret_file

    raw = read_secret_file(path, "--keys_file")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InvalidInputError(f"--keys_file {path}: not a key file (invalid JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("keys"), list):
        raise InvalidInputError(f"--keys_file {path}: not a key file (expected format {FORMAT!r})")
    seen = set()
    for i, entry in enumerate(doc["keys"]):
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or \
                not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
            raise InvalidInputError(f"--keys_file {path}: entry {i} needs a name, a role in {ROLES} and a sha256")
        name = _check_name(entry.get("name"))
        if name in seen:
            raise InvalidInputError(f"--keys_file {path}: the name {name!r} appears twice")
        seen.add(name)
    return doc["keys"]


def _write_keys(path: str, entries: list[dict]) -> None:
    from arcface.data.pairs import atomic_write

    atomic_write(path, json.dumps({"format": FORMAT, "keys": entries}, indent=2).encode("utf-8"), private=True)


def add_key(path: str, name: str, role: str) -> str:
    """Add a key named ``name`` with ``role`` to the file (created if missing); returns the
    key, which is stored nowhere (only its SHA-256)."""
    name = _check_name(name)
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    entries = read_keys(path) if os.path.exists(path) else []
    if any(e["name"] == name for e in entries):
        raise InvalidInputError(f"--keys_file {path}: a key named {name!r} exists; remove it first "
                                f"(iomface remove-key {name})")
    key = new_key()
    entries.append({"name": name, "role": role, "sha256": key_digest(key),
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    _write_keys(path, entries)
    return key


def remove_key(path: str, name: str) -> None:
    """Remove the key named ``name``; :class:`InvalidInputError` if there is none."""
    entries = read_keys(path)
    kept = [e for e in entries if e["name"] != name]
    if len(kept) == len(entries):
        raise InvalidInputError(f"--keys_file {path}: no key named {name!r}")
    _write_keys(path, kept)


def list_keys(path: str) -> list[dict]:
    """Names, roles and creation dates (no digests)."""
    return [{"name": e["name"], "role": e["role"], "created_at": e.get("created_at")} for e in read_keys(path)]


class KeyRing:
    """The server's view of a key file, re-read when the file changes (its mtime, size or
    inode). A file that is removed revokes every key until it is back (fail closed: deleting
    the file is how an operator may cut every caller off); a file that turns malformed keeps
    the last good keys (``add-key`` and ``remove-key`` replace it atomically, so only a hand
    edit gets there) and says so once."""

    def __init__(self, path: str, on_error=None):
        self.path, self._on_error = path, on_error
        self._lock = threading.Lock()
        self._stamp = None
        self._keys: dict[str, Credential] = {}
        self._reload(force=True)
        if not self._keys:
            raise InvalidInputError(f"--keys_file {path}: holds no key; add one with "
                                    "iomface add-key NAME --role admin --keys_file FILE")

    def _reload(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if force:
                raise InvalidInputError(f"--keys_file {self.path}: {e.strerror or e}") from None
            if self._stamp is not None:          # gone (or out of reach): no key is valid any more
                self._keys, self._stamp = {}, None
                if self._on_error is not None:
                    self._on_error(f"--keys_file {self.path}: {e.strerror or e}; every key is revoked until "
                                   "the file is back")
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            entries = read_keys(self.path)
        except InvalidInputError as e:
            if force:
                raise
            if self._on_error is not None:
                self._on_error(str(e))
            self._stamp = stamp
            return
        self._keys = {e["sha256"]: Credential(e["name"], e["role"]) for e in entries}
        self._stamp = stamp

    def authenticate(self, presented: str | None) -> Credential | None:
        """The credential of a presented key, or ``None`` (malformed or unknown key)."""
        with self._lock:
            self._reload()
            keys = self._keys
        if not isinstance(presented, str) or not _KEY.fullmatch(presented):
            return None
        digest = key_digest(presented)
        match = None
        for stored, credential in keys.items():      # constant time in the key's content
            if hmac.compare_digest(stored, digest):
                match = credential
        return match
