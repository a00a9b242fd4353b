"""Packed IoM codes and 1:N search: iom.search.packing and iom.search.gallery (NumPy only)."""

import subprocess
import sys

import numpy as np
import pytest

from iom.search.packing import (bits_per_symbol, count_mismatches, from_bytes, pack_codes,
                                packed_nbytes, packed_shape, to_bytes, unpack_codes)
from iom.search.gallery import PackedGallery


def _codes(rng, n, m, q):
    return rng.integers(0, q, size=(n, m), dtype=np.int64)


def _brute_force(codes, ids, probe, k):
    """(id, similarity) best first, equal similarity → smaller id first."""
    mism = (codes != probe).sum(1)
    order = np.lexsort((ids, mism))[:k]
    return [(int(ids[i]), 1.0 - mism[i] / codes.shape[1]) for i in order]


def test_sizes():
    assert [bits_per_symbol(q) for q in (2, 3, 4, 8, 9, 16, 17, 256)] == [1, 2, 2, 3, 4, 4, 5, 8]
    assert packed_nbytes(512, 8) == 192 and packed_shape(512, 8) == (3, 8)
    assert packed_nbytes(512, 16) == 256          # two symbols a byte
    assert packed_nbytes(512, 2) == 64
    assert packed_nbytes(100, 16) == 4 * 2 * 8


@pytest.mark.parametrize("q", [2, 3, 8, 16, 256])
@pytest.mark.parametrize("m", [1, 64, 100, 512])
def test_pack_unpack_round_trip(q, m):
    rng = np.random.default_rng(q * 1000 + m)
    codes = _codes(rng, 37, m, q)
    codes[0] = q - 1                               # extreme symbols present
    codes[1] = 0
    packed = pack_codes(codes, q)
    assert packed.dtype == np.uint64 and packed.shape == (37, *packed_shape(m, q))
    if m % 64:                                     # padding bits are zero
        assert not np.any(packed[:, :, -1] >> np.uint64(m % 64))
    out = unpack_codes(packed, m, q)
    assert out.dtype == np.uint8 and np.array_equal(out, codes)
    assert np.array_equal(unpack_codes(packed.reshape(37, -1), m, q), codes)   # flat rows too


def test_bit_layout_is_documented_one():
    codes = np.zeros((1, 130), np.uint8)
    codes[0, 0], codes[0, 65], codes[0, 129] = 1, 2, 3     # q=4: planes 0 and 1
    packed = pack_codes(codes, 4)
    assert packed.shape == (1, 2, 3)
    assert packed[0, 0].tolist() == [1, 0, 2]               # plane 0: symbols 0 and 129
    assert packed[0, 1].tolist() == [0, 2, 2]               # plane 1: symbols 65 and 129


