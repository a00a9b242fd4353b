#!/usr/bin/env python
"""Several processes enroll, verify, revoke, reissue and identify against one store; then an audit.

For each back end in ``--backends`` a fresh store is created (SQLite: a file in a temp
folder; PostgreSQL: a new database on a throw-away server started by ``tests/pg_server.py``),
then ``--workers`` processes (``multiprocessing``, 'spawn' context) each open their own
connection and build a :class:`~iom.service.service.TemplateService` on the shipped hasher
``models/iom_mbfn_celeba299_512x8`` (loaded once per process; embeddings, not photos: a
random unit 512-d vector per subject, probes are noisy copies at cosine ~0.96).

The service runs the security API (docs/dev/service_api_v2.md) with the policy
:data:`POLICY_ARGS`: ``allow_embeddings=True`` (the bench feeds embeddings), decisions without
scores (the default), **scrypt_n = 2**10** — the cheapest cost the policy accepts, 16x
below the default 2**14, so that the figures measure the store and the concurrency rather
than the token KDF (at 2**14 every enroll, verify and reissue pays ~150 ms of scrypt on this
machine's cores) — ``max_failures`` far above what a run reaches, so the deliberate
wrong-token verifies never lock a subject out of the other ops (lockout is exercised on
purpose by the ``lockout`` op, through a second service with :data:`LOCKOUT_POLICY_ARGS`), and no
identify rate limit. Tokens are strong (20 random letters and digits, ~119 estimated bits).
Revoke and reissue carry a proof: the user's token with a noisy probe of the face, or (one
in :data:`ADMIN_SHARE`) the administrator secret; half of them pass the ``expected_version``
read by ``get()`` just before.

After all are ready they start together and loop for ``--seconds``, each op drawn at random:

==================  =========================================================  =================================
op                  what                                                       outcome required
==================  =========================================================  =================================
enroll              a new subject ``w<k>-<i>`` (1 in 5: re-enroll a revoked    ids of 2 templates
                    one of its own) under a fresh strong token
verify              own active subject, right token, noisy probe               accepted (no similarity given)
verify_wrong_token  own active subject, another strong token                   rejected (one failure logged)
revoke              own active subject, user proof or admin                    2 templates revoked
reissue             own active subject, new token, user proof or admin         2 new ids
identify            noisy probe of an own active subject (1 in 4: of the       the subject among the accepted
                    shared race subject, reissued by other processes); no      candidates exactly once, no own
                    ``refresh()``: the gallery follows the event log           revoked subject among them
enroll_race         ``race-<j>`` (j: the worker's j-th try), same ids in       ids, or DuplicateEnrollmentError
                    every worker, so all workers compete for each of them
verify_revoked      own revoked subject, its last token and face               rejected
revoke_revoked      own revoked subject: with user proof / with admin          PolicyError / RevokedTemplateError
reissue_revoked     own revoked subject: with user proof / with admin          PolicyError / RevokedTemplateError
enroll_duplicate    own active subject                                         DuplicateEnrollmentError
verify_unknown      a subject never enrolled                                   rejected (not an error)
lockout             own active subject (half the time the one with the most    < 3 failures logged for it:
                    failures) through the strict service (max_failures=3):     rejected; else RateLimitedError
                    a wrong token while the subject has fewer than 3           (even with the right token)
                    failures, else the right token
==================  =========================================================  =================================

Reissue race (not drawn; every ``--race_every`` seconds): all workers read the version of
the shared subject ``reissue-race`` (enrolled by worker 0 before the start), meet at a
barrier, and reissue it with that ``expected_version`` — odd rounds with the user's proof
(the current token is known to all: every round's new token is derived from the round
number), even rounds with the admin secret. Exactly one may win each round; the others must
get :class:`ConflictError` (or, in proof rounds, :class:`PolicyError`: the winner already
replaced the token their proof used). The barrier wait is not in the op latency.

Every *acknowledged* op (the call returned or raised its required error) is appended to
the worker's journal (``<out>/<backend>/journal-w<k>.jsonl``, one JSON object a line,
flushed per line: op, subject, returned template ids, the token and embedding seed of
enrollments and reissues, the expected version, who proved, the failed attempt the op
logs). Required typed errors are counted per type; any other exception, a missing required
error, a rejected genuine probe, an accepted wrong token or an exposed similarity is an
*unexpected error*. A subject touched by a write that failed unexpectedly is marked
uncertain in the journal and left alone.

After the deadline the workers are joined and a fresh connection (authenticated by a new
service, which verifies the whole HMAC chain of the event log) audits the store against the
journals: every acknowledged enrollment's and reissue's template ids exist, with the right
subject; a subject whose last acknowledged write was a revocation has no active template;
every other one has exactly one active verify and one active identify template, and they
are those its last enrollment/reissue returned (all earlier ones revoked); no subject or
row in the store is missing from the journals; each ``race-<j>`` was acknowledged to
exactly one worker; every race round had every worker and exactly one winner; every row of
every subject passes its HMAC (``history()``); each subject's event-log entries are its
acknowledged writes, in order, with the same template ids, and a write made with
``expected_version`` follows the log entry of that version; the ``attempts`` table holds
exactly the failed attempts the journals logged (subject, client, op); every active
subject still verifies with its last token (the stored code is intact); the row count
equals the rows audited; SQLite: ``PRAGMA integrity_check`` is ``ok``.

Printed per back end: ops per second by type, required errors by type, unexpected errors,
op latencies and the audit; as the LAST stdout line one JSON object with every figure per
back end, the policy, workers, seconds, cpu_count, load averages and the date. The exit
code is 1 if an audit failed or an unexpected error occurred.

Usage::

    python bench/concurrency.py                           # 60 s, 4 workers, sqlite and postgres
    python bench/concurrency.py --seconds 5 --backends sqlite --out /tmp/cc
"""

import argparse
import collections
import contextlib
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import sqlite3
import string
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import cpu_model  # noqa: E402

