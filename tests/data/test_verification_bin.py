"""Tests for arcface.data.verification_bin: InsightFace .bin read/write and the safe unpickler."""

import os
import pickle

import numpy as np
import pytest

from arcface.data.images import decode_image, encode_jpeg
from arcface.data.verification_sets import load_verification_set
from arcface.data.verification_bin import read_verification_bin, write_verification_bin
from arcface.errors import DataFormatError

RNG = np.random.default_rng(0)


def _images(n):
    return [encode_jpeg(RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8), quality=70) for _ in range(n)]


def _expected_folds(n, k=10):
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    return np.repeat(np.arange(k), sizes)


def test_round_trip(tmp_path):
    n = 25
    left, right = _images(n), _images(n)
    issame = RNG.random(n) < 0.5
    path = tmp_path / "sub" / "lfw.bin"
    write_verification_bin(path, left, right, issame)
    assert sorted(os.listdir(path.parent)) == ["lfw.bin"]  # no temporary left behind

    ps = read_verification_bin(path)
    assert ps.name == "lfw"
    assert len(ps) == n
    assert ps.left == left and ps.right == right
    assert all(type(x) is bytes for x in ps.left + ps.right)
    np.testing.assert_array_equal(ps.issame, issame)
    assert ps.issame.dtype == bool
    np.testing.assert_array_equal(ps.folds, _expected_folds(n))
    assert ps.n_folds == 10
    assert decode_image(ps.left[0]).shape == (12, 12, 3)
    assert load_verification_set(path, name="x").name == "x"

    # the file is the documented plain structure
    with open(path, "rb") as f:
        bins, issame_list = pickle.load(f)
    assert bins[0::2] == left and bins[1::2] == right
    assert issame_list == [bool(v) for v in issame] and all(type(v) is bool for v in issame_list)


def test_write_from_paths(tmp_path):
    imgs = _images(2)
    paths = []
    for i, data in enumerate(imgs):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(data)
        paths.append(str(p))
    write_verification_bin(tmp_path / "p.bin", [paths[0]], [paths[1]], [True])
    ps = read_verification_bin(tmp_path / "p.bin")
    assert ps.left == [imgs[0]] and ps.right == [imgs[1]]
    with pytest.raises(DataFormatError):
        write_verification_bin(tmp_path / "q.bin", [b"a", b"b"], [b"c"], [True, False])


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_pickle_with_bytes(tmp_path, protocol):
    n = 20
    bins = _images(2 * n)
    issame = [bool(i % 2) for i in range(n)]
    path = tmp_path / "plain.bin"
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)
    ps = read_verification_bin(path)
    assert ps.left == bins[0::2] and ps.right == bins[1::2]
    np.testing.assert_array_equal(ps.issame, issame)
    np.testing.assert_array_equal(ps.folds, np.repeat(np.arange(10), 2))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_array_elements(tmp_path, protocol):
    n = 12
    raw = _images(2 * n)
    bins = [np.frombuffer(b, dtype=np.uint8).copy() for b in raw]
    issame = np.array([i < 6 for i in range(n)])  # a numpy bool array, too
    path = tmp_path / "np.bin"
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)
    ps = read_verification_bin(path, name="np")
    assert ps.name == "np"
    assert ps.left == raw[0::2] and ps.right == raw[1::2]
    np.testing.assert_array_equal(ps.issame, issame)


def test_python2_style_pickle(tmp_path):
    """Hand-assembled protocol-2 pickle as Python 2 writes it: str (SHORT_BINSTRING) images."""
    data = (
        b"\x80\x02"  # PROTO 2
        b"]q\x00(U\x04img1U\x04img2U\x04img3U\x04img4e"  # list of py2 str
        b"]q\x01(\x88\x89e"  # [True, False]
        b"\x86q\x02."  # TUPLE2, STOP
    )
    path = tmp_path / "py2.bin"
    path.write_bytes(data)
    ps = read_verification_bin(path)
    assert ps.left == [b"img1", b"img3"] and ps.right == [b"img2", b"img4"]
    np.testing.assert_array_equal(ps.issame, [True, False])

    # a py2-era numpy global name (numpy.core.multiarray) is accepted too
    arr = np.frombuffer(b"abcd", dtype=np.uint8)
    blob = pickle.dumps(([arr, arr], [True]), protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in blob
    old = blob.replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")
    path.write_bytes(old)
    assert read_verification_bin(path).left == [b"abcd"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvalEvil])
def test_malicious_pickle_is_refused(tmp_path, evil_cls):
    marker = tmp_path / "pwned"
    for payload in (
        evil_cls(marker),  # whole object
        ([b"a", evil_cls(marker)], [True]),  # hidden inside the bins
    ):
        path = tmp_path / "evil.bin"
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
        with pytest.raises(DataFormatError, match="refusing") as info:
            read_verification_bin(path)
        assert "evil.bin" in str(info.value)
        assert not marker.exists()
    with pytest.raises(DataFormatError):
        load_verification_set(path)
    assert not marker.exists()


def test_other_numpy_globals_are_refused(tmp_path):
    path = tmp_path / "np_evil.bin"
    path.write_bytes(b"\x80\x02cnumpy\nload\nq\x00.")
    with pytest.raises(DataFormatError, match="numpy.load"):
        read_verification_bin(path)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "not a valid"),
        (b"\x80\x04\x95garbage", "not a valid"),
        (pickle.dumps({"bins": []}), "expected a pickled"),
        (pickle.dumps(([b"a", b"b", b"c"], [True])), "3 images for 1 pairs"),
        (pickle.dumps(([b"a", 5], [True])), "image 1"),
        (pickle.dumps(([b"a", b"b"], ["yes"])), "issame_list"),
    ],
)
def test_malformed_bins(tmp_path, content, fragment):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=fragment):
        read_verification_bin(path)


def test_missing_bin(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        read_verification_bin(tmp_path / "nope.bin")
