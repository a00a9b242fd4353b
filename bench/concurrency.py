#!/usr/bin/env python
"""Several processes enroll, verify, revoke and reissue against one store; then an audit.

For each back end in ``--backends`` a fresh store is created (SQLite: a file in a temp
folder; PostgreSQL: a new database on a throw-away server started by ``tests/pg_server.py``),
then ``--workers`` processes (``multiprocessing``, 'spawn' context) each open their own
connection and build a :class:`~iom.service.service.TemplateService` on the shipped hasher
``models/iom_mbfn_celeba299_512x8`` (loaded once per process; embeddings, not photos: a
random unit 512-d vector per subject, probes are noisy copies at cosine ~0.96). After all
are ready they start together and loop for ``--seconds``, each op drawn at random:

==================  ==========================================================  ==============================
op                  what                                                        outcome required
==================  ==========================================================  ==============================
enroll              a new subject ``w<k>-<i>`` (1 in 5: re-enroll a revoked     ids of 2 templates
                    one of its own) under a fresh token
verify              own active subject, right token, noisy probe                accepted
verify_wrong_token  own active subject, wrong token                             rejected
revoke              own active subject                                          2 templates revoked
reissue             own active subject, new token                               2 new ids
identify            refresh the gallery, noisy probe of an own active subject   the subject in the top 5
enroll_race         ``race-<j>`` (j: the worker's j-th try), same ids in every  ids, or DuplicateEnrollmentError
                    worker, so all workers compete for each of them
verify_revoked      own revoked subject                                         RevokedTemplateError
revoke_revoked      own revoked subject                                         RevokedTemplateError
reissue_revoked     own revoked subject                                         RevokedTemplateError
enroll_duplicate    own active subject                                          DuplicateEnrollmentError
verify_unknown      a subject never enrolled                                    UnknownSubjectError (exactly)
==================  ==========================================================  ==============================

Every *acknowledged* op (the call returned) is appended to the worker's journal
(``<out>/<backend>/journal-w<k>.jsonl``, one JSON object a line, flushed per line: op,
subject, returned template ids, the token and embedding seed of enrollments). Required
typed errors are counted per type; any other exception, a missing required error, a rejected
genuine probe or an accepted wrong token is an *unexpected error*. A subject touched by a
write that failed unexpectedly is marked uncertain in the journal and left alone.

After the deadline the workers are joined and a fresh connection audits the store against
the journals: every acknowledged enrollment's and reissue's template ids exist, with the
right subject; a subject whose last acknowledged write was a revocation has no active
template; every other one has exactly one active verify and one active identify template,
and they are those its last enrollment/reissue returned (all earlier ones revoked); no
subject or row in the store is missing from the journals; each ``race-<j>`` was
acknowledged to exactly one worker; every row of every subject passes its checksum
(``history()``); every active subject still verifies with its last token (the stored code
is intact); the row count equals the rows audited; SQLite: ``PRAGMA integrity_check`` is
``ok``.

Printed per back end: acknowledged ops per second by type, required errors by type,
unexpected errors, op latencies and the audit; as the LAST stdout line one JSON object with
every figure per back end, workers, seconds, cpu_count, load averages and the date. The exit
code is 1 if an audit failed or an unexpected error occurred.

Usage::

    python bench/concurrency.py                           # 60 s, 4 workers, sqlite and postgres
    python bench/concurrency.py --seconds 5 --backends sqlite --out /tmp/cc
"""

import argparse
import collections
import contextlib
import datetime
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
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
PROBE_NOISE = 0.3            # norm of the noise added to a unit embedding (cosine ~0.96)
STARTUP_TIMEOUT = 300        # s the workers may take to load the hasher and connect

#: op → weight of the random draw
WEIGHTS = {
    "enroll": 24, "verify": 24, "verify_wrong_token": 12, "revoke": 8, "reissue": 10,
    "identify": 3, "enroll_race": 4, "verify_revoked": 4, "revoke_revoked": 2,
    "reissue_revoked": 2, "enroll_duplicate": 3, "verify_unknown": 2,
}
#: ops that must raise this error (by class name; verify_unknown: exactly that class)
REQUIRED_ERROR = {
    "verify_revoked": "RevokedTemplateError", "revoke_revoked": "RevokedTemplateError",
    "reissue_revoked": "RevokedTemplateError", "enroll_duplicate": "DuplicateEnrollmentError",
    "verify_unknown": "UnknownSubjectError",
}
#: every outcome that is a required error, for the report (a lost race is one too)
REQUIRED_ERROR_OPS = {"enroll_race_lost": "DuplicateEnrollmentError", **REQUIRED_ERROR}
WRITES = ("enroll", "revoke", "reissue")


