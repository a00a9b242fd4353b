"""P×K batches for metric learning: ``classes_per_batch`` classes × ``samples_per_class`` samples."""

from __future__ import annotations

import numpy as np

from arcface.errors import ConfigError


class PKSampler:
    """Seeded P×K batch indices over integer labels.

    Each batch draws P distinct classes (among those with at least two samples, so every
    anchor has a positive) and K samples of each, without replacement when the class has
    at least K samples, with replacement otherwise. Batch ``i`` depends only on
    ``(seed, i)``, so a resumed run sees the batches an uninterrupted one would.
    """

    def __init__(self, labels, classes_per_batch: int, samples_per_class: int, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ConfigError("PKSampler: labels must be a non-empty 1-D array")
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._members = {c: order[s:s + n] for c, s, n in zip(range(len(classes)), starts, counts)}
        self._usable = np.array([c for c, n in enumerate(counts) if n >= 2])
        if classes_per_batch < 2 or samples_per_class < 2:
            raise ConfigError("classes_per_batch and samples_per_class must both be at least 2 "
                              f"(got {classes_per_batch} and {samples_per_class})")
        if len(self._usable) < classes_per_batch:
            raise ConfigError(f"classes_per_batch={classes_per_batch} but only {len(self._usable)} "
                              "classes have two or more samples")
        self.P, self.K, self.seed = int(classes_per_batch), int(samples_per_class), int(seed)

    @property
    def batch_size(self) -> int:
        return self.P * self.K

    def batch(self, index: int) -> np.ndarray:
        """Sample indices of batch ``index`` (length P·K, grouped by class)."""
        rng = np.random.default_rng([self.seed, int(index)])
        chosen = rng.choice(self._usable, self.P, replace=False)
        out = []
        for c in chosen:
            members = self._members[c]
            out.append(rng.choice(members, self.K, replace=len(members) < self.K))
        return np.concatenate(out)
