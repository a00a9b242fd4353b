"""Operating points of a hasher, calibrated on identities disjoint from training and test.

:func:`calibrate` computes the histograms of genuine and impostor similarities over every
pair of a labelled calibration set (agreeing groups ``k = 0..m``), and for each target FAR
the operating point: the lowest similarity ``k/m`` whose measured FAR is at most the target,
with its measured FAR and TAR. :func:`check_operating_points` measures the same thresholds
on another labelled set (the reported evaluation), to show how they transfer. The file
format is documented in :mod:`iom.service.calibration`.
"""

from __future__ import annotations

import numpy as np

from arcface.metrics import far_resolvable


def genuine_histogram(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``counts[k]`` (k = 0..m): pairs of rows of ``codes`` (n, m) with the same label that
    agree on exactly ``k`` groups, over every such pair."""
    codes, labels = np.asarray(codes), np.asarray(labels)
    m = codes.shape[1]
    counts = np.zeros(m + 1, np.int64)
    order = np.argsort(labels, kind="stable")
    codes, labels = codes[order], labels[order]
    bounds = np.flatnonzero(np.diff(labels)) + 1
    for group in np.split(codes, bounds):
        if len(group) < 2:
            continue
        agree = (group[:, None, :] == group[None, :, :]).sum(axis=2)
        upper = np.triu_indices(len(group), k=1)
        counts += np.bincount(agree[upper], minlength=m + 1)
    return counts


def tail(counts) -> np.ndarray:
    """``P(similarity >= k/m)`` for k = 0..m+1 from a histogram (the last entry is 0)."""
    counts = np.asarray(counts, np.float64)
    exceed = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    return exceed / max(counts.sum(), 1.0)


def operating_point(genuine, impostor, far: float) -> dict:
    """The lowest threshold ``k/m`` whose measured FAR on ``impostor`` is ``<= far``, with
    that FAR and the TAR on ``genuine`` (histograms over k = 0..m)."""
    m = len(impostor) - 1
    fars, tars = tail(impostor), tail(genuine)
    k = int(np.flatnonzero(fars <= far)[0])          # fars[m + 1] == 0, so there is one
    n_impostor = int(np.sum(impostor))
    return {"far": float(far), "threshold": k / m, "tar": float(tars[k]), "far_measured": float(fars[k]),
            "far_resolvable": bool(far_resolvable(n_impostor, far))}


def calibrate(hasher, embeddings: np.ndarray, labels: np.ndarray, fars, default_far: float,
              source: str) -> dict:
    """The calibration file of ``hasher`` on labelled ``embeddings`` (training key: similarities
    are key-invariant): operating points at ``fars``, the default one (``default_far``) also
    as the top-level ``far``/``threshold``/``tar``, and both similarity histograms."""
    from iom.service.calibration import impostor_histogram

    codes = hasher.encode(embeddings, None)
    impostor, n_images = impostor_histogram(codes, hasher.q, labels)
    if n_images != len(codes):
        raise ValueError("calibrate: the impostor histogram was subsampled; use fewer images")
    genuine = genuine_histogram(codes, labels)
    if genuine.sum() == 0:
        raise ValueError(f"calibrate: {source} has no identity with two images (no genuine pair)")
    points = [operating_point(genuine, impostor, far) for far in sorted(set(fars), reverse=True)]
    default = operating_point(genuine, impostor, default_far)
    n_ids = len(np.unique(labels))
    return {"far": default["far"], "threshold": default["threshold"], "tar": default["tar"],
            "far_resolvable": default["far_resolvable"], "dataset": source,
            "n_images": int(len(codes)), "n_identities": int(n_ids),
            "n_genuine": int(genuine.sum()), "n_impostor": int(impostor.sum()),
            "m": hasher.m, "q": hasher.q, "operating_points": points,
            "genuine_similarities": [int(c) for c in genuine],
            "impostor_similarities": [int(c) for c in impostor],
            "n_impostor_similarities": int(impostor.sum()),
            "impostor_similarities_source": f"all cross-identity pairs of the {len(codes)} images "
                                            f"({n_ids} identities) of {source}"}


def check_operating_points(calibration: dict, hasher, embeddings: np.ndarray, labels: np.ndarray,
                           name: str) -> dict:
    """The calibration's thresholds measured on another labelled set (every pair of it):
    ``{"dataset", "n_genuine", "n_impostor", "points": [{far, threshold, tar, far_measured}]}``."""
    from iom.service.calibration import impostor_histogram

    codes = hasher.encode(embeddings, None)
    impostor, _ = impostor_histogram(codes, hasher.q, labels)
    genuine = genuine_histogram(codes, labels)
    m = hasher.m
    fars, tars = tail(impostor), tail(genuine)
    points = []
    for p in calibration["operating_points"]:
        k = int(round(p["threshold"] * m))
        points.append({"far": p["far"], "threshold": p["threshold"], "tar": float(tars[k]),
                       "far_measured": float(fars[k])})
    return {"dataset": name, "n_genuine": int(genuine.sum()), "n_impostor": int(impostor.sum()),
            "points": points}


def format_operating_points(calibration: dict, check: dict | None = None) -> str:
    """A table of the operating points (and, with ``check``, the same thresholds elsewhere)."""
    head = f"operating points on {calibration['dataset']} ({calibration['n_genuine']:,} genuine, " \
           f"{calibration['n_impostor']:,} impostor pairs)"
    lines = [head, "target FAR   threshold   TAR      measured FAR" +
             (f"   | on {check['dataset']}: TAR   FAR" if check else "")]
    for i, p in enumerate(calibration["operating_points"]):
        mark = " (default)" if p["far"] == calibration["far"] else ""
        line = f"{p['far']:<12g} {p['threshold']:<11.4f} {p['tar']:<8.4f} {p['far_measured']:<12.2e}"
        if check:
            c = check["points"][i]
            line += f"   | {c['tar']:.4f}   {c['far_measured']:.2e}"
        lines.append(line + mark)
    return "\n".join(lines)


def calibrate_config(cfg, hasher, check: bool = True, log=print) -> dict:
    """The calibration of ``hasher`` on its config's calibration data
    (:func:`iom.features.calibration_embeddings`: held-out training identities or
    ``calibration_dataset``), with, when ``check`` and the config names an identity folder as
    ``identification_dataset``, the same thresholds measured on it (``"check"``)."""
    import os

    from iom.features import calibration_embeddings, evaluation_source

    x, y, source = calibration_embeddings(cfg)
    log(f"[calibrate] {len(x)} images of {len(np.unique(y))} identities: {source}")
    cal = calibrate(hasher, x, y, cfg["calibration_fars"], cfg["target_far"], source)
    where = cfg["identification_dataset"]
    if check and where and not str(where).endswith(".npz"):
        folder = evaluation_source(cfg).embed_folder(where)
        if folder.labels is not None:
            name = os.path.basename(os.path.normpath(where))
            log(f"[calibrate] checking the thresholds on every pair of {name} ({len(folder.embeddings)} images)")
            cal["check"] = check_operating_points(cal, hasher, folder.embeddings, folder.labels, name)
    return cal
