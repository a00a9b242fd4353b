"""``python -m iom.export``: :mod:`iom.export.cli` on the TensorFlow backend."""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"     # the converters trace TF graphs; before Keras is imported

from arcface.cli import fail_cleanly  # noqa: E402
from iom.export.cli import main  # noqa: E402

sys.exit(fail_cleanly(main))
