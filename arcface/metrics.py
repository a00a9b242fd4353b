"""Verification metrics for pair scores (higher score = more likely the same identity).

Everything here works on a 1-D array of pair ``scores`` and a boolean array
``issame`` (genuine pair = ``True``).  The same code evaluates cosine
similarities of ArcFace embeddings (stage 1) and normalised Hamming
similarities of IoM hash codes (stage 2): only the ``score_name`` changes.

Decision rule everywhere: ``score >= threshold`` -> predicted "same".

Pure NumPy; no deep-learning framework is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from arcface.errors import DataFormatError

__all__ = [
    "VerificationReport",
    "auc",
    "best_threshold",
    "cosine_similarity",
    "eer",
    "evaluate_scores",
    "far_key",
    "far_resolvable",
    "format_table",
    "kfold_accuracy",
    "roc",
    "tar_at_far",
]

DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _check_pairs(
    scores: Any, issame: Any, *, need_both: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores float64, issame bool)`` or raise :class:`DataFormatError`."""
    s = np.asarray(scores)
    y = np.asarray(issame)
    if s.ndim != 1:
        raise DataFormatError(f"scores must be 1-D, got shape {s.shape}")
    if y.ndim != 1:
        raise DataFormatError(f"issame must be 1-D, got shape {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise DataFormatError(
            f"scores and issame differ in length: {s.shape[0]} != {y.shape[0]}"
        )
    if s.shape[0] == 0:
        raise DataFormatError("no pairs given (empty scores)")
    if s.dtype.kind not in "biuf":
        raise DataFormatError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise DataFormatError(f"scores contain {bad} non-finite value(s) (NaN/inf)")
    if y.dtype.kind == "b":
        pass
    elif y.dtype.kind in "iuf":
        if not np.all((y == 0) | (y == 1)):
            raise DataFormatError("issame must be boolean or contain only 0/1")
        y = y == 1
    else:
        raise DataFormatError(f"issame must be boolean, got dtype {y.dtype}")
    if need_both:
        n_same = int(np.count_nonzero(y))
        if n_same == 0:
            raise DataFormatError("need at least one genuine pair (issame=True)")
        if n_same == y.shape[0]:
            raise DataFormatError("need at least one impostor pair (issame=False)")
    return s, y


# --------------------------------------------------------------------------- #
# Similarity
# --------------------------------------------------------------------------- #
def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays -> ``(n,)`` float64.

    Rows are normalised before the dot product (no overflow for large
    norms).  A pair involving an all-zero row scores ``0.0`` (never NaN).
    1-D inputs of shape ``(d,)`` are accepted and give shape ``()``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise DataFormatError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise DataFormatError(f"expected (n, d) or (d,) arrays with d>0, got {a.shape}")
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        raise DataFormatError("embeddings must be real-valued")
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DataFormatError("embeddings contain non-finite values (NaN/inf)")

    def _unit(x: np.ndarray) -> np.ndarray:
        # Scale by the max-abs first so the norm cannot overflow/underflow.
        m = np.max(np.abs(x), axis=-1, keepdims=True)
        x = np.divide(x, m, out=np.zeros_like(x), where=m > 0)
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

    cos = np.sum(_unit(a) * _unit(b), axis=-1)
    return np.clip(cos, -1.0, 1.0)


