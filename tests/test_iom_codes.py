"""Tests for keyed codes, random IoM, Hamming matching and the P×K sampler (NumPy references)."""

from __future__ import annotations

import numpy as np
import pytest

from arcface.errors import ConfigError
from iom.evaluation.matching import hamming_similarity, hamming_similarity_matrix, one_hot_codes
from iom.hashing.keying import CodeKeying, code_dtype
from iom.hashing.random_iom import RandomIoM
from iom.hashing.sampler import PKSampler
from iom.keys import TemplateKey

KEY_A, KEY_B = TemplateKey.from_seed("a"), TemplateKey.from_seed("b")
SIZES = [(7, 2), (32, 16), (16, 256), (64, 8)]


def random_codes(rng, n, m, q):
    return rng.integers(0, q, size=(n, m)).astype(code_dtype(q))


def similar_codes(rng, codes, q, flip=0.3):
    """A copy of ``codes`` with about ``flip`` of its groups redrawn (non-trivial similarity)."""
    other = codes.copy()
    mask = rng.random(codes.shape) < flip
    other[mask] = rng.integers(0, q, size=mask.sum())
    return other


# --------------------------------------------------------------------------- CodeKeying


@pytest.mark.parametrize("m, q", SIZES)
def test_keying_inverts_and_keeps_dtype(m, q):
    codes = random_codes(np.random.default_rng(m), 20, m, q)
    keying = CodeKeying(KEY_A, m, q)
    keyed = keying.apply(codes)
    assert keyed.shape == codes.shape and keyed.dtype == np.uint8
    assert keyed.max() < q
    np.testing.assert_array_equal(keying.invert(keyed), codes)


@pytest.mark.parametrize("m, q", SIZES)
def test_keying_is_a_bijection_per_group(m, q):
    every_symbol = np.tile(np.arange(q)[:, None], (1, m)).astype(code_dtype(q))  # row j: all j
    keyed = CodeKeying(KEY_A, m, q).apply(every_symbol)
    np.testing.assert_array_equal(np.sort(keyed, axis=0), every_symbol)


@pytest.mark.parametrize("m, q", SIZES)
def test_same_key_preserves_hamming_similarity_exactly(m, q):
    rng = np.random.default_rng(q)
    a = random_codes(rng, 50, m, q)
    b = similar_codes(rng, a, q)
    keying = CodeKeying(KEY_A, m, q)
    np.testing.assert_array_equal(hamming_similarity(keying.apply(a), keying.apply(b)),
                                  hamming_similarity(a, b))
    assert CodeKeying(KEY_A, m, q).apply(a).tolist() == keying.apply(a).tolist()  # deterministic


def test_different_keys_agree_at_chance():
    m, q = 4096, 8
    codes = random_codes(np.random.default_rng(0), 4, m, q)
    sim = hamming_similarity(CodeKeying(KEY_A, m, q).apply(codes), CodeKeying(KEY_B, m, q).apply(codes))
    assert np.all(np.abs(sim - 1 / q) < 0.02)


def test_code_dtype_and_shape_errors():
    assert [code_dtype(q) for q in (2, 256, 257, 65536, 65537)] == [
        np.uint8, np.uint8, np.uint16, np.uint16, np.uint32]
    keying = CodeKeying(KEY_A, 8, 4)
    for bad in (np.zeros((3, 9), np.uint8), np.zeros(8, np.uint8), np.zeros((2, 3, 8), np.uint8)):
        with pytest.raises(ValueError):
            keying.apply(bad)


# --------------------------------------------------------------------------- RandomIoM


def test_random_iom_matches_numpy_argmax_reference():
    m, q, dim, n = 16, 8, 32, 40
    hasher = RandomIoM(m, q, dim)
    w = hasher.projection(KEY_A)
    assert w.shape == (dim, m * q) and w.dtype == np.float32
    stream = KEY_A.stream(f"{RandomIoM.PURPOSE}/d={dim}/m={m}/q={q}")
    np.testing.assert_array_equal(w, stream.normal((dim, m * q)).astype(np.float32))
    assert abs(float(w.mean())) < 0.05 and abs(float(w.std()) - 1) < 0.05

    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    scores = (x.astype(np.float64) @ w.astype(np.float64)).reshape(n, m, q)
    expected = scores.argmax(axis=2)
    top2 = np.sort(scores, axis=2)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3  # float32 rounding cannot flip these
    assert clear.mean() > 0.99
    codes = hasher.encode(x, KEY_A)
    assert codes.shape == (n, m) and codes.dtype == np.uint8
    assert codes.min() >= 0 and codes.max() < q
    np.testing.assert_array_equal(codes[clear], expected[clear])


def test_random_iom_key_dependence():
    m, q, dim = 64, 4, 16
    x = np.random.default_rng(1).normal(size=(10, dim))
    codes = RandomIoM(m, q, dim).encode(x, KEY_A)
    np.testing.assert_array_equal(codes, RandomIoM(m, q, dim).encode(x, KEY_A))  # fresh cache
    other = RandomIoM(m, q, dim).encode(x, KEY_B)
    assert hamming_similarity(codes, other).mean() < 0.5  # chance is 1/q = 0.25


