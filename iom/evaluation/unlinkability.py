"""Unlinkability of protected templates (Gomez-Barrero et al., IEEE TIFS 13(6), 2018).

"General Framework to Evaluate Unlinkability in Biometric Template Protection
Systems".  Mated scores compare templates of the same subject protected with
different keys (H_m); non-mated scores compare different subjects (H_nm).
With LR(s) = p(s|H_m) / p(s|H_nm) and the prior ratio omega =
p(H_m) / p(H_nm), the local measure is

    D(s) = 2 * omega * LR(s) / (1 + omega * LR(s)) - 1   where omega * LR(s) > 1, else 0,

and the global measure D_sys = integral of p(s|H_m) * D(s) ds, in [0, 1]
(0: fully unlinkable, 1: fully linkable).  Densities are normalised
histograms on common bins; a bin with mated but no non-mated scores has
D(s) = 1.

Pure NumPy; matplotlib is imported lazily by the plot function only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from arcface.errors import DataFormatError
from arcface.metrics import to_plain
from arcface.plots import ensure_parent, new_figure

__all__ = [
    "UnlinkabilityReport",
    "decidability",
    "save_unlinkability_plot",
    "unlinkability",
]

_MAX_DISCRETE = 256  # "auto" bins: one bin per distinct value up to this many


@dataclass
class UnlinkabilityReport:
    """Result of :func:`unlinkability`; arrays are per bin (``bin_edges`` has one more)."""

    d_sys: float
    bin_centers: np.ndarray
    d_local: np.ndarray
    mated_density: np.ndarray
    nonmated_density: np.ndarray
    n_mated: int
    n_nonmated: int
    bin_edges: np.ndarray
    omega: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; curves as lists."""
        return to_plain({
            "d_sys": self.d_sys,
            "omega": self.omega,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "bin_edges": self.bin_edges,
            "bin_centers": self.bin_centers,
            "d_local": self.d_local,
            "mated_density": self.mated_density,
            "nonmated_density": self.nonmated_density,
        })


def _check_scores(scores: Any, name: str) -> np.ndarray:
    s = np.asarray(scores)
    if s.dtype.kind not in "biuf":
        raise DataFormatError(f"{name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False).ravel()
    if s.size == 0:
        raise DataFormatError(f"{name} is empty")
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise DataFormatError(f"{name} contain {bad} non-finite value(s) (NaN/inf)")
    return s


def _bin_edges(pooled: np.ndarray, n_mated: int, bins: int | str) -> np.ndarray:
    if isinstance(bins, str):
        if bins != "auto":
            raise DataFormatError(f'bins must be "auto" or an int, got {bins!r}')
        u = np.unique(pooled)
        if u.shape[0] == 1:
            return np.array([u[0] - 0.5, u[0] + 0.5])
        if u.shape[0] <= _MAX_DISCRETE:  # discrete scores: one bin per value
            mid = (u[:-1] + u[1:]) / 2
            return np.concatenate(([u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]))
        bins = min(max(n_mated // 10, 10), 100)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise DataFormatError(f'bins must be "auto" or an int >= 1, got {bins!r}')
    return np.histogram_bin_edges(pooled, bins=int(bins))


def unlinkability(
    mated_scores: Any, nonmated_scores: Any, omega: float = 1.0, bins: int | str = "auto"
) -> UnlinkabilityReport:
    """Local D(s) and global D_sys unlinkability from mated / non-mated scores.

    ``bins="auto"``: when the pooled scores take at most 256 distinct values
    (discrete scores such as normalised Hamming similarity) there is one bin per
    value, edges at the midpoints and end bins symmetric about their value, so
    no two values alias; otherwise ``min(max(n_mated // 10, 10), 100)``
    equal-width bins over the pooled range.  An int gives that many equal-width
    bins.  D_sys = sum over bins of p(s|H_m) * D(s) * width, i.e. the fraction
    of mated scores in each bin weighted by D(s).  Raises
    :class:`~arcface.errors.DataFormatError` on empty or non-finite input.
    """
    m = _check_scores(mated_scores, "mated_scores")
    nm = _check_scores(nonmated_scores, "nonmated_scores")
    omega = float(omega)
    if not (math.isfinite(omega) and omega > 0):
        raise DataFormatError(f"omega must be a positive finite number, got {omega}")
    edges = _bin_edges(np.concatenate((m, nm)), m.shape[0], bins)
    width = np.diff(edges)
    frac_m = np.histogram(m, bins=edges)[0] / m.shape[0]
    frac_nm = np.histogram(nm, bins=edges)[0] / nm.shape[0]
    # omega * LR = omega * frac_m / frac_nm (widths cancel); inf where only mated fall.
    with np.errstate(divide="ignore", invalid="ignore"):
        wlr = np.where(frac_m > 0, omega * frac_m / frac_nm, 0.0)
        d_local = np.where(wlr > 1, np.where(np.isinf(wlr), 1.0, (wlr - 1) / (wlr + 1)), 0.0)
    return UnlinkabilityReport(
        d_sys=float(min(1.0, np.sum(frac_m * d_local))),  # float round-off can exceed 1
        bin_centers=(edges[:-1] + edges[1:]) / 2,
        d_local=d_local,
        mated_density=frac_m / width,
        nonmated_density=frac_nm / width,
        n_mated=int(m.shape[0]),
        n_nonmated=int(nm.shape[0]),
        bin_edges=edges,
        omega=omega,
    )


def decidability(genuine: Any, impostor: Any) -> float:
    """Daugman's d' = |mu_g - mu_i| / sqrt((var_g + var_i) / 2), population variances.

    Returns ``inf`` when both variances are 0 and the means differ, ``0.0`` when
    they are also equal.
    """
    g = _check_scores(genuine, "genuine")
    i = _check_scores(impostor, "impostor")
    diff = abs(float(g.mean() - i.mean()))
    spread = math.sqrt((float(g.var()) + float(i.var())) / 2)
    if spread == 0:
        return math.inf if diff > 0 else 0.0
    return diff / spread


def save_unlinkability_plot(
    report: UnlinkabilityReport, path: str | os.PathLike[str], title: str | None = None
) -> str:
    """Plot as in the paper: mated / non-mated score densities and D(s) on a right axis.

    D_sys is shown in the legend.  Parent directories are created; the PNG is
    written to a temporary file and moved into place.  Returns ``path``.
    """
    edges = np.asarray(report.bin_edges)
    if edges.ndim != 1 or edges.shape[0] != np.asarray(report.d_local).shape[0] + 1:
        raise DataFormatError("report has inconsistent bin_edges / d_local")
    out = os.fspath(path)
    ensure_parent(out)

    fig = new_figure((6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.stairs(report.nonmated_density, edges, fill=True, color="tab:red", alpha=0.45,
              label=f"Non-mated (n={report.n_nonmated})")
    ax.stairs(report.mated_density, edges, fill=True, color="tab:green", alpha=0.45,
              label=f"Mated (n={report.n_mated})")
    ax.set_xlabel("Score")
    ax.set_ylabel("Probability density")
    ax2 = ax.twinx()
    ax2.plot(report.bin_centers, report.d_local, color="black", linestyle="--",
             label=f"D\u2194(s), D\u2194sys = {report.d_sys:.3f}")
    ax2.set_ylim(0.0, 1.05)
    ax2.set_ylabel("D\u2194(s)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left",
              fontsize="small")
    ax.set_title(title or f"Unlinkability: D\u2194sys = {report.d_sys:.3f}")
    fig.tight_layout()
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
