"""The figures of a row of the alignment study: the full LFW protocol, the upstream's own
VAL@FAR=1e-3, the exact McNemar test, and the markdown table of the rows."""

from __future__ import annotations

import math

import numpy as np

from arcface.metrics import evaluate_scores, far_key
from bench.common import markdown_table

FARS = (1e-3, 1e-4)


def facenet_val(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray, far_target: float = 1e-3):
    """VAL@FAR as the upstream (FaceNet/InsightFace ``calculate_val``) computes it: on squared L2
    distance of unit vectors (``2 - 2 cos``), thresholds ``0:4:0.001``, the threshold giving
    ``far_target`` on the 9 training folds interpolated linearly, VAL on the test fold; mean, std."""
    dist = 2.0 - 2.0 * np.asarray(scores, np.float64)
    thresholds = np.arange(0, 4, 0.001)
    vals = []
    for fid in np.unique(folds):
        train, test = folds != fid, folds == fid
        d, y = dist[train], issame[train]
        far_train = np.array([np.sum((d < t) & ~y) / np.sum(~y) for t in thresholds])
        if far_train.max() >= far_target:  # scipy's interp1d no longer takes repeated x: for each
            # FAR keep its largest threshold, then interpolate linearly as upstream did
            far_u, last = np.unique(far_train[::-1], return_index=True)
            threshold = float(np.interp(far_target, far_u, thresholds[::-1][last]))
        else:
            threshold = 0.0
        vals.append(np.sum((dist[test] < threshold) & issame[test]) / np.sum(issame[test]))
    return float(np.mean(vals)), float(np.std(vals))


def report_row(name: str, scores: np.ndarray, pairs, subset: np.ndarray) -> dict:
    """Full-protocol metrics of one score set, and its accuracy on ``subset`` with the same
    per-fold thresholds (each fold's threshold learned on the other 9 folds of all 6,000 pairs)."""
    rep = evaluate_scores(scores, pairs.issame, folds=pairs.folds, name=name, score_name="cosine",
                          far_targets=FARS)
    thr = np.asarray(rep.fold_thresholds)[pairs.folds]  # fold ids are 0..9, visited in order
    correct = (scores >= thr) == pairs.issame
    val, val_std = facenet_val(scores, pairs.issame, pairs.folds)
    row = {
        "name": name,
        "accuracy": rep.accuracy, "accuracy_std": rep.accuracy_std,
        "fold_accuracies": rep.fold_accuracies,
        "eer": rep.eer, "auc": rep.auc,
        "tar": {far_key(f): rep.tar_at_far[far_key(f)]["tar"] for f in FARS},
        "tar_resolvable": {far_key(f): rep.tar_at_far[far_key(f)]["resolvable"] for f in FARS},
        "val_1e-3_upstream_protocol": val, "val_1e-3_std": val_std,
        "errors": int((~correct).sum()),
        "subset_accuracy": float(correct[subset].mean()) if subset.any() else None,
        "subset_errors": int((~correct[subset]).sum()),
    }
    row["_correct"] = correct
    return row


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def fmt_pct(x, std=None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def markdown(rows: list[dict], base: dict, n_subset: int) -> str:
    head = ["variant", "accuracy % (± std, 10 folds)", "Δacc vs shipped (paired, ± std of fold Δ)", "EER %",
            "TAR@FAR=1e-3 %", "TAR@FAR=1e-4 % *", "VAL@1e-3 % (upstream protocol)",
            f"acc. on the {n_subset} pairs with an LMEDS-changed photo %"]
    rows_out = []
    for r in rows:
        d = np.asarray(r["fold_accuracies"]) - np.asarray(base["fold_accuracies"])
        rows_out.append([r["name"], fmt_pct(r["accuracy"], r["accuracy_std"]),
                         "—" if r is base else f"{100 * d.mean():+.2f} ± {100 * d.std():.2f}",
                         fmt_pct(r["eer"]), fmt_pct(r["tar"]["1e-03"]), fmt_pct(r["tar"]["1e-04"]),
                         fmt_pct(r["val_1e-3_upstream_protocol"], r["val_1e-3_std"]),
                         f"{fmt_pct(r['subset_accuracy'])} ({r['subset_errors']} err.)"])
    lines = markdown_table(head, rows_out)
    return "\n".join(lines)
