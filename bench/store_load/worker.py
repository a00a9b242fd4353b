"""One worker process of ``bench/concurrency.py``: load the hasher, connect, wait for the others,
run ops drawn at random until the deadline (and the reissue-race rounds), journal every
acknowledged op; the ops themselves are in :mod:`bench.store_load.ops`."""

from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
import traceback

import numpy as np

from bench.common import distribution, set_thread_env, write_json
from bench.store_load.ops import Ops
from bench.store_load.setup import (ADMIN_SECRET, LOCKOUT_FAILURES, RACE_SEED, RACE_SUBJECT, ROUND_TIMEOUT,
                                    STARTUP_TIMEOUT, TOKEN_ALPHABET, WEIGHTS, WRITES, centre_of, make_service,
                                    open_backend_store, probe_of, round_token, unit)

#: ops that need an active subject of the worker's own / a revoked one (else: an enroll)
NEEDS_ACTIVE = ("verify", "verify_wrong_token", "revoke", "reissue", "identify", "enroll_duplicate", "lockout")
NEEDS_REVOKED = ("verify_revoked", "revoke_revoked", "reissue_revoked")


def run(k: int, backend: str, location: str, seconds: float, folder: str, seed: int,
        race_seed: int, n_rounds: int, race_every: float, barrier, round_barrier) -> None:
    """One process: load the hasher, connect, wait for the others, run ops until the
    deadline (and the race rounds); journal to ``folder/journal-w<k>.jsonl``, summary to
    ``folder/worker-w<k>.json``."""
    # 4 processes share the cores: one compute thread each (set before TensorFlow loads)
    set_thread_env(1, ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"), override=False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    worker = Worker(k, folder, seed, race_seed, n_rounds, race_every, round_barrier)
    try:
        worker.connect(backend, location)
    except BaseException:
        worker.summary["fatal"] = traceback.format_exc()
        worker.write_summary()
        barrier.abort()
        raise
    barrier.wait(timeout=STARTUP_TIMEOUT)
    worker.loop(seconds)


class Worker(Ops):
    """A worker's state: its services, its own subjects (active, revoked), the failures it
    caused, its counts, latencies and journal."""

    def __init__(self, k: int, folder: str, seed: int, race_seed: int, n_rounds: int, race_every: float,
                 round_barrier):
        self.k, self.folder, self.seed, self.race_seed = k, folder, seed, race_seed
        self.n_rounds, self.race_every, self.round_barrier = n_rounds, race_every, round_barrier
        self.summary = {"worker": k, "counts": {}, "required_errors": {}, "unexpected": {},
                        "unexpected_samples": [], "latency_ms": {}, "race_wait_ms": {}, "fatal": None}
        self.client = f"w{k}"
        self.journal = open(os.path.join(folder, f"journal-w{k}.jsonl"), "w", buffering=1)
        self.rng = np.random.default_rng(seed)
        self.pick = random.Random(seed)
        self.active: dict[str, dict] = {}       # subject → {"seed", "token"}
        self.revoked: dict[str, dict] = {}
        self.failures: collections.Counter = collections.Counter()   # failed verifies logged per own subject
        self.unsure_failures: set[str] = set()  # subjects whose failure count is unknown (unexpected error)
        self.n_subjects = self.n_race = 0
        self.next_round = 1
        self.counts, self.required, self.unexpected = (collections.Counter() for _ in range(3))
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.race_waits: list[float] = []
        self.subject = None                     # the subject of the op under way (for its errors)
        # the refusals the store acknowledged (record_attempt calls that returned), in order, and
        # per subject the (start, end) monotonic times of the lockout call that logged its last one
        self.refusals_written: list[tuple] = []
        self.refusal_logged: dict[str, tuple[float, float]] = {}

    def connect(self, backend: str, location: str) -> None:
        """Open the store, build the services, warm the network; worker 0 enrols the race subject."""
        self.store = open_backend_store(backend, location)
        self._watch_refusals()
        self.service = make_service(self.store)
        self.strict = make_service(self.store, max_failures=LOCKOUT_FAILURES)   # the lockout op's service
        # warm the network (first call builds the graph) on a throw-away input, no store call
        self.service.pipeline.hasher.encode(unit(np.ones(512))[None], None)
        if self.k == 0:      # the shared subject of the reissue race, enrolled before anyone starts
            token = round_token(self.race_seed, 0)
            ids = self.service.enroll(RACE_SUBJECT, embeddings=centre_of(RACE_SEED), user_token=token)
            self.log({"op": "enroll", "subject": RACE_SUBJECT, "ids": ids, "seed": RACE_SEED,
                      "token": token, "round": 0})

    def _watch_refusals(self) -> None:
        """Note every refusal the store acknowledges (``record_attempt`` returned): the service
        logs a refusal at most once a minute per (subject, client, op), so which lockout calls
        wrote one is known from the store's answer, not assumed (the op checks that rule)."""
        record = self.store.record_attempt

        def record_attempt(subject_id, client, op, outcome):
            record(subject_id, client, op, outcome)
            self.refusals_written.append((subject_id, client, op, outcome))

        self.store.record_attempt = record_attempt

    # ------------------------------------------------------------------------ helpers of the ops
    def log(self, entry: dict) -> None:
        self.journal.write(json.dumps(entry) + "\n")
        self.journal.flush()

    def write_summary(self) -> None:
        write_json(os.path.join(self.folder, f"worker-w{self.k}.json"), self.summary, indent=None, atomic=True)

    def new_token(self) -> str:
        return "".join(self.pick.choices(TOKEN_ALPHABET, k=20))

    def fail(self, op: str, subject: str | None, what: str, exc: BaseException | None = None) -> None:
        """An unexpected error; the subject's failure count (and, after a write, its state) unsure."""
        name = type(exc).__name__ if exc is not None else what
        self.unexpected[name] += 1
        if len(self.summary["unexpected_samples"]) < 10:
            self.summary["unexpected_samples"].append(f"{op} {subject}: {what}"
                                                      + (f" {type(exc).__name__}: {exc}" if exc else ""))
        if subject is None:
            return
        self.unsure_failures.add(subject)
        self.log({"op": "uncertain_attempts", "subject": subject, "after": op})
        if op in WRITES or op in ("enroll_race", "reissue_race"):
            # the outcome of this write is unknown: leave the subject alone from now on
            self.active.pop(subject, None)
            self.revoked.pop(subject, None)
            self.log({"op": "uncertain", "subject": subject, "after": op})

    def check_decision(self, d, op: str, subject: str, accepted: bool) -> bool:
        """Whether ``d`` is the required decision (and gives no score); else an unexpected error."""
        from iom.service.service import Decision

        if not isinstance(d, Decision) or d.similarity is not None or d.threshold is not None:
            self.fail(op, subject, f"not a score-free Decision: {d!r}")
            return False
        if d.accepted != accepted:
            self.fail(op, subject, f"accepted={d.accepted}, required {accepted}")
            return False
        return True

    def proof(self, info: dict, by_admin: bool, exact: bool = False) -> dict:
        """Keyword arguments proving the right to revoke/reissue: admin, or token + face."""
        if by_admin:
            return {"admin_secret": ADMIN_SECRET}
        face = centre_of(info["seed"]) if exact else probe_of(centre_of(info["seed"]), self.rng)
        return {"user_token": info["token"], "proof_embedding": face}

    # ------------------------------------------------------------------------ the run
    def race_round(self, r: int) -> None:
        """Round ``r`` of the reissue race: read the version, meet the others, reissue with it."""
        from iom.errors import ConflictError, PolicyError

        by_admin = r % 2 == 0
        info = {"seed": RACE_SEED, "token": round_token(self.race_seed, r - 1)}
        try:
            version = self.service.get(RACE_SUBJECT)[0]["version"]
        except Exception as e:                  # noqa: BLE001
            self.fail("reissue_race", RACE_SUBJECT, "get() raised", e)
            version = None
        t_wait = time.perf_counter()
        try:
            self.round_barrier.wait(timeout=ROUND_TIMEOUT)
        except threading.BrokenBarrierError as e:
            self.fail("reissue_race", RACE_SUBJECT, f"round {r}: barrier broken (a worker did not come)", e)
            self.next_round = self.n_rounds + 1     # no more rounds: the others are gone
            return
        self.race_waits.append(time.perf_counter() - t_wait)
        if version is None:
            return
        token = round_token(self.race_seed, r)
        t0 = time.perf_counter()
        entry = {"op": "reissue_race", "subject": RACE_SUBJECT, "round": r, "expected_version": version,
                 "by": "admin" if by_admin else "user", "seed": RACE_SEED, "token": token}
        try:
            ids = self.service.reissue(RACE_SUBJECT, new_token=token, embeddings=centre_of(RACE_SEED),
                                       expected_version=version, client=self.client,
                                       **self.proof(info, by_admin, exact=True))
        except ConflictError:
            dt, outcome = time.perf_counter() - t0, "ConflictError"
        except PolicyError as e:
            dt, outcome = time.perf_counter() - t0, "PolicyError"
            if by_admin:
                self.fail("reissue_race", RACE_SUBJECT, f"round {r}: admin refused", e)
                return
            entry["attempt"] = "verify"         # the stale proof was a rejected verification
        except Exception as e:                  # noqa: BLE001
            self.fail("reissue_race", RACE_SUBJECT, f"round {r} raised", e)
            return
        else:
            dt = time.perf_counter() - t0
            self.log({**entry, "won": True, "ids": ids})
            self.counts["reissue_race_won"] += 1
            self.latencies["reissue_race_won"].append(dt)
            return
        self.required[outcome] += 1
        self.log({**entry, "won": False, "error": outcome})
        self.counts["reissue_race_lost"] += 1
        self.latencies["reissue_race_lost"].append(dt)

    def loop(self, seconds: float) -> None:
        """Ops until ``seconds`` after the start (race rounds at their times); the summary written."""
        start = time.monotonic()
        deadline = start + seconds
        ops, weights = list(WEIGHTS), list(WEIGHTS.values())
        while True:
            now = time.monotonic()
            if self.next_round <= self.n_rounds and (now >= start + self.next_round * self.race_every
                                                     or now >= deadline):
                self.race_round(self.next_round)
                self.next_round += 1
                continue
            if now >= deadline:
                break
            op = self.pick.choices(ops, weights)[0]
            # fall back when the draw has no subject to work on
            if op in NEEDS_ACTIVE and not self.active:
                op = "enroll"
            if op in NEEDS_REVOKED and not self.revoked:
                op = "enroll"
            self.subject = None
            try:
                outcome = self.do(op)
                if outcome is None:             # not counted (an unexpected error, or nothing to do)
                    continue
                counted, dt = outcome
                self.counts[counted] += 1
                self.latencies[counted].append(dt)
            except Exception as e:              # noqa: BLE001 - every other error counts
                self.fail(op, self.subject, "raised", e)
        elapsed = time.monotonic() - start
        self.journal.close()
        self.store.close()
        self.summary.update(counts=dict(self.counts), required_errors=dict(self.required),
                            unexpected=dict(self.unexpected), elapsed_s=elapsed,
                            latency_ms={op: latency(v) for op, v in self.latencies.items()},
                            race_wait_ms=latency(self.race_waits) if self.race_waits else {})
        self.write_summary()


def latency(v: list[float]) -> dict:
    """n / mean / p50 / p90 / p99 / max of seconds, in ms."""
    return distribution(v, scale=1000, digits=2)
