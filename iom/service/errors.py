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
                               file, schema from the future, corrupt row, lost connection
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
