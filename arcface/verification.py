"""Verification of an embedding network on pair sets (.bin files or pairs folders)."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from arcface.errors import DataFormatError


def _key(item) -> str | bytes:
    if isinstance(item, (bytes, bytearray)):
        return hashlib.blake2b(bytes(item), digest_size=16).digest()
    return os.fspath(item)


def unique_items(pairset) -> tuple[list, np.ndarray, np.ndarray]:
    """Deduplicate the images of a pair set: (unique items, left index, right index)."""
    index: dict = {}
    items: list = []

    def idx(item):
        k = _key(item)
        if k not in index:
            index[k] = len(items)
            items.append(item)
        return index[k]

    left = np.array([idx(x) for x in pairset.left], np.int64)
    right = np.array([idx(x) for x in pairset.right], np.int64)
    return items, left, right


def pair_scores(embedder, pairset, progress: bool = False) -> np.ndarray:
    """Cosine similarity of every pair of ``pairset`` (each image embedded once)."""
    items, left, right = unique_items(pairset)
    emb = embedder.embed_items(items, progress=progress, desc=f"embedding {pairset.name}")
    return np.sum(emb[left] * emb[right], axis=1)


def evaluate_pair_set(embedder, pairset, progress: bool = False):
    """The 10-fold verification report of ``embedder`` on ``pairset``."""
    from arcface.metrics import evaluate_scores

    scores = pair_scores(embedder, pairset, progress)
    return evaluate_scores(scores, np.asarray(pairset.issame, bool), folds=pairset.folds,
                           name=pairset.name, score_name="cosine")


def find_verification_sets(spec: str | Sequence[str] | None) -> list[str]:
    """Expand ``test_dataset``: .bin files, pairs folders, or a folder holding them."""
    if spec is None:
        return []
    paths = [spec] if isinstance(spec, str) else list(spec)
    found: list[str] = []
    for path in paths:
        if os.path.isfile(path) or os.path.isfile(os.path.join(path, "pairs.txt")):
            found.append(path)
        elif os.path.isdir(path):
            inner = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if n.endswith(".bin") or os.path.isfile(os.path.join(path, n, "pairs.txt")))
            if not inner:
                raise DataFormatError(f"{path}: no .bin files or pairs folders inside")
            found.extend(inner)
        else:
            raise DataFormatError(f"verification set not found: {path}")
    return found


def load_verification_sets(spec) -> list:
    """Load every pair set named by ``spec`` (see :func:`find_verification_sets`)."""
    from arcface.data.verification_sets import load_verification_set

    return [load_verification_set(p) for p in find_verification_sets(spec)]
