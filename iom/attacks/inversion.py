"""Inverting IoM codes: an embedding whose code is a given target, by gradient ascent.

The objective is the sum over groups of ``log softmax(logits)[target symbol]``, maximised over
``x`` on the unit sphere (Riemannian gradient steps of fixed length, cosine-decayed). For a
linear projection (deep IoM without hidden layers, random IoM) the objective is concave in
``x``, so the ascent converges from any start. Gradients of a network come from the Keras
backend in use (TensorFlow ``GradientTape``, ``jax.grad`` or torch autograd), so the same code
runs on each; those of a known linear projection (:class:`LinearLogits`) are closed-form.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from arcface.embed import l2_normalize


def value_and_grad(fn: Callable, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Value of the scalar ``fn(x)`` (backend ops) and its gradient in ``x``, as NumPy."""
    import keras

    backend = keras.backend.backend()
    x = np.asarray(x, np.float32)
    if backend == "tensorflow":
        import tensorflow as tf

        xv = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xv)
            y = fn(xv)
        return float(y), tape.gradient(y, xv).numpy()
    if backend == "jax":
        import jax

        y, g = jax.value_and_grad(fn)(x)
        return float(y), np.array(g)
    if backend == "torch":
        import torch

        xv = torch.tensor(x, requires_grad=True)
        y = fn(xv)
        y.backward()
        return float(y.detach()), xv.grad.detach().cpu().numpy()
    raise RuntimeError(f"no gradient for the Keras backend {backend!r}")


class LinearLogits:
    """``x -> x @ W`` reshaped to (n, m, q), with one ``W`` (d, m*q) for every row or one per
    row (n, d, m*q): a projection whose gradient is closed-form, computed in NumPy (random
    IoM under a known key)."""

    def __init__(self, w: np.ndarray, m: int, q: int):
        self.w, self.m, self.q = np.asarray(w, np.float32), int(m), int(q)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.w if self.w.ndim == 2 else np.matmul(x[:, None, :], self.w)[:, 0]
        return z.reshape(len(x), self.m, self.q)

    def value_and_grad(self, onehot: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The log-likelihood of the one-hot targets and its gradient in ``x``."""
        z = self(x)
        z = z - z.max(axis=-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        dz = (onehot - np.exp(log_p)).reshape(len(x), -1)
        g = dz @ self.w.T if self.w.ndim == 2 else np.matmul(self.w, dz[:, :, None])[:, :, 0]
        return float(np.sum(log_p * onehot)), g


def target_log_likelihood(logits: Callable, target: np.ndarray, q: int) -> Callable:
    """``f(x)``: the sum over rows and groups of ``log softmax(logits(x))[target]``."""
    from keras import ops

    onehot = np.eye(q, dtype=np.float32)[np.asarray(target, np.intp)]

    def f(x):
        return ops.sum(ops.log_softmax(logits(x), axis=-1) * onehot)
    return f


def invert(logits: Callable, target: np.ndarray, q: int, dim: int, steps: int = 150,
           step_size: float = 0.1, x0: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Unit embeddings (n, dim) whose codes approach ``target`` (n, m): projected gradient
    ascent of :func:`target_log_likelihood` from ``x0`` (default: random unit vectors).
    ``logits``: a function of backend tensors (gradients by the backend) or :class:`LinearLogits`."""
    target = np.atleast_2d(target)
    x = l2_normalize(np.random.default_rng(seed).normal(size=(len(target), dim))) if x0 is None \
        else l2_normalize(np.array(x0, np.float32, ndmin=2))
    if isinstance(logits, LinearLogits):
        onehot = np.eye(q, dtype=np.float32)[np.asarray(target, np.intp)]

        def grad(x):
            return logits.value_and_grad(onehot, x)[1]
    else:
        f = target_log_likelihood(logits, target, q)

        def grad(x):
            return value_and_grad(f, x)[1]
    for step in range(steps):
        g = grad(x)
        g -= np.sum(g * x, axis=1, keepdims=True) * x              # tangent to the sphere
        size = step_size * 0.5 * (1.0 + np.cos(np.pi * step / steps))
        x = l2_normalize(x + size * g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12))
    return x
