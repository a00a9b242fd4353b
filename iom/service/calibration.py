"""Decision thresholds of the template service: 1:1 verification and 1:N identification.

A calibration file (``calibration.json`` next to a shipped hasher) is written by
``scripts/calibrate_iom.py --cfg_path CONFIG`` (:func:`iom.evaluation.calibrate.calibrate`):

=============================  ==========================================================
field                          meaning
=============================  ==========================================================
``threshold``, ``far``         the default 1:1 threshold: lowest similarity accepted at FAR
                               ``far`` on the ``n_impostor`` impostor pairs of the calibration set
``tar``, ``far_resolvable``    its TAR; whether ``far >= 1/n_impostor``
``operating_points``           one per calibrated FAR: ``far``, ``threshold``, ``tar``,
                               ``far_measured``, ``far_resolvable``
``m``, ``q``, ``dataset``      the hasher's size and the calibration set: identities disjoint
                               from training and from the reported evaluation (LFW)
``genuine_similarities``       histogram of genuine similarities (as below, same-identity pairs)
``impostor_similarities``      histogram of impostor similarities: ``counts[k]`` pairs agree
                               on exactly ``k`` of the ``m`` groups (``m + 1`` ints), over
                               every cross-identity pair of the set's images (or the listed
                               impostor pairs when the images have no identity labels)
``n_impostor_similarities``    their number (the histogram's sum)
=============================  ==========================================================

The histogram is key-invariant: with code keying both templates of a comparison are
relabelled by the same per-group permutation, so agreement counts do not depend on the key.

**1:N threshold** (:func:`identification_threshold`). A non-mated probe searched against a
gallery of ``N`` templates is falsely identified when any of its ``N`` scores reaches the
threshold: ``FPIR(t) = 1 - (1 - FAR(t))^N`` for independent comparisons (and at most
``N * FAR(t)`` whatever their dependence; the two differ by under ``fpir / 2`` relative at the
targets used). ``FAR(t)`` is not the empirical tail, which is 0 beyond the highest impostor
score and noisy near it, but its one-sided Clopper–Pearson upper confidence bound (95% by
default) from the histogram. Choosing the smallest ``t`` whose bound meets the target keeps
the 95% guarantee (the bounds are monotone in ``t``, so the chosen ``t`` is too low only if the
bound at the last truly-too-low ``t`` undercovers) under the bound's assumption of independent
pairs; pairs sharing an image are not, which the bound ignores. No model extrapolates the
tail: a target below what ``n`` pairs resolve (about ``3 / n`` at 95%) raises
:class:`InvalidInputError` rather than trusting a fit (on LFW the far tail is made of
mislabelled pairs — one person filed under two names — that no fitted model predicts).
The result is never below the 1:1 threshold.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from iom.errors import InvalidInputError

#: confidence of the upper bound on the impostor tail
CONFIDENCE = 0.95
#: the command that writes a calibration file (with its impostor histogram)
CALIBRATION_COMMAND = "python scripts/calibrate_iom.py --cfg_path CONFIG"
#: cross-identity pairs at most in the histogram (more images: a random subset of them)
MAX_IMPOSTOR_PAIRS = 200_000_000


def load_calibration(source, m: int, q: int) -> dict:
    """A calibration dict (or its JSON file) for a hasher of size (m, q), checked."""
    cal = source
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source) as f:
                cal = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"calibration file {source}: {e}") from None
    if not isinstance(cal, dict) or cal.get("threshold") is None:
        raise InvalidInputError("calibration needs a 'threshold' (none was reachable at its FAR?)")
    if (cal.get("m"), cal.get("q")) != (m, q):
        raise InvalidInputError(f"calibration is for m={cal.get('m')}, q={cal.get('q')}, "
                                f"the hasher is m={m}, q={q}")
    return cal


# ---------------------------------------------------------------------------- operating points
@dataclass(frozen=True)
class OperatingPoint:
    """A 1:1 decision threshold and what the calibration set says of it: the expected TAR and
    FAR (measured on the calibration's genuine and impostor pairs; ``None`` when the file has
    no genuine histogram), the target FAR it was chosen for (``None`` for a threshold given
    explicitly) and the calibration set (``dataset``)."""

    threshold: float
    far_target: float | None
    expected_tar: float | None
    expected_far: float | None
    dataset: str

    def describe(self) -> str:
        """One line: ``threshold 0.29 (FAR 1e-3 point; expected TAR 0.97, FAR 8.1e-04 on ...)``."""
        what = f"FAR {self.far_target:g} operating point" if self.far_target is not None else "explicit threshold"
        tar = "unknown" if self.expected_tar is None else f"{self.expected_tar:.3f}"
        far = "unknown" if self.expected_far is None else f"{self.expected_far:.1e}"
        return f"threshold {self.threshold:.4f} ({what}; expected TAR {tar}, FAR {far} on {self.dataset})"

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "far_target": self.far_target, "expected_tar": self.expected_tar,
                "expected_far": self.expected_far, "calibration_set": self.dataset}


def rates_at(calibration: dict, threshold: float) -> tuple[float | None, float | None]:
    """(TAR, FAR) at ``threshold`` from the calibration's histograms (None where absent)."""
    m = calibration["m"]
    k = min(max(math.ceil(threshold * m - 1e-9), 0), m + 1)

    def rate(key):
        counts = calibration.get(key)
        if counts is None:
            return None
        counts = np.asarray(counts, np.int64)
        return float(counts[k:].sum() / counts.sum()) if counts.sum() else None

    return rate("genuine_similarities"), rate("impostor_similarities")


