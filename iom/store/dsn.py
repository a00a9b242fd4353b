"""Keeping DSN secrets out of messages: the rules for a store location string.

DSN rules:

* a string that is not a URL but contains ``=`` is refused: it is a libpq ``key=value``
  connection string (``host=db user=app password=…``), which would otherwise silently become a
  SQLite file of that name. Use a ``postgresql://`` URL (or ``sqlite:///PATH`` for a SQLite file
  whose name contains ``=``);
* no message shows the ``user:password`` of a URL nor any password of the DSN:
  :func:`scrub_dsn` removes them from a text, and every message formatted from a DSN or a
  driver error passes through it (here, in the PostgreSQL store, in the command line);
* :func:`dsn_has_password` tells whether a location carries a password (the command line
  refuses one in ``--db``, where ``ps`` would show it: put it in the ``IOMFACE_DB`` environment
  variable or in a libpq password file, ``~/.pgpass``, instead).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

#: URL schemes of the PostgreSQL store
POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
LIBPQ_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=")
# a libpq key=value password: quoted ('it''s' / 'a\'b') or up to the next blank
_KV_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:\\.|[^'\\])*'?|[^\s'\"&]+)")
# userinfo of any URL inside a text (scheme://user:password@)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@\"'<>]+@")
MASK = "***"


def split_url(dsn: str) -> tuple[str, str] | None:
    """``(scheme, rest after '://')`` of a URL-form location, else None."""
    if "://" not in dsn:
        return None
    scheme, rest = dsn.split("://", 1)
    return (scheme.lower(), rest) if _SCHEME.fullmatch(scheme) else None


def _url_secrets(rest: str) -> tuple[str | None, list[str]]:
    """``(userinfo, passwords)`` of the part of a URL after ``://``.

    The userinfo is everything before the last ``@`` of the authority (libpq stops the
    authority at the first ``/``); passwords are the userinfo's (raw, percent-decoded and its
    ``@``-separated pieces) and any ``password=`` query parameter."""
    authority, _, tail = rest.partition("/")
    userinfo, passwords = None, []
    if "@" in authority:
        userinfo = authority.rsplit("@", 1)[0]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            # libpq ends the userinfo at the first '@': with an unencoded '@' in the password,
            # its pieces show up in messages as (part of) the host name
            passwords += [password, unquote(password), *password.split("@")]
    if "?" in rest:
        query = rest.split("?", 1)[1].split("#", 1)[0]
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            if eq and unquote(key).strip().lower() == "password":
                passwords += [value, unquote(value), unquote_plus(value)]
    return userinfo, [p for p in passwords if p]


def _kv_passwords(dsn: str) -> list[str]:
    """Passwords of a libpq ``key=value`` string (raw, unquoted and unescaped)."""
    out = []
    for match in _KV_PASSWORD.finditer(dsn):
        value = match.group(2)
        out.append(value)
        if value.startswith("'"):
            inner = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
            out += [inner, re.sub(r"\\(.)", r"\1", inner)]
    return [p for p in out if p]


def dsn_passwords(dsn: Any) -> list[str]:
    """Every password a store location carries (URL userinfo, ``password=`` query parameter
    or ``key=value`` pair), as written and decoded; ``[]`` if none."""
    if isinstance(dsn, Path) or not isinstance(dsn, str) or not dsn:
        return []
    url = split_url(dsn)
    passwords = _url_secrets(url[1])[1] if url else []
    return passwords + _kv_passwords(dsn)


def dsn_has_password(dsn: Any) -> bool:
    """Whether a store location carries a password."""
    return bool(dsn_passwords(dsn))


def scrub_dsn(text: Any, dsn: Any = None) -> str:
    """``text`` without the ``user:password`` of the DSN ``dsn`` and without any password.

    Removes, in this order: the userinfo of ``dsn`` (``user:password@`` → ``***@``), each of
    its passwords (as written and percent-decoded or unquoted) wherever it appears, the
    userinfo of every URL in ``text`` and the value of every ``password=`` pair. Idempotent;
    text without credentials is returned unchanged. (A very short password is masked
    wherever its characters appear, which may garble a message; it never leaks.)"""
    text = str(text)
    if isinstance(dsn, str) and dsn:
        url = split_url(dsn)
        secrets: list[str] = []
        if url:
            userinfo, passwords = _url_secrets(url[1])
            if userinfo:
                text = text.replace(f"{userinfo}@", f"{MASK}@")
            secrets += passwords
        secrets += _kv_passwords(dsn)
        for secret in sorted(set(secrets), key=len, reverse=True):
            if secret != MASK:
                text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)
