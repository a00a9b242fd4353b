"""Attack 5 (ISO/IEC 30136 full disclosure): token, template and secret all stolen.

With the token and the secret the attacker derives the template's key exactly as the service
does; with the public model (deep IoM) or the key's projection (random IoM) he inverts the
protected code by gradient ascent (:mod:`iom.attacks.inversion`) and presents the resulting
embedding. Measured: acceptance at ``verify`` (the calibrated threshold) and at ``identify``,
and how much of the face the inverted embedding carries — its cosine to the victim's other
real samples, against that of the genuine enrolment embedding. Identification templates
need no token: the secret alone inverts them (``secret_only_*``).
"""

from __future__ import annotations

import numpy as np

from iom.attacks import db
from iom.attacks.faces import fused
from iom.attacks.hashers import inversion_problem
from iom.attacks.inversion import invert
from iom.attacks.oracle import impersonate
from iom.attacks.setting import Setting


def run(setting: Setting) -> dict:
    sc, hasher = setting.scale, setting.hasher
    e = sc.enrol_samples
    target = setting.target("full-key")
    _, people = setting.people(sc.n_masquerade, "full-key/victims")
    subjects, tokens = setting.enrol(target, people, "victim-", "full-key")
    rows = [db.active_row(target.db_path, s, "verify") for s in subjects]
    logits, goal = inversion_problem(hasher, db.codes_of(rows, hasher.m, hasher.q),
                                     [target.verification_key(r, t) for r, t in zip(rows, tokens)])
    x = invert(logits, goal, hasher.q, hasher.dim, steps=sc.inversion_steps, seed=setting.seed)
    enrolled = np.stack([fused(p[:e]) for p in people])
    others = [p[e:] for p in people]                  # the victims' samples not enrolled
    out = impersonate(target, x, subjects, tokens, "attacker")
    out.update({"chance": float(setting.calibration.get("far", 1e-3)),
                "cosine_to_enrolment": float(np.mean(np.sum(x * enrolled, axis=1))),
                "cosine_to_other_samples": _cosine(x, others),
                "genuine_cosine_to_other_samples": _cosine(enrolled, others)})
    # the secret alone (no token): identification templates are under secret-derived keys only
    rows = [db.active_row(target.db_path, s, "identify") for s in subjects]
    codes = target.identification_codes(rows, db.codes_of(rows, hasher.m, hasher.q))
    logits, goal = inversion_problem(hasher, codes, target.identification_key())
    x = invert(logits, goal, hasher.q, hasher.dim, steps=sc.inversion_steps, seed=setting.seed)
    secret_only = impersonate(target, x, subjects, tokens, "attacker-2")
    out.update({"secret_only_identify": secret_only["identify"],
                "secret_only_verify_with_token": secret_only["verify"],
                "secret_only_cosine_to_other_samples": _cosine(x, others)})
    target.close()
    return out


def _cosine(x: np.ndarray, others: list[np.ndarray]) -> float:
    """Mean cosine of each row of ``x`` to the samples of its person."""
    return float(np.mean([np.mean(o @ xi) for o, xi in zip(others, x)]))
