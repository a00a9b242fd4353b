"""The HTTP template service through a real server: ``iomface serve`` under uvicorn on a
loopback port, driven by httpx, on SQLite and on PostgreSQL.

One server per store (module scope: the model loads once each); every test takes fresh API
keys and subject names, so the per-key and per-subject limits of one test do not touch
another. The SQLite server runs with ``--admin_scores`` (similarities to admin keys) and
``--device_codes`` (device-keyed codes in place of photos), the PostgreSQL one with neither. Faces are LFW crops from ../shared/data (aligned=true);
one test sends a raw photo through MTCNN.
"""

from __future__ import annotations

import itertools
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.conftest import shared_data
from tests.pg_server import postgres_server, unavailable_reason

httpx = pytest.importorskip("httpx")
REPO = Path(__file__).resolve().parents[1]

TOKEN = "correct-horse-battery-staple"
OPTIONS = ["--max_photo_bytes", "300000", "--max_megapixels", "4", "--max_photos", "3",
           "--verify_per_minute", "12", "--identify_per_minute", "10", "--subject_verify_per_minute", "6",
           "--max_failures", "4", "--failure_window_s", "600"]
_names = itertools.count()


def crops(person: str) -> list[bytes]:
    folder = shared_data("lfw_112", person)
    return [p.read_bytes() for p in sorted(Path(folder).glob("*.jpg"))]


@pytest.fixture(scope="module")
def faces():
    """Aligned crops of a few LFW people (at least 4 photos each)."""
    return {p: crops(p) for p in ("Bill_Simon", "Hans_Blix", "Joan_Laporta", "Michael_Bloomberg",
                                  "Naomi_Watts", "Richard_Gere", "Russell_Simmons")}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory):
    from iom.server.launch import LocalServer

    shared_data("lfw_112")
    folder = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        with LocalServer(db=str(folder / "t.db"), options=OPTIONS + ["--admin_scores", "--device_codes"],
                         folder=folder) as s:
            s.admin_scores = s.device_codes = True
            yield s
        return
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests need a local server: {reason}")
    import psycopg

    with postgres_server() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "http_test"')
        with LocalServer(db=pg.url_for("http_test"), options=OPTIONS, folder=folder) as s:
            s.admin_scores = s.device_codes = False
            yield s


class Api:
    """A thin client: one key, JSON answers."""

    def __init__(self, server, key: str | None, name: str | None = None):
        self.server, self.name = server, name
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(base_url=server.url, headers=headers, timeout=120.0)

    def enrol(self, subject, photos, token=TOKEN, aligned=True):
        return self.http.post(f"/v1/subjects/{subject}", data={"token": token, "aligned": str(aligned).lower()},
                              files=[("photos", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)])

    def verify(self, subject, photo, token=TOKEN, aligned=True):
        return self.http.post(f"/v1/subjects/{subject}/verify", data={"token": token, "aligned": str(aligned).lower()},
                              files={"photo": ("probe.jpg", photo, "image/jpeg")})

    def identify(self, photo, top_k=5, aligned=True):
        return self.http.post("/v1/identify", data={"top_k": str(top_k), "aligned": str(aligned).lower()},
                              files={"photo": ("probe.jpg", photo, "image/jpeg")})

    def reissue(self, subject, photos, new_token, expected_version=None):
        data = {"new_token": new_token, "aligned": "true"}
        if expected_version is not None:
            data["expected_version"] = str(expected_version)
        return self.http.post(f"/v1/subjects/{subject}/reissue", data=data,
                              files=[("photos", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)])

    def revoke(self, subject, expected_version=None):
        params = {} if expected_version is None else {"expected_version": expected_version}
        return self.http.delete(f"/v1/subjects/{subject}", params=params)


def _keyed_api(server, role: str) -> "Api":
    name = f"{role}-{next(_names)}"
    return Api(server, server.add_key(name, role), name)


@pytest.fixture
def admin(server):
    return _keyed_api(server, "admin")


@pytest.fixture
def client(server):
    return _keyed_api(server, "client")


def subject() -> str:
    return f"subject-{next(_names)}"


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["status"] == status and body["message"] and body["request_id"] == response.headers["x-request-id"]
    return body


def no_scores(document) -> bool:
    text = json.dumps(document)
    return "similarity" not in text and '"threshold": null' not in text and "score" not in text


