"""What the tests of imported model folders share: real faces to embed, cosines, and the check of
shipped weights against the reference runtime's embeddings stored beside them at import time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import SHARED_DATA, shared_data


def faces(n: int, seed: int = 0) -> np.ndarray:
    """``n`` real aligned LFW faces spread over the set when ../shared/data is present, else
    seeded random images (uint8, RGB, 112x112)."""
    lfw = SHARED_DATA / "lfw_112"
    if not lfw.is_dir():
        return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    from arcface.data.images import decode_image

    files = sorted(lfw.glob("*/*.jpg"))
    picked = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return np.stack([decode_image(str(f)) for f in picked])


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine of two embedding matrices."""
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_reproduces_reference(backbone, model_dir: Path, sha256: str, n_faces: int = 8) -> None:
    """The shipped ``backbone`` gives the reference runtime's embeddings of the LFW faces named in
    ``model_dir/reference_embeddings.npz`` (made from the file of SHA-256 ``sha256``), cosine > 0.9999;
    skips where ../shared/data is absent."""
    import keras

    from arcface.data.images import decode_image

    lfw = shared_data("lfw_112")
    ref = np.load(model_dir / "reference_embeddings.npz")
    assert str(ref["sha256"]) == sha256
    images = np.stack([decode_image(str(lfw / n)) for n in ref["names"]])
    ours = np.asarray(backbone.predict(images, verbose=0))
    cos = cosine(ours, ref["embeddings"])
    print(f"\n[{keras.backend.backend()}] {model_dir.name} vs its reference on {len(images)} LFW faces: "
          f"min cosine {cos.min():.8f}, max abs diff {np.abs(ours - ref['embeddings']).max():.2e}")
    assert len(images) == n_faces and cos.min() > 0.9999


def load_shipped(name: str):
    """``(config, backbone)`` of the shipped model folder ``models/NAME``; fails (not skips) when
    its weights are missing: a shipped model is part of the repository."""
    import pytest

    from arcface.models import load_pretrained
    from arcface.pretrained import MODELS_DIR

    if not (Path(MODELS_DIR) / name / "backbone.weights.h5").is_file():
        pytest.fail(f"{MODELS_DIR}/{name} is not shipped")
    return load_pretrained(name)


def assert_trains_and_round_trips(model, layer: str, path: Path, lr: float = 0.1) -> None:
    """One SGD step on random faces moves ``layer``'s kernel, and a ``.keras`` round trip of
    ``model`` keeps its function (inference mode)."""
    import keras

    x = np.random.default_rng(0).uniform(0, 255, (4, 112, 112, 3)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((4, model.output_shape[-1])).astype(np.float32)
    before = np.asarray(model.get_layer(layer).kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(np.asarray(model.get_layer(layer).kernel), before)
    model.save(str(path))
    again = keras.saving.load_model(str(path))
    np.testing.assert_allclose(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)),
                               rtol=0, atol=1e-5)
