"""What an export may be asked for (formats, variants, crop sizes), the names of the files it
writes beside the model, and :class:`ExportError`. Imports nothing of :mod:`iom.export`, so
every module of the package (and the package itself) imports these from here."""

from __future__ import annotations

from arcface.errors import IomfaceError

#: output formats and the model file (or folder) each writes in the output folder
FORMATS = {"tflite": "model.tflite", "onnx": "model.onnx", "savedmodel": "saved_model"}
#: ``face``: an aligned 112x112 crop in; ``crop``: a square detector crop of ``crop_size``
VARIANTS = ("face", "crop")
DEFAULT_CROP_SIZE = 160
#: accepted ``crop_size`` range (pixels a side)
CROP_SIZE_RANGE = (32, 1024)
MANIFEST_FILE = "export.json"
REFERENCE_FILE = "reference.py"


class ExportError(IomfaceError, ValueError):
    """An export cannot be made as asked (bad format, variant, size, hasher or output
    folder, or a converter that is missing or failed); nothing was written."""