# ---------------------------------------------------------------------------- endpoints
def test_health_and_openapi_need_no_key(server):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": "iom_mobilefacenet_ms1m_512x8", "store": "ok"}
    schema = httpx.get(server.url + "/openapi.json").json()
    routes = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    assert routes == {("/health", "get"), ("/metrics", "get"), ("/v1/subjects/{subject_id}", "post"),
                      ("/v1/subjects/{subject_id}", "delete"), ("/v1/subjects/{subject_id}", "get"),
                      ("/v1/subjects/{subject_id}/verify", "post"), ("/v1/identify", "post"),
                      ("/v1/subjects/{subject_id}/reissue", "post"), ("/v1/subjects", "get"),
                      ("/v1/compare", "post")}


def test_enrol_verify_identify(server, admin, client, faces):
    alice, bob = subject(), subject()
    r = admin.enrol(alice, faces["Bill_Simon"][:2])
    assert r.status_code == 201, r.text
    assert r.json() == {"subject": alice, "templates": [{"id": r.json()["templates"][0]["id"], "purpose": "verify"},
                                                       {"id": r.json()["templates"][1]["id"], "purpose": "identify"}]}
    assert admin.enrol(bob, faces["Hans_Blix"][:2]).status_code == 201
    genuine = client.verify(alice, faces["Bill_Simon"][3])
    assert genuine.status_code == 200 and genuine.json() == {"subject": alice, "accepted": True}
    point = admin.verify(alice, faces["Bill_Simon"][3]).json()["operating_point"]   # administrators only
    assert point["far_target"] == 1e-3 and 0 < point["threshold"] < 1
    assert client.verify(alice, faces["Bill_Simon"][3], token="wrong-horse-battery-staple").json()["accepted"] is False
    assert client.verify(alice, faces["Hans_Blix"][3]).json()["accepted"] is False
    unknown = client.verify(subject(), faces["Bill_Simon"][3])      # no enumeration: a plain rejection
    assert unknown.status_code == 200 and unknown.json()["accepted"] is False
    found = client.identify(faces["Hans_Blix"][3], top_k=3)
    assert found.status_code == 200
    assert found.json() == {"candidates": [{"subject": bob, "rank": 1}]}   # no gallery size, no threshold
    seen = admin.identify(faces["Hans_Blix"][3], top_k=3).json()["operating_point"]
    assert seen["gallery_size"] >= 2 and 0 < seen["threshold"] <= 1
    assert all(no_scores(r.json()) for r in (genuine, found))
    listed = admin.http.get("/v1/subjects").json()["subjects"]
    assert {alice, bob} <= set(listed)
    shown = admin.http.get(f"/v1/subjects/{alice}").json()
    assert [t["purpose"] for t in shown["templates"]] == ["verify", "identify"]
    assert "code" not in json.dumps(shown) and "salt" not in json.dumps(shown)
    bad = error(admin.enrol("bad id!", faces["Hans_Blix"][:1]), 422)          # as the command line refuses it
    assert bad["type"] == "invalid_input" and "'!'" in bad["message"]
    assert "bad id!" not in admin.http.get("/v1/subjects", params={"all": "true"}).text


def test_compare_two_photos(server, admin, client, faces):
    def compare(a, b, api=client):
        return api.http.post("/v1/compare", data={"aligned": "true"},
                             files={"photo_a": ("a.jpg", a, "image/jpeg"), "photo_b": ("b.jpg", b, "image/jpeg")})

    same, other = compare(*faces["Hans_Blix"][:2]), compare(faces["Hans_Blix"][0], faces["Bill_Simon"][0])
    assert same.json()["accepted"] is True and other.json()["accepted"] is False
    assert same.json()["similarity"] > other.json()["similarity"]
    assert "operating_point" not in same.json()                     # the threshold: administrators only
    shipped = json.loads((REPO / "models" / "iom_mobilefacenet_ms1m_512x8" / "calibration.json").read_text())
    seen = compare(*faces["Hans_Blix"][:2], api=admin).json()["operating_point"]
    assert seen["threshold"] == pytest.approx(shipped["threshold"])
    assert error(client.http.post("/v1/compare", files={"photo_a": ("a.jpg", faces["Hans_Blix"][0])}), 400)


