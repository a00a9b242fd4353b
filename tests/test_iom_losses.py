"""Tests for iom.hashing.losses against explicit-loop float64 NumPy references and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from keras import ops

from arcface.errors import ConfigError
from iom.hashing.losses import (
    METRIC_LOSSES,
    batch_all_arc_triplet_loss,
    batch_all_triplet_loss,
    batch_hard_arc_triplet_loss,
    batch_hard_triplet_loss,
    bin_lut_loss,
    binary_lut,
    code_balance_loss,
    get_metric_loss,
    pairwise_cosine_angles,
    pairwise_euclidean,
    quantization_loss,
    semihard_triplet_loss,
)
from tests.backend_utils import value_and_grad

B, M, Q = 12, 16, 8
RTOL, ATOL = 1e-4, 1e-6
SEEDS = (0, 1, 2)


def batch(seed: int, q: int = Q):
    """labels (4 classes × 3, shuffled), probs (B, M, q) and soft codes = E[index]."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(4), 3)).astype(np.int32)
    logits = 2.0 * rng.normal(size=(B, M, q))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probs.astype(np.float32), (probs @ np.arange(q)).astype(np.float32)


def duplicates_batch():
    """Soft codes with a row repeated within a class and across classes, and a zero row."""
    labels, _, codes = batch(0)
    same, other = (np.flatnonzero(labels == labels[0])[1], np.flatnonzero(labels != labels[0])[0])
    codes[same] = codes[other] = codes[0]
    codes[-1] = 0.0
    return labels, codes


def num(t) -> np.ndarray:
    return np.asarray(t, dtype=np.float64)


# --------------------------------------------------------------------------- #
# float64 references with explicit loops
# --------------------------------------------------------------------------- #
def ref_angles(x):
    x = np.asarray(x, np.float64)
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            c = x[i] @ x[j] / max(np.linalg.norm(x[i]) * np.linalg.norm(x[j]), 1e-12)
            out[i, j] = math.acos(min(max(c, -1 + 1e-7), 1 - 1e-7))
    return out


def ref_dist(x, squared=False):
    x = np.asarray(x, np.float64)
    d = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return d if squared else np.sqrt(d)


def positives(y, a):
    return [p for p in range(len(y)) if p != a and y[p] == y[a]]


def negatives(y, a):
    return [n for n in range(len(y)) if y[n] != y[a]]


def arc_term(tp, tn, m):
    e = math.exp
    return (e(math.cos(tn + m)) / (e(math.cos(tn + m)) + e(math.sin(tn)))
            + e(math.sin(tp + m)) / (e(math.sin(tp + m)) + e(math.cos(tp))))


def ref_batch_hard_arc(y, x, m, s):
    th, terms = ref_angles(x), []
    for a in range(len(y)):
        P, N = positives(y, a), negatives(y, a)
        if P and N:
            terms.append(arc_term(max(th[a, P]), min(th[a, N]), m))
    return s * np.mean(terms) if terms else 0.0


def ref_batch_all_arc(y, x, m, s):
    th = ref_angles(x)
    terms = [arc_term(th[a, p], th[a, n], m)
             for a in range(len(y)) for p in positives(y, a) for n in negatives(y, a)]
    return s * np.mean(terms) if terms else 0.0


def ref_batch_hard(y, x, m, squared):
    d, terms = ref_dist(x, squared), []
    for a in range(len(y)):
        P, N = positives(y, a), negatives(y, a)
        if P and N:
            terms.append(max(max(d[a, P]) - min(d[a, N]) + m, 0.0))
    return np.mean(terms) if terms else 0.0


def ref_batch_all(y, x, m, squared):
    d = ref_dist(x, squared)
    terms = [max(d[a, p] - d[a, n] + m, 0.0)
             for a in range(len(y)) for p in positives(y, a) for n in negatives(y, a)]
    terms = [t for t in terms if t > 1e-16]
    return np.mean(terms) if terms else 0.0


