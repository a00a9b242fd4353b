"""The face model of the alignment study (a TFLite file, through the project's reference runner)
and the cache of its embeddings on disk."""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np


class TfliteEmbedder:
    """Raw (not normalised) embeddings from a TFLite face model, through the project's
    reference runner (:class:`arcface.tflite_import.TFLiteRunner`), with a progress bar."""

    def __init__(self, path: str, threads: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from arcface.tflite_import import TFLiteRunner

        self.runner = TFLiteRunner(path, threads)
        self.batch, self.input_shape, self.dim = self.runner.batch, self.runner.input_shape, self.runner.dim

    def __call__(self, images: np.ndarray, channels: str = "rgb", divisor: float = 128.0,
                 desc: str = "", progress: bool = True) -> np.ndarray:
        """``(n, 192)`` float32 embeddings of ``(n, 112, 112, 3)`` RGB uint8 crops, fed as
        ``(x - 127.5) / divisor`` in ``channels`` order."""
        from tqdm import tqdm

        n = len(images)
        out = np.empty((n, self.dim), np.float32)
        step = 64 * self.batch
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, n, step):
                chunk = images[start:start + step]
                if channels == "bgr":
                    chunk = chunk[..., ::-1]
                out[start:start + len(chunk)] = self.runner(chunk, 127.5, divisor)
                bar.update(len(chunk))
        return out


class KerasModelEmbedder:
    """Raw embeddings from a shipped stage-1 model (``models/NAME``, Keras, the backend of this
    process), with the TFLite embedder's call: ``divisor`` and ``channels`` say what the network is
    to see, ``(x - 127.5) / divisor`` in ``channels`` order, and the pixels are rescaled so that the
    model's own :class:`~arcface.backbones.common.PixelNormalization` produces it."""

    batch = 64

    def __init__(self, name: str):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from arcface import pretrained
        from arcface.backbones.common import PixelNormalization, iter_layers
        from arcface.models import load_pretrained

        cfg, self.model = load_pretrained(name)
        norm = next(la for la in iter_layers(self.model) if isinstance(la, PixelNormalization))
        self.mean, self.std = float(norm.mean), float(norm.std)
        self.divisor = self.std                                # the model's own convention
        self.input_shape, self.dim = (None, cfg["input_size"], cfg["input_size"], 3), cfg["embd_shape"]
        folder = os.path.dirname(pretrained.pretrained_files(name)[0])
        self.weights = os.path.join(folder, pretrained.WEIGHTS_FILE)

    def __call__(self, images: np.ndarray, channels: str = "rgb", divisor: float | None = None,
                 desc: str = "", progress: bool = True) -> np.ndarray:
        from tqdm import tqdm

        divisor = self.std if divisor is None else divisor
        out = np.empty((len(images), self.dim), np.float32)
        with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, len(images), self.batch):
                x = images[start:start + self.batch].astype(np.float32)
                if channels == "bgr":
                    x = x[..., ::-1]
                x = self.mean + (x - 127.5) * (self.std / divisor)
                out[start:start + len(x)] = np.asarray(self.model.predict_on_batch(x), np.float32)
                bar.update(len(x))
        return out


class Cache:
    """Embeddings on disk, one ``.npy`` per variant, keyed by model, variant and image list."""

    def __init__(self, folder: str, model_sha: str, enabled: bool = True):
        self.folder, self.model_sha, self.enabled = folder, model_sha, enabled
        self.timings: dict[str, dict] = {}
        if enabled:
            os.makedirs(folder, exist_ok=True)

    def get(self, name: str, names: list[str], compute) -> np.ndarray:
        key = hashlib.sha256("\n".join([self.model_sha, name, *names]).encode()).hexdigest()[:16]
        path = os.path.join(self.folder, f"{name}-{key}.npy")
        if self.enabled and os.path.exists(path):
            self.timings[name] = {"images": len(names), "cached": True}
            return np.load(path)
        start = time.perf_counter()
        emb = compute()
        seconds = time.perf_counter() - start
        self.timings[name] = {"images": len(names), "cached": False, "seconds": round(seconds, 1),
                              "img_per_s": round(len(names) / max(seconds, 1e-9), 1)}
        if self.enabled:
            tmp = path + ".tmp.npy"
            np.save(tmp, emb)
            os.replace(tmp, path)
        return emb