# The hasher the recorded figures (docs/BENCHMARKS.md) were measured with; its 512-d embeddings are
# what centre_of draws. The store and concurrency behaviour measured here do not depend on the model.
HASHER = "iom_mbfn_celeba299_512x8"
SECRET = b"bench-concurrency-application-secret"
ADMIN_SECRET = b"bench-concurrency-administrator-credential"
PROBE_NOISE = 0.3            # norm of the noise added to a unit embedding (cosine ~0.96)
STARTUP_TIMEOUT = 300        # s the workers may take to load the hasher and connect
ROUND_TIMEOUT = 120          # s a worker waits at a race round's barrier for the others
SCRYPT_N = 2**10             # the cheapest the policy accepts (default 2**14): see the module doc
LOCKOUT_FAILURES = 3         # max_failures of the strict service (the lockout op)
FAILURE_WINDOW_S = 24 * 3600.0   # longer than any run: every failure of a run counts
ADMIN_SHARE = 3              # one revoke/reissue in ADMIN_SHARE uses the admin secret
TOKEN_ALPHABET = string.ascii_letters + string.digits
RACE_SUBJECT = "reissue-race"
RACE_SEED = 9_000_001

#: op → weight of the random draw
WEIGHTS = {
    "enroll": 24, "verify": 24, "verify_wrong_token": 12, "revoke": 8, "reissue": 10,
    "identify": 3, "enroll_race": 4, "verify_revoked": 4, "revoke_revoked": 2,
    "reissue_revoked": 2, "enroll_duplicate": 3, "verify_unknown": 2, "lockout": 3,
}
#: every outcome counted, with what it requires (for the report)
OUTCOMES = {
    "enroll": "2 template ids", "verify": "accepted", "verify_wrong_token": "rejected",
    "revoke": "2 revoked", "reissue": "2 new ids", "identify": "subject accepted, once",
    "enroll_race": "ids (won)", "enroll_race_lost": "DuplicateEnrollmentError",
    "verify_revoked": "rejected", "revoke_revoked": "PolicyError (proof) / RevokedTemplateError (admin)",
    "reissue_revoked": "PolicyError (proof) / RevokedTemplateError (admin)",
    "enroll_duplicate": "DuplicateEnrollmentError", "verify_unknown": "rejected",
    "lockout_rejected": "rejected (fewer than 3 failures)", "lockout_locked": "RateLimitedError",
    "reissue_race_won": "one winner per round", "reissue_race_lost": "ConflictError (or PolicyError: stale proof)",
}
WRITES = ("enroll", "revoke", "reissue")
#: counted outcomes that wrote to the templates (for writes/s)
WRITE_OUTCOMES = ("enroll", "enroll_race", "revoke", "reissue", "reissue_race_won")
#: journal op → event-log op
EVENT_OP = {"enroll": "enroll", "enroll_race": "enroll", "revoke": "revoke", "reissue": "reissue",
            "reissue_race": "reissue"}


#: the main service's policy: see the module doc (max_failures out of reach)
POLICY_ARGS = {"allow_embeddings": True, "scrypt_n": SCRYPT_N, "max_failures": 10**9,
               "failure_window_s": FAILURE_WINDOW_S, "identify_per_minute": 10**9}
#: the strict service of the lockout op
LOCKOUT_POLICY_ARGS = {**POLICY_ARGS, "max_failures": LOCKOUT_FAILURES}


# ---------------------------------------------------------------------------- helpers
def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def centre_of(seed: int) -> np.ndarray:
    """The subject's embedding: a random unit 512-d vector from its seed."""
    return unit(np.random.default_rng(seed).normal(size=512))


