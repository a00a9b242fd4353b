#!/usr/bin/env python
"""HTTP load test: N concurrent clients against a local ``iomface serve``, a mixed workload.

A :class:`~iom.server.launch.LocalServer` is started (``iomface serve`` in a subprocess on a
free loopback port, a fresh key file, the shipped default hasher, the store ``--db``: a
temporary SQLite file by default, a ``postgresql://`` URL, or ``postgres``: see below). Its
rate limits are raised out of reach of a load test — ``--verify_per_minute``, ``--identify_per_minute`` and
``--subject_verify_per_minute`` 100000 and ``--max_failures`` 1000000 (a genuine pair that the
operating point happens to reject would otherwise lock its subject after 5 failures, and every
later verify of it would be a 429) — everything else is the server's default (scrypt 2**14 for
every enrolment and verification, decisions without scores).

Photos (``--photos``):

* ``aligned`` (default): the 112x112 LFW crops of ``--lfw`` sent with ``aligned=true`` (no face
  detection on the server); people with at least two photos: the first enrols, the second
  probes;
* ``raw``: the raw 250x250 LFW photos of ``--raw_lfw`` (20 people x 2), the server runs MTCNN
  (one detector, one photo at a time); new enrolments reuse these 20 people under new ids.

``--db postgres`` starts a throw-away PostgreSQL server (``tests/pg_server.py``, as
``bench/concurrency.py`` does) with a new database.

``--preenrol`` subjects are enrolled first (admin key, ``--clients`` threads, not timed).
Then ``--clients`` threads, each with its own ``httpx.Client`` (keep-alive), start together
and loop for ``--seconds``, each request drawn by ``--mix`` (weights; default
``verify=60,identify=25,enrol=15``):

=========  ==================================================================  ========
op         request                                                             expected
=========  ==================================================================  ========
verify     ``POST /v1/subjects/{id}/verify`` (client key): an enrolled         200
           subject's other photo with its token (genuine)
impostor   the same with another person's photo (weight 0 unless given)        200
identify   ``POST /v1/identify`` (client key, top_k 5): an enrolled subject's  200
           other photo
enrol      ``POST /v1/subjects/{id}`` (admin key): a new subject, a fresh      201
           random token (128 bits); once acknowledged it joins the pool
=========  ==================================================================  ========

An *error* is any other status or a transport failure (timeout, reset). Decisions are
counted, not errors: the genuine acceptance rate of ``verify`` (against the operating
point's expected TAR; per request and per distinct subject — a subject's probe is always the
same photo, so its decision repeats), the impostor acceptance rate, and for ``identify`` whether a subject
of the probe's person is among the candidates (hit) and whether a subject of another person
is (false candidate). After the run every acknowledged enrolment (201) must be listed by
``GET /v1/subjects`` (admin key); the server's own counters (``GET /metrics``) are reported
next to the client's, and the server log is searched for error lines.

Printed: requests/s overall and per op, p50/p99/max latency per op (client side, wall clock
around the request), errors, decisions, the audit, the server's CPU time; the LAST stdout
line is one JSON object with every figure, the machine and the command. Exit 1 if there was
an error or an acknowledged enrolment is missing.

The machine is shared with the server (same cores: the clients' own CPU is reported) and
possibly other jobs: the load averages before and after are in the record.

Usage::

    python bench/http_load.py --clients 4 --seconds 30
    python bench/http_load.py --clients 16 --seconds 60 --photos raw
    python bench/http_load.py --mix verify=50,identify=20,enrol=10,impostor=20
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import random
import re
import secrets
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import cpu_model, loadavg, process_cpu_s  # noqa: E402

OPS = ("verify", "impostor", "identify", "enrol")
EXPECTED = {"verify": 200, "impostor": 200, "identify": 200, "enrol": 201}
DEFAULT_MIX = "verify=60,identify=25,enrol=15"
#: the serve options of the load test (see the module doc)
LOAD_OPTIONS = ["--verify_per_minute", "100000", "--identify_per_minute", "100000",
                "--subject_verify_per_minute", "100000", "--max_failures", "1000000"]
TOP_K = 5
MAX_SAMPLES = 10


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in OPS:
            raise ValueError(f"unknown op {name!r} in --mix (ops: {', '.join(OPS)})")
        mix[name] = float(weight)
        if mix[name] < 0:
            raise ValueError(f"--mix weight of {name} is negative")
    if not sum(mix.values()) > 0:
        raise ValueError("--mix: all weights are zero")
    return mix


# ---------------------------------------------------------------------------- photos
def aligned_people(root: str) -> list[tuple[str, list[str]]]:
    """(person, [first photo, second photo]) for every LFW person with at least two crops."""
    out = []
    for person in sorted(os.listdir(root)):
        folder = os.path.join(root, person)
        if not os.path.isdir(folder):
            continue
        photos = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        if len(photos) >= 2:
            out.append((person, [os.path.join(folder, p) for p in photos[:2]]))
    return out


class Pool:
    """Subjects the clients may verify or identify (thread-safe), and the people new
    enrolments draw from. ``photos[person]``: the bytes of (enrol photo, probe photo)."""

    def __init__(self, people: list[tuple[str, list[str]]], n_pre: int, tag: str, reuse: bool):
        self.photos = {p: tuple(open(f, "rb").read() for f in files) for p, files in people}
        self.people = [p for p, _ in people]
        self.tag, self.reuse = tag, reuse
        self._lock = threading.Lock()
        self._fresh = collections.deque(self.people[n_pre:])
        self._next = 0
        self.enrolled: list[tuple[str, str, str]] = []     # (subject id, person, token)
        self.person_of: dict[str, str] = {}

    def subject_id(self, person: str) -> str:
        return f"{self.tag}-{person}"

    def new_subject(self) -> tuple[str, str] | None:
        """(subject id, person) for a new enrolment, or None when no person is left."""
        with self._lock:
            if self._fresh:
                person = self._fresh.popleft()
                sid = self.subject_id(person)
            elif self.reuse:
                person = self.people[self._next % len(self.people)]
                sid = f"{self.subject_id(person)}-n{self._next}"
                self._next += 1
            else:
                return None
            self.person_of[sid] = person
            return sid, person

    def add(self, subject: str, person: str, token: str) -> None:
        with self._lock:
            self.enrolled.append((subject, person, token))
            self.person_of[subject] = person

    def pick(self, rng: random.Random) -> tuple[str, str, str]:
        with self._lock:
            return self.enrolled[rng.randrange(len(self.enrolled))]

    def other_person(self, person: str, rng: random.Random) -> str:
        while True:
            other = self.people[rng.randrange(len(self.people))]
            if other != person:
                return other


# ---------------------------------------------------------------------------- requests
def enrol(client, pool: Pool, subject: str, person: str, admin: dict, aligned: bool):
    token = secrets.token_urlsafe(16)
    r = client.post(f"/v1/subjects/{subject}", headers=admin,
                    files=[("photos", (f"{person}.jpg", pool.photos[person][0], "image/jpeg"))],
                    data={"token": token, "aligned": str(aligned).lower()})
    return r, token


def verify(client, pool: Pool, subject: str, token: str, person: str, key: dict, aligned: bool):
    return client.post(f"/v1/subjects/{subject}/verify", headers=key,
                       files={"photo": (f"{person}.jpg", pool.photos[person][1], "image/jpeg")},
                       data={"token": token, "aligned": str(aligned).lower()})


def identify(client, pool: Pool, person: str, key: dict, aligned: bool):
    return client.post("/v1/identify", headers=key,
                       files={"photo": (f"{person}.jpg", pool.photos[person][1], "image/jpeg")},
                       data={"top_k": str(TOP_K), "aligned": str(aligned).lower()})


class Tally:
    """Per-thread results, merged after the run."""

    def __init__(self):
        self.latency = collections.defaultdict(list)      # op -> seconds of every request
        self.errors = collections.Counter()               # (op, status or exception) -> n
        self.samples: list[str] = []
        self.decisions = collections.Counter()
        self.acked: list[str] = []                        # subjects whose enrolment returned 201
        self.sent_enrolments: list[str] = []
        self.operating_point = None
        self.verified: dict[str, bool] = {}               # genuine verify decision per subject (deterministic)
        self.end = 0.0

    def error(self, op: str, what: str, detail: str) -> None:
        self.errors[f"{op}:{what}"] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(f"{op}: {what}: {detail[:300]}")


def one_request(op: str, client, pool: Pool, keys: dict, aligned: bool, rng: random.Random, t: Tally) -> None:
    import httpx

    start = time.perf_counter()
    try:
        if op == "enrol":
            new = pool.new_subject()
            if new is None:                    # no person left: a verify instead
                op = "verify"
            else:
                subject, person = new
                t.sent_enrolments.append(subject)
                r, token = enrol(client, pool, subject, person, keys["admin"], aligned)
        if op in ("verify", "impostor"):
            subject, person, token = pool.pick(rng)
            probe = person if op == "verify" else pool.other_person(person, rng)
            r = verify(client, pool, subject, token, probe, keys["client"], aligned)
        elif op == "identify":
            subject, person, _ = pool.pick(rng)
            r = identify(client, pool, person, keys["client"], aligned)
    except httpx.HTTPError as e:
        t.latency[op].append(time.perf_counter() - start)
        t.error(op, type(e).__name__, str(e))
        return
    t.latency[op].append(time.perf_counter() - start)
    if r.status_code != EXPECTED[op]:
        t.error(op, str(r.status_code), r.text)
        return
    body = r.json()
    if op == "enrol":
        if len(body.get("templates", [])) != 2:
            t.error(op, "bad_body", r.text)
            return
        pool.add(subject, person, token)
        t.acked.append(subject)
    elif op in ("verify", "impostor"):
        if not isinstance(body.get("accepted"), bool) or "similarity" in body:
            t.error(op, "bad_body", r.text)
            return
        t.decisions[f"{op}_accepted" if body["accepted"] else f"{op}_rejected"] += 1
        t.operating_point = t.operating_point or body.get("operating_point")
        if op == "verify":
            t.verified[subject] = body["accepted"]
    else:
        candidates = body.get("candidates")
        if not isinstance(candidates, list) or any("similarity" in c for c in candidates) \
                or len(candidates) > TOP_K:
            t.error(op, "bad_body", r.text)
            return
        people = [pool.person_of.get(c["subject"]) for c in candidates]
        t.decisions["identify_hit" if person in people else "identify_miss"] += 1
        t.decisions["identify_false_candidate" if any(p != person for p in people)
                    else "identify_no_false_candidate"] += 1
        t.decisions["identify_rank1_hit"] += bool(people) and people[0] == person


def worker(k: int, url: str, keys: dict, pool: Pool, mix: dict, aligned: bool, seconds: float,
           seed: int, start_barrier: threading.Barrier, out: list) -> None:
    import httpx

    t = Tally()
    out[k] = t
    rng = random.Random(seed * 1000 + k)
    ops, weights = zip(*[(op, w) for op, w in mix.items() if w > 0])
    with httpx.Client(base_url=url, timeout=120.0) as client:
        client.get("/health")                  # open the connection before the start
        start_barrier.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            one_request(rng.choices(ops, weights)[0], client, pool, keys, aligned, rng, t)
    t.end = time.perf_counter()


def preenrol(url: str, keys: dict, pool: Pool, people: list[str], aligned: bool, threads: int) -> dict:
    """Enrol ``people`` (admin key, ``threads`` at once); the failures are returned."""
    import httpx

    todo = collections.deque(people)
    lock = threading.Lock()
    failures = []

    def run():
        with httpx.Client(base_url=url, timeout=300.0) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    person = todo.popleft()
                subject = pool.subject_id(person)
                try:
                    r, token = enrol(client, pool, subject, person, keys["admin"], aligned)
                except httpx.HTTPError as e:
                    failures.append(f"{subject}: {type(e).__name__}: {e}")
                    continue
                if r.status_code == 201:
                    pool.add(subject, person, token)
                else:
                    failures.append(f"{subject}: {r.status_code} {r.text[:200]}")

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return {"failures": failures}


@contextlib.contextmanager
def store_location(db: str | None, folder: str):
    """The store the server gets: ``db`` as given, a SQLite file in ``folder`` when None, or
    with ``postgres`` a new database on a throw-away server (``tests/pg_server.py``)."""
    if db is None:
        yield os.path.join(folder, "templates.db")
        return
    if db != "postgres":
        yield db
        return
    import psycopg
    from tests.pg_server import fresh_database, postgres_server

    with postgres_server() as server, fresh_database(server.dsn, prefix="iomhttp") as dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)       # the store takes URLs only
        yield f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}?connect_timeout=10"


def metrics_counts(text: str) -> dict[str, int]:
    """``iomface_requests_total`` of the server: 'route status' -> n."""
    out = {}
    for m in re.finditer(r'^iomface_requests_total\{route="([^"]*)",status="(\d+)"\} (\d+)$', text, re.M):
        out[f"{m.group(1)} {m.group(2)}"] = int(m.group(3))
    return out


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1000
    return {"n": len(ms), "mean": round(float(ms.mean()), 1), "p50": round(float(np.percentile(ms, 50)), 1),
            "p90": round(float(np.percentile(ms, 90)), 1), "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1)}


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (threads)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they send requests")
    parser.add_argument("--photos", choices=("aligned", "raw"), default="aligned",
                        help="aligned 112x112 crops (aligned=true) or raw photos (the server runs MTCNN)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"op weights (default {DEFAULT_MIX}; ops: {', '.join(OPS)})")
    parser.add_argument("--preenrol", type=int, default=None,
                        help="subjects enrolled before the run (default: 100 aligned, 10 raw)")
    parser.add_argument("--db", default=None, help="SQLite path, postgresql:// URL, or 'postgres': a throw-away "
                        "PostgreSQL server (tests/pg_server.py) (default: a temp SQLite file)")
    parser.add_argument("--lfw", default=os.path.join(ROOT, "..", "shared", "data", "lfw_112"))
    parser.add_argument("--raw_lfw", default=os.path.join(ROOT, "..", "shared", "data", "raw", "lfw"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix)
    except ValueError as e:
        parser.error(str(e))
    if args.clients < 1 or not args.seconds > 0:
        parser.error("--clients must be positive and --seconds positive")
    aligned = args.photos == "aligned"
    people = aligned_people(args.lfw if aligned else args.raw_lfw)
    random.Random(args.seed).shuffle(people)
    n_pre = args.preenrol if args.preenrol is not None else (100 if aligned else 10)
    if not 1 <= n_pre <= len(people):
        parser.error(f"--preenrol must be in 1..{len(people)}")
    tag = f"L{secrets.token_hex(3)}"
    pool = Pool(people, n_pre, tag, reuse=not aligned)

    from iom.server.launch import LocalServer

    import httpx

    command = "python " + " ".join(sys.argv if argv is None else ["bench/http_load.py", *argv])
    load_before = loadavg()
    print(f"machine: {os.cpu_count()} cpus ({cpu_model()}), load average {load_before} (shared machine: "
          f"figures are noisy); {args.clients} clients x {args.seconds:g} s, photos {args.photos}, mix {mix}; "
          f"serve options {' '.join(LOAD_OPTIONS)}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iom-http-load-") as tmp, store_location(args.db, tmp) as db, \
            LocalServer(db=db, options=LOAD_OPTIONS) as server:
        startup_s = time.perf_counter() - t0
        keys = {"admin": {"Authorization": f"Bearer {server.admin_key}"},
                "client": {"Authorization": f"Bearer {server.client_key}"}}
        t1 = time.perf_counter()
        pre = preenrol(server.url, keys, pool, pool.people[:n_pre], aligned, min(args.clients, 4))
        preenrol_s = time.perf_counter() - t1
        print(f"server up in {startup_s:.1f} s; {len(pool.enrolled)} subjects pre-enrolled in {preenrol_s:.1f} s "
              f"({len(pre['failures'])} failures)", flush=True)
        if not pool.enrolled:
            print("\n".join(pre["failures"][:5]), file=sys.stderr)
            return 1
        pid = server.process.pid
        cpu_server0, cpu_client0 = process_cpu_s(pid), time.process_time()
        tallies: list = [None] * args.clients
        barrier = threading.Barrier(args.clients + 1)
        threads = [threading.Thread(target=worker, args=(k, server.url, keys, pool, mix, aligned, args.seconds,
                                                         args.seed, barrier, tallies)) for k in range(args.clients)]
        for th in threads:
            th.start()
        barrier.wait()
        start = time.perf_counter()
        for th in threads:
            th.join()
        elapsed = max(t.end for t in tallies) - start
        cpu_server1, cpu_client1 = process_cpu_s(pid), time.process_time()
        load_after = loadavg()

        # audit: every acknowledged enrolment is listed
        with httpx.Client(base_url=server.url, timeout=120.0) as c:
            listed = c.get("/v1/subjects", headers=keys["admin"])
            metrics = c.get("/metrics", headers=keys["admin"])
        listed = set(listed.json()["subjects"]) if listed.status_code == 200 else set()
        acked = [s for t in tallies for s in t.acked]
        pre_ids = [s for s, _, _ in pool.enrolled if s not in set(acked)]
        missing = sorted(s for s in [*pre_ids, *acked] if s not in listed)
        sent = {s for t in tallies for s in t.sent_enrolments}
        unacked_present = sorted(s for s in sent - set(acked) if s in listed)
        server_counts = metrics_counts(metrics.text) if metrics.status_code == 200 else {}
        log_errors = [line for line in server.log_lines() if '"level": "error"' in line]

    # ------------------------------------------------------------------ figures
    latency = {op: [] for op in OPS}
    errors, decisions, samples = collections.Counter(), collections.Counter(), []
    for t in tallies:
        for op, v in t.latency.items():
            latency[op] += v
        errors.update(t.errors)
        decisions.update(t.decisions)
        samples += t.samples
    per_op = {op: {"requests": len(v), "per_s": round(len(v) / elapsed, 2), "latency_ms": percentiles(v)}
              for op, v in latency.items() if v}
    total = sum(len(v) for v in latency.values())
    n_errors = sum(errors.values())

    def rate(a: str, b: str):
        n = decisions[a] + decisions[b]
        return round(decisions[a] / n, 4) if n else None

    verified = {}
    for t in tallies:
        verified.update(t.verified)
    decision = {"genuine_verify_accepted": rate("verify_accepted", "verify_rejected"),
                "genuine_verify_accepted_distinct_subjects": round(sum(verified.values()) / len(verified), 4)
                if verified else None, "distinct_subjects_verified": len(verified),
                "genuine_verifications": decisions["verify_accepted"] + decisions["verify_rejected"],
                "impostor_verify_accepted": rate("impostor_accepted", "impostor_rejected"),
                "impostor_verifications": decisions["impostor_accepted"] + decisions["impostor_rejected"],
                "identify_hit": rate("identify_hit", "identify_miss"),
                "identify_rank1_hit": round(decisions["identify_rank1_hit"] /
                                            max(1, decisions["identify_hit"] + decisions["identify_miss"]), 4),
                "identify_false_candidate": rate("identify_false_candidate", "identify_no_false_candidate"),
                "identifications": decisions["identify_hit"] + decisions["identify_miss"],
                "operating_point": next((t.operating_point for t in tallies if t.operating_point), None)}
    # the server's counters agree with the client's answers (pre-enrolments included)
    answered = collections.Counter()
    for t in tallies:
        answered["enrol"] += len(t.acked)
    answered["verify"] = sum(decisions[f"{o}_{d}"] for o in ("verify", "impostor") for d in ("accepted", "rejected"))
    answered["identify"] = decisions["identify_hit"] + decisions["identify_miss"]
    counts_match = (server_counts.get("/v1/subjects/{subject_id} 201", 0) == answered["enrol"] + len(pre_ids)
                    and server_counts.get("/v1/subjects/{subject_id}/verify 200", 0) == answered["verify"]
                    and server_counts.get("/v1/identify 200", 0) == answered["identify"])
    server_cpu = None if cpu_server0 is None or cpu_server1 is None else round(cpu_server1 - cpu_server0, 1)
    ok = n_errors == 0 and not missing and not pre["failures"]
    record = {
        "ok": ok, "clients": args.clients, "seconds": args.seconds, "elapsed_s": round(elapsed, 2),
        "photos": args.photos, "mix": mix, "preenrolled": n_pre, "preenrol_failures": pre["failures"][:MAX_SAMPLES],
        "preenrol_s": round(preenrol_s, 1), "server_startup_s": round(startup_s, 1),
        "store": "postgresql" if (args.db or "").startswith("postgres") else "sqlite",
        "serve_options": LOAD_OPTIONS, "top_k": TOP_K,
        "requests": total, "requests_per_s": round(total / elapsed, 2), "ops": per_op,
        "errors": n_errors, "errors_by_kind": dict(errors), "error_samples": samples[:MAX_SAMPLES],
        "decisions": decision,
        "audit": {"acknowledged_enrolments": len(acked), "preenrolled": len(pre_ids),
                  "missing": missing[:MAX_SAMPLES], "n_missing": len(missing),
            "unacknowledged_but_present": unacked_present[:MAX_SAMPLES], "listed": len(listed)},
        "server_counts": server_counts, "server_counts_match_client": counts_match,
        "server_log_error_lines": len(log_errors),
        "server_cpu_s": server_cpu, "server_cpu_per_request_ms": round(1000 * server_cpu / total, 1)
        if server_cpu is not None and total else None,
        "client_cpu_s": round(cpu_client1 - cpu_client0, 1),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_before": load_before, "loadavg_after": load_after,
                    "note": "shared machine (other jobs may run): timings are noisy; clients and server share "
                            "the same cores"},
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    print(f"{args.clients} clients, {elapsed:.1f} s: {total} requests, {record['requests_per_s']} req/s, "
          f"{n_errors} errors; server CPU {server_cpu} s ({record['server_cpu_per_request_ms']} ms/request), "
          f"clients' CPU {record['client_cpu_s']} s")
    for op, f in per_op.items():
        lat = f["latency_ms"]
        print(f"  {op:9s} {f['requests']:6d} {f['per_s']:7.2f}/s   latency p50 {lat['p50']:8.1f}  "
              f"p99 {lat['p99']:8.1f}  "
              f"max {lat['max']:8.1f} ms")
    print(f"decisions: {decision}")
    print(f"audit: {len(acked)} acknowledged enrolments, {len(missing)} missing, {len(listed)} subjects listed; "
          f"{len(unacked_present)} unacknowledged enrolments present; server log error lines: {len(log_errors)}; "
          f"server counters match the client's: {counts_match}")
    for s in samples[:MAX_SAMPLES]:
        print(f"  error: {s}")
    print(f"load average after: {load_after}; {'OK' if ok else 'FAILED'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    print(json.dumps(record))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
