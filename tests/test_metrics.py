"""Tests for arcface.metrics and arcface.plots against hand-derived and brute-force references."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from arcface.errors import DataFormatError, IomfaceError
from arcface.metrics import (
    VerificationReport,
    auc,
    best_threshold,
    cosine_similarity,
    eer,
    evaluate_scores,
    far_key,
    format_table,
    kfold_accuracy,
    roc,
    tar_at_far,
)

P, N = True, False

# Hand case A: 10 pairs, 5 genuine / 5 impostor.
#   score : 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95
#   label :  N   N   P   N   N   P   P   N   P   P
A_S = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
A_Y = np.array([N, N, P, N, N, P, P, N, P, P])


# --------------------------------------------------------------------------- #
# brute-force references
# --------------------------------------------------------------------------- #
def brute_candidates(s):
    u = np.unique(s)
    if u.size == 1:
        return np.array([u[0] - 0.5, u[0] + 0.5])
    return np.concatenate(
        ([u[0] - (u[1] - u[0]) / 2], (u[:-1] + u[1:]) / 2, [u[-1] + (u[-1] - u[-2]) / 2])
    )


def brute_accuracies(s, y, cands):
    return np.array([np.mean((s >= t) == y) for t in cands])


def brute_auc(s, y):
    pos, neg = s[y], s[~y]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else (0.5 if p == n else 0.0)
    return total / (len(pos) * len(neg))


# --------------------------------------------------------------------------- #
# best_threshold
# --------------------------------------------------------------------------- #
def test_best_threshold_hand_case():
    # correct = (#N with score <= u_i) + (#P with score > u_i) per cut:
    #   cut  0.05 (below min): 0+5=5   0.15: 1+5=6   0.25: 2+5=7   0.35: 2+4=6
    #   0.45: 3+4=7   0.55: 4+4=8   0.65: 4+3=7   0.75: 4+2=6   0.85: 5+2=7
    #   0.925: 5+1=6  0.975 (above max): 5+0=5
    # unique optimum: t = 0.55, accuracy 8/10
    t, acc = best_threshold(A_S, A_Y)
    assert t == pytest.approx(0.55)
    assert acc == pytest.approx(0.8)


def test_best_threshold_ties_even_takes_lower_median():
    # 0.1N 0.2P 0.3N 0.4P: cuts 0.05:2 0.15:1+2=3 0.25:1+1=2 0.35:2+1=3 0.45:2
    # optima {0.15, 0.35}; median 0.25 is equidistant -> lower one, 0.15
    t, acc = best_threshold([0.1, 0.2, 0.3, 0.4], [N, P, N, P])
    assert t == pytest.approx(0.15)
    assert acc == pytest.approx(0.75)


def test_best_threshold_ties_odd_takes_median():
    # 0.1N 0.2P 0.3N 0.4P 0.5N 0.6P: cuts 0.15, 0.35, 0.55 each give 4/6,
    # all others 3/6 -> median optimum 0.35
    t, acc = best_threshold([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [N, P, N, P, N, P])
    assert t == pytest.approx(0.35)
    assert acc == pytest.approx(4 / 6)


def test_best_threshold_extremes_and_single_class():
    # all genuine -> "everything same" (below-min cut) is the unique optimum
    t, acc = best_threshold([0.2, 0.4, 0.6], [P, P, P])
    assert acc == 1.0 and t == pytest.approx(0.1)  # 0.2 - (0.4-0.2)/2
    # all impostor -> above-max cut
    t, acc = best_threshold([0.2, 0.4, 0.6], [N, N, N])
    assert acc == 1.0 and t == pytest.approx(0.7)
    # one distinct value, ties with mixed labels: both cuts give 2/3
    t, acc = best_threshold([0.5, 0.5, 0.5], [P, P, N])
    assert acc == pytest.approx(2 / 3) and t == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_best_threshold_matches_brute_force(seed, decimals):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 0.8 * y
    if decimals is not None:  # force many ties
        s = np.round(s, decimals)
    t, acc = best_threshold(s, y)
    cands = brute_candidates(s)
    accs = brute_accuracies(s, y, cands)
    assert acc == pytest.approx(accs.max())
    assert np.mean((s >= t) == y) == pytest.approx(acc)
    opt = cands[np.isclose(accs, accs.max())]
    assert t == pytest.approx(opt[(len(opt) - 1) // 2])  # documented tie rule


def test_best_threshold_int_labels_equal_bool():
    assert best_threshold(A_S, A_Y.astype(int)) == best_threshold(A_S, A_Y)


# --------------------------------------------------------------------------- #
# k-fold
# --------------------------------------------------------------------------- #
# 12 pairs, 3 consecutive folds of 4
K_S = np.array([0.9, 0.2, 0.6, 0.4,  0.8, 0.3, 0.35, 0.7,  0.75, 0.1, 0.48, 0.45])
K_Y = np.array([P, N, P, N,          P, N, P, N,           P, N, P, N])


def test_kfold_hand_case():
    # fold 0 test; train = folds 1+2 sorted:
    #   0.1N 0.3N 0.35P 0.45N 0.48P 0.7N 0.75P 0.8P
    #   cuts: 0.0:4 0.2:5 0.325:6 0.4:5 0.465:6 0.59:5 0.725:6 0.775:5 0.825:4
    #   optima {0.325, 0.465, 0.725} -> median 0.465
    #   test 0.9P 0.2N 0.6P 0.4N -> all correct: 1.0
    # fold 1 test; train = folds 0+2 sorted:
    #   0.1N 0.2N 0.4N 0.45N | 0.48P 0.6P 0.75P 0.9P  separable -> 0.465 (8/8)
    #   test 0.8P ok, 0.3N ok, 0.35P wrong, 0.7N wrong -> 0.5
    # fold 2 test; train = folds 0+1 sorted:
    #   0.2N 0.3N 0.35P 0.4N 0.6P 0.7N 0.8P 0.9P
    #   cuts: 0.15:4 0.25:5 0.325:6 0.375:5 0.5:6 0.65:5 0.75:6 0.85:5 0.95:4
    #   optima {0.325, 0.5, 0.75} -> 0.5
    #   test 0.75P ok, 0.1N ok, 0.48P wrong, 0.45N ok -> 0.75
    accs, thrs = kfold_accuracy(K_S, K_Y, n_folds=3)
    np.testing.assert_allclose(accs, [1.0, 0.5, 0.75])
    np.testing.assert_allclose(thrs, [0.465, 0.465, 0.5])

    rep = evaluate_scores(K_S, K_Y, n_folds=3, name="hand")
    assert rep.accuracy == pytest.approx(0.75)
    assert rep.accuracy_std == pytest.approx(np.std([1.0, 0.5, 0.75]))
    assert rep.threshold == pytest.approx((0.465 + 0.465 + 0.5) / 3)


def test_kfold_explicit_folds_permuted():
    # same data shuffled, with an explicit fold array: identical per-fold results
    rng = np.random.default_rng(7)
    perm = rng.permutation(len(K_S))
    folds = np.repeat([10, 20, 30], 4)  # arbitrary ids, visited in ascending order
    accs, thrs = kfold_accuracy(K_S[perm], K_Y[perm], folds=folds[perm])
    np.testing.assert_allclose(accs, [1.0, 0.5, 0.75])
    np.testing.assert_allclose(thrs, [0.465, 0.465, 0.5])


def test_kfold_default_folds_match_sklearn_kfold():
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(3)
    n = 103  # not divisible: chunk sizes 11,11,11,10,...
    y = rng.random(n) < 0.5
    s = rng.normal(size=n) + y
    folds = np.empty(n, dtype=int)
    for k, (_, test) in enumerate(KFold(10, shuffle=False).split(s)):
        folds[test] = k
    a1, t1 = kfold_accuracy(s, y)
    a2, t2 = kfold_accuracy(s, y, folds=folds)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(t1, t2)


def test_kfold_lfw_like_reproducible_and_matches_brute_force():
    rng = np.random.default_rng(2024)
    # LFW layout: 10 folds x 600 pairs, each fold 300 genuine then 300 impostor
    y = np.tile(np.repeat([True, False], 300), 10)
    s = np.where(y, rng.normal(0.6, 0.15, y.size), rng.normal(0.1, 0.15, y.size))
    a1, t1 = kfold_accuracy(s, y, n_folds=10)
    a2, t2 = kfold_accuracy(s.copy(), y.copy(), n_folds=10)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(t1, t2)
    assert a1.shape == (10,) and t1.shape == (10,)
    folds = np.repeat(np.arange(10), 600)
    for k in (0, 9):  # brute-force check of two folds
        tr, te = folds != k, folds == k
        cands = brute_candidates(s[tr])
        accs = brute_accuracies(s[tr], y[tr], cands)
        opt = cands[accs == accs.max()]
        t_ref = opt[(len(opt) - 1) // 2]
        assert t1[k] == pytest.approx(t_ref)
        assert a1[k] == pytest.approx(np.mean((s[te] >= t_ref) == y[te]))


# --------------------------------------------------------------------------- #
# ROC / AUC / EER / TAR@FAR
# --------------------------------------------------------------------------- #
def test_roc_matches_sklearn():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(5)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + y, 1)
    fpr, tpr, thr = roc(s, y)
    f2, t2, th2 = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_array_equal(thr[1:], th2[1:])
    assert np.isinf(thr[0])


def test_auc_hand_and_brute_force():
    # genuine 0.3 beats {0.1,0.2}=2, 0.6 and 0.7 beat 4 each, 0.9 and 0.95 beat 5 each
    # -> 20/25 = 0.8
    assert auc(A_S, A_Y) == pytest.approx(0.8)
    assert brute_auc(A_S, A_Y) == pytest.approx(0.8)
    rng = np.random.default_rng(11)
    for _ in range(3):
        y = rng.random(80) < 0.5
        y[:2] = [True, False]
        s = np.round(rng.normal(size=80) + 0.7 * y, 1)  # ties count 1/2
        assert auc(s, y) == pytest.approx(brute_auc(s, y))


def test_eer_exact_crossing_hand():
    # case A, ROC walking down the thresholds (FAR, FRR):
    #  inf:(0,1) 0.95:(0,.8) 0.9:(0,.6) 0.8:(.2,.6) 0.7:(.2,.4) 0.6:(.2,.2) -> equal
    e, t = eer(A_S, A_Y)
    assert e == pytest.approx(0.2)
    assert t == pytest.approx(0.6)


def test_eer_interpolated_hand():
    # 0.9P 0.7P 0.7N 0.5N 0.4N   (2 genuine, 3 impostor)
    #   inf: FAR 0,   FRR 1    d=FAR-FRR=-1
    #   0.9: FAR 0,   FRR 1/2  d=-1/2
    #   0.7: FAR 1/3, FRR 0    d=+1/3   -> crossing between 0.9 and 0.7
    #   t = (-1/2)/(-1/2-1/3) = 3/5 ; EER = 0 + 3/5*1/3 = 1/5 (= 1/2 - 3/5*1/2)
    #   threshold = 0.9 + 3/5*(0.7-0.9) = 0.78
    e, t = eer([0.9, 0.7, 0.7, 0.5, 0.4], [P, P, N, N, N])
    assert e == pytest.approx(0.2)
    assert t == pytest.approx(0.78)


def test_eer_bracket_at_infinity_uses_finite_threshold():
    # all scores equal: ROC = (0,0) at inf and (1,1) at 0.5 -> EER 1/2 at 0.5
    e, t = eer([0.5, 0.5, 0.5], [P, N, N])
    assert e == pytest.approx(0.5)
    assert t == 0.5


def test_tar_at_far_hand():
    # case A ROC (FAR, TAR, thr): (0,0,inf) (0,.2,.95) (0,.4,.9) (.2,.4,.8)
    #   (.2,.6,.7) (.2,.8,.6) (.4,.8,.5) (.6,.8,.4) (.6,1,.3) (.8,1,.2) (1,1,.1)
    assert tar_at_far(A_S, A_Y, 0.2) == pytest.approx((0.8, 0.6))
    assert tar_at_far(A_S, A_Y, 0.1) == pytest.approx((0.4, 0.9))  # only FAR=0 allowed
    assert tar_at_far(A_S, A_Y, 0.0) == pytest.approx((0.4, 0.9))
    assert tar_at_far(A_S, A_Y, 0.6) == pytest.approx((1.0, 0.3))
    assert tar_at_far(A_S, A_Y, 1.0) == pytest.approx((1.0, 0.3))  # highest thr for TAR 1


def test_tar_at_far_nothing_qualifies():
    # top score is an impostor: at FAR 0 nothing is accepted
    tar, thr = tar_at_far([0.9, 0.5, 0.1], [N, P, N], 0.0)
    assert tar == 0.0 and thr == math.inf


def test_report_resolvable_flag():
    rep = evaluate_scores(A_S, A_Y, n_folds=2, far_targets=(0.2, 0.1))
    assert set(rep.tar_at_far) == {"2e-01", "1e-01"}
    assert rep.tar_at_far["2e-01"] == {"tar": pytest.approx(0.8), "threshold": pytest.approx(0.6),
                                       "resolvable": True}
    assert rep.tar_at_far["1e-01"]["resolvable"] is False  # 0.1 < 1/5 impostors
    assert far_key(1e-3) == "1e-03" and far_key(1e-4) == "1e-04"


# --------------------------------------------------------------------------- #
# properties
# --------------------------------------------------------------------------- #
def test_perfectly_separable():
    rng = np.random.default_rng(0)
    y = np.repeat([True, False], 100)
    s = np.where(y, rng.uniform(0.6, 1.0, 200), rng.uniform(-1.0, 0.4, 200))
    order = rng.permutation(200)
    rep = evaluate_scores(s[order], y[order], name="sep")
    assert rep.accuracy == 1.0 and rep.accuracy_std == 0.0
    assert rep.eer == 0.0
    assert rep.auc == 1.0
    assert s[y].min() >= rep.eer_threshold > s[~y].max()
    assert rep.tar_at_far["1e-02"]["tar"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariance_to_increasing_transform(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(400) < 0.5
    y[:2] = [True, False]
    s = np.round(rng.normal(size=400) + y, 2)
    base = evaluate_scores(s, y, n_folds=5)

    # affine: thresholds map exactly
    a = evaluate_scores(3.0 * s + 1.0, y, n_folds=5)
    assert a.fold_accuracies == pytest.approx(base.fold_accuracies)
    np.testing.assert_allclose(a.fold_thresholds, 3.0 * np.array(base.fold_thresholds) + 1.0)
    assert a.eer_threshold == pytest.approx(3.0 * base.eer_threshold + 1.0)
    assert (a.eer, a.auc) == pytest.approx((base.eer, base.auc))

    # nonlinear strictly increasing: same in-sample accuracy/EER/AUC/TAR, and the
    # chosen thresholds induce the same decisions.  (k-fold accuracy is NOT
    # invariant in general: a test score lying strictly between two training
    # scores may fall on either side of the transformed midpoint; see below.)
    f = lambda x: np.exp(2.0 * x) + x**3  # noqa: E731
    g = evaluate_scores(f(s), y, n_folds=5)
    assert (g.eer, g.auc) == pytest.approx((base.eer, base.auc))
    tb, ab = best_threshold(s, y)
    tg, ag = best_threshold(f(s), y)
    assert ag == pytest.approx(ab)
    np.testing.assert_array_equal(s >= tb, f(s) >= tg)
    assert f(s[s < tb]).max(initial=-np.inf) < tg <= f(s[s >= tb]).min(initial=np.inf)
    for k in base.tar_at_far:
        assert g.tar_at_far[k]["tar"] == pytest.approx(base.tar_at_far[k]["tar"])
        tb_k, tg_k = base.tar_at_far[k]["threshold"], g.tar_at_far[k]["threshold"]
        if math.isfinite(tb_k):
            assert tg_k == pytest.approx(f(tb_k))
    # the EER threshold stays inside the same bracket of scores
    i = np.searchsorted(np.unique(s), base.eer_threshold)
    j = np.searchsorted(np.unique(f(s)), g.eer_threshold)
    assert i == j


def test_kfold_invariance_when_test_scores_occur_in_training():
    # every fold holds the same multiset of (score, label) -> each test score also
    # occurs in the training folds, so k-fold accuracy is invariant to any
    # strictly increasing transform, not only affine ones.
    rng = np.random.default_rng(42)
    block_y = rng.random(60) < 0.5
    block_s = np.round(rng.normal(size=60) + block_y, 1)
    idx = np.concatenate([rng.permutation(60) for _ in range(5)])
    s, y = block_s[idx], block_y[idx]
    f = lambda x: np.exp(2.0 * x) + x**3  # noqa: E731
    a1, t1 = kfold_accuracy(s, y, n_folds=5)
    a2, t2 = kfold_accuracy(f(s), y, n_folds=5)
    np.testing.assert_allclose(a1, a2)
    for tb, tg in zip(t1, t2):
        np.testing.assert_array_equal(s >= tb, f(s) >= tg)


# --------------------------------------------------------------------------- #
# cosine similarity
# --------------------------------------------------------------------------- #
def test_cosine_similarity_reference_and_zero_rows():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 16)).astype(np.float32)
    b = rng.normal(size=(50, 16)).astype(np.float32)
    ref = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64)) / (
        np.linalg.norm(a.astype(np.float64), axis=1) * np.linalg.norm(b.astype(np.float64), axis=1)
    )
    np.testing.assert_allclose(cosine_similarity(a, b), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cosine_similarity(a, a), 1.0)
    np.testing.assert_allclose(cosine_similarity(a, -a), -1.0)
    # scale invariance, including huge/tiny norms
    np.testing.assert_allclose(cosine_similarity(a.astype(np.float64) * 1e200, b.astype(np.float64) * 1e-200), ref, rtol=1e-10)

    a[3] = 0.0
    b[7] = 0.0
    c = cosine_similarity(a, b)
    assert not np.any(np.isnan(c))
    assert c[3] == 0.0 and c[7] == 0.0
    assert cosine_similarity(np.zeros((2, 4)), np.zeros((2, 4))).tolist() == [0.0, 0.0]


def test_cosine_similarity_errors():
    with pytest.raises(DataFormatError):
        cosine_similarity(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(DataFormatError):
        cosine_similarity(np.full((1, 2), np.nan), np.ones((1, 2)))


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "scores, issame",
    [
        ([0.1, 0.2, 0.3], [True, False]),  # length mismatch
        (np.ones((2, 2)), [True, False]),  # 2-D scores
        ([0.1, np.nan], [True, False]),  # NaN
        ([0.1, np.inf], [True, False]),  # inf
        ([0.1, 0.2], [True, True]),  # no impostor
        ([0.1, 0.2], [False, False]),  # no genuine
        ([], []),  # empty
        ([0.1, 0.2], [0, 2]),  # non-binary labels
        (["a", "b"], [True, False]),  # non-numeric
    ],
)
def test_evaluate_scores_validation(scores, issame):
    with pytest.raises(DataFormatError) as ei:
        evaluate_scores(scores, issame, n_folds=2)
    assert isinstance(ei.value, (IomfaceError, ValueError))


def test_other_validation_errors():
    with pytest.raises(DataFormatError):
        kfold_accuracy(A_S, A_Y, n_folds=11)  # more folds than pairs
    with pytest.raises(DataFormatError):
        kfold_accuracy(A_S, A_Y, folds=np.zeros(10, dtype=int))  # one fold only
    with pytest.raises(DataFormatError):
        kfold_accuracy(A_S, A_Y, folds=np.zeros(9, dtype=int))
    with pytest.raises(DataFormatError):
        tar_at_far(A_S, A_Y, -0.1)
    with pytest.raises(DataFormatError):
        eer(A_S, np.ones(10, dtype=bool))
    with pytest.raises(DataFormatError):
        format_table([])


# --------------------------------------------------------------------------- #
# serialisation and table
# --------------------------------------------------------------------------- #
def _two_reports():
    rng = np.random.default_rng(9)
    y = np.tile(np.repeat([True, False], 30), 10)
    s1 = np.where(y, rng.normal(0.5, 0.2, y.size), rng.normal(0.0, 0.2, y.size))
    s2 = np.where(y, rng.normal(0.7, 0.1, y.size), rng.normal(0.5, 0.1, y.size))
    r1 = evaluate_scores(s1, y, name="arcface-r50", score_name="cosine")
    r2 = evaluate_scores(s2, y, name="iom-hash", score_name="hamming_similarity")
    return r1, r2


def test_to_dict_json():
    r1, _ = _two_reports()
    d = r1.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["name"] == "arcface-r50" and back["score_name"] == "cosine"
    assert back["n_pairs"] == 600 and back["n_same"] == 300
    assert back["accuracy"] == pytest.approx(r1.accuracy)
    assert len(back["fold_accuracies"]) == 10
    assert set(back["tar_at_far"]) == {"1e-02", "1e-03", "1e-04"}
    assert back["tar_at_far"]["1e-03"]["resolvable"] is False  # 300 impostors
    assert back["tar_at_far"]["1e-02"]["resolvable"] is True
    assert "fpr" not in back and "tpr" not in back
    full = json.loads(json.dumps(r1.to_dict(include_curves=True), allow_nan=False))
    assert len(full["fpr"]) == len(full["tpr"]) == len(r1.fpr)
    assert full["roc_thresholds"][0] is None  # +inf -> None


def test_format_table():
    r1, r2 = _two_reports()
    table = format_table([r1, r2])
    lines = table.splitlines()
    assert "arcface-r50" in lines[0] and "iom-hash" in lines[0]
    for label in ("Accuracy", "Std", "EER", "AUC", "Threshold", "TAR@FAR=1e-3"):
        assert any(line.startswith(f"| {label}") for line in lines), label
    assert f"{r1.accuracy:.4f}" in table and f"{r2.eer:.4f}" in table
    assert f"{r2.auc:.4f}" in table and f"{r1.threshold:.4f}" in table
    assert f"{r1.tar_at_far['1e-03']['tar']:.4f}*" in table  # flagged as limited
    body = [line for line in lines if line.startswith("|")]
    assert len({len(line) for line in body}) == 1  # aligned


def test_report_is_dataclass():
    r1, _ = _two_reports()
    assert isinstance(r1, VerificationReport)
    assert r1.n_diff == 300
    assert r1.threshold == pytest.approx(np.mean(r1.fold_thresholds))


# --------------------------------------------------------------------------- #
# plots
# --------------------------------------------------------------------------- #
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_written(tmp_path):
    from arcface.plots import save_roc_det, save_score_histogram

    r1, r2 = _two_reports()
    paths = save_roc_det([r1, r2], tmp_path / "sub" / "lfw")
    assert paths == [str(tmp_path / "sub" / "lfw_roc.png"), str(tmp_path / "sub" / "lfw_det.png")]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC
    hist = tmp_path / "hist.png"
    out = save_score_histogram(np.array([0.5, 0.6, 0.7]), np.array([0.1, 0.2]), hist, "scores")
    assert out == str(hist)
    assert hist.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(DataFormatError):
        save_score_histogram([], [], tmp_path / "x.png", "empty")


def test_det_transform_is_the_normal_deviate():
    """The DET axes are probit(FAR) and probit(FRR) (Martin et al. 1997): scipy's norm.ppf on
    known points; rates of exactly 0 or 1 (infinitely far) are left out, not clipped."""
    from scipy.stats import norm

    from arcface.plots import det_points, probit

    p = np.array([1e-4, 1e-3, 0.01, 0.05, 0.2, 0.4, 0.5, 0.8, norm.cdf(1.0)])
    np.testing.assert_allclose(probit(p), norm.ppf(p), rtol=1e-12, atol=1e-12)
    known = {0.5: 0.0, 0.01: -2.3263478740408408, 0.001: -3.090232306167813, 0.2: -0.8416212335729143}
    for rate, deviate in known.items():
        assert probit(rate) == pytest.approx(deviate, abs=1e-9)
    assert probit(norm.cdf(1.0)) == pytest.approx(1.0, abs=1e-12)

    fpr = np.array([0.0, 0.001, 0.01, 0.2, 0.5, 1.0])
    tpr = np.array([0.3, 0.6, 0.9, 0.99, 1.0, 1.0])               # FRR 0.7 0.4 0.1 0.01 0 0
    x, y = det_points(fpr, tpr)
    np.testing.assert_allclose(x, norm.ppf([0.001, 0.01, 0.2]))
    np.testing.assert_allclose(y, norm.ppf([0.4, 0.1, 0.01]))


def test_det_figure_axes_and_legend_placement(tmp_path):
    """DET: normal-deviate axes ticked in % (0.01 … 40), each curve probit(FAR) vs probit(FRR);
    ROC and DET legends sit outside (under) the axes, so no curve region is covered."""
    from scipy.stats import norm

    from arcface.plots import DET_TICKS_PERCENT, det_figure, roc_figure, save_roc_det

    r1, r2 = _two_reports()
    fig = det_figure([r1, r2])
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "linear"         # the deviates themselves
    for ticks, labels in ((ax.get_xticks(), ax.get_xticklabels()), (ax.get_yticks(), ax.get_yticklabels())):
        np.testing.assert_allclose(ticks, norm.ppf(np.array(DET_TICKS_PERCENT) / 100))
        assert [t.get_text() for t in labels][:6] == ["0.01", "0.1", "1", "5", "20", "40"]
    line = ax.get_lines()[0]
    fpr, frr = np.asarray(r1.fpr), 1 - np.asarray(r1.tpr)
    keep = (fpr > 0) & (fpr < 1) & (frr > 0) & (frr < 1)
    np.testing.assert_allclose(line.get_xdata(), norm.ppf(fpr[keep]))
    np.testing.assert_allclose(line.get_ydata(), norm.ppf(frr[keep]))
    assert line.get_label().startswith("arcface-r50 (AUC=")

    for figure in (fig, roc_figure([r1, r2])):
        figure.canvas.draw()
        axes_box = figure.axes[0].get_window_extent()
        legend_box = figure.axes[0].get_legend().get_window_extent()
        assert legend_box.y1 <= axes_box.y0                       # wholly under the axes
        assert len(figure.axes[0].get_legend().get_texts()) == 2  # the EER diagonal is unlabelled

    paths = save_roc_det([r1, r2], tmp_path / "curves")
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC
        assert os.path.getsize(p) > 5000
