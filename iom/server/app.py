"""The HTTP API of the template service (FastAPI; run by :mod:`iom.server.serve`).

=======  ==================================  ======  ==========================================
method   route                               role    what
=======  ==================================  ======  ==========================================
POST     /v1/subjects/{subject_id}           admin   enrol from photos (multipart) and a token
POST     /v1/subjects/{subject_id}/verify    client  1:1 decision for a photo and the token
POST     /v1/identify                        client  1:N ranked candidates for a photo
POST     /v1/compare                         client  same person or not, for two photos (no store)
POST     /v1/subjects/{subject_id}/reissue   admin   new templates under a new token
DELETE   /v1/subjects/{subject_id}           admin   revoke every active template
GET      /v1/subjects                        admin   enrolled subjects (``?all=true``: revoked too)
GET      /v1/subjects/{subject_id}           admin   template metadata and version (no codes)
GET      /health                             none    liveness and store reachability
GET      /metrics                            admin   Prometheus counters
GET      /openapi.json                       none    the OpenAPI schema
=======  ==================================  ======  ==========================================

Every request but ``/health`` and ``/openapi.json`` needs ``Authorization: Bearer KEY``; an
admin key may also verify and identify. Answers are decisions and ranks; similarities go
only to admin keys, and only when the server runs with ``--admin_scores``. Errors are JSON
(:mod:`iom.server.http_errors`). Work that loads the CPU (alignment, embedding, scrypt)
runs in the server's thread pool, not on the event loop.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from arcface.errors import IomfaceError
from iom.server.api_keys import Credential, KeyRing
from iom.server.http_errors import REASONS, error_body, error_headers, public_message, status_of
from iom.server.metrics import Metrics
from iom.server.uploads import PhotoAligner, UploadLimits, parse_code, read_photo

request_log = logging.getLogger("iomface.http")
ROLE_CAN = {"admin": {"admin", "client"}, "client": {"client"}}
MAX_TOP_K = 50


class _AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ServerState:
    """What the routes share: the service, the keys, the photo limits and aligner, the
    administrator secret the service accepts (random, per process), the metrics."""

    service: object
    keys: KeyRing
    limits: UploadLimits
    aligner: PhotoAligner
    admin_secret: bytes
    admin_scores: bool = False
    metrics: Metrics | None = None


def _credential(request: Request) -> Credential:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise _AuthError(401, "an API key is needed: send the header 'Authorization: Bearer KEY'")
    if scheme.lower() != "bearer" or not key.strip():
        raise _AuthError(401, "the Authorization header must be 'Bearer KEY'")
    credential = request.app.state.server.keys.authenticate(key.strip())
    if credential is None:
        raise _AuthError(401, "unknown API key")
    request.state.credential = credential
    return credential


def role(needed: str):
    """A dependency: the request's credential, which must have role ``needed`` (admin keys
    may do what client keys do)."""

    def check(request: Request) -> Credential:
        credential = _credential(request)
        if needed not in ROLE_CAN[credential.role]:
            raise _AuthError(403, f"this needs an {needed} key; {credential.name!r} is a {credential.role} key")
        return credential

    return check


Admin = Annotated[Credential, Depends(role("admin"))]
Client = Annotated[Credential, Depends(role("client"))]
Photo = Annotated[UploadFile | None, File(description="a photo (JPEG, PNG, ...); with aligned=true a 112x112 crop")]
Photos = Annotated[list[UploadFile] | None, File(description="one or more photos of the subject (fused)")]
Code = Annotated[str | None, Form(description="instead of photos, with serve --device_codes: the exported model's "
                                              "code of one face relabelled with the device key provisioned for "
                                              "this API key's name (iomface device-key NAME), comma-separated "
                                              "integers")]
Aligned = Annotated[bool, Form(description="the photos are aligned 112x112 crops: skip face detection")]


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _photos(state: ServerState, uploads: list[UploadFile], aligned: bool, client: str) -> list:
    """The uploads read within the caps, then aligned (unless ``aligned``; one raw-photo
    request of a ``client`` at a time)."""
    from iom.errors import InvalidInputError

    if len(uploads) > state.limits.max_photos:
        raise InvalidInputError(f"{len(uploads)} photos: at most {state.limits.max_photos} per request")
    data = [read_photo(u, state.limits, f"photo {i + 1}" if len(uploads) > 1 else "photo")
            for i, u in enumerate(uploads)]
    return state.aligner(data, aligned, client)


def _sample(state: ServerState, uploads: list[UploadFile] | None, aligned: bool, code: str | None,
            client: str) -> dict:
    """The service's keyword arguments for a request's sample: ``photos`` or a device ``code``."""
    from iom.errors import InvalidInputError

    if code is not None:
        if uploads:
            raise InvalidInputError("give photos or a code, not both")
        return {"code": parse_code(code), "device": client}     # keyed by the device holding this API key
    if not uploads:
        raise InvalidInputError("no photo given (or, with serve --device_codes, a code)")
    return {"photos": _photos(state, uploads, aligned, client)}


def _templates(ids) -> list[dict]:
    return [{"id": int(i), "purpose": p} for i, p in zip(ids, ("verify", "identify"))]


def _sees_scores(state: ServerState, credential: Credential) -> bool:
    return state.admin_scores and credential.role == "admin"


class _Edge:
    """The outermost ASGI layer: gives each request an id (``X-Request-ID``), logs it and counts
    it in the metrics once answered, and turns the 413 that the body-size limit sends by itself
    (plain text, before any route runs) into the service's JSON error."""

    def __init__(self, app, state: ServerState):
        self.app, self._server = app, state

    def __getattr__(self, name):            # the FastAPI app's attributes (state, routes, openapi...)
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        start, status, swallow = time.perf_counter(), 500, False
        limit = self._server.limits.max_request_bytes

        async def reply(message):
            nonlocal status, swallow
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if status == 413 and not dict(headers).get(b"content-type", b"").startswith(b"application/json"):
                    swallow = True
                    body = json.dumps(error_body(413, "payload_too_large",
                                                 f"the request is larger than {limit:,} bytes", rid)).encode()
                    await send({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"x-request-id", rid.encode()), (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
                    return
                message = {**message, "headers": headers + [(b"x-request-id", rid.encode())]}
            if not swallow:
                await send(message)

        try:
            await self.app(scope, receive, reply)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or \
                (scope["path"] if scope["path"] == "/openapi.json" else "(unmatched)")
            self._server.metrics.observe(route, status, seconds)
            credential = scope["state"].get("credential")
            client = scope.get("client")
            request_log.info("request", extra={"fields": {
                "request_id": rid, "method": scope["method"], "route": route, "status": status,
                "ms": round(seconds * 1000, 1), "credential": credential.name if credential else None,
                "role": credential.role if credential else None, "peer": client[0] if client else None}})


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application over ``state``."""
    from iom.service.service import TemplateService

    state.metrics = state.metrics or Metrics()
    app = FastAPI(title="iomface template service", version="1",
                  description="Cancelable face templates (deep IoM): enrol, verify, identify, revoke, reissue. "
                              "Authenticate with 'Authorization: Bearer KEY'.",
                  docs_url=None, redoc_url=None, max_body_size=state.limits.max_request_bytes,
                  form_limits={"max_files": state.limits.max_photos + 1, "max_fields": 16,
                               "max_part_size": 64 * 1024})
    app.state.server = state

    # ---------------------------------------------------------------- errors and request log
    def reply(request: Request, exc: BaseException, status: int, kind: str, message: str) -> JSONResponse:
        rid = getattr(request.state, "request_id", "")
        return JSONResponse(error_body(status, kind, message, rid), status_code=status,
                            headers=error_headers(exc, status))

    @app.exception_handler(_AuthError)
    async def auth_error(request: Request, exc: _AuthError):
        return reply(request, exc, exc.status, REASONS[exc.status], str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg', '')}"
                             for e in exc.errors())
        return reply(request, exc, 400, "bad_request", f"malformed request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else REASONS.get(status, "error")
        if status == 413:
            message = f"the request is larger than {state.limits.max_request_bytes:,} bytes"
        return reply(request, exc, status, REASONS.get(status, "error"), message)

    def typed_error(request: Request, exc: Exception):
        status, kind = status_of(exc)
        if status >= 500:
            request_log.error("request failed", exc_info=exc,
                              extra={"fields": {"request_id": getattr(request.state, "request_id", ""),
                                                "error": type(exc).__name__}})
        return reply(request, exc, status, kind, public_message(exc, status))

    app.add_exception_handler(IomfaceError, typed_error)
    app.add_exception_handler(Exception, typed_error)          # anything else: 500, nothing of it said

    # ---------------------------------------------------------------- routes
    @app.get("/health", tags=["operations"])
    def health(request: Request):
        """Liveness: the model served and whether the store answers."""
        service = _state(request).service
        try:
            service.store.head()
            store = "ok"
        except Exception:       # noqa: BLE001 - any failure means unavailable; no details out
            store = "unavailable"
        body = {"status": "ok" if store == "ok" else "degraded", "model": service.pipeline.model_id,
                "store": store}
        return JSONResponse(body, status_code=200 if store == "ok" else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics(request: Request, _: Admin):
        """Prometheus text: requests by route and status, latency histograms, rate limits."""
        s = _state(request)
        return PlainTextResponse(s.metrics.render({"iomface_subjects": len(s.service.list())}),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/subjects/{subject_id}", status_code=201, tags=["templates"])
    def enrol(request: Request, subject_id: str, credential: Admin,
              token: Annotated[str, Form(description="the subject's token (keys the verification template)")],
              photos: Photos = None, aligned: Aligned = False, code: Code = None):
        """Enrol a subject: one verification template (under the token) and one identification
        template. Several photos are fused. 409 if the subject is already enrolled."""
        s = _state(request)
        ids = s.service.enroll(subject_id, user_token=token, **_sample(s, photos, aligned, code, credential.name))
        return {"subject": subject_id, "templates": _templates(ids)}

    @app.post("/v1/subjects/{subject_id}/verify", tags=["templates"])
    def verify(request: Request, subject_id: str, credential: Client,
               token: Annotated[str, Form(description="the subject's token")], photo: Photo = None,
               aligned: Aligned = False, code: Code = None):
        """Whether the photo matches the subject under the token: ``accepted`` true or false
        (an unknown subject, a wrong token and another face are the same rejection); the
        operating point only to administrator keys."""
        s = _state(request)
        s.service.admit("verify", credential.name, subject_id)          # before any work on the photo
        probe = _sample(s, [photo] if photo else None, aligned, code, credential.name)
        d = s.service.verify(subject_id, probe["photos"][0] if "photos" in probe else None, token,
                             client=credential.name, admitted=True, code=probe.get("code"))
        out = {"subject": subject_id, "accepted": bool(d.accepted)}
        if credential.role == "admin":          # the operating point: to administrators only
            out["operating_point"] = s.service.operating_point.to_dict()
        if _sees_scores(s, credential):
            out.update(similarity=d.similarity, threshold=d.threshold)
        return out

    @app.post("/v1/identify", tags=["templates"])
    def identify(request: Request, credential: Client, photo: Photo = None,
                 top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K, description="at most this many candidates")] = 5,
                 aligned: Aligned = False, code: Code = None):
        """Enrolled subjects matching the photo, best first, accepted at the 1:N threshold of the
        gallery's size; the operating point (gallery size, threshold) only to administrator keys."""
        s = _state(request)
        s.service.admit("identify", credential.name)
        probe = _sample(s, [photo] if photo else None, aligned, code, credential.name)
        hits = s.service.identify(probe["photos"][0] if "photos" in probe else None, top_k, client=credential.name,
                                  admitted=True, code=probe.get("code"))
        if _sees_scores(s, credential):
            out = [{"subject": c.subject_id, "rank": c.rank, "accepted": c.accepted, "similarity": c.similarity}
                   for c in hits]
        else:
            out = [{"subject": c.subject_id, "rank": c.rank} for c in hits if c.accepted]
        if credential.role != "admin":          # a client key learns neither the gallery's size nor the threshold
            return {"candidates": out}
        return {"candidates": out, "operating_point": s.service.identification_point()}

    @app.post("/v1/compare", tags=["photos"])
    def compare(request: Request, credential: Client, photo_a: Annotated[UploadFile, File()],
                photo_b: Annotated[UploadFile, File()], aligned: Aligned = False):
        """Same person or not, for two photos the caller holds (no store, no token): the
        similarity of their un-keyed codes and the decision at the operating point. Counted
        against the key's verification limit."""
        s = _state(request)
        s.service.admit("compare", credential.name)
        a, b = _photos(s, [photo_a, photo_b], aligned, credential.name)
        similarity = s.service.pipeline.similarity(a, b)
        point = s.service.operating_point
        out = {"similarity": similarity, "accepted": similarity >= point.threshold}
        return {**out, "operating_point": point.to_dict()} if credential.role == "admin" else out

    @app.post("/v1/subjects/{subject_id}/reissue", tags=["templates"])
    def reissue(request: Request, subject_id: str, credential: Admin,
                new_token: Annotated[str, Form(description="the subject's new token")],
                photos: Photos = None, aligned: Aligned = False, code: Code = None,
                expected_version: Annotated[int | None, Form(description="refuse if the version changed")] = None):
        """Revoke the subject's templates and enrol new ones under ``new_token``, atomically."""
        s = _state(request)
        ids = s.service.reissue(subject_id, new_token=new_token, admin_secret=s.admin_secret,
                                **_sample(s, photos, aligned, code, credential.name),
                                expected_version=expected_version, client=credential.name)
        return {"subject": subject_id, "templates": _templates(ids)}

    @app.delete("/v1/subjects/{subject_id}", tags=["templates"])
    def revoke(request: Request, subject_id: str, credential: Admin,
               expected_version: Annotated[int | None, Query(description="refuse if the version changed")] = None):
        """Revoke every active template of the subject (enrol again afterwards)."""
        s = _state(request)
        n = s.service.revoke(subject_id, admin_secret=s.admin_secret, expected_version=expected_version,
                             client=credential.name)
        return {"subject": subject_id, "revoked": n}

    @app.get("/v1/subjects", tags=["subjects"])
    def list_subjects(request: Request, credential: Admin,
                      all: Annotated[bool, Query(description="include revoked subjects")] = False):
        """Enrolled subjects; with ``all=true`` also revoked ones, with status and dates."""
        return {"subjects": TemplateService.subject_rows(_state(request).service.store, all)}

    @app.get("/v1/subjects/{subject_id}", tags=["subjects"])
    def show(request: Request, subject_id: str, credential: Admin):
        """A subject's template metadata and version (no codes, no salts)."""
        from iom.errors import UnknownSubjectError
        from iom.store.records import check_subject_id

        templates = _state(request).service.get(check_subject_id(subject_id))
        if not templates:
            raise UnknownSubjectError(f"subject {subject_id!r} was never enrolled", subject_id)
        return {"subject": subject_id, "templates": templates}

    return _Edge(app, state)