def test_raw_photo_goes_through_face_detection(server, admin, client):
    raw = Path(shared_data("raw", "lfw", "Aaron_Peirsol"))
    photos = sorted(raw.glob("*.jpg"))
    name = subject()
    r = admin.enrol(name, [photos[0].read_bytes()], aligned=False)
    assert r.status_code == 201, r.text
    assert client.verify(name, photos[1].read_bytes(), aligned=False).json()["accepted"] is True
    # a raw photo sent as an aligned crop is refused: it is not 112x112
    wrong = error(client.verify(name, photos[1].read_bytes(), aligned=True), 422)
    assert wrong["type"] == "invalid_input" and "'probe.jpg'" in wrong["message"]     # the upload's file name
    blank = _png(200, 200)
    no_face = error(client.verify(name, blank, aligned=False), 422)
    assert no_face["type"] == "no_face" and "'probe.jpg'" in no_face["message"] and "<bytes>" not in no_face["message"]
    no_face = error(admin.enrol(subject(), [photos[0].read_bytes(), blank], aligned=False), 422)
    assert "photo 2 '1.jpg'" in no_face["message"]                                      # which of several


def test_reissue_and_revoke(server, admin, client, faces):
    for other in (subject(), subject()):                 # others enrolled first: not the subject's changes
        assert admin.enrol(other, faces["Hans_Blix"][:1]).status_code == 201
    name = subject()
    assert admin.enrol(name, faces["Joan_Laporta"][:2]).status_code == 201
    version = admin.http.get(f"/v1/subjects/{name}").json()["templates"][0]["version"]
    assert version == 1                                  # the subject's own changes: its enrolment
    new = "new-horse-battery-staple"
    assert error(admin.reissue(name, faces["Joan_Laporta"][:2], new, expected_version=version + 5), 409)["type"] \
        == "conflict"
    r = admin.reissue(name, faces["Joan_Laporta"][:2], new, expected_version=version)
    assert r.status_code == 200 and len(r.json()["templates"]) == 2
    shown = admin.http.get(f"/v1/subjects/{name}").json()["templates"]
    assert len(shown) == 4 and {t["version"] for t in shown} == {2}
    assert client.verify(name, faces["Joan_Laporta"][3]).json()["accepted"] is False       # the old token
    assert client.verify(name, faces["Joan_Laporta"][3], token=new).json()["accepted"] is True
    assert error(admin.revoke(name, expected_version=1), 409)["type"] == "conflict"        # stale: nothing revoked
    r = admin.revoke(name, expected_version=2)
    assert r.status_code == 200 and r.json() == {"subject": name, "revoked": 2}
    assert client.verify(name, faces["Joan_Laporta"][3], token=new).json()["accepted"] is False
    assert all(c["subject"] != name for c in client.identify(faces["Joan_Laporta"][3]).json()["candidates"])
    assert error(admin.revoke(name), 404)["type"] == "unknown_subject"
    assert error(admin.reissue(name, faces["Joan_Laporta"][:1], new), 404)["type"] == "unknown_subject"
    rows = admin.http.get("/v1/subjects", params={"all": "true"}).json()["subjects"]
    assert {"subject": name, "status": "revoked", "version": 3}.items() <= \
        next(r for r in rows if r["subject"] == name).items()
    assert name not in admin.http.get("/v1/subjects").json()["subjects"]


def test_metrics_count_requests_by_route(server, admin, client):
    client.http.get("/v1/subjects")                                     # a 403, counted
    text = admin.http.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    lines = text.text.splitlines()
    forbidden = [line for line in lines if line.startswith('iomface_requests_total{route="/v1/subjects",status="403"}')]
    assert forbidden and int(forbidden[0].split()[-1]) >= 1
    assert any(line.startswith('iomface_request_seconds_bucket{route="/health",le="+Inf"}') for line in lines)
    assert error(client.http.get("/metrics"), 403)["type"] == "forbidden"


