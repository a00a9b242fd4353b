"""Closed- and open-set identification from a probe x gallery similarity matrix.

Conventions (higher similarity = more alike; scores may tie, e.g. normalised
Hamming similarities):

* A probe is *mated* when its label is enrolled in the gallery, else *non-mated*.
* Rank of a mated probe = 1 + number of gallery entries of OTHER identities
  scoring ``>=`` the best score among its own identity's entries.  Ties are
  broken pessimistically (against the probe).
* Average precision ranks all gallery entries by score; within a tie the
  entries of other identities come first (pessimistic).  mAP is the mean over
  mated probes.
* Open-set: a probe is accepted at threshold ``t`` when its top score ``>= t``.
  FPIR(t) = fraction of non-mated probes accepted; DIR(t) = fraction of mated
  probes with rank 1 and best mated score ``>= t``.

Pure NumPy; no deep-learning framework is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from arcface.errors import DataFormatError
from arcface.metrics import check_far, far_key, far_resolvable, markdown_table, to_plain

__all__ = [
    "IdentificationReport",
    "format_identification_table",
    "identification_report",
    "split_gallery_probes",
]

# Upper bound on the elements of one (probes, relevant, gallery) comparison block.
_CHUNK_ELEMENTS = 1 << 22


def _check_labels(labels: Any, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataFormatError(f"{name} must be 1-D, got shape {y.shape}")
    if y.shape[0] == 0:
        raise DataFormatError(f"{name} is empty")
    return y


def split_gallery_probes(
    labels: Any, gallery_per_class: int = 1, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices into ``(gallery_idx, mated_probe_idx, nonmated_probe_idx)``.

    A class with at least ``gallery_per_class + 1`` samples enrols
    ``gallery_per_class`` of them in the gallery (its first samples in input
    order, or a random choice when ``seed`` is given) and the rest become mated
    probes.  Every sample of a smaller class is a non-mated probe: its identity
    is not enrolled.  The three int64 index arrays are sorted ascending and
    partition ``range(len(labels))``.
    """
    y = _check_labels(labels, "labels")
    if isinstance(gallery_per_class, bool) or not isinstance(gallery_per_class, (int, np.integer)):
        raise DataFormatError(f"gallery_per_class must be an int, got {gallery_per_class!r}")
    if gallery_per_class < 1:
        raise DataFormatError(f"gallery_per_class must be >= 1, got {gallery_per_class}")
    n = y.shape[0]
    _, ids = np.unique(y, return_inverse=True)
    ids = ids.ravel()
    visit = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    order = visit[np.argsort(ids[visit], kind="stable")]  # by class, visit order inside
    counts = np.bincount(ids)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - starts[ids[order]]  # position within its class
    enrolled = counts[ids] > gallery_per_class
    gallery = enrolled & (pos < gallery_per_class)
    return (
        np.flatnonzero(gallery),
        np.flatnonzero(enrolled & ~gallery),
        np.flatnonzero(~enrolled),
    )


