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


def duplicate_identities(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> list[tuple]:
    """Pairs of labels that name one person twice (label noise: a celebrity filed under two
    identities): more than half of their cross pairs have an embedding cosine at least the
    lower quartile of the set's genuine cosines and above 99.9% of (a sample of) its impostor
    cosines, i.e. most of them look like a typical genuine pair and unlike impostors (for two
    different people almost none do: on the held-out CelebA set the one duplicate found scores
    86%, the next pair 14%; the impostor bound keeps a weak extractor, whose genuine and
    impostor cosines overlap, from flagging lookalikes). Their cross pairs are then neither
    genuine nor impostor pairs: they would fill the impostor tail with one person's matches
    and inflate every low-FAR threshold."""
    x = np.asarray(embeddings, np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids, inverse = np.unique(np.asarray(labels), return_inverse=True)
    genuine = []
    for k in range(len(ids)):
        rows = x[inverse == k]
        if len(rows) > 1:
            genuine.append((rows @ rows.T)[np.triu_indices(len(rows), k=1)])
    if not genuine:
        return []
    # a cross pair "looks genuine" at or above the genuine lower quartile, and (for a weak
    # extractor, where genuine and impostor cosines overlap) above all but 0.1% of impostor pairs
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(x), (2, 200_000))
    cross = inverse[i] != inverse[j]
    impostor = np.einsum("ij,ij->i", x[i[cross]], x[j[cross]])
    floor = float(np.quantile(np.concatenate(genuine), 0.25))
    if len(impostor):
        floor = max(floor, float(np.quantile(impostor, 0.999)))
    alike = np.zeros((len(ids), len(ids)), np.int64)
    for i in range(0, len(x), chunk):
        close = np.argwhere(x[i:i + chunk] @ x.T >= floor)
        a, b = inverse[close[:, 0] + i], inverse[close[:, 1]]
        keep = (close[:, 0] + i < close[:, 1]) & (a != b)
        np.add.at(alike, (np.minimum(a, b)[keep], np.maximum(a, b)[keep]), 1)
    n = np.bincount(inverse)
    hit = np.argwhere(alike * 2 > np.outer(n, n))
    return [(ids[a].item(), ids[b].item()) for a, b in hit]


def _merge(labels: np.ndarray, pairs) -> np.ndarray:
    """Labels with each pair's two labels made one (union of chains)."""
    parent: dict = {}

    def root(a):
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(v) for v in np.asarray(labels).tolist()])


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
    as the top-level ``far``/``threshold``/``tar``, and both similarity histograms. Pairs of
    labels that name one person (:func:`duplicate_identities`, listed in the file) give no
    impostor pairs."""
    from iom.service.calibration import impostor_histogram

    codes = hasher.encode(embeddings, None)
    duplicates = duplicate_identities(embeddings, labels)
    impostor, n_images = impostor_histogram(codes, hasher.q, _merge(labels, duplicates))
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
            "duplicate_identities": [list(p) for p in duplicates],
            "impostor_similarities_source": f"all cross-identity pairs of the {len(codes)} images "
                                            f"({n_ids} identities) of {source}, less those of "
                                            f"{len(duplicates)} pair(s) of labels naming one person"}


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

    extractor = evaluation_source(cfg, hasher)
    x, y, source = calibration_embeddings(cfg, extractor)
    log(f"[calibrate] {len(x)} images of {len(np.unique(y))} identities: {source}")
    cal = calibrate(hasher, x, y, cfg["calibration_fars"], cfg["target_far"], source)
    where = cfg["identification_dataset"]
    if check and where and not str(where).endswith(".npz"):
        folder = extractor.embed_folder(where)
        if folder.labels is not None:
            name = os.path.basename(os.path.normpath(where))
            log(f"[calibrate] checking the thresholds on every pair of {name} ({len(folder.embeddings)} images)")
            cal["check"] = check_operating_points(cal, hasher, folder.embeddings, folder.labels, name)
    return cal
