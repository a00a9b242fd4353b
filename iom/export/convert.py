"""Converters of the export model: TFLite, ONNX, TensorFlow SavedModel (TensorFlow backend only).

======================  =====================================================================
format                  how
======================  =====================================================================
``tflite``              ``tf.lite.TFLiteConverter.from_saved_model`` on the SavedModel below:
                        float32, TFLite builtin ops only, no quantisation; signature
                        ``serving_default``: input ``image``, outputs ``code``, ``embedding``
``onnx``                Keras 3 ``model.export(format="onnx")`` (tf2onnx underneath), opset
                        :data:`ONNX_OPSET`; input ``image``, outputs ``code``, ``embedding``
``savedmodel``          Keras 3 ``model.export(format="tf_saved_model")``; signature
                        ``serving_default`` as above
======================  =====================================================================

Every batch dimension stays dynamic.
"""

from __future__ import annotations

import os
import tempfile
import warnings

from iom.export.spec import ExportError

#: ONNX operator set of the exported file (tf2onnx 1.17 writes up to 18; ONNX Runtime >= 1.13 runs 17)
ONNX_OPSET = 17


def require_tensorflow_backend() -> None:
    """:class:`ExportError` unless Keras runs on TensorFlow (the converters trace TF graphs)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"the converters need Keras' TensorFlow backend, this process runs "
                          f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow before Keras is "
                          "imported (iom.export.export does so in a child process)")


def require_converter(fmt: str) -> None:
    """:class:`ExportError` when the package format ``fmt`` needs is not installed (looked up,
    not imported: cheap enough to check arguments with)."""
    import importlib.util

    needs = {"onnx": "tf2onnx"}.get(fmt)   # tflite, savedmodel: TensorFlow itself
    if needs and importlib.util.find_spec(needs) is None:
        raise ExportError(f"--format {fmt} needs the {needs} package (pinned in requirements.txt: "
                          "pip install -r requirements.txt)")


def _input_signature(model):
    """The model's input as a ``tf.TensorSpec`` (any batch), named as the Keras input."""
    import tensorflow as tf

    spec = model.inputs[0]
    return tf.TensorSpec((None, *spec.shape[1:]), tf.as_dtype(spec.dtype), name=spec.name)


def to_tflite(model, path: str) -> None:
    """``model`` as a float32 TFLite flatbuffer at ``path`` (builtin ops only)."""
    require_tensorflow_backend()
    import tensorflow as tf

    # via a SavedModel of our own (from_keras_model makes one too, and prints its signature)
    with tempfile.TemporaryDirectory(prefix="iom-export-") as saved:
        to_savedmodel(model, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.optimizations = []                # float32: no quantisation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = converter.convert()
    with open(path, "wb") as f:
        f.write(flatbuffer)


def to_onnx(model, path: str) -> None:
    """``model`` as an ONNX file at ``path`` (opset :data:`ONNX_OPSET`); needs ``tf2onnx``."""
    require_tensorflow_backend()
    require_converter("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # tf2onnx's NumPy-2 patch warns about np.object
        model.export(path, format="onnx", verbose=False, opset_version=ONNX_OPSET,
                     input_signature=[_input_signature(model)])


def to_savedmodel(model, path: str) -> None:
    """``model`` as a TensorFlow SavedModel folder at ``path``."""
    require_tensorflow_backend()
    model.export(path, format="tf_saved_model", verbose=False)


CONVERTERS = {"tflite": to_tflite, "onnx": to_onnx, "savedmodel": to_savedmodel}


def convert(model, fmt: str, path: str) -> None:
    """Write ``model`` in format ``fmt`` (a key of :data:`CONVERTERS`) at ``path``."""
    try:
        converter = CONVERTERS[fmt]
    except KeyError:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(CONVERTERS)}") from None
    converter(model, path)
    if not os.path.exists(path):
        raise ExportError(f"the {fmt} converter wrote nothing at {path}")
