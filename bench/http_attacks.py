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
the 1:N threshold, against the FPIR target, with a 95% Wilson interval). The operating point
(gallery size, FPIR target, threshold) is not in a client key's answer (checked): the bench
reads it, as the server's operator would, from one identify call with the administrator key.
The client name the
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

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.attacks.client import Api  # noqa: E402
from bench.attacks.guessing import refusal_cost, token_guessing  # noqa: E402
from bench.attacks.oracle import admin_scores, score_oracle  # noqa: E402
from bench.attacks.report import conclusions, markdown  # noqa: E402
from bench.common import (LFW_112, RAW_LFW, REPO, arg_parser, command_line, emit, loadavg,  # noqa: E402
                          machine_line, machine_record, people, say, utc_now, write_json)
from bench.web.api import served_model  # noqa: E402

RAW_PERSON = "Hans_Blix"


def parse_args(argv=None):
    parser = arg_parser(__doc__)
    parser.add_argument("--gallery", type=int, default=100, help="subjects enrolled for the identify oracle")
    parser.add_argument("--oracle_keys", type=int, default=6, help="client keys the oracle runs through")
    parser.add_argument("--spread_victims", type=int, default=13,
                        help="victims one key spreads its guesses over (a2)")
    parser.add_argument("--lfw", default=LFW_112)
    parser.add_argument("--raw_lfw", default=RAW_LFW, help=f"raw LFW photos (a4 uses {RAW_PERSON})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "results", "http_attacks.json"),
                        help="the JSON record (and the same name with .md)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from iom.server.launch import LocalServer
    from iom.service.policy import ServicePolicy

    policy = ServicePolicy()
    rng = random.Random(args.seed)
    everyone = people(args.lfw)
    rng.shuffle(everyone)
    two = [p for p in everyone if len(p[1]) >= 2]
    gallery = two[:args.gallery]
    victims = two[args.gallery:args.gallery + 60 + args.spread_victims]
    used = {p for p, _ in gallery + victims}
    outsiders = [p for p in everyone if p[0] not in used]
    load_before = loadavg()
    say(f"machine: {machine_line()}, load average {load_before} (shared: noisy); default policy {policy}")
    checks: list[tuple[str, bool]] = []
    rec = {"command": command_line("bench/http_attacks.py", argv), "policy": {k: getattr(policy, k) for k in (
        "max_failures", "failure_window_s", "verify_per_minute", "identify_per_minute",
        "subject_verify_per_minute", "min_token_bits", "fpir", "scrypt_n", "expose_scores")}}
    t0 = time.perf_counter()
    with LocalServer() as server:
        api = Api(server)
        rec["model"] = served_model(server)
        ta = time.perf_counter()
        rec["token_guessing"] = token_guessing(api, victims, policy, rng, args.spread_victims, checks)
        rec["token_guessing"]["elapsed_s"] = round(time.perf_counter() - ta, 1)
        victim = rec["token_guessing"]["victim"]
        rec["refusal_cost"] = refusal_cost(api, victim["subject"], victims[0][1][1],
                                           os.path.join(args.raw_lfw, RAW_PERSON, f"{RAW_PERSON}_0001.jpg"), checks)
        say(f"(a) {json.dumps(rec['token_guessing'])}")
        say(f"(a4) {json.dumps(rec['refusal_cost'])}")
        tb = time.perf_counter()
        rec["score_oracle"] = score_oracle(api, gallery, outsiders, args.oracle_keys, checks, server.db)
        rec["score_oracle"]["elapsed_s"] = round(time.perf_counter() - tb, 1)
        say(f"(b) {json.dumps(rec['score_oracle'])}")
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
    say(f"(c) {json.dumps(rec['admin_scores'])}")
    rec["checks"] = checks
    rec["ok"] = all(ok for _, ok in checks)
    rec["elapsed_s"] = round(time.perf_counter() - t0, 1)
    rec["machine"] = machine_record(loadavg_before=load_before, loadavg_after=loadavg(),
                                    note="shared machine (other jobs may run): timings are noisy")
    rec["date"] = utc_now()
    rec["conclusions"] = conclusions(rec)
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    write_json(args.out, rec)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(rec))
    print(f"wrote {args.out} and {md}; {'OK' if rec['ok'] else 'FAILED'} in {rec['elapsed_s']} s")
    emit(rec)
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