def ref_semihard(y, x, m):
    d, terms = ref_dist(x), []
    for a in range(len(y)):
        N = negatives(y, a)
        for p in positives(y, a):
            harder = [d[a, n] for n in N if d[a, n] > d[a, p]]
            d_an = min(harder) if harder else max([d[a, n] for n in N], default=0.0)
            terms.append(max(d[a, p] - d_an + m, 0.0))
    return np.mean(terms) if terms else 0.0


# --------------------------------------------------------------------------- #
# pairwise geometry
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", SEEDS)
def test_pairwise_matches_reference(seed):
    _, _, codes = batch(seed)
    theta, off = num(pairwise_cosine_angles(codes)), ~np.eye(B, dtype=bool)
    np.testing.assert_allclose(theta[off], ref_angles(codes)[off], rtol=RTOL)
    assert np.all(np.diag(theta) < 1e-3)  # arccos(1 − 1e-7) with float32 rounding
    for squared in (False, True):
        d = num(pairwise_euclidean(codes, squared))
        np.testing.assert_allclose(d, ref_dist(codes, squared), rtol=RTOL, atol=1e-4)
        assert np.all(np.diag(d) == 0.0)


def test_identical_rows_zero_distance_finite_gradients():
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], np.float32)
    d = num(pairwise_euclidean(x))
    assert d[0, 1] == d[1, 0] == 0.0 and np.all(np.diag(d) == 0.0)
    assert d[0, 2] == pytest.approx(math.sqrt(1 + 1 + 9), rel=1e-6)
    for fn in (lambda t: ops.sum(pairwise_euclidean(t)),
               lambda t: ops.sum(pairwise_euclidean(t, True)),
               lambda t: ops.sum(pairwise_cosine_angles(t))):
        value, grad = value_and_grad(fn, x)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    theta = num(pairwise_cosine_angles(x))
    assert theta[0, 1] < 1e-3 and np.all(np.diag(theta) < 1e-3)
    assert theta[0, 2] == pytest.approx(math.acos(2 / math.sqrt(14)), rel=1e-5)


# --------------------------------------------------------------------------- #
# metric losses vs references
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin,scale", [(0.0, 1.0), (0.3, 2.5)])
def test_arc_triplet_losses_match_reference(seed, margin, scale):
    labels, _, codes = batch(seed)
    got = num(batch_hard_arc_triplet_loss(labels, codes, margin, scale))
    np.testing.assert_allclose(got, ref_batch_hard_arc(labels, codes, margin, scale), rtol=RTOL)
    got = num(batch_all_arc_triplet_loss(labels, codes, margin, scale))
    np.testing.assert_allclose(got, ref_batch_all_arc(labels, codes, margin, scale), rtol=RTOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
def test_euclidean_triplet_losses_match_reference(seed, margin):
    labels, _, codes = batch(seed)
    for squared in (False, True):
        np.testing.assert_allclose(num(batch_hard_triplet_loss(labels, codes, margin, squared)),
                                   ref_batch_hard(labels, codes, margin, squared), rtol=RTOL,
                                   atol=ATOL)
        np.testing.assert_allclose(num(batch_all_triplet_loss(labels, codes, margin, squared)),
                                   ref_batch_all(labels, codes, margin, squared), rtol=RTOL,
                                   atol=ATOL)
    np.testing.assert_allclose(num(semihard_triplet_loss(labels, codes, margin)),
                               ref_semihard(labels, codes, margin), rtol=RTOL, atol=ATOL)


def test_semihard_uses_semihard_then_hardest_negative():
    # 1-D points; class 0 = {0, 1}, class 1 = {3, 0.5}. Pair (0→1): d_ap = 1, negatives at
    # 3 and 0.5 → semi-hard is 3 (smallest > 1). Pair (1→0): d_ap = 1, negatives at 2 and
    # 0.5 → 2. Pair (2→3): d_ap = 2.5, negatives at 3 and 2 → 3. Pair (3→2): d_ap = 2.5,
    # negatives at 0.5 and 0.5, none > 2.5 → falls back to the largest, 0.5.
    x = np.array([[0.0], [1.0], [3.0], [0.5]], np.float32)
    y = np.array([0, 0, 1, 1])
    m = 1.0
    expected = np.mean([max(1 - 3 + m, 0), max(1 - 2 + m, 0), max(2.5 - 3 + m, 0),
                        max(2.5 - 0.5 + m, 0)])
    assert float(semihard_triplet_loss(y, x, m)) == pytest.approx(expected, rel=1e-6)
    assert ref_semihard(y, x, m) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [np.arange(B, dtype=np.int32), np.zeros(B, np.int32)],
                         ids=["distinct", "same"])
