"""The requests the HTTP benches send to a local ``iomface serve``
(:class:`~iom.server.launch.LocalServer`), on an ``httpx.Client`` opened on its URL.

Photos go as multipart files (``photos`` to enrol, ``photo`` to verify and identify); the form
fields are the API's (``token``, ``top_k``, ``aligned``); ``aligned=None`` leaves the field out
(the server's default: it detects and aligns the face). Each call returns the response."""

from __future__ import annotations

import re


def bearer(key: str) -> dict:
    """The ``Authorization`` header of an API key."""
    return {"Authorization": f"Bearer {key}"}


def _form(aligned: bool | None, fields: dict, extra: dict | None) -> dict:
    data = {k: v for k, v in fields.items() if v is not None}
    if aligned is not None:
        data["aligned"] = "true" if aligned else "false"
    return {**data, **(extra or {})}


def enrol(http, key: str, subject: str, photo: bytes, token: str, aligned: bool | None = None,
          filename: str = "p.jpg", content_type: str = "image/jpeg"):
    """``POST /v1/subjects/{subject}`` (an admin key): one photo, the user's token."""
    return http.post(f"/v1/subjects/{subject}", headers=bearer(key),
                     files=[("photos", (filename, photo, content_type))],
                     data=_form(aligned, {"token": token}, None))


def verify(http, key: str, subject: str, photo: bytes, token: str, aligned: bool | None = None,
           filename: str = "p.jpg", content_type: str = "image/jpeg", headers: dict | None = None,
           data: dict | None = None, params: dict | None = None):
    """``POST /v1/subjects/{subject}/verify``; ``headers``, ``data``, ``params``: more of each."""
    return http.post(f"/v1/subjects/{subject}/verify", headers={**bearer(key), **(headers or {})},
                     files={"photo": (filename, photo, content_type)},
                     data=_form(aligned, {"token": token}, data), params=params)


def identify(http, key: str, photo: bytes, top_k: int | None = None, aligned: bool | None = None,
             filename: str = "p.jpg", content_type: str = "image/jpeg", headers: dict | None = None,
             data: dict | None = None, params: dict | None = None):
    """``POST /v1/identify``; ``top_k=None``: the server's default."""
    return http.post("/v1/identify", headers={**bearer(key), **(headers or {})},
                     files={"photo": (filename, photo, content_type)},
                     data=_form(aligned, {"top_k": None if top_k is None else str(top_k)}, data), params=params)


def retry_after(r) -> int | None:
    """The ``Retry-After`` of a response in whole seconds, or None."""
    value = r.headers.get("retry-after")
    return int(value) if value and value.isdigit() else None


def metrics_counts(text: str) -> dict[str, int]:
    """``iomface_requests_total`` of the server's ``/metrics``: 'route status' -> n."""
    out = {}
    for m in re.finditer(r'^iomface_requests_total\{route="([^"]*)",status="(\d+)"\} (\d+)$', text, re.M):
        out[f"{m.group(1)} {m.group(2)}"] = int(m.group(3))
    return out


def served_model(server) -> str | None:
    """The model a LocalServer says it serves (its ``serving`` log line)."""
    import json

    return next((json.loads(x).get("model") for x in server.log_lines() if '"msg": "serving"' in x), None)
