"""The template service under attack: each finding of the security review (issue 11) as a test.

Every test here failed on the service before the fix (commit f622519): it returned exact
similarities, kept identification templates under one permanent key, checked rows with a
plain SHA-256, accepted any token and any reissue. The attack suite with success rates is
``scripts/attack_eval.py`` (tests/test_attack_eval.py runs a small version).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import threading

import numpy as np
import pytest

from iom.errors import (ConflictError, DuplicateEnrollmentError, InvalidInputError, PolicyError,
                        RateLimitedError, StoreError)
from tests.test_iom_service import ADMIN, DIM, M, Q, SECRET, _NoEmbedder, people

FAST = 2**10          # scrypt cost for tests (the default policy's 2^14 is ~60 ms a call)


@pytest.fixture(scope="module")
def hasher():
    from arcface.pretrained import MODELS_DIR
    from iom.defaults import DEFAULT_HASHER
    from iom.hashing.hasher import DeepIoMHasher

    return DeepIoMHasher.load(os.path.join(MODELS_DIR, DEFAULT_HASHER))


def make_service(path, hasher, witness=None, admin=ADMIN, **policy):
    """A service on the SQLite file ``path``; embeddings allowed (the attacker's strongest
    capability), everything else the default policy."""
    from iom.service.pipeline import Pipeline
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore

    policy = ServicePolicy(**{"allow_embeddings": True, "scrypt_n": FAST, **policy})
    return TemplateService(Pipeline(_NoEmbedder(), hasher), SQLiteStore(path), SECRET, policy=policy,
                           admin_secret=admin, witness=witness)


@pytest.fixture
def service(tmp_path, hasher):
    s = make_service(tmp_path / "t.db", hasher)
    yield s
    s.store.close()


def raw(path, sql, params=()):
    """SQL straight on the file, as an attacker with write access runs it."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def unpacked(code: bytes) -> np.ndarray:
    from iom.search.packing import from_bytes, unpack_codes

    return unpack_codes(from_bytes(code, M, Q)[None], M, Q)[0]


def enroll_people(service, n=6):
    x = people(n, 3)
    for i in range(n):
        service.enroll(f"s{i}", embeddings=x[i, :2], user_token=f"token-{i}-secret")
    return x


# ---------------------------------------------------------------------------- 1. score oracle
def test_default_service_takes_photos_not_embeddings(tmp_path, hasher):
    from iom.service.pipeline import Pipeline
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore

    with SQLiteStore(tmp_path / "d.db") as store:
        service = TemplateService(Pipeline(_NoEmbedder(), hasher), store, SECRET)
        x = people(1, 2)[0]
        for call in (lambda: service.enroll("a", embeddings=x, user_token="token-a-secret"),
                     lambda: service.verify("a", embedding=x[0], user_token="token-a-secret"),
                     lambda: service.identify(embedding=x[0])):
            with pytest.raises(PolicyError, match="embeddings"):
                call()
        assert store.subjects(include_revoked=True) == []


def test_no_scores_leave_the_default_service(service):
    x = enroll_people(service)
    genuine = service.verify("s0", user_token="token-0-secret", embedding=x[0, 2])
    assert genuine.accepted and genuine.similarity is None and genuine.threshold is None
    hits = service.identify(embedding=x[3, 2], top_k=5)
    assert [(c.subject_id, c.rank, c.accepted, c.similarity) for c in hits] == [("s3", 1, True, None)]
    # random probes (the oracle attack's queries) get no candidate at all: nothing to fit
    rng = np.random.default_rng(1)
    for probe in rng.normal(size=(30, DIM)):
        assert service.identify(embedding=probe, top_k=5) == []


# ---------------------------------------------------------------------------- 2. identification keys
def test_identification_templates_have_their_own_keys(service, hasher):
    """One embedding enrolled as two subjects (chosen-plaintext): their stored identification
    codes agree at chance; the same embedding's un-keyed code is not in either."""
    x = people(1, 2)[0]
    service.enroll("twin-a", embeddings=x, user_token="token-a-secret")
    service.enroll("twin-b", embeddings=x, user_token="token-b-secret")
    a = unpacked(service.store.active("twin-a")["identify"].code)
    b = unpacked(service.store.active("twin-b")["identify"].code)
    fused = x.mean(0, keepdims=True) / np.linalg.norm(x.mean(0))
    plain = hasher.codes(fused)[0]
    assert abs(np.mean(a == b) - 1 / Q) < 0.06
    assert abs(np.mean(a == plain) - 1 / Q) < 0.06 and abs(np.mean(b == plain) - 1 / Q) < 0.06
    # and identification still finds each
    assert {c.subject_id for c in service.identify(embedding=x[0], top_k=2)} == {"twin-a", "twin-b"}


