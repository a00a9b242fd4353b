"""Shared fixtures: a synthetic identity folder, a tiny registered backbone, the shared data root."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present ({path} missing): test needs the shared data set")
    return path


def write_identity_folder(root: Path, n_classes: int = 6, per_class: int = 8, size: int = 32,
                          seed: int = 0) -> Path:
    """PNG faces-to-be: each identity has its own colour pattern plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        base = rng.integers(0, 256, size=(size // 4, size // 4, 3))
        base = cv2.resize(base.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        folder = root / f"id_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            noise = rng.normal(0, 12, size=base.shape)
            img = np.clip(base + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{k:03d}.png"), img)
    return root


def write_pairs_set(identity_folder: Path, root: Path) -> Path:
    """An LFW-style pairs folder over the first 6 identities of :func:`write_identity_folder`:
    2 folds x (3 same + 3 different pairs), images named ``<name>/<name>_<idx:04d>.jpg``."""
    from arcface.data.pairs import LfwPair, write_lfw_pairs

    pairs = []
    for fold in range(2):
        pairs += [LfwPair(f"id_{c:03d}", 1 + fold, f"id_{c:03d}", 3 + fold) for c in range(3)]
        pairs += [LfwPair(f"id_{c:03d}", 1 + fold, f"id_{c + 3:03d}", 1 + fold) for c in range(3)]
    for c in range(6):
        name = f"id_{c:03d}"
        (root / name).mkdir(parents=True)
        for k in range(1, 5):
            img = cv2.imread(str(identity_folder / name / f"{k:03d}.png"))
            cv2.imwrite(str(root / name / f"{name}_{k:04d}.jpg"), img)
    write_lfw_pairs(root / "pairs.txt", pairs, n_folds=2, n_per_fold=3)
    return root


@pytest.fixture
def identity_folder(tmp_path):
    return write_identity_folder(tmp_path / "faces")


def tiny_net(embd_shape=16, input_size=32, dropout=0.0, name=None):
    """A 2-conv network with batch norm: the 'TinyNet' backbone of the training tests."""
    import keras

    from arcface.backbones.common import PixelNormalization, image_input

    inputs = image_input(input_size)
    x = PixelNormalization()(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(embd_shape)(x)
    return keras.Model(inputs, x, name=name or "TinyNet")


@pytest.fixture
def tiny_backbone():
    """Registers 'TinyNet' (:func:`tiny_net`) for the duration of a test."""
    from arcface.backbones import register_backbone
    from arcface.backbones.registry import unregister_backbone

    register_backbone("TinyNet")(tiny_net)
    yield "TinyNet"
    unregister_backbone("TinyNet")
