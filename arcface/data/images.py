"""Image decoding and encoding with OpenCV, always in RGB uint8.

Every image that enters iomface goes through :func:`decode_image`, which returns
an ``H x W x 3`` RGB ``uint8`` array whatever the source was (grey, grey+alpha,
BGR, BGRA, 16-bit) and raises :class:`~arcface.errors.ImageDecodeError` with the
file name (or ``"<bytes>"``) when the data cannot be decoded.

Decompression bombs: a few hundred kB of PNG can claim 20000 x 20000 pixels. Before
anything is decoded the image size is read from the header, and images larger than
:data:`MAX_IMAGE_PIXELS` pixels or :data:`MAX_DECODED_BYTES` decoded bytes (width x
height x channels x bytes per sample) raise :class:`~arcface.errors.ImageTooLargeError`.
Only formats whose header gives the size are decoded: JPEG, PNG, BMP, WebP, GIF,
TIFF (classic, not BigTIFF) and PBM/PGM/PPM. Anything else OpenCV could decode
(AVIF, JPEG 2000, HDR, PFM, PAM, Sun raster, ...) is refused as "cannot decode".
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from arcface.errors import ImageDecodeError, ImageTooLargeError

__all__ = ["decode_image", "image_size", "header_size", "encode_jpeg", "encode_png", "MAX_IMAGE_PIXELS", "MAX_DECODED_BYTES"]

BytesLike = bytes | bytearray | memoryview


class NamedBytes(bytes):
    """Encoded image bytes that carry a name for messages (an upload's file name): errors about
    them name it instead of ``"<bytes>"``."""

    name: str

    def __new__(cls, data: BytesLike, name: str):
        obj = super().__new__(cls, data)
        obj.name = str(name)
        return obj


def bytes_name(data) -> str:
    """What a message calls encoded bytes: their :class:`NamedBytes` name, else ``"<bytes>"``."""
    return getattr(data, "name", None) or "<bytes>"

MAX_IMAGE_PIXELS = 40_000_000
"""Largest ``width * height`` :func:`decode_image` decodes (checked on the header first)."""

MAX_DECODED_BYTES = 160_000_000
"""Largest decoded array ``width * height * channels * bytes_per_sample`` it decodes:
every 8-bit image up to :data:`MAX_IMAGE_PIXELS` fits, 16-bit RGBA up to 20 megapixels."""

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


class _Header(NamedTuple):
    """What an image header says: size, channels OpenCV will return, bits per sample."""

    width: int
    height: int
    channels: int
    bits: int


_WHITESPACE = b" \t\n\v\f\r"
# a PNM header number after whitespace and '#' comments (which end at CR or LF, as OpenCV reads them)
_PNM_FIELD = re.compile(rb"(?:[ \t\n\v\f\r]|#[^\r\n]*+)*+([0-9]{1,10})(?![0-9])")
# SOFn markers (frame headers); C4 (DHT), C8 (JPG) and CC (DAC) are not frames
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _png_header(buf: bytes) -> _Header | None:
    """IHDR, which must be the first chunk: width, height, bit depth, colour type."""
    if len(buf) < 26 or buf[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", buf, 16)
    # grey, -, RGB, palette (BGRA once tRNS is applied), grey+alpha, -, RGBA
    channels = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(colour)
    return None if channels is None else _Header(width, height, channels, depth)


def _jpeg_header(buf: bytes) -> _Header | None:
    """The first SOFn frame header, found by walking markers the way libjpeg does."""
    n = len(buf)
    pos = 2  # after SOI
    while pos < n:
        if buf[pos] != 0xFF:  # libjpeg skips garbage before a marker
            pos = buf.find(b"\xff", pos)
            if pos < 0:
                return None
        while pos < n and buf[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return None
        marker = buf[pos]
        pos += 1
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # stuffed byte, TEM, RSTn
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI or a scan before any frame
            return None
        if pos + 2 > n:
            return None
        seg_len = (buf[pos] << 8) | buf[pos + 1]
        if marker in _JPEG_SOF:
            if seg_len < 8 or pos + 8 > n:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", buf, pos + 2)
            return _Header(width, height, components, precision)
        if seg_len < 2:
            return None
        pos += seg_len
    return None


def _bmp_header(buf: bytes) -> _Header | None:
    if len(buf) < 26:
        return None
    dib_size = struct.unpack_from("<I", buf, 14)[0]
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", buf, 18)
    elif dib_size >= 16 and len(buf) >= 30:
        width, height, _, bpp = struct.unpack_from("<iiHH", buf, 18)
        height = abs(height)  # negative: rows stored top-down
    else:
        return None
    return _Header(width, height, 4 if bpp == 32 else 3, 8)


def _webp_header(buf: bytes) -> _Header | None:
    """The first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended: the canvas size)."""
    if len(buf) < 30:
        return None
    chunk, d = buf[12:16], 20
    if chunk == b"VP8 " and buf[d + 3:d + 6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", buf, d + 6)
        return _Header(width & 0x3FFF, height & 0x3FFF, 4, 8)
    if chunk == b"VP8L" and buf[d] == 0x2F:
        bits = struct.unpack_from("<I", buf, d + 1)[0]
        return _Header((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4, 8)
    if chunk == b"VP8X":
        width = int.from_bytes(buf[d + 4:d + 7], "little") + 1
        height = int.from_bytes(buf[d + 7:d + 10], "little") + 1
        return _Header(width, height, 4, 8)
    return None


def _gif_header(buf: bytes) -> _Header | None:
    """The logical screen, grown to hold the first frame if that frame sticks out of it."""
    n = len(buf)
    if n < 13:
        return None
    width, height, flags = struct.unpack_from("<HHB", buf, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    while pos < n:
        if buf[pos] == 0x2C:  # image descriptor
            if pos + 9 > n:
                return None
            left, top, w, h = struct.unpack_from("<HHHH", buf, pos + 1)
            return _Header(max(width, left + w), max(height, top + h), 4, 8)
        if buf[pos] != 0x21:  # only extension blocks may come first
            return None
        pos += 2  # introducer and label, then data sub-blocks up to a 0 length
        while pos < n and buf[pos]:
            pos += buf[pos] + 1
        pos += 1
    return None


def _tiff_header(buf: bytes) -> _Header | None:
    """Classic TIFF: width, length, bits per sample, samples per pixel of the first IFD."""
    n = len(buf)
    e = "<" if buf[:2] == b"II" else ">"
    if n < 8:
        return None
    ifd = struct.unpack_from(e + "I", buf, 4)[0]
    if ifd + 2 > n:
        return None
    tags: dict[int, int] = {}
    for k in range(struct.unpack_from(e + "H", buf, ifd)[0]):
        off = ifd + 2 + 12 * k
        if off + 12 > n:
            return None
        tag, typ, count = struct.unpack_from(e + "HHI", buf, off)
        if tag not in (256, 257, 258, 262, 277):  # width, length, bits, photometric, samples
            continue
        if tag in tags:  # libtiff keeps the first of duplicate tags: refuse rather than guess
            return None
        code = {1: "B", 3: "H", 4: "I"}.get(typ)
        if code is None or count == 0:
            return None
        size = struct.calcsize(code)
        where = off + 8 if size * count <= 4 else struct.unpack_from(e + "I", buf, off + 8)[0]
        count = min(count, 16)  # bits per sample is per channel: the widest is what counts
        if where + size * count > n:
            return None
        tags[tag] = max(struct.unpack_from(e + code * count, buf, where))
    if 256 not in tags or 257 not in tags:
        return None
    channels = max(tags.get(277, 1), 3 if tags.get(262) == 3 else 1)  # a palette decodes to BGR
    return _Header(tags[256], tags[257], channels, tags.get(258, 1))


def _pnm_header(buf: bytes) -> _Header | None:
    """PBM/PGM/PPM (P1-P6): ASCII width, height and (except bitmaps) maxval."""
    kind = buf[1] - 0x30
    values: list[int] = []
    pos = 2
    for _ in range(2 if kind in (1, 4) else 3):
        field = _PNM_FIELD.match(buf, pos)
        if field is None:
            return None
        values.append(int(field.group(1)))
        pos = field.end()
    maxval = values[2] if len(values) == 3 else 1
    return _Header(values[0], values[1], 3 if kind in (3, 6) else 1, 16 if maxval > 255 else 8)


def _image_format(buf: bytes) -> str | None:
    """The format the signature says (the same signatures OpenCV picks its decoder by)."""
    if buf[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if buf[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if buf[:2] == b"BM":
        return "BMP"
    if buf[:4] == b"RIFF" and buf[8:12] == b"WEBP":
        return "WebP"
    if buf[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if buf[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if len(buf) >= 3 and buf[0] == 0x50 and 0x31 <= buf[1] <= 0x36 and buf[2] in _WHITESPACE:
        return "PNM"
    return None


_HEADER_READERS: dict[str, Callable[[bytes], _Header | None]] = {
    "JPEG": _jpeg_header, "PNG": _png_header, "BMP": _bmp_header, "WebP": _webp_header,
    "GIF": _gif_header, "TIFF": _tiff_header, "PNM": _pnm_header,
}


def _check_header(buf: bytes, source: str) -> tuple[str, _Header]:
    """Format and header of ``buf``, refusing unknown formats and images over the limits."""
    fmt = _image_format(buf)
    if fmt is None:
        raise ImageDecodeError(
            f"{source}: cannot decode image ({len(buf)} bytes, starts with {buf[:8]!r}; "
            f"supported formats: {', '.join(_HEADER_READERS)})"
        )
    head = _HEADER_READERS[fmt](buf)
    if head is None:
        raise ImageDecodeError(f"{source}: cannot decode image (malformed or truncated {fmt} header)")
    if head.width <= 0 or head.height <= 0:
        raise ImageDecodeError(f"{source}: cannot decode image ({fmt} header says {head.width}x{head.height})")
    pixels = head.width * head.height
    nbytes = pixels * head.channels * max(1, (head.bits + 7) // 8)
    if pixels > MAX_IMAGE_PIXELS or nbytes > MAX_DECODED_BYTES:
        raise ImageTooLargeError(
            f"{source}: {fmt} image of {head.width}x{head.height} pixels, {head.channels} channel(s) "
            f"of {head.bits} bits ({pixels / 1e6:.1f} megapixels, {nbytes / 1e6:.0f} MB decoded) is over "
            f"the limits MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS}, MAX_DECODED_BYTES={MAX_DECODED_BYTES}"
        )
    return fmt, head


def _to_rgb_uint8(img: np.ndarray, source: str) -> np.ndarray:
    """Convert whatever ``cv2.imdecode(..., IMREAD_UNCHANGED)`` gave to RGB uint8."""
    if img.dtype == np.uint16:
        # round(v / 257) straight to uint8, without (v * 255 + 32767) // 65535 temporaries
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)
    elif img.dtype in (np.float32, np.float64):
        img = np.nan_to_num(img, copy=False)  # in place: the decoder's array is ours
        img *= 255.0
        img += 0.5
        img = np.clip(img, 0, 255, out=img).astype(np.uint8)
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


def image_size(path: str | os.PathLike, max_bytes: int = 1 << 20) -> tuple[int, int]:
    """``(width, height)`` of the image file at ``path`` from its header alone (the first
    ``max_bytes`` are read, nothing is decoded); :class:`ImageDecodeError` for a file that is
    not an image in a supported format, :class:`ImageTooLargeError` over the decode limits."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            buf = f.read(max_bytes)
    except OSError as e:
        raise ImageDecodeError(f"{source}: cannot read image ({e.strerror or e})") from None
    return header_size(buf, source)


