"""Keyed code relabelling: where a user key acts on a learned IoM code.

A learned projection cannot be re-keyed at its input (a new input permutation undoes what
was learned; see docs/RESULTS.md), so deep IoM applies the user key to its *output*: the m
groups are permuted and each group's q symbols are relabelled by key-derived permutations.
For two codes under the same key this is a bijection that preserves every per-group
equality, so Hamming similarity, and hence accuracy, is exactly that of the un-keyed code;
under two different keys each group matches with probability 1/q whatever the faces, so
templates of one person under two keys are unlinkable.
"""

from __future__ import annotations

import numpy as np

from iom.keys import TemplateKey


def code_dtype(q: int) -> np.dtype:
    """The smallest unsigned integer type holding symbols 0..q-1."""
    return np.dtype(np.uint8 if q <= 256 else np.uint16 if q <= 65536 else np.uint32)


class CodeKeying:
    """The group permutation and per-group symbol tables of one key at sizes (m, q)."""

    PURPOSE = "code-relabelling"

    def __init__(self, key: TemplateKey, m: int, q: int):
        stream = key.stream(f"{self.PURPOSE}/m={m}/q={q}")
        self.m, self.q = int(m), int(q)
        self.group_order = stream.permutation(self.m)            # output group j <- input group order[j]
        self.tables = stream.permutations(self.m, self.q).astype(code_dtype(q))  # (m, q)
        self._inverse = np.argsort(self.tables, axis=1).astype(code_dtype(q))

    def _check(self, codes) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.m:
            raise ValueError(f"expected codes of shape (n, {self.m}), got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.q):
            raise ValueError(f"code symbols must lie in [0, {self.q})")
        return codes

    def apply(self, codes: np.ndarray) -> np.ndarray:
        """Keyed codes of un-keyed ``codes`` (n, m)."""
        moved = self._check(codes)[:, self.group_order]
        return self.tables[np.arange(self.m), moved.astype(np.intp)]

    def invert(self, keyed: np.ndarray) -> np.ndarray:
        """Un-keyed codes back from keyed ones (needs the key: a stolen-key scenario)."""
        keyed = self._check(keyed)
        moved = self._inverse[np.arange(self.m), keyed.astype(np.intp)]
        out = np.empty_like(moved)
        out[:, self.group_order] = moved
        return out
