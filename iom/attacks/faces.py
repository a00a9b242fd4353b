"""Face embeddings the attacks run on: real photos by the stage-1 model, or synthetic people.

Real faces are embedded by the hasher's stage-1 model through the stage-2 feature cache
(:class:`iom.features.FeatureExtractor`, cached under ``outputs/embeddings``), so a fresh
machine computes them once from an identity folder (one sub-folder per person).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arcface.embed import l2_normalize


@dataclass(frozen=True)
class Faces:
    """Unit embeddings (n, d) with identity labels (n,)."""

    embeddings: np.ndarray
    labels: np.ndarray
    source: str

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def identities(self, min_samples: int = 1) -> np.ndarray:
        """Labels with at least ``min_samples`` embeddings, sorted."""
        values, counts = np.unique(self.labels, return_counts=True)
        return values[counts >= min_samples]

    def of(self, label) -> np.ndarray:
        """The embeddings of one identity, in file order."""
        return self.embeddings[self.labels == label]


def real_faces(dataset: str, stage1_model: str, cache_dir: str = "outputs/embeddings") -> Faces:
    """Embeddings of an identity folder by ``stage1_model`` (cached; computed if absent)."""
    from arcface.config import validate_config
    from iom.config import STAGE2_FIELDS, finalize_stage2
    from iom.features import FeatureExtractor

    cfg = finalize_stage2(validate_config(
        {"sub_name": "attack_eval", "stage1_model": stage1_model, "m": 1, "q": 2, "cache_dir": cache_dir},
        STAGE2_FIELDS, source="attack_eval"))
    data = FeatureExtractor(cfg).embed_folder(dataset, progress=False)
    if data.labels is None:
        raise ValueError(f"{dataset}: needs one sub-folder per identity")
    return Faces(l2_normalize(data.embeddings), np.asarray(data.labels), dataset)


def synthetic_faces(n: int, per: int, dim: int, seed: int = 0, noise: float = 0.35,
                    shared: float = 1.0) -> Faces:
    """``n`` clustered synthetic people of ``per`` samples each (same person = close).

    ``shared`` adds a common direction to every centre, as real face embeddings share one
    (unrelated faces agree above chance in their codes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, dim)) + shared * rng.normal(size=dim)
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n * per, dim)) * np.sqrt(np.mean(centres ** 2))
    return Faces(l2_normalize(x), np.repeat(np.arange(n), per), f"synthetic({n}x{per}, seed {seed})")


def fused(x: np.ndarray) -> np.ndarray:
    """The normalised mean of samples (the service's feature-level fusion)."""
    return l2_normalize(np.asarray(x, np.float32).mean(axis=0))


def random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` isotropic random unit vectors (float32)."""
    return l2_normalize(rng.normal(size=(n, dim)))
