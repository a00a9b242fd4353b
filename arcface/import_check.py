"""What the TFLite and ONNX importers share around the graph mapping: the released file checked
(present, its SHA-256), the faces an import is checked on, the agreement of the imported model
with the file's own runtime, and the model folder's ``config.yaml`` and summary lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arcface.errors import CheckpointError, DataFormatError

#: an import is written only when the imported model and the file's runtime agree this well
MIN_COSINE, MAX_ABS_DIFF = 0.9999, 1e-3


def checked_file(path, kind: str, expected_sha256: str | None = None) -> tuple[Path, str]:
    """``(path, its SHA-256)``; :class:`CheckpointError` when the file is missing or its SHA-256
    is not ``expected_sha256`` (when given)."""
    from arcface.pretrained import sha256_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} file not found: {path}")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise CheckpointError(f"{path}: SHA-256 {digest} differs from the expected {expected_sha256}")
    return path, digest


def check_images(folder: str | None, n: int, size: int) -> tuple[np.ndarray, list[str] | None]:
    """``(images, names)``: ``n`` images spread evenly over ``folder`` (a flat or an identity
    folder, sorted; names relative to it), else seeded random images (names ``None``)."""
    if folder is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), None
    from arcface.data.images import decode_image
    from arcface.embeddings_io import list_images

    try:
        names, files = list_images(folder)[:2]
    except DataFormatError as e:
        raise CheckpointError(f"--check_data: {e}") from None
    if len(files) < n:
        raise CheckpointError(f"--check_data {folder}: {len(files)} images, {n} needed")
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    images = np.stack([decode_image(files[i]) for i in idx])
    if images.shape[1:3] != (size, size):
        raise CheckpointError(f"--check_data {folder}: images are {images.shape[1:3]}, "
                              f"the model takes {size}x{size}")
    return images, [names[i] for i in idx]


def agreement(model, images, reference) -> dict:
    """The imported ``model``'s embeddings of ``images`` against the file runtime's
    ``reference`` embeddings of them: min/mean cosine (in float64), max difference."""
    ref = np.asarray(reference, np.float32)
    ours = np.asarray(model.predict(np.asarray(images, np.float32), batch_size=32, verbose=0))
    r, o = ref.astype(np.float64), ours.astype(np.float64)
    cos = np.sum(r * o, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1))
    return {"n_images": int(len(images)), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()), "max_abs_diff": float(np.abs(ref - ours).max()),
            "max_abs_ref": float(np.abs(ref).max())}


def require_agreement(check: dict, path, runtime: str) -> None:
    """:class:`CheckpointError` (nothing is written) unless ``check`` shows the import agrees
    with ``runtime``: cosine above :data:`MIN_COSINE` and difference below :data:`MAX_ABS_DIFF`."""
    if not (check["min_cosine"] > MIN_COSINE and check["max_abs_diff"] < MAX_ABS_DIFF):
        raise CheckpointError(f"{path}: the imported model differs from {runtime} "
                              f"(min cosine {check['min_cosine']:.6f}, max abs diff "
                              f"{check['max_abs_diff']:.2e}); nothing written")


def stage1_config(name: str, path: Path, script: str, digest: str, *, source: str, input_size: int,
                  embd_shape: int, backbone_type: str, test_dataset: str | None) -> str:
    """The ``config.yaml`` of an imported model folder ``name`` made from ``path`` by ``script``."""
    return (f"# Stage-1 config of {name}: {path.name} imported by {script}\n"
            + (f"# source: {source}\n" if source else "")
            + f"# SHA-256 of the file: {digest}. Weights: backbone.weights.h5 beside this file.\n"
            f"batch_size: 64\neval_batch_size: 128\ninput_size: {input_size}\n"
            f"embd_shape: {embd_shape}\nsub_name: '{name}'\nbackbone_type: '{backbone_type}'\n"
            + (f"test_dataset: '{test_dataset}'\n" if test_dataset else ""))


def summary_lines(report: dict, source_file, backbone_type: str, out) -> list[str]:
    """What an import script prints about an import's ``report``."""
    lines = [f"imported {source_file} (SHA-256 {report['sha256']}) into {backbone_type}: "
             f"{report['parameters']:,} parameters, {report['embd_shape']}-d -> {out}",
             f"  {len(report['unfolded_bn'])} folded BatchNorms rebuilt as identity + bias, "
             f"{report['residual_adds']} residual adds"]
    check = report.get("check")
    if check:
        lines.append(f"  check on {check['n_images']} {check['images']}: min cosine {check['min_cosine']:.8f}, "
                     f"max abs diff {check['max_abs_diff']:.2e} (|e| up to {check['max_abs_ref']:.1f})")
    return lines
