"""Key scenarios of a protected-template system on a pair protocol (ISO/IEC 24745 style).

Every scenario assigns a key to each side of each pair from a pool of keys, encodes each
image under the keys it needs, and scores the pairs by normalised Hamming similarity:

* ``training`` — everyone under the model's own key (deep IoM: the un-keyed code);
* ``stolen`` — everyone under one fresh key (an attacker holds the victim's key);
* ``fresh`` — one fresh key per subject: genuine pairs share a key, impostors do not;
* ``cross`` — every pair compared across two different keys: the mated (genuine) and
  non-mated (impostor) scores of renewability and unlinkability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from iom.evaluation.matching import hamming_similarity
from iom.evaluation.unlinkability import UnlinkabilityReport, decidability, unlinkability
from iom.keys import TemplateKey

SCENARIOS = ("training", "stolen", "fresh", "cross")


class Hasher(Protocol):
    """Anything that turns embeddings into codes under a key (deep IoM, random IoM)."""

    m: int
    q: int

    def encode(self, embeddings: np.ndarray, key: TemplateKey | None) -> np.ndarray: ...


def assign_keys(scenario: str, issame: np.ndarray, pool_size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Key-pool indices ``(left, right)`` of each pair under ``scenario`` (index -1 is the
    training key)."""
    n = len(issame)
    if scenario == "training":
        return np.full(n, -1), np.full(n, -1)
    if scenario == "stolen":
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    if pool_size < 2:
        raise ValueError("the fresh and cross scenarios need a pool of at least two keys")
    left = rng.integers(0, pool_size, n)
    other = (left + rng.integers(1, pool_size, n)) % pool_size  # any key but left's
    if scenario == "fresh":
        return left, np.where(issame, left, other)
    if scenario == "cross":
        return left, other
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")


def keyed_pair_scores(hasher: Hasher, embeddings: np.ndarray, left: np.ndarray, right: np.ndarray,
                      keys: list, left_key: np.ndarray, right_key: np.ndarray,
                      training_key: TemplateKey | None = None) -> np.ndarray:
    """Hamming similarity of pairs ``(left[i], right[i])`` of embedding indices, the left
    image encoded under ``keys[left_key[i]]`` and the right under ``keys[right_key[i]]``
    (index -1: ``training_key``)."""
    codes_l = np.zeros((len(left), hasher.m), np.int64)
    codes_r = np.zeros_like(codes_l)
    for k in np.union1d(left_key, right_key):
        key = training_key if k < 0 else keys[k]
        rows_l, rows_r = np.flatnonzero(left_key == k), np.flatnonzero(right_key == k)
        images = np.union1d(left[rows_l], right[rows_r])
        codes = hasher.encode(embeddings[images], key)
        where = {img: i for i, img in enumerate(images)}
        codes_l[rows_l] = codes[[where[i] for i in left[rows_l]]]
        codes_r[rows_r] = codes[[where[i] for i in right[rows_r]]]
    return hamming_similarity(codes_l, codes_r)


@dataclass
class ScenarioScores:
    """Pair scores of one scenario, one array per key draw."""

    scenario: str
    draws: list[np.ndarray] = field(default_factory=list)


def run_scenarios(hasher: Hasher, embeddings: np.ndarray, left: np.ndarray, right: np.ndarray,
                  issame: np.ndarray, n_draws: int = 5, pool_size: int = 64, seed: int = 0,
                  training_key: TemplateKey | None = None,
                  scenarios=SCENARIOS) -> dict[str, ScenarioScores]:
    """Pair scores under each key scenario; ``n_draws`` independent key pools (the
    training scenario is deterministic and drawn once)."""
    rng = np.random.default_rng(seed)
    issame = np.asarray(issame, bool)
    out = {}
    for scenario in scenarios:
        result = ScenarioScores(scenario)
        for _ in range(1 if scenario == "training" else n_draws):
            keys = [TemplateKey.random(rng) for _ in range(pool_size)]
            kl, kr = assign_keys(scenario, issame, pool_size, rng)
            result.draws.append(keyed_pair_scores(hasher, embeddings, left, right, keys, kl, kr,
                                                  training_key))
        out[scenario] = result
    return out


@dataclass
class CancelabilityReport:
    """Renewability and unlinkability figures from the cross-key scores."""

    mated_cross_mean: float         # same subject, two keys
    nonmated_cross_mean: float      # two subjects, two keys
    impostor_mean: float            # two subjects, one key (the training key)
    genuine_mean: float             # same subject, one key (the training key)
    chance: float                   # 1/q: the agreement of unrelated codes
    d_prime_mated_vs_impostor: float
    d_prime_mated_vs_genuine: float
    unlinkability: UnlinkabilityReport

    def to_dict(self) -> dict:
        out = {k: float(v) for k, v in self.__dict__.items() if k != "unlinkability"}
        out["d_sys"] = float(self.unlinkability.d_sys)
        out["unlinkability"] = self.unlinkability.to_dict()
        return out


def cancelability_report(scores: dict[str, ScenarioScores], issame: np.ndarray, q: int) -> CancelabilityReport:
    """Renewability (means, d′) and unlinkability (D↔sys) from :func:`run_scenarios`."""
    issame = np.asarray(issame, bool)
    cross = np.concatenate(scores["cross"].draws)
    same_flags = np.tile(issame, len(scores["cross"].draws))
    mated, nonmated = cross[same_flags], cross[~same_flags]
    train = scores["training"].draws[0]
    genuine, impostor = train[issame], train[~issame]
    return CancelabilityReport(
        mated_cross_mean=float(mated.mean()), nonmated_cross_mean=float(nonmated.mean()),
        impostor_mean=float(impostor.mean()), genuine_mean=float(genuine.mean()), chance=1.0 / q,
        d_prime_mated_vs_impostor=decidability(mated, impostor),
        d_prime_mated_vs_genuine=decidability(mated, genuine),
        unlinkability=unlinkability(mated, nonmated))
