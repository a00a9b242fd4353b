"""One entry point for every verification-set format: InsightFace ``.bin`` or a pairs folder/file.

It sits above both readers (:mod:`arcface.data.pairs`, :mod:`arcface.data.verification_bin`)
so that neither imports the other's dispatcher.
"""

from __future__ import annotations

import os
from pathlib import Path

from arcface.data.pairs import PairSet, load_pairs_dir
from arcface.data.verification_bin import read_verification_bin
from arcface.errors import DataFormatError

__all__ = ["load_verification_set"]


def load_verification_set(path: str | os.PathLike, name: str | None = None) -> PairSet:
    """Load a verification set from an InsightFace ``.bin``, a pairs folder, or a pairs ``.txt``.

    Raises:
        DataFormatError: the path does not exist or is none of those.
    """
    p = Path(os.fspath(path))
    if p.is_file() and p.suffix.lower() == ".bin":
        return read_verification_bin(p, name=name)
    if p.is_dir() and (p / "pairs.txt").is_file():
        return load_pairs_dir(p, name=name)
    if p.is_file() and p.suffix.lower() == ".txt":
        return load_pairs_dir(p, name=name)
    if not p.exists():
        raise DataFormatError(f"{p}: verification set not found")
    raise DataFormatError(
        f"{p}: not a verification set (expected a .bin file, a pairs .txt file, "
        f"or a folder containing pairs.txt)"
    )


