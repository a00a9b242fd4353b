"""Tests for iom.keys: RFC 5869 vectors, TemplateKey derivation, KeyStream statistics and stability."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from iom.keys import KEY_BYTES, KeyStream, TemplateKey, hkdf, hkdf_expand, hkdf_extract

H = bytes.fromhex

# RFC 5869, Appendix A, test cases 1-3 (SHA-256): (IKM, salt, info, L, PRK, OKM).
RFC5869 = {
    "case1": (
        H("0b" * 22), H("000102030405060708090a0b0c"), H("f0f1f2f3f4f5f6f7f8f9"), 42,
        H("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"),
        H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
          "34007208d5b887185865"),
    ),
    "case2": (
        bytes(range(0x00, 0x50)), bytes(range(0x60, 0xB0)), bytes(range(0xB0, 0x100)), 82,
        H("06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244"),
        H("b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
          "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
          "cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ),
    "case3": (
        H("0b" * 22), b"", b"", 42,
        H("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"),
        H("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
          "9d201395faa4b61a96c8"),
    ),
}


# --------------------------------------------------------------------------- HKDF


@pytest.mark.parametrize("case", sorted(RFC5869))
def test_hkdf_rfc5869_vectors(case):
    ikm, salt, info, length, prk, okm = RFC5869[case]
    assert hkdf_extract(salt, ikm) == prk
    assert hkdf_expand(prk, info, length) == okm
    assert hkdf(ikm, salt, info, length) == okm


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_expand_length_bounds(length):
    with pytest.raises(ValueError):
        hkdf_expand(b"\x01" * 32, b"", length)
    assert len(hkdf_expand(b"\x01" * 32, b"", 255 * 32)) == 255 * 32


# --------------------------------------------------------------------------- TemplateKey


def test_derive_is_deterministic_and_depends_on_every_input():
    key = TemplateKey.derive("alice", "app-secret", b"salt-1")
    assert key == TemplateKey.derive(b"alice", b"app-secret", b"salt-1")  # str == utf-8 bytes
    assert hash(key) == hash(TemplateKey.derive("alice", "app-secret", b"salt-1"))
    others = [TemplateKey.derive("bob", "app-secret", b"salt-1"),
              TemplateKey.derive("alice", "app-secret2", b"salt-1"),
              TemplateKey.derive("alice", "app-secret", b"salt-2"),
              TemplateKey.derive("alice", "app-secret", b"")]
    assert all(key != other for other in others)
    assert len({k.fingerprint() for k in [key, *others]}) == 5


def test_derive_length_prefix_separates_secret_and_token():
    assert TemplateKey.derive("c", "ab", b"s") != TemplateKey.derive("bc", "a", b"s")


@pytest.mark.parametrize("token, secret", [("", "secret"), (b"", b"secret"), ("tok", ""), ("tok", b"")])
def test_derive_rejects_empty_token_or_secret(token, secret):
    with pytest.raises(ValueError):
        TemplateKey.derive(token, secret, b"salt")


@pytest.mark.parametrize("token, secret, salt", [(123, "s", b""), ("t", None, b""), ("t", "s", 7),
                                                 (["t"], "s", b"")])
def test_derive_rejects_wrong_types(token, secret, salt):
    with pytest.raises(TypeError):
        TemplateKey.derive(token, secret, salt)


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33])
def test_key_must_be_32_bytes(raw):
    with pytest.raises(ValueError):
        TemplateKey(raw)
    assert TemplateKey(bytearray(KEY_BYTES)) == TemplateKey(bytes(KEY_BYTES))


def test_from_seed_and_random():
    assert TemplateKey.from_seed(7) == TemplateKey.from_seed(7) == TemplateKey.from_seed("7")
    assert TemplateKey.from_seed(7) != TemplateKey.from_seed(8)
    a = TemplateKey.random(np.random.default_rng(3))
    assert a == TemplateKey.random(np.random.default_rng(3))
    assert a != TemplateKey.random(np.random.default_rng(4))
    assert TemplateKey.random() != TemplateKey.random()
    assert a != a.fingerprint() and a != bytes(KEY_BYTES)


def test_repr_and_fingerprint_do_not_leak_the_key():
    raw = bytes(range(KEY_BYTES))
    key = TemplateKey(raw)
    fp = key.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    for text in (repr(key), fp):
        assert raw.hex() not in text
        assert raw[:8].hex() not in text and raw[-8:].hex() not in text
    assert fp in repr(key)


def test_streams_differ_by_purpose_and_reproduce():
    key = TemplateKey.from_seed(0)
    a = key.stream("purpose-a").uniform(64)
    np.testing.assert_array_equal(a, key.stream("purpose-a").uniform(64))
    assert not np.array_equal(a, key.stream("purpose-b").uniform(64))
    assert not np.array_equal(a, TemplateKey.from_seed(1).stream("purpose-a").uniform(64))


# --------------------------------------------------------------------------- KeyStream

SEED = bytes(range(100, 132))


def test_uniform_range_mean_variance():
    u = KeyStream(SEED).uniform(200_000)
    assert u.dtype == np.float64 and u.shape == (200_000,)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(u.var() - 1 / 12) < 0.002
    assert KeyStream(SEED).uniform((3, 0)).shape == (3, 0)


def test_uniform_equals_independent_pcg64_reference():
    # Stability across NumPy versions: only SeedSequence + PCG64.random_raw, then 53 top bits.
    words = list(struct.unpack(">8I", SEED))
    raw = np.random.PCG64(np.random.SeedSequence(words)).random_raw(1000)
    expected = (raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    stream = KeyStream(SEED)
    np.testing.assert_array_equal(stream.uniform((10, 50)), expected[:500].reshape(10, 50))
    np.testing.assert_array_equal(stream.uniform(500), expected[500:])  # the stream continues


def test_normal_moments_and_ks_distance():
    n = 100_000
    z = KeyStream(SEED).normal(n)
    assert z.shape == (n,) and np.isfinite(z).all()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    z = np.sort(z)
    cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z])
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 0.01
    assert KeyStream(SEED).normal((3, 5)).shape == (3, 5)  # odd count


def test_permutations_are_valid_distinct_and_uniform():
    count, n = 4000, 8
    perms = KeyStream(SEED).permutations(count, n)
    assert perms.shape == (count, n)
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(n), (count, 1)))
    assert len({tuple(p) for p in perms}) > 0.9 * count  # 8! = 40320 possible rows
    # value-at-position counts: each of the 64 cells expects count / n
    cells = np.zeros((n, n))
    np.add.at(cells, (np.tile(np.arange(n), count), perms.ravel()), 1)
    expected = count / n
    chi2 = ((cells - expected) ** 2 / expected).sum()
    assert chi2 < 120  # (n-1)^2 = 49 degrees of freedom
    one = KeyStream(SEED).permutation(50)
    np.testing.assert_array_equal(np.sort(one), np.arange(50))


def test_same_seed_same_arrays():
    a, b = KeyStream(SEED), KeyStream(SEED)
    for draw in (lambda s: s.uniform(17), lambda s: s.normal((4, 3)), lambda s: s.permutations(5, 9)):
        np.testing.assert_array_equal(draw(a), draw(b))
    assert not np.array_equal(KeyStream(SEED).uniform(17), KeyStream(bytes(32)).uniform(17))