def test_reissued_identification_template_is_unlinkable(service):
    x = enroll_people(service)
    old = service.store.active("s2")["identify"]
    service.reissue("s2", new_token="token-2-renewed", embeddings=x[2, :2], admin_secret=ADMIN)
    new = service.store.active("s2")["identify"]
    assert old.salt != new.salt
    assert abs(np.mean(unpacked(old.code) == unpacked(new.code)) - 1 / Q) < 0.06


# ---------------------------------------------------------------------------- 3. authenticated rows
def _public_checksum(path, template_id):
    """What an attacker without the secret can compute: the checksum under the public key."""
    from iom.store.records import TemplateRecord, record_checksum
    from iom.store.schema import COLUMNS

    row = raw(path, f"SELECT {', '.join(COLUMNS)} FROM templates WHERE template_id = ?", (template_id,))[0]
    return record_checksum(TemplateRecord(**dict(zip(COLUMNS, row))))


def test_flipped_code_with_recomputed_checksum_is_refused(tmp_path, service):
    x = enroll_people(service, 2)
    path = tmp_path / "t.db"
    tid = service.store.active("s0")["verify"].template_id
    code = bytearray(raw(path, "SELECT code FROM templates WHERE template_id = ?", (tid,))[0][0])
    code[0] ^= 1
    raw(path, "UPDATE templates SET code = ? WHERE template_id = ?", (bytes(code), tid))
    raw(path, "UPDATE templates SET checksum = ? WHERE template_id = ?", (_public_checksum(path, tid), tid))
    with pytest.raises(StoreError, match=f"template {tid} is corrupt or forged"):
        service.verify("s0", user_token="token-0-secret", embedding=x[0, 2])


def test_substituted_row_is_refused(tmp_path, service):
    """verify('s0', mallory's face, mallory's token) after copying mallory's code and salt
    into s0's row: the MAC fails, and with a matching MAC the bound key would still differ."""
    x = enroll_people(service, 2)
    path = tmp_path / "t.db"
    victim = service.store.active("s0")["verify"].template_id
    mallory = service.store.active("s1")["verify"].template_id
    code, salt = raw(path, "SELECT code, salt FROM templates WHERE template_id = ?", (mallory,))[0]
    raw(path, "UPDATE templates SET code = ?, salt = ? WHERE template_id = ?", (code, salt, victim))
    raw(path, "UPDATE templates SET checksum = ? WHERE template_id = ?", (_public_checksum(path, victim), victim))
    with pytest.raises(StoreError, match="forged"):
        service.verify("s0", user_token="token-1-secret", embedding=x[1, 2])


def test_keys_are_bound_to_subject_purpose_version_and_model():
    from iom.service.template_keys import binding_context, identification_key, verification_key

    salt = os.urandom(16)
    base = ("alice", "verify", 210, "model")
    keys = {verification_key(b"token-xyz", SECRET, salt, binding_context(*ctx), FAST)
            for ctx in (base, ("mallory", "verify", 210, "model"), ("alice", "identify", 210, "model"),
                        ("alice", "verify", 211, "model"), ("alice", "verify", 210, "other"))}
    assert len(keys) == 5
    assert identification_key(SECRET, salt, binding_context(*base)) != \
        identification_key(SECRET, salt, binding_context("mallory", *base[1:]))
    # length-prefixed: moving a character between fields changes the context
    assert binding_context("ab", "c", 1, "m") != binding_context("a", "bc", 1, "m")


