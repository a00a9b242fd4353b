"""Shared command-line plumbing: typed iomface errors become one clear line and exit 2."""

from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fail_cleanly(main: Callable[[], int]) -> int:
    """Run ``main``; an :class:`~arcface.errors.IomfaceError` prints ``error: ...`` and
    returns 2 instead of a traceback."""
    from arcface.errors import IomfaceError

    try:
        return main()
    except IomfaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
