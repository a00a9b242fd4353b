"""Tests for arcface.data.pairs: LFW pairs.txt parsing, folds, PairSet and dispatch."""

from pathlib import Path

import numpy as np
import pytest

from arcface.data.pairs import (
    LfwPair,
    PairSet,
    load_pairs_dir,
    read_lfw_pairs,
    write_lfw_pairs,
)
from arcface.data.verification_sets import load_verification_set
from arcface.errors import DataFormatError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

PAIRS_WITH_HEADER = """2\t2
Alice\t1\t2
Bob 1 3

Carol\t2\tDave\t1
Alice   3   Bob   2
Dave\t1\t2
Carol\t1\t3
Eve\t1\tAlice\t1
Bob\t2\tCarol\t3
"""


def _make_images(root: Path, pairs, ext="jpg"):
    for p in pairs:
        for name, idx in ((p.name1, p.idx1), (p.name2, p.idx2)):
            f = root / name / f"{name}_{idx:04d}.{ext}"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"img")


def test_parse_small_file_with_header(tmp_path):
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(PAIRS_WITH_HEADER)
    pairs = read_lfw_pairs(pairs_file)
    assert len(pairs) == 8
    assert pairs[0] == LfwPair("Alice", 1, "Alice", 2) and pairs[0].issame
    assert pairs[2] == LfwPair("Carol", 2, "Dave", 1) and not pairs[2].issame
    assert pairs[3] == LfwPair("Alice", 3, "Bob", 2)

    _make_images(tmp_path, pairs)
    ps = load_pairs_dir(tmp_path)
    assert isinstance(ps, PairSet)
    assert ps.name == tmp_path.name
    np.testing.assert_array_equal(ps.issame, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(ps.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    assert ps.n_folds == 2
    assert ps.left[0] == str(tmp_path / "Alice" / "Alice_0001.jpg")
    assert ps.right[0] == str(tmp_path / "Alice" / "Alice_0002.jpg")
    assert ps.left[2] == str(tmp_path / "Carol" / "Carol_0002.jpg")
    assert ps.right[2] == str(tmp_path / "Dave" / "Dave_0001.jpg")
    assert all(Path(p).is_file() for p in ps.left + ps.right)
    # the same through the file path and the dispatcher
    same = load_verification_set(pairs_file, name="tiny")
    assert same.name == "tiny" and same.left == ps.left
    assert load_verification_set(tmp_path).right == ps.right


def test_no_header_gives_ten_chunks_and_custom_root(tmp_path):
    lines = []
    for i in range(20):
        lines.append(f"P{i}\t1\t2" if i % 2 == 0 else f"P{i}\t1\tQ{i}\t1")
    pairs_file = tmp_path / "my_pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    images = tmp_path / "images"
    _make_images(images, read_lfw_pairs(pairs_file), ext="png")
    ps = load_pairs_dir(pairs_file, image_root=images, ext=".png")
    assert ps.name == "my_pairs"
    np.testing.assert_array_equal(ps.folds, np.repeat(np.arange(10), 2))
    assert ps.left[1] == str(images / "P1" / "P1_0001.png")


def test_single_number_header(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("2\nA 1 2\nA 2 3\nA 1 B 1\nA 2 B 2\n")
    assert len(read_lfw_pairs(f)) == 4


@pytest.mark.parametrize(
    "text, lineno",
    [
        ("10\t300\nAlice\t1\t2\nAlice\t1\n", 3),
        ("Alice\t1\t2\n\nBob\tx\t2\n", 3),
        ("Alice 1 2\nA 1 B 2 C\n", 2),
        ("Alice 1 -2\n", 1),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, text, lineno):
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(DataFormatError, match=rf"pairs\.txt:{lineno}:"):
        read_lfw_pairs(f)


def test_header_count_mismatch_and_empty(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("1\t2\nA 1 2\nA 1 B 1\n")
    with pytest.raises(DataFormatError, match="header says"):
        read_lfw_pairs(f)
    f.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no pairs"):
        read_lfw_pairs(f)
    with pytest.raises(DataFormatError, match="not found"):
        read_lfw_pairs(tmp_path / "missing.txt")


def test_missing_images_listed(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text(PAIRS_WITH_HEADER)
    pairs = read_lfw_pairs(f)
    _make_images(tmp_path, pairs[:4])
    (tmp_path / "Alice" / "Alice_0001.jpg").unlink()
    with pytest.raises(DataFormatError, match="missing") as info:
        load_pairs_dir(tmp_path)
    msg = str(info.value)
    assert "Alice_0001.jpg" in msg and "Eve_0001.jpg" in msg


def test_write_then_read(tmp_path):
    pairs = [
        ("A", 1, 2), ("B", 1, 3), ("A", 1, "B", 2), LfwPair("C", 4, "D", 5),
        LfwPair("C", 1, "C", 2), ("D", 1, 2), ("A", 2, "C", 3), ("B", 2, "D", 1),
    ]
    out = tmp_path / "gen" / "pairs.txt"
    write_lfw_pairs(out, pairs, n_folds=2, n_per_fold=2)
    text = out.read_text().splitlines()
    assert text[0] == "2\t2" and text[1] == "A\t1\t2" and text[3] == "A\t1\tB\t2" and text[5] == "C\t1\t2"
    back = read_lfw_pairs(out)
    assert back[2] == LfwPair("A", 1, "B", 2) and back[4] == LfwPair("C", 1, "C", 2)
    with pytest.raises(DataFormatError, match="expected a different pair"):
        write_lfw_pairs(out, pairs[:2] + pairs[:2], n_folds=1, n_per_fold=2)
    with pytest.raises(DataFormatError, match="pairs given"):
        write_lfw_pairs(out, pairs, n_folds=1, n_per_fold=2)
    with pytest.raises(DataFormatError, match="whitespace"):
        write_lfw_pairs(out, [("A B", 1, 2), ("A", 1, "B", 1)], n_folds=1, n_per_fold=1)


def test_pairset_validation():
    with pytest.raises(DataFormatError):
        PairSet("x", [b"a"], [b"b", b"c"], np.array([True]), np.array([0]))


def test_load_verification_set_unknown(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        load_verification_set(tmp_path / "nothing.bin")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataFormatError, match="not a verification set"):
        load_verification_set(tmp_path / "data.csv")
    with pytest.raises(DataFormatError, match="not a verification set"):
        load_verification_set(tmp_path)


def test_real_lfw_pairs():
    root = SHARED_DATA / "lfw_112"
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"../shared/data not present: {root / 'pairs.txt'} is missing")
    ps = load_pairs_dir(root)
    assert len(ps) == 6000
    assert int(ps.issame.sum()) == 3000
    np.testing.assert_array_equal(np.bincount(ps.folds), [600] * 10)
    # each fold: 300 same then 300 different
    for k in range(10):
        np.testing.assert_array_equal(ps.issame[ps.folds == k], [True] * 300 + [False] * 300)
    assert all(Path(p).is_file() for p in set(ps.left) | set(ps.right))
    assert ps.name == "lfw_112"
