"""What one run of an attack is given: the target kind, hasher, faces, seed and sizes."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from iom.attacks.faces import Faces


@dataclass(frozen=True)
class Scale:
    """Sizes of the attacks (defaults: the issue's)."""

    n_subjects: int = 100                # enrolled gallery (oracle, relabelling, linkage)
    oracle_calls: tuple[int, ...] = (200, 800, 4000)
    n_masquerade: int = 30               # victims impersonated (oracle, full key)
    n_dictionary: int = 1000             # public faces presented at identify (oracle)
    n_chosen: int = 60                   # embeddings the attacker self-enrols (relabelling)
    n_token_victims: int = 150           # online token confirmation, before
    n_token_victims_after: int = 40      # ... after (lockout makes more pointless; scrypt per call)
    n_unrelated: int = 20                # unrelated faces per victim (online token confirmation)
    n_forgery_trials: int = 3
    n_pin_victims: int = 2               # offline PIN search (10^digits space)
    pin_digits: int = 4
    max_offline_guesses: int = 10_000    # per victim (more: extrapolated from the measured rate)
    offline_seconds: float = 4.0         # per victim at most (a slow KDF: its rate is the result)
    tokens_per_class: int = 10           # policy refusal
    inversion_steps: int = 150
    enrol_samples: int = 3               # photos fused at enrolment (and at reissue)
    n_walk_victims: int = 3              # boundary walk with device codes
    walk_max_queries: int = 5000

    def quick(self) -> "Scale":
        """About a fifth of the work (sizes where rates are still meaningful)."""
        return replace(self, n_subjects=40, oracle_calls=(200, 800, 2000), n_masquerade=15, n_dictionary=300,
                       n_token_victims=60, n_token_victims_after=20, n_forgery_trials=2,
                       n_pin_victims=1, max_offline_guesses=2000, offline_seconds=2.0, tokens_per_class=5,
                       inversion_steps=100)


@dataclass
class Setting:
    """One (target kind, hasher, seed): makes fresh targets and draws people and tokens."""

    kind: str                     # "before" | "after"
    hasher: object
    calibration: dict
    faces: Faces
    seed: int
    scale: Scale
    workdir: Path
    target_options: dict = field(default_factory=dict)
    _counter: itertools.count = field(default_factory=itertools.count, repr=False)

    @property
    def secret(self) -> bytes:
        return hashlib.sha256(f"iomface attack-eval application secret {self.seed}".encode()).digest()

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator of its own for each purpose (independent of call order)."""
        tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "big")
        return np.random.default_rng([self.seed, tag])

    def target(self, name: str, **options):
        """A fresh target on a new database file."""
        from iom.attacks.targets import make_target

        path = Path(self.workdir) / f"{self.kind}-s{self.seed}-{name}-{next(self._counter)}.db"
        for suffix in ("", "-wal", "-shm", ".witness", ".backup"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return make_target(self.kind, self.hasher, self.calibration, self.secret, path,
                           **{**self.target_options, **options})

    def people(self, n: int, purpose: str, min_samples: int | None = None,
               exclude=()) -> tuple[list, list[np.ndarray]]:
        """``(labels, samples)`` of ``n`` distinct identities not in ``exclude`` (each one's
        samples shuffled; at least ``min_samples``, default twice the enrolment samples + 1)."""
        need = min_samples or 2 * self.scale.enrol_samples + 1
        ids = np.setdiff1d(self.faces.identities(need), np.asarray(list(exclude), dtype=self.faces.labels.dtype))
        if n > len(ids):
            raise ValueError(f"{self.faces.source}: {n} identities with {need}+ samples needed, "
                             f"{len(ids)} available")
        rng = self.rng(purpose)
        labels = list(rng.choice(ids, n, replace=False))
        return labels, [rng.permutation(self.faces.of(i)) for i in labels]

    def unrelated(self, exclude, n: int, purpose: str) -> np.ndarray:
        """``n`` face samples of identities not in ``exclude`` (labels)."""
        pool = self.faces.embeddings[~np.isin(self.faces.labels, list(exclude))]
        return pool[self.rng(purpose).choice(len(pool), n, replace=len(pool) < n)]

    @staticmethod
    def token(rng: np.random.Generator) -> str:
        """A strong random token (64 bits: any policy accepts it)."""
        return "".join(rng.choice(list("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"), 12))

    def enrol(self, target, people: list[np.ndarray], prefix: str, purpose: str) -> tuple[list[str], list[str]]:
        """Enrol people (first ``enrol_samples`` samples each) with strong tokens: (subjects, tokens)."""
        rng = self.rng(f"tokens/{purpose}")
        subjects = [f"{prefix}{i:03d}" for i in range(len(people))]
        tokens = [self.token(rng) for _ in people]
        for s, t, p in zip(subjects, tokens, people):
            target.enroll(s, p[:self.scale.enrol_samples], t)
        return subjects, tokens
