"""Regenerate a shipped stage-1 model's serving runtime: ``embedder.tflite`` and ``runtime.json``.

    python scripts/export_runtime.py --model mobilefacenet_ms1m [--faces DIR] [--out DIR]

Converts the model's Keras backbone to TFLite and measures it against the Keras backbone on
the LFW equivalence set (500 aligned crops of ../shared/data/lfw_112), or on every aligned
crop in ``--faces DIR``; see iom/export/runtime.py (``--help``). Runs on Keras' TensorFlow
backend whatever KERAS_BACKEND says (set here for this process, before Keras is imported).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402
from iom.export.runtime import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
