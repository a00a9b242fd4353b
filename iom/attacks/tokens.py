"""Attack 4: guessing user tokens.

Offline (the database and the secret stolen, a photo of the victim at hand): every guess
derives the key the service would and compares the victim's face under it with the stored
code; the right token stands out. Measured: guesses per second with each scheme's KDF, the
search of a PIN space, and which kinds of token the policy refuses at enrolment.

Online (no database): with exact scores, the right token and an *unrelated* face give the
same-key impostor score (above chance, since unrelated faces share code statistics) while
a wrong token gives chance, so a few unrelated faces confirm a guessed token. Measured: the
confirmation rate for victims tested with their true token, and the false confirmation
rate for victims tested with a wrong one (the chance level); against decisions only, plus
the lockout, and whether the lockout then also shuts the genuine user out.
"""

from __future__ import annotations

import time

import numpy as np

from iom.attacks import db
from iom.attacks.hashers import has_public_code, public_codes
from iom.attacks.setting import Setting
from iom.attacks.targets import Refused


#: a few of the most common passwords of public leak lists
COMMON = ["password1", "iloveyou", "princess", "sunshine", "football", "baseball", "welcome1", "trustno1",
          "superman", "qwerty123", "michael1", "charlie1", "jennifer", "starwars", "whatever"]


