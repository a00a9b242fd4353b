"""Calibration files and the 1:N identification threshold (iom.service.calibration)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from iom.defaults import DEFAULT_HASHER
from iom.evaluation.report import PairData, calibration, pair_identities
from iom.service.calibration import (CONFIDENCE, estimated_fpir, identification_threshold,
                                     impostor_histogram, impostor_tail_bound, load_calibration,
                                     max_gallery_size)
from iom.errors import InvalidInputError
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["iom_mobilefacenet_ms1m_512x8", "iom_mobilefacenet_ms1m_64x8"]


def toy(counts, threshold=0.25, **extra) -> dict:
    return {"threshold": threshold, "m": len(counts) - 1, "q": 2,
            "impostor_similarities": list(counts), **extra}


def shipped(name: str = DEFAULT_HASHER) -> dict:
    return json.loads((REPO / "models" / name / "calibration.json").read_text())


def reference_upper(exceed: int, n: int, confidence: float) -> float:
    """Clopper-Pearson one-sided upper bound by bisection on the binomial CDF."""
    if exceed == n:
        return 1.0
    lo, hi = exceed / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom.cdf(exceed, n, mid) > 1 - confidence else (lo, mid)
    return hi


def reference_threshold(uppers, floor, gallery_size, fpir):
    """The 1:N threshold by brute force: first k whose bound meets the target."""
    m = len(uppers) - 1
    for k, far in enumerate(uppers):
        if 1 - (1 - far) ** gallery_size <= fpir:
            return max(k / m, floor)
    return None


# ---------------------------------------------------------------------------- the threshold
def test_a_hand_computed_histogram():
    cal = toy([90, 10, 0, 0, 0])                  # n = 100; 10 pairs agree on 1 group of 4
    upper = impostor_tail_bound(cal)
    assert upper[0] == 1.0
    assert binom.cdf(10, 100, upper[1]) == pytest.approx(0.05, rel=1e-6)   # CP: P(X <= 10 | U) = α
    assert upper[2:] == pytest.approx(1 - 0.05 ** (1 / 100))               # no exceedance: 0.0295
    assert identification_threshold(cal, 1, 0.2) == 0.25                    # U[1] = 0.158 <= 0.2
    assert identification_threshold(cal, 1, 0.1) == 0.5                     # U[1] too high
    assert identification_threshold(cal, 2, 0.06) == 0.5                    # 1-(1-0.0295)^2 = 0.058
    assert identification_threshold(toy([90, 10, 0, 0, 0], threshold=0.75), 1, 0.2) == 0.75  # 1:1 floor
    assert max_gallery_size(cal, 0.06) == 2 and max_gallery_size(cal, 0.02) == 0
    with pytest.raises(InvalidInputError, match=r"gallery_size=3 .*\(at most 2\)"):
        identification_threshold(cal, 3, 0.06)
    assert estimated_fpir(cal, 0.5, 2) == pytest.approx(1 - (0.05 ** (1 / 100)) ** 2)
    assert estimated_fpir(cal, 1.5, 2) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_binomial_reference(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(4, 40))
    counts = rng.multinomial(int(rng.integers(50, 5000)), binom.pmf(np.arange(m + 1), m, rng.uniform(0.1, 0.4)))
    floor = float(rng.integers(0, m // 2)) / m
    cal = toy(counts, threshold=floor)
    uppers = [reference_upper(int(counts[k:].sum()), int(counts.sum()), CONFIDENCE) for k in range(m + 1)]
    assert impostor_tail_bound(cal) == pytest.approx(uppers, rel=1e-9, abs=1e-15)
    for gallery_size in (1, 3, 10):
        for fpir in (0.5, 0.1, 0.03):
            ref = reference_threshold(uppers, floor, gallery_size, fpir)
            if ref is None:
                with pytest.raises(InvalidInputError, match="fpir"):
                    identification_threshold(cal, gallery_size, fpir)
            else:
                assert identification_threshold(cal, gallery_size, fpir) == pytest.approx(ref, abs=1e-12)


def test_with_many_pairs_the_bound_meets_the_true_binomial_tail():
    """A histogram of 1e12 Binomial(m, p) impostor pairs: the threshold is the exact one (the
    one of the true tail), or one step above it (the confidence margin), never below."""
    m, p = 128, 0.14
    pmf = binom.pmf(np.arange(m + 1), m, p)
    cal = toy(np.rint(pmf * 1e12).astype(np.int64), threshold=0.0)
    for gallery_size in (10, 100, 1000):
        for fpir in (1e-2, 1e-3):
            exact = 1 - (1 - binom.sf(np.arange(m + 1) - 1, m, p)) ** gallery_size
            k_ref = int(np.flatnonzero(exact <= fpir)[0])
            k = round(identification_threshold(cal, gallery_size, fpir) * m)
            assert k in (k_ref, k_ref + 1) and exact[k] <= fpir


def test_monotone_and_never_below_the_one_to_one_threshold():
    for name in SHIPPED:
        cal = shipped(name)
        grid = [[identification_threshold(cal, n, f) for n in (1, 10, 100, 1000, 2000)]
                for f in (0.5, 1e-1, 1e-2, 1e-3)]
        assert np.all(np.diff(grid, axis=1) >= 0)                       # larger gallery: higher
        assert np.all(np.diff(grid, axis=0) >= 0)                       # smaller fpir: higher
        assert np.min(grid) == cal["threshold"]                         # never below 1:1
        assert identification_threshold(cal, 1, 0.5) == cal["threshold"]
        assert identification_threshold(cal, 1000, 1e-2) > cal["threshold"]
        for t in np.ravel(grid):
            assert t == 1.0 - round((1 - t) * cal["m"]) / cal["m"]     # a step of the service's scores


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("gallery_size", [0, -1, 1.5, True, "10", None])
def test_bad_gallery_size(gallery_size):
    with pytest.raises(InvalidInputError, match="gallery_size"):
        identification_threshold(shipped(), gallery_size, 1e-2)


@pytest.mark.parametrize("fpir", [0, 1, -0.1, 1.5, float("nan"), True, "0.01", None])
def test_bad_fpir(fpir):
    with pytest.raises(InvalidInputError, match="fpir"):
        identification_threshold(shipped(), 10, fpir)


def test_bad_calibrations():
    good = shipped()
    old = {k: v for k, v in good.items() if k != "impostor_similarities"}
    with pytest.raises(InvalidInputError, match=r"no 'impostor_similarities'.*calibrate_iom.py"):
        identification_threshold(old, 10, 1e-2)
    load_calibration(old, old["m"], old["q"])                           # 1:1 still loads
    for bad in ([1, 2, 3], [-1] + [1] * good["m"], [0] * (good["m"] + 1), [0.5] * (good["m"] + 1), "x"):
        with pytest.raises(InvalidInputError, match="'impostor_similarities' must be"):
            identification_threshold({**good, "impostor_similarities": bad}, 10, 1e-2)
    with pytest.raises(InvalidInputError, match="'n_impostor_similarities'"):
        identification_threshold({**good, "n_impostor_similarities": 5}, 10, 1e-2)
    with pytest.raises(InvalidInputError, match="'threshold'"):
        identification_threshold({**good, "threshold": None}, 10, 1e-2)
    with pytest.raises(InvalidInputError, match="'m'"):
        identification_threshold({**good, "m": None}, 10, 1e-2)
    with pytest.raises(InvalidInputError, match="dict"):
        identification_threshold([1, 2], 10, 1e-2)
    with pytest.raises(InvalidInputError, match="confidence"):
        identification_threshold(good, 10, 1e-2, confidence=1.0)


def test_targets_beyond_the_calibration_raise():
    cal = shipped()
    limit = max_gallery_size(cal, 1e-3)
    assert 1000 < limit < 10 ** 6
    assert identification_threshold(cal, limit, 1e-3) <= 1.0
    with pytest.raises(InvalidInputError, match=rf"at most {limit}\)"):
        identification_threshold(cal, limit + 1, 1e-3)


# ---------------------------------------------------------------------------- the shipped files
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_calibration_files_hold_the_histogram(name):
    spec = json.loads((REPO / "models" / name / "hasher.json").read_text())
    cal = load_calibration(str(REPO / "models" / name / "calibration.json"), spec["m"], spec["q"])
    counts = np.asarray(cal["impostor_similarities"])
    assert counts.shape == (cal["m"] + 1,) and cal["n_impostor_similarities"] == counts.sum() >= 10 ** 6
    # the 1:1 threshold's FAR on the big sample: 8e-4 (512x8) and 2.6e-3 (64x8), vs its target
    # 1e-3 on 3,000 pairs; the 1:N threshold at N = 1 bounds it properly
    empirical = counts[round(cal["threshold"] * cal["m"]):].sum() / counts.sum()
    assert empirical <= cal["far"] * 3
    k = round(identification_threshold(cal, 1, cal["far"]) * cal["m"])
    assert counts[k:].sum() / counts.sum() <= cal["far"]


@pytest.mark.parametrize("gallery_size,probes", [(10, 200_000), (100, 100_000), (1000, 20_000)])
def test_simulated_non_mated_searches_meet_the_target(gallery_size, probes):
    """Non-mated searches of the default hasher's impostor distribution: each probe draws
    ``gallery_size`` impostor scores from the histogram; a false positive when the best one
    reaches the threshold. The observed FPIR is at most the target (within noise) and near it."""
    fpir = 1e-2
    cal = shipped()
    m, counts = cal["m"], np.asarray(cal["impostor_similarities"])
    t = identification_threshold(cal, gallery_size, fpir)
    rng = np.random.default_rng(gallery_size)
    cdf = np.cumsum(counts) / counts.sum()
    best = np.zeros(probes, np.int64)
    for start in range(0, probes, 2000):
        draws = np.searchsorted(cdf, rng.random((min(2000, probes - start), gallery_size)), side="right")
        best[start:start + 2000] = draws.max(axis=1)
    observed = np.mean(1.0 - (m - best) / m >= t)
    noise = 4 * math.sqrt(fpir / probes)
    assert fpir / 3 < observed <= fpir + noise, (t, observed)
    exact = 1 - (1 - counts[round(t * m):].sum() / counts.sum()) ** gallery_size
    assert observed == pytest.approx(exact, abs=noise)


def test_real_lfw_non_mated_searches_meet_the_target():
    """Real non-mated LFW searches (probes of people outside a random gallery of one image per
    person) with the default hasher; needs LFW and its cached embeddings (not in CI). In-sample:
    the histogram comes from the same images."""
    from arcface.data.verification_sets import load_verification_set
    from arcface.verification import unique_items
    from iom.config import load_stage2_config
    from iom.evaluation.matching import hamming_similarity_matrix
    from iom.features import evaluation_source
    from iom.hashing.hasher import DeepIoMHasher

    lfw = shared_data("lfw_112")
    cfg = load_stage2_config(str(REPO / "configs" / f"{DEFAULT_HASHER}.yaml"))
    extractor = evaluation_source(cfg)
    pairset = load_verification_set(str(lfw))
    items, left, right = unique_items(pairset)
    cache = os.path.join(cfg["cache_dir"], f"pairs_{pairset.name}_{extractor._fingerprint(items, False)}.npz")
    if not os.path.isfile(cache):
        pytest.skip(f"LFW embeddings of {cfg['stage1_model']} are not cached ({cache})")
    embeddings = extractor.embed_items(items, tag=f"pairs_{pairset.name}").embeddings
    ids = pair_identities(items, left, right, pairset.issame)
    hasher = DeepIoMHasher.load(str(REPO / "models" / DEFAULT_HASHER))
    codes = hasher.codes(embeddings)
    cal, people, rng = shipped(), np.unique(ids), np.random.default_rng(0)
    for gallery_size, fpir in [(100, 1e-2), (1000, 1e-2)]:
        t = identification_threshold(cal, gallery_size, fpir)
        hits = total = 0
        for _ in range(5):
            chosen = rng.choice(people, gallery_size, replace=False)
            gallery = [rng.choice(np.flatnonzero(ids == p)) for p in chosen]
            probes = np.flatnonzero(~np.isin(ids, chosen))
            best = hamming_similarity_matrix(codes[probes], codes[gallery], hasher.q).max(axis=1)
            hits, total = hits + int((best >= t - 1e-6).sum()), total + len(probes)
        assert hits / total <= 1.25 * fpir, (gallery_size, hits, total)


# ---------------------------------------------------------------------------- writing
def brute_force_histogram(codes, labels):
    n, m = codes.shape
    counts = np.zeros(m + 1, np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] != labels[j]:
                counts[np.count_nonzero(codes[i] == codes[j])] += 1
    return counts


def test_impostor_histogram_counts_every_cross_identity_pair_once():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(37, 6))
    labels = rng.integers(0, 9, size=37).astype(str)
    counts, n_images = impostor_histogram(codes, 4, labels, chunk=8)
    assert n_images == 37 and np.array_equal(counts, brute_force_histogram(codes, labels))
    counts, n_images = impostor_histogram(codes, 4, labels, max_pairs=100)   # a subset of images
    assert n_images == 14 and 0 < counts.sum() <= 91
    with pytest.raises(ValueError, match="one label per row"):
        impostor_histogram(codes, 4, labels[:5])


def test_calibration_writes_the_histogram():
    class Fixed:  # a "hasher" whose codes are given
        m, q = 6, 4

        def encode(self, embeddings, key):
            return np.asarray(embeddings, np.int64)

    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(12, 6))
    ids = np.repeat(np.array(["a", "b", "c", "d"]), 3)
    left, right = np.array([0, 3, 0, 1, 6]), np.array([1, 4, 3, 9, 10])
    issame = ids[left] == ids[right]
    data = PairData("toy", codes, left, right, issame, None, ids)
    cal = calibration(data, Fixed(), far=0.5)
    assert cal["impostor_similarities"] == brute_force_histogram(codes, ids).tolist()
    assert cal["n_impostor_similarities"] == 54 and cal["n_impostor"] == 3
    assert "12 images (4 identities)" in cal["impostor_similarities_source"]
    json.dumps(cal)                                                      # JSON-ready
    cal = calibration(PairData("toy", codes, left, right, issame, None), Fixed(), far=0.5)
    agree = [np.count_nonzero(codes[a] == codes[b]) for a, b in zip(left[~issame], right[~issame])]
    assert cal["impostor_similarities"] == np.bincount(agree, minlength=7).tolist()
    assert "listed impostor pairs" in cal["impostor_similarities_source"]


def test_pair_identities_from_person_folders(tmp_path):
    items = [str(tmp_path / p / f"{p}_{i}.jpg") for p, i in [("ann", 1), ("ann", 2), ("bob", 1)]]
    left, right = np.array([0, 0]), np.array([1, 2])
    assert pair_identities(items, left, right, np.array([True, False])).tolist() == ["ann", "ann", "bob"]
    assert pair_identities(items, left, right, np.array([False, False])) is None   # folders contradict
    assert pair_identities([b"jpeg", b"png", b"x"], left, right, np.array([True, False])) is None
