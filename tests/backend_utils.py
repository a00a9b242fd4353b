"""Backend-specific helpers for tests (gradients), so the assertions stay backend-agnostic."""

import keras
import numpy as np


def value_and_grad(fn, x: np.ndarray):
    """Value of scalar ``fn(x)`` and its gradient with respect to ``x`` as NumPy arrays."""
    backend = keras.backend.backend()
    x = np.asarray(x, dtype=np.float32)
    if backend == "tensorflow":
        import tensorflow as tf

        xv = tf.Variable(x)
        with tf.GradientTape() as tape:
            y = fn(xv)
        return float(y), np.asarray(tape.gradient(y, xv))
    if backend == "jax":
        import jax

        y, g = jax.value_and_grad(fn)(x)
        return float(y), np.asarray(g)
    raise RuntimeError(f"unsupported backend {backend}")