def test_no_valid_triplet_gives_zero(labels):
    _, _, codes = batch(0)
    for fn in (batch_hard_arc_triplet_loss, batch_all_arc_triplet_loss, batch_hard_triplet_loss,
               batch_all_triplet_loss):
        assert float(fn(labels, codes, 0.5)) == 0.0
    # semi-hard: no positive pair → 0; no negative → d_an = 0 (as tfa)
    np.testing.assert_allclose(float(semihard_triplet_loss(labels, codes, 0.5)),
                               ref_semihard(labels, codes, 0.5), rtol=RTOL)


@pytest.mark.parametrize("name", sorted(METRIC_LOSSES))
def test_metric_losses_finite_gradients_with_duplicates(name):
    from iom.hashing.losses import PROBABILITY_LOSSES

    labels, codes = duplicates_batch()
    if name in PROBABILITY_LOSSES:  # these take (B, m, q) probabilities: duplicate rows there
        _, codes, _ = batch(0)
        codes[1] = codes[2] = codes[0]
    value, grad = value_and_grad(lambda x: get_metric_loss(name)(labels, x, 0.3), codes)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert np.any(grad != 0.0)


def test_registry_and_bad_name():
    assert get_metric_loss("batch_hard_triplet") is get_metric_loss("batch_hard_triplet_loss")
    assert get_metric_loss("triplet_semi") is semihard_triplet_loss
    with pytest.raises(ConfigError, match=r"'nope'.*batch_all_triplet_loss"):
        get_metric_loss("nope")


# --------------------------------------------------------------------------- #
# code regularisers
# --------------------------------------------------------------------------- #
def test_code_balance():
    q, m = 8, 3
    eye = np.eye(q, dtype=np.float32)
    balanced = np.stack([[eye[(b + i) % q] for i in range(m)] for b in range(2 * q)])
    assert float(code_balance_loss(balanced)) == pytest.approx(0.0, abs=1e-7)
    collapsed = np.zeros((5, m, q), np.float32)
    collapsed[..., 0] = 1.0
    expected = (1 - 1 / q) ** 2 + (q - 1) / q**2
    assert float(code_balance_loss(collapsed)) == pytest.approx(expected, rel=1e-6)
    _, probs, _ = batch(1)
    u = probs.astype(np.float64).mean(0)
    ref = np.mean([sum((u[i, j] - 1 / Q) ** 2 for j in range(Q)) for i in range(M)])
    np.testing.assert_allclose(num(code_balance_loss(probs)), ref, rtol=RTOL)
    _, grad = value_and_grad(code_balance_loss, probs)
    assert np.all(np.isfinite(grad))


def test_quantization_loss():
    assert float(quantization_loss(np.array([[0.0, 3.0], [7.0, 1.0]]))) == 0.0
    assert float(quantization_loss(np.array([[0.25, 2.75]]))) == pytest.approx(0.0625)
    codes = np.array([[0.25, 2.6]], np.float32)
    _, grad = value_and_grad(quantization_loss, codes)
    np.testing.assert_allclose(grad, [[0.25, -0.4]], rtol=1e-5)  # 2(c − round c)/n


