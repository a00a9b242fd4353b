"""Attack 6: walking the identification boundary with freely chosen device codes.

With ``--device_codes`` a caller sends codes instead of photos, so it chooses its probes. Given
one code the service accepts for a victim (from a photo of the victim, or a lookalike's), an
adaptive walk on the accept/reject answers of ``identify`` recovers the victim's whole code:

1. *bisect* how many of the start's groups (in a random order) can be replaced by other
   symbols before the victim is no longer accepted: the code just before is accepted with
   exactly the threshold's number of agreeing groups;
2. *flip* each group of that boundary code in turn: if the victim drops out, the group agreed;
3. for each group that did not agree, *try symbols* (with one agreeing group knocked out, the
   victim comes back exactly when the symbol is right; the last symbol left needs no query).

About ``log2(m) + m + (m - k) (q - 1) / 2`` queries, ``k`` the threshold count: some 1,600 at
512×8 (the second review recovered 7 of 7 enrolled templates this way). What it recovers is the
code *in the space the probes are in*. Before issue 24 that space was the un-keyed code, the
same for every deployment of the model: the recovered code was the victim's universal template,
accepted by any deployment (and invertible to a face image). Now a device relabels its codes
with the key it was provisioned with and the service inverts that key, so the walk recovers
the victim's code *under the device's key*: without the key, it says nothing about the
universal code (each group agrees with probability 1/q). Identification with codes is also
limited per device and locked after misses (:class:`~iom.service.policy.ServicePolicy`), which
stops the walk after a few dozen queries.

:func:`walk` is the algorithm on any accept oracle; :func:`run` measures it against the
service: ``before`` (the walker holds the key: un-keyed codes, as before, and no lock on
misses), ``after`` (the default policy; the device's key stays on the device) and
``after_key_known`` (a device whose key was extracted: the lock alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Stopped(Exception):
    """The oracle refused to answer (rate limit, lock): the walk ends with what it has."""


@dataclass
class WalkResult:
    """``code``: the recovered code (groups not recovered: the start's symbol); ``known``: the
    groups whose symbol is established; ``queries`` answered; ``stopped``: why it ended early."""

    code: np.ndarray
    known: np.ndarray
    queries: int
    stopped: str | None = None


def walk(accepts, start: np.ndarray, q: int, rng: np.random.Generator, max_queries: int = 100_000) -> WalkResult:
    """The boundary walk from ``start`` (accepted) with ``accepts(code) -> bool`` (raising
    :class:`Stopped` when refused)."""
    start = np.asarray(start, np.int64).copy()
    m = len(start)
    order = rng.permutation(m)
    other = (start + rng.integers(1, q, m)) % q               # a different symbol in every group
    known = np.zeros(m, bool)
    state = {"queries": 0}

    def ask(code) -> bool:
        if state["queries"] >= max_queries:
            raise Stopped("query budget")
        answer = bool(accepts(code))
        state["queries"] += 1                                  # answered queries only
        return answer

    def replaced(j: int) -> np.ndarray:
        code = start.copy()
        code[order[:j]] = other[order[:j]]
        return code

    best = start                                               # what is known so far, if refused
    try:
        lo, hi = 0, m                                          # accepted at lo; find the last j accepted
        if ask(replaced(m)):
            return WalkResult(replaced(m), known, state["queries"], "accepted with every group replaced")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ask(replaced(mid)) else (lo, mid)
        boundary = best = replaced(lo)                         # exactly at the threshold
        agreeing = []
        for g in range(m):                                     # which groups agree
            probe = boundary.copy()
            probe[g] = (boundary[g] + 1) % q
            if not ask(probe):
                agreeing.append(g)
                known[g] = True
        if not agreeing:
            return WalkResult(boundary, known, state["queries"], "no agreeing group found")
        best = boundary.copy()
        below = boundary.copy()
        below[agreeing[0]] = (boundary[agreeing[0]] + 1) % q   # one agreement under the threshold
        for g in np.flatnonzero(~known):                      # the right symbol of the others
            candidates = [s for s in range(q) if s != boundary[g]]
            best[g] = candidates[-1]                           # unless one of the others is accepted
            for s in candidates[:-1]:
                probe = below.copy()
                probe[g] = s
                if ask(probe):
                    best[g] = s
                    break
            known[g] = True
        return WalkResult(best, known, state["queries"])
    except Stopped as e:
        return WalkResult(best.copy(), known, state["queries"], str(e))


# --------------------------------------------------------------------------- against the service
def _universal(code, key) -> np.ndarray:
    """What a code sent through a device keyed with ``key`` is, un-keyed (``key`` None: itself)."""
    return code if key is None else key.invert(code[None])[0]


#: limits lifted: the walker who waits them out (its time is estimated from the walk's queries)
_PATIENT = dict(identify_per_minute=10 ** 6, code_identify_per_minute=10 ** 6, max_code_misses=10 ** 6)


def _scenarios(kind: str) -> dict:
    """``{name: (walker holds the device key, policy)}`` measured for a suite ``kind``: before
    the fix, un-keyed codes (the walker holds the key, which is the same as no key) and only the
    per-client identification limit, which a patient walker waits out; after it, the default
    policy with the device's key kept on the device, or extracted from it, and both again with
    every limit waited out (how long that takes at the default limits is estimated)."""
    from iom.service.policy import ServicePolicy

    codes = dict(allow_codes=True, allow_embeddings=True)
    if kind == "before":
        return {"before": (True, ServicePolicy(**codes, **_PATIENT))}
    return {"after": (False, ServicePolicy(**codes)),
            "after_key_known": (True, ServicePolicy(**codes)),
            "after_patient": (False, ServicePolicy(**codes, **_PATIENT)),
            "after_key_known_patient": (True, ServicePolicy(**codes, **_PATIENT))}


def hours_at_default_limits(queries: int, misses: int, kind: str) -> float:
    """How long a walk of ``queries`` (``misses`` of them matching no one) takes at the default
    policy's limits: before the fix, 120 identifications a minute per key; after it, 6 a minute
    per device and 20 misses an hour."""
    from iom.service.policy import ServicePolicy

    d = ServicePolicy()
    if kind == "before":
        return queries / d.identify_per_minute / 60.0
    return max(queries / d.code_identify_per_minute / 60.0,
               misses / d.max_code_misses * d.code_miss_window_s / 3600.0)


def run(setting) -> dict:
    """The walk against the template service for a few victims (see the module docstring); the
    suite's ``before`` is the service as it was (un-keyed codes, no lock on misses), ``after``
    the default policy, with the device's key kept on it or extracted."""
    from pathlib import Path

    from iom.attacks.faces import fused
    from iom.attacks.hashers import has_public_code
    from iom.attacks.targets import ServiceTarget
    from iom.hashing.keying import CodeKeying
    from iom.errors import RateLimitedError
    from iom.service.template_keys import device_key

    hasher = setting.hasher
    out = {"attack": "boundary_walk", "kind": setting.kind, "chance": 1.0 / hasher.q, "scenarios": {}}
    if not has_public_code(hasher):
        out["skipped"] = "device codes need a hasher keyed on its code (a public un-keyed code)"
        return out
    q, m = hasher.q, hasher.m
    n_victims = setting.scale.n_walk_victims
    labels, people = setting.people(max(n_victims, 4), "walk")
    for name, (key_known, policy) in _scenarios(setting.kind).items():
        path = Path(setting.workdir) / f"walk-{setting.kind}-s{setting.seed}-{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        target = ServiceTarget(hasher, setting.calibration, setting.secret, path, policy=policy)
        subjects, _ = setting.enrol(target, people, "walked", f"walk/{name}")
        service, device = target.service, f"device-{name}"
        dkey = CodeKeying(device_key(setting.secret, device), m, q)
        rng = setting.rng(f"walk/{name}")
        rows = []
        for subject, samples in list(zip(subjects, people))[:n_victims]:
            victim = hasher.codes(fused(samples[:setting.scale.enrol_samples])[None])[0].astype(np.int64)
            start_universal = hasher.codes(samples[-1][None])[0].astype(np.int64)   # another photo of the victim
            start = dkey.apply(start_universal[None])[0].astype(np.int64)            # what the device sends

            misses = {"n": 0}

            def accepts(code, subject=subject, misses=misses):
                try:
                    hits = service.identify(top_k=5, code=code, client=device)
                except RateLimitedError as e:
                    raise Stopped(f"refused: {e}") from None
                misses["n"] += not hits
                return any(h.subject_id == subject for h in hits)

            try:
                accepted = accepts(start)
            except Stopped:
                accepted = False
            if not accepted:
                rows.append({"subject": subject, "start_accepted": False})
                continue
            result = walk(accepts, start, q, rng, setting.scale.walk_max_queries)
            recovered = _universal(result.code, dkey if key_known else None)
            rows.append({"subject": subject, "start_accepted": True, "queries": result.queries + 1,
                         "misses": misses["n"], "stopped": result.stopped,
                         "hours_at_default_limits": hours_at_default_limits(
                             result.queries + 1, misses["n"], setting.kind),
                         "groups_established": int(result.known.sum()),
                         "agreement_in_channel": float(np.mean(result.code == dkey.apply(victim[None])[0])),
                         "agreement_universal": float(np.mean(recovered == victim)),
                         "start_agreement_universal": float(np.mean(start_universal == victim))})
        target.close()
        walked = [r for r in rows if r.get("start_accepted")]

        def mean(key):
            return float(np.mean([r[key] for r in walked])) if walked else None

        out["scenarios"][name] = {
            "key_known": key_known, "policy": {"code_identify_per_minute": policy.code_identify_per_minute,
                                               "max_code_misses": policy.max_code_misses},
            "victims": rows, "walked": len(walked), "mean_queries": mean("queries"),
            "mean_hours_at_default_limits": mean("hours_at_default_limits"),
            "mean_agreement_universal": mean("agreement_universal"),
            "mean_start_agreement": mean("start_agreement_universal"),
            "templates_recovered": sum(r["agreement_universal"] == 1.0 for r in walked)}
    out.update(_headline(out["scenarios"], setting.kind))
    return out


def _headline(scenarios: dict, kind: str) -> dict:
    """The figures of the suite's before/after table, the same keys for both kinds:
    ``universal_agreement`` (what the walk yields, read as the victim's universal code: 1/q is
    chance), ``templates_recovered`` (share of walked victims recovered whole, universal),
    ``queries_answered`` (before a refusal), ``hours_for_a_whole_walk`` (at the default limits,
    by a walker holding the key) and, after the fix, ``key_holder_recovered`` (a device whose
    key was extracted, waiting the limits out)."""
    def share(s):
        return s["templates_recovered"] / s["walked"] if s["walked"] else None

    if kind == "before":
        s = scenarios["before"]
        return {"universal_agreement": s["mean_agreement_universal"], "templates_recovered": share(s),
                "queries_answered": s["mean_queries"], "hours_for_a_whole_walk": s["mean_hours_at_default_limits"]}
    patient, leaked = scenarios["after_patient"], scenarios["after_key_known_patient"]
    return {"universal_agreement": patient["mean_agreement_universal"], "templates_recovered": share(patient),
            "queries_answered": scenarios["after"]["mean_queries"],
            "hours_for_a_whole_walk": leaked["mean_hours_at_default_limits"],
            "key_holder_recovered": share(leaked)}