def test_replayed_pre_revocation_row_is_refused(tmp_path, service):
    x = enroll_people(service, 2)
    path = tmp_path / "t.db"
    saved = raw(path, "SELECT template_id, revoked_at, checksum FROM templates WHERE subject_id = 's0'")
    service.revoke("s0", admin_secret=ADMIN)
    for tid, revoked_at, checksum in saved:          # the whole old row state, valid MAC included
        raw(path, "UPDATE templates SET revoked_at = ?, checksum = ? WHERE template_id = ?",
            (revoked_at, checksum, tid))
    with pytest.raises(StoreError, match="revoked"):
        service.verify("s0", user_token="token-0-secret", embedding=x[0, 2])
    with pytest.raises(StoreError, match="revoked"):
        service.identify(embedding=x[0, 2])


def _roll_back_reissue(tmp_path, hasher, witness):
    """Enroll, back the file up, reissue under a new token, restore the backup; the service
    that made the reissue and a fresh one are returned with the embeddings."""
    path = tmp_path / "t.db"
    first = make_service(path, hasher, witness=witness)
    x = enroll_people(first, 2)
    first.store.close()
    shutil.copy(path, tmp_path / "backup.db")
    second = make_service(path, hasher, witness=witness)
    second.reissue("s0", new_token="token-0-renewed", embeddings=x[0, :2], user_token="token-0-secret",
                   proof_embedding=x[0, 2])
    assert not second.verify("s0", user_token="token-0-secret", embedding=x[0, 2]).accepted
    second.store.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    shutil.copy(tmp_path / "backup.db", path)
    return x


def test_rolled_back_reissue_is_detected_with_a_witness(tmp_path, hasher):
    witness = tmp_path / "witness" / "head"
    witness.parent.mkdir()
    x = _roll_back_reissue(tmp_path, hasher, witness)
    with pytest.raises(StoreError, match="rolled back"):
        make_service(tmp_path / "t.db", hasher, witness=witness)
    assert x is not None


def test_rolled_back_rows_are_detected_by_a_running_service(tmp_path, service):
    """Old rows restored behind a running service (log entries deleted too): detected."""
    x = enroll_people(service, 2)
    path = tmp_path / "t.db"
    saved = raw(path, "SELECT * FROM templates WHERE subject_id = 's0'")
    service.reissue("s0", new_token="token-0-renewed", embeddings=x[0, :2], admin_secret=ADMIN)
    raw(path, "DELETE FROM templates WHERE subject_id = 's0'")
    raw(path, "DELETE FROM events WHERE op = 'reissue'")
    marks = ", ".join("?" * len(saved[0]))
    for row in saved:
        raw(path, f"INSERT INTO templates VALUES ({marks})", row)
    with pytest.raises(StoreError, match="rolled back"):
        service.verify("s0", user_token="token-0-secret", embedding=x[0, 2])


def test_edited_event_log_is_detected(tmp_path, hasher):
    path = tmp_path / "t.db"
    first = make_service(path, hasher)
    x = enroll_people(first, 3)
    first.revoke("s1", admin_secret=ADMIN)
    first.enroll("s9", embeddings=x[2, :2], user_token="token-9-secret")
    first.store.close()
    shutil.copy(path, tmp_path / "clean.db")
    for edit in ("DELETE FROM events WHERE op = 'revoke'",                       # a gap in the chain
                 "UPDATE events SET seq = seq - 1 WHERE seq > 4"):               # ... closed up
        if "UPDATE" in edit:
            raw(path, edit)
        else:
            shutil.copy(tmp_path / "clean.db", path)
            raw(path, edit)
        with pytest.raises(StoreError, match="event"):
            make_service(path, hasher).verify("s0", user_token="token-0-secret", embedding=x[0, 2])


# ---------------------------------------------------------------------------- 4. tokens
@pytest.mark.parametrize("token", ["1", "1234", "123456", "aaaaaaaaaa", "abcdefgh", "qwerty"])
def test_weak_tokens_are_refused(service, token):
    before = service.store.dump()
    with pytest.raises(PolicyError, match="too weak"):
        service.enroll("a", embeddings=people(1, 1)[0], user_token=token)
    assert service.store.dump() == before


def test_token_strength_estimate():
    from iom.service.policy import token_bits

    assert token_bits("1") < 4 and token_bits("123456789") < 7 and token_bits("zzzzzzzzzzzz") < 5
    assert token_bits("abqzmxrt") == pytest.approx(8 * np.log2(26))          # random letters, some adjacent
    assert token_bits("8302749163") == pytest.approx(10 * np.log2(10))
    assert token_bits("k7Qp2xVm") == pytest.approx(8 * np.log2(62))
    assert token_bits(os.urandom(16)) >= 100


