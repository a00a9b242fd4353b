"""Shared command-line plumbing: typed iomface errors become one clear line and exit 2."""

from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_backend_quietly() -> None:
    """Import Keras (and its backend) with the process's native stderr (fd 2) closed off, so
    the C++ lines TensorFlow prints at import time whatever ``TF_CPP_MIN_LOG_LEVEL`` says
    (absl's "log messages before InitializeLog", oneDNN's notice on CPUs that have it) do not
    reach a command's error output. An import that fails restores fd 2 before raising."""
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                import keras  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def fail_cleanly(main: Callable[[], int]) -> int:
    """Run ``main``; an :class:`~arcface.errors.IomfaceError` prints ``error: ...`` and
    returns 2 instead of a traceback."""
    from arcface.errors import IomfaceError

    try:
        return main()
    except IomfaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
