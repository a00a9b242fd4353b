"""Attack 1: the identification score oracle.

The attacker calls ``identify`` with random embeddings and ``top_k`` = the gallery size, and
reads what comes back for every subject. Probe and gallery codes share the identification
key, so under code keying the key cancels: a subject's score is the number of groups where
the probe's un-keyed code (public: the network is public) equals the subject's. A
least-squares fit of the scores against the one-hot codes of the probes therefore recovers
every subject's un-keyed code; an embedding producing it, found by gradient ascent through
the public network (:mod:`iom.attacks.inversion`), impersonates the subject at ``identify``
and, with the victim's token, at ``verify``.

A second estimate needs no public code (so it also applies to random IoM, whose key is in
the projection): the score-weighted mean of the probes points to the subject's embedding.

Against a service that returns decisions only, the "scores" are the accepted flags (random
embeddings are never accepted), and the attacker rotates client names when rate limited.

For scale, :func:`dictionary` presents public faces of people not enrolled: what any
identification system concedes at its operating point (its false-positive identification
rate), which no template protection changes.
"""

from __future__ import annotations

import numpy as np

from arcface.embed import l2_normalize
from iom.attacks.faces import fused, random_unit
from iom.attacks.hashers import has_public_code, inversion_problem, public_codes
from iom.attacks.inversion import invert
from iom.attacks.setting import Setting
from iom.attacks.targets import Refused
from iom.evaluation.matching import hamming_similarity_matrix, one_hot_codes


def query(target, probes: np.ndarray, subjects: list[str], max_clients: int = 1000) -> tuple[np.ndarray, dict]:
    """``(scores, stats)``: the (calls, subjects) answers of ``identify`` (the similarity where
    given, else 1 for an accepted candidate, 0 otherwise; NaN where the call was refused).
    On a rate limit the attacker switches to a new client name (at most ``max_clients``)."""
    column = {s: j for j, s in enumerate(subjects)}
    scores = np.full((len(probes), len(subjects)), np.nan)
    client, refused = 0, 0
    for i, x in enumerate(probes):
        while True:
            try:
                hits = target.identify(x, top_k=len(subjects), client=f"attacker-{client}")
                break
            except Refused as r:
                if r.kind != "rate-limited" or client + 1 >= max_clients:
                    hits = None
                    break
                refused += 1
                client += 1
        if hits is None:
            refused += 1
            continue
        scores[i] = 0.0
        for h in hits:
            if h.subject in column:
                scores[i, column[h.subject]] = h.similarity if h.similarity is not None else float(h.accepted)
    return scores, {"answered": int(np.isfinite(scores[:, 0]).sum()), "refusals": refused,
                    "clients_used": client + 1}


def fit_codes(probe_codes: np.ndarray, scores: np.ndarray, q: int, ridge: float = 1e-6) -> np.ndarray:
    """Codes (subjects, m) that best explain ``scores`` (calls, subjects) as per-group
    agreements with ``probe_codes`` (calls, m): minimum-norm least squares (dual form, so the
    cost is in the number of calls), then the best symbol of each group."""
    ok = np.isfinite(scores[:, 0])
    codes, y = probe_codes[ok], np.nan_to_num(scores[ok]) * probe_codes.shape[1]
    m = codes.shape[1]
    gram = hamming_similarity_matrix(codes, codes, q).astype(np.float64) * m
    alpha = np.linalg.solve(gram + ridge * np.eye(len(codes)), y)
    w = (one_hot_codes(codes, q).T @ alpha).reshape(m, q, -1)
    return w.argmax(axis=1).T


