"""(a) Online token guessing against one subject, spread over many (a2), against a chosen
password (a3), and (a4) what a refused request costs the server; see ``bench/http_attacks.py``."""

from __future__ import annotations

import collections
import random
import time

from bench.attacks.client import Api, ms, random_token
from bench.common import process_cpu_s, strong_token
from bench.web import api as web
from bench.web.api import retry_after

WRONG_TOKEN = "wrong-guess-0000"


def token_guessing(api: Api, people, policy, rng: random.Random, n_spread: int, checks: list) -> dict:
    from iom.attacks.tokens import COMMON
    from iom.service.policy import token_bits

    out = {}
    # the victim: a person whose other photo is accepted with the right token (the worst case)
    victim = None
    for i, (person, photos) in enumerate(people[:10]):
        subject, token = f"victim-{i}", strong_token()
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
        api.enrol(f"spread-{j}", photos[0], strong_token())
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


def refusal_cost(api: Api, subject: str, aligned_photo: str, raw_photo: str, checks: list) -> dict:
    """Latency and server CPU of verifications of a locked subject (every one a 429): an
    aligned crop, a raw photo, and that raw photo upscaled to just under the server's default
    25-megapixel cap (a ~1 MB JPEG)."""
    import cv2

    image = cv2.imread(raw_photo)
    big = cv2.resize(image, (4990, 4990), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    photos = {"aligned 112x112": (open(aligned_photo, "rb").read(), True, 5),
              f"raw {image.shape[1]}x{image.shape[0]}": (open(raw_photo, "rb").read(), False, 5),
              "raw 4990x4990 (24.9 MP)": (buf.tobytes(), False, 3)}
    key, pid, out = api.key("attacker-cost"), api.server.process.pid, {}
    web.verify(api.http, api.keys[key], subject, open(raw_photo, "rb").read(), WRONG_TOKEN,  # loads MTCNN:
               aligned=False)                                                                # not counted
    for name, (data, aligned, n) in photos.items():
        statuses, lat, cpu0 = [], [], process_cpu_s(pid)
        for _ in range(n):
            t = time.perf_counter()
            r = web.verify(api.http, api.keys[key], subject, data, WRONG_TOKEN, aligned=aligned)
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
