"""The face aligner: MTCNN detection, face choice and the five-point warp, for one or many images.

Errors are typed (all are :class:`~arcface.errors.IomfaceError` and ``ValueError``):

* :class:`~arcface.errors.ImageDecodeError`: the file is missing, empty, truncated or not an
  image, the array has an unsupported shape or dtype, or one side of the image is 1 pixel;
* :class:`~arcface.errors.NoFaceError`: no face with confidence >= ``min_confidence``;
* :class:`~arcface.errors.FaceTooSmallError`: faces were found but every one is smaller than
  ``min_face_size``, or the image's smaller side is under 12 pixels (the detector's window).

Face choice (``select``):

* ``"center"`` (default): the face with the highest score ``area * exp(-2 * r**2)``, where
  ``area`` is the box area in pixels and ``r`` is the distance from the box centre to the
  image centre with x measured in half-widths and y in half-heights (``r = 1`` at the middle
  of an edge, ``sqrt(2)`` at a corner). A face at the middle of an edge has weight
  ``exp(-2) = 0.14``, so it wins over a centred face only if its area is over 7.4 times larger;
* ``"largest"``: the largest box area (ties: higher confidence);
* ``"all"``: every accepted face, ordered by the ``"center"`` score, best first.

``AlignedFace.index`` is the face's rank in that ``"center"`` order among the faces accepted
in its image (0 = the face ``"center"`` picks).

mtcnn is several times faster on a batch of same-size images than one by one:
:meth:`FaceAligner.align_batch` groups the images by size and sends each group in one call
(different sizes are never mixed: mtcnn would pad them to one size, build one pyramid for
all and can shift the boxes of one image by another's padding).
"""

from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from arcface.align.detector import DETECTOR_LOCK, get_detector
from arcface.align.geometry import center_scores, warp_face
from arcface.align.inputs import _source_name, to_rgb
from arcface.align.plan import PNET_WINDOW, SEARCH_FACE_SIZE, DetectionPlan, plan_detection
from arcface.errors import FaceTooSmallError, ImageDecodeError, IomfaceError, NoFaceError

SELECT_POLICIES = ("center", "largest", "all")
MAX_BATCH_PIXELS = 8_000_000  # pixels per detector call (mtcnn works in float64)


@dataclass
class AlignedFace:
    """One aligned face.

    Attributes:
        image: ``size x size x 3`` RGB uint8 crop.
        box: ``(x1, y1, x2, y2)`` detector box in original image pixels.
        landmarks: ``5 x 2`` float32 (x, y) in original image pixels: left eye, right eye, nose,
            left mouth corner, right mouth corner ("left" = smaller x).
        confidence: detector confidence in [0, 1].
        index: rank of the face among the accepted faces of its image in ``"center"`` order
            (0 = the face ``select="center"`` returns).
    """

    image: np.ndarray = field(repr=False)
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    confidence: float
    index: int


def _order_landmarks(points: np.ndarray) -> np.ndarray:
    """Swap the eyes and the mouth corners where needed so that "left" has the smaller x."""
    points = points.copy()
    if points[0, 0] > points[1, 0]:
        points[[0, 1]] = points[[1, 0]]
    if points[3, 0] > points[4, 0]:
        points[[3, 4]] = points[[4, 3]]
    return points