# --------------------------------------------------------------------------- #
# Threshold selection / accuracy
# --------------------------------------------------------------------------- #
def _candidates_and_correct(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All distinct cut points (ascending) and the number of correct decisions at each.

    With distinct sorted scores ``u_1 < ... < u_m`` the candidates are
    ``u_1 - g_1/2``, the midpoints ``(u_i + u_{i+1})/2`` and ``u_m + g_m/2``,
    where ``g_1 = u_2 - u_1`` and ``g_m = u_m - u_{m-1}`` (``g = 1`` when
    ``m == 1``).  Every partition ``{score >= t}`` is realised by exactly one
    candidate.  Cost: one sort plus cumulative sums.
    """
    u, inv = np.unique(s, return_inverse=True)
    m = u.shape[0]
    pos = np.bincount(inv, weights=y.astype(np.float64), minlength=m)
    neg = np.bincount(inv, weights=(~y).astype(np.float64), minlength=m)
    n_pos = pos.sum()
    # Cut after distinct value i (i = -1 .. m-1): predicted "same" iff score > u_i.
    neg_le = np.concatenate(([0.0], np.cumsum(neg)))  # negatives <= u_i
    pos_le = np.concatenate(([0.0], np.cumsum(pos)))  # positives <= u_i
    correct = neg_le + (n_pos - pos_le)
    if m == 1:
        g_lo = g_hi = 1.0
    else:
        g_lo, g_hi = u[1] - u[0], u[-1] - u[-2]
    cand = np.concatenate(([u[0] - g_lo / 2], (u[:-1] + u[1:]) / 2, [u[-1] + g_hi / 2]))
    return cand, correct


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Exact accuracy-maximising threshold for the rule ``score >= t -> same``.

    Searches every distinct cut point (below-min, midpoints between
    consecutive distinct scores, above-max) in O(n log n).

    Tie rule (deterministic): among the candidates reaching the maximum
    accuracy, take the one closest to their median; with an even number of
    optima the two middle ones are equally close and the lower is taken
    (i.e. the lower median of the sorted optimal candidates).

    Returns ``(threshold, accuracy)``.  Single-class input is allowed.
    """
    s, y = _check_pairs(scores, issame, need_both=False)
    cand, correct = _candidates_and_correct(s, y)
    best = correct.max()
    opt = np.flatnonzero(correct == best)  # ascending candidate order
    idx = opt[(opt.shape[0] - 1) // 2]
    return float(cand[idx]), float(best / s.shape[0])


def _default_folds(n: int, n_folds: int) -> np.ndarray:
    """Fold id per pair: ``n_folds`` consecutive chunks (sizes as sklearn KFold)."""
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def kfold_accuracy(
    scores: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray | None = None,
    n_folds: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """InsightFace/LFW protocol: threshold from the other folds, accuracy on this one.

    ``folds`` gives each pair's fold id (any integers; folds are visited in
    ascending id order).  If ``None``, ``n_folds`` consecutive, near-equal
    chunks in input order are used (like ``KFold(n_folds, shuffle=False)``).

    Returns ``(fold_accuracies, fold_thresholds)``, float64 arrays of length
    = number of folds.
    """
    s, y = _check_pairs(scores, issame, need_both=False)
    n = s.shape[0]
    if folds is None:
        if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)):
            raise DataFormatError(f"n_folds must be an int, got {n_folds!r}")
        if not 2 <= n_folds <= n:
            raise DataFormatError(f"n_folds must be in [2, {n}], got {n_folds}")
        f = _default_folds(n, int(n_folds))
    else:
        f = np.asarray(folds)
        if f.ndim != 1 or f.shape[0] != n:
            raise DataFormatError(f"folds must be 1-D of length {n}, got shape {f.shape}")
        if f.dtype.kind not in "iu":
            raise DataFormatError(f"folds must be integer fold ids, got dtype {f.dtype}")
    ids = np.unique(f)
    if ids.shape[0] < 2:
        raise DataFormatError("need at least 2 distinct folds")
    accs = np.empty(ids.shape[0])
    thrs = np.empty(ids.shape[0])
    for k, fid in enumerate(ids):
        test = f == fid
        thr, _ = best_threshold(s[~test], y[~test])
        accs[k] = np.mean((s[test] >= thr) == y[test])
        thrs[k] = thr
    return accs, thrs


# --------------------------------------------------------------------------- #
# ROC-based metrics
# --------------------------------------------------------------------------- #
def _roc_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, thresholds), thresholds decreasing from +inf."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last = np.concatenate((np.flatnonzero(np.diff(s_sorted)), [s.shape[0] - 1]))
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return (
        np.concatenate(([0], fps)).astype(np.float64),
        np.concatenate(([0], tps)).astype(np.float64),
        np.concatenate(([np.inf], s_sorted[last])),
    )