def regression_embeddings(probes: np.ndarray, scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """Unit estimates (subjects, dim) of the subjects' embeddings: the score-weighted sum of
    the centred random probes (a random direction where the scores carry nothing)."""
    ok = np.isfinite(scores[:, 0])
    s = scores[ok] - scores[ok].mean(axis=0)
    est = (probes[ok].T @ s).T
    flat = np.linalg.norm(est, axis=1) < 1e-9
    est[flat] = random_unit(np.random.default_rng(seed), int(flat.sum()), probes.shape[1])
    return l2_normalize(est)


def impersonate(target, x: np.ndarray, subjects: list[str], tokens: list[str], client: str) -> dict:
    """Rates at which embeddings ``x`` are accepted as their subject: at ``identify`` (top
    candidate, accepted) and at ``verify`` with the subject's token."""
    ident, ver = [], []
    for xi, s, t in zip(x, subjects, tokens):
        try:
            hits = target.identify(xi, top_k=1, client=client)
            ident.append(bool(hits) and hits[0].subject == s and hits[0].accepted)
        except Refused:
            ident.append(False)
        ver.append(target.verify(s, xi, t, client=client).accepted)
    return {"identify": float(np.mean(ident)), "verify": float(np.mean(ver))}


def run(setting: Setting) -> dict:
    """Symbol recovery against the number of calls, and masquerade success."""
    sc, hasher = setting.scale, setting.hasher
    target = setting.target("oracle")
    labels, people = setting.people(sc.n_subjects, "oracle/gallery")
    subjects, tokens = setting.enrol(target, people, "subject-", "oracle")
    probes = random_unit(setting.rng("oracle/probes"), max(sc.oracle_calls), hasher.dim)
    scores, stats = query(target, probes, subjects)
    out = {"calls": list(sc.oracle_calls), **stats, "chance_symbols": 1.0 / hasher.q,
           "chance_masquerade": float(setting.calibration.get("far", 1e-3))}
    k = sc.n_masquerade
    if has_public_code(hasher):
        truth = public_codes(hasher, np.stack([fused(p[:sc.enrol_samples]) for p in people]))
        pcodes = public_codes(hasher, probes)
        fits = {n: fit_codes(pcodes[:n], scores[:n], hasher.q) for n in sc.oracle_calls}
        out["symbols_recovered"] = {str(n): float(np.mean(fit == truth)) for n, fit in fits.items()}
        recovered = fits[max(fits)]
        out["subjects_exact"] = float(np.mean(np.all(recovered == truth, axis=1)))
        logits, target_codes = inversion_problem(hasher, recovered[:k], None)
        x = invert(logits, target_codes, hasher.q, hasher.dim, steps=sc.inversion_steps, seed=setting.seed)
        out["masquerade_inverted"] = impersonate(target, x, subjects[:k], tokens[:k], "attacker-final")
    x = regression_embeddings(probes, scores, setting.seed)[:k]
    out["masquerade_regression"] = impersonate(target, x, subjects[:k], tokens[:k], "attacker-final-2")
    out["regression_cosine"] = float(np.mean(np.sum(x * np.stack([fused(p[:sc.enrol_samples])
                                                                  for p in people[:k]]), axis=1)))
    out["dictionary"] = dictionary(target, setting.unrelated(labels, sc.n_dictionary, "oracle/dictionary"),
                                   len(subjects))
    target.close()
    return out


def dictionary(target, faces: np.ndarray, gallery_size: int) -> dict:
    """Public faces of people not enrolled, presented at ``identify`` (rotating client names):
    the fraction falsely identified (the false-positive identification rate the attacker
    gets) and the fraction of enrolled subjects at least one of them impersonates."""
    hit, subjects, client = [], set(), 0
    for x in faces:
        while True:
            try:
                hits = target.identify(x, top_k=1, client=f"dictionary-{client}")
                break
            except Refused as r:
                if r.kind != "rate-limited":
                    raise
                client += 1
        accepted = [h.subject for h in hits if h.accepted]
        hit.append(bool(accepted))
        subjects.update(accepted)
    return {"probes": len(faces), "falsely_identified": float(np.mean(hit)),
            "subjects_impersonated": len(subjects) / gallery_size}