def operating_points(calibration: dict) -> list[dict]:
    """The calibration's operating points (older files: their single ``far``/``threshold``)."""
    points = calibration.get("operating_points")
    if points:
        return list(points)
    return [{"far": calibration.get("far"), "threshold": calibration["threshold"], "tar": calibration.get("tar")}]


def select_operating_point(calibration: dict, far: float | None = None,
                           threshold: float | None = None) -> OperatingPoint:
    """The operating point at target ``far`` (one the calibration holds), or an explicit
    ``threshold`` in [0, 1], or the calibration's default (``far``/``threshold``)."""
    if far is not None and threshold is not None:
        raise InvalidInputError("give a target FAR or a threshold, not both")
    dataset = str(calibration.get("dataset", "the calibration set"))
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0 <= threshold <= 1:
            raise InvalidInputError(f"threshold must be a similarity in [0, 1], got {threshold!r}")
        tar, measured = rates_at(calibration, float(threshold))
        return OperatingPoint(float(threshold), None, tar, measured, dataset)
    if far is None:
        far = calibration.get("far")
    points = operating_points(calibration)
    match = [p for p in points if p.get("far") is not None and far is not None and math.isclose(p["far"], far)]
    if not match:
        have = ", ".join(f"{p['far']:g}" for p in points if p.get("far") is not None) or "none"
        raise InvalidInputError(f"no operating point at FAR {far!r} in the calibration (it has: {have}); "
                                f"give one of those, or an explicit threshold (rewrite the calibration "
                                f"with: {CALIBRATION_COMMAND})")
    t = float(match[0]["threshold"])
    tar, measured = rates_at(calibration, t)
    return OperatingPoint(t, float(match[0]["far"]), tar if tar is not None else match[0].get("tar"),
                          measured, dataset)


# ---------------------------------------------------------------------------- writing
def impostor_histogram(codes: np.ndarray, q: int, labels: np.ndarray,
                       max_pairs: int = MAX_IMPOSTOR_PAIRS, seed: int = 0,
                       chunk: int = 2048) -> tuple[np.ndarray, int]:
    """``(counts, n_images)``: ``counts[k]`` (k = 0..m) of the pairs of rows of ``codes`` (n, m)
    with different ``labels`` that agree on ``k`` groups, over every such pair, or over those of
    a random subset of ``n_images`` rows when there are more than ``max_pairs`` pairs. Block
    one-hot products (exact integer counts in float32), one triangle only."""
    from iom.evaluation.matching import one_hot_codes

    codes, labels = np.asarray(codes), np.asarray(labels)
    if codes.ndim != 2 or labels.shape != (len(codes),):
        raise ValueError(f"codes must be (n, m) with one label per row, got {codes.shape} and {labels.shape}")
    n, m = codes.shape
    if n * (n - 1) // 2 > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(n, int((1 + math.isqrt(1 + 8 * max_pairs)) // 2),
                                                          replace=False))
        codes, labels, n = codes[keep], labels[keep], len(keep)
    _, ids = np.unique(labels, return_inverse=True)
    counts = np.zeros(m + 1, np.int64)
    for i in range(0, n, chunk):
        rows = one_hot_codes(codes[i:i + chunk], q)
        for j in range(i, n, chunk):
            agree = np.rint(rows @ one_hot_codes(codes[j:j + chunk], q).T).astype(np.int64)
            keep = ids[i:i + chunk, None] != ids[None, j:j + chunk]
            if i == j:
                keep &= np.arange(len(rows))[:, None] < np.arange(agree.shape[1])[None, :]
            counts += np.bincount(agree[keep], minlength=m + 1)
    return counts, n


# ---------------------------------------------------------------------------- 1:N thresholds
def _histogram(calibration: dict) -> np.ndarray:
    if not isinstance(calibration, dict):
        raise InvalidInputError(f"calibration must be a dict, got {type(calibration).__name__}")
    counts = calibration.get("impostor_similarities")
    if counts is None:
        raise InvalidInputError("calibration has no 'impostor_similarities' (written since 1:N "
                                f"identification thresholds; rewrite it with {CALIBRATION_COMMAND})")
    m = calibration.get("m")
    if not isinstance(m, Integral) or isinstance(m, bool) or m < 1:
        raise InvalidInputError(f"calibration 'm' must be a positive integer, got {m!r}")
    try:
        arr = np.asarray(counts)
    except (TypeError, ValueError):
        arr = np.asarray([], object)
    if (arr.shape != (m + 1,) or arr.dtype.kind not in "iu" or (arr < 0).any() or arr.sum() == 0):
        raise InvalidInputError(f"calibration 'impostor_similarities' must be {m + 1} non-negative "
                                "integer counts (k = 0..m agreeing groups), not all 0")
    n = calibration.get("n_impostor_similarities")
    if n is not None and n != int(arr.sum()):
        raise InvalidInputError(f"calibration 'n_impostor_similarities' is {n!r} but its histogram "
                                f"holds {int(arr.sum())} similarities")
    return arr.astype(np.int64)