def test_verification_key_is_scrypt_then_bound_hkdf():
    """Against a reference written from the formulas: scrypt(token, salt), then RFC 5869
    HKDF-SHA256 over len(secret) || secret || stretched with the bound info."""
    import hmac
    import struct

    from iom.service.template_keys import (binding_context, key_version_for, scrypt_cost,
                                           verification_key)

    salt, token = bytes(range(16)), b"token-for-reference"
    ctx = binding_context("alice", "verify", key_version_for(FAST), "model")
    stretched = hashlib.scrypt(token, salt=salt, n=FAST, r=8, p=1, dklen=32)
    prk = hmac.new(salt, struct.pack(">I", len(SECRET)) + SECRET + stretched, hashlib.sha256).digest()
    okm = hmac.new(prk, b"iomface/v2/verify-key\x00" + ctx + b"\x01", hashlib.sha256).digest()
    from iom.keys import TemplateKey

    assert verification_key(token, SECRET, salt, ctx, FAST) == TemplateKey(okm)
    assert scrypt_cost(key_version_for(2**14)) == 2**14
    with pytest.raises(ValueError, match="version 1"):
        scrypt_cost(1)


def test_failed_verifications_are_limited_and_logged(service):
    x = enroll_people(service, 2)
    for _ in range(service.policy.max_failures):
        assert not service.verify("s0", user_token="guess-token", embedding=x[1, 0], client="mallory").accepted
    with pytest.raises(RateLimitedError):
        service.verify("s0", user_token="token-0-secret", embedding=x[0, 2], client="alice")   # even the right one
    assert service.verify("s1", user_token="token-1-secret", embedding=x[1, 2]).accepted    # others unaffected
    log = service.store.attempts()
    assert [(s, c, op, out) for _, s, c, op, out in log] == \
        [("s0", "mallory", "verify", "rejected")] * service.policy.max_failures + \
        [("s0", "alice", "rate-limited", "refused")]


def test_identify_calls_are_limited_per_client(tmp_path, hasher):
    service = make_service(tmp_path / "r.db", hasher, identify_per_minute=3)
    x = enroll_people(service, 2)
    for _ in range(3):
        service.identify(embedding=x[0, 2], client="c1")
    with pytest.raises(RateLimitedError):
        service.identify(embedding=x[0, 2], client="c1")
    assert service.identify(embedding=x[0, 2], client="c2")[0].subject_id == "s0"
    service.store.close()


def test_verify_calls_are_limited_before_the_key_derivation(tmp_path, hasher, monkeypatch):
    from iom.service import service as service_mod

    service = make_service(tmp_path / "v.db", hasher, verify_per_minute=2)
    x = enroll_people(service, 1)
    for _ in range(2):
        assert service.verify("s0", user_token="token-0-secret", embedding=x[0, 2], client="c").accepted
    derived = []
    monkeypatch.setattr(service_mod, "verification_key", lambda *a: derived.append(a))
    with pytest.raises(RateLimitedError):
        service.verify("nobody", user_token="any-token", embedding=x[0, 2], client="c")
    assert derived == []                                      # refused before any scrypt
    # clients that name themselves anew each call do not grow memory without bound
    from iom.service.rate import CallWindows

    clock = iter(range(10**9, 10**9 + 61 * 40, 61))          # one new client a minute
    service._calls = CallWindows(60.0, max_keys=5, clock=lambda: next(clock))
    for i in range(20):
        service._check_call_rate(f"client-{i}", "verify", 2)
    assert len(service._calls) <= 6
    service.store.close()


def test_verify_calls_about_one_subject_are_limited_whoever_calls(tmp_path, hasher):
    service = make_service(tmp_path / "s.db", hasher, subject_verify_per_minute=3)
    x = enroll_people(service, 2)
    for i in range(3):      # three different clients, all with the right token and face
        assert service.verify("s0", user_token="token-0-secret", embedding=x[0, 2], client=f"c{i}").accepted
    with pytest.raises(RateLimitedError) as e:
        service.verify("s0", user_token="token-0-secret", embedding=x[0, 2], client="c9")
    assert 0 < e.value.retry_after <= 60
    assert service.verify("s1", user_token="token-1-secret", embedding=x[1, 2], client="c9").accepted
    service.store.close()