@dataclass
class IdentificationReport:
    """What :func:`identification_report` measures.

    ``cmc`` maps rank ``k`` to the fraction of mated probes with rank ``<= k``.
    ``dir_at_far`` / ``fpir`` / ``threshold`` are ``None`` when there are no
    non-mated probes (``dir_reason`` says why); ``threshold`` is ``inf`` when
    no observed score meets the FAR target.  ``far_resolvable`` is false when
    ``far < 1 / n_nonmated``.  ``mated_ranks`` / ``mated_ap`` hold the
    per-probe values (mated probes in input order).
    """

    n_gallery: int
    n_mated: int
    n_nonmated: int
    cmc: dict[int, float]
    mean_ap: float
    far: float
    dir_at_far: float | None
    fpir: float | None
    threshold: float | None
    far_resolvable: bool
    dir_reason: str | None = None
    mated_ranks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    mated_ap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self, include_per_probe: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict; an infinite threshold becomes ``None``."""
        d: dict[str, Any] = {
            "n_gallery": self.n_gallery,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "cmc": self.cmc,
            "mean_ap": self.mean_ap,
            "far": self.far,
            "dir_at_far": self.dir_at_far,
            "fpir": self.fpir,
            "threshold": self.threshold,
            "far_resolvable": self.far_resolvable,
            "dir_reason": self.dir_reason,
        }
        if include_per_probe:
            d["mated_ranks"] = self.mated_ranks
            d["mated_ap"] = self.mated_ap
        return to_plain(d)


def _gallery_table(gallery_ids: np.ndarray, n_ids: int) -> np.ndarray:
    """``(n_ids, max entries)`` gallery indices per identity, padded with -1."""
    counts = np.bincount(gallery_ids, minlength=n_ids)
    order = np.argsort(gallery_ids, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    table = np.full((n_ids, int(counts.max())), -1, dtype=np.int64)
    sorted_ids = gallery_ids[order]
    table[sorted_ids, np.arange(order.shape[0]) - starts[sorted_ids]] = order
    return table


def _mated_stats(
    sim: np.ndarray, probe_rows: np.ndarray, probe_ids: np.ndarray,
    gallery_ids: np.ndarray, table: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank, average precision and best mated score of each mated probe.

    For the ``j``-th best (1-based) of a probe's ``R`` own-identity entries,
    with ``N_j`` other-identity entries scoring ``>=`` it, the pessimistic
    position is ``j + N_j``: AP = mean_j j / (j + N_j) and rank = 1 + N_1.
    Work is O(n_mated * R_max * n_gallery), in row chunks.
    """
    n, r_max = probe_rows.shape[0], table.shape[1]
    ranks = np.empty(n, dtype=np.int64)
    ap = np.empty(n)
    best = np.empty(n)
    j = np.arange(1, r_max + 1, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // (r_max * gallery_ids.shape[0]))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        s = np.asarray(sim[probe_rows[lo:hi]], dtype=np.float64)
        pid = probe_ids[lo:hi]
        idx = table[pid]  # (c, r_max), -1 = padding
        valid = idx >= 0
        own = np.where(valid, np.take_along_axis(s, np.maximum(idx, 0), axis=1), np.nan)
        own = -np.sort(-own, axis=1)  # descending, NaN padding last
        other = gallery_ids[None, :] != pid[:, None]  # (c, G)
        n_ge = np.count_nonzero(
            (s[:, None, :] >= own[:, :, None]) & other[:, None, :], axis=2
        )  # NaN compares False: padding gets 0
        n_own = valid.sum(axis=1)
        ranks[lo:hi] = 1 + n_ge[:, 0]
        ap[lo:hi] = np.sum(np.where(j <= n_own[:, None], j / (j + n_ge), 0.0), axis=1) / n_own
        best[lo:hi] = own[:, 0]
    return ranks, ap, best


def identification_report(
    similarity: Any,
    gallery_labels: Any,
    probe_labels: Any,
    far: float = 1e-2,
    ranks: Sequence[int] = (1, 5, 10),
) -> IdentificationReport:
    """Rank-k CMC and mAP of mated probes, and open-set DIR at FPIR ``<= far``.

    ``similarity`` is ``(n_probes, n_gallery)``, higher = more similar; probes
    whose label is not in ``gallery_labels`` are non-mated.  See the module
    docstring for ranks, ties and AP.

    Open-set threshold: ``t`` is the smallest observed score (best mated score
    of a mated probe or top score of a non-mated probe; ``inf`` if none
    qualifies) with FPIR(t) ``<= far``.  Any threshold between the highest
    rejected non-mated top score and ``t`` gives the same FPIR and DIR.
    Raises :class:`~arcface.errors.DataFormatError` on malformed input or when
    no probe is mated.
    """
    g = _check_labels(gallery_labels, "gallery_labels")
    p = _check_labels(probe_labels, "probe_labels")
    sim = np.asarray(similarity)
    if sim.shape != (p.shape[0], g.shape[0]):
        raise DataFormatError(
            f"similarity must have shape (n_probes, n_gallery) = {(p.shape[0], g.shape[0])},"
            f" got {sim.shape}"
        )
    if sim.dtype.kind not in "biuf":
        raise DataFormatError(f"similarity must be real numbers, got dtype {sim.dtype}")
    if not np.all(np.isfinite(sim)):
        raise DataFormatError("similarity contains non-finite values (NaN/inf)")
    far = check_far(far)
    rank_list = [int(k) for k in ranks]
    if any(k < 1 for k in rank_list):
        raise DataFormatError(f"ranks must be >= 1, got {list(ranks)}")

    classes, gallery_ids = np.unique(g, return_inverse=True)
    gallery_ids = gallery_ids.ravel()
    slot = np.minimum(np.searchsorted(classes, p), classes.shape[0] - 1)
    mated = classes[slot] == p
    mated_rows = np.flatnonzero(mated)
    if mated_rows.shape[0] == 0:
        raise DataFormatError("no mated probe: no probe label is enrolled in the gallery")
    table = _gallery_table(gallery_ids, classes.shape[0])
    mated_ranks, mated_ap, best = _mated_stats(
        sim, mated_rows, slot[mated_rows], gallery_ids, table
    )
    cmc = {k: float(np.mean(mated_ranks <= k)) for k in rank_list}

    nonmated_top = sim.max(axis=1)[~mated].astype(np.float64)
    n_nm = int(nonmated_top.shape[0])
    dir_at_far = fpir = threshold = None
    reason = None
    if n_nm == 0:
        reason = "no non-mated probes: open-set DIR is undefined"
    else:
        allowed = int(math.floor(far * n_nm + 1e-9))  # false positives permitted
        top_desc = np.sort(nonmated_top)[::-1]
        bound = top_desc[allowed] if allowed < n_nm else -math.inf
        cand = np.concatenate((best, nonmated_top))
        cand = cand[cand > bound]
        threshold = float(cand.min()) if cand.size else math.inf
        fpir = float(np.mean(nonmated_top >= threshold))
        dir_at_far = float(np.mean((mated_ranks == 1) & (best >= threshold)))
    return IdentificationReport(
        n_gallery=int(g.shape[0]),
        n_mated=int(mated_rows.shape[0]),
        n_nonmated=n_nm,
        cmc=cmc,
        mean_ap=float(np.mean(mated_ap)),
        far=far,
        dir_at_far=dir_at_far,
        fpir=fpir,
        threshold=threshold,
        far_resolvable=far_resolvable(n_nm, far),
        dir_reason=reason,
        mated_ranks=mated_ranks,
        mated_ap=mated_ap,
    )


def format_identification_table(
    reports: Sequence[IdentificationReport], names: Sequence[str]
) -> str:
    """Markdown pipe table, one row per report: Rank-k for every rank, mAP, DIR, counts.

    Values have 4 decimals; ``n/a`` for a missing rank or undefined DIR; a
    trailing ``*`` marks a DIR whose FAR target is below 1/#non-mated probes.
    When the reports use different FAR targets, each DIR cell names its own.
    """
    reports, names = list(reports), [str(n) for n in names]
    if not reports:
        raise DataFormatError("format_identification_table needs at least one report")
    if len(names) != len(reports):
        raise DataFormatError(f"{len(reports)} reports but {len(names)} names")
    rank_cols = sorted({k for r in reports for k in r.cmc})
    fars = {far_key(r.far) for r in reports}
    same_far = len(fars) == 1
    limited = False

    def dir_cell(r: IdentificationReport) -> str:
        nonlocal limited
        if r.dir_at_far is None:
            return "n/a"
        mark = ""
        if not r.far_resolvable:
            mark, limited = "*", True
        return f"{r.dir_at_far:.4f}{mark}" + ("" if same_far else f" @{far_key(r.far)}")

    dir_head = f"DIR@FAR={next(iter(fars))}" if same_far else "DIR@FAR"
    header = ["Method"] + [f"Rank-{k}" for k in rank_cols] + ["mAP", dir_head, "Gallery", "Mated",
                                                                "Non-mated"]
    rows = [
        [name]
        + [f"{r.cmc[k]:.4f}" if k in r.cmc else "n/a" for k in rank_cols]
        + [f"{r.mean_ap:.4f}", dir_cell(r), str(r.n_gallery), str(r.n_mated), str(r.n_nonmated)]
        for name, r in zip(names, reports)
    ]
    text = markdown_table(header, rows)
    if limited:
        text += "\n\n* FAR target below 1/#non-mated probes: estimate limited."
    return text