# ---------------------------------------------------------------------------- helpers
def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def centre_of(seed: int) -> np.ndarray:
    """The subject's embedding: a random unit 512-d vector from its seed."""
    return unit(np.random.default_rng(seed).normal(size=512))


def probe_of(centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A noisy copy of ``centre`` (cosine about 0.96)."""
    return unit(centre + PROBE_NOISE * unit(rng.normal(size=centre.shape[0])))


def open_backend_store(backend: str, location: str):
    if backend == "sqlite":
        from iom.service.sqlite_store import SQLiteStore
        return SQLiteStore(location)
    from iom.service.postgres_store import PostgresStore
    return PostgresStore(location)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class _NoEmbedder:
    """The pipeline's stage-1 slot: never used (the bench passes embeddings)."""

    input_size = 112

    def embed_arrays(self, images):
        raise AssertionError("no photos expected")


# ---------------------------------------------------------------------------- worker
def worker(k: int, backend: str, location: str, seconds: float, folder: str, seed: int,
           barrier) -> None:
    """One process: load the hasher, connect, wait for the others, run ops until the
    deadline; journal to ``folder/journal-w<k>.jsonl``, summary to ``folder/worker-w<k>.json``."""
    # 4 processes share the cores: one compute thread each (set before TensorFlow loads)
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    summary = {"worker": k, "counts": {}, "required_errors": {}, "unexpected": {},
               "unexpected_samples": [], "latency_ms": {}, "fatal": None}
    try:
        from arcface.pretrained import MODELS_DIR
        from iom.hashing.hasher import DeepIoMHasher
        from iom.service.errors import (DuplicateEnrollmentError, RevokedTemplateError,
                                        UnknownSubjectError)
        from iom.service.pipeline import Pipeline
        from iom.service.service import TemplateService

        hasher = DeepIoMHasher.load(os.path.join(MODELS_DIR, HASHER))
        store = open_backend_store(backend, location)
        service = TemplateService(Pipeline(_NoEmbedder(), hasher), store, SECRET,
                                  calibration=os.path.join(MODELS_DIR, HASHER, "calibration.json"))
        # warm the network (first call builds the graph) on a throw-away input, no store call
        hasher.encode(unit(np.ones(512))[None], None)
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
    n_subjects = n_race = n_tokens = 0
    counts, required, unexpected = (collections.Counter() for _ in range(3))
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    journal = open(os.path.join(folder, f"journal-w{k}.jsonl"), "w", buffering=1)

    def log(entry: dict) -> None:
        journal.write(json.dumps(entry) + "\n")
        journal.flush()

    def new_token() -> str:
        nonlocal n_tokens
        n_tokens += 1
        return f"w{k}-token-{n_tokens}-{pick.getrandbits(32):08x}"

    def fail(op: str, subject: str | None, what: str, exc: BaseException | None = None) -> None:
        name = type(exc).__name__ if exc is not None else what
        unexpected[name] += 1
        if len(summary["unexpected_samples"]) < 10:
            summary["unexpected_samples"].append(f"{op} {subject}: {what}"
                                                 + (f" {type(exc).__name__}: {exc}" if exc else ""))
        if op in WRITES or op == "enroll_race":
            # the outcome of this write is unknown: leave the subject alone from now on
            active.pop(subject, None)
            revoked.pop(subject, None)
            log({"op": "uncertain", "subject": subject, "after": op})

    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        op = pick.choices(ops, weights)[0]
        # fall back when the draw has no subject to work on
        if op in ("verify", "verify_wrong_token", "revoke", "reissue", "identify",
                  "enroll_duplicate") and not active:
            op = "enroll"
        if op in ("verify_revoked", "revoke_revoked", "reissue_revoked") and not revoked:
            op = "enroll"
        subject = None
        try:
            t0 = time.perf_counter()
            if op == "enroll":
                if revoked and pick.random() < 0.2:
                    subject = pick.choice(list(revoked))
                    sseed = revoked[subject]["seed"]
                else:
                    n_subjects += 1
                    subject, sseed = f"w{k}-{n_subjects}", seed * 1_000_003 + n_subjects
                token = new_token()
                ids = service.enroll(subject, embeddings=centre_of(sseed), user_token=token)
                dt = time.perf_counter() - t0
                revoked.pop(subject, None)
                active[subject] = {"seed": sseed, "token": token}
                log({"op": op, "subject": subject, "ids": ids, "seed": sseed, "token": token})
            elif op == "enroll_race":
                n_race += 1
                subject, sseed, token = f"race-{n_race}", 7_000_000 + n_race, new_token()
                try:
                    ids = service.enroll(subject, embeddings=centre_of(sseed), user_token=token)
                except DuplicateEnrollmentError:
                    dt = time.perf_counter() - t0
                    required["DuplicateEnrollmentError"] += 1
                    counts["enroll_race_lost"] += 1
                    latencies["enroll_race_lost"].append(dt)
                    continue
                dt = time.perf_counter() - t0
                log({"op": op, "subject": subject, "ids": ids, "seed": sseed, "token": token})
            elif op in ("verify", "verify_wrong_token", "identify"):
                subject = pick.choice(list(active))
                info = active[subject]
                probe = probe_of(centre_of(info["seed"]), rng)
                if op == "identify":
                    service.refresh()                # see the other processes' changes
                    hits = service.identify(embedding=probe, top_k=5)
                    dt = time.perf_counter() - t0
                    found = [s for s, _, _ in hits]
                    log({"op": op, "subject": subject, "top": found[:5]})
                    if subject not in found:
                        fail(op, subject, f"not in the top 5 {found}")
                        continue
                    counts["identify_top1"] += found[0] == subject
                else:
                    token = info["token"] if op == "verify" else info["token"] + "-wrong"
                    d = service.verify(subject, user_token=token, embedding=probe)
                    dt = time.perf_counter() - t0
                    log({"op": op, "subject": subject, "similarity": d.similarity, "accepted": d.accepted})
                    if d.accepted != (op == "verify"):
                        fail(op, subject, f"accepted={d.accepted} similarity={d.similarity:.3f}")
                        continue
            elif op == "revoke":
                subject = pick.choice(list(active))
                n = service.revoke(subject)
                dt = time.perf_counter() - t0
                revoked[subject] = active.pop(subject)
                log({"op": op, "subject": subject, "n": n})
                if n != 2:
                    fail(op, subject, f"revoked {n} templates, not 2")
                    continue
            elif op == "reissue":
                subject = pick.choice(list(active))
                token = new_token()
                ids = service.reissue(subject, new_token=token,
                                      embeddings=centre_of(active[subject]["seed"]))
                dt = time.perf_counter() - t0
                active[subject]["token"] = token
                log({"op": op, "subject": subject, "ids": ids, "seed": active[subject]["seed"],
                     "token": token})
            else:                                    # ops that must raise a typed error
                if op == "enroll_duplicate":
                    subject = pick.choice(list(active))
                    call = lambda: service.enroll(subject, embeddings=centre_of(active[subject]["seed"]),  # noqa: E731
                                                  user_token=new_token())
                elif op == "verify_unknown":
                    subject = f"w{k}-never-{pick.getrandbits(40):x}"
                    call = lambda: service.verify(subject, user_token="x", embedding=centre_of(0))  # noqa: E731
                else:
                    subject = pick.choice(list(revoked))
                    info = revoked[subject]
                    call = {"verify_revoked": lambda: service.verify(
                                subject, user_token=info["token"], embedding=centre_of(info["seed"])),
                            "revoke_revoked": lambda: service.revoke(subject),
                            "reissue_revoked": lambda: service.reissue(
                                subject, new_token=new_token(), embeddings=centre_of(info["seed"]))}[op]
                want = REQUIRED_ERROR[op]
                try:
                    call()
                except (RevokedTemplateError, DuplicateEnrollmentError, UnknownSubjectError) as e:
                    dt = time.perf_counter() - t0
                    if type(e).__name__ != want:
                        fail(op, subject, f"expected {want}", e)
                        continue
                    required[want] += 1
                else:
                    log({"op": op, "subject": subject, "unexpected_success": True})
                    fail(op, subject, f"returned instead of raising {want}")
                    continue
            counts[op] += 1
            latencies[op].append(dt)
        except Exception as e:                       # noqa: BLE001 - every other error counts
            fail(op, subject, "raised", e)
    elapsed = time.monotonic() - start
    journal.close()
    store.close()
    summary.update(counts=dict(counts), required_errors=dict(required), unexpected=dict(unexpected),
                   elapsed_s=elapsed, latency_ms={
                       op: {"n": len(v), "mean": round(1e3 * float(np.mean(v)), 2),
                            "p50": round(1e3 * float(np.percentile(v, 50)), 2),
                            "p99": round(1e3 * float(np.percentile(v, 99)), 2),
                            "max": round(1e3 * float(np.max(v)), 2)}
                       for op, v in latencies.items()})
    _write_json(os.path.join(folder, f"worker-w{k}.json"), summary)


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
        with open(path) as f:
            lines = f.read().split("\n")
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


def audit(backend: str, location: str, folder: str, workers: int) -> dict:
    """Check the store against the journals, from a fresh connection (see the module doc)."""
    from arcface.pretrained import MODELS_DIR
    from iom.hashing.hasher import DeepIoMHasher
    from iom.service.errors import TemplateError
    from iom.service.pipeline import Pipeline
    from iom.service.service import TemplateService

    t0 = time.perf_counter()
    journals, problems = read_journals(folder, workers)
    store = open_backend_store(backend, location)
    hasher = DeepIoMHasher.load(os.path.join(MODELS_DIR, HASHER))
    service = TemplateService(Pipeline(_NoEmbedder(), hasher), store, SECRET,
                              calibration=os.path.join(MODELS_DIR, HASHER, "calibration.json"))
    rng = np.random.default_rng(12345)
    stats = collections.Counter(problems=len(problems))

    def problem(msg: str) -> None:
        if len(problems) < 50:
            problems.append(msg)
        stats["problems"] += 1

    in_store = set(store.subjects(include_revoked=True))
    for subject in sorted(in_store - set(journals)):
        problem(f"{subject}: in the store but in no journal")
    rows_audited = 0
    for subject, entries in sorted(journals.items()):
        writes = [e for e in entries if e["op"] in ("enroll", "enroll_race", "reissue", "revoke")]
        uncertain = any(e["op"] == "uncertain" for e in entries)
        if subject.startswith("race-"):
            winners = {e["worker"] for e in writes}
            if len(writes) != 1:
                problem(f"{subject}: {len(writes)} acknowledged enrollments (workers {sorted(winners)})")
        if not writes:                      # only reads / required errors (e.g. verify_unknown)
            if subject in in_store:
                problem(f"{subject}: never acknowledged as enrolled, yet in the store")
            continue
        stats["subjects"] += 1
        try:
            history = store.history(subject)           # verifies every row's checksum
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
                               embedding=probe_of(centre_of(last["seed"]), rng))
        except TemplateError as e:
            problem(f"{subject}: final verify failed: {type(e).__name__}: {e}")
            continue
        if not d.accepted:
            problem(f"{subject}: final verify rejected (similarity {d.similarity:.3f})")
        else:
            stats["final_verifications_accepted"] += 1

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
        integrity, integrity_ok = None, None
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
    procs = [ctx.Process(target=worker, name=f"{backend}-w{k}",
                         args=(k, backend, location, args.seconds, folder, args.seed * 100 + k, barrier))
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
    samples = []
    for s in summaries:
        counts.update(s.get("counts", {}))
        required.update(s.get("required_errors", {}))
        unexpected.update(s.get("unexpected", {}))
        samples += s.get("unexpected_samples", [])
        if s.get("fatal"):
            unexpected["worker_crashed"] += 1
            samples.append(s["fatal"][-500:])
        for op, lat in s.get("latency_ms", {}).items():
            agg = latency.setdefault(op, {"n": 0, "mean": 0.0, "p50": [], "p99": [], "max": 0.0})
            agg["mean"] += lat["mean"] * lat["n"]
            agg["n"] += lat["n"]
            agg["p50"].append(lat["p50"])
            agg["p99"].append(lat["p99"])
            agg["max"] = max(agg["max"], lat["max"])
    for code in exit_codes:
        if code != 0:
            unexpected["worker_exit_nonzero"] += 1
    for op, agg in latency.items():             # p50/p99: the median / worst of the workers'
        agg.update(mean=round(agg["mean"] / max(agg["n"], 1), 2), p50=float(np.median(agg["p50"])),
                   p99=float(np.max(agg["p99"])))
    elapsed = float(np.mean([s.get("elapsed_s", args.seconds) for s in summaries]))
    acknowledged = {op: counts.get(op, 0) for op in WEIGHTS if op not in REQUIRED_ERROR}
    per_s = {op: round(n / elapsed, 1) for op, n in acknowledged.items()}
    required_ops = {op: counts.get(op, 0) for op in REQUIRED_ERROR_OPS}
    n_required = sum(required_ops.values())
    total_ops = sum(acknowledged.values()) + n_required
    result = {
        "backend": backend, "workers": args.workers, "seconds": args.seconds,
        "elapsed_s": round(elapsed, 2), "wall_s": round(wall_s, 2), "startup_s": round(startup_s, 1),
        "acknowledged": acknowledged, "ops_per_s": per_s,
        "required_error_ops": required_ops,
        "required_error_ops_per_s": {op: round(n / elapsed, 1) for op, n in required_ops.items()},
        "required_errors": dict(required),
        "identify_top1": counts.get("identify_top1", 0),
        "total_ops": total_ops, "total_ops_per_s": round(total_ops / elapsed, 1),
        "writes_per_s": round(sum(acknowledged[op] for op in ("enroll", "enroll_race", "revoke", "reissue"))
                              / elapsed, 1),
        "unexpected_errors": dict(unexpected), "n_unexpected": sum(unexpected.values()),
        "unexpected_samples": samples[:10], "latency_ms": latency, "worker_exit_codes": exit_codes,
    }
    result["audit"] = audit(backend, location, folder, args.workers)
    return result


def _read(folder: str, k: int) -> dict:
    try:
        with open(os.path.join(folder, f"worker-w{k}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"fatal": f"worker {k} wrote no summary"}


@contextlib.contextmanager
def backend_location(backend: str, folder: str):
    """A fresh, migrated store for the back end; yields its location (path or DSN)."""
    if backend == "sqlite":
        path = os.path.join(folder, "templates.db")
        open_backend_store("sqlite", path).close()
        yield path
        return
    sys.path.insert(0, ROOT)
    from tests.pg_server import fresh_database, postgres_server

    with postgres_server() as server, fresh_database(server.dsn, prefix="iombench") as dsn:
        open_backend_store("postgres", dsn).close()
        yield dsn


def report(r: dict) -> None:
    b = r["backend"]
    print(f"[{b}] {r['workers']} workers, {r['elapsed_s']:.1f} s (startup {r['startup_s']} s): "
          f"{r['total_ops']} ops, {r['total_ops_per_s']} ops/s, writes {r['writes_per_s']}/s", flush=True)
    for op, n in r["acknowledged"].items():
        lat = r["latency_ms"].get(op, {})
        print(f"[{b}]   {op:20s} {n:7d}  {r['ops_per_s'][op]:7.1f}/s   latency mean {lat.get('mean', 0):7.2f} "
              f"p50 {lat.get('p50', 0):7.2f} p99 {lat.get('p99', 0):8.2f} max {lat.get('max', 0):8.2f} ms")
    for op, n in r["required_error_ops"].items():
        print(f"[{b}]   {op:20s} {n:7d}  {r['required_error_ops_per_s'][op]:7.1f}/s   → "
              f"{REQUIRED_ERROR_OPS[op]} (required)")
    print(f"[{b}] required errors by type: {r['required_errors']}")
    print(f"[{b}] unexpected errors: {r['n_unexpected']} {r['unexpected_errors']}")
    for s in r["unexpected_samples"]:
        print(f"[{b}]   {s}")
    a = r["audit"]
    print(f"[{b}] audit {'OK' if a['ok'] else 'FAILED'} ({a['audit_s']} s): {a.get('subjects', 0)} subjects "
          f"({a.get('active_subjects', 0)} active, {a.get('revoked_subjects', 0)} revoked, "
          f"{a.get('uncertain_subjects', 0)} uncertain), {a['rows']} rows ({a['rows_audited']} audited, "
          f"checksums ok), {a.get('acknowledged_templates', 0)} acknowledged templates present, "
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
    args = parser.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="iom-concurrency-")
    loadavg_before = loadavg()
    print(f"machine: {os.cpu_count()} cpus ({cpu_model()}), load average {loadavg_before}; "
          f"{args.workers} workers × {args.seconds:g} s per back end; journals in {out}", flush=True)
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
        "ok": ok, "workers": args.workers, "seconds": args.seconds, "backends": results,
        "hasher": HASHER, "keras_backend": os.environ.get("KERAS_BACKEND", "(keras.json default)"),
        "cpu_count": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
