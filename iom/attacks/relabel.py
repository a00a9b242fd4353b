"""Attack 2: identification templates under one permanent key.

Code keying is a substitution cipher: a group permutation and one symbol table per group.
If every identification template is under the same key, a user who self-enrols a few dozen
chosen embeddings (whose un-keyed codes he computes with the public network) and reads the
database recovers the group order and the tables — the key's whole effect — by matching the
symbol partitions of his own rows, then un-keys every other subject's template.

The same permanent key links templates across reissue: after a database backup and a
reissue of everyone from new photos and tokens, the leaked identification templates still
match the new ones (rank-1 linkage); verification templates (per-token keys) do not.
"""

from __future__ import annotations

import numpy as np

from iom.attacks import db
from iom.attacks.faces import fused, random_unit
from iom.attacks.hashers import has_public_code, public_codes
from iom.attacks.setting import Setting
from iom.evaluation.matching import hamming_similarity_matrix, one_hot_codes


def recover_relabelling(plain: np.ndarray, keyed: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, tables)`` of a code keying from pairs of un-keyed / keyed codes (n, m):
    output group ``j`` comes from input group ``order[j]`` and symbol ``a`` becomes
    ``tables[j, a]`` (symbols never observed get the unused ones: exact when one is missing).

    Output group ``j`` is matched to the input group whose symbol partition of the ``n``
    samples is a bijective image of its own: the fewest co-occurring (keyed, plain) symbol
    pairs."""
    n, m = plain.shape
    counts = (one_hot_codes(keyed, q).T @ one_hot_codes(plain, q)).reshape(m, q, m, q)   # [j, b, g, a]
    pairs = (counts > 0).sum(axis=(1, 3))                                                # (j, g)
    order = pairs.argmin(axis=1)
    tables = np.full((m, q), -1, np.int64)
    for j, g in enumerate(order):
        b, a = np.nonzero(counts[j, :, g, :])
        tables[j, a] = b
        missing = tables[j] < 0                              # never seen: the unused symbols
        unused = np.concatenate([np.setdiff1d(np.arange(q), tables[j]), np.arange(q)])
        tables[j, missing] = unused[:missing.sum()]
    return order, tables


def unkey(keyed: np.ndarray, order: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Un-keyed codes of keyed codes under a recovered relabelling (where the recovered tables
    are not permutations, symbols no entry maps to are read as the unused ones)."""
    m, q = tables.shape
    inverse = np.full((m, q), -1, np.int64)
    inverse[np.arange(m)[:, None], tables] = np.arange(q)[None, :]
    for j in np.flatnonzero((inverse < 0).any(axis=1)):
        missing = inverse[j] < 0
        unused = np.concatenate([np.setdiff1d(np.arange(q), inverse[j]), np.arange(q)])
        inverse[j, missing] = unused[:missing.sum()]
    out = np.zeros(keyed.shape, np.int64)        # input groups no output group was matched to: guess 0
    out[:, order] = inverse[np.arange(m), keyed.astype(np.intp)]
    return out


def rank1_linkage(old: np.ndarray, new: np.ndarray, q: int, seed: int = 0) -> float:
    """Fraction of old codes whose most similar new code is the same subject's (row i);
    ties broken at random."""
    sim = hamming_similarity_matrix(old, new, q)
    sim += np.random.default_rng(seed).uniform(0, 1e-6, sim.shape)
    return float(np.mean(sim.argmax(axis=1) == np.arange(len(old))))


def run(setting: Setting) -> dict:
    sc, hasher = setting.scale, setting.hasher
    m, q = hasher.m, hasher.q
    target = setting.target("relabel")
    _, people = setting.people(sc.n_subjects, "relabel/victims")
    subjects, _ = setting.enrol(target, people, "victim-", "relabel")
    chosen = random_unit(setting.rng("relabel/chosen"), sc.n_chosen, hasher.dim)
    rng = setting.rng("relabel/mallory-tokens")
    for i, x in enumerate(chosen):
        target.enroll(f"mallory-{i:03d}", x[None], setting.token(rng))
    out = {"chance_symbols": 1.0 / q, "chance_linkage": 1.0 / len(subjects), "chosen": sc.n_chosen}

    def active(prefix, purpose="identify"):
        found = db.rows(target.db_path, "purpose = ? AND revoked_at IS NULL AND subject_id LIKE ?",
                        (purpose, prefix + "%"))
        return db.codes_of(sorted(found, key=lambda r: r["subject_id"]), m, q)

    if has_public_code(hasher):
        order, tables = recover_relabelling(public_codes(hasher, chosen), active("mallory-"), q)
        truth = public_codes(hasher, np.stack([fused(p[:sc.enrol_samples]) for p in people]))
        out["symbols_recovered"] = float(np.mean(unkey(active("victim-"), order, tables) == truth))
        app_key = getattr(getattr(target, "service", None), "app_key", None)
        if setting.kind == "before" and app_key is not None:      # one true key to compare with
            true = hasher.keying(app_key)
            out["table_entries_recovered"] = float(np.mean((order == true.group_order)[:, None]
                                                           & (tables == true.tables)))
    # reissue linkage: backup, reissue all from other photos and tokens, link old to new
    backup = {p: active("victim-", p) for p in ("identify", "verify")}
    rng = setting.rng("relabel/reissue-tokens")
    e = sc.enrol_samples
    for s, p in zip(subjects, people):
        target.reissue(s, p[e:2 * e], setting.token(rng))
    for purpose, old in backup.items():
        out[f"linkage_{purpose}"] = rank1_linkage(old, active("victim-", purpose), q)
    target.close()
    return out
