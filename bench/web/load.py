"""The clients of ``bench/http_load.py``: the pool of subjects they share, the requests of each
op with what they must answer, the client threads, the pre-enrolment, and the merge of their
tallies into the run's figures (see that bench's docstring)."""

from __future__ import annotations

import collections
import random
import threading
import time

from bench.common import distribution, strong_token
from bench.web import api

OPS = ("verify", "impostor", "identify", "enrol")
EXPECTED = {"verify": 200, "impostor": 200, "identify": 200, "enrol": 201}
DEFAULT_MIX = "verify=60,identify=25,enrol=15"
TOP_K = 5
MAX_SAMPLES = 10


def parse_mix(text: str) -> dict[str, float]:
    """``op=weight,...`` as a dict; ValueError for an unknown op or a bad weight."""
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


class Pool:
    """Subjects the clients may verify or identify (thread-safe), and the people new
    enrolments draw from. ``photos[person]``: the bytes of (enrol photo, probe photo)."""

    def __init__(self, people: list[tuple[str, list[str]]], n_pre: int, tag: str, reuse: bool):
        self.photos = {p: tuple(open(f, "rb").read() for f in files[:2]) for p, files in people}
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


def enrol(client, pool: Pool, subject: str, person: str, admin: str, aligned: bool):
    token = strong_token()
    r = api.enrol(client, admin, subject, pool.photos[person][0], token, aligned, filename=f"{person}.jpg")
    return r, token


def probe_photo(pool: Pool, person: str) -> dict:
    return {"photo": pool.photos[person][1], "filename": f"{person}.jpg"}


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
    """Send one request of ``op`` and tally its answer (``keys``: admin and client key)."""
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
            r = api.verify(client, keys["client"], subject, token=token, aligned=aligned, **probe_photo(pool, probe))
        elif op == "identify":
            subject, person, _ = pool.pick(rng)
            r = api.identify(client, keys["client"], top_k=TOP_K, aligned=aligned, **probe_photo(pool, person))
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
    """Client thread ``k``: its own keep-alive connection, requests drawn by ``mix`` until
    ``seconds`` after the common start; its :class:`Tally` in ``out[k]``."""
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


def merge(tallies: list[Tally], elapsed: float) -> dict:
    """The clients' figures: ``per_op`` (requests, rate, latency), ``total``, ``errors``,
    ``samples``, ``decisions`` (the raw counts) and ``decision`` (the rates of the record)."""
    latency = {op: [] for op in OPS}
    errors, decisions, samples = collections.Counter(), collections.Counter(), []
    verified = {}
    for t in tallies:
        for op, v in t.latency.items():
            latency[op] += v
        errors.update(t.errors)
        decisions.update(t.decisions)
        samples += t.samples
        verified.update(t.verified)
    per_op = {op: {"requests": len(v), "per_s": round(len(v) / elapsed, 2),
                   "latency_ms": distribution(v, scale=1000, digits=1)}
              for op, v in latency.items() if v}

    def rate(a: str, b: str):
        n = decisions[a] + decisions[b]
        return round(decisions[a] / n, 4) if n else None

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
    return {"per_op": per_op, "total": sum(len(v) for v in latency.values()), "errors": errors,
            "samples": samples, "decisions": decisions, "decision": decision}


def counts_match(server_counts: dict, tallies: list[Tally], decisions, preenrolled: int) -> bool:
    """Whether the server's counters agree with the clients' answers (pre-enrolments included)."""
    enrolled = sum(len(t.acked) for t in tallies)
    verified = sum(decisions[f"{o}_{d}"] for o in ("verify", "impostor") for d in ("accepted", "rejected"))
    identified = decisions["identify_hit"] + decisions["identify_miss"]
    return (server_counts.get("/v1/subjects/{subject_id} 201", 0) == enrolled + preenrolled
            and server_counts.get("/v1/subjects/{subject_id}/verify 200", 0) == verified
            and server_counts.get("/v1/identify 200", 0) == identified)
