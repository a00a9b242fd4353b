"""The warps of the alignment study: the similarity ``warp_face`` fits (LMEDS inliers or all five
points), the re-warp ``T_lstsq o T_lmeds^-1`` of a shipped crop, and the resampling controls."""

from __future__ import annotations

import math

import cv2
import numpy as np

from arcface.align import ARCFACE_TEMPLATE, estimate_similarity, landmark_inliers
from arcface.data.images import decode_image, encode_jpeg

SIZE = 112
JPEG_QUALITY = 95  # the quality lfw_112 was written with (its quantisation tables are libjpeg's q95)


def parse_landmarks(text: str) -> np.ndarray:
    """The 5 x 2 landmarks of a manifest row."""
    return np.asarray(text.split(), np.float64).reshape(5, 2)


def similarity(landmarks: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The 2 x 3 matrix ``warp_face(..., method=method)`` applies, and the landmarks it keeps."""
    template = ARCFACE_TEMPLATE.astype(np.float64) * (SIZE / 112.0)
    keep = landmark_inliers(landmarks, template) if method == "lmeds" else np.ones(5, bool)
    return estimate_similarity(landmarks[keep], template[keep]), keep


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2 x 3 matrix of ``a o b`` (apply ``b`` first)."""
    h = lambda m: np.vstack([m, [0.0, 0.0, 1.0]])  # noqa: E731
    return (h(a) @ h(b))[:2]


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def rewarp_matrix(landmarks: np.ndarray) -> np.ndarray:
    """``T_lstsq o T_lmeds^-1``: maps the shipped (lmeds) crop onto the lstsq crop."""
    t_lmeds, _ = similarity(landmarks, "lmeds")
    t_lstsq, _ = similarity(landmarks, "lstsq")
    return compose(t_lstsq, invert(t_lmeds))


def to_crop(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Photo-pixel landmarks in the frame of the crop ``matrix`` (2 x 3) makes."""
    return landmarks @ matrix[:2, :2].T + matrix[:, 2]


def shifted_landmark_matrix(landmarks: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The re-warp of a shipped (lmeds) crop onto the lstsq crop of landmarks moved by ``offset``
    (5 x 2, crop pixels; e.g. another detector's mean offset from MTCNN's): the lstsq similarity from
    the shifted crop-frame landmarks to the template. A zero offset gives :func:`rewarp_matrix`."""
    t_lmeds, _ = similarity(landmarks, "lmeds")
    return estimate_similarity(to_crop(landmarks, t_lmeds) + offset, ARCFACE_TEMPLATE.astype(np.float64) * (SIZE / 112.0))


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``cv2.warpAffine`` with warp_face's settings (bilinear, constant border 0)."""
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def jpeg(image: np.ndarray) -> np.ndarray:
    """The image after the JPEG round trip lfw_112's crops went through."""
    return decode_image(encode_jpeg(image, JPEG_QUALITY))


def lost_fraction(matrix: np.ndarray) -> float:
    """Share of the output pixels a re-warp by ``matrix`` takes (wholly or partly) from outside the
    old crop."""
    mask = warp(np.full((SIZE, SIZE), 255, np.uint8), matrix)
    return float(np.mean(mask < 255))


def matrix_stats(m: np.ndarray) -> tuple[float, float, float]:
    """(rotation in degrees, scale, translation of the crop centre in pixels) of a similarity."""
    scale = math.hypot(m[0, 0], m[1, 0])
    angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    c = np.array([(SIZE - 1) / 2.0, (SIZE - 1) / 2.0])
    shift = float(np.linalg.norm(m[:, :2] @ c + m[:, 2] - c))
    return angle, scale, shift


HALF_PIXEL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])


def half_pixel_round_trip(image: np.ndarray) -> np.ndarray:
    """Shift by (+1/2, +1/2) px and back: the same geometry, two more bilinear resamplings (the
    strongest smoothing a bilinear warp can add)."""
    return warp(warp(image, HALF_PIXEL), invert(HALF_PIXEL))


def off_centre_small_faces(manifest: dict, min_offset: float = 40.0, max_eye_distance: float = 30.0) -> set[str]:
    """Photos whose aligned face is likely *not* the photo's subject: its landmarks' centroid lies more
    than ``min_offset`` px from the median centroid of all photos, and its eyes are less than
    ``max_eye_distance`` px apart (a background face). In the deep-funneled LFW every subject is centred
    at the same place and scale (eye distance 1st percentile 31 px, median 42 px, in the 250-px photos)."""
    rows = {n: parse_landmarks(r[2]) for n, r in manifest.items() if r[0] == "ok"}
    names = list(rows)
    lms = np.stack([rows[n] for n in names])
    centroids = lms.mean(1)
    offset = np.linalg.norm(centroids - np.median(centroids, 0), axis=1)
    eyes = np.linalg.norm(lms[:, 1] - lms[:, 0], axis=1)
    return {n for n, o, e in zip(names, offset, eyes) if o > min_offset and e < max_eye_distance}
