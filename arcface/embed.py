"""Embeddings from a backbone: batching, optional flip test, L2 normalisation."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from arcface.data.loader import decode_batch, default_workers


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


_PREDICT_LOCK = threading.Lock()


def inference_function(model):
    """``f(x: np.ndarray)`` -> the model's inference output (``training=False``) as NumPy (a dict
    of arrays for a dict-output model). Under TensorFlow a ``tf.function`` that retraces for few
    shapes (no ``predict_on_batch`` overhead a call: a few ms for one small batch); on other
    backends ``predict_on_batch``, which they compile themselves."""
    import keras

    if keras.backend.backend() == "tensorflow" and isinstance(model, keras.Layer):
        import tensorflow as tf

        call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: tf.nest.map_structure(lambda t: t.numpy(), call(tf.convert_to_tensor(x)))

    def predict(x):
        # Keras' predict_on_batch writes the model's state back after each call (JAX: donated
        # buffers), so concurrent calls from threads must not overlap
        with _PREDICT_LOCK:
            return model.predict_on_batch(x)

    return predict


class Embedder:
    """Turns RGB images (uint8 arrays, encoded bytes or paths) into L2-normalised embeddings.

    A batch of ``n`` images is padded to the next power of two (at most ``batch_size``), so a
    few compiled shapes are reused and one photo costs one forward pass, not ``batch_size``.
    The forward pass is the model's inference call (``training=False``): under TensorFlow a
    ``tf.function`` kept by the embedder (no ``predict_on_batch`` overhead a call), else
    ``predict_on_batch`` (compiled by the backend).
    With ``flip=True`` the embedding is that of the image plus that of its mirror
    (InsightFace's flip test), normalised afterwards. With ``mirror=True`` every image is
    mirrored first (embeddings of the mirror images, e.g. as extra training samples).
    """

    def __init__(self, backbone, batch_size: int = 64, input_size: int = 112, flip: bool = False,
                 center_crop: bool = False, workers: int = 0, mirror: bool = False):
        self.backbone = backbone
        self.batch_size = int(batch_size)
        self.input_size = int(input_size)
        self.flip = flip
        self.center_crop = center_crop
        self.mirror = mirror
        self.workers = workers or default_workers()
        self._predict = None

    def padded_size(self, n: int) -> int:
        """Rows a batch of ``n`` images is padded to: the next power of two, capped at ``batch_size``."""
        return min(self.batch_size, 1 << max(0, int(n) - 1).bit_length())

    def _predict_fn(self):
        """The backbone's inference function, built once per backbone."""
        backbone = self.backbone
        if self._predict is None or self._predict[0] is not backbone:
            self._predict = (backbone, inference_function(backbone))
        return self._predict[1]

    def _forward(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        size = self.padded_size(n)
        if n < size:
            pad = np.zeros((size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        out = self._predict_fn()(np.ascontiguousarray(images))
        return np.asarray(out, np.float32)[:n]

    def embed_arrays(self, images: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Embeddings of an ``(n, S, S, 3)`` RGB array (uint8 or float 0..255)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (n, H, W, 3), got {images.shape}")
        if self.mirror:
            images = images[:, :, ::-1]
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            emb = self._forward(batch)
            if self.flip:
                emb = emb + self._forward(batch[:, :, ::-1])
            chunks.append(emb)
        out = np.concatenate(chunks) if chunks else np.zeros((0, self.backbone.output_shape[-1]), np.float32)
        return l2_normalize(out) if normalize else out

    def embed_items(self, items: Sequence[bytes | str | os.PathLike], normalize: bool = True,
                    progress: bool = False, desc: str = "embedding") -> np.ndarray:
        """Embeddings of encoded images or image paths, decoded by a thread pool."""
        items = list(items)
        starts = range(0, len(items), self.batch_size)
        chunks = []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(items), desc=desc, unit="img")
        with ThreadPoolExecutor(self.workers) as pool:
            def decode(start):
                sub = items[start:start + self.batch_size]
                return decode_batch(sub, self.input_size, self.center_crop)

            # decode a few batches ahead of the network, keeping memory bounded
            futures = [pool.submit(decode, s) for s in list(starts)[:self.workers + 1]]
            next_idx = len(futures)
            for k in range(len(starts)):
                images = futures[k].result()
                futures[k] = None
                if next_idx < len(starts):
                    futures.append(pool.submit(decode, starts[next_idx]))
                    next_idx += 1
                chunks.append(self.embed_arrays(images, normalize=False))
                if bar is not None:
                    bar.update(len(images))
        if bar is not None:
            bar.close()
        dim = self.backbone.output_shape[-1]
        out = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        return l2_normalize(out) if normalize else out