def test_refused_calls_do_no_work_and_write_at_most_one_row_a_minute(tmp_path, hasher, monkeypatch):
    service = make_service(tmp_path / "f.db", hasher, identify_per_minute=2)
    x = enroll_people(service, 1)
    for _ in range(2):
        service.identify(embedding=x[0, 2], client="flood")
    embedded = []
    monkeypatch.setattr(service, "_sample", lambda *a: embedded.append(a))
    for _ in range(20):
        with pytest.raises(RateLimitedError):
            service.identify(embedding=x[0, 2], client="flood")
    assert embedded == []                                           # refused before the embedding
    rows = [(c, op, out) for _, _, c, op, out in service.store.attempts()]
    assert rows == [("flood", "identify", "rate-limited")]
    service.store.close()


def test_call_windows_admit_up_to_the_limit_and_say_when_to_retry():
    from iom.service.rate import CallWindows

    now = [100.0]
    w = CallWindows(60.0, clock=lambda: now[0])
    assert [w.admit("a", 2) for _ in range(2)] == [None, None]
    now[0] = 110.0
    assert w.admit("a", 2) == pytest.approx(50.0)      # the first call leaves the window at 160
    assert w.admit("b", 2) is None                     # other keys are counted apart
    now[0] = 160.5                                     # both calls of t=100 have left the window
    assert [w.admit("a", 2) for _ in range(3)] == [None, None, pytest.approx(60.0)]


# ---------------------------------------------------------------------------- 7. other processes
def test_revocation_by_another_process_is_seen_by_identify(tmp_path, hasher):
    path = tmp_path / "t.db"
    a, b = make_service(path, hasher), make_service(path, hasher)
    x = enroll_people(a, 3)
    assert a.identify(embedding=x[1, 2])[0].subject_id == "s1"          # a's gallery is loaded
    b.revoke("s1", admin_secret=ADMIN)
    b.enroll("late", embeddings=x[2, :2] * 0 + people(7, 3, seed=5)[6, :2], user_token="token-late-1")
    assert a.identify(embedding=x[1, 2]) == []                           # no refresh() needed
    late = people(7, 3, seed=5)[6, 2]
    assert a.identify(embedding=late)[0].subject_id == "late"
    a.store.close()
    b.store.close()


# ---------------------------------------------------------------------------- 8. proof for changes
def test_reissue_and_revoke_need_proof(service):
    x = enroll_people(service, 2)
    before = service.store.active("s0")
    with pytest.raises(PolicyError, match="current token"):
        service.reissue("s0", new_token="mallory-token-9", embeddings=x[1, :2])
    with pytest.raises(PolicyError, match="proof refused"):        # mallory's face, a guessed token
        service.reissue("s0", new_token="mallory-token-9", embeddings=x[1, :2], user_token="token-1-secret",
                        proof_embedding=x[1, 2])
    with pytest.raises(PolicyError, match="administrator"):
        service.revoke("s0", admin_secret="not-the-admin-credential")
    with pytest.raises(PolicyError):
        service.revoke("s0")
    assert service.store.active("s0") == before
    service.revoke("s0", user_token="token-0-secret", proof_embedding=x[0, 2])


def test_concurrent_reissues_one_wins(tmp_path, hasher):
    path = tmp_path / "t.db"
    a, b = make_service(path, hasher), make_service(path, hasher)
    x = enroll_people(a, 1)
    version = a.get("s0")[0]["version"]
    a.reissue("s0", new_token="token-from-a-1", embeddings=x[0, :2], admin_secret=ADMIN,
              expected_version=version)
    with pytest.raises(ConflictError):
        b.reissue("s0", new_token="token-from-b-1", embeddings=x[0, :2], admin_secret=ADMIN,
                  expected_version=version)
    assert a.verify("s0", user_token="token-from-a-1", embedding=x[0, 2]).accepted
    a.store.close()
    b.store.close()


