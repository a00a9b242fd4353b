"""Five-point geometry: the ArcFace template, the similarity fit, the warp, the centre crop and
the ``"center"`` face-choice score."""

from __future__ import annotations

import cv2
import numpy as np

#: The five ArcFace landmarks in a 112x112 crop (x, y): left eye, right eye, nose tip,
#: left mouth corner, right mouth corner ("left" = smaller x in the image).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_TEMPLATE.setflags(write=False)

CENTER_WEIGHT = 2.0  # score = area * exp(-CENTER_WEIGHT * r**2)


def estimate_similarity(src, dst) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) from
    ``src`` to ``dst`` (both ``n x 2``, n >= 2), by Umeyama's method.

    Returns the ``2 x 3`` float64 matrix ``[s*R | t]`` minimising
    ``sum ||s R src_i + t - dst_i||^2`` over rotations ``R`` (no reflection), ``s >= 0``, ``t``.

    Raises:
        ValueError: shapes differ or are not ``n x 2`` with n >= 2, values are not finite, or
            the source points all coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2 or src.shape != dst.shape:
        raise ValueError(f"expected two n x 2 point arrays (n >= 2), got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    n = src.shape[0]
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    src_var = float((src_c**2).sum()) / n
    if src_var <= 1e-12 * max(1.0, float(np.abs(src).max()) ** 2):
        raise ValueError("the source points coincide: no similarity transform is defined")
    cov = dst_c.T @ src_c / n  # 2x2 cross-covariance
    u, d, vt = np.linalg.svd(cov)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map is a reflection
        signs[-1] = -1.0
    rot = (u * signs) @ vt
    scale = float((d * signs).sum()) / src_var
    trans = dst_mean - scale * rot @ src_mean
    return np.hstack([scale * rot, trans[:, None]])


def landmark_inliers(landmarks, template) -> np.ndarray:
    """Which landmarks a least-median-of-squares similarity fit keeps (OpenCV's
    ``estimateAffinePartial2D(method=LMEDS)``, deterministic); all of them when it fails."""
    _, inliers = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32),
                                            np.asarray(template, np.float32), method=cv2.LMEDS)
    keep = np.ones(len(landmarks), bool) if inliers is None else inliers.ravel().astype(bool)
    return keep if keep.sum() >= 2 else np.ones(len(landmarks), bool)


def warp_face(image_rgb: np.ndarray, landmarks, size: int = 112, method: str = "lmeds") -> np.ndarray:
    """Warp ``image_rgb`` so that its five ``landmarks`` (5 x 2, image coordinates, in
    template order) land on :data:`ARCFACE_TEMPLATE` scaled to ``size``.

    ``method="lmeds"`` (default) fits the least-squares similarity to the landmarks that a
    least-median-of-squares fit keeps, so one misplaced landmark does not tilt the face; this
    is how the project's aligned data sets (``../shared/data``) were made, and the test
    reproduces their crops. ``method="lstsq"`` fits all five points (InsightFace's way).
    Bilinear interpolation, constant border 0. Returns a ``size x size x 3`` uint8 array
    (``size x size`` for a 2-D grey input).
    """
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8:
        raise ValueError(f"warp_face expects a uint8 image, got {image.dtype}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"warp_face expects an HxW or HxWxC image, got shape {image.shape}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be 5 x 2, got {landmarks.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    template = ARCFACE_TEMPLATE.astype(np.float64) * (size / 112.0)
    if method == "lmeds":
        keep = landmark_inliers(landmarks, template)
    elif method == "lstsq":
        keep = np.ones(5, bool)
    else:
        raise ValueError(f"method must be 'lmeds' or 'lstsq', got {method!r}")
    matrix = estimate_similarity(landmarks[keep], template[keep])
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def center_crop(image_rgb: np.ndarray, size: int = 112) -> np.ndarray:
    """The central square of side ``min(H, W)`` resized to ``size x size`` (the fallback when
    no face is found)."""
    image = np.asarray(image_rgb)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(image[top:top + side, left:left + side])
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def center_scores(boxes, height: int, width: int) -> np.ndarray:
    """The ``"center"`` face-choice score of each box (``n x 4``: x1, y1, x2, y2) in an image of
    ``height x width``: ``area * exp(-2 r^2)``, ``r`` the normalised distance of the box centre
    from the image centre (see the module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    half_w, half_h = max(width - 1, 1) / 2.0, max(height - 1, 1) / 2.0
    dx = ((boxes[:, 0] + boxes[:, 2]) / 2.0 - half_w) / half_w
    dy = ((boxes[:, 1] + boxes[:, 3]) / 2.0 - half_h) / half_h
    return area * np.exp(-CENTER_WEIGHT * (dx**2 + dy**2))
