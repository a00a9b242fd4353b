"""Photos → protected-template material: alignment, the stage-1 embedding, the deep IoM code.

Nothing here is stored: embeddings live in memory only for the duration of one call.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from iom.defaults import DEFAULT_HASHER
from iom.errors import InvalidInputError

#: largest encoded photo accepted (bytes); bigger payloads are refused before decoding
MAX_PHOTO_BYTES = 20 * 1024 * 1024


class Pipeline:
    """Aligner (optional) + stage-1 embedder + deep IoM hasher.

    ``photos`` are paths, encoded bytes or RGB arrays. With an aligner, each photo goes
    through MTCNN detection and the five-point warp (one face per photo, the most central);
    without one, photos must already be aligned ``input_size`` crops.
    """

    def __init__(self, embedder, hasher, aligner=None, model_id: str = "", runtime=None):
        self.embedder, self.hasher, self.aligner = embedder, hasher, aligner
        self.model_id = model_id or hasher.spec.get("model_id", "deep_iom")
        #: how the stage-1 runtime was chosen (:class:`~iom.service.runtime.RuntimeChoice`), when
        #: :meth:`from_pretrained` made the pipeline
        self.runtime = runtime

    @staticmethod
    def shipped(hasher_name: str = DEFAULT_HASHER) -> dict:
        """What a shipped hasher is, read from its files without loading a model (no Keras):
        ``{"folder", "model_id", "m", "q", "stage1_model", "stage1_folder", "stage1_weights",
        "input_size", "calibration"}`` (``stage1_weights``: the backbone weights the Keras path
        loads, the hasher's own when it was trained end to end; the calibration file's path,
        ``None`` when absent).

        Names (the hasher's, and the stage-1 model its spec names) are names, not paths: they
        must match ``[A-Za-z0-9][A-Za-z0-9._-]*`` and resolve (symbolic links followed) to a
        folder directly inside ``models/``; anything else is an :class:`InvalidInputError`
        raised before any file is read."""
        import json
        import re

        import yaml

        from arcface.pretrained import MODELS_DIR

        def shipped_folder(name, what: str) -> str:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise InvalidInputError(f"{what} {name!r:.80} is not a valid model name: a name under "
                                        "models/ made of letters, digits, '.', '_' and '-' (no path)")
            root = os.path.realpath(MODELS_DIR)
            folder = os.path.realpath(os.path.join(root, name))
            if os.path.dirname(folder) != root or not os.path.isdir(folder):
                shipped = sorted(f for f in os.listdir(root) if os.path.isdir(os.path.join(root, f))
                                 and not f.startswith(("_", "."))) if os.path.isdir(root) else []
                raise InvalidInputError(f"{what} {name!r} is not a folder in {MODELS_DIR}; shipped: "
                                        f"{', '.join(shipped) or 'none'}")
            return folder

        folder = shipped_folder(hasher_name, "hasher")
        if not os.path.isfile(os.path.join(folder, "hasher.json")) and os.path.isfile(
                os.path.join(folder, "config.yaml")):
            from arcface.model_cards import list_models

            on_it = [m["name"] for m in list_models() if m["kind"] == "hasher" and m["stage1_model"] == hasher_name]
            raise InvalidInputError(
                f"{hasher_name!r} is a stage-1 model (the embedding network), not a hasher; --model names a "
                f"hasher: " + (f"those on {hasher_name}: {', '.join(on_it)}" if on_it else
                               f"none is shipped for {hasher_name}: train one with python scripts/"
                               f"train_twostage_tripletloss_online.py --cfg_path configs/"
                               f"iom_mobilefacenet_ms1m_64x8.yaml --model {hasher_name}") +
                " (iomface models lists them all)")
        try:
            with open(os.path.join(folder, "hasher.json")) as f:
                spec = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"hasher {hasher_name!r}: unreadable hasher.json ({e})") from None
        stage1 = spec.get("stage1_model")
        stage1_folder = shipped_folder(stage1, f"stage-1 model of hasher {hasher_name!r}")
        try:
            with open(os.path.join(stage1_folder, "config.yaml")) as f:
                input_size = int((yaml.safe_load(f) or {}).get("input_size", 112))
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise InvalidInputError(f"stage-1 model {stage1!r}: unreadable config.yaml ({e})") from None
        calibration = os.path.join(folder, "calibration.json")
        own = spec.get("stage1_weights")            # as iom.hashing.hasher.stage1_backbone loads them
        weights = os.path.join(folder, own) if own else os.path.join(stage1_folder, "backbone.weights.h5")
        return {"folder": folder, "model_id": spec.get("model_id", hasher_name), "m": spec.get("m"),
                "q": spec.get("q"), "stage1_model": stage1, "stage1_folder": stage1_folder,
                "stage1_weights": weights, "input_size": input_size,
                "calibration": calibration if os.path.isfile(calibration) else None}

    @classmethod
    def from_pretrained(cls, hasher_name: str = DEFAULT_HASHER, align: bool = True, runtime="auto",
                        threads: int | None = None, max_interpreters: int | None = None) -> "Pipeline":
        """The shipped hasher ``models/<hasher_name>`` and its stage-1 model (nothing downloaded);
        by default :data:`iom.defaults.DEFAULT_HASHER` on ``mobilefacenet_ms1m``. The names are
        checked by :meth:`shipped` before any file is read.

        ``runtime`` embeds the faces (:mod:`iom.service.runtime`): ``"auto"`` (default) the
        stage-1 folder's TFLite file when it is valid and recorded as giving every code of the
        Keras path, else the Keras backbone; ``"keras"``; ``"tflite"`` (an
        :class:`InvalidInputError` naming the file when there is no valid one); or a
        :class:`~iom.service.runtime.RuntimeChoice` already made. ``threads`` and
        ``max_interpreters``: each TFLite interpreter's threads and how many work at once
        (default: the cores, both). The hasher is the Keras one either way; the choice is
        ``pipeline.runtime``."""
        from iom.hashing.hasher import DeepIoMHasher
        from iom.service.runtime import RuntimeChoice, choose_runtime

        info = cls.shipped(hasher_name)
        choice = runtime if isinstance(runtime, RuntimeChoice) else choose_runtime(runtime, info)
        hasher = DeepIoMHasher.load(info["folder"])
        if choice.runtime == "tflite":
            from arcface.errors import CheckpointError
            from arcface.runtime import TFLiteEmbedder

            try:
                embedder = TFLiteEmbedder(choice.path, threads, 16, max_interpreters, expected_sha256=choice.sha256)
            except CheckpointError as e:
                raise InvalidInputError(f"--runtime {choice.requested}: {e}") from None
            if (embedder.input_size, embedder.dim) != (info["input_size"], hasher.dim):
                raise InvalidInputError(f"{choice.path}: takes {embedder.input_size}x{embedder.input_size} faces to "
                                        f"{embedder.dim}-d embeddings, the model {info['input_size']}x"
                                        f"{info['input_size']} to {hasher.dim}-d")
            input_size = embedder.input_size
        else:
            from arcface.embed import Embedder
            from iom.hashing.hasher import stage1_backbone

            cfg, backbone, _ = stage1_backbone(hasher)
            input_size = cfg["input_size"]
            embedder = Embedder(backbone, 16, input_size)
        aligner = None
        if align:
            from arcface.align import FaceAligner
            aligner = FaceAligner(size=input_size)
        return cls(embedder, hasher, aligner, hasher.spec["model_id"], runtime=choice)

    @property
    def dim(self) -> int:
        return self.hasher.dim

    def _image(self, photo) -> np.ndarray:
        from arcface.data.images import decode_image

        if isinstance(photo, (bytes, bytearray)):
            if not photo:
                raise InvalidInputError("photo is empty (0 bytes)")
            if len(photo) > MAX_PHOTO_BYTES:
                raise InvalidInputError(f"photo of {len(photo):,} bytes exceeds the {MAX_PHOTO_BYTES:,}-byte limit")
        elif isinstance(photo, (str, os.PathLike)):
            size = os.path.getsize(photo) if os.path.isfile(photo) else None
            if size is not None and size > MAX_PHOTO_BYTES:
                raise InvalidInputError(f"{photo}: {size:,} bytes exceeds the {MAX_PHOTO_BYTES:,}-byte limit")
        if self.aligner is not None:
            return self.aligner.align(photo)[0].image
        image = decode_image(photo) if not isinstance(photo, np.ndarray) else np.asarray(photo)
        size = self.embedder.input_size
        if image.shape[:2] != (size, size):
            from arcface.align.inputs import _source_name

            raise InvalidInputError(f"{_source_name(photo)}: without an aligner photos must be aligned {size}x{size} "
                                    f"crops, got {image.shape[1]}x{image.shape[0]}")
        return image

    def embed_photos(self, photos: Sequence) -> np.ndarray:
        """L2-normalised embeddings (n, d) of the photos; typed errors for bad photos."""
        if isinstance(photos, (str, bytes, bytearray, os.PathLike, np.ndarray)):
            photos = [photos]
        photos = list(photos)
        if not photos:
            raise InvalidInputError("no photos given")
        images = np.stack([self._image(p) for p in photos])
        return self.embedder.embed_arrays(images)

    def similarity(self, photo_a, photo_b) -> float:
        """The similarity of two photos' un-keyed codes (the fraction of the m groups that
        agree): what a comparison of two templates under one key gives."""
        codes = self.hasher.encode(self.embed_photos([photo_a, photo_b]), None)
        return float((codes[0] == codes[1]).mean())

    def check_embeddings(self, embeddings) -> np.ndarray:
        """Validated float32 embeddings (n, d), L2-normalised; typed error otherwise."""
        try:
            x = np.asarray(embeddings, np.float32)
        except (TypeError, ValueError):
            raise InvalidInputError("embeddings must be numbers") from None
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.dim:
            raise InvalidInputError(f"embeddings must have shape (n, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise InvalidInputError("embeddings contain NaN or inf")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise InvalidInputError("an embedding is all zeros")
        return x / norms

    def fused_embedding(self, photos=None, embeddings=None) -> tuple[np.ndarray, int]:
        """One embedding from several samples: the normalised mean of their embeddings
        (feature-level fusion), and how many samples went in."""
        if (photos is None) == (embeddings is None):
            raise InvalidInputError("give either photos or embeddings")
        x = self.embed_photos(photos) if photos is not None else self.check_embeddings(embeddings)
        mean = x.mean(axis=0)
        norm = np.linalg.norm(mean)
        if norm < 1e-6:
            raise InvalidInputError("the samples cancel out (their embeddings sum to zero)")
        return (mean / norm)[None].astype(np.float32), len(x)


class _CodeShape:
    def __init__(self, m: int, q: int):
        self.m, self.q = int(m), int(q)


class ModelFreePipeline:
    """A shipped hasher's identity (model id, code shape) without its networks: what the
    template service needs for the commands that touch no face (list, show, an administrator's
    revoke, set-admin), so they never import Keras. Anything that needs a face raises."""

    def __init__(self, info: dict):
        self.model_id, self.hasher = info["model_id"], _CodeShape(info["m"], info["q"])

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise InvalidInputError(f"this command loaded no model: {name} needs the face pipeline")