def _check_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, Real) or not 0 < confidence < 1:
        raise InvalidInputError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def impostor_tail_bound(calibration: dict, confidence: float = CONFIDENCE) -> np.ndarray:
    """``U[k]`` (k = 0..m): one-sided Clopper–Pearson upper bound, at ``confidence``, on the
    impostor FAR at similarity ``k/m`` (the probability of ``>= k`` agreeing groups)."""
    from scipy.stats import beta

    counts, confidence = _histogram(calibration), _check_confidence(confidence)
    n = int(counts.sum())
    exceed = np.cumsum(counts[::-1])[::-1]
    upper = np.ones(len(counts))
    some = exceed < n
    upper[some] = beta.ppf(confidence, exceed[some] + 1, n - exceed[some])
    return upper


def _fpir(far: np.ndarray, gallery_size: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -np.expm1(gallery_size * np.log1p(-np.asarray(far, np.float64)))


def _check_search(gallery_size, fpir) -> tuple[int, float]:
    if isinstance(gallery_size, bool) or not isinstance(gallery_size, Integral) or gallery_size < 1:
        raise InvalidInputError(f"gallery_size must be a positive integer, got {gallery_size!r}")
    if isinstance(fpir, bool) or not isinstance(fpir, Real) or not 0 < fpir < 1:
        raise InvalidInputError(f"fpir must be a number in (0, 1), got {fpir!r}")
    return int(gallery_size), float(fpir)


def _one_to_one(calibration: dict) -> float:
    t = calibration.get("threshold")
    if isinstance(t, bool) or not isinstance(t, Real) or not 0 <= t <= 1:
        raise InvalidInputError(f"calibration needs a 1:1 'threshold' in [0, 1], got {t!r} "
                                f"(written by {CALIBRATION_COMMAND})")
    return float(t)


def identification_threshold(calibration: dict, gallery_size: int, fpir: float,
                             confidence: float = CONFIDENCE) -> float:
    """The smallest similarity threshold (a multiple of ``1/m``, never below the 1:1
    ``threshold``) at which a non-mated search of a gallery of ``gallery_size`` templates is a
    false positive with estimated probability ``1 - (1 - U)^N <= fpir``, ``U`` the upper
    confidence bound on the impostor FAR (:func:`impostor_tail_bound`).

    Raises:
        InvalidInputError: bad ``gallery_size``/``fpir``/``confidence``, a calibration without
            ``impostor_similarities`` or a 1:1 ``threshold``, or a target below what its
            impostor pairs can bound (see :func:`max_gallery_size`).
    """
    gallery_size, fpir = _check_search(gallery_size, fpir)
    upper = impostor_tail_bound(calibration, confidence)
    floor = _one_to_one(calibration)
    m = len(upper) - 1
    ok = np.flatnonzero(_fpir(upper, gallery_size) <= fpir)
    if len(ok) == 0:
        far = -math.expm1(math.log1p(-fpir) / gallery_size)
        raise InvalidInputError(
            f"fpir={fpir:g} for gallery_size={gallery_size} needs a per-comparison FAR <= {far:.3g}, "
            f"below what the calibration's {int(_histogram(calibration).sum())} impostor similarities "
            f"bound ({upper[-1]:.3g} at {confidence:g} confidence): use a larger fpir, a smaller "
            f"gallery (at most {max_gallery_size(calibration, fpir, confidence)}) or a calibration on "
            "more impostor pairs")
    return max(1.0 - (m - int(ok[0])) / m, floor)


def max_gallery_size(calibration: dict, fpir: float, confidence: float = CONFIDENCE) -> int:
    """The largest gallery for which :func:`identification_threshold` at ``fpir`` exists
    (0 if none does)."""
    _, fpir = _check_search(1, fpir)
    lowest = float(impostor_tail_bound(calibration, confidence)[-1])
    if lowest >= 1.0:
        return 0
    n = math.floor(math.log1p(-fpir) / math.log1p(-lowest))
    while n > 0 and _fpir(lowest, n) > fpir:        # floating-point guard at the boundary
        n -= 1
    return int(n)


def estimated_fpir(calibration: dict, threshold: float, gallery_size: int,
                   confidence: float = CONFIDENCE) -> float:
    """The FPIR bound ``1 - (1 - U(threshold))^N`` of a search at ``threshold``."""
    gallery_size, _ = _check_search(gallery_size, 0.5)
    upper = impostor_tail_bound(calibration, confidence)
    m = len(upper) - 1
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not math.isfinite(threshold):
        raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}")
    k = min(max(math.ceil(threshold * m - 1e-9), 0), m + 1)
    return 0.0 if k > m else float(_fpir(upper[k], gallery_size))
