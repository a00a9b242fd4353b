"""On-device export: one model from a face to its un-keyed deep IoM code, and how to key it.

``export(hasher_name, fmt, out_dir)`` writes ``out_dir`` with the model (``model.tflite``,
``model.onnx`` or ``saved_model/``), ``export.json`` (the manifest a device needs: model id,
m, q, input and outputs, SHA-256 of every file, versions) and ``reference.py`` (the keyed
relabelling and packing that turn the model's code into the bytes the service stores).

Modules: :mod:`.model` (the Keras graph), :mod:`.convert` (TFLite, ONNX, SavedModel),
:mod:`.manifest` (``export.json``), :mod:`.exporter` (arguments, temporary folder, backend),
:mod:`.cli` (``scripts/export.py``), :mod:`.reference` (standalone: NumPy, hashlib, hmac),
:mod:`.spec` (formats, variants, file names, :class:`ExportError`: re-exported here).

The conversion always runs on Keras' TensorFlow backend: a process running another backend
(JAX) converts in a child process started with ``KERAS_BACKEND=tensorflow``. This package's
import loads neither Keras nor TensorFlow.
"""

from __future__ import annotations

from iom.export.spec import (CROP_SIZE_RANGE, DEFAULT_CROP_SIZE, FORMATS, MANIFEST_FILE, REFERENCE_FILE, VARIANTS,
                             ExportError)

__all__ = ["CROP_SIZE_RANGE", "DEFAULT_CROP_SIZE", "FORMATS", "MANIFEST_FILE", "REFERENCE_FILE", "VARIANTS",
           "ExportError", "export"]


def export(hasher_name: str, fmt: str, out_dir, variant: str = "face", crop_size: int | None = None,
           force: bool = False) -> dict:
    """Export a shipped hasher; returns the manifest written to ``out_dir/export.json``.
    See :func:`iom.export.exporter.export`."""
    from iom.export.exporter import export as _export

    return _export(hasher_name, fmt, out_dir, variant=variant, crop_size=crop_size, force=force)
