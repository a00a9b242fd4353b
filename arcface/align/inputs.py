"""Image inputs of the aligner: a path, encoded bytes or an array, as RGB uint8."""

from __future__ import annotations

import os

import cv2
import numpy as np

from arcface.data.images import decode_image
from arcface.errors import ImageDecodeError


def _array_to_rgb(array: np.ndarray, color_order: str, source: str) -> np.ndarray:
    img = np.asarray(array)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"{source}: unsupported pixel type {img.dtype} (pass uint8 or uint16)")
    if img.ndim == 3 and img.shape[2] in (1, 2):  # grey, grey + alpha
        img = img[:, :, 0]
    if img.ndim == 2:
        if img.size == 0:
            raise ImageDecodeError(f"{source}: empty image of shape {img.shape}")
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_GRAY2RGB)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageDecodeError(f"{source}: expected an HxW, HxWx3 or HxWx4 image, got shape {img.shape}")
    if img.size == 0:
        raise ImageDecodeError(f"{source}: empty image of shape {img.shape}")
    img = img[:, :, :3]
    if color_order == "bgr":
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def to_rgb(source, color_order: str = "rgb") -> np.ndarray:
    """``H x W x 3`` RGB uint8 from a path, encoded bytes or an array.

    Arrays may be ``H x W`` (or ``H x W x 1``) grey, ``H x W x 2`` grey + alpha, ``H x W x 3``
    in ``color_order`` (``"rgb"`` or ``"bgr"``) or ``H x W x 4`` with alpha (RGBA or BGRA), in
    uint8 or uint16 (scaled to 8 bits); alpha is dropped. ``color_order`` is ignored for paths
    and bytes (the file says what it holds).

    Raises:
        ImageDecodeError: unreadable, not an image, or an unsupported array shape or dtype.
        TypeError: ``source`` is none of the above.
    """
    if color_order not in ("rgb", "bgr"):
        raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, color_order, "<array>")
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        return decode_image(source)
    raise TypeError(f"expected a path, bytes or a numpy array, got {type(source).__name__}")


def _source_name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, np.ndarray):
        return "<array>"
    from arcface.data.images import bytes_name

    return bytes_name(source)