def test_random_iom_locality():
    m, q, dim, n = 256, 4, 64, 30
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    near = x + 0.1 * rng.normal(size=x.shape) / np.sqrt(dim)
    far = rng.normal(size=x.shape)
    hasher = RandomIoM(m, q, dim)
    codes = hasher.encode(x, KEY_A)
    sim_near = hamming_similarity(codes, hasher.encode(near, KEY_A)).mean()
    sim_far = hamming_similarity(codes, hasher.encode(far, KEY_A)).mean()
    assert sim_near > sim_far + 0.3


def test_random_iom_errors():
    for m, q, dim in [(0, 4, 8), (4, 1, 8), (4, 4, 0)]:
        with pytest.raises(ValueError):
            RandomIoM(m, q, dim)
    with pytest.raises(ValueError):
        RandomIoM(4, 4, 8).encode(np.zeros((2, 7)), KEY_A)


# --------------------------------------------------------------------------- matching


def test_hamming_similarity_by_hand():
    a = [[0, 1, 2, 3], [1, 1, 1, 1], [3, 2, 1, 0]]
    b = [[0, 1, 0, 0], [1, 1, 1, 1], [0, 1, 2, 3]]
    np.testing.assert_allclose(hamming_similarity(a, b), [0.5, 1.0, 0.0])


@pytest.mark.parametrize("q_given", [False, True])
def test_similarity_matrix_equals_brute_force(q_given):
    rng = np.random.default_rng(3)
    q, m = 5, 20
    probes, gallery = random_codes(rng, 7, m, q), random_codes(rng, 9, m, q)
    gallery[0] = probes[0]
    brute = np.array([[np.mean(p == g) for g in gallery] for p in probes])
    sims = hamming_similarity_matrix(probes, gallery, q=q if q_given else None, chunk=3)
    assert sims.shape == (7, 9) and sims.dtype == np.float32
    np.testing.assert_allclose(sims, brute, atol=1e-6)
    assert sims[0, 0] == 1.0
    # row-wise similarity is the diagonal of the matrix
    np.testing.assert_allclose(hamming_similarity(probes, gallery[:7]), np.diag(sims[:, :7]), atol=1e-6)


def test_one_hot_codes():
    hot = one_hot_codes(np.array([[0, 2], [1, 1]]), 3)
    np.testing.assert_array_equal(hot, [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0]])


def test_matching_shape_errors():
    with pytest.raises(ValueError):
        hamming_similarity(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        hamming_similarity(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError):
        hamming_similarity_matrix(np.zeros((2, 3), int), np.zeros((2, 4), int))
    with pytest.raises(ValueError):
        hamming_similarity_matrix(np.zeros(3, int), np.zeros((2, 3), int))


# --------------------------------------------------------------------------- PKSampler

# label -> count: 1 sample (unusable), 2-3 samples (< K: with replacement), >= K samples.
COUNTS = {101: 1, 102: 2, 103: 3, 104: 6, 105: 9, 106: 4, 107: 1, 108: 5}
P, K = 3, 4


def pk_labels():
    labels = np.concatenate([[c] * n for c, n in COUNTS.items()])
    return np.random.default_rng(0).permutation(labels)


def test_pk_batches_have_p_classes_times_k_samples():
    labels = pk_labels()
    sampler = PKSampler(labels, P, K, seed=5)
    assert sampler.batch_size == P * K
    seen = set()
    for i in range(30):
        idx = sampler.batch(i)
        assert idx.shape == (P * K,)
        groups = labels[idx].reshape(P, K)
        assert (groups == groups[:, :1]).all()          # grouped by class, K each
        classes = groups[:, 0]
        assert len(set(classes)) == P                   # P distinct classes
        for c, members in zip(classes, idx.reshape(P, K)):
            assert COUNTS[c] >= 2                       # never a single-sample class
            if COUNTS[c] >= K:
                assert len(set(members)) == K           # without replacement
        seen |= set(classes.tolist())
    assert seen == {c for c, n in COUNTS.items() if n >= 2}


def test_pk_small_classes_sampled_with_replacement():
    labels = np.array([0, 0, 1, 1, 1])
    idx = PKSampler(labels, 2, 6, seed=0).batch(0).reshape(2, 6)
    for row in idx:
        members = set(np.flatnonzero(labels == labels[row[0]]))
        assert set(row) <= members and len(set(row)) < 6


def test_pk_determinism():
    labels = pk_labels()
    a, b = PKSampler(labels, P, K, seed=1), PKSampler(labels, P, K, seed=1)
    np.testing.assert_array_equal(a.batch(4), b.batch(4))
    assert not np.array_equal(a.batch(0), a.batch(1))
    assert not np.array_equal(a.batch(0), PKSampler(labels, P, K, seed=2).batch(0))


@pytest.mark.parametrize("labels, p, k", [
    ([0, 0, 1, 2, 3], 2, 2),          # only one class has two samples
    ([0, 0, 1, 1], 3, 2),             # fewer classes than P
    ([0, 0, 1, 1], 1, 2),             # P < 2
    ([0, 0, 1, 1], 2, 1),             # K < 2
    ([], 2, 2),
])
def test_pk_config_errors(labels, p, k):
    with pytest.raises(ConfigError):
        PKSampler(labels, p, k)
