"""Datasets stored as an image folder: ``root/<identity>/<image files>``.

Each non-hidden sub-folder of ``root`` that holds at least one image is one
identity; images may sit directly in it or in nested folders. Files at the root
(``manifest.tsv``, ``README``...) and hidden files or folders are ignored. The
order is deterministic: identities sorted by name, images sorted by relative path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from arcface.errors import DataFormatError

__all__ = ["ImageFolder", "scan_image_folder", "DEFAULT_IMAGE_EXTENSIONS"]

DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageFolder:
    """Image paths and integer labels of an identity-per-folder dataset.

    Attributes:
        root: absolute path of the dataset root.
        paths: absolute image paths, grouped by identity.
        labels: ``int64`` label of each image (index into ``class_names``).
        class_names: sorted identity folder names.
    """

    def __init__(self, root: str, paths: list[str], labels: np.ndarray, class_names: list[str]):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.root = root
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names

    @property
    def num_classes(self) -> int:
        """Number of identities."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFolder(root={self.root!r}, images={len(self)}, classes={self.num_classes})"

    def read_bytes(self, i: int) -> bytes:
        """Encoded bytes of image ``i``; DataFormatError if the file went away."""
        path = self.paths[i]
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataFormatError(f"{path}: cannot read image file ({e})") from None

    def name(self, i: int) -> str:
        """Path of image ``i`` relative to ``root``, with ``/`` separators."""
        return Path(os.path.relpath(self.paths[i], self.root)).as_posix()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan_image_folder(
    root: str | os.PathLike, extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS
) -> ImageFolder:
    """Scan ``root`` (one sub-folder per identity) into an :class:`ImageFolder`.

    Extensions are matched case-insensitively (with or without the leading dot).
    Identity folders without any image are skipped, so labels are dense.

    Raises:
        DataFormatError: ``root`` is missing, not a directory, or has no images.
    """
    root_str = os.path.abspath(os.fspath(root))
    if not os.path.exists(root_str):
        raise DataFormatError(f"{root_str}: image folder does not exist")
    if not os.path.isdir(root_str):
        raise DataFormatError(f"{root_str}: not a directory")
    exts = tuple(("." + e.lstrip(".")).lower() for e in extensions)
    if not exts:
        raise ValueError("extensions must not be empty")

    try:
        entries = sorted(os.scandir(root_str), key=lambda e: e.name)
    except OSError as e:
        raise DataFormatError(f"{root_str}: cannot list directory ({e})") from None

    class_names: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for entry in entries:
        if _is_hidden(entry.name) or not entry.is_dir():
            continue
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for fn in filenames:
                if not _is_hidden(fn) and fn.lower().endswith(exts):
                    found.append(os.path.join(dirpath, fn))
        if not found:
            continue
        found.sort(key=lambda p: Path(os.path.relpath(p, entry.path)).parts)
        label = len(class_names)
        class_names.append(entry.name)
        paths.extend(found)
        labels.extend([label] * len(found))

    if not paths:
        raise DataFormatError(
            f"{root_str}: no images with extensions {', '.join(exts)} in any identity sub-folder"
        )
    return ImageFolder(root_str, paths, np.asarray(labels, dtype=np.int64), class_names)
