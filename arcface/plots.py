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

__all__ = ["save_roc_det", "save_score_histogram"]

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


def save_roc_det(
    reports: Sequence[VerificationReport], out_prefix: str | os.PathLike[str]
) -> list[str]:
    """Write ``<prefix>_roc.png`` and ``<prefix>_det.png``; return their paths.

    ROC: TAR vs FAR with a log FAR axis on [1e-4, 1].  DET: FRR vs FAR, both
    axes log on [1e-4, 1].  One curve per report (needs its ``fpr``/``tpr``);
    the legend shows name, AUC and EER.  Points at exactly 0 cannot appear on
    a log axis and are left out.
    """
    reports = list(reports)
    if not reports:
        raise DataFormatError("save_roc_det needs at least one report")
    for r in reports:
        if np.asarray(r.fpr).size == 0 or np.asarray(r.fpr).shape != np.asarray(r.tpr).shape:
            raise DataFormatError(f"report {r.name!r} has no ROC curve (fpr/tpr)")
    prefix = os.fspath(out_prefix)
    roc_path, det_path = f"{prefix}_roc.png", f"{prefix}_det.png"
    ensure_parent(roc_path)

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
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(roc_path, format="png")

    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(reports):
        fpr, frr = np.asarray(r.fpr), 1.0 - np.asarray(r.tpr)
        keep = (fpr > 0) & (frr > 0)
        ax.plot(fpr[keep], frr[keep], label=_label(r, i))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(_FAR_MIN, 1.0)
    ax.set_ylim(_FAR_MIN, 1.0)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("False reject rate (FRR)")
    ax.set_title("DET")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(det_path, format="png")
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
