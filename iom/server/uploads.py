"""Photos uploaded to the HTTP service: read with a byte cap, their pixel count checked on the
header before anything is decoded (a small PNG can claim 100,000 x 100,000 pixels: a
decompression bomb), then aligned (unless the caller says they are aligned crops)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from iom.errors import InvalidInputError


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
    from arcface.data.images import NamedBytes, header_size

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
    return NamedBytes(data, name)       # a photo that has no face or does not decode is named by its file name


def parse_code(text: str) -> list[int]:
    """A device code from a form field: the exported model's ``code`` output for one face as
    comma- (or space-) separated integers; its length and range are the service's to check."""
    parts = text.replace(",", " ").split()
    if not parts or len(parts) > 65536 or not all(p.isdigit() and len(p) <= 10 for p in parts):
        raise InvalidInputError("code must be the device's code as comma-separated integers (one per group)")
    return [int(p) for p in parts]


class PhotoAligner:
    """Raw photos → aligned crops (MTCNN and the five-point warp); aligned uploads pass through as
    bytes, checked by the pipeline to be ``input_size`` crops.

    The work one photo costs is bounded and no caller can hold it for others:

    * a photo is searched at ``max_detect_pixels`` at most (:class:`~arcface.align.FaceAligner`),
      the crop warped from the full image: a photo of 25 megapixels costs what one of 2 does;
    * ``detectors`` MTCNN detectors, each used by one request at a time (a detector is not to be
      shared between threads), built on first need;
    * one raw-photo alignment in flight per caller (``client``): a second one at the same time is
      refused at once (:class:`~iom.errors.RateLimitedError`), so parallel streams from
      one key cannot take every detector;
    * ``seconds_per_minute`` of detection per caller in any minute (``None``: no budget): past
      it, raw photos of that caller are refused until older work leaves the window, so one key
      sending costly photos back to back holds a detector a sixth of the time at most (10 s).
    """

    def __init__(self, size: int, detectors: int = 2, max_detect_pixels: int = 1_000_000,
                 seconds_per_minute: float | None = 10.0):
        from iom.service.rate import WorkBudget

        if isinstance(detectors, bool) or not isinstance(detectors, int) or detectors < 1:
            raise InvalidInputError(f"detectors must be a positive integer, got {detectors!r}")
        if seconds_per_minute is not None and not seconds_per_minute > 0:
            raise InvalidInputError(f"seconds_per_minute must be positive or None, got {seconds_per_minute!r}")
        self.size, self.detectors, self.max_detect_pixels = size, detectors, int(max_detect_pixels)
        self.seconds_per_minute = seconds_per_minute
        self._budget = WorkBudget(60.0)
        self._free: list = []             # idle aligners, each with a detector of its own
        self._made = 0
        self._lock = threading.Condition()
        self._busy: set[str] = set()      # callers with an alignment in flight

    def _take(self):
        from arcface.align import FaceAligner
        from arcface.align.detector import new_detector

        with self._lock:
            while not self._free and self._made >= self.detectors:
                self._lock.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        try:
            return FaceAligner(size=self.size, max_detect_pixels=self.max_detect_pixels, detector=new_detector())
        except BaseException:
            with self._lock:
                self._made -= 1
                self._lock.notify()
            raise

    def _give_back(self, aligner) -> None:
        with self._lock:
            self._free.append(aligner)
            self._lock.notify()

    def __call__(self, photos: list[bytes], aligned: bool, client: str = "") -> list:
        from iom.errors import RateLimitedError

        if aligned:
            return photos
        with self._lock:
            if client in self._busy:
                raise RateLimitedError(f"a photo of {client!r} is being aligned: one raw photo request at a time "
                                       "per key (send aligned crops to go faster)", retry_after=1.0)
            if self.seconds_per_minute is not None:
                wait = self._budget.wait(client, self.seconds_per_minute)
                if wait is not None:
                    raise RateLimitedError(f"the photos of {client!r} took {self.seconds_per_minute:g} s of face "
                                           "detection in the last minute: try again later (or send aligned crops)",
                                           retry_after=wait)
            self._busy.add(client)
        try:
            aligner = self._take()
            start = time.perf_counter()
            try:
                return [aligner.align(p)[0].image for p in photos]
            finally:
                self._budget.charge(client, time.perf_counter() - start)
                self._give_back(aligner)
        finally:
            with self._lock:
                self._busy.discard(client)