def _to_pixels_of(rows: np.ndarray, seen: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """Detection rows in pixels of an image resized from ``original`` to ``seen`` (h, w), mapped
    back to the original's pixels (pixel centres at integer coordinates)."""
    if seen == original:
        return rows
    rows = rows.copy()
    sy, sx = seen[0] / original[0], seen[1] / original[1]
    xs, ys = [0, 2, 5, 6, 7, 8, 9], [1, 3, 10, 11, 12, 13, 14]
    rows[:, xs] = (rows[:, xs] + 0.5) / sx - 0.5
    rows[:, ys] = (rows[:, ys] + 0.5) / sy - 0.5
    return rows


class FaceAligner:
    """MTCNN detection + five-point similarity alignment to :data:`ARCFACE_TEMPLATE`.

    Args:
        min_face_size: faces whose box is smaller than this many pixels on both sides are
            rejected (:class:`FaceTooSmallError` when they are all that was found). The detector
            looks for faces down to ``min(min_face_size, 20)`` pixels, so a face between 20 px
            and a larger ``min_face_size`` gives FaceTooSmallError rather than NoFaceError.
        min_confidence: detections under this confidence are ignored (:class:`NoFaceError`).
        select: ``"center"``, ``"largest"`` or ``"all"`` (see the module docstring).
        size: side of the aligned crops (the template is scaled by ``size / 112``).
        batch_size: most images per detector call (fewer for large images).
        max_detect_pixels: an image of more pixels is searched at a reduced size of about this
            many (its landmarks mapped back, the crop warped from the full image), which bounds
            the detector's work whatever the photo's size; faces then need ``min_face_size``
            pixels at the reduced size. ``None``: always the full image.
        detector: an MTCNN detector of this aligner's own (:func:`~arcface.align.detector.new_detector`),
            used under a lock of its own; default the process's shared one under
            :data:`~arcface.align.detector.DETECTOR_LOCK`.
    """

    def __init__(self, min_face_size: float = 20, min_confidence: float = 0.9, select: str = "center",
                 size: int = 112, batch_size: int = 32, max_detect_pixels: int | None = None,
                 detector=None):
        if not (isinstance(min_face_size, numbers.Real) and 4 <= min_face_size < math.inf):
            # under 4 px the image would be upscaled more than 5 times for the detector
            raise ValueError(f"min_face_size must be a number >= 4 (pixels), got {min_face_size!r}")
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        if select not in SELECT_POLICIES:
            raise ValueError(f"select must be one of {SELECT_POLICIES}, got {select!r}")
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        if max_detect_pixels is not None and int(max_detect_pixels) < PNET_WINDOW ** 2:
            raise ValueError(f"max_detect_pixels must be at least {PNET_WINDOW ** 2}, got {max_detect_pixels!r}")
        self.min_face_size = float(min_face_size)
        self.min_confidence = float(min_confidence)
        self.select = select
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.max_detect_pixels = None if max_detect_pixels is None else int(max_detect_pixels)
        self._detector = detector
        self._detector_lock = DETECTOR_LOCK if detector is None else threading.Lock()

    def config(self) -> dict:
        return dict(min_face_size=self.min_face_size, min_confidence=self.min_confidence,
                    select=self.select, size=self.size, batch_size=self.batch_size,
                    max_detect_pixels=self.max_detect_pixels)

    # -- public API

    def align(self, source, color_order: str = "rgb") -> list[AlignedFace]:
        """Aligned faces of one image (one face unless ``select="all"``).

        ``source`` is a path, encoded bytes or an array (see :func:`to_rgb`).

        Raises:
            ImageDecodeError, NoFaceError, FaceTooSmallError: see the module docstring.
        """
        (result,) = self.align_batch([source], color_order=color_order)
        if isinstance(result, BaseException):
            raise result
        return result

    def align_batch(self, images: Sequence, color_order: str = "rgb") -> list[list[AlignedFace] | Exception]:
        """:meth:`align` for many images: one entry per input, the faces or the typed error
        (not raised). Same-size images share detector calls; the results equal one-by-one ones.
        """
        if color_order not in ("rgb", "bgr"):
            raise ValueError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
        results: list = [None] * len(images)
        arrays: dict[int, np.ndarray] = {}
        for i, src in enumerate(images):
            try:
                rgb = to_rgb(src, color_order)
                self._check_image_size(rgb, _source_name(src))
                arrays[i] = rgb
            except IomfaceError as e:
                results[i] = e
        for i, rows in self._detect(arrays).items():
            try:
                results[i] = self._faces(arrays[i], rows, _source_name(images[i]))
            except IomfaceError as e:
                results[i] = e
        return results

    # -- internals

    @staticmethod
    def _check_image_size(rgb: np.ndarray, source: str) -> None:
        h, w = rgb.shape[:2]
        if min(h, w) < 2:
            raise ImageDecodeError(f"{source}: a {w}x{h} image is too small to search for a face")
        if min(h, w) < PNET_WINDOW:
            raise FaceTooSmallError(f"{source}: the image is {w}x{h}, under the detector's "
                                    f"{PNET_WINDOW}-pixel window: any face in it is too small")

    def _detect(self, arrays: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Raw detections per image: ``n x 15`` rows (x1, y1, x2, y2, confidence, x1..x5, y1..y5)
        in original image pixels."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, rgb in arrays.items():
            groups.setdefault(rgb.shape[:2], []).append(i)
        out: dict[int, np.ndarray] = {}
        search = min(self.min_face_size, SEARCH_FACE_SIZE)
        for (h, w), indices in groups.items():
            scale = self._reduction(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            plan = plan_detection(*size, search)
            per_call = max(1, min(self.batch_size, MAX_BATCH_PIXELS // (plan.detect_height * plan.detect_width)))
            for start in range(0, len(indices), per_call):
                chunk = indices[start:start + per_call]
                images = [arrays[i] if scale == 1.0 else
                          cv2.resize(arrays[i], size[::-1], interpolation=cv2.INTER_AREA) for i in chunk]
                rows = self._detect_same_size(images, plan)
                out.update(zip(chunk, (_to_pixels_of(r, size, (h, w)) for r in rows)))
        return out

    def _reduction(self, h: int, w: int) -> float:
        """The scale the detector sees an ``h x w`` image at (1: the image itself)."""
        if self.max_detect_pixels is None or h * w <= self.max_detect_pixels:
            return 1.0
        return max(math.sqrt(self.max_detect_pixels / (h * w)), PNET_WINDOW / min(h, w))

    def _detect_same_size(self, images: list[np.ndarray], plan: DetectionPlan) -> list[np.ndarray]:
        h, w = images[0].shape[:2]
        resize = (plan.detect_height, plan.detect_width) != (h, w)
        if resize:
            interp = cv2.INTER_AREA if plan.detect_height < h else cv2.INTER_LINEAR
            images = [cv2.resize(im, (plan.detect_width, plan.detect_height), interpolation=interp)
                      for im in images]
        detector = self._detector or get_detector()
        with self._detector_lock:
            raw = detector.detect_faces(
                list(images), min_face_size=plan.min_face_size, threshold_onet=min(0.8, self.min_confidence),
                box_format="xyxy", output_type="numpy")
        raw = np.asarray(raw, dtype=np.float64).reshape(-1, 16)
        seen = (plan.detect_height, plan.detect_width)
        return [_to_pixels_of(raw[raw[:, 0] == k, 1:].copy(), seen, (h, w)) for k in range(len(images))]

    def _faces(self, rgb: np.ndarray, rows: np.ndarray, source: str) -> list[AlignedFace]:
        h, w = rgb.shape[:2]
        rows = rows[rows[:, 4] >= self.min_confidence]
        if len(rows) == 0:
            raise NoFaceError(f"{source}: no face found (confidence >= {self.min_confidence:g})")
        sides = np.maximum(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1])
        big = rows[sides >= self.min_face_size]
        if len(big) == 0:
            raise FaceTooSmallError(f"{source}: {len(rows)} face(s) found, the largest is {sides.max():.0f} px, "
                                    f"under min_face_size={self.min_face_size:g}")
        scores = center_scores(big[:, :4], h, w)
        order = np.lexsort((-big[:, 4], -scores))  # best centre score first, then confidence
        big = big[order]
        if self.select == "center":
            picks = [0]
        elif self.select == "largest":
            area = (big[:, 2] - big[:, 0]) * (big[:, 3] - big[:, 1])
            picks = [int(np.lexsort((-big[:, 4], -area))[0])]
        else:
            picks = list(range(len(big)))
        faces = []
        for k in picks:
            row = big[k]
            points = _order_landmarks(np.stack([row[5:10], row[10:15]], axis=1))
            faces.append(AlignedFace(
                image=warp_face(rgb, points, self.size),
                box=tuple(float(v) for v in row[:4]),
                landmarks=points.astype(np.float32),
                confidence=float(row[4]),
                index=int(k),
            ))
        return faces