# ---------------------------------------------------------------------------- authentication and roles
def test_keys_and_roles(server, admin, client, faces):
    anonymous = Api(server, None)
    body = error(anonymous.http.get("/v1/subjects"), 401)
    assert "Authorization" in body["message"]
    assert anonymous.http.get("/v1/subjects").headers["www-authenticate"].startswith("Bearer")
    assert error(anonymous.http.get("/v1/subjects", headers={"Authorization": "Basic abc"}), 401)
    assert error(Api(server, "iomf_" + "A" * 43).http.get("/v1/subjects"), 401)["message"] == "unknown API key"
    assert error(Api(server, "not-a-key").http.get("/v1/subjects"), 401)
    name = subject()
    assert error(client.enrol(name, faces["Naomi_Watts"][:1]), 403)["type"] == "forbidden"
    assert error(client.revoke(name), 403)
    assert error(client.reissue(name, faces["Naomi_Watts"][:1], "new-horse-battery-staple"), 403)
    assert error(client.http.get("/v1/subjects"), 403)
    assert admin.enrol(name, faces["Naomi_Watts"][:1]).status_code == 201
    assert admin.verify(name, faces["Naomi_Watts"][2]).json()["accepted"] is True        # admins may verify
    # a removed key stops working without a restart; a new one works at once
    key_name = f"temp-{next(_names)}"
    temp = Api(server, server.add_key(key_name, "client"))
    assert temp.verify(name, faces["Naomi_Watts"][2]).status_code == 200
    server.remove_key(key_name)
    assert error(temp.verify(name, faces["Naomi_Watts"][2]), 401)


def test_similarities_only_to_admins_and_only_when_enabled(server, admin, client, faces):
    name = subject()
    assert admin.enrol(name, faces["Richard_Gere"][:2]).status_code == 201
    as_client = client.verify(name, faces["Richard_Gere"][3]).json()
    assert as_client["accepted"] is True and no_scores(as_client)
    found = client.identify(faces["Richard_Gere"][3], top_k=5).json()["candidates"]
    assert found[0] == {"subject": name, "rank": 1} and all(set(c) == {"subject", "rank"} for c in found)
    as_admin = admin.verify(name, faces["Richard_Gere"][3]).json()
    ranked = admin.identify(faces["Richard_Gere"][3], top_k=5).json()["candidates"]
    if server.admin_scores:
        assert as_admin["similarity"] >= as_admin["threshold"] > 0
        assert ranked[0]["subject"] == name and ranked[0]["similarity"] > 0.3
        assert [c["similarity"] for c in ranked] == sorted((c["similarity"] for c in ranked), reverse=True)
    else:
        assert no_scores(as_admin) and all(set(c) == {"subject", "rank"} for c in ranked)


def test_device_codes_instead_of_photos(server, admin, client):
    """A device running the exported model sends its code relabelled with the key provisioned for
    its API key's name (only with --device_codes); the un-keyed code is not taken as such."""
    import numpy as np

    from iom.export.reference import relabel
    from iom.service.template_keys import device_key_material

    secret = (server.folder / "app.secret").read_bytes().strip()

    def keyed(c, device):                                            # what the device sends
        return relabel(c[None], device_key_material(secret, device), 512, 8)[0]

    code = np.random.default_rng(next(_names)).integers(0, 8, 512)
    far = code.copy()
    far[:400] = (far[:400] + 1) % 8                                  # 22% of the groups agree
    text = lambda c: ",".join(str(int(v)) for v in c)                # noqa: E731
    name = subject()
    r = admin.http.post(f"/v1/subjects/{name}", data={"token": TOKEN, "code": text(keyed(code, admin.name))})
    if not server.device_codes:
        assert "device codes" in error(r, 403)["message"]
        return
    assert r.status_code == 201, r.text

    def verify(c, who=name):
        return client.http.post(f"/v1/subjects/{who}/verify", data={"token": TOKEN, "code": c})

    assert verify(text(keyed(code, client.name))).json()["accepted"] is True
    assert verify(text(keyed(far, client.name))).json()["accepted"] is False
    assert verify(text(code)).json()["accepted"] is False           # the universal code stands for no one
    assert verify(text(keyed(code, admin.name))).json()["accepted"] is False   # nor another device's
    found = client.http.post("/v1/identify", data={"code": text(keyed(code, client.name))}).json()["candidates"]
    assert found[0] == {"subject": name, "rank": 1}
    other = subject()                                                # the per-subject limit is 6 a minute here
    assert "512 integers" in error(verify(text(code[:10]), other), 422)["message"]
    assert error(verify("1,2,x", other), 422) and error(verify(text(code) + ",8", other), 422)
    assert "not both" in error(client.http.post(f"/v1/subjects/{other}/verify", data={"token": TOKEN, "code": text(code)},
                                                files={"photo": ("p.jpg", b"x")}), 422)["message"]


