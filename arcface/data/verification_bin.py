"""InsightFace verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds two encoded
images per pair (``bins[2*i]``, ``bins[2*i+1]``) and ``issame_list`` one bool per
pair. The published files were written under Python 2, so they are loaded with
``encoding='bytes'``.

Unpickling is restricted: only the few numpy / builtin callables such files need
are allowed, anything else raises :class:`~arcface.errors.DataFormatError`
before it can be called, so a hostile ``.bin`` cannot run code.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arcface.data.pairs import DEFAULT_N_FOLDS, PairSet, atomic_write, chunk_folds
from arcface.errors import DataFormatError

__all__ = ["read_verification_bin", "write_verification_bin"]


def _numpy_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>`` (numpy 1)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` used by protocol-2 pickles of ``bytes``; text codecs only."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise DataFormatError(f"refusing _codecs.encode with encoding {encoding!r} in a verification .bin")
    return obj.encode("latin-1", errors)


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] | None = None


def _allowed() -> dict[tuple[str, str], Callable[..., Any]]:
    global _ALLOWED
    if _ALLOWED is None:
        allowed: dict[tuple[str, str], Callable[..., Any]] = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
        for package in ("numpy.core", "numpy._core"):
            allowed[(f"{package}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
            allowed[(f"{package}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
            allowed[(f"{package}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
        for module in ("builtins", "__builtin__"):
            allowed[(module, "bytes")] = bytes
            allowed[(module, "bytearray")] = bytearray
        _ALLOWED = allowed
    return _ALLOWED


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a verification ``.bin`` legitimately uses."""

    def __init__(self, file: io.BufferedIOBase, where: str):
        super().__init__(file, encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed().get((module, name))
        if obj is None:
            raise DataFormatError(
                f"{self._where}: refusing to unpickle global {module}.{name} "
                f"(not allowed in a verification .bin)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(f"{self._where}: persistent ids are not allowed in a verification .bin")


def _to_bytes(item: Any, where: str, k: int) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8):
        return item.tobytes()
    raise DataFormatError(f"{where}: image {k} is a {type(item).__name__}, expected encoded image bytes")


def read_verification_bin(path: str | os.PathLike, name: str | None = None) -> PairSet:
    """Read an InsightFace verification ``.bin`` into a :class:`PairSet` of encoded bytes.

    ``name`` defaults to the file stem (``lfw.bin`` -> ``"lfw"``). Folds are 10
    consecutive near-equal chunks, as in InsightFace's evaluation.

    Raises:
        DataFormatError: missing/unreadable file, a forbidden pickle global,
            or content that is not ``(bins, issame_list)``.
    """
    p = Path(os.fspath(path))
    where = str(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{where}: verification .bin not found") from None
    except OSError as e:
        raise DataFormatError(f"{where}: cannot read ({e})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), where).load()
    except DataFormatError:
        raise
    except Exception as e:  # pickle raises many kinds of errors on damaged input
        raise DataFormatError(f"{where}: not a valid verification .bin ({type(e).__name__}: {e})") from None

    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFormatError(f"{where}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame_raw = obj
    if not isinstance(bins, (list, tuple, np.ndarray)) or not isinstance(issame_raw, (list, tuple, np.ndarray)):
        raise DataFormatError(f"{where}: bins and issame_list must be sequences")
    n = len(issame_raw)
    if len(bins) != 2 * n:
        raise DataFormatError(f"{where}: {len(bins)} images for {n} pairs (expected {2 * n})")
    images = [_to_bytes(item, where, k) for k, item in enumerate(bins)]

    flags = []
    for k, v in enumerate(issame_raw):
        if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and int(v) in (0, 1)):
            flags.append(bool(v))
        else:
            raise DataFormatError(f"{where}: issame_list[{k}] = {v!r} is not a bool")
    return PairSet(
        name=name if name is not None else p.stem,
        left=images[0::2],
        right=images[1::2],
        issame=np.asarray(flags, dtype=bool),
        folds=chunk_folds(n, DEFAULT_N_FOLDS),
    )


def _item_bytes(item: Any, k: int) -> bytes:
    if isinstance(item, (str, os.PathLike)):
        try:
            with open(item, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataFormatError(f"{os.fspath(item)}: cannot read image for pair element {k} ({e})") from None
    return _to_bytes(item, "write_verification_bin", k)


def write_verification_bin(
    path: str | os.PathLike,
    left: Sequence[bytes | str | os.PathLike],
    right: Sequence[bytes | str | os.PathLike],
    issame: Sequence[bool] | np.ndarray,
) -> None:
    """Write an InsightFace-compatible ``.bin`` (pickle protocol 4), atomically.

    Elements of ``left`` / ``right`` are encoded image bytes (or uint8 arrays of
    them) or paths of image files, whose bytes are stored unchanged.
    """
    n = len(issame)
    if len(left) != n or len(right) != n:
        raise DataFormatError(f"left/right/issame lengths differ ({len(left)}, {len(right)}, {n})")
    bins: list[bytes] = []
    for k in range(n):
        bins.append(_item_bytes(left[k], 2 * k))
        bins.append(_item_bytes(right[k], 2 * k + 1))
    issame_list = [bool(v) for v in np.asarray(issame).ravel().tolist()]
    atomic_write(path, pickle.dumps((bins, issame_list), protocol=4))