def probe_of(centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A noisy copy of ``centre`` (cosine about 0.96)."""
    return unit(centre + PROBE_NOISE * unit(rng.normal(size=centre.shape[0])))


def round_token(seed: int, r: int) -> str:
    """The token the race subject gets in round ``r`` (0: its enrollment); known to every worker."""
    return hashlib.sha256(f"iomface-bench-race-{seed}-{r}".encode()).hexdigest()[:32]


def open_backend_store(backend: str, location: str):
    """A store on ``location``: a SQLite path, or a ``postgresql://`` URL."""
    from iom.store.factory import open_store

    return open_store(location if backend == "postgres" else os.fspath(location))


def make_service(store, max_failures: int | None = None):
    """A TemplateService on ``store`` with the bench's policy (``max_failures``: the strict one)."""
    from arcface.pretrained import MODELS_DIR
    from iom.hashing.hasher import DeepIoMHasher
    from iom.service.pipeline import Pipeline
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService

    hasher = _hasher_cache.get(HASHER)
    if hasher is None:
        hasher = _hasher_cache[HASHER] = DeepIoMHasher.load(os.path.join(MODELS_DIR, HASHER))
    args = POLICY_ARGS if max_failures is None else {**POLICY_ARGS, "max_failures": max_failures}
    return TemplateService(Pipeline(_NoEmbedder(), hasher), store, SECRET,
                           calibration=os.path.join(MODELS_DIR, HASHER, "calibration.json"),
                           policy=ServicePolicy(**args), admin_secret=ADMIN_SECRET)


_hasher_cache: dict = {}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class _NoEmbedder:
    """The pipeline's stage-1 slot: never used (the bench passes embeddings)."""

    input_size = 112

    def embed_arrays(self, images):
        raise AssertionError("no photos expected")


# ---------------------------------------------------------------------------- worker
def worker(k: int, backend: str, location: str, seconds: float, folder: str, seed: int,
           race_seed: int, n_rounds: int, race_every: float, barrier, round_barrier) -> None:
    """One process: load the hasher, connect, wait for the others, run ops until the
    deadline (and the race rounds); journal to ``folder/journal-w<k>.jsonl``, summary to
    ``folder/worker-w<k>.json``."""
    # 4 processes share the cores: one compute thread each (set before TensorFlow loads)
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    summary = {"worker": k, "counts": {}, "required_errors": {}, "unexpected": {},
               "unexpected_samples": [], "latency_ms": {}, "race_wait_ms": {}, "fatal": None}
    client = f"w{k}"
    journal = open(os.path.join(folder, f"journal-w{k}.jsonl"), "w", buffering=1)

    def log(entry: dict) -> None:
        journal.write(json.dumps(entry) + "\n")
        journal.flush()

    try:
        from iom.errors import (ConflictError, DuplicateEnrollmentError, PolicyError,
                                        RateLimitedError, RevokedTemplateError)
        from iom.service.service import Candidate, Decision

        store = open_backend_store(backend, location)
        service = make_service(store)
        strict = make_service(store, max_failures=LOCKOUT_FAILURES)   # the lockout op's service
        hasher = service.pipeline.hasher
        # warm the network (first call builds the graph) on a throw-away input, no store call
        hasher.encode(unit(np.ones(512))[None], None)
        if k == 0:      # the shared subject of the reissue race, enrolled before anyone starts
            ids = service.enroll(RACE_SUBJECT, embeddings=centre_of(RACE_SEED),
                                 user_token=round_token(race_seed, 0))
            log({"op": "enroll", "subject": RACE_SUBJECT, "ids": ids, "seed": RACE_SEED,
                 "token": round_token(race_seed, 0), "round": 0})
    except BaseException:
        summary["fatal"] = traceback.format_exc()
        _write_json(os.path.join(folder, f"worker-w{k}.json"), summary)
        barrier.abort()
        raise
    barrier.wait(timeout=STARTUP_TIMEOUT)
    start = time.monotonic()
    deadline = start + seconds

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    active: dict[str, dict] = {}       # subject → {"seed", "token"}
    revoked: dict[str, dict] = {}
    failures: collections.Counter = collections.Counter()   # failed verifies logged per own subject
    unsure_failures: set[str] = set()  # subjects whose failure count is unknown (unexpected error)
    n_subjects = n_race = 0
    next_round = 1
    counts, required, unexpected = (collections.Counter() for _ in range(3))
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    race_waits: list[float] = []

    def new_token() -> str:
        return "".join(pick.choices(TOKEN_ALPHABET, k=20))

    def fail(op: str, subject: str | None, what: str, exc: BaseException | None = None) -> None:
        name = type(exc).__name__ if exc is not None else what
        unexpected[name] += 1
        if len(summary["unexpected_samples"]) < 10:
            summary["unexpected_samples"].append(f"{op} {subject}: {what}"
                                                 + (f" {type(exc).__name__}: {exc}" if exc else ""))
        if subject is None:
            return
        unsure_failures.add(subject)
        log({"op": "uncertain_attempts", "subject": subject, "after": op})
        if op in WRITES or op in ("enroll_race", "reissue_race"):
            # the outcome of this write is unknown: leave the subject alone from now on
            active.pop(subject, None)
            revoked.pop(subject, None)
            log({"op": "uncertain", "subject": subject, "after": op})

    def check_decision(d, op: str, subject: str, accepted: bool) -> bool:
        """Whether ``d`` is the required decision (and gives no score); else an unexpected error."""
        if not isinstance(d, Decision) or d.similarity is not None or d.threshold is not None:
            fail(op, subject, f"not a score-free Decision: {d!r}")
            return False
        if d.accepted != accepted:
            fail(op, subject, f"accepted={d.accepted}, required {accepted}")
            return False
        return True

    def proof(info: dict, by_admin: bool, exact: bool = False) -> dict:
        """Keyword arguments proving the right to revoke/reissue: admin, or token + face."""
        if by_admin:
            return {"admin_secret": ADMIN_SECRET}
        face = centre_of(info["seed"]) if exact else probe_of(centre_of(info["seed"]), rng)
        return {"user_token": info["token"], "proof_embedding": face}

    def race_round(r: int) -> None:
        """Round ``r`` of the reissue race: read the version, meet the others, reissue with it."""
        nonlocal next_round
        by_admin = r % 2 == 0
        info = {"seed": RACE_SEED, "token": round_token(race_seed, r - 1)}
        try:
            version = service.get(RACE_SUBJECT)[0]["version"]
        except Exception as e:                  # noqa: BLE001
            fail("reissue_race", RACE_SUBJECT, "get() raised", e)
            version = None
        t_wait = time.perf_counter()
        try:
            round_barrier.wait(timeout=ROUND_TIMEOUT)
        except threading.BrokenBarrierError as e:
            fail("reissue_race", RACE_SUBJECT, f"round {r}: barrier broken (a worker did not come)", e)
            next_round = n_rounds + 1           # no more rounds: the others are gone
            return
        race_waits.append(time.perf_counter() - t_wait)
        if version is None:
            return
        token = round_token(race_seed, r)
        t0 = time.perf_counter()
        entry = {"op": "reissue_race", "subject": RACE_SUBJECT, "round": r, "expected_version": version,
                 "by": "admin" if by_admin else "user", "seed": RACE_SEED, "token": token}
        try:
            ids = service.reissue(RACE_SUBJECT, new_token=token, embeddings=centre_of(RACE_SEED),
                                  expected_version=version, client=client, **proof(info, by_admin, exact=True))
        except ConflictError:
            dt, outcome = time.perf_counter() - t0, "ConflictError"
        except PolicyError as e:
            dt, outcome = time.perf_counter() - t0, "PolicyError"
            if by_admin:
                fail("reissue_race", RACE_SUBJECT, f"round {r}: admin refused", e)
                return
            entry["attempt"] = "verify"         # the stale proof was a rejected verification
        except Exception as e:                  # noqa: BLE001
            fail("reissue_race", RACE_SUBJECT, f"round {r} raised", e)
            return
        else:
            dt = time.perf_counter() - t0
            log({**entry, "won": True, "ids": ids})
            counts["reissue_race_won"] += 1
            latencies["reissue_race_won"].append(dt)
            return
        required[outcome] += 1
        log({**entry, "won": False, "error": outcome})
        counts["reissue_race_lost"] += 1
        latencies["reissue_race_lost"].append(dt)

    while True:
        now = time.monotonic()
        if next_round <= n_rounds and (now >= start + next_round * race_every or now >= deadline):
            race_round(next_round)
            next_round += 1
            continue
        if now >= deadline:
            break
        op = pick.choices(ops, weights)[0]
        # fall back when the draw has no subject to work on
        if op in ("verify", "verify_wrong_token", "revoke", "reissue", "identify",
                  "enroll_duplicate", "lockout") and not active:
            op = "enroll"
        if op in ("verify_revoked", "revoke_revoked", "reissue_revoked") and not revoked:
            op = "enroll"
        subject, counted = None, op
        try:
            if op == "enroll":
                if revoked and pick.random() < 0.2:
                    subject = pick.choice(list(revoked))
                    sseed = revoked[subject]["seed"]
                else:
                    n_subjects += 1
                    subject, sseed = f"w{k}-{n_subjects}", seed * 1_000_003 + n_subjects
                token = new_token()
                t0 = time.perf_counter()
                ids = service.enroll(subject, embeddings=centre_of(sseed), user_token=token)
                dt = time.perf_counter() - t0
                revoked.pop(subject, None)
                active[subject] = {"seed": sseed, "token": token}
                log({"op": op, "subject": subject, "ids": ids, "seed": sseed, "token": token})
                if len(ids) != 2:
                    fail(op, subject, f"returned {len(ids)} ids, not 2")
                    continue
            elif op == "enroll_race":
                n_race += 1
                subject, sseed, token = f"race-{n_race}", 7_000_000 + n_race, new_token()
                t0 = time.perf_counter()
                try:
                    ids = service.enroll(subject, embeddings=centre_of(sseed), user_token=token)
                except DuplicateEnrollmentError:
                    dt = time.perf_counter() - t0
                    required["DuplicateEnrollmentError"] += 1
                    counted = "enroll_race_lost"
                else:
                    dt = time.perf_counter() - t0
                    log({"op": op, "subject": subject, "ids": ids, "seed": sseed, "token": token})
            elif op in ("verify", "verify_wrong_token"):
                subject = pick.choice(list(active))
                info = active[subject]
                probe = probe_of(centre_of(info["seed"]), rng)
                token = info["token"] if op == "verify" else new_token()
                t0 = time.perf_counter()
                d = service.verify(subject, user_token=token, embedding=probe, client=client)
                dt = time.perf_counter() - t0
                entry = {"op": op, "subject": subject, "accepted": d.accepted}
                if op == "verify_wrong_token":
                    entry["attempt"] = "verify"
                    failures[subject] += 1
                log(entry)                      # (a rejected genuine probe: fail() marks the count unsure)
                if not check_decision(d, op, subject, op == "verify"):
                    continue
            elif op == "identify":
                if pick.random() < 0.25 and RACE_SUBJECT not in unsure_failures:
                    subject, sseed = RACE_SUBJECT, RACE_SEED
                else:
                    subject = pick.choice(list(active))
                    sseed = active[subject]["seed"]
                probe = probe_of(centre_of(sseed), rng)
                t0 = time.perf_counter()
                hits = service.identify(embedding=probe, top_k=5, client=client)
                dt = time.perf_counter() - t0
                found = [c.subject_id for c in hits]
                log({"op": op, "subject": subject, "top": found})
                if not all(isinstance(c, Candidate) and c.accepted and c.similarity is None for c in hits):
                    fail(op, subject, f"candidates not accepted or with scores: {hits!r:.200}")
                    continue
                if found.count(subject) != 1:
                    fail(op, subject, f"found {found.count(subject)} times among the accepted {found}")
                    continue
                stale = sorted(set(found) & set(revoked))
                if stale:
                    fail(op, subject, f"revoked subjects {stale} among the candidates")
                    continue
                counts["identify_top1"] += found[0] == subject
            elif op in ("revoke", "reissue"):
                subject = pick.choice(list(active))
                info = active[subject]
                by_admin = pick.randrange(ADMIN_SHARE) == 0
                version = service.get(subject)[0]["version"] if pick.random() < 0.5 else None
                kwargs = dict(expected_version=version, client=client, **proof(info, by_admin))
                entry = {"op": op, "subject": subject, "by": "admin" if by_admin else "user",
                         "expected_version": version}
                t0 = time.perf_counter()
                if op == "revoke":
                    n = service.revoke(subject, **kwargs)
                    dt = time.perf_counter() - t0
                    revoked[subject] = active.pop(subject)
                    log({**entry, "n": n})
                    if n != 2:
                        fail(op, subject, f"revoked {n} templates, not 2")
                        continue
                else:
                    token = new_token()
                    ids = service.reissue(subject, new_token=token, embeddings=centre_of(info["seed"]), **kwargs)
                    dt = time.perf_counter() - t0
                    info["token"] = token
                    log({**entry, "ids": ids, "seed": info["seed"], "token": token})
                    if len(ids) != 2:
                        fail(op, subject, f"returned {len(ids)} ids, not 2")
                        continue
            elif op == "verify_revoked":
                subject = pick.choice(list(revoked))
                info = revoked[subject]
                t0 = time.perf_counter()
                d = service.verify(subject, user_token=info["token"], embedding=centre_of(info["seed"]),
                                   client=client)
                dt = time.perf_counter() - t0
                failures[subject] += 1
                log({"op": op, "subject": subject, "accepted": d.accepted, "attempt": "verify"})
                if not check_decision(d, op, subject, False):
                    continue
            elif op == "verify_unknown":
                subject = f"w{k}-never-{pick.getrandbits(40):x}"
                t0 = time.perf_counter()
                d = service.verify(subject, user_token=new_token(), embedding=centre_of(0), client=client)
                dt = time.perf_counter() - t0
                log({"op": op, "subject": subject, "accepted": d.accepted, "attempt": "verify"})
                if not check_decision(d, op, subject, False):
                    continue
            elif op == "lockout":
                # half the time the own subject with the most failures (driven into lockout and kept
                # there), else a random one (mostly the rejection path)
                candidates = [s for s in active if s not in unsure_failures]
                if not candidates:
                    continue
                subject = max(candidates, key=lambda s: failures[s]) if pick.random() < 0.5 \
                    else pick.choice(candidates)
                info = active[subject]
                locked = failures[subject] >= LOCKOUT_FAILURES
                token = info["token"] if locked else new_token()
                t0 = time.perf_counter()
                try:
                    d = strict.verify(subject, user_token=token, embedding=probe_of(centre_of(info["seed"]), rng),
                                      client=client)
                except RateLimitedError:
                    dt = time.perf_counter() - t0
                    log({"op": op, "subject": subject, "locked": True, "attempt": "rate-limited"})
                    if not locked:
                        fail(op, subject, f"RateLimitedError after {failures[subject]} failures")
                        continue
                    required["RateLimitedError"] += 1
                    counted = "lockout_locked"
                else:
                    dt = time.perf_counter() - t0
                    log({"op": op, "subject": subject, "locked": False, "accepted": d.accepted,
                         "attempt": None if d.accepted else "verify"})
                    failures[subject] += not d.accepted
                    if locked:
                        fail(op, subject, f"no RateLimitedError after {failures[subject]} failures "
                                          f"(accepted={d.accepted})")
                        continue
                    if not check_decision(d, op, subject, False):
                        continue
                    counted = "lockout_rejected"
            else:                                    # ops that must raise a typed error
                by_admin = False
                if op == "enroll_duplicate":
                    subject = pick.choice(list(active))
                    want = "DuplicateEnrollmentError"
                    call = lambda: service.enroll(subject, embeddings=centre_of(active[subject]["seed"]),  # noqa: E731
                                                  user_token=new_token())
                else:                                # revoke_revoked, reissue_revoked
                    subject = pick.choice(list(revoked))
                    info = revoked[subject]
                    by_admin = pick.random() < 0.5
                    want = "RevokedTemplateError" if by_admin else "PolicyError"
                    kwargs = dict(client=client, **proof(info, by_admin, exact=True))
                    call = {"revoke_revoked": lambda: service.revoke(subject, **kwargs),
                            "reissue_revoked": lambda: service.reissue(
                                subject, new_token=new_token(), embeddings=centre_of(info["seed"]), **kwargs)}[op]
                t0 = time.perf_counter()
                try:
                    call()
                except (RevokedTemplateError, DuplicateEnrollmentError, PolicyError) as e:
                    dt = time.perf_counter() - t0
                    if type(e).__name__ != want:
                        fail(op, subject, f"expected {want}", e)
                        continue
                    required[want] += 1
                    entry = {"op": op, "subject": subject, "error": want}
                    if want == "PolicyError":        # the refused proof is a rejected verification
                        entry["attempt"] = "verify"
                        failures[subject] += 1
                    log(entry)
                else:
                    log({"op": op, "subject": subject, "unexpected_success": True})
                    fail(op, subject, f"returned instead of raising {want}")
                    continue
            counts[counted] += 1
            latencies[counted].append(dt)
        except Exception as e:                       # noqa: BLE001 - every other error counts
            fail(op, subject, "raised", e)
    elapsed = time.monotonic() - start
    journal.close()
    store.close()
    summary.update(counts=dict(counts), required_errors=dict(required), unexpected=dict(unexpected),
                   elapsed_s=elapsed, latency_ms={op: _latency(v) for op, v in latencies.items()},
                   race_wait_ms=_latency(race_waits) if race_waits else {})
    _write_json(os.path.join(folder, f"worker-w{k}.json"), summary)


def _latency(v: list[float]) -> dict:
    return {"n": len(v), "mean": round(1e3 * float(np.mean(v)), 2),
            "p50": round(1e3 * float(np.percentile(v, 50)), 2),
            "p90": round(1e3 * float(np.percentile(v, 90)), 2),
            "p99": round(1e3 * float(np.percentile(v, 99)), 2),
            "max": round(1e3 * float(np.max(v)), 2)}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- audit
def read_journals(folder: str, workers: int) -> tuple[dict, list[str]]:
    """subject → list of acknowledged entries (in order), and the problems found."""
    by_subject: dict[str, list[dict]] = collections.defaultdict(list)
    problems = []
    for k in range(workers):
        path = os.path.join(folder, f"journal-w{k}.jsonl")
        try:
            with open(path) as f:
                lines = f.read().split("\n")
        except OSError as e:
            problems.append(f"{path}: unreadable journal: {e}")
            continue
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append(f"{path}:{i + 1}: unreadable journal line")
                continue
            entry["worker"] = k
            if entry.get("subject") is not None:
                by_subject[entry["subject"]].append(entry)
    return by_subject, problems


def _race_writes(entries: list[dict], workers: int, n_rounds: int, problem, stats) -> list[dict]:
    """The race subject's acknowledged writes in order (its enrollment, then each round's
    winner), after checking that every round had every worker and exactly one winner."""
    rounds: dict[int, list[dict]] = collections.defaultdict(list)
    for e in entries:
        if e["op"] == "reissue_race":
            rounds[e["round"]].append(e)
    winners = []
    for r in range(1, n_rounds + 1):
        es = rounds.get(r, [])
        won = [e for e in es if e.get("won")]
        if len(es) != workers:
            problem(f"{RACE_SUBJECT}: round {r} has {len(es)} outcomes, not one per worker ({workers})")
        if len(won) != 1:
            problem(f"{RACE_SUBJECT}: round {r} has {len(won)} winners "
                    f"(workers {sorted(e['worker'] for e in won)}, expected_version "
                    f"{sorted({e['expected_version'] for e in won})})")
        stats["race_rounds"] += 1
        stats["race_conflicts"] += sum(e.get("error") == "ConflictError" for e in es)
        stats["race_stale_proofs"] += sum(e.get("error") == "PolicyError" for e in es)
        winners += won
    extra = sorted(set(rounds) - set(range(1, n_rounds + 1)))
    if extra:
        problem(f"{RACE_SUBJECT}: outcomes of unplanned rounds {extra}")
    return [e for e in entries if e["op"] == "enroll"] + winners


def audit(backend: str, location: str, folder: str, workers: int, n_rounds: int) -> dict:
    """Check the store against the journals, from a fresh connection (see the module doc)."""
    from iom.errors import TemplateError

    t0 = time.perf_counter()
    journals, problems = read_journals(folder, workers)
    stats = collections.Counter(problems=len(problems))

    def problem(msg: str) -> None:
        if len(problems) < 50:
            problems.append(msg)
        stats["problems"] += 1

    store = open_backend_store(backend, location)
    try:
        service = make_service(store)      # authenticates the store: verifies the log's whole HMAC chain
        events = store.events_since(0)
        logged_attempts = store.attempts()
    except TemplateError as e:
        problem(f"the store fails authentication: {type(e).__name__}: {e}")
        store.close()
        return {"ok": False, "problems": problems[:20], "n_problems": stats["problems"], "rows": None,
                "rows_audited": 0, "integrity_check": None, "audit_s": round(time.perf_counter() - t0, 1)}
    rng = np.random.default_rng(12345)
    events_of: dict[str, list] = collections.defaultdict(list)
    for ev in events:
        events_of[ev.subject_id].append(ev)
    unsure = {s for s, es in journals.items() if any(e["op"] in ("uncertain", "uncertain_attempts") for e in es)}

    # the attempts table holds exactly the failed attempts the journals logged
    expected = collections.Counter((s, f"w{e['worker']}", e["attempt"])
                                   for s, es in journals.items() for e in es if e.get("attempt"))
    actual = collections.Counter((s, c, op) for _, s, c, op, _ in logged_attempts)
    for key in sorted(set(expected) | set(actual)):
        if key[0] not in unsure and expected[key] != actual[key]:
            problem(f"{key[0]}: {actual[key]} {key[2]!r} attempts by {key[1]} in the store, "
                    f"{expected[key]} in the journal")
    stats["attempts_in_store"] = len(logged_attempts)
    stats["attempts_journaled"] = sum(expected.values())

    in_store = set(store.subjects(include_revoked=True))
    for subject in sorted(in_store - set(journals)):
        problem(f"{subject}: in the store but in no journal")
    for subject in sorted(set(events_of) - set(journals)):
        problem(f"{subject}: in the event log but in no journal")
    rows_audited = 0
    for subject, entries in sorted(journals.items()):
        if subject == RACE_SUBJECT:
            writes = _race_writes(entries, workers, n_rounds, problem, stats)
        else:
            writes = [e for e in entries if e["op"] in ("enroll", "enroll_race", "reissue", "revoke")]
        uncertain = any(e["op"] == "uncertain" for e in entries)
        if subject.startswith("race-"):
            winners = {e["worker"] for e in writes}
            if len(writes) != 1:
                problem(f"{subject}: {len(writes)} acknowledged enrollments (workers {sorted(winners)})")
        if not writes:                      # only reads / required errors (e.g. verify_unknown)
            if subject in in_store or subject in events_of:
                problem(f"{subject}: never acknowledged as enrolled, yet in the store")
            continue
        stats["subjects"] += 1
        try:
            history = store.history(subject)           # authenticates every row (HMAC, log)
        except TemplateError as e:
            problem(f"{subject}: history() failed: {type(e).__name__}: {e}")
            stats["checksum_or_read_failures"] += 1
            continue
        rows_audited += len(history)
        by_id = {r.template_id: r for r in history}
        acked_ids = []
        for e in writes:
            for tid in e.get("ids", []):
                acked_ids.append(tid)
                r = by_id.get(tid)
                if r is None:
                    problem(f"{subject}: acknowledged template {tid} ({e['op']}) is missing")
                elif r.subject_id != subject:
                    problem(f"{subject}: template {tid} belongs to {r.subject_id!r}")
        stats["acknowledged_templates"] += len(acked_ids)
        if uncertain:
            stats["uncertain_subjects"] += 1
            continue                        # its last write may or may not have happened
        extra = sorted(set(by_id) - set(acked_ids))
        if extra:
            problem(f"{subject}: templates {extra} were never acknowledged")
        # the event log: exactly the acknowledged writes, in order, with their template ids
        want, before = [], ()
        for e in writes:
            op = EVENT_OP[e["op"]]
            new = tuple(sorted(e.get("ids", ())))
            want.append((op, () if op == "enroll" else before, new))
            before = new
        got = [(ev.op, tuple(sorted(ev.revoked_ids)), tuple(sorted(ev.new_ids))) for ev in events_of.get(subject, [])]
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            problem(f"{subject}: event log {got[at:at + 2]} differs from the journal {want[at:at + 2]} "
                    f"at write {at} ({len(got)} events, {len(want)} writes)")
        else:
            stats["events_matched"] += len(got)
            evs = events_of[subject]
            for i, e in enumerate(writes):
                if e.get("expected_version") is None:
                    continue
                stats["writes_with_expected_version"] += 1
                previous = evs[i - 1].seq if i else 0
                if e["expected_version"] != previous:
                    problem(f"{subject}: {e['op']} acknowledged with expected_version {e['expected_version']}, "
                            f"but the log entry before it is {previous}")
        last = writes[-1]
        active = [r for r in history if r.revoked_at is None]
        if last["op"] == "revoke":
            stats["revoked_subjects"] += 1
            if active:
                problem(f"{subject}: revoked last, yet templates {[r.template_id for r in active]} are active")
            continue
        stats["active_subjects"] += 1
        purposes = sorted(r.purpose for r in active)
        if purposes != ["identify", "verify"]:
            problem(f"{subject}: active templates {[(r.template_id, r.purpose) for r in active]}, "
                    "not one verify and one identify")
            continue
        if sorted(r.template_id for r in active) != sorted(last["ids"]):
            problem(f"{subject}: active templates {sorted(r.template_id for r in active)} are not "
                    f"those of its last {last['op']} {sorted(last['ids'])}")
            continue
        # intact: the stored code still verifies a genuine probe under the last token
        try:
            d = service.verify(subject, user_token=last["token"],
                               embedding=probe_of(centre_of(last["seed"]), rng), client="audit")
        except TemplateError as e:
            problem(f"{subject}: final verify failed: {type(e).__name__}: {e}")
            continue
        if not d.accepted:
            problem(f"{subject}: final verify rejected")
        else:
            stats["final_verifications_accepted"] += 1
    stats["events"] = len(events)
    if stats["events_matched"] + sum(len(events_of[s]) for s in unsure if s in events_of) != len(events):
        problem(f"{len(events)} log entries, {stats['events_matched']} matched to journals "
                "(plus those of uncertain subjects)")

    # every row was audited: count the table directly, and the database's own check
    if backend == "sqlite":
        con = sqlite3.connect(location)
        try:
            (total_rows,), = con.execute("SELECT COUNT(*) FROM templates").fetchall()
            integrity = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
        finally:
            con.close()
        integrity_ok = integrity == ["ok"]
        if not integrity_ok:
            problem(f"PRAGMA integrity_check: {integrity[:5]}")
    else:
        import psycopg
        with psycopg.connect(location) as con:
            (total_rows,), = con.execute("SELECT COUNT(*) FROM templates").fetchall()
        integrity = None
    if total_rows != rows_audited:
        problem(f"the table holds {total_rows} rows, {rows_audited} were audited")
    store.close()
    return {"ok": not problems and stats["problems"] == 0, "problems": problems[:20],
            "n_problems": max(stats["problems"], len(problems)), "rows": int(total_rows),
            "rows_audited": rows_audited, "integrity_check": integrity,
            "audit_s": round(time.perf_counter() - t0, 1),
            **{k: int(v) for k, v in stats.items() if k != "problems"}}


# ---------------------------------------------------------------------------- one back end
def run_backend(backend: str, location: str, args, folder: str) -> dict:
    """Start the workers on the store at ``location``, join them, audit; the figures."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(args.workers + 1)
    round_barrier = ctx.Barrier(args.workers)
    procs = [ctx.Process(target=worker, name=f"{backend}-w{k}",
                         args=(k, backend, location, args.seconds, folder, args.seed * 100 + k, args.seed,
                               args.n_rounds, args.race_every, barrier, round_barrier))
             for k in range(args.workers)]
    t_load = time.perf_counter()
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=STARTUP_TIMEOUT)
    except Exception:                                  # a worker failed to start
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        raise RuntimeError(f"{backend}: workers failed to start: " +
                           " | ".join(str(_read(folder, k).get("fatal")) for k in range(args.workers)))
    startup_s = time.perf_counter() - t_load
    t_run = time.perf_counter()
    for p in procs:
        p.join(args.seconds + 600)
        if p.is_alive():
            p.terminate()
    wall_s = time.perf_counter() - t_run
    summaries = [_read(folder, k) for k in range(args.workers)]
    exit_codes = [p.exitcode for p in procs]

    counts, required, unexpected = collections.Counter(), collections.Counter(), collections.Counter()
    latency: dict[str, dict] = {}
    samples, waits = [], []
    for s in summaries:
        counts.update(s.get("counts", {}))
        required.update(s.get("required_errors", {}))
        unexpected.update(s.get("unexpected", {}))
        samples += s.get("unexpected_samples", [])
        if s.get("race_wait_ms"):
            waits.append(s["race_wait_ms"])
        if s.get("fatal"):
            unexpected["worker_crashed"] += 1
            samples.append(s["fatal"][-500:])
        for op, lat in s.get("latency_ms", {}).items():
            agg = latency.setdefault(op, {"n": 0, "mean": 0.0, "p50": [], "p90": [], "p99": [], "max": 0.0})
            agg["mean"] += lat["mean"] * lat["n"]
            agg["n"] += lat["n"]
            for q in ("p50", "p90", "p99"):
                agg[q].append(lat[q])
            agg["max"] = max(agg["max"], lat["max"])
    for code in exit_codes:
        if code != 0:
            unexpected["worker_exit_nonzero"] += 1
    for op, agg in latency.items():       # p50/p90: the median of the workers'; p99: the worst worker's
        agg.update(mean=round(agg["mean"] / max(agg["n"], 1), 2), p50=round(float(np.median(agg["p50"])), 2),
                   p90=round(float(np.median(agg["p90"])), 2), p99=float(np.max(agg["p99"])))
    elapsed = float(np.mean([s.get("elapsed_s", args.seconds) for s in summaries]))
    ops = {op: counts.get(op, 0) for op in OUTCOMES}
    total_ops = sum(ops.values())
    result = {
        "backend": backend, "workers": args.workers, "seconds": args.seconds,
        "elapsed_s": round(elapsed, 2), "wall_s": round(wall_s, 2), "startup_s": round(startup_s, 1),
        "ops": ops, "ops_per_s": {op: round(n / elapsed, 1) for op, n in ops.items()},
        "required_errors": dict(required),
        "identify_top1": counts.get("identify_top1", 0),
        "race_rounds_planned": args.n_rounds,
        "race_wait_ms": {"mean": round(float(np.mean([w["mean"] for w in waits])), 2) if waits else None,
                         "max": max((w["max"] for w in waits), default=None)},
        "total_ops": total_ops, "total_ops_per_s": round(total_ops / elapsed, 1),
        "writes_per_s": round(sum(ops[op] for op in WRITE_OUTCOMES) / elapsed, 1),
        "unexpected_errors": dict(unexpected), "n_unexpected": sum(unexpected.values()),
        "unexpected_samples": samples[:10], "latency_ms": latency, "worker_exit_codes": exit_codes,
    }
    result["audit"] = audit(backend, location, folder, args.workers, args.n_rounds)
    return result


def _read(folder: str, k: int) -> dict:
    try:
        with open(os.path.join(folder, f"worker-w{k}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"fatal": f"worker {k} wrote no summary"}


@contextlib.contextmanager
def backend_location(backend: str, folder: str):
    """A fresh, migrated store for the back end; yields its location (path or URL)."""
    if backend == "sqlite":
        path = os.path.join(folder, "templates.db")
        open_backend_store("sqlite", path).close()
        yield path
        return
    sys.path.insert(0, ROOT)
    import psycopg
    from tests.pg_server import fresh_database, postgres_server

    with postgres_server() as server, fresh_database(server.dsn, prefix="iombench") as dsn:
        # the store factory takes URLs only (a libpq key=value string is refused)
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        url = f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}?connect_timeout=10"
        open_backend_store("postgres", url).close()
        yield url


def report(r: dict) -> None:
    b = r["backend"]
    print(f"[{b}] {r['workers']} workers, {r['elapsed_s']:.1f} s (startup {r['startup_s']} s): "
          f"{r['total_ops']} ops, {r['total_ops_per_s']} ops/s, writes {r['writes_per_s']}/s", flush=True)
    for op, n in r["ops"].items():
        lat = r["latency_ms"].get(op, {})
        print(f"[{b}]   {op:20s} {n:7d}  {r['ops_per_s'][op]:7.1f}/s   latency mean {lat.get('mean', 0):7.2f} "
              f"p50 {lat.get('p50', 0):7.2f} p90 {lat.get('p90', 0):7.2f} p99 {lat.get('p99', 0):8.2f} "
              f"max {lat.get('max', 0):8.2f} ms   → {OUTCOMES[op]}")
    w = r["race_wait_ms"]
    print(f"[{b}] reissue race: {r['race_rounds_planned']} rounds planned; barrier wait mean {w['mean']} ms, "
          f"max {w['max']} ms (not in the latencies)")
    print(f"[{b}] required errors by type: {r['required_errors']}")
    print(f"[{b}] unexpected errors: {r['n_unexpected']} {r['unexpected_errors']}")
    for s in r["unexpected_samples"]:
        print(f"[{b}]   {s}")
    a = r["audit"]
    print(f"[{b}] audit {'OK' if a['ok'] else 'FAILED'} ({a['audit_s']} s): {a.get('subjects', 0)} subjects "
          f"({a.get('active_subjects', 0)} active, {a.get('revoked_subjects', 0)} revoked, "
          f"{a.get('uncertain_subjects', 0)} uncertain), {a['rows']} rows ({a['rows_audited']} audited, "
          f"HMACs ok), {a.get('acknowledged_templates', 0)} acknowledged templates present, "
          f"{a.get('events', 0)} log entries ({a.get('events_matched', 0)} matched to journals, "
          f"{a.get('writes_with_expected_version', 0)} writes with expected_version), "
          f"{a.get('attempts_in_store', 0)} attempts logged ({a.get('attempts_journaled', 0)} journaled), "
          f"race: {a.get('race_rounds', 0)} rounds, {a.get('race_conflicts', 0)} ConflictError, "
          f"{a.get('race_stale_proofs', 0)} stale proofs; "
          f"{a.get('final_verifications_accepted', 0)} final verifications accepted"
          + (f", integrity_check {a['integrity_check']}" if a["integrity_check"] is not None else ""),
          flush=True)
    for p in a["problems"]:
        print(f"[{b}]   problem: {p}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="run time per back end")
    parser.add_argument("--workers", type=int, default=4, help="processes")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--out", default=None, help="folder for journals and summaries (default: a temp dir, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--race_every", type=float, default=2.0,
                        help="seconds between reissue-race rounds (0: no race)")
    args = parser.parse_args()
    if not 0 < args.seconds < FAILURE_WINDOW_S / 2:
        parser.error(f"--seconds must be in (0, {FAILURE_WINDOW_S / 2:g}) (the failure window must cover the run)")
    if args.workers < 1 or args.race_every < 0:
        parser.error("--workers must be positive and --race_every non-negative")
    args.n_rounds = max(0, int(args.seconds // args.race_every) - 1) if args.race_every > 0 else 0

    out = args.out or tempfile.mkdtemp(prefix="iom-concurrency-")
    loadavg_before = loadavg()
    print(f"machine: {os.cpu_count()} cpus ({cpu_model()}), load average {loadavg_before}; "
          f"{args.workers} workers × {args.seconds:g} s per back end, {args.n_rounds} reissue-race rounds; "
          f"scrypt_n {SCRYPT_N} (the policy default is 2**14); journals in {out}", flush=True)
    results = {}
    try:
        for backend in args.backends:
            folder = os.path.join(out, backend)
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            with backend_location(backend, folder) as location:
                results[backend] = run_backend(backend, location, args, folder)
            results[backend]["loadavg_after"] = loadavg()
            report(results[backend])
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    ok = all(r["audit"]["ok"] and r["n_unexpected"] == 0 for r in results.values())
    loadavg_after = loadavg()
    print(f"load average after: {loadavg_after}; overall {'OK' if ok else 'FAILED'}", flush=True)
    print(json.dumps({
        "ok": ok, "workers": args.workers, "seconds": args.seconds, "race_every": args.race_every,
        "backends": results, "hasher": HASHER, "policy": POLICY_ARGS, "lockout_policy": LOCKOUT_POLICY_ARGS,
        "keras_backend": os.environ.get("KERAS_BACKEND", "(keras.json default)"),
        "cpu_count": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