def test_binary_lut():
    np.testing.assert_array_equal(binary_lut(2), [[0], [1]])
    np.testing.assert_array_equal(binary_lut(5), [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1],
                                                  [1, 0, 0]])
    assert binary_lut(8).shape == (8, 3) and binary_lut(9).shape == (9, 4)


@pytest.mark.parametrize("q", [5, 8])
def test_bin_lut_loss(q):
    one_hot = np.eye(q, dtype=np.float32)[np.arange(12).reshape(4, 3) % q]
    for kind in ("sigmoid", "tanh", "none"):
        assert float(bin_lut_loss(one_hot, kind)) == pytest.approx(0.0, abs=1e-7)
    uniform = np.full((3, 4, 2), 0.5, np.float32)
    assert float(bin_lut_loss(uniform, "sigmoid")) == pytest.approx(0.25)
    assert float(bin_lut_loss(uniform, "tanh")) == pytest.approx(1.0)
    _, probs, _ = batch(2, q)
    lut = binary_lut(q).astype(np.float64)
    b = np.array([[[sum(probs[i, g, j] * lut[j, k] for j in range(q)) for k in range(lut.shape[1])]
                   for g in range(M)] for i in range(B)])
    np.testing.assert_allclose(num(bin_lut_loss(probs, "sigmoid")), np.mean((b - np.round(b)) ** 2),
                               rtol=RTOL)
    np.testing.assert_allclose(num(bin_lut_loss(probs, "tanh")), np.mean(1 - np.abs(2 * b - 1)),
                               rtol=RTOL)
    for kind in ("sigmoid", "tanh"):
        _, grad = value_and_grad(lambda p, kind=kind: bin_lut_loss(p, kind), probs)
        assert np.all(np.isfinite(grad))


def test_bin_lut_loss_bad_kind():
    with pytest.raises(ConfigError, match=r"'relu'.*tanh.*sigmoid.*none"):
        bin_lut_loss(np.zeros((1, 1, 2), np.float32), "relu")


# --------------------------------------------------------------------------- #
# Hamming-agreement losses
# --------------------------------------------------------------------------- #
def ref_agreement(p):
    """A_ab = (1/m) Σ_i Σ_j p_aij p_bij by explicit loops (float64)."""
    p = np.asarray(p, np.float64)
    n, m, _ = p.shape
    return np.array([[sum(p[a, i] @ p[b, i] for i in range(m)) / m for b in range(n)] for a in range(n)])


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin,scale", [(0.0, 16.0), (0.1, 4.0)])
def test_hamming_losses_match_reference(seed, margin, scale):
    from iom.hashing.losses import batch_all_hamming_loss, batch_hard_hamming_loss, expected_agreement

    y, probs, _ = batch(seed)
    agree = ref_agreement(probs)
    np.testing.assert_allclose(num(expected_agreement(probs)), agree, rtol=RTOL, atol=ATOL)
    hard = np.mean([softplus(scale * (max(agree[a, n] for n in negatives(y, a))
                                      - min(agree[a, p] for p in positives(y, a)) + margin))
                    for a in range(B)])
    every = [softplus(scale * (agree[a, n] - agree[a, p] + margin))
             for a in range(B) for p in positives(y, a) for n in negatives(y, a)]
    np.testing.assert_allclose(num(batch_hard_hamming_loss(y, probs, margin, scale)), hard, rtol=RTOL)
    np.testing.assert_allclose(num(batch_all_hamming_loss(y, probs, margin, scale)), np.mean(every), rtol=RTOL)


