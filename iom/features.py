"""Stage-1 features for stage 2: the frozen embedding model, and embeddings cached on disk.

Stage 2 never changes the stage-1 network, so every image is embedded once and the
result is cached as an embeddings ``.npz`` (names, embeddings, labels, class names) keyed
by the weights file, the image list and the embedding options.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
import json
import os

import numpy as np

from arcface.embed import l2_normalize
from arcface.embeddings_io import EmbeddingSet, list_images, load_embeddings, save_embeddings
from arcface.errors import ConfigError, DataFormatError


def stage1_config(cfg):
    """The stage-1 config of the model a stage-2 config names in ``stage1_model``."""
    from arcface.config import load_config
    from arcface.pretrained import resolve_config_path

    if not cfg["stage1_model"]:
        raise ConfigError(f"{cfg.source}: key 'stage1_model' is required to embed images")
    stage1_cfg = load_config(resolve_config_path(cfg["stage1_cfg_path"], cfg["stage1_model"]))
    if cfg["backbone_type"] and cfg["backbone_type"] != stage1_cfg["backbone_type"]:
        raise ConfigError(f"{cfg.source}: backbone_type {cfg['backbone_type']!r} but the stage-1 model "
                          f"is a {stage1_cfg['backbone_type']}")
    return stage1_cfg


def load_stage1(cfg):
    """``(stage-1 config, backbone)`` named by a stage-2 config's ``stage1_model``."""
    from arcface.models import load_backbone

    stage1_cfg = stage1_config(cfg)
    return stage1_cfg, load_backbone(stage1_cfg, cfg["stage1_model"])


