"""Export a shipped hasher (with its stage-1 model) for a device: TFLite, ONNX or SavedModel.

    python scripts/export.py --format tflite|onnx|savedmodel --out DIR
        [--hasher NAME] [--variant face|crop] [--crop_size N] [--force]

See iom/export/cli.py (``--help``). Runs on Keras' TensorFlow backend whatever
KERAS_BACKEND says (set here for this process, before Keras is imported).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402
from iom.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