# ---------------------------------------------------------------------------- bad requests
def _png(width: int, height: int) -> bytes:
    """A valid all-grey RGB PNG (a decompression bomb when large: its rows compress to ~nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x80" * (3 * width)
    body = zlib.compressobj(9)
    data = b"".join(body.compress(row) for _ in range(height)) + body.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_bad_requests_get_typed_errors_and_write_nothing(server, admin, client, faces):
    name = subject()
    before = admin.http.get("/v1/subjects", params={"all": "true"}).json()["subjects"]
    photo = faces["Russell_Simmons"][0]
    # 400: malformed (missing field, wrong type, no multipart)
    r = admin.http.post(f"/v1/subjects/{name}", files={"photos": ("a.jpg", photo, "image/jpeg")})
    assert "token" in error(r, 400)["message"]
    assert error(client.identify(photo, top_k="many"), 400)
    assert error(client.identify(photo, top_k=0), 400)
    assert error(admin.http.post(f"/v1/subjects/{name}", json={"token": TOKEN}), 400)
    # 413: a photo over the byte cap, a request over the body cap, a decompression bomb
    assert error(admin.enrol(name, [photo + b"\0" * 300_000]), 413)["type"] == "payload_too_large"
    too_long = error(admin.enrol(name, [b"\0" * 600_000] * 2), 413)          # 1.2 MB > 3 x 300 kB + 64 kB
    assert "request" in too_long["message"]
    bomb = _png(6000, 6000)                   # 36 megapixels in a ~0.1 MB file
    assert len(bomb) < 300_000
    assert "megapixel" in error(admin.enrol(name, [bomb], aligned=False), 413)["message"]
    huge = _png(1, 1).replace(struct.pack(">II", 1, 1), struct.pack(">II", 100_000, 100_000), 1)
    assert error(client.verify(name, huge), 413)
    # 422: not an image, an unaligned crop as aligned, a weak token, a bad subject id
    assert error(admin.enrol(name, [b"not an image at all"]), 422)["type"] == "bad_photo"
    assert error(admin.enrol(name, [_png(100, 100)]), 422)["type"] == "invalid_input"
    weak = error(admin.enrol(name, [photo], token="aaaa"), 422)
    assert weak["type"] == "weak_token" and "aaaa" not in weak["message"]
    assert error(admin.enrol("%20leading-space", [photo]), 422)["type"] == "invalid_input"
    assert "at most 3" in error(admin.enrol(name, [photo] * 4), 422)["message"]     # over --max_photos
    assert admin.http.get("/v1/subjects", params={"all": "true"}).json()["subjects"] == before
    # 409: enrolled twice
    assert admin.enrol(name, [photo]).status_code == 201
    assert error(admin.enrol(name, [photo]), 409)["type"] == "already_enrolled"
    # 404 and 405
    assert error(admin.http.get(f"/v1/subjects/{subject()}"), 404)
    assert error(admin.http.put(f"/v1/subjects/{name}"), 405)


def test_concurrent_enrolments_of_one_subject(server, faces):
    name = subject()
    keys = [Api(server, server.add_key(f"desk-{next(_names)}", "admin")) for _ in range(6)]
    photos = faces["Michael_Bloomberg"]
    statuses = [None] * len(keys)

    def enrol(i):
        statuses[i] = keys[i].enrol(name, [photos[i % len(photos)]]).status_code

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [409] * (len(keys) - 1)
    templates = keys[0].http.get(f"/v1/subjects/{name}").json()["templates"]
    assert sorted(t["purpose"] for t in templates if t["revoked_at"] is None) == ["identify", "verify"]


# ---------------------------------------------------------------------------- rate limits and attacks
def test_online_token_guessing_is_locked_out_per_subject(server, admin, faces):
    """The attack of the security issue: the victim's face in hand, tokens guessed through
    verify. After --max_failures (4) wrong guesses the subject is refused to everyone, with
    Retry-After; a second key (a colluding device) gets no more guesses."""
    victim = subject()
    assert admin.enrol(victim, faces["Bill_Simon"][:2]).status_code == 201
    face = faces["Bill_Simon"][4]
    attackers = [Api(server, server.add_key(f"mallory-{next(_names)}", "client")) for _ in range(2)]
    answered = 0
    for guess in ("password1", "letmein-123", "iloveyou-99", "qwerty-2024"):
        r = attackers[0].verify(victim, face, token=guess)
        assert r.status_code == 200 and r.json()["accepted"] is False
        answered += 1
    refused = error(attackers[1].verify(victim, face, token="sunshine-77"), 429)
    assert refused["type"] == "rate_limited" and answered == 4
    r = attackers[1].verify(victim, face, token=TOKEN)               # even the right token now
    assert r.status_code == 429 and 500 <= int(r.headers["retry-after"]) <= 600
    other = subject()                                                 # other subjects are unaffected
    assert admin.enrol(other, faces["Hans_Blix"][:2]).status_code == 201
    assert attackers[0].verify(other, faces["Hans_Blix"][4]).json()["accepted"] is True


def test_rate_limits_per_key_and_per_subject(server, admin, faces):
    name = subject()
    assert admin.enrol(name, faces["Naomi_Watts"][:2]).status_code == 201
    probe = faces["Naomi_Watts"][5]
    a, b = (Api(server, server.add_key(f"door-{next(_names)}", "client")) for _ in range(2))
    # per subject: 6 verifications a minute, whichever key asks (all genuine: no failure counted)
    results = [k.verify(name, probe).status_code for k in (a, b, a, b, a, b, a)]
    assert results == [200] * 6 + [429]
    # per key: 10 identifications a minute for key c; key d is not affected
    c, d = (Api(server, server.add_key(f"door-{next(_names)}", "client")) for _ in range(2))
    codes = [c.identify(probe).status_code for _ in range(11)]
    assert codes == [200] * 10 + [429]
    r = c.identify(probe)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert c.identify(b"not a photo at all").status_code == 429          # refused before the photo is read
    # the client name is the key's: a made-up one in the form does not give a new budget
    r = c.http.post("/v1/identify", data={"aligned": "true", "client": "someone-else"},
                    files={"photo": ("p.jpg", probe, "image/jpeg")})
    assert r.status_code == 429
    assert d.identify(probe).status_code == 200


# ---------------------------------------------------------------------------- logs
def logged(server, request_id: str, timeout_s: float = 20.0) -> list[dict]:
    """The server's JSON log records of one request. The access line is written once the response
    has gone out, so under load it may trail the client's answer by a moment: wait for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
        mine = [x for x in records if x.get("request_id") == request_id]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def test_a_forwarded_for_header_from_an_untrusted_peer_is_ignored(server, admin):
    """Without --forwarded_allow_ips no proxy is trusted: a caller cannot name its own address."""
    r = admin.http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert r.status_code == 200
    mine = logged(server, r.headers["x-request-id"])
    assert mine and mine[-1]["peer"] == "127.0.0.1"
    assert "203.0.113.9" not in "\n".join(server.log_lines())


