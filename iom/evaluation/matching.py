"""Comparing IoM codes: normalised Hamming similarity."""

from __future__ import annotations

import numpy as np


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 − (groups that differ)/m for matching rows of ``a`` and ``b`` (n, m) → (n,)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"codes must be two arrays of the same (n, m) shape, got {a.shape} and {b.shape}")
    return 1.0 - np.count_nonzero(a != b, axis=1) / a.shape[1]


def one_hot_codes(codes: np.ndarray, q: int) -> np.ndarray:
    """(n, m) codes as (n, m*q) float32 indicators, so code agreement is a dot product."""
    codes = np.asarray(codes, np.intp)
    if codes.size and (codes.min() < 0 or codes.max() >= q):
        raise ValueError(f"code symbols must lie in [0, {q})")
    n, m = codes.shape
    out = np.zeros((n, m * q), np.float32)
    out[np.arange(n)[:, None], np.arange(m) * q + codes] = 1.0
    return out


def hamming_similarity_matrix(probes: np.ndarray, gallery: np.ndarray, q: int | None = None,
                              chunk: int = 1024) -> np.ndarray:
    """All-against-all normalised Hamming similarity, (n_probes, n_gallery) float32.

    Computed as one-hot dot products (BLAS), ``chunk`` probes at a time.
    """
    probes, gallery = np.asarray(probes), np.asarray(gallery)
    if probes.ndim != 2 or gallery.ndim != 2 or probes.shape[1] != gallery.shape[1]:
        raise ValueError(f"codes must be (n, m) arrays of equal m, got {probes.shape} and {gallery.shape}")
    m = probes.shape[1]
    if q is None:
        q = int(max(probes.max(initial=0), gallery.max(initial=0))) + 1
    gallery_1h = one_hot_codes(gallery, q)
    out = np.empty((len(probes), len(gallery)), np.float32)
    for start in range(0, len(probes), chunk):
        out[start:start + chunk] = one_hot_codes(probes[start:start + chunk], q) @ gallery_1h.T
    out /= m
    return out
