"""Embedding files (.npz, no pickles): names, embeddings, optional labels and class names."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from arcface.data.folders import DEFAULT_IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from arcface.errors import DataFormatError


@dataclass
class EmbeddingSet:
    names: np.ndarray           # (n,) unicode
    embeddings: np.ndarray      # (n, d) float32
    labels: np.ndarray | None   # (n,) int64, or None
    class_names: np.ndarray | None
    mirrored: np.ndarray | None = None   # (n,) bool: rows that embed a mirror image, or None


def list_images(read_path: str | os.PathLike):
    """``(names, paths, labels, class_names)`` of one image, a flat folder of images, or
    an identity folder (one sub-folder per identity; then labels are given)."""
    read_path = os.fspath(read_path)
    if os.path.isfile(read_path):
        return [os.path.basename(read_path)], [read_path], None, None
    if not os.path.isdir(read_path):
        raise DataFormatError(f"image file or folder not found: {read_path}")
    subdirs = sorted(d for d in os.listdir(read_path)
                     if not d.startswith(".") and os.path.isdir(os.path.join(read_path, d)))
    if subdirs:
        from arcface.data.folders import scan_image_folder

        folder = scan_image_folder(read_path)
        names = [folder.name(i) for i in range(len(folder))]
        return names, list(folder.paths), np.asarray(folder.labels, np.int64), list(folder.class_names)
    files = sorted(f for f in os.listdir(read_path)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not files:
        raise DataFormatError(f"{read_path}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, [os.path.join(read_path, f) for f in files], None, None


def save_embeddings(path: str | os.PathLike, names, embeddings, labels=None, class_names=None,
                    mirrored=None) -> None:
    """Write an embeddings .npz atomically (temporary file, then rename); ``mirrored`` (bool,
    one per row) marks embeddings of mirror images (training data: kept out of validation)."""
    path = os.fspath(path)
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(names) != len(embeddings):
        raise DataFormatError(f"{len(names)} names for embeddings of shape {embeddings.shape}")
    arrays = {"names": np.asarray(names, dtype=str), "embeddings": embeddings}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int64)
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names, dtype=str)
    if mirrored is not None:
        arrays["mirrored"] = np.asarray(mirrored, bool)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    """Read an embeddings .npz (written by :func:`save_embeddings` or by any tool that
    stores ``embeddings`` and optionally ``names``/``labels``), validating it."""
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable .npz file ({e})") from None
    with data:
        files = sorted(data.files)
        # members are read lazily: pickled (object) arrays and corrupt members fail here
        try:
            arrays = {k: data[k] for k in ("embeddings", "names", "labels", "class_names", "mirrored")
                      if k in data}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataFormatError(f"{path}: not a readable .npz file ({e})") from None
    if "embeddings" not in arrays:
        raise DataFormatError(f"{path}: no 'embeddings' array (found {files})")
    emb = np.asarray(arrays["embeddings"], np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise DataFormatError(f"{path}: 'embeddings' must be a non-empty 2-D array, got {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise DataFormatError(f"{path}: 'embeddings' contains NaN or inf")
    names = arrays["names"] if "names" in arrays else np.array([str(i) for i in range(len(emb))])
    labels = arrays.get("labels")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataFormatError(f"{path}: 'labels' must be a 1-D integer array, "
                                  f"got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    class_names = arrays.get("class_names")
    if len(names) != len(emb) or (labels is not None and len(labels) != len(emb)):
        raise DataFormatError(f"{path}: names/labels and embeddings differ in length")
    mirrored = arrays.get("mirrored")
    if mirrored is not None and (mirrored.dtype != np.bool_ or mirrored.shape != (len(emb),)):
        raise DataFormatError(f"{path}: 'mirrored' must be a boolean array with one entry per embedding")
    return EmbeddingSet(names, emb, labels, class_names, mirrored)