def test_logs_are_json_without_tokens_keys_or_photos(server, admin, client, faces):
    name = subject()
    secret_token = "never-log-this-token-7f3a9c"
    assert admin.enrol(name, faces["Hans_Blix"][:1], token=secret_token).status_code == 201
    client.verify(name, faces["Hans_Blix"][2], token=secret_token)
    last = client.verify(name, faces["Hans_Blix"][2], token="also-secret-guess-123")
    assert logged(server, last.headers["x-request-id"])           # its access line written
    lines = server.log_lines()
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, not_json[:5]                                 # every line is JSON
    records = [json.loads(line) for line in lines]
    requests = [r for r in records if r.get("logger") == "iomface.http"]
    text = "\n".join(lines)
    for secret in (secret_token, "also-secret-guess-123", server.admin_key, server.client_key,
                   admin.http.headers["authorization"].split()[1], client.http.headers["authorization"].split()[1]):
        assert secret not in text
    assert all(set(r) >= {"ts", "level", "logger", "msg"} for r in records)
    verify_logs = [r for r in requests if r["route"] == "/v1/subjects/{subject_id}/verify"]
    assert verify_logs and all(r["credential"] and r["role"] == "client" for r in verify_logs[-2:])
    assert name not in json.dumps(requests)          # the route template, not the path


# ---------------------------------------------------------------------------- the README
# The README's HTTP session (keys, serve, curl: enrol, verify, identify, compare, reissue at version 1,
# revoke at version 2, with others enrolled before) runs as written, with every other README command,
# in tests/test_readme_commands.py.
