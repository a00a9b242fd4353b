"""Photos uploaded to the HTTP service: read with a byte cap, their pixel count checked on the
header before anything is decoded (a small PNG can claim 100,000 x 100,000 pixels: a
decompression bomb), then aligned (unless the caller says they are aligned crops)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from iom.service.errors import InvalidInputError


class PayloadTooLargeError(InvalidInputError):
    """A photo (or the request) is larger than the server accepts: HTTP 413."""


@dataclass(frozen=True)
class UploadLimits:
    """What one request may carry: bytes per photo, pixels per photo, photos per request."""

    max_photo_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_photos: int = 10

    def __post_init__(self):
        for name in ("max_photo_bytes", "max_pixels", "max_photos"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")

    @property
    def max_request_bytes(self) -> int:
        """The largest request body: every photo at its cap plus 64 kB of form fields."""
        return self.max_photos * self.max_photo_bytes + 64 * 1024


def read_photo(upload, limits: UploadLimits, field: str = "photo") -> bytes:
    """The bytes of an uploaded file (a Starlette ``UploadFile``), checked: not empty, at most
    ``max_photo_bytes``, an image whose header says at most ``max_pixels`` pixels."""
    from arcface.data.images import header_size

    name = f"{field} {upload.filename!r:.60}" if upload.filename else field
    upload.file.seek(0)
    data = upload.file.read(limits.max_photo_bytes + 1)
    if not data:
        raise InvalidInputError(f"{name} is empty (0 bytes)")
    if len(data) > limits.max_photo_bytes:
        raise PayloadTooLargeError(f"{name} is larger than the {limits.max_photo_bytes:,}-byte limit")
    width, height = header_size(data, name)
    if width * height > limits.max_pixels:
        raise PayloadTooLargeError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), "
                                   f"over the {limits.max_pixels / 1e6:g}-megapixel limit")
    return data


def parse_code(text: str) -> list[int]:
    """A device code from a form field: the exported model's ``code`` output for one face as
    comma- (or space-) separated integers; its length and range are the service's to check."""
    parts = text.replace(",", " ").split()
    if not parts or len(parts) > 65536 or not all(p.isdigit() and len(p) <= 10 for p in parts):
        raise InvalidInputError("code must be the device's code as comma-separated integers (one per group)")
    return [int(p) for p in parts]


class PhotoAligner:
    """Raw photos → aligned crops (MTCNN and the five-point warp), one at a time (the detector
    is not shared between threads); aligned uploads pass through as bytes, checked by the
    pipeline to be ``input_size`` crops."""

    def __init__(self, size: int):
        self.size = size
        self._aligner = None              # MTCNN loads on the first raw photo
        self._lock = threading.Lock()

    def __call__(self, photos: list[bytes], aligned: bool) -> list:
        if aligned:
            return photos
        with self._lock:
            if self._aligner is None:
                from arcface.align import FaceAligner

                self._aligner = FaceAligner(size=self.size)
            return [self._aligner.align(p)[0].image for p in photos]