@pytest.mark.parametrize("q,m", [(2, 512), (3, 100), (8, 512), (16, 512), (16, 70), (256, 96)])
def test_mismatches_and_similarities_match_numpy(q, m):
    rng = np.random.default_rng(q + m)
    codes = _codes(rng, 300, m, q)
    probe = codes[5].copy()
    probe[: m // 4] = rng.integers(0, q, m // 4)
    want = (codes != probe).sum(1)
    packed = pack_codes(codes, q)
    assert np.array_equal(count_mismatches(packed, pack_codes(probe[None], q)), want)
    gallery = PackedGallery(m, q)
    gallery.add(np.arange(300), codes)
    got = gallery.mismatches(probe)
    assert got.shape == (300,) and np.array_equal(got, want)
    sims = gallery.similarities(probe)
    assert sims.dtype == np.float32
    np.testing.assert_allclose(sims, 1.0 - want / m, rtol=0, atol=1e-6)
    assert gallery.similarities(codes[7])[7] == 1.0


@pytest.mark.parametrize("q", [2, 8, 16])
def test_search_equals_brute_force_with_tie_rule(q):
    rng = np.random.default_rng(q)
    m = 40 if q == 2 else 16                       # short codes: many equal similarities
    codes = _codes(rng, 2000, m, q)
    ids = rng.permutation(10 ** 6)[:2000].astype(np.int64)
    gallery = PackedGallery(m, q)
    gallery.add(ids, codes)
    for p in range(5):
        probe = codes[p * 100].copy()
        probe[: m // 2] = rng.integers(0, q, m // 2)
        for k in (1, 10, 57):
            assert gallery.search(probe, top_k=k) == _brute_force(codes, ids, probe, k)
    probes = codes[:4]
    assert gallery.search_many(probes, 12) == [_brute_force(codes, ids, p, 12) for p in probes]
    assert gallery.search(codes[3], top_k=1)[0] == (int(ids[3]), 1.0)
    assert len(gallery.search(codes[3], top_k=5000)) == 2000


def test_ties_resolved_by_smaller_id_across_chunks():
    codes = np.zeros((50, 8), np.uint8)                 # all identical: everything ties
    ids = np.arange(50)[::-1] * 3
    gallery = PackedGallery(8, 4, chunk_size=7, workers=2)
    gallery.add(ids, codes)
    assert gallery.search(np.zeros(8, np.uint8), top_k=5) == [(i, 1.0) for i in (0, 3, 6, 9, 12)]


def test_chunking_and_threads_do_not_change_results():
    rng = np.random.default_rng(7)
    m, q = 100, 16
    codes = _codes(rng, 1500, m, q)
    ids = rng.permutation(1500) + 10
    probes = _codes(rng, 3, m, q)
    probes[0] = codes[33]
    reference = PackedGallery(m, q, chunk_size=10 ** 6, workers=1)
    reference.add(ids, codes)
    for chunk_size, workers in ((1, 2), (13, 2), (64, 3), (500, 1)):
        gallery = PackedGallery(m, q, chunk_size=chunk_size, workers=workers)
        gallery.add(ids, codes)
        for probe in probes:
            assert np.array_equal(gallery.mismatches(probe), reference.mismatches(probe))
            assert gallery.search(probe, 20) == reference.search(probe, 20)
        assert gallery.search_many(probes, 7) == reference.search_many(probes, 7)


def test_add_remove_keep_ids_and_codes_consistent():
    rng = np.random.default_rng(3)
    m, q = 64, 8
    codes = _codes(rng, 100, m, q)
    ids = np.arange(100) * 10
    gallery = PackedGallery(m, q, capacity=2)           # forces growth
    gallery.add(ids[:60], codes[:60])
    gallery.add(ids[60:], codes[60:])
    assert len(gallery) == 100 and gallery.nbytes == 100 * packed_nbytes(m, q)
    gone = [ids[50], ids[0], ids[99], ids[7]]            # middle, first, last, middle
    gallery.remove(gone)
    assert len(gallery) == 96
    keep = ~np.isin(ids, gone)
    # every remaining id still carries its own code
    by_id = dict(zip(gallery.ids.tolist(), gallery.codes()))
    assert sorted(by_id) == sorted(ids[keep].tolist())
    for i, code in zip(ids[keep], codes[keep]):
        assert np.array_equal(by_id[int(i)], code)
    assert ids[50] not in gallery and ids[51] in gallery
    probe = codes[50]                                    # the removed template's code
    assert gallery.search(probe, 10) == _brute_force(codes[keep], ids[keep], probe, 10)
    assert all(r[0] != ids[50] for r in gallery.search(probe, 96))
    with pytest.raises(KeyError):
        gallery.remove([ids[50]])
    with pytest.raises(ValueError):
        gallery.add([ids[1]], codes[:1])                 # still enrolled
    with pytest.raises(ValueError):
        gallery.add([5, 5], codes[:2])                   # repeated in the batch
    gallery.add([ids[50]], codes[50:51])                 # re-enrol after removal
    assert gallery.search(probe, 1) == [(int(ids[50]), 1.0)]
    gallery.remove(gallery.ids.copy())
    assert len(gallery) == 0 and gallery.search(probe) == []


def test_add_packed_equals_add():
    rng = np.random.default_rng(4)
    codes = _codes(rng, 30, 100, 16)
    a, b = PackedGallery(100, 16), PackedGallery(100, 16)
    a.add(np.arange(30), codes)
    b.add_packed(np.arange(30), pack_codes(codes, 16))
    assert np.array_equal(a.packed(), b.packed()) and np.array_equal(a.codes(), codes)
    with pytest.raises(ValueError):
        b.add_packed([99], pack_codes(codes[:1], 8))     # wrong number of planes


def test_bytes_round_trip_and_length_check():
    rng = np.random.default_rng(5)
    for m, q in ((512, 8), (100, 16), (3, 2), (64, 256)):
        packed = pack_codes(_codes(rng, 4, m, q), q)
        blob = to_bytes(packed[2])
        assert isinstance(blob, bytes) and len(blob) == packed_nbytes(m, q)
        assert np.array_equal(from_bytes(blob, m, q), packed[2])
        with pytest.raises(ValueError):
            from_bytes(blob[:-1], m, q)
        with pytest.raises(ValueError):
            from_bytes(blob + b"\0" * 8, m, q)
    # fixed little-endian layout: symbol 0 = 1 sets the first byte's lowest bit
    one = np.zeros((1, 64), np.uint8)
    one[0, 0] = 1
    assert to_bytes(pack_codes(one, 2)[0]) == b"\x01" + b"\0" * 7
    with pytest.raises(ValueError, match="padding"):
        from_bytes(b"\xff" * 8, 10, 2)
    with pytest.raises(ValueError, match="outside"):
        from_bytes(b"\xff" * 16, 64, 3)                   # symbol 3 with q = 3


def test_invalid_input_raises_value_error():
    with pytest.raises(ValueError, match="symbols"):
        pack_codes(np.array([[0, 8]]), 8)
    with pytest.raises(ValueError, match="symbols"):
        pack_codes(np.array([[-1, 0]]), 8)
    with pytest.raises(ValueError, match="integer"):
        pack_codes(np.array([[0.0, 1.0]]), 8)
    with pytest.raises(ValueError, match="2-D"):
        pack_codes(np.zeros(5, np.uint8), 8)
    for q in (1, 0, 257, 2.0, True):
        with pytest.raises(ValueError, match="q must"):
            pack_codes(np.zeros((2, 3), np.uint8), q)
        with pytest.raises(ValueError):
            PackedGallery(8, q)
    assert unpack_codes(np.zeros((2, 3, 1), np.uint64), 64, 8).shape == (2, 64)
    with pytest.raises(ValueError, match="shape"):
        unpack_codes(np.zeros((2, 2, 1), np.uint64), 64, 8)   # q=8 needs 3 planes
    with pytest.raises(ValueError, match="uint64"):
        unpack_codes(np.zeros((2, 3, 1), np.int64), 64, 8)
    gallery = PackedGallery(16, 8)
    gallery.add([1], np.zeros((1, 16), np.uint8))
    with pytest.raises(ValueError):
        gallery.add([2], np.zeros((1, 15), np.uint8))     # wrong m
    with pytest.raises(ValueError):
        gallery.add([2, 3], np.zeros((1, 16), np.uint8))  # ids/codes disagree
    with pytest.raises(ValueError):
        gallery.search(np.zeros(15, np.uint8))
    with pytest.raises(ValueError):
        gallery.search(np.full(16, 8))                     # symbol out of range
    with pytest.raises(ValueError):
        gallery.search(np.zeros(16, np.uint8), top_k=0)


def test_empty_gallery():
    gallery = PackedGallery(512, 16)
    assert len(gallery) == 0
    assert gallery.search(np.zeros(512, np.uint8)) == []
    assert gallery.search_many(np.zeros((3, 512), np.uint8)) == [[], [], []]
    assert gallery.mismatches(np.zeros(512, np.uint8)).shape == (0,)
    assert gallery.codes().shape == (0, 512)


def test_service_modules_import_no_deep_learning_backend():
    code = ("import sys, iom.search.packing, iom.search.gallery; "
            "print(sorted({k.split('.')[0] for k in sys.modules} & {'keras', 'jax', 'tensorflow', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