def header_size(data: BytesLike, source: str = "<bytes>") -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes from their header alone (nothing decoded);
    :class:`ImageDecodeError` for data that is not an image in a supported format,
    :class:`ImageTooLargeError` over the decode limits."""
    _, head = _check_header(bytes(data), source)
    return head.width, head.height


def decode_image(data: BytesLike | str | os.PathLike) -> np.ndarray:
    """Decode encoded image bytes, or the image file at a path, to RGB uint8.

    Returns a C-contiguous ``H x W x 3`` array. Grey images are repeated over 3
    channels, alpha is dropped and 16-bit images are scaled to 8 bits.

    Raises:
        ImageDecodeError: the file is missing or unreadable, empty, truncated or
            not an image in a supported format; the message names the file or ``"<bytes>"``.
        ImageTooLargeError: the header says the image is over :data:`MAX_IMAGE_PIXELS`
            or :data:`MAX_DECODED_BYTES` (nothing is decoded then), or decoding ran out of memory.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = bytes_name(data)
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
        except MemoryError:
            raise ImageTooLargeError(f"{source}: out of memory reading the file") from None
    else:
        raise TypeError(f"decode_image expects bytes or a path, got {type(data).__name__}")

    if len(buf) == 0:
        raise ImageDecodeError(f"{source}: empty data (0 bytes)")
    if buf[:3] == b"\xff\xd8\xff" and _jpeg_is_truncated(buf):
        raise ImageDecodeError(f"{source}: truncated JPEG (no end-of-image marker)")
    fmt, head = _check_header(buf, source)
    too_large = f"{source}: out of memory decoding a {head.width}x{head.height} {fmt} image"
    try:
        img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except MemoryError:
        raise ImageTooLargeError(too_large) from None
    except cv2.error as e:
        if getattr(e, "code", None) == cv2.Error.StsNoMem:
            raise ImageTooLargeError(too_large) from None
        raise ImageDecodeError(f"{source}: cannot decode image ({e})") from None
    if img is None or img.size == 0:
        raise ImageDecodeError(
            f"{source}: cannot decode image ({len(buf)} bytes, starts with {buf[:8]!r})"
        )
    try:
        return _to_rgb_uint8(img, source)
    except MemoryError:
        raise ImageTooLargeError(too_large) from None
    except cv2.error as e:
        if getattr(e, "code", None) == cv2.Error.StsNoMem:
            raise ImageTooLargeError(too_large) from None
        raise


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
