"""Image decoding and encoding with OpenCV, always in RGB uint8.

Every image that enters iomface goes through :func:`decode_image`, which returns
an ``H x W x 3`` RGB ``uint8`` array whatever the source was (grey, grey+alpha,
BGR, BGRA, 16-bit) and raises :class:`~arcface.errors.ImageDecodeError` with the
file name (or ``"<bytes>"``) when the data cannot be decoded.
"""

from __future__ import annotations

import os
import re

import cv2
import numpy as np

from arcface.errors import ImageDecodeError

__all__ = ["decode_image", "encode_jpeg", "encode_png"]

BytesLike = bytes | bytearray | memoryview

# In JPEG entropy-coded data 0xFF is always followed by 0x00 (byte stuffing) or
# by a restart marker 0xD0-0xD7; anything else is the next real marker.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _jpeg_is_truncated(buf: bytes) -> bool:
    """True when a JPEG stream ends before its EOI marker.

    Some libjpeg builds decode a truncated file with only a warning and fill the
    missing rows with grey; walking the marker structure catches that. Streams
    whose structure looks odd for another reason are left to the decoder.
    """
    n = len(buf)
    pos = 2  # after SOI
    while True:
        if pos >= n:
            return True
        if buf[pos] != 0xFF:
            return False  # not a marker where one is expected: let cv2 judge
        while pos < n and buf[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return True
        marker = buf[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return False
        if marker == 0x00:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if pos + 2 > n:
            return True
        seg_len = (buf[pos] << 8) | buf[pos + 1]
        if seg_len < 2:
            return False
        pos += seg_len
        if pos > n:
            return True
        if marker == 0xDA:  # SOS: skip the entropy-coded segment
            match = _JPEG_SCAN_END.search(buf, pos)
            if match is None:
                return True
            pos = match.start()


def _to_rgb_uint8(img: np.ndarray, source: str) -> np.ndarray:
    """Convert whatever ``cv2.imdecode(..., IMREAD_UNCHANGED)`` gave to RGB uint8."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(np.nan_to_num(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"{source}: unsupported pixel type {img.dtype}")

    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim != 3:
        raise ImageDecodeError(f"{source}: unexpected image shape {img.shape}")
    channels = img.shape[2]
    if channels == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"{source}: unexpected number of channels {channels}")


def decode_image(data: BytesLike | str | os.PathLike) -> np.ndarray:
    """Decode encoded image bytes, or the image file at a path, to RGB uint8.

    Returns a C-contiguous ``H x W x 3`` array. Grey images are repeated over 3
    channels, alpha is dropped and 16-bit images are scaled to 8 bits.

    Raises:
        ImageDecodeError: the file is missing or unreadable, empty, truncated or
            not an image; the message names the file or ``"<bytes>"``.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = "<bytes>"
        buf = bytes(data)
    elif isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
        try:
            with open(source, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            raise ImageDecodeError(f"{source}: file not found") from None
        except IsADirectoryError:
            raise ImageDecodeError(f"{source}: is a directory, not an image") from None
        except OSError as e:
            raise ImageDecodeError(f"{source}: cannot read file ({e})") from None
    else:
        raise TypeError(f"decode_image expects bytes or a path, got {type(data).__name__}")

    if len(buf) == 0:
        raise ImageDecodeError(f"{source}: empty data (0 bytes)")
    if buf[:3] == b"\xff\xd8\xff" and _jpeg_is_truncated(buf):
        raise ImageDecodeError(f"{source}: truncated JPEG (no end-of-image marker)")
    try:
        img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageDecodeError(f"{source}: cannot decode image ({e})") from None
    if img is None or img.size == 0:
        raise ImageDecodeError(
            f"{source}: cannot decode image ({len(buf)} bytes, starts with {buf[:8]!r})"
        )
    return _to_rgb_uint8(img, source)


def _to_bgr(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ImageDecodeError(f"expected a uint8 image, got dtype {rgb.dtype}")
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[:, :, 0]
    if rgb.ndim == 2:
        return np.ascontiguousarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    raise ImageDecodeError(f"expected an HxWx3 RGB (or HxW grey) image, got shape {rgb.shape}")


def _encode(ext: str, rgb: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, _to_bgr(rgb), params)
    if not ok:
        raise ImageDecodeError(f"cv2.imencode({ext!r}) failed for an image of shape {np.shape(rgb)}")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB (or grey) uint8 image as JPEG bytes."""
    if not 0 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    return _encode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an RGB (or grey) uint8 image as lossless PNG bytes."""
    return _encode(".png", rgb, [])
