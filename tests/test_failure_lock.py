"""The failure lock of verification and the authenticated attempt log, on SQLite and PostgreSQL.

1. The lock is atomic: ``TemplateService.verify`` reserves one of the subject's
   ``max_failures`` slots in the same store transaction that counts them
   (``TemplateStore.reserve_attempt``), so N simultaneous wrong-token verifications of one
   subject (threads, and processes) get exactly ``max_failures`` answers; the rest get
   ``RateLimitedError``. Before, the count was read, the comparison made and the failure
   written in separate steps, and all N were answered.
2. The attempt log is authenticated: a deleted, edited or inserted attempt row, or an edited,
   removed or replayed mark, is a ``StoreError`` when attempts are counted (the verification
   refuses); pruning still works and moves the authenticated mark.

The service runs on a stand-in hasher (:class:`QuantisingHasher`) fed embeddings: the
verification path is the real one (scrypt, key relabelling, comparison, store), but no
network is loaded, so a process builds a service in well under a second.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter

import numpy as np
import pytest

from iom.hashing.keying import CodeKeying
from iom.store import attempts as store_mod
from iom.errors import InvalidInputError, RateLimitedError, StoreError, TemplateError
from iom.store.attempts import ATTEMPT_MARK
from tests.test_iom_service import SECRET, _NoEmbedder
from tests.test_iom_store import backend, pg_dsn  # noqa: F401  (fixtures: each back end, fresh)

M, Q = 64, 8
FACE = np.linspace(-1.0, 1.0, M, dtype=np.float32)          # a unit embedding once normalised
TOKEN = "alice-token-Kq7vR2mX"
ROW_KEY = b"row-key-of-the-failure-lock-tests"
MAX_FAILURES = 5                  # the default policy's
N_THREADS = 12
N_PROCESSES = 8


class QuantisingHasher:
    """A stand-in for the deep IoM hasher (``key_mode='code'``): the un-keyed code of an
    M-d embedding is each coordinate quantised to Q levels, and a key relabels it as the
    shipped hasher does (:class:`CodeKeying`), so a wrong token scores at chance."""

    dim, m, q, key_mode = M, M, Q, "code"
    spec = {"model_id": "failure-lock-test"}

    def keying(self, key) -> CodeKeying:
        return CodeKeying(key, self.m, self.q)

    def encode(self, embeddings: np.ndarray, key) -> np.ndarray:
        x = np.asarray(embeddings, np.float32) * np.sqrt(self.dim)     # unit vector: coordinates ~ +-1
        codes = np.clip(np.floor((x + 1.0) * self.q / 2.0), 0, self.q - 1).astype(np.int64)
        return codes if key is None else self.keying(key).apply(codes)


def make_service(store, **policy):
    """A service with the default policy but embeddings allowed and cheap scrypt."""
    from iom.service.pipeline import Pipeline
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService

    return TemplateService(Pipeline(_NoEmbedder(), QuantisingHasher()), store, SECRET,
                           calibration={"threshold": 0.9, "m": M, "q": Q}, threshold=0.9,
                           policy=ServicePolicy(**{"allow_embeddings": True, "scrypt_n": 2**10, **policy}))


def outcome(result) -> str:
    """A verification's result as a word: accepted, rejected, or the error's type."""
    if isinstance(result, BaseException):
        return type(result).__name__
    return "accepted" if result.accepted else "rejected"


def wrong_guess(service, i: int) -> str:
    """The outcome of a verification of alice with a wrong token by client ``c<i>``."""
    try:
        return outcome(service.verify("alice", user_token=f"wrong-guess-{i}-Zq8x", embedding=FACE,
                                      client=f"c{i}"))
    except TemplateError as e:
        return outcome(e)


def race(n: int, fn) -> list:
    """fn(i) in n threads released together by a barrier; results (or exceptions) by i."""
    barrier, results = threading.Barrier(n), [None] * n

    def work(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:          # noqa: BLE001 - collected for the assertions
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def assert_locked_after_race(service, n: int) -> None:
    """Exactly MAX_FAILURES rejections are logged (no reservation left pending), each refused
    call once, and now even the right token is refused."""
    log = Counter((s, op, out) for _, s, _, op, out in service.store.attempts())
    assert log == {("alice", "verify", "rejected"): MAX_FAILURES,
                   ("alice", "rate-limited", "refused"): n - MAX_FAILURES}, log
    with pytest.raises(RateLimitedError, match="too many failed verifications of 'alice'"):
        service.verify("alice", user_token=TOKEN, embedding=FACE, client="owner")


# ---------------------------------------------------------------------------- 1. the race
@pytest.mark.parametrize("shared", [False, True], ids=["a-service-per-thread", "one-shared-service"])
def test_simultaneous_wrong_tokens_get_exactly_max_failures_answers(backend, shared):
    first = make_service(backend.open())
    first.enroll("alice", embeddings=FACE, user_token=TOKEN)
    services = [first] * N_THREADS if shared else [make_service(backend.open()) for _ in range(N_THREADS)]
    results = race(N_THREADS, lambda i: wrong_guess(services[i], i))
    assert Counter(results) == {"rejected": MAX_FAILURES, "RateLimitedError": N_THREADS - MAX_FAILURES}
    assert_locked_after_race(first, N_THREADS)


def _open(backend_name: str, target: str):
    if backend_name == "sqlite":
        from iom.store.sqlite import SQLiteStore

        return SQLiteStore(target)
    from iom.store.postgres import PostgresStore

    return PostgresStore(target)


def _guess_in_a_process(backend_name: str, target: str, i: int, barrier, results) -> None:
    """One process: its own connection and service; one wrong guess when all are ready."""
    try:
        service = make_service(_open(backend_name, target))
        barrier.wait(120)
        results.put((i, wrong_guess(service, i)))
        service.store.close()
    except BaseException as e:          # noqa: BLE001 - reported to the parent
        results.put((i, f"worker failed: {e!r}"))


def test_simultaneous_wrong_tokens_from_processes(backend):
    service = make_service(backend.open())
    service.enroll("alice", embeddings=FACE, user_token=TOKEN)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_guess_in_a_process, args=(backend.name, backend.target, i, barrier, results))
             for i in range(N_PROCESSES)]
    for p in procs:
        p.start()
    answers = dict(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(60)
    assert Counter(answers.values()) == {"rejected": MAX_FAILURES,
                                         "RateLimitedError": N_PROCESSES - MAX_FAILURES}, answers
    assert_locked_after_race(service, N_PROCESSES)


# ---------------------------------------------------------------------------- reservations
def authenticated(backend):
    store = backend.open()
    store.authenticate(ROW_KEY)
    return store


def test_reservations_count_until_resolved_or_out_of_the_window(backend):
    s = authenticated(backend)
    ids = [s.reserve_attempt("alice", "c", "verify", 60, 3) for _ in range(3)]
    assert ids == [1, 2, 3]
    assert s.reserve_attempt("alice", "c", "verify", 60, 3) is None     # pending ones count
    assert s.reserve_attempt("bob", "c", "verify", 60, 3) == 4          # per subject
    s.finish_attempt("alice", ids[0], "accepted")                       # frees its slot
    s.finish_attempt("alice", ids[1], "cancelled")                      # so does an error
    s.finish_attempt("alice", ids[2], "rejected")                       # a failure now
    assert s.count_attempts("alice", "verify", 60) == 1
    assert [(subj, out) for _, subj, _, _, out in s.attempts()] == [("alice", "rejected"), ("bob", "pending")]
    # a reservation left pending (a crashed verification) counts until it leaves the window
    assert s.reserve_attempt("carol", "c", "verify", 1.0, 1) is not None
    assert s.reserve_attempt("carol", "c", "verify", 1.0, 1) is None
    time.sleep(1.1)
    assert s.reserve_attempt("carol", "c", "verify", 1.0, 1) is not None


def test_resolving_a_reservation_is_checked(backend):
    s = authenticated(backend)
    attempt = s.reserve_attempt("alice", "c", "verify", 60, 3)
    with pytest.raises(InvalidInputError, match="outcome"):
        s.finish_attempt("alice", attempt, "pending")
    with pytest.raises(StoreError, match=f"attempt {attempt} is not a pending reservation of 'bob'"):
        s.finish_attempt("bob", attempt, "rejected")
    s.finish_attempt("alice", attempt, "rejected")
    with pytest.raises(StoreError, match="it is 'rejected'"):
        s.finish_attempt("alice", attempt, "accepted")
    with pytest.raises(StoreError, match="reservation 99 is missing"):
        s.finish_attempt("alice", 99, "accepted")
    with pytest.raises(InvalidInputError, match="reserved"):
        s.put_setting(ATTEMPT_MARK, b"1 0 ")


def test_service_resolves_its_reservations(backend, monkeypatch):
    service = make_service(backend.open())
    service.enroll("alice", embeddings=FACE, user_token=TOKEN)
    assert service.verify("alice", user_token=TOKEN, embedding=FACE).accepted
    assert not service.verify("alice", user_token="wrong-guess-Zq8x", embedding=FACE, client="m").accepted
    assert service.store.count_attempts("alice", "verify", 60) == 1
    assert [(s, c, op, out) for _, s, c, op, out in service.store.attempts()] == [("alice", "m", "verify", "rejected")]
    # an error between the reservation and the decision is not a failure (as before)
    def broken_model_check(record):
        raise TemplateError("injected")

    monkeypatch.setattr(service, "_check_model", broken_model_check)
    with pytest.raises(TemplateError, match="injected"):
        service.verify("alice", user_token=TOKEN, embedding=FACE)
    assert service.store.count_attempts("alice", "verify", 60) == 1
    assert all(out != "pending" for *_, out in service.store.attempts())


def test_callers_that_admit_first_are_held_by_the_reservation(backend):
    """The HTTP server calls admit() before decoding the photo, then verify(admitted=True):
    the reservation still holds such calls to max_failures."""
    service = make_service(backend.open())
    service.enroll("alice", embeddings=FACE, user_token=TOKEN)
    for i in range(MAX_FAILURES + 2):
        service.admit("verify", f"c{i}", "alice")              # all admitted before any is answered
    answers = []
    for i in range(MAX_FAILURES + 2):
        try:
            answers.append(outcome(service.verify("alice", user_token="wrong-guess-Zq8x", embedding=FACE,
                                                  client=f"c{i}", admitted=True)))
        except RateLimitedError as e:
            answers.append(outcome(e))
    assert answers == ["rejected"] * MAX_FAILURES + ["RateLimitedError"] * 2


# ---------------------------------------------------------------------------- 2. tampering
def logged(backend):
    """An authenticated store with attempts 1..5: alice (rejected, rejected), bob, alice, a refusal."""
    s = authenticated(backend)
    for subject in ("alice", "alice", "bob", "alice"):
        s.record_attempt(subject, "mallory", "verify", "rejected")
    s.record_attempt("alice", "mallory", "rate-limited", "refused")
    return s


TAMPERING = {
    "delete the oldest row": (["DELETE FROM attempts WHERE attempt_id = 1"], "deleted or inserted"),
    "delete a row in the middle": (["DELETE FROM attempts WHERE attempt_id = 3"], "deleted or inserted"),
    "delete the newest row": (["DELETE FROM attempts WHERE attempt_id = 5"], "deleted or inserted"),
    "delete every row": (["DELETE FROM attempts"], "deleted or inserted"),
    "delete every row and the mark": (["DELETE FROM attempts", f"DELETE FROM settings WHERE name = '{ATTEMPT_MARK}'"],
                                      "mark of the attempt log .* is missing"),
    "turn a failure into an acceptance": (["UPDATE attempts SET outcome = 'accepted' WHERE attempt_id = 4"],
                                          "attempt 4 .* corrupt or forged"),
    "move a failure to another subject": (["UPDATE attempts SET subject_id = 'zed' WHERE attempt_id = 2"],
                                          "attempt 2 .* corrupt or forged"),
    "age a failure out of the window": (["UPDATE attempts SET at = '2000-01-01T00:00:00.000000+00:00' "
                                         "WHERE attempt_id = 4"], "attempt 4 .* corrupt or forged"),
    "insert a row": (["INSERT INTO attempts (attempt_id, subject_id, client, op, outcome, at, mac) "
                      "SELECT 6, subject_id, client, op, outcome, at, mac FROM attempts WHERE attempt_id = 1"],
                     "deleted or inserted"),
    "delete a row and insert a copy of another under its id": (
        ["DELETE FROM attempts WHERE attempt_id = 4",
         "INSERT INTO attempts (attempt_id, subject_id, client, op, outcome, at, mac) "
         "SELECT 4, subject_id, client, op, 'accepted', at, mac FROM attempts WHERE attempt_id = 3"],
        "attempt 4 .* corrupt or forged"),
    "edit the mark": ([f"UPDATE settings SET value = ? WHERE name = '{ATTEMPT_MARK}'"],
                      "mark of the attempt log fails authentication"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_attempt_log_is_detected(backend, case):
    s = logged(backend)
    assert s.count_attempts("alice", "verify", 60) == 3
    statements, error = TAMPERING[case]
    for sql in statements:
        backend.raw(sql, (b"1 1 2000",) if "?" in sql else ())
    fresh = authenticated(backend)                  # a process that starts after the tampering
    for store in (s, fresh):
        for call in (lambda: store.count_attempts("alice", "verify", 60),
                     lambda: store.reserve_attempt("alice", "c", "verify", 60, 5),
                     store.attempts):
            with pytest.raises(StoreError, match=error):
                call()


def test_a_tampered_attempt_log_makes_verification_refuse(backend):
    service = make_service(backend.open())
    service.enroll("alice", embeddings=FACE, user_token=TOKEN)
    for i in range(MAX_FAILURES):
        wrong_guess(service, i)
    with pytest.raises(RateLimitedError):
        service.verify("alice", user_token=TOKEN, embedding=FACE)
    backend.raw("DELETE FROM attempts WHERE subject_id = 'alice'")      # lift the lock
    for admitted in (False, True):
        with pytest.raises(StoreError, match="deleted or inserted"):
            service.verify("alice", user_token=TOKEN, embedding=FACE, admitted=admitted)
        with pytest.raises(StoreError, match="deleted or inserted"):
            make_service(backend.open()).verify("alice", user_token=TOKEN, embedding=FACE, admitted=admitted)


def test_a_replayed_mark_is_detected_by_a_process_that_saw_the_later_one(backend):
    s = logged(backend)
    (saved,) = backend.raw("SELECT value, seq, mac FROM settings WHERE name = ?", (ATTEMPT_MARK,))
    s.record_attempt("alice", "mallory", "verify", "rejected")
    s.record_attempt("alice", "mallory", "verify", "rejected")
    assert s.count_attempts("alice", "verify", 60) == 5
    backend.raw("DELETE FROM attempts WHERE attempt_id > 5")
    backend.raw("UPDATE settings SET value = ?, seq = ?, mac = ? WHERE name = ?", (*saved, ATTEMPT_MARK))
    with pytest.raises(StoreError, match=r"rolled back .* ids 1\.\.5, this process saw 1\.\.7"):
        s.count_attempts("alice", "verify", 60)


def test_an_edit_before_the_window_is_found_by_the_audit_read(backend):
    s = logged(backend)
    backend.raw("UPDATE attempts SET client = 'someone else' WHERE attempt_id = 1")
    with pytest.raises(StoreError, match="attempt 1 .* corrupt or forged"):
        s.attempts()


# ---------------------------------------------------------------------------- pruning
def test_pruning_moves_the_authenticated_mark(backend, monkeypatch):
    s = logged(backend)
    monkeypatch.setattr(store_mod, "ATTEMPT_RETENTION_S", 0.3)
    time.sleep(0.4)
    s.record_attempt("alice", "mallory", "verify", "rejected")     # prunes 1..5
    monkeypatch.setattr(store_mod, "ATTEMPT_RETENTION_S", 7 * 24 * 3600.0)
    assert [r[0] for r in backend.raw("SELECT attempt_id FROM attempts")] == [6]
    assert s.get_setting(ATTEMPT_MARK).split(b" ")[:2] == [b"6", b"6"]
    assert s.count_attempts("alice", "verify", 60) == 1 and len(authenticated(backend).attempts()) == 1
    assert s.reserve_attempt("alice", "c", "verify", 60, 5) == 7
    # the retained range is still guarded
    backend.raw("DELETE FROM attempts WHERE attempt_id = 6")
    with pytest.raises(StoreError, match="deleted or inserted"):
        s.count_attempts("alice", "verify", 60)


def test_pruning_cannot_be_used_to_delete_recent_rows(backend, monkeypatch):
    s = logged(backend)
    before = backend.raw("SELECT attempt_id FROM attempts ORDER BY attempt_id")
    backend.raw("UPDATE attempts SET at = '2000-01-01T00:00:00.000000+00:00' WHERE attempt_id = 5")
    with pytest.raises(StoreError, match="attempt 5 .* corrupt or forged"):
        s.record_attempt("alice", "mallory", "verify", "rejected")
    assert backend.raw("SELECT attempt_id FROM attempts ORDER BY attempt_id") == before