def test_expected_agreement_of_one_hot_codes_is_hamming_similarity():
    from iom.hashing.losses import expected_agreement

    rng = np.random.default_rng(0)
    codes = rng.integers(0, Q, (6, M))
    probs = np.eye(Q, dtype=np.float32)[codes]
    want = (codes[:, None, :] == codes[None, :, :]).mean(2)
    np.testing.assert_allclose(num(expected_agreement(probs)), want, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_decidability_hamming_loss_matches_reference(seed):
    from iom.hashing.losses import decidability_hamming_loss

    y, probs, _ = batch(seed)
    agree = ref_agreement(probs)
    gen = [agree[a, b] for a in range(B) for b in range(B) if a != b and y[a] == y[b]]
    imp = [agree[a, b] for a in range(B) for b in range(B) if y[a] != y[b]]
    want = -(np.mean(gen) - np.mean(imp)) / math.sqrt((np.var(gen) + np.var(imp)) / 2 + 1e-8)
    np.testing.assert_allclose(num(decidability_hamming_loss(y, probs)), want, rtol=1e-4)


def _lse(values):
    values = np.asarray(values, np.float64)
    top = values.max()
    return top + math.log(np.exp(values - top).sum())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin,scale", [(0.25, 64.0), (0.1, 16.0)])
def test_circle_hamming_loss_matches_reference(seed, margin, scale):
    from iom.hashing.losses import circle_hamming_loss

    y, probs, _ = batch(seed)
    agree = ref_agreement(probs)
    per_anchor = []
    for a in range(B):
        sp = [agree[a, p] for p in positives(y, a)]
        sn = [agree[a, n] for n in negatives(y, a)]
        lp = _lse([-scale * max(1 + margin - s, 0) * (s - (1 - margin)) for s in sp])
        ln = _lse([scale * max(s + margin, 0) * (s - margin) for s in sn])
        per_anchor.append(softplus(lp + ln))
    np.testing.assert_allclose(num(circle_hamming_loss(y, probs, margin, scale)), np.mean(per_anchor),
                               rtol=1e-4)


def test_circle_hamming_loss_prefers_separated_codes():
    """Codes that agree within identities and differ across them cost less than the reverse."""
    from iom.hashing.losses import circle_hamming_loss

    y = np.repeat(np.arange(4), 2)
    good = np.eye(Q, dtype=np.float32)[np.repeat(np.arange(4) % Q, 2)[:, None].repeat(M, 1)]
    bad = np.eye(Q, dtype=np.float32)[np.tile(np.arange(2) % Q, 4)[:, None].repeat(M, 1)]
    assert float(num(circle_hamming_loss(y, good))) < float(num(circle_hamming_loss(y, bad)))


@pytest.mark.parametrize("seed", SEEDS)
def test_similarity_distillation_loss_matches_reference(seed):
    from iom.hashing.losses import similarity_distillation_loss

    y, probs, _ = batch(seed)
    x = np.random.default_rng(seed).normal(size=(B, 5)) * 3.0
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    agree = ref_agreement(probs)
    alpha, beta = 0.12, 0.3
    want = np.mean([(agree[a, b] - alpha - beta * unit[a] @ unit[b]) ** 2
                    for a in range(B) for b in range(B) if a != b]) * 100
    np.testing.assert_allclose(num(similarity_distillation_loss(x.astype(np.float32), probs, alpha, beta)),
                               want, rtol=1e-4)


def test_fit_distillation_map_recovers_a_line():
    from iom.hashing.losses import fit_distillation_map

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    # the least-squares line of agreement on cosine over every pair, as numpy fits it
    probs = rng.dirichlet(np.ones(Q), size=(40, M)).astype(np.float32)
    flat = probs.reshape(40, -1).astype(np.float64)
    iu = np.triu_indices(40, 1)
    want = np.polyfit((unit @ unit.T)[iu], (flat @ flat.T / M)[iu], 1)
    alpha, beta = fit_distillation_map(x, probs)
    np.testing.assert_allclose([beta, alpha], want, rtol=1e-6)
    with pytest.raises(ConfigError, match="not all parallel"):
        fit_distillation_map(np.ones((5, 3)), probs[:5])
