"""(b) The score oracle through identify (client keys, faces of people not enrolled), and (c)
similarities for admin keys only; see ``bench/http_attacks.py``."""

from __future__ import annotations

import collections
import json
import sqlite3
import time

from bench.attacks.client import MAX_TOP_K, Api
from bench.common import strong_token, wilson
from bench.web.api import retry_after

SPOOFS = (("header X-Client", {"headers": {"X-Client": "somebody-else"}}),
          ("header X-Forwarded-For", {"headers": {"X-Forwarded-For": "203.0.113.7"}}),
          ("header X-Real-IP", {"headers": {"X-Real-IP": "203.0.113.8"}}),
          ("form field client", {"data": {"client": "somebody-else"}}),
          ("query parameter client", {"params": {"client": "somebody-else"}}))
SPOOF_NAMES = ("somebody-else", "203.0.113.7", "203.0.113.8")


def score_oracle(api: Api, gallery, outsiders, n_keys: int, checks: list, db_path: str) -> dict:
    t0 = time.perf_counter()
    for person, photos in gallery:
        api.enrol(f"g-{person}", photos[0], strong_token())
    enrol_s = time.perf_counter() - t0
    probes = iter(outsiders)
    top_fields, cand_fields, per_key, calls, with_candidate, max_cands = set(), set(), [], 0, 0, 0
    spoofed = {}
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
    checks.append(("no operating point (gallery size, threshold) in client identify answers",
                   bool(top_fields) and "operating_point" not in top_fields))
    # the operating point of these identifications, as the server's operator reads it: since the
    # second security review only an administrator key's answer carries it (the gallery is
    # unchanged since the enrolments above: identify writes no template)
    point, admin_fields = operating_point(api, gallery[0][1][0])
    checks.append(("an administrator key's identify answer carries the operating point", point is not None))
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
            "operating_point": point, "operating_point_from": "an administrator key's identify answer",
            "admin_answer_fields": admin_fields, "max_candidates_impostor": max_cands,
            "gallery_size_at_identify": point["gallery_size"] if point else None,
            "answer_fields": sorted(top_fields), "candidate_fields": sorted(cand_fields),
            "candidate_fields_genuine": sorted(genuine_fields),
            "spoofed_client_name_status": spoofed,
            "genuine_probes": genuine, "genuine_hit_rate": round(hits / genuine, 4) if genuine else None,
            "max_candidates_genuine": max_genuine,
            "store_attempts_identify_by_client": {r[0]: r[1] for r in rows},
            "request_log_identify_by_credential": dict(logged)}


def operating_point(api: Api, photo: str) -> tuple[dict | None, list[str]]:
    """The 1:N operating point (gallery size, FPIR target, threshold, expected TAR) from one
    identify call with the administrator key, and that answer's fields (the point is ``None``
    if the call failed or the answer lacks it)."""
    r, _ = api.identify("admin", photo)
    if r.status_code != 200:
        return None, []
    body = r.json()
    return body.get("operating_point"), sorted(body)


# ---------------------------------------------------------------------------- (c) similarities
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
        tokens[person] = strong_token()
        api.enrol(f"s-{person}", photos[0], tokens[person])
    for person, photos in people:          # a person whose genuine probe a client key gets back
        client = fields_seen(api, api.key("scores-client"), f"s-{person}", photos, tokens[person], outsider)
        if client["identify_candidates_genuine"]:
            break
    admin = fields_seen(api, "admin", f"s-{person}", photos, tokens[person], outsider)
    checks.append((f"{label}: client key sees no similarity", not client["verify_has_similarity"]
                   and not client["identify_has_similarity"] and not client["identify_lists_rejected"]))
    return {"client_key": client, "admin_key": admin}