def roc(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC: ``(fpr, tpr, thresholds)``, one point per distinct score.

    Point ``i`` is the rule ``score >= thresholds[i]``; ``thresholds[0]`` is
    ``+inf`` (point (0, 0)).  Same as ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)``.  FAR = fpr, TAR = tpr, FRR = 1 - tpr.
    """
    s, y = _check_pairs(scores, issame)
    fps, tps, thr = _roc_counts(s, y)
    return fps / fps[-1], tps / tps[-1], thr


def _auc_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids) = P(genuine > impostor) + 0.5 P(tie)."""
    fpr, tpr, _ = roc(scores, issame)
    return _auc_from_roc(fpr, tpr)


def _eer_from_roc(fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    frr = 1.0 - tpr
    d = fpr - frr  # -1 at the (0,0) point, +1 at (1,1): always crosses 0
    i = int(np.argmax(d >= 0))
    if d[i] == 0:
        return float(fpr[i]), float(thr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    e = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    if np.isinf(thr[i - 1]):
        th = thr[i]
    else:
        th = thr[i - 1] + t * (thr[i] - thr[i - 1])
    return float(e), float(th)


def eer(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold: ``(eer, threshold)``.

    Finds the first pair of consecutive ROC points (decreasing threshold)
    where ``FAR - FRR`` changes sign and linearly interpolates FAR, FRR and
    the threshold with the same fraction ``t``; an exact FAR == FRR point is
    returned as is.  If the lower bracket is the ``+inf`` point, the
    threshold of the upper point is returned.
    """
    return _eer_from_roc(*roc(scores, issame))


def _tar_from_roc(
    fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray, n_neg: int, far: float
) -> tuple[float, float]:
    ok = fpr * n_neg <= far * n_neg + 1e-9  # compare in counts: fp <= far * N
    if not np.any(ok):
        return 0.0, math.inf
    best = tpr[ok].max()
    i = int(np.flatnonzero(ok & (tpr == best))[0])
    return float(tpr[i]), float(thr[i])


def check_far(far: float) -> float:
    """``far`` as a float, :class:`DataFormatError` unless it lies in [0, 1]."""
    far = float(far)
    if not (0.0 <= far <= 1.0):
        raise DataFormatError(f"far must be in [0, 1], got {far}")
    return far


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> tuple[float, float]:
    """Largest TAR among ROC points with FAR <= ``far``: ``(tar, threshold)``.

    Among points with that TAR the highest threshold (lowest FAR) is
    returned.  If nothing qualifies, ``(0.0, inf)``.  With N impostor
    pairs the empirical FAR moves in steps of 1/N, so for ``far < 1/N``
    only FAR = 0 qualifies and the estimate is limited (see
    :func:`far_resolvable`).
    """
    s, y = _check_pairs(scores, issame)
    far = check_far(far)
    fpr, tpr, thr = roc(s, y)
    return _tar_from_roc(fpr, tpr, thr, int(np.count_nonzero(~y)), far)


def far_resolvable(n_impostor: int, far: float) -> bool:
    """True when ``far >= 1 / n_impostor`` (the FAR target is measurable)."""
    return n_impostor > 0 and far * n_impostor >= 1.0 - 1e-9


def far_key(far: float) -> str:
    """Dict key for a FAR target: ``1e-3 -> "1e-03"`` (more digits if needed)."""
    key = f"{far:.0e}"
    if float(key) != far:
        key = f"{far:.6g}"
    return key


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #
def to_plain(x: Any) -> Any:
    """Convert to JSON-safe plain Python; non-finite floats become ``None``."""
    if isinstance(x, dict):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_plain(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


@dataclass
class VerificationReport:
    """Everything :func:`evaluate_scores` measures for one score set.

    ``accuracy``/``accuracy_std`` are the mean / population std (ddof=0, as in
    InsightFace) of ``fold_accuracies``; ``threshold`` is the mean of
    ``fold_thresholds``.  ``tar_at_far`` maps ``far_key(far)`` to
    ``{"tar", "threshold", "resolvable"}``.  ``fpr``/``tpr``/
    ``roc_thresholds`` hold the full ROC curve.
    """

    name: str
    score_name: str
    n_pairs: int
    n_same: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold: float
    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: dict[str, dict[str, Any]]
    fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    roc_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def n_diff(self) -> int:
        """Number of impostor pairs."""
        return self.n_pairs - self.n_same

    def to_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict of plain floats/ints/lists.

        Infinite thresholds (e.g. a TAR of 0) are written as ``None``.  The
        ROC arrays are only included when ``include_curves`` is true.
        """
        d: dict[str, Any] = {
            "name": self.name,
            "score_name": self.score_name,
            "n_pairs": self.n_pairs,
            "n_same": self.n_same,
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": self.fold_accuracies,
            "fold_thresholds": self.fold_thresholds,
            "threshold": self.threshold,
            "auc": self.auc,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "tar_at_far": self.tar_at_far,
        }
        if include_curves:
            d["fpr"] = self.fpr
            d["tpr"] = self.tpr
            d["roc_thresholds"] = self.roc_thresholds
        return to_plain(d)


def evaluate_scores(
    scores: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray | None = None,
    name: str = "",
    score_name: str = "score",
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    n_folds: int = 10,
) -> VerificationReport:
    """Evaluate pair scores (higher = more similar) into a :class:`VerificationReport`.

    Used for cosine similarities of embeddings and, unchanged, for any other
    similarity such as normalised Hamming similarity of hash codes.  ``folds``
    / ``n_folds`` as in :func:`kfold_accuracy`.  Raises
    :class:`~arcface.errors.DataFormatError` on malformed input (length or
    dimension mismatch, non-finite scores, missing genuine or impostor pairs).
    """
    s, y = _check_pairs(scores, issame, need_both=True)
    targets = [check_far(f) for f in far_targets]
    accs, thrs = kfold_accuracy(s, y, folds=folds, n_folds=n_folds)
    fps, tps, roc_thr = _roc_counts(s, y)
    n_neg, n_pos = int(fps[-1]), int(tps[-1])
    fpr, tpr = fps / n_neg, tps / n_pos
    e, e_thr = _eer_from_roc(fpr, tpr, roc_thr)
    tars: dict[str, dict[str, Any]] = {}
    for far in targets:
        tar, thr = _tar_from_roc(fpr, tpr, roc_thr, n_neg, far)
        tars[far_key(far)] = {
            "tar": tar,
            "threshold": thr,
            "resolvable": far_resolvable(n_neg, far),
        }
    return VerificationReport(
        name=str(name),
        score_name=str(score_name),
        n_pairs=int(s.shape[0]),
        n_same=n_pos,
        accuracy=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        fold_accuracies=[float(a) for a in accs],
        fold_thresholds=[float(t) for t in thrs],
        threshold=float(np.mean(thrs)),
        auc=_auc_from_roc(fpr, tpr),
        eer=e,
        eer_threshold=e_thr,
        tar_at_far=tars,
        fpr=fpr,
        tpr=tpr,
        roc_thresholds=roc_thr,
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned Markdown pipe table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def format_table(reports: Sequence[VerificationReport]) -> str:
    """Markdown pipe table: rows Accuracy/Std/EER/AUC/Threshold/TAR@FAR=1e-3, one column per report.

    Values have 4 decimals; ``n/a`` if a report lacks the FAR=1e-3 entry, and
    a trailing ``*`` marks a TAR whose FAR target is below 1/#impostors.
    """
    reports = list(reports)
    if not reports:
        raise DataFormatError("format_table needs at least one report")
    key = far_key(1e-3)
    limited = False

    def tar_cell(r: VerificationReport) -> str:
        nonlocal limited
        entry = r.tar_at_far.get(key)
        if entry is None:
            return "n/a"
        mark = ""
        if not entry.get("resolvable", True):
            mark, limited = "*", True
        return f"{entry['tar']:.4f}{mark}"

    header = ["Metric"] + [r.name or f"run{i}" for i, r in enumerate(reports)]
    rows = [
        ["Accuracy"] + [f"{r.accuracy:.4f}" for r in reports],
        ["Std"] + [f"{r.accuracy_std:.4f}" for r in reports],
        ["EER"] + [f"{r.eer:.4f}" for r in reports],
        ["AUC"] + [f"{r.auc:.4f}" for r in reports],
        ["Threshold"] + [f"{r.threshold:.4f}" for r in reports],
        [f"TAR@FAR={key.replace('e-0', 'e-')}"] + [tar_cell(r) for r in reports],
    ]
    text = markdown_table(header, rows)
    if limited:
        text += "\n\n* FAR target below 1/#impostor pairs: estimate limited."
    return text