def test_racing_reissues_with_proof_never_both_succeed(tmp_path, hasher):
    """Two threads prove with the same (current) token and face, then reissue: the version
    read at proof time makes the second a ConflictError, never a silent overwrite."""
    path = tmp_path / "t.db"
    services = [make_service(path, hasher) for _ in range(2)]
    x = enroll_people(services[0], 1)
    barrier, results = threading.Barrier(2), []

    def work(i):
        barrier.wait()
        try:
            services[i].reissue("s0", new_token=f"token-thread-{i}x", embeddings=x[0, :2],
                                user_token="token-0-secret", proof_embedding=x[0, 2])
            results.append("ok")
        except (ConflictError, PolicyError) as e:     # PolicyError: the other already changed the key
            results.append(type(e).__name__)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results.count("ok") == 1
    for s in services:
        s.store.close()


# ---------------------------------------------------------------------------- 11. subject ids
@pytest.mark.parametrize("subject", ["\u0430lice", "ali\u200bce", "\u202ealice", "alice\u2028",
                                     "\uff41lice", "alice\u00a0", " alice", "alice\ufeff"])
def test_lookalike_subject_ids_are_refused(service, subject):
    with pytest.raises(InvalidInputError, match="subject_id"):
        service.enroll(subject, embeddings=people(1, 1)[0], user_token="token-look-1")


def test_subject_ids_are_compared_in_nfc(service):
    x = people(1, 3)[0]
    service.enroll("zo\u00eb", embeddings=x[:2], user_token="token-zoe-12")
    with pytest.raises(DuplicateEnrollmentError):
        service.enroll("zoe\u0308", embeddings=x[:2], user_token="token-zoe-12")
    assert service.verify("zoe\u0308", user_token="token-zoe-12", embedding=x[2]).accepted
    assert service.list() == ["zo\u00eb"]
    # scripts that legitimately mix are accepted
    service.enroll("山田たろう", embeddings=x[:2], user_token="token-yamada")


# ---------------------------------------------------------------------------- 12. 1:N threshold
def test_identify_accepts_at_the_one_to_n_threshold(tmp_path, hasher):
    service = make_service(tmp_path / "n.db", hasher, expose_scores=True)
    x = enroll_people(service, 4)
    t1 = service.threshold
    assert service.identification_threshold(1) >= t1
    sizes = [10, 1000, 20000]          # within what the calibration bounds (25,052 at FPIR 1e-2)
    thresholds = [service.identification_threshold(n) for n in sizes]
    assert thresholds == sorted(thresholds) and thresholds[-1] > t1
    for c in service.identify(embedding=x[2, 2], top_k=4):
        assert c.accepted == (c.similarity >= service.identification_threshold(4))
    service.store.close()


# ---------------------------------------------------------------------------- 13. leaks
def test_unknown_and_revoked_subjects_look_alike(service):
    x = enroll_people(service, 2)
    service.revoke("s1", admin_secret=ADMIN)
    never = service.verify("nobody", user_token="token-1-secret", embedding=x[1, 2])
    revoked = service.verify("s1", user_token="token-1-secret", embedding=x[1, 2])
    assert never == revoked and not never.accepted
    errors = []
    for subject in ("nobody", "s1"):
        with pytest.raises(PolicyError) as info:
            service.revoke(subject, user_token="token-1-secret", proof_embedding=x[1, 2])
        errors.append(str(info.value).replace(repr(subject), "<subject>"))
    assert errors[0] == errors[1]


def test_no_template_key_stays_cached(hasher):
    from iom.hashing.keying import CodeKeying
    from iom.hashing.random_iom import RandomIoM
    from iom.keys import TemplateKey

    x = people(1, 1)[0]
    for i in range(20):
        hasher.encode(x, TemplateKey.from_seed(i))
    held = [v for v in vars(hasher).values()
            if isinstance(v, (TemplateKey, CodeKeying)) or
            (isinstance(v, dict) and any(isinstance(k, TemplateKey) for k in v))]
    assert held == []
    rnd = RandomIoM(8, 4, DIM)
    for i in range(40):
        rnd.encode(x, TemplateKey.from_seed(i))
    assert len(rnd._cache) == RandomIoM.CACHE_SIZE
    assert TemplateKey.from_seed(39) in rnd._cache and TemplateKey.from_seed(0) not in rnd._cache


