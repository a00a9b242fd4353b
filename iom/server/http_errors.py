"""Typed errors → HTTP statuses, and the JSON error body every failure returns.

=====  ==============================================================================
400    malformed request: a missing or mistyped field, an unparsable multipart body
401    no API key, or one the server does not know (``WWW-Authenticate: Bearer``)
403    the key's role may not do this; the policy refuses
404    no such subject (only where the caller may know: admin routes)
409    the subject is already enrolled; it changed since ``expected_version``
413    a photo or the request is over the byte or pixel caps (decompression bombs)
422    well-formed but unusable: an undecodable photo, no face, a bad subject id, a weak token
429    a rate limit (``Retry-After`` says when to come back)
503    the template store is unreachable
=====  ==============================================================================

Messages are the typed errors' own (they name the field, never echo a token); a 500 or
503 says nothing about the internals.
"""

from __future__ import annotations

import math

from arcface.errors import DataFormatError, FaceTooSmallError, IomfaceError, ImageTooLargeError, NoFaceError
from iom.errors import (ConflictError, DuplicateEnrollmentError, InvalidInputError, PolicyError,
                        RateLimitedError, StoreError, TemplateError, UnknownSubjectError,
                        WeakTokenError)
from iom.server.uploads import PayloadTooLargeError

#: (exception type, status, error type name), the first match wins
STATUSES = (
    (PayloadTooLargeError, 413, "payload_too_large"),
    (ImageTooLargeError, 413, "payload_too_large"),
    (RateLimitedError, 429, "rate_limited"),
    (DuplicateEnrollmentError, 409, "already_enrolled"),
    (ConflictError, 409, "conflict"),
    (UnknownSubjectError, 404, "unknown_subject"),
    (WeakTokenError, 422, "weak_token"),
    (PolicyError, 403, "forbidden"),
    (NoFaceError, 422, "no_face"),
    (FaceTooSmallError, 422, "no_face"),
    (DataFormatError, 422, "bad_photo"),
    (InvalidInputError, 422, "invalid_input"),
    (StoreError, 503, "store_unavailable"),
    (TemplateError, 500, "template_error"),
    (IomfaceError, 422, "invalid_input"),
)
REASONS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
           409: "conflict", 413: "payload_too_large", 422: "invalid_input", 429: "rate_limited",
           500: "internal_error", 503: "unavailable"}


def status_of(exc: BaseException) -> tuple[int, str]:
    """``(HTTP status, error type)`` of a typed error (500 for anything else)."""
    for kind, status, name in STATUSES:
        if isinstance(exc, kind):
            return status, name
    return 500, "internal_error"


def error_body(status: int, kind: str, message: str, request_id: str = "") -> dict:
    return {"error": {"status": status, "type": kind, "message": message, "request_id": request_id}}


def error_headers(exc: BaseException, status: int) -> dict[str, str]:
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="iomface"'}
    if status == 429:
        wait = getattr(exc, "retry_after", None)
        return {"Retry-After": str(max(1, math.ceil(wait))) if wait is not None else "60"}
    return {}


def public_message(exc: BaseException, status: int) -> str:
    """What the caller is told: the typed error's message, or nothing of the internals."""
    if status == 503:
        return "the template store is unavailable; try again later"
    if status == 500:
        return "internal error (see the server log with the request id)"
    return " ".join(str(exc).split())
