"""What the template service takes in and gives back: the sample a request brings to be
hashed (:class:`_Sample`), a verification's :class:`Decision` and an identification's
:class:`Candidate` (importable from :mod:`iom.service.service` too)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class _Sample:
    """What a request brings to be hashed: a fused embedding, or a device's un-keyed code
    (which a key relabels as the hasher would: key_mode 'code')."""

    def __init__(self, hasher, embedding: np.ndarray | None = None, code: np.ndarray | None = None):
        self.hasher, self.embedding, self.code = hasher, embedding, code

    def encode(self, key) -> np.ndarray:
        """The sample's code (1, m) under ``key`` (``None``: un-keyed)."""
        if self.code is None:
            return self.hasher.encode(self.embedding, key)
        return self.code if key is None else self.hasher.keying(key).apply(self.code)


@dataclass(frozen=True)
class Decision:
    """A verification result; ``similarity`` and ``threshold`` only when the policy exposes scores."""

    accepted: bool
    similarity: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Candidate:
    """An identification candidate (best first, ``rank`` from 1); ``similarity`` only when
    the policy exposes scores."""

    subject_id: str
    rank: int
    accepted: bool
    similarity: float | None = None
