"""Planning mtcnn 1.0.0's PNet image pyramid so that it is the standard MTCNN one.

mtcnn's pyramid has a number of levels that depends on the image size only, not on
``min_face_size``; when the smallest level falls under 12 pixels the network raises an error
that ``detect_faces`` swallows and reports as "no face" (e.g. a 250x250 photo with
``min_face_size`` >= 25, or any image under about 20 pixels). With small ``min_face_size`` the
pyramid stops too early and large faces are missed (250x250, ``min_face_size=5``).
:func:`plan_detection` picks the detector's ``min_face_size`` and, when needed, a resize of the
image so that the pyramid is the standard MTCNN one (finest level for faces of
``min(min_face_size, 20)`` pixels, coarsest level between 12 and 12/0.709 pixels) and never has
a level under 12 px; the aligner then filters the faces by ``min_face_size`` itself.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

PNET_WINDOW = 12  # the smallest face (and pyramid level) MTCNN's PNet can see, in pixels
SCALE_FACTOR = 0.709  # mtcnn's pyramid step; we keep it and choose the other parameters
# The detector looks for faces down to min(min_face_size, SEARCH_FACE_SIZE) pixels, so that a
# face between 20 px and a larger min_face_size is reported as FaceTooSmallError, not NoFaceError.
SEARCH_FACE_SIZE = 20.0


def _mtcnn_level_count(min_side: float) -> int:
    """Number of pyramid levels mtcnn 1.0.0 builds for an image whose smaller side is
    ``min_side`` (``mtcnn.utils.images.build_scale_pyramid``; independent of min_face_size)."""
    return int(round(-((np.log(min_side / PNET_WINDOW) / np.log(SCALE_FACTOR)) + 1)))


class DetectionPlan(NamedTuple):
    """How one image size is sent to mtcnn (see :func:`plan_detection`)."""

    detect_height: int  # the image is resized to detect_height x detect_width (same = no resize)
    detect_width: int
    min_face_size: float  # the detector's min_face_size, in pixels of the resized image
    level_sides: tuple[float, ...]  # smaller side of every pyramid level, finest first


def plan_detection(height: int, width: int, min_face_size: float) -> DetectionPlan:
    """Choose mtcnn's ``min_face_size`` and the detection size for a ``height x width`` image.

    mtcnn 1.0.0 scales the image by ``12/m * 0.709**i`` for ``i < count`` where ``m`` is its
    ``min_face_size`` and ``count = round(log(S/12) / log(1/0.709) - 1)`` depends only on the
    smaller side ``S``. Standard MTCNN wants the finest level to be ``12/min_face_size`` and the
    coarsest level to be the last one whose smaller side is still >= 12 pixels. With
    ``K = log(S/f) / log(1/0.709)`` (``f`` = the wanted min face size, capped at ``S``), that
    needs ``c = floor(K) + 1`` levels. When mtcnn's count for ``S`` already is ``c`` we keep the
    image; otherwise we resize it so that its smaller side is ``12 / 0.709**(c + 1)`` (the middle
    of the sizes for which mtcnn builds ``c`` levels) and scale ``m`` with it. Finally ``m`` is
    capped so that the coarsest level is at least 12.01 pixels (TensorFlow truncates level
    sizes; a level under 12 pixels makes PNet fail and mtcnn report "no face").

    Returns:
        DetectionPlan with the detection size, mtcnn's min_face_size and the level sizes.
    """
    height, width = int(height), int(width)
    side = min(height, width)
    if side < PNET_WINDOW:
        raise ValueError(f"an image of {width}x{height} is smaller than the {PNET_WINDOW}-pixel window")
    target = min(float(min_face_size), float(side))
    step = -math.log(SCALE_FACTOR)
    levels = math.floor(math.log(side / target) / step + 1e-9) + 1
    if _mtcnn_level_count(side) == levels:
        det_h, det_w = height, width
    else:
        wanted_side = PNET_WINDOW * math.exp(step * (levels + 1))
        ratio = wanted_side / side
        det_h, det_w = max(1, round(height * ratio)), max(1, round(width * ratio))
    det_side = min(det_h, det_w)
    count = _mtcnn_level_count(det_side)
    if count < 1:  # cannot happen for levels >= 1 (det_side >= 23), kept as a guard
        raise ValueError(f"no pyramid level for a {det_w}x{det_h} image")
    mtcnn_min_face = target * det_side / side
    # coarsest level = det_side * 12/m * 0.709**(count-1) >= 12.01
    cap = det_side * SCALE_FACTOR ** (count - 1) * PNET_WINDOW / 12.01
    mtcnn_min_face = min(mtcnn_min_face, cap)
    sides = tuple(float(det_side * PNET_WINDOW / mtcnn_min_face * SCALE_FACTOR**i) for i in range(count))
    return DetectionPlan(det_h, det_w, float(mtcnn_min_face), sides)
