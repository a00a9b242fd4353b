"""The optional packages of the ONNX importer's tests: a test module that imports ``onnx`` and ``ort``
from here is skipped, with the reason, where ``onnx`` or ``onnxruntime`` is not installed."""

import pytest

onnx = pytest.importorskip(
    "onnx", reason="the 'onnx' package is not installed (dev dependency of the ONNX importer)",
    exc_type=ImportError)
ort = pytest.importorskip(
    "onnxruntime", reason="'onnxruntime' is not installed (dev dependency: reference for the "
                          "ONNX importer tests)", exc_type=ImportError)
