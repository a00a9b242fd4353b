"""The hashers under attack, behind the interface the template service uses, and what an
attacker can differentiate through them.

Both expose ``m, q, dim, spec`` and ``encode(x, key)`` (what the service calls):

* deep IoM (:class:`~iom.hashing.hasher.DeepIoMHasher`, ``key_mode='code'``): the network is
  public; a key relabels its un-keyed code (:class:`~iom.hashing.keying.CodeKeying`), so the
  un-keyed code of any embedding is public too;
* random IoM (:class:`RandomIoMHasher`, an adapter of :class:`~iom.hashing.random_iom.RandomIoM`):
  the key draws the projection itself; without the key nothing about a code is computable.

:func:`inversion_problem` turns a protected code and its key into a differentiable
``logits(x) -> (n, m, q)`` and the symbols to reach in each group (what the ISO/IEC 30136
full-disclosure attacker inverts).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from iom.hashing.random_iom import RandomIoM
from iom.keys import TemplateKey

#: the public key random IoM is calibrated under (the role a model's training key plays)
RANDOM_IOM_PUBLIC_KEY = TemplateKey.from_seed("iomface-random-iom")


class RandomIoMHasher:
    """Random IoM with the hasher interface of the template service: the key acts on the
    projection (``encode(x, None)`` uses :data:`RANDOM_IOM_PUBLIC_KEY`)."""

    key_mode = "projection"

    def __init__(self, m: int, q: int, dim: int, model_id: str | None = None):
        self.iom = RandomIoM(m, q, dim)
        self.m, self.q, self.dim = self.iom.m, self.iom.q, self.iom.dim
        self.spec = {"model_id": model_id or f"random_iom_{m}x{q}", "m": m, "q": q, "dim": dim,
                     "key_mode": self.key_mode}

    def encode(self, embeddings: np.ndarray, key: TemplateKey | None) -> np.ndarray:
        return self.iom.encode(embeddings, RANDOM_IOM_PUBLIC_KEY if key is None else key)


def load_deep(name: str):
    """The shipped deep IoM hasher ``models/<name>``."""
    from arcface.pretrained import MODELS_DIR
    from iom.hashing.hasher import DeepIoMHasher

    return DeepIoMHasher.load(os.path.join(MODELS_DIR, name))


def has_public_code(hasher) -> bool:
    """Whether the un-keyed code of an embedding is computable without any key (deep IoM
    with code keying: the network is public)."""
    return getattr(hasher, "key_mode", None) == "code"


def public_codes(hasher, x: np.ndarray) -> np.ndarray:
    """Un-keyed codes (n, m) of embeddings: what anyone can compute with the public model."""
    if not has_public_code(hasher):
        raise ValueError(f"{hasher.spec.get('model_id')}: codes depend on the key (no public code)")
    return hasher.codes(x)


def inversion_problem(hasher, codes: np.ndarray, keys) -> tuple[Callable, np.ndarray]:
    """``(logits, target)``: a differentiable ``logits(x) -> (n, m, q)`` and the symbols
    (n, m) whose argmax reproduces ``codes[i]`` = ``hasher.encode(x_i, keys[i])`` (``keys``: one
    key per row, or one key or ``None`` for all).

    Deep IoM: the network's projections (backend ops) and the un-keyed codes
    (``CodeKeying(key).invert``). Random IoM: each key's projection ``x_i @ W_i``
    (:class:`~iom.attacks.inversion.LinearLogits`) and the codes themselves."""
    from keras import ops

    from iom.attacks.inversion import LinearLogits

    codes = np.atleast_2d(codes)
    keys = list(keys) if isinstance(keys, (list, tuple)) else [keys] * len(codes)
    m, q = hasher.m, hasher.q
    if has_public_code(hasher):
        network = hasher.network
        target = np.stack([c if k is None else hasher.keying(k).invert(c[None])[0] for c, k in zip(codes, keys)])

        def logits(x):
            return ops.reshape(network(x, training=False)["logits"], (-1, m, q))
        return logits, target
    if isinstance(hasher, RandomIoMHasher):
        keys = [RANDOM_IOM_PUBLIC_KEY if k is None else k for k in keys]
        w = hasher.iom.projection(keys[0]) if len(set(keys)) == 1 else \
            np.stack([hasher.iom.projection(k) for k in keys])
        return LinearLogits(w, m, q), codes
    raise ValueError(f"no inversion for hasher {type(hasher).__name__} "
                     f"(key_mode {getattr(hasher, 'key_mode', None)!r})")


def calibrate(hasher, embeddings: np.ndarray, labels: np.ndarray, far: float = 1e-3,
              n_impostor: int = 200_000, seed: int = 0, name: str = "attack faces") -> dict:
    """A calibration (1:1 threshold at ``far`` over every genuine pair and ``n_impostor``
    random impostor pairs; impostor histogram over every cross-identity pair) of ``hasher`` on
    labelled embeddings, by :func:`iom.evaluation.report.calibration` — for hashers that ship
    none (random IoM)."""
    from iom.evaluation.report import PairData, calibration

    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    gl, gr = np.nonzero(np.triu(same, k=1))
    rng = np.random.default_rng(seed)
    il, ir = rng.integers(0, len(labels), (2, 2 * n_impostor))
    keep = np.flatnonzero(labels[il] != labels[ir])[:n_impostor]
    left, right = np.concatenate([gl, il[keep]]), np.concatenate([gr, ir[keep]])
    extra = {"identities": labels} if "identities" in PairData.__dataclass_fields__ else {}
    data = PairData(name, np.asarray(embeddings, np.float32), left, right, labels[left] == labels[right],
                    None, **extra)
    return calibration(data, hasher, far)


def build_hasher(name: str, dim: int):
    """A hasher by name: a shipped deep IoM hasher (``models/<name>``) or ``random:MxQ``
    (random IoM at that size on ``dim``-d embeddings)."""
    if name.startswith("random:"):
        m, q = (int(v) for v in name.split(":", 1)[1].lower().split("x"))
        return RandomIoMHasher(m, q, dim)
    return load_deep(name)


def hasher_under_test(name: str, faces) -> tuple[object, dict]:
    """``(hasher, calibration)``: a shipped deep hasher with its ``calibration.json``, or
    random IoM (``random:MxQ``) calibrated on ``faces`` by :func:`calibrate`."""
    import json

    from arcface.pretrained import MODELS_DIR

    hasher = build_hasher(name, faces.dim)
    if isinstance(hasher, RandomIoMHasher):
        return hasher, calibrate(hasher, faces.embeddings, faces.labels)
    with open(os.path.join(MODELS_DIR, name, "calibration.json")) as f:
        return hasher, json.load(f)