def token_classes(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
    """``n`` tokens of each kind a user might choose."""
    lower = list("abcdefghijklmnopqrstuvwxyz")
    alnum = lower + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    words = ["summer", "dragon", "monkey", "football", "sunshine", "shadow", "master", "letmein", "welcome",
             "flower", "hunter", "soccer", "banana", "orange", "silver"]

    def draw(alphabet, k):
        return ["".join(rng.choice(alphabet, k)) for _ in range(n)]
    return {"4-digit PIN": draw(list("0123456789"), 4), "6-digit PIN": draw(list("0123456789"), 6),
            "8-digit PIN": draw(list("0123456789"), 8),
            "word + 2 digits": [f"{rng.choice(words)}{rng.integers(100):02d}" for _ in range(n)],
            "common password": list(rng.choice(COMMON, n, replace=n > len(COMMON))),
            "8 random lower-case": draw(lower, 8), "8 random alphanumeric": draw(alnum, 8),
            "12 random alphanumeric": draw(alnum, 12)}


def policy_refusals(setting: Setting) -> dict[str, float]:
    """Fraction of each token kind the target refuses at enrolment."""
    target = setting.target("token-policy")
    x = setting.faces.embeddings[:1]
    out = {}
    for kind, tokens in token_classes(setting.rng("tokens/classes"), setting.scale.tokens_per_class).items():
        refused = 0
        for i, t in enumerate(tokens):
            try:
                target.enroll(f"policy-{kind}-{i}", x, t)
            except Refused as r:
                refused += r.kind == "policy"
        out[kind] = refused / len(tokens)
    target.close()
    return out


def _guesser(target, row: dict, photo: np.ndarray):
    """``similarity(token)``: the victim's photo under the key a guess derives, against the
    stored code (the public code is computed once where there is one)."""
    stored = db.codes_of([row], target.m, target.q)
    hasher = target.hasher
    plain = public_codes(hasher, photo[None]) if has_public_code(hasher) else None

    def similarity(token: str) -> float:
        key = target.verification_key(row, token)
        code = hasher.keying(key).apply(plain) if plain is not None else hasher.encode(photo[None], key)
        return float(np.mean(code == stored))
    return similarity


def offline(setting: Setting) -> dict:
    """Guesses/s; PIN search success where PINs can be enrolled (the true PIN the most similar
    of the guesses searched, for at most ``scale.offline_seconds`` a victim); extrapolated
    search times."""
    sc = setting.scale
    target = setting.target("token-offline")
    digits = sc.pin_digits
    space = 10 ** digits
    _, people = setting.people(sc.n_pin_victims, "tokens/offline")
    rng = setting.rng("tokens/pins")
    found, rates, searched, enrolled = [], [], [], []
    for i, p in enumerate(people):
        pin = f"{rng.integers(space):0{digits}d}"
        subject = f"pin-{i}"
        try:
            target.enroll(subject, p[:sc.enrol_samples], pin)
            enrolled.append(True)
        except Refused:
            target.enroll(subject, p[:sc.enrol_samples], setting.token(rng))    # a token it accepts
            enrolled.append(False)
        similarity = _guesser(target, db.active_row(target.db_path, subject, "verify"), p[2 * sc.enrol_samples])
        others = [f"{g:0{digits}d}" for g in rng.permutation(space)]
        guesses = ([pin] + [g for g in others if g != pin])[:min(space, sc.max_offline_guesses)]
        start, scores = time.perf_counter(), []
        for g in guesses:
            scores.append(similarity(g))
            if time.perf_counter() - start > sc.offline_seconds:
                break
        rates.append(len(scores) / (time.perf_counter() - start))
        searched.append(len(scores) / space)
        found.append(enrolled[-1] and int(np.argmax(scores)) == 0)
    rate = float(np.median(rates))
    target.close()
    return {"guesses_per_s": rate, "pin_digits": digits, "pins_enrolled": float(np.mean(enrolled)),
            "pin_found": float(np.mean(found)), "space_searched": float(np.mean(searched)),
            "hours_for_10^4": 1e4 / rate / 3600, "hours_for_10^6": 1e6 / rate / 3600,
            "years_for_2^32": 2 ** 32 / rate / 3600 / 24 / 365.25,
            "policy_refuses": policy_refusals(setting)}


def online(setting: Setting, false_rate: float = 0.01) -> dict:
    """Token confirmation with unrelated faces, no database (a test whose false confirmation
    rate is ``false_rate``)."""
    from scipy.stats import chi2

    sc, hasher = setting.scale, setting.hasher
    n = sc.n_token_victims if setting.kind == "before" else sc.n_token_victims_after
    target = setting.target("token-online")
    labels, people = setting.people(n, "tokens/online")
    subjects, tokens = setting.enrol(target, people, "victim-", "tokens/online")
    faces = setting.unrelated(labels, sc.n_unrelated, "tokens/unrelated")
    # a wrong token makes every group agree with probability 1/q, independently: the scores
    # are Binomial(m, 1/q)/m; the right token adds the faces' own spread (dispersion test)
    p, m = 1.0 / hasher.q, hasher.m
    cut = float(chi2.ppf(1 - false_rate, sc.n_unrelated) / sc.n_unrelated)
    wrong_rng = setting.rng("tokens/wrong")
    stats, truth, refused = [], [], 0
    for i, (s, t) in enumerate(zip(subjects, tokens)):
        true_token = i % 2 == 0                        # half the victims tested with their token
        token = t if true_token else setting.token(wrong_rng)
        sims, acc = [], []
        for x in faces:
            o = target.verify(s, x, token, client=f"attacker-{i}")
            refused += o.refused is not None
            acc.append(o.accepted)
            if o.similarity is not None:
                sims.append(o.similarity)
        # exact scores: their dispersion about 1/q against the cut; decisions only: any acceptance
        stats.append(np.mean((np.asarray(sims) - p) ** 2) / (p * (1 - p) / m) > cut if sims else any(acc))
        truth.append(true_token)
    stats, truth = np.asarray(stats), np.asarray(truth)
    locked = [target.verify(s, p[2 * sc.enrol_samples], t).refused == "rate-limited"
              for s, t, p in zip(subjects, tokens, people)]
    target.close()
    return {"victims": n, "faces_per_victim": sc.n_unrelated, "dispersion_cut": cut,
            "confirmed": float(stats[truth].mean()), "false_confirmed": float(stats[~truth].mean()),
            "calls_refused": refused / (n * sc.n_unrelated), "genuine_locked_out": float(np.mean(locked))}


def run(setting: Setting) -> dict:
    return {"offline": offline(setting), "online": online(setting)}
