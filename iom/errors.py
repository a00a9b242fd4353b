"""Typed errors of the template store and service.

Every error derives from :class:`TemplateError`, itself an
:class:`arcface.errors.IomfaceError`, so callers can catch the whole family while tests
assert the precise type. Each error that bad input can trigger leaves the store unchanged.
Messages name the subject or the field concerned.

=============================  ====================================================
error                          raised when
=============================  ====================================================
:class:`InvalidInputError`     a record or argument is malformed (bad id, code, salt...)
:class:`UnknownSubjectError`   the subject has no active template (never enrolled or
                               revoked)
:class:`DuplicateEnrollmentError`  the subject already has an active template of that
                               purpose
:class:`RevokedTemplateError`  (an UnknownSubjectError) the subject's templates were
                               all revoked
:class:`StoreError`            the database itself is the problem: unreadable or foreign
                               file, schema from the future, a row or the event log that
                               fails authentication (tampered, replayed, rolled back),
                               lost connection
:class:`ClusterError`          (a StoreError) the cluster holding a sharded
                               identification gallery cannot be reached or joined, or
                               a shard was lost
:class:`PolicyError`           the policy refuses: raw embeddings not enabled, weak
                               token, missing or failed proof for revoke/reissue
:class:`WeakTokenError`        (a PolicyError) a new token is weaker than the policy allows
:class:`RateLimitedError`      too many failed attempts / calls in the policy's window
:class:`ConflictError`         the subject changed since the expected version
=============================  ====================================================
"""

from __future__ import annotations

from arcface.errors import IomfaceError


class TemplateError(IomfaceError):
    """Base class of every error the template store and service raise on purpose."""


class InvalidInputError(TemplateError, ValueError):
    """A record or argument is malformed; the message names the field."""


class UnknownSubjectError(TemplateError, LookupError):
    """The subject has no active template: it was never enrolled, or it was revoked."""

    def __init__(self, message: str, subject_id: str | None = None):
        super().__init__(message)
        self.subject_id = subject_id


class DuplicateEnrollmentError(TemplateError, ValueError):
    """The subject already has an active template of (one of) the given purposes."""

    def __init__(self, message: str, subject_id: str | None = None):
        super().__init__(message)
        self.subject_id = subject_id


class RevokedTemplateError(UnknownSubjectError):
    """The subject has no active template because its templates were revoked (a kind of
    :class:`UnknownSubjectError`: it is not an active subject any more)."""


class StoreError(TemplateError, RuntimeError):
    """A database-level problem: unreadable or foreign file, schema newer than this code,
    corrupt row (checksum mismatch), failed connection."""


class ClusterError(StoreError):
    """The Ray cluster that holds a sharded identification gallery
    (:mod:`iom.search.sharded`) cannot be started, reached or joined, or one of its
    shards was lost; the message names the address. Nothing was written."""


class PolicyError(TemplateError, PermissionError):
    """The service's policy refuses the request: raw embeddings where they are not enabled,
    a token too weak to protect a template, a revoke or reissue without a valid proof."""


class RateLimitedError(TemplateError):
    """Too many attempts: failed verifications of one subject, or calls of one client or
    about one subject, within the policy's window. Nothing was compared. ``retry_after`` is
    the number of seconds after which a call may be admitted again (when known)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class WeakTokenError(PolicyError):
    """A new token (or credential) is weaker than the policy's minimum: the request is well
    formed but its content is refused (HTTP 422, not 403)."""


class ConflictError(TemplateError):
    """The subject changed since the version the caller expected (a concurrent reissue or
    revocation won); nothing was written."""
