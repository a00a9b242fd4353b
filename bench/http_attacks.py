#!/usr/bin/env python
"""The online attacks of the security issue, measured against the HTTP server.

A :class:`~iom.server.launch.LocalServer` (``iomface serve`` in a subprocess, a fresh key file
and temporary SQLite store, the shipped default hasher) runs with the server's **default**
policy (``ServicePolicy()``: 60 verifications and 120 identifications per API key and minute,
30 verifications of one subject per minute, 5 failed verifications of a subject per 900 s,
decisions without scores). Photos are LFW aligned 112x112 crops sent with ``aligned=true``
(``--lfw``): an attacker would send raw photos, the limits are the same, the server only
does more work. The bench acts as the administrator (enrols, creates the API keys); each
attacker holds one *client* key, as a device or app would.

(a) **Online token guessing.** A victim is enrolled with a strong random token (128 bits);
the attacker holds a client key and the victim's real face (another photo of the person,
accepted with the right token: the worst case) and sends guesses — :data:`COMMON` of
:mod:`iom.attacks.tokens`, then random 8-character tokens — to
``POST /v1/subjects/{id}/verify`` until the first 429, and a few after it. Measured: guesses
answered before the first 429, the 429's ``Retry-After``, the successes, then whether the
genuine user (right token, same photo, another key) is refused too (the lockout trade-off),
and whether a second client key (a colluding device) gets any guess answered (the failure
limit is per subject, so it should not). Then (a2) one key spreads guesses over
``--spread_victims`` victims: how many are answered before the *per-key* limit, and (a3) a
victim who chose a common password the policy accepts (drawn from :data:`COMMON`): whether
the dictionary finds it, at which rank, and how long the lockout makes the search take.
(a4) The cost of a refusal: verifications of the locked victim (all 429) with an aligned crop,
a raw LFW photo, and that photo upscaled to 4990x4990 (just under the default
``--max_megapixels 25``): latency and the server's CPU time per request (``/proc``).
The bound on an online search: ``max_failures x 86400 / failure_window_s`` guesses a day
per subject, success probability at most that ``/ 2**min_token_bits`` for a token of the
policy's minimum strength (uniformly random tokens; a chosen password is another story: a3).

(b) **Score oracle.** ``--gallery`` subjects are enrolled; attackers with client keys call
``POST /v1/identify`` (``top_k`` 50, the maximum) with photos of LFW people *not* enrolled, as
fast as answered, each key until its first 429 (``--oracle_keys`` keys, default 6: more keys need an
administrator, the bench creates them to measure the false-identification rate on more
probes). Measured: the fields that come back (no similarity; rejected candidates never
listed — also checked with genuine probes at top_k 50), answers per key before 429 and its
``Retry-After``, and the fraction of calls returning any candidate (false identifications at
the 1:N threshold, against the FPIR target, with a 95% Wilson interval). The client name the
rate limits count is the API key's name, set by the server: after the first key's 429 the
attacker tries made-up names (``X-Client``/``X-Forwarded-For``/``X-Real-IP`` headers, a
``client`` form field, a ``client`` query parameter) — each must still get 429, and the
store's attempt log and the request log must name only the key.

(c) **Scores for admins only.** A second server with ``--admin_scores``: a client key's
verify and identify answers carry no similarity (identify: accepted candidates only), an
admin key's do (identify: the top_k with ``similarity`` and ``accepted``); on the default
server an admin key gets none either.

Written: ``--out`` (default ``docs/results/http_attacks.json``) and the same name with ``.md``
(command, machine, figures, conclusions). The last stdout line is the JSON record. Exit 1 if a
check failed (a guess accepted, the failure limit not per subject, a spoofed name obeyed, a
similarity shown to a client key, a rejected candidate listed). The machine is shared (other
jobs may run): latencies and the number of calls answered inside a sliding window depend on
its load, which is recorded.

Usage::

    python bench/http_attacks.py                      # about 2-4 minutes on 2 cores
    python bench/http_attacks.py --gallery 50 --oracle_keys 2 --out /tmp/a.json
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import platform
import random
import secrets
import sqlite3
import string
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import cpu_model, loadavg, process_cpu_s  # noqa: E402

MAX_TOP_K = 50
SPOOFS = (("header X-Client", {"headers": {"X-Client": "somebody-else"}}),
          ("header X-Forwarded-For", {"headers": {"X-Forwarded-For": "203.0.113.7"}}),
          ("header X-Real-IP", {"headers": {"X-Real-IP": "203.0.113.8"}}),
          ("form field client", {"data": {"client": "somebody-else"}}),
          ("query parameter client", {"params": {"client": "somebody-else"}}))
RAW_PERSON = "Hans_Blix"
SPOOF_NAMES = ("somebody-else", "203.0.113.7", "203.0.113.8")


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def people_of(root: str) -> list[tuple[str, list[str]]]:
    """(person, sorted crop paths) for every LFW person."""
    out = []
    for person in sorted(os.listdir(root)):
        folder = os.path.join(root, person)
        if os.path.isdir(folder):
            photos = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
            if photos:
                out.append((person, [os.path.join(folder, p) for p in photos]))
    return out


def random_token(rng: random.Random, k: int = 8) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(k))


class Api:
    """The calls the bench makes (one httpx.Client, keys by name)."""

    def __init__(self, server):
        import httpx

        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=120.0)
        self.keys = {"admin": server.admin_key, "client": server.client_key}

    def key(self, name: str, role: str = "client") -> str:
        if name not in self.keys:
            self.keys[name] = self.server.add_key(name, role)
        return name

    def auth(self, name: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def enrol(self, subject: str, photo: str, token: str):
        r = self.http.post(f"/v1/subjects/{subject}", headers=self.auth("admin"),
                           files=[("photos", ("p.jpg", open(photo, "rb").read(), "image/jpeg"))],
                           data={"token": token, "aligned": "true"})
        if r.status_code != 201:
            raise RuntimeError(f"enrol {subject}: {r.status_code} {r.text[:300]}")
        return r

    def verify(self, key: str, subject: str, photo: str, token: str, headers=None, data=None, params=None):
        t = time.perf_counter()
        r = self.http.post(f"/v1/subjects/{subject}/verify", headers={**self.auth(key), **(headers or {})},
                           files={"photo": ("p.jpg", open(photo, "rb").read(), "image/jpeg")},
                           data={"token": token, "aligned": "true", **(data or {})}, params=params)
        return r, time.perf_counter() - t

    def identify(self, key: str, photo: str, top_k: int = MAX_TOP_K, headers=None, data=None, params=None):
        t = time.perf_counter()
        r = self.http.post("/v1/identify", headers={**self.auth(key), **(headers or {})},
                           files={"photo": ("p.jpg", open(photo, "rb").read(), "image/jpeg")},
                           data={"top_k": str(top_k), "aligned": "true", **(data or {})}, params=params)
        return r, time.perf_counter() - t

    def close(self):
        self.http.close()


def retry_after(r) -> int | None:
    value = r.headers.get("retry-after")
    return int(value) if value and value.isdigit() else None


def ms(values: list[float]) -> float | None:
    return round(1000 * sorted(values)[len(values) // 2], 1) if values else None


# ---------------------------------------------------------------------------- (a) token guessing
def token_guessing(api: Api, people, policy, rng: random.Random, n_spread: int, checks: list) -> dict:
    from iom.attacks.tokens import COMMON
    from iom.service.policy import token_bits

    out = {}
    # the victim: a person whose other photo is accepted with the right token (the worst case)
    victim = None
    for i, (person, photos) in enumerate(people[:10]):
        subject, token = f"victim-{i}", secrets.token_urlsafe(16)
        api.enrol(subject, photos[0], token)
        r, _ = api.verify(api.key("genuine-device"), subject, photos[1], token)
        if r.status_code == 200 and r.json()["accepted"]:
            victim = (subject, person, photos[1], token)
            break
    if victim is None:
        raise RuntimeError("no victim whose genuine pair is accepted")
    subject, person, photo, token = victim
    out["victim"] = {"subject": subject, "token_bits_estimated": round(token_bits(token), 1),
                     "genuine_accepted_before": True, "victims_tried": i + 1}

    guesses = list(COMMON) + [random_token(rng) for _ in range(200)]
    attacker = api.key("attacker-1")
    statuses, answered, successes, lat_ok, lat_429, first_429 = [], 0, 0, [], [], None
    for g in guesses:
        r, dt = api.verify(attacker, subject, photo, g)
        statuses.append(r.status_code)
        if r.status_code == 200:
            (lat_ok if first_429 is None else lat_429).append(dt)
            answered += first_429 is None
            successes += bool(r.json()["accepted"])
        elif r.status_code == 429:
            lat_429.append(dt)
            if first_429 is None:
                first_429 = {"after_guesses": len(statuses) - 1, "retry_after_s": retry_after(r),
                             "body": r.json()}
        if first_429 is not None and len(statuses) >= first_429["after_guesses"] + 6:
            break
    after = statuses[first_429["after_guesses"]:] if first_429 else []
    out["guessing"] = {"guesses_sent": len(statuses), "answered_before_first_429": answered,
                       "successes": successes, "first_429": first_429,
                       "statuses_after_first_429": dict(collections.Counter(after)),
                       "latency_answered_p50_ms": ms(lat_ok), "latency_429_p50_ms": ms(lat_429)}
    checks.append(("no guess accepted", successes == 0))
    checks.append(("429 after max_failures guesses", answered == policy.max_failures))

    r, _ = api.verify("genuine-device", subject, photo, token)
    out["genuine_after_attack"] = {"status": r.status_code, "retry_after_s": retry_after(r),
                                   "accepted": r.json().get("accepted") if r.status_code == 200 else None,
                                   "locked_out": r.status_code == 429}

    colluder = api.key("attacker-2")
    codes = [api.verify(colluder, subject, photo, g)[0].status_code for g in
             [random_token(rng) for _ in range(5)]]
    out["second_key"] = {"guesses": len(codes), "statuses": dict(collections.Counter(codes)),
                         "answered": codes.count(200)}
    checks.append(("second key gets no guess answered (per-subject limit)", codes.count(200) == 0))

    # a never-enrolled subject: the same answer as a wrong token (no enumeration)
    other_person, other_photos = people[-1]
    r, _ = api.verify(colluder, "never-enrolled-0", other_photos[0], random_token(rng))
    out["unknown_subject"] = {"status": r.status_code,
                              "body_fields": sorted(r.json()) if r.status_code == 200 else r.json(),
                              "accepted": r.json().get("accepted") if r.status_code == 200 else None}

    # (a2) one key, guesses spread over many victims: the per-key limit
    spread = []
    base = len(people) - 1 - n_spread - 20
    for j in range(n_spread):
        p, photos = people[base + j]
        api.enrol(f"spread-{j}", photos[0], secrets.token_urlsafe(16))
        spread.append((f"spread-{j}", photos[1] if len(photos) > 1 else photos[0]))
    key = api.key("attacker-spread")
    answered, first, t0, per_victim = 0, None, time.perf_counter(), collections.Counter()
    for n in range(policy.verify_per_minute + policy.max_failures * n_spread):
        s, photo_s = spread[n % n_spread]
        r, _ = api.verify(key, s, photo_s, random_token(rng))
        if r.status_code == 200:
            answered += 1
            per_victim[s] += 1
            continue
        first = {"after_guesses": n, "status": r.status_code, "retry_after_s": retry_after(r),
                 "message": r.json()["error"]["message"], "elapsed_s": round(time.perf_counter() - t0, 1)}
        break
    out["spread_one_key"] = {"victims": n_spread, "answered_before_first_refusal": answered, "first_refusal": first,
                             "max_answered_per_victim": max(per_victim.values(), default=0)}
    checks.append(("per-key verify limit holds over many subjects", answered <= policy.verify_per_minute))

    # (a3) a victim with a common password the policy accepts
    accepted_common = [t for t in COMMON if token_bits(t) >= policy.min_token_bits]
    weak = rng.choice(accepted_common)
    p, photos = people[base - 1]
    api.enrol("weak-victim", photos[0], weak)
    key = api.key("attacker-3")
    found_at, refused_at = None, None
    for n, g in enumerate(COMMON):
        r, _ = api.verify(key, "weak-victim", photos[1] if len(photos) > 1 else photos[0], g)
        if r.status_code == 429:
            refused_at = n
            break
        if r.status_code == 200 and r.json()["accepted"]:
            found_at = n
            break
    rank = COMMON.index(weak)
    windows = rank // policy.max_failures          # full lockout windows waited before the right guess
    out["common_password_victim"] = {
        "common_list": len(COMMON), "accepted_by_policy": len(accepted_common),
        "refused_by_policy": [t for t in COMMON if t not in accepted_common],
        "token_bits_estimated": round(token_bits(weak), 1), "rank_in_list": rank + 1,
        "found_at_guess": None if found_at is None else found_at + 1,
        "refused_at_guess": None if refused_at is None else refused_at + 1,
        "time_to_find_s_at_this_rank": windows * policy.failure_window_s,
        "whole_list_within_s": (len(COMMON) - 1) // policy.max_failures * policy.failure_window_s}

    per_day = policy.max_failures * 86400 / policy.failure_window_s
    out["bound"] = {"max_failures": policy.max_failures, "failure_window_s": policy.failure_window_s,
                    "min_token_bits": policy.min_token_bits, "guesses_per_day_per_subject": per_day,
                    "p_success_per_day": per_day / 2 ** policy.min_token_bits,
                    "p_success_per_year": min(1.0, 365 * per_day / 2 ** policy.min_token_bits),
                    "guesses_per_day_per_key_spread_over_subjects": policy.verify_per_minute * 1440}
    return out


# ---------------------------------------------------------------------------- (a4) cost of a refusal
def refusal_cost(api: Api, subject: str, aligned_photo: str, raw_photo: str, checks: list) -> dict:
    """Latency and server CPU of verifications of a locked subject (every one a 429): an
    aligned crop, a raw photo, and that raw photo upscaled to just under the server's default
    25-megapixel cap (a ~1 MB JPEG)."""
    import cv2

    image = cv2.imread(raw_photo)
    big = cv2.resize(image, (4990, 4990), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    photos = {"aligned 112x112": (open(aligned_photo, "rb").read(), "true", 5),
              f"raw {image.shape[1]}x{image.shape[0]}": (open(raw_photo, "rb").read(), "false", 5),
              "raw 4990x4990 (24.9 MP)": (buf.tobytes(), "false", 3)}
    key, pid, out = api.key("attacker-cost"), api.server.process.pid, {}
    api.http.post(f"/v1/subjects/{subject}/verify", headers=api.auth(key),     # loads MTCNN: not counted
                  files={"photo": ("p.jpg", open(raw_photo, "rb").read(), "image/jpeg")},
                  data={"token": "wrong-guess-0000", "aligned": "false"})
    for name, (data, aligned, n) in photos.items():
        statuses, lat, cpu0 = [], [], process_cpu_s(pid)
        for _ in range(n):
            t = time.perf_counter()
            r = api.http.post(f"/v1/subjects/{subject}/verify", headers=api.auth(key),
                              files={"photo": ("p.jpg", data, "image/jpeg")},
                              data={"token": "wrong-guess-0000", "aligned": aligned})
            lat.append(time.perf_counter() - t)
            statuses.append(r.status_code)
        cpu1 = process_cpu_s(pid)
        out[name] = {"bytes": len(data), "requests": n, "statuses": dict(collections.Counter(statuses)),
                     "latency_p50_ms": ms(lat),
                     "server_cpu_ms_per_request": None if cpu0 is None or cpu1 is None
                     else round(1000 * (cpu1 - cpu0) / n)}
    checks.append(("requests for a locked subject are refused (429)",
                   all(set(v["statuses"]) == {429} for v in out.values())))
    return out


# ---------------------------------------------------------------------------- (b) score oracle
def score_oracle(api: Api, gallery, outsiders, n_keys: int, checks: list, db_path: str) -> dict:
    t0 = time.perf_counter()
    for person, photos in gallery:
        api.enrol(f"g-{person}", photos[0], secrets.token_urlsafe(16))
    enrol_s = time.perf_counter() - t0
    probes = iter(outsiders)
    top_fields, cand_fields, per_key, calls, with_candidate, max_cands = set(), set(), [], 0, 0, 0
    spoofed, point = {}, None
    for k in range(n_keys):
        key = api.key(f"oracle-{k + 1}")
        answered, first, t1 = 0, None, time.perf_counter()
        while True:
            person, photos = next(probes)
            r, _ = api.identify(key, photos[0])
            if r.status_code != 200:
                first = {"status": r.status_code, "retry_after_s": retry_after(r),
                         "message": r.json()["error"]["message"], "elapsed_s": round(time.perf_counter() - t1, 1)}
                break
            body = r.json()
            point = body["operating_point"]
            answered += 1
            top_fields.update(body)
            for c in body["candidates"]:
                cand_fields.update(c)
            with_candidate += bool(body["candidates"])
            max_cands = max(max_cands, len(body["candidates"]))
        calls += answered
        per_key.append({"key": key, "answered_before_429": answered, "first_429": first})
        if k == 0:      # made-up client names after the first key's 429
            for what, extra in SPOOFS:
                person, photos = next(probes)
                r, _ = api.identify(key, photos[0], **extra)
                spoofed[what] = r.status_code
    checks.append(("no similarity in client identify answers (impostor probes)", "similarity" not in cand_fields
                   and "accepted" not in cand_fields))
    checks.append(("a made-up client name does not lift the 429", all(s == 429 for s in spoofed.values())))

    # genuine probes at top_k 50: only accepted candidates come back
    key = api.key("oracle-genuine")
    genuine, hits, max_genuine, genuine_fields = 0, 0, 0, set()
    for person, photos in gallery[:30]:
        if len(photos) < 2:
            continue
        r, _ = api.identify(key, photos[1])
        if r.status_code != 200:
            break
        cands = r.json()["candidates"]
        for c in cands:
            genuine_fields.update(c)
        genuine += 1
        hits += any(c["subject"] == f"g-{person}" for c in cands)
        max_genuine = max(max_genuine, len(cands))
    checks.append(("no similarity in client identify answers (genuine probes)", bool(genuine_fields)
                   and "similarity" not in genuine_fields and "accepted" not in genuine_fields))
    checks.append(("rejected candidates never listed", max_genuine < MAX_TOP_K and max_cands < MAX_TOP_K))

    # who the server counted: the attempt log and the request log name the key only
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT client, COUNT(*) FROM attempts WHERE op = 'identify' GROUP BY client").fetchall()
    finally:
        con.close()
    logged = collections.Counter()
    for line in api.server.log_lines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("route") == "/v1/identify":
            logged[entry.get("credential")] += 1
    names = {r[0] for r in rows} | set(logged)
    checks.append(("the logs name only API keys", not names & set(SPOOF_NAMES)))
    fpir = point["fpir_target"] if point else None
    return {"gallery": len(gallery), "gallery_enrol_s": round(enrol_s, 1), "top_k": MAX_TOP_K,
            "keys": n_keys, "per_key": per_key, "impostor_calls_answered": calls,
            "calls_with_a_candidate": with_candidate,
            "false_identification_rate": round(with_candidate / calls, 4) if calls else None,
            "false_identification_95ci": wilson(with_candidate, calls), "fpir_target": fpir,
            "operating_point": point, "max_candidates_impostor": max_cands,
            "gallery_size_at_identify": point["gallery_size"] if point else None,
            "answer_fields": sorted(top_fields), "candidate_fields": sorted(cand_fields),
            "candidate_fields_genuine": sorted(genuine_fields),
            "spoofed_client_name_status": spoofed,
            "genuine_probes": genuine, "genuine_hit_rate": round(hits / genuine, 4) if genuine else None,
            "max_candidates_genuine": max_genuine,
            "store_attempts_identify_by_client": {r[0]: r[1] for r in rows},
            "request_log_identify_by_credential": dict(logged)}


# ---------------------------------------------------------------------------- (c) scores
def fields_seen(api: Api, key: str, subject: str, person_photos, token: str, outsider: str) -> dict:
    r, _ = api.verify(key, subject, person_photos[1], token)
    v = r.json()
    r, _ = api.identify(key, person_photos[1], top_k=5)
    g = r.json()
    r, _ = api.identify(key, outsider, top_k=5)
    o = r.json()
    return {"verify_fields": sorted(v), "verify_has_similarity": "similarity" in v,
            "identify_candidate_fields": sorted({f for c in g["candidates"] for f in c}),
            "identify_candidates_genuine": len(g["candidates"]),
            "identify_candidates_outsider": len(o["candidates"]),
            "identify_has_similarity": any("similarity" in c for c in g["candidates"] + o["candidates"]),
            "identify_lists_rejected": any(c.get("accepted") is False for c in g["candidates"] + o["candidates"])}


def admin_scores(api: Api, people, outsider: str, checks: list, label: str) -> dict:
    tokens = {}
    for person, photos in people:
        tokens[person] = secrets.token_urlsafe(16)
        api.enrol(f"s-{person}", photos[0], tokens[person])
    for person, photos in people:          # a person whose genuine probe a client key gets back
        client = fields_seen(api, api.key("scores-client"), f"s-{person}", photos, tokens[person], outsider)
        if client["identify_candidates_genuine"]:
            break
    admin = fields_seen(api, "admin", f"s-{person}", photos, tokens[person], outsider)
    checks.append((f"{label}: client key sees no similarity", not client["verify_has_similarity"]
                   and not client["identify_has_similarity"] and not client["identify_lists_rejected"]))
    return {"client_key": client, "admin_key": admin}


# ---------------------------------------------------------------------------- report
def markdown(rec: dict) -> str:
    a, b, c = rec["token_guessing"], rec["score_oracle"], rec["admin_scores"]
    g, bound, weak = a["guessing"], a["bound"], a["common_password_victim"]
    f429 = g["first_429"] or {}
    sp = a["spread_one_key"]
    lines = [
        "# Online attacks against the HTTP server", "",
        f"Command: `{rec['command']}`  ",
        f"Date: {rec['date'][:10]}; machine: {rec['machine']['cpu_count']} cpus ({rec['machine']['cpu']}), "
        f"Python {rec['machine']['python']}, load average {rec['machine']['loadavg_before']} before, "
        f"{rec['machine']['loadavg_after']} after (a shared machine: other jobs ran; latencies are noisy).  ",
        f"Server: `iomface serve` (LocalServer), default policy {rec['policy']}, hasher {rec['model']}, "
        f"SQLite store, aligned LFW crops (`aligned=true`).", "",
        "## (a) Online token guessing (client key + the victim's real face)", "",
        "| measure | value |", "|---|---:|",
        f"| guesses answered before the first 429 | {g['answered_before_first_429']} |",
        f"| Retry-After of that 429 | {f429.get('retry_after_s')} s |",
        f"| guesses accepted (successes) | {g['successes']} of {g['guesses_sent']} sent |",
        f"| statuses after the first 429 | {g['statuses_after_first_429']} |",
        f"| latency p50: answered guess / refused guess | {g['latency_answered_p50_ms']} ms / "
        f"{g['latency_429_p50_ms']} ms |",
        f"| genuine user (right token, another key) afterwards | {a['genuine_after_attack']['status']}"
        f"{' (locked out)' if a['genuine_after_attack']['locked_out'] else ''} |",
        f"| second (colluding) client key: guesses answered | {a['second_key']['answered']} of "
        f"{a['second_key']['guesses']} ({a['second_key']['statuses']}) |",
        f"| never-enrolled subject: answer | {a['unknown_subject']['status']}, accepted="
        f"{a['unknown_subject']['accepted']} (same fields as a wrong token) |",
        f"| one key spread over {sp['victims']} victims: answered before refusal | "
        f"{sp['answered_before_first_refusal']} "
        f"(then {sp['first_refusal']['status'] if sp['first_refusal'] else '-'}, Retry-After "
        f"{sp['first_refusal']['retry_after_s'] if sp['first_refusal'] else '-'} s) |",
        f"| common passwords of the attack list the policy accepts | {weak['accepted_by_policy']} of "
        f"{weak['common_list']} (refused: {', '.join(weak['refused_by_policy']) or 'none'}) |",
        f"| victim with one of them (rank {weak['rank_in_list']}): found at guess | {weak['found_at_guess']} "
        f"(refused at guess {weak['refused_at_guess'] or '-'}); time to find at this rank "
        f"{weak['time_to_find_s_at_this_rank']:.0f} s, whole list within {weak['whole_list_within_s']:.0f} s |",
        "", "Cost of a refused request (verifications of the locked victim, all 429; server CPU from /proc):", "",
        "| photo | bytes | latency p50 | server CPU per request |", "|---|---:|---:|---:|",
        *[f"| {name} | {v['bytes']:,} | {v['latency_p50_ms']} ms | {v['server_cpu_ms_per_request']} ms |"
          for name, v in rec["refusal_cost"].items()],
        "", f"Bound (policy defaults): {bound['max_failures']} failures x 86400 / {bound['failure_window_s']:g} s = "
        f"**{bound['guesses_per_day_per_subject']:.0f} guesses a day per subject**, whatever the number of keys; "
        f"a token of {bound['min_token_bits']:g} bits (uniformly random) is found online with probability "
        f"<= {bound['p_success_per_day']:.2e} a day, {bound['p_success_per_year']:.2e} a year. One key may spread "
        f"{bound['guesses_per_day_per_key_spread_over_subjects']} guesses a day over many subjects (each still "
        f"<= {bound['guesses_per_day_per_subject']:.0f}).", "",
        "## (b) Score oracle through identify (client keys, faces of people not enrolled)", "",
        "Every key runs until its first 429. The keys after the first were created by the bench as administrator "
        "(an attacker cannot), only to measure the false-identification rate on more probes.", "",
        "| measure | value |", "|---|---:|",
        f"| gallery | {b['gallery_size_at_identify']} subjects ({b['gallery']} for the oracle, the rest from (a)); "
        f"top_k {b['top_k']} |",
        f"| answer fields / candidate fields (impostor probes; genuine probes) | {b['answer_fields']} / "
        f"{b['candidate_fields']}; {b['candidate_fields_genuine']} |",
        *[f"| {p['key']}: answered before 429 (Retry-After) | {p['answered_before_429']} "
          f"({p['first_429']['retry_after_s'] if p['first_429'] else '-'} s) |" for p in b["per_key"]],
        f"| impostor calls with any candidate (false identification) | {b['calls_with_a_candidate']} of "
        f"{b['impostor_calls_answered']} = {b['false_identification_rate']} (95% CI {b['false_identification_95ci']}); "
        f"FPIR target {b['fpir_target']} at threshold "
        f"{b['operating_point']['threshold'] if b['operating_point'] else '-'} |",
        f"| most candidates in one answer: impostor / genuine probe | {b['max_candidates_impostor']} / "
        f"{b['max_candidates_genuine']} (top_k {b['top_k']}) |",
        f"| genuine probes: own subject among the candidates | {b['genuine_hit_rate']} "
        f"({b['genuine_probes']} probes) |",
        f"| made-up client name after the 429 | {b['spoofed_client_name_status']} |",
        f"| rate-limited identify attempts in the store, by client | {b['store_attempts_identify_by_client']} |",
        f"| identify requests in the server log, by credential | {b['request_log_identify_by_credential']} |", "",
        "## (c) Similarities", "",
        "| server | key | verify fields | identify candidate fields | candidates (genuine / outsider, top_k 5) |",
        "|---|---|---|---|---|",
    ]
    for server, d in (("--admin_scores", c["with_admin_scores"]), ("default", c["default"])):
        for who in ("client_key", "admin_key"):
            x = d[who]
            lines.append(f"| {server} | {who.split('_')[0]} | {', '.join(x['verify_fields'])} | "
                         f"{', '.join(x['identify_candidate_fields']) or '-'} | {x['identify_candidates_genuine']} / "
                         f"{x['identify_candidates_outsider']} |")
    lines += ["", "## Checks", ""] + [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in rec["checks"]]
    lines += ["", "## Conclusions", ""] + [f"- {s}" for s in rec["conclusions"]]
    return "\n".join(lines) + "\n"


def conclusions(rec: dict) -> list[str]:
    a, b = rec["token_guessing"], rec["score_oracle"]
    g, bound, weak = a["guessing"], a["bound"], a["common_password_victim"]
    out = [
        f"Online guessing is capped per subject, not per caller: {g['answered_before_first_429']} wrong guesses, "
        f"then 429 with Retry-After {(g['first_429'] or {}).get('retry_after_s')} s for every key "
        f"(a second key got {a['second_key']['answered']} answered). That is at most "
        f"{bound['guesses_per_day_per_subject']:.0f} guesses a day per subject: p <= {bound['p_success_per_day']:.1e} "
        f"a day against a random token at the {bound['min_token_bits']:g}-bit floor.",
        "The price is a lockout: after the attacker's guesses the genuine user with the right token and face got "
        f"{a['genuine_after_attack']['status']}; anyone holding a client key and knowing a subject id can keep "
        f"that subject locked out with {bound['max_failures']} requests per {bound['failure_window_s']:g} s.",
        f"The 32-bit estimate does not recognise dictionary words: {weak['accepted_by_policy']} of the "
        f"{weak['common_list']} common passwords of the attack list are accepted at enrolment; a victim who chose "
        f"one is found online within {weak['whole_list_within_s'] / 3600:.1f} h by working down that list "
        f"({g['answered_before_first_429']} guesses per {bound['failure_window_s']:g} s). Issue random tokens.",
        "identify answers carry only subject and rank of accepted candidates (fields "
        f"{b['candidate_fields_genuine']}); no "
        f"similarity, no rejected candidate (at most {max(b['max_candidates_impostor'], b['max_candidates_genuine'])} "
        f"candidate(s) per answer at top_k {b['top_k']}). The score oracle of the library attack is reduced to "
        "the 1:N decision: "
        f"{b['false_identification_rate']} of impostor probes returned a candidate "
        f"(95% CI {b['false_identification_95ci']}, FPIR target {b['fpir_target']}).",
        f"Each client key gets {b['per_key'][0]['answered_before_429']} identify answers per minute; the name the "
        "limits count is the key's, set by the server: made-up names in headers, form fields or the query changed "
        f"nothing ({b['spoofed_client_name_status']}); rotating names needs an administrator to create keys.",
    ]
    c = rec["admin_scores"]["with_admin_scores"]
    out.append(f"With --admin_scores a client key still gets no similarity (verify fields "
               f"{c['client_key']['verify_fields']}); an admin key gets similarity and threshold, and identify's "
               "top_k with similarity and accepted "
               f"({c['admin_key']['identify_candidates_outsider']} candidates for an "
               "outsider's face: the oracle the library attack fits codes to; keep admin keys off untrusted devices).")
    cost = rec["refusal_cost"]
    big = next(v for k, v in cost.items() if "MP" in k)
    small = next(v for k, v in cost.items() if k.startswith("aligned"))
    out.append(f"A refused request costs the server {small['server_cpu_ms_per_request']} ms of CPU with an aligned "
               f"crop and {big['server_cpu_ms_per_request']} ms with a 24.9-megapixel photo "
               f"({big['latency_p50_ms']} ms to answer): the limits are checked before the upload is read "
               "(TemplateService.admit), so a key over its limit cannot load the server's cores with photos; "
               "within its limit, large raw photos cost what their alignment costs (lower --max_megapixels to "
               "bound it).")
    return out


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=100, help="subjects enrolled for the identify oracle")
    parser.add_argument("--oracle_keys", type=int, default=6, help="client keys the oracle runs through")
    parser.add_argument("--spread_victims", type=int, default=13,
                        help="victims one key spreads its guesses over (a2)")
    parser.add_argument("--lfw", default=os.path.join(ROOT, "..", "shared", "data", "lfw_112"))
    parser.add_argument("--raw_lfw", default=os.path.join(ROOT, "..", "shared", "data", "raw", "lfw"),
                        help=f"raw LFW photos (a4 uses {RAW_PERSON})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "http_attacks.json"),
                        help="the JSON record (and the same name with .md)")
    args = parser.parse_args(argv)
    from iom.server.launch import LocalServer
    from iom.service.policy import ServicePolicy

    policy = ServicePolicy()
    rng = random.Random(args.seed)
    people = people_of(args.lfw)
    rng.shuffle(people)
    two = [p for p in people if len(p[1]) >= 2]
    gallery = two[:args.gallery]
    victims = two[args.gallery:args.gallery + 60 + args.spread_victims]
    used = {p for p, _ in gallery + victims}
    outsiders = [p for p in people if p[0] not in used]
    command = "python " + " ".join(sys.argv if argv is None else ["bench/http_attacks.py", *argv])
    load_before = loadavg()
    print(f"machine: {os.cpu_count()} cpus ({cpu_model()}), load average {load_before} (shared: noisy); "
          f"default policy {policy}", flush=True)
    checks: list[tuple[str, bool]] = []
    rec = {"command": command, "policy": {k: getattr(policy, k) for k in (
        "max_failures", "failure_window_s", "verify_per_minute", "identify_per_minute",
        "subject_verify_per_minute", "min_token_bits", "fpir", "scrypt_n", "expose_scores")}}
    t0 = time.perf_counter()
    with LocalServer() as server:
        api = Api(server)
        rec["model"] = next((json.loads(x).get("model") for x in server.log_lines() if '"msg": "serving"' in x),
                            None)
        ta = time.perf_counter()
        rec["token_guessing"] = token_guessing(api, victims, policy, rng, args.spread_victims, checks)
        rec["token_guessing"]["elapsed_s"] = round(time.perf_counter() - ta, 1)
        victim = rec["token_guessing"]["victim"]
        rec["refusal_cost"] = refusal_cost(api, victim["subject"], victims[0][1][1],
                                           os.path.join(args.raw_lfw, RAW_PERSON, f"{RAW_PERSON}_0001.jpg"), checks)
        print(f"(a) {json.dumps(rec['token_guessing'])}", flush=True)
        print(f"(a4) {json.dumps(rec['refusal_cost'])}", flush=True)
        tb = time.perf_counter()
        rec["score_oracle"] = score_oracle(api, gallery, outsiders, args.oracle_keys, checks, server.db)
        rec["score_oracle"]["elapsed_s"] = round(time.perf_counter() - tb, 1)
        print(f"(b) {json.dumps(rec['score_oracle'])}", flush=True)
        default_scores = admin_scores(api, gallery[:5], outsiders[-1][1][0], checks, "default server")
        api.close()
    with LocalServer(options=["--admin_scores"]) as server:
        api = Api(server)
        rec["admin_scores"] = {"with_admin_scores": admin_scores(api, gallery[:5], outsiders[-1][1][0], checks,
                                                                 "--admin_scores"),
                               "default": default_scores}
        api.close()
    a = rec["admin_scores"]["with_admin_scores"]["admin_key"]
    checks.append(("--admin_scores: an admin key sees similarities", a["verify_has_similarity"]
                   and a["identify_has_similarity"]))
    d = default_scores["admin_key"]
    checks.append(("default server: an admin key sees no similarity", not d["verify_has_similarity"]
                   and not d["identify_has_similarity"]))
    print(f"(c) {json.dumps(rec['admin_scores'])}", flush=True)
    rec["checks"] = checks
    rec["ok"] = all(ok for _, ok in checks)
    rec["elapsed_s"] = round(time.perf_counter() - t0, 1)
    rec["machine"] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                      "python": platform.python_version(), "loadavg_before": load_before,
                      "loadavg_after": loadavg(),
                      "note": "shared machine (other jobs may run): timings are noisy"}
    rec["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rec["conclusions"] = conclusions(rec)
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=2)
        f.write("\n")
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(rec))
    print(f"wrote {args.out} and {md}; {'OK' if rec['ok'] else 'FAILED'} in {rec['elapsed_s']} s")
    print(json.dumps(rec))
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
