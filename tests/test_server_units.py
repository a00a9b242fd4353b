"""Pieces of the HTTP service that need no server: the API-key file, the error → status map,
the photo caps, the JSON log format and the Prometheus text."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib

import pytest

pytest.importorskip("fastapi")


# ---------------------------------------------------------------------------- API keys
def test_keys_are_stored_hashed_and_authenticate_by_role(tmp_path):
    from iom.server.api_keys import KeyRing, add_key, key_digest, list_keys, remove_key

    path = str(tmp_path / "keys.json")
    admin, client = add_key(path, "desk-1", "admin"), add_key(path, "door-1", "client")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    text = open(path).read()
    assert admin not in text and client not in text and key_digest(admin) in text
    ring = KeyRing(path)
    assert (ring.authenticate(admin).name, ring.authenticate(admin).role) == ("desk-1", "admin")
    assert ring.authenticate(client).role == "client"
    assert ring.authenticate(admin[:-1] + ("A" if admin[-1] != "A" else "B")) is None
    assert ring.authenticate("") is None and ring.authenticate(None) is None and ring.authenticate("x" * 10_000) is None
    assert [k["name"] for k in list_keys(path)] == ["desk-1", "door-1"]
    assert all("sha256" not in k for k in list_keys(path))
    remove_key(path, "door-1")
    assert ring.authenticate(client) is None          # re-read on change
    assert ring.authenticate(admin).name == "desk-1"


def test_key_file_errors_name_the_problem(tmp_path):
    from iom.server.api_keys import KeyRing, add_key, remove_key
    from iom.errors import InvalidInputError

    path = str(tmp_path / "keys.json")
    with pytest.raises(InvalidInputError, match="role"):
        add_key(path, "x", "root")
    with pytest.raises(InvalidInputError, match="name"):
        add_key(path, "../etc", "admin")
    assert not os.path.exists(path)                     # nothing written on a refusal
    add_key(path, "desk", "admin")
    with pytest.raises(InvalidInputError, match="exists"):
        add_key(path, "desk", "client")
    with pytest.raises(InvalidInputError, match="no key named"):
        remove_key(path, "nobody")
    os.chmod(path, 0o644)
    with pytest.raises(InvalidInputError, match="chmod 600"):
        KeyRing(path)
    os.chmod(path, 0o600)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else", "keys": []}))
    bad.chmod(0o600)
    with pytest.raises(InvalidInputError, match="not a key file"):
        KeyRing(str(bad))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"format": "iomface-api-keys/1", "keys": []}))
    empty.chmod(0o600)
    with pytest.raises(InvalidInputError, match="holds no key"):
        KeyRing(str(empty))


def test_a_key_file_broken_while_serving_keeps_the_last_good_keys(tmp_path):
    from iom.server.api_keys import KeyRing, add_key

    path = str(tmp_path / "keys.json")
    key = add_key(path, "desk", "admin")
    said = []
    ring = KeyRing(path, on_error=said.append)
    with open(path, "w") as f:
        f.write("{ not json")
    assert ring.authenticate(key).name == "desk" and len(said) == 1 and "invalid JSON" in said[0]


def test_removing_the_key_file_revokes_every_key_until_it_is_back(tmp_path):
    from iom.server.api_keys import KeyRing, add_key

    path = tmp_path / "keys.json"
    key = add_key(str(path), "desk", "admin")
    said = []
    ring = KeyRing(str(path), on_error=said.append)
    assert ring.authenticate(key).name == "desk"
    saved = path.read_bytes()
    path.unlink()
    assert ring.authenticate(key) is None and len(said) == 1 and "every key is revoked" in said[0]
    assert ring.authenticate(key) is None and len(said) == 1            # said once
    path.write_bytes(saved)
    path.chmod(0o600)
    assert ring.authenticate(key).name == "desk"                         # back with the file


def test_proxy_headers_are_trusted_only_from_the_proxies_named():
    import argparse

    from iom.server.serve import trusted_proxies, uvicorn_options
    from iom.errors import InvalidInputError

    assert trusted_proxies("") == []
    assert trusted_proxies(" 10.0.0.5, 192.168.1.0/24 ") == ["10.0.0.5", "192.168.1.0/24"]
    with pytest.raises(InvalidInputError, match="not an IP address"):
        trusted_proxies("proxy.example")
    base = dict(host="127.0.0.1", port=8080, tls_cert=None, tls_key=None)
    off = uvicorn_options(argparse.Namespace(**base, forwarded_allow_ips=""))
    assert off["proxy_headers"] is False and off["forwarded_allow_ips"] is None   # uvicorn's default trusts 127.0.0.1
    on = uvicorn_options(argparse.Namespace(**base, forwarded_allow_ips="10.0.0.5"))
    assert on["proxy_headers"] is True and on["forwarded_allow_ips"] == "10.0.0.5"


class _SlowAligner:
    """A stand-in FaceAligner: takes ``seconds`` a photo and counts how many run at once."""

    running = peak = 0
    lock = None

    def __init__(self, seconds, **kwargs):
        self.seconds = seconds

    def align(self, photo):
        import time
        from types import SimpleNamespace

        with _SlowAligner.lock:
            _SlowAligner.running += 1
            _SlowAligner.peak = max(_SlowAligner.peak, _SlowAligner.running)
        time.sleep(self.seconds)
        with _SlowAligner.lock:
            _SlowAligner.running -= 1
        return [SimpleNamespace(image=photo)]


@pytest.mark.parametrize("detectors", [1, 2])
def test_photo_alignment_runs_in_parallel_but_one_at_a_time_per_key(monkeypatch, detectors):
    import threading
    import time

    import arcface.align
    import arcface.align.detector
    from iom.server.uploads import PhotoAligner
    from iom.errors import RateLimitedError

    _SlowAligner.running = _SlowAligner.peak = 0
    _SlowAligner.lock = threading.Lock()
    monkeypatch.setattr(arcface.align, "FaceAligner", lambda **kw: _SlowAligner(0.3, **kw))
    monkeypatch.setattr(arcface.align.detector, "new_detector", lambda: object())
    aligner = PhotoAligner(112, detectors=detectors)
    results, errors = {}, {}

    def call(name, client):
        try:
            results[name] = aligner([b"photo-" + name.encode()], aligned=False, client=client)
        except RateLimitedError as e:
            errors[name] = e

    threads = [threading.Thread(target=call, args=(n, c)) for n, c in
               (("a1", "alice"), ("b1", "bob"), ("a2", "alice"))]
    start = time.perf_counter()
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    assert set(errors) == {"a2"} and errors["a2"].retry_after == 1.0     # alice's second, while her first runs
    assert results == {"a1": [b"photo-a1"], "b1": [b"photo-b1"]}
    assert _SlowAligner.peak == detectors                                  # bob does not wait behind alice...
    assert (took < 0.55) if detectors == 2 else (took > 0.55)             # ...unless there is one detector
    assert aligner([b"x"], aligned=False, client="alice") == [b"x"]      # free again afterwards
    assert aligner([b"crop"], aligned=True, client="alice") == [b"crop"]  # aligned crops pass through


def test_work_budget_bounds_the_seconds_a_key_spends_in_a_window():
    from iom.service.rate import WorkBudget

    now = [0.0]
    budget = WorkBudget(60.0, clock=lambda: now[0])
    assert budget.wait("k", 10.0) is None
    budget.charge("k", 4.0)                       # at t=0
    now[0] = 20.0
    budget.charge("k", 7.0)                       # at t=20: 11 s spent
    assert budget.wait("k", 10.0) == pytest.approx(40.0)     # until the first 4 s leave (t=60)
    assert budget.wait("k", 12.0) is None and budget.wait("other", 10.0) is None
    now[0] = 61.0
    assert budget.wait("k", 10.0) is None         # 7 s left in the window
    budget.charge("k", 5.0)
    assert budget.wait("k", 10.0) == pytest.approx(19.0)     # the t=20 work leaves at t=80
    assert budget.wait("k", 3.0) == pytest.approx(60.0)      # even without it 5 s > 3: the newest leaves at 121


def test_photo_alignment_time_is_budgeted_per_key(monkeypatch):
    import arcface.align
    import arcface.align.detector
    from iom.server.uploads import PhotoAligner
    from iom.errors import RateLimitedError

    _SlowAligner.running = _SlowAligner.peak = 0
    _SlowAligner.lock = __import__("threading").Lock()
    monkeypatch.setattr(arcface.align, "FaceAligner", lambda **kw: _SlowAligner(0.15, **kw))
    monkeypatch.setattr(arcface.align.detector, "new_detector", lambda: object())
    aligner = PhotoAligner(112, detectors=1, seconds_per_minute=0.25)
    aligner([b"a"], aligned=False, client="alice")                    # 0.15 s
    aligner([b"b"], aligned=False, client="alice")                    # 0.30 s: over the 0.25 s budget now
    with pytest.raises(RateLimitedError, match="s of face detection in the last minute") as e:
        aligner([b"c"], aligned=False, client="alice")
    assert 55 < e.value.retry_after <= 60
    assert aligner([b"d"], aligned=False, client="bob") == [b"d"]     # another key is not held up
    assert aligner([b"crop"], aligned=True, client="alice") == [b"crop"]   # aligned crops cost no detection
    assert PhotoAligner(112, seconds_per_minute=None)._budget is not None
    from iom.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        PhotoAligner(112, seconds_per_minute=0)


# ---------------------------------------------------------------------------- errors and limits
def test_typed_errors_map_to_statuses():
    from arcface.errors import FaceTooSmallError, ImageDecodeError, ImageTooLargeError, NoFaceError
    from iom.server.http_errors import error_headers, public_message, status_of
    from iom.server.uploads import PayloadTooLargeError
    from iom import errors as e

    cases = {PayloadTooLargeError("x"): 413, ImageTooLargeError("x"): 413, e.RateLimitedError("x"): 429,
             e.DuplicateEnrollmentError("x"): 409, e.ConflictError("x"): 409, e.UnknownSubjectError("x"): 404,
             e.RevokedTemplateError("x"): 404, e.WeakTokenError("x"): 422, e.PolicyError("x"): 403,
             NoFaceError("x"): 422, FaceTooSmallError("x"): 422, ImageDecodeError("x"): 422,
             e.InvalidInputError("x"): 422, e.StoreError("x"): 503, e.TemplateError("x"): 500, KeyError("x"): 500}
    assert {type(x).__name__: status_of(x)[0] for x in cases} == {type(x).__name__: s for x, s in cases.items()}
    assert error_headers(e.RateLimitedError("x", retry_after=12.2), 429) == {"Retry-After": "13"}
    assert error_headers(e.RateLimitedError("x"), 429) == {"Retry-After": "60"}
    leak = e.StoreError("connection to postgresql://user:pw@db failed")
    assert "pw" not in public_message(leak, 503) and "user" not in public_message(leak, 503)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


class _Upload:
    def __init__(self, data: bytes, filename: str = "p.png"):
        self.file, self.filename = io.BytesIO(data), filename


def test_photo_caps_read_the_header_before_decoding():
    from arcface.errors import ImageDecodeError
    from iom.server.uploads import PayloadTooLargeError, UploadLimits, read_photo
    from iom.errors import InvalidInputError

    limits = UploadLimits(max_photo_bytes=1000, max_pixels=10_000, max_photos=2)
    assert read_photo(_Upload(_png_header(100, 100)), limits) == _png_header(100, 100)   # at the cap
    with pytest.raises(PayloadTooLargeError, match="megapixel"):
        read_photo(_Upload(_png_header(101, 100)), limits)                            # header only: a bomb
    with pytest.raises(PayloadTooLargeError, match="1,000-byte"):
        read_photo(_Upload(_png_header(10, 10) + b"\0" * 1000), limits)
    with pytest.raises(InvalidInputError, match="empty"):
        read_photo(_Upload(b""), limits)
    with pytest.raises(ImageDecodeError):
        read_photo(_Upload(b"GIF89a-not-really"), limits)
    with pytest.raises(InvalidInputError, match="max_pixels"):
        UploadLimits(max_pixels=0)
    assert limits.max_request_bytes == 2 * 1000 + 64 * 1024


# ---------------------------------------------------------------------------- logs and metrics
def test_json_log_lines():
    from iom.server.logs import setup_logging

    stream = io.StringIO()
    setup_logging("info", stream)
    logging.getLogger("iomface.http").info("request", extra={"fields": {"route": "/v1/identify", "status": 200}})
    logging.getLogger("iomface.audit").warning("verify rejected subject=%r", "alice")
    logging.getLogger("iomface.http").debug("not at info level")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["logger"], r["level"], r["msg"]) for r in records] == [
        ("iomface.http", "info", "request"), ("iomface.audit", "warning", "verify rejected subject='alice'")]
    assert records[0]["route"] == "/v1/identify" and records[0]["status"] == 200 and records[0]["ts"].endswith("Z")
    for name in ("iomface", "uvicorn", "uvicorn.error"):     # leave the loggers as other tests expect them
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = [], True


def test_prometheus_text_counts_and_histograms():
    from iom.server.metrics import BUCKETS, Metrics

    m = Metrics()
    for seconds, status in ((0.004, 200), (0.3, 200), (20.0, 429)):
        m.observe("/v1/identify", status, seconds)
    lines = m.render({"iomface_subjects": 3}).splitlines()
    assert 'iomface_requests_total{route="/v1/identify",status="200"} 2' in lines
    assert 'iomface_requests_total{route="/v1/identify",status="429"} 1' in lines
    buckets = {float(line.split('le="')[1].split('"')[0]) if "+Inf" not in line else float("inf"):
               int(line.split()[-1]) for line in lines if line.startswith("iomface_request_seconds_bucket")}
    assert buckets == {**{b: (1 if b < 0.3 else 2) for b in BUCKETS}, float("inf"): 3}   # cumulative
    assert 'iomface_rate_limited_total{route="/v1/identify"} 1' in lines and "iomface_subjects 3" in lines
    assert any(line.startswith('iomface_request_seconds_sum{route="/v1/identify"} 20.304') for line in lines)


def test_bad_serve_options_fail_before_anything_loads(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "IOMFACE_APP_SECRET": "a-long-enough-secret-123"}
    db = tmp_path / "t.db"
    for options, message in ((["--port", "99999"], "--port must be in 0..65535"),
                             (["--tls_cert", "c.pem"], "give --tls_cert and --tls_key together"),
                             (["--tls_cert", "c.pem", "--tls_key", "k.pem"], "--tls_cert c.pem: no such file")):
        done = subprocess.run([sys.executable, "-m", "iom.cli", "serve", "--db", str(db),
                               "--keys_file", str(tmp_path / "keys.json"), *options],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not db.exists()                       # nothing written
