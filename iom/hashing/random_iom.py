"""Random IoM (Jin et al., IEEE TIFS 2018): data-agnostic Gaussian random-projection IoM.

For a key k, m Gaussian matrices W_k,i of shape (q, d) are drawn from the key; the code of an
embedding x is c_i = argmax_j (W_k,i x)_j. A new key draws new projections, hence a new,
unlinkable code. This is the baseline deep IoM is measured against at equal (m, q).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from iom.hashing.keying import code_dtype
from iom.keys import TemplateKey


class RandomIoM:
    """Gaussian random-projection IoM hashing with key-derived projections."""

    PURPOSE = "random-iom-projection"
    CACHE_SIZE = 16          # projections of the most recently used keys kept in memory

    def __init__(self, m: int, q: int, dim: int):
        if m < 1 or q < 2 or dim < 1:
            raise ValueError(f"random IoM needs m >= 1, q >= 2, dim >= 1 (got m={m}, q={q}, dim={dim})")
        self.m, self.q, self.dim = int(m), int(q), int(dim)
        self._cache: OrderedDict[TemplateKey, np.ndarray] = OrderedDict()   # least recently used first

    def projection(self, key: TemplateKey) -> np.ndarray:
        """The (dim, m*q) float32 projection of ``key`` (the last :attr:`CACHE_SIZE` are cached)."""
        w = self._cache.get(key)
        if w is None:
            stream = key.stream(f"{self.PURPOSE}/d={self.dim}/m={self.m}/q={self.q}")
            w = stream.normal((self.dim, self.m * self.q)).astype(np.float32)
            self._cache[key] = w
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return w

    def encode(self, embeddings: np.ndarray, key: TemplateKey) -> np.ndarray:
        """Codes (n, m) of float embeddings (n, dim) under one key."""
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {x.shape}")
        scores = (x @ self.projection(key)).reshape(len(x), self.m, self.q)
        return scores.argmax(axis=2).astype(code_dtype(self.q))