def test_stored_administrator_credential(tmp_path, hasher):
    """Without admin_secret in the constructor the service checks the verifier kept in the
    store (set-admin); replacing it needs the current one; a forged or replayed verifier row
    is refused."""
    path = tmp_path / "a.db"
    service = make_service(path, hasher, admin=None)
    x = enroll_people(service, 2)
    with pytest.raises(PolicyError, match="administrator"):
        service.revoke("s0", admin_secret="any-credential-at-all")           # none set: nothing passes
    service.set_admin_credential("first-admin-credential-1")
    old_row = raw(path, "SELECT name, value, seq, mac FROM settings")
    with pytest.raises(PolicyError, match="current one"):
        service.set_admin_credential("mallory-admin-credential")
    service.set_admin_credential("second-admin-credential-2", current_secret="first-admin-credential-1")
    fresh = make_service(path, hasher, admin=None)
    with pytest.raises(PolicyError, match="administrator"):
        fresh.revoke("s0", admin_secret="first-admin-credential-1")
    assert fresh.revoke("s0", admin_secret="second-admin-credential-2") == 2
    fresh.store.close()
    # the old verifier row put back (its MAC was valid once): refused
    raw(path, "DELETE FROM settings")
    raw(path, "INSERT INTO settings VALUES (?, ?, ?, ?)", old_row[0])
    with pytest.raises(StoreError, match="setting"):
        make_service(path, hasher, admin=None)
    assert x is not None
    service.store.close()


# ---------------------------------------------------------------------------- device codes
def test_device_codes_stand_for_the_faces_they_come_from(tmp_path, hasher):
    """A device running the exported model sends its code, relabelled with the key it was
    provisioned with, instead of a photo: the service inverts the device's key and keys the code
    exactly as it keys the embedding the code came from. The un-keyed code itself (the same for
    every deployment) is not accepted as such, nor a code keyed for another device."""
    from iom.hashing.keying import CodeKeying
    from iom.errors import InvalidInputError, PolicyError
    from iom.service.template_keys import device_key

    service = make_service(tmp_path / "c.db", hasher, allow_codes=True)
    x = enroll_people(service, 3)                                   # enrolled from embeddings
    door = CodeKeying(device_key(SECRET, "door"), service.m, service.q)

    def code(e, keying=door):                                       # what the device computes and sends
        return keying.apply(hasher.codes(e[None] / np.linalg.norm(e)))[0]

    for i in range(3):
        by_embedding = service.verify(f"s{i}", user_token=f"token-{i}-secret", embedding=x[i, 2])
        by_code = service.verify(f"s{i}", user_token=f"token-{i}-secret", code=code(x[i, 2]), client="door")
        assert by_code == by_embedding
    assert not service.verify("s0", user_token="token-0-secret", code=code(x[1, 2]), client="door").accepted
    assert [c.subject_id for c in service.identify(code=code(x[2, 2]), client="door")][:1] == ["s2"]
    # the universal (un-keyed) code, or one keyed for another device, stands for nobody
    universal = hasher.codes(x[2, 2][None] / np.linalg.norm(x[2, 2]))[0]
    assert not service.verify("s2", user_token="token-2-secret", code=universal, client="door").accepted
    assert not service.verify("s2", user_token="token-2-secret", code=code(x[2, 2]), client="gate").accepted
    # enrolled from a device code: verified by a photo's embedding, identified by a code
    service.enroll("d0", code=code(x[0, :2].mean(0)), user_token="token-d0-secret", device="door")
    assert service.verify("d0", user_token="token-d0-secret", embedding=x[0, 2]).accepted
    with pytest.raises(InvalidInputError, match="name of the device"):
        service.enroll("d2", code=code(x[0, 2]), user_token="token-d2-secret")
    with pytest.raises(InvalidInputError, match="integers"):
        service.verify("s0", user_token="token-0-secret", code=[0.5] * service.m, client="door")
    with pytest.raises(InvalidInputError, match=r"\[0, 8\)"):
        service.verify("s0", user_token="token-0-secret", code=[8] * service.m, client="door")
    with pytest.raises(InvalidInputError, match="integers"):
        service.enroll("d1", code=[1, 2, 3], user_token="token-d1-secret", device="door")
    with pytest.raises(InvalidInputError, match="not several"):
        service.verify("s0", user_token="token-0-secret", embedding=x[0, 2], code=code(x[0, 2]), client="door")
    service.store.close()
    strict = make_service(tmp_path / "d.db", hasher)                # the default policy refuses codes
    with pytest.raises(PolicyError, match="device codes"):
        strict.identify(code=code(x[0, 2]), client="door")
    strict.store.close()