class FeatureExtractor:
    """Embeds image folders with the stage-1 model of a stage-2 config, with a disk cache."""

    def __init__(self, cfg, weights: str | None = None):
        from arcface.models import resolve_weights

        self.cfg = cfg
        self.weights = weights or resolve_weights(stage1_config(cfg), cfg["stage1_model"])
        self._backbone = None

    def _fingerprint(self, items, mirror: bool) -> str:
        st = os.stat(self.weights)
        digest = hashlib.sha256()
        for item in items:
            digest.update(hashlib.blake2b(bytes(item), digest_size=16).digest()
                          if isinstance(item, (bytes, bytearray)) else os.path.abspath(item).encode())
        spec = {"weights": os.path.abspath(self.weights), "size": st.st_size, "mtime": int(st.st_mtime),
                "items": digest.hexdigest(), "mirror": mirror, "flip_test": self.cfg["flip_test"],
                "ccrop": self.cfg["is_ccrop"], "input_size": self.cfg["input_size"]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def embed_items(self, items, tag: str, names=None, labels=None, class_names=None,
                    mirror: bool = False, progress: bool = True) -> EmbeddingSet:
        """Embeddings of image paths or encoded images, cached under ``cache_dir`` by
        ``tag``, the weights and a fingerprint of the items."""
        items = list(items)
        cache = os.path.join(self.cfg["cache_dir"],
                             f"{tag}{'_mirror' if mirror else ''}_{self._fingerprint(items, mirror)}.npz")
        if os.path.isfile(cache):
            return load_embeddings(cache)
        if self._backbone is None:
            from arcface.models import load_backbone

            self._backbone = load_backbone(stage1_config(self.cfg), self.weights)
        from arcface.embed import Embedder

        embedder = Embedder(self._backbone, self.cfg["eval_batch_size"], self.cfg["input_size"],
                            flip=self.cfg["flip_test"], center_crop=self.cfg["is_ccrop"], mirror=mirror)
        emb = embedder.embed_items(items, progress=progress,
                                   desc=f"embedding {tag}{' (mirrored)' if mirror else ''}")
        names = [str(i) for i in range(len(items))] if names is None else names
        save_embeddings(cache, names, emb, labels, class_names)
        return EmbeddingSet(np.asarray(names, str), emb, labels, class_names)

    def embed_folder(self, folder: str, mirror: bool = False, progress: bool = True) -> EmbeddingSet:
        """Embeddings of every image under ``folder`` (names relative to it), cached."""
        names, paths, labels, class_names = list_images(folder)
        return self.embed_items(paths, os.path.basename(os.path.normpath(folder)), names, labels,
                                class_names, mirror=mirror, progress=progress)


def unit_rows(x: np.ndarray, source: str) -> np.ndarray:
    """L2-normalised float32 rows, as the stage-1 embedder gives them (any extractor's scale
    is dropped); NaN/inf or all-zero rows raise :class:`DataFormatError`."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise DataFormatError(f"{source}: embeddings must be a finite (n, d) array")
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise DataFormatError(f"{source}: embedding row {int(np.argmin(norms))} is all zeros")
    return l2_normalize(x)


class PrecomputedEmbeddings:
    """Embeddings computed by any extractor, read from an ``.npz`` (``names``: image paths
    relative to the data folder, ``/``-separated) and L2-normalised like the stage-1
    embedder's; stands in for :class:`FeatureExtractor`."""

    def __init__(self, path: str):
        self.path = path
        data = load_embeddings(path)
        self.data = EmbeddingSet(data.names, unit_rows(data.embeddings, path), data.labels,
                                 data.class_names)
        self._rows = {str(n).replace(os.sep, "/"): i for i, n in enumerate(self.data.names)}

    def _row(self, item) -> int:
        if isinstance(item, (bytes, bytearray)):
            raise DataFormatError(f"{self.path}: precomputed embeddings cannot serve encoded images "
                                  "(.bin sets); use a pairs folder")
        parts = os.path.normpath(os.fspath(item)).split(os.sep)
        for k in range(1, len(parts) + 1):                 # the shortest trailing path that is a name
            row = self._rows.get("/".join(parts[-k:]))
            if row is not None:
                return row
        raise DataFormatError(f"{self.path}: no embedding for image {item}")

    def embed_items(self, items, tag: str = "", **_) -> EmbeddingSet:
        """The rows of ``items`` (image paths), in order."""
        rows = np.array([self._row(i) for i in items], np.int64)
        d = self.data
        return EmbeddingSet(d.names[rows], d.embeddings[rows],
                            None if d.labels is None else d.labels[rows], d.class_names)

    def embed_folder(self, folder: str = "", mirror: bool = False, progress: bool = True) -> EmbeddingSet:
        """Every embedding of the file (an identity set when it has labels)."""
        if mirror:
            raise DataFormatError(f"{self.path}: precomputed embeddings have no mirror images")
        return self.data


def hasher_backbone(hasher) -> str | None:
    """The backbone weights a hasher was trained end to end with (``spec["stage1_weights"]``,
    beside its files), or ``None`` when it uses the config's stage-1 model as it is."""
    name = getattr(hasher, "spec", {}).get("stage1_weights")
    if not name:
        return None
    folder = getattr(hasher, "folder", None)
    if folder is None:
        raise ConfigError("this hasher was trained end to end with its own backbone; load it with "
                          "DeepIoMHasher.load(folder) so that the backbone is found")
    return os.path.join(folder, name)


def evaluation_source(cfg, hasher=None):
    """Where evaluation embeddings come from: ``test_embeddings`` if set, else the stage-1 model
    (the hasher's own backbone when it was trained end to end, :func:`hasher_backbone`)."""
    if cfg["test_embeddings"]:
        return PrecomputedEmbeddings(cfg["test_embeddings"])
    return FeatureExtractor(cfg, hasher_backbone(hasher) if hasher is not None else None)


#: stream of the seeded draw of held-out calibration identities (apart from training's streams)
CALIBRATION_STREAM = 0xCA11B


@dataclass
class TrainingData:
    """Rows of stage-2 training data: embeddings ``x`` (n, d), identity ``labels``, ``mirrored``
    (rows that embed a mirror image) and, when the data came from image folders, the image
    ``paths`` of the rows (else ``None``)."""

    x: np.ndarray
    labels: np.ndarray
    mirrored: np.ndarray
    paths: np.ndarray | None = None

    def take(self, rows) -> "TrainingData":
        return TrainingData(self.x[rows], self.labels[rows], self.mirrored[rows],
                            None if self.paths is None else self.paths[rows])


def _training_views(cfg, extractor) -> TrainingData:
    """The training data (every identity, before any is held out)."""
    if cfg["train_embeddings"]:
        data = load_embeddings(cfg["train_embeddings"])
        if data.labels is None:
            raise DataFormatError(f"{cfg['train_embeddings']}: training embeddings need 'labels'")
        x, y = unit_rows(data.embeddings, cfg["train_embeddings"]), np.asarray(data.labels, np.int64)
        return TrainingData(x, y, data.mirrored if data.mirrored is not None else np.zeros(len(x), bool))
    if not cfg["train_dataset"]:
        raise ConfigError(f"{cfg.source}: set 'train_dataset' or 'train_embeddings'")
    extractor = extractor or FeatureExtractor(cfg)
    folders = cfg["train_dataset"] if isinstance(cfg["train_dataset"], list) else [cfg["train_dataset"]]
    xs, ys, ms, ps, offset = [], [], [], [], 0
    for folder in folders:
        data = extractor.embed_folder(folder)
        if data.labels is None:
            raise DataFormatError(f"{folder}: needs one sub-folder per identity")
        views = [(data, False)]
        if cfg["flip_augment"]:
            views.append((extractor.embed_folder(folder, mirror=True), True))
        for view, mirrored in views:           # identities of different folders stay apart
            xs.append(view.embeddings)
            ys.append(np.asarray(view.labels, np.int64) + offset)
            ms.append(np.full(len(view.embeddings), mirrored))
            ps.append(np.array([os.path.join(folder, str(n)) for n in view.names]))
        offset += int(np.max(data.labels)) + 1
    return TrainingData(np.concatenate(xs), np.concatenate(ys), np.concatenate(ms), np.concatenate(ps))


def held_out_identities(labels: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` identities (label values, sorted) held out of training to calibrate on: a fixed
    seeded draw, independent of the training seed, so every seed of a recipe (and every
    config on the same data) holds out the same people."""
    ids = np.unique(labels)
    if n >= len(ids):
        raise ConfigError(f"calibration_identities is {n}, but the training data has only {len(ids)} "
                          "identities: at least one must remain for training")
    return np.sort(np.random.default_rng(CALIBRATION_STREAM).choice(ids, n, replace=False))


def training_set(cfg, extractor: FeatureExtractor | None = None) -> TrainingData:
    """The data to train the hashing head on: ``train_embeddings`` as given, or ``train_dataset``
    embedded by the stage-1 model (plus its mirror images when ``flip_augment``), less the
    ``calibration_identities`` held out for calibration."""
    data = _training_views(cfg, extractor)
    x, y = data.x, data.labels
    if cfg["embd_shape"] and x.shape[1] != cfg["embd_shape"]:
        raise ConfigError(f"{cfg.source}: embd_shape is {cfg['embd_shape']} but the embeddings have "
                          f"dimension {x.shape[1]}")
    n_classes = len(np.unique(y))
    if cfg["num_classes"] and cfg["num_classes"] != n_classes:
        raise ConfigError(f"{cfg.source}: num_classes is {cfg['num_classes']} but the training data "
                          f"has {n_classes} identities")
    if cfg["calibration_identities"]:
        data = data.take(~np.isin(y, held_out_identities(y, cfg["calibration_identities"])))
    return data


def training_embeddings(cfg, extractor: FeatureExtractor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, labels)`` of :func:`training_set`."""
    data = training_set(cfg, extractor)
    return data.x, data.labels


def calibration_embeddings(cfg, extractor: FeatureExtractor | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(embeddings, labels, description)`` to calibrate the decision thresholds on, disjoint
    from training: the held-out ``calibration_identities`` (original images only: a mirror
    image is not an independent sample) or ``calibration_dataset``."""
    if cfg["calibration_dataset"]:
        extractor = extractor or evaluation_source(cfg)
        data = extractor.embed_folder(cfg["calibration_dataset"])
        if data.labels is None:
            raise DataFormatError(f"{cfg['calibration_dataset']}: calibration needs one sub-folder per identity")
        name = os.path.basename(os.path.normpath(cfg["calibration_dataset"]))
        return data.embeddings, np.asarray(data.labels, np.int64), f"{name} (calibration_dataset)"
    if not cfg["calibration_identities"]:
        raise ConfigError(f"{cfg.source}: nothing to calibrate on: set 'calibration_identities' (training "
                          "identities held out of training) or 'calibration_dataset' (an identity folder "
                          "disjoint from training and test data)")
    # the training folders through the stage-1 model (a hasher's own backbone when it has one)
    data = _training_views(cfg, None if isinstance(extractor, PrecomputedEmbeddings) else extractor)
    x, y = data.x, data.labels
    keep = np.isin(y, held_out_identities(y, cfg["calibration_identities"])) & ~data.mirrored
    source = cfg["train_dataset"] or cfg["train_embeddings"]
    names = ", ".join(os.path.basename(os.path.normpath(s)) for s in (source if isinstance(source, list) else [source]))
    return (x[keep], y[keep], f"{cfg['calibration_identities']} identities of {names} held out of training")
