"""Opening a template store from a location string, and keeping DSN secrets out of messages.

:func:`open_store` picks a back end from a URL and lives here, beside the back ends, so that
the base module :mod:`iom.store.base` never imports its implementations:

* ``postgresql://…`` (or ``postgres://…``) → :class:`~iom.store.postgres.PostgresStore`;
* ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path →
  :class:`~iom.store.sqlite.SQLiteStore`.

The DSN rules (a libpq ``key=value`` string refused, no password in any message) are in
:mod:`iom.store.dsn`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iom.errors import InvalidInputError
from iom.store.base import TemplateStore
from iom.store.dsn import LIBPQ_KEY, POSTGRES_SCHEMES, scrub_dsn, split_url


def check_location(url: Any) -> str:
    """``url`` as a string, checked by the DSN rules (:class:`InvalidInputError` otherwise;
    the message never shows a password)."""
    if isinstance(url, Path):
        url = str(url)
    if not isinstance(url, str) or not url:
        shown = repr(url) if not isinstance(url, str) else "''"
        raise InvalidInputError(f"store URL must be a non-empty string or path, got {shown:.80}")
    if split_url(url) is None and "=" in url:
        keys = ", ".join(dict.fromkeys(LIBPQ_KEY.findall(url))) or "?"
        raise InvalidInputError(
            f"the store location is a libpq key=value connection string (keys: {keys}), which is "
            "not supported: it would become a SQLite file of that name. Give a postgresql://HOST/DB "
            "URL (with no password in it on a command line: use the IOMFACE_DB environment variable "
            "or a libpq password file, ~/.pgpass), or sqlite:///PATH for a SQLite file whose name "
            "contains '='")
    return url


def open_store(url: str | Path, **kwargs: Any) -> TemplateStore:
    """A store from a URL: ``postgresql://...`` (or ``postgres://``) → PostgresStore;
    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path → SQLiteStore.
    A libpq ``key=value`` string is refused (see the module doc); ``kwargs`` go to the store."""
    url = check_location(url)
    parts = split_url(url)
    scheme = parts[0] if parts else ""
    if scheme in POSTGRES_SCHEMES:
        from iom.store.postgres import PostgresStore

        return PostgresStore(url, **kwargs)
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise InvalidInputError(f"SQLite URL must be sqlite:///path, got {scrub_dsn(url, url)!r}")
        path = path[1:]
    elif scheme:
        raise InvalidInputError(f"unsupported store URL scheme {scheme!r} (use sqlite:/// or postgresql://)")
    elif "://" in url:
        raise InvalidInputError("the store location has '://' but no valid URL scheme before it "
                                "(use sqlite:///PATH or postgresql://HOST/DB)")
    else:
        path = url
    from iom.store.sqlite import SQLiteStore

    return SQLiteStore(path, **kwargs)
