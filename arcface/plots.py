"""ROC / DET curves and score histograms as PNG files (matplotlib, Agg backend).

matplotlib is imported lazily inside each function so importing this module
costs nothing and never touches a display.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from arcface.errors import DataFormatError
from arcface.metrics import VerificationReport

__all__ = ["det_figure", "det_points", "probit", "roc_figure", "save_roc_det", "save_score_histogram"]

_FAR_MIN = 1e-4


def new_figure(figsize: tuple[float, float] = (6.0, 5.0)) -> Any:
    """A matplotlib Figure on the Agg backend (no pyplot global state)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    return Figure(figsize=figsize, dpi=100)


def ensure_parent(path: str) -> None:
    """Create the folder that will hold ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def _label(r: VerificationReport, i: int) -> str:
    name = r.name or f"run{i}"
    return f"{name} (AUC={r.auc:.4f}, EER={r.eer:.4f})"


#: DET axis ticks, in percent (Martin et al. 1997, "The DET curve in assessment of detection
#: task performance": both error rates on normal-deviate axes, labelled in %)
DET_TICKS_PERCENT = (0.01, 0.1, 1, 5, 20, 40, 80)
#: the error-rate range both DET axes show (fractions)
DET_LIMITS = (5e-5, 0.95)


def probit(p) -> np.ndarray:
    """The normal deviate of each probability: ``Φ⁻¹(p)`` (``scipy.stats.norm.ppf``), the DET
    transform; ``-inf`` at 0, ``inf`` at 1."""
    from scipy.special import ndtri  # what scipy.stats.norm.ppf computes, without its checks

    return ndtri(np.asarray(p, np.float64))


def det_points(fpr, tpr) -> tuple[np.ndarray, np.ndarray]:
    """``(probit(FAR), probit(FRR))`` of the ROC points (``FRR = 1 - TAR``) that a normal-deviate
    axis can show: points where either rate is exactly 0 or 1 (infinitely far) are left out."""
    far = np.asarray(fpr, np.float64)
    frr = 1.0 - np.asarray(tpr, np.float64)
    keep = (far > 0) & (far < 1) & (frr > 0) & (frr < 1)
    return probit(far[keep]), probit(frr[keep])


def _det_axis(ax, which: str) -> None:
    ticks = probit(np.asarray(DET_TICKS_PERCENT) / 100.0)
    labels = [f"{t:g}" for t in DET_TICKS_PERCENT]
    lo, hi = probit(DET_LIMITS)
    if which == "x":
        ax.set_xticks(ticks, labels)
        ax.set_xlim(lo, hi)
    else:
        ax.set_yticks(ticks, labels)
        ax.set_ylim(lo, hi)


def _check_reports(reports) -> list:
    reports = list(reports)
    if not reports:
        raise DataFormatError("save_roc_det needs at least one report")
    for r in reports:
        if np.asarray(r.fpr).size == 0 or np.asarray(r.fpr).shape != np.asarray(r.tpr).shape:
            raise DataFormatError(f"report {r.name!r} has no ROC curve (fpr/tpr)")
    return reports


def _legend_below(fig, ax, n: int) -> None:
    """The legend under the axes, outside them (it covers no curve, whatever the number of
    curves); the figure grows by one line of legend per curve."""
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.22 * n)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize="small", frameon=False)
    fig.tight_layout()


def roc_figure(reports: Sequence[VerificationReport]) -> Any:
    """The ROC figure: TAR against FAR on a log FAR axis over [1e-4, 1]; the legend sits under
    the axes, clear of the low-FAR region where the curves differ most."""
    reports = _check_reports(reports)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(reports):
        fpr, tpr = np.asarray(r.fpr), np.asarray(r.tpr)
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], label=_label(r, i))
    ax.set_xscale("log")
    ax.set_xlim(_FAR_MIN, 1.0)
    ax.set_ylim(0.0, 1.005)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title("ROC")
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(fig, ax, len(reports))
    return fig


def det_figure(reports: Sequence[VerificationReport]) -> Any:
    """The DET figure: FRR against FAR, both on normal-deviate (probit) axes labelled in %
    (:data:`DET_TICKS_PERCENT`) over :data:`DET_LIMITS`, with the EER diagonal dotted."""
    reports = _check_reports(reports)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(reports):
        x, y = det_points(r.fpr, r.tpr)
        ax.plot(x, y, label=_label(r, i))
    lo, hi = probit(DET_LIMITS)
    ax.plot([lo, hi], [lo, hi], ":", color="grey", linewidth=0.8, label="_EER line")
    _det_axis(ax, "x")
    _det_axis(ax, "y")
    ax.set_xlabel("False accept rate (FAR, %)")
    ax.set_ylabel("False reject rate (FRR, %)")
    ax.set_title("DET (normal-deviate scale)")
    ax.grid(True, alpha=0.3)
    _legend_below(fig, ax, len(reports))
    return fig


def save_roc_det(
    reports: Sequence[VerificationReport], out_prefix: str | os.PathLike[str]
) -> list[str]:
    """Write ``<prefix>_roc.png`` (:func:`roc_figure`) and ``<prefix>_det.png``
    (:func:`det_figure`); return their paths.

    One curve per report (needs its ``fpr``/``tpr``); the legend shows name, AUC and EER.
    Points that cannot appear on an axis (FAR 0 on the log axis; either rate 0 or 1 on the
    normal-deviate axes) are left out.
    """
    reports = _check_reports(reports)
    prefix = os.fspath(out_prefix)
    roc_path, det_path = f"{prefix}_roc.png", f"{prefix}_det.png"
    ensure_parent(roc_path)
    roc_figure(reports).savefig(roc_path, format="png", bbox_inches="tight")
    det_figure(reports).savefig(det_path, format="png", bbox_inches="tight")
    return [roc_path, det_path]


def save_score_histogram(
    genuine: np.ndarray,
    impostor: np.ndarray,
    path: str | os.PathLike[str],
    title: str = "",
    bins: int = 50,
) -> str:
    """Overlaid density histograms of genuine and impostor scores; returns ``path``.

    Both use the same bin edges over the joint score range.
    """
    g = np.asarray(genuine, dtype=np.float64).ravel()
    im = np.asarray(impostor, dtype=np.float64).ravel()
    if g.size == 0 and im.size == 0:
        raise DataFormatError("no scores to plot")
    both = np.concatenate((g, im))
    if not np.all(np.isfinite(both)):
        raise DataFormatError("scores contain non-finite values (NaN/inf)")
    edges = np.histogram_bin_edges(both, bins=bins)
    out = os.fspath(path)
    ensure_parent(out)

    fig = new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    if g.size:
        ax.hist(g, bins=edges, density=True, alpha=0.5, label=f"genuine (n={g.size})")
    if im.size:
        ax.hist(im, bins=edges, density=True, alpha=0.5, label=f"impostor (n={im.size})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
