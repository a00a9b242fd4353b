"""Tests for arcface.data.pair_generation and scripts/generate_pairs.py, scripts/make_bin.py."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from arcface.data.folders import scan_image_folder
from arcface.data.pair_generation import generate_pairs, make_verification_bin, write_pairs
from arcface.data.pairs import (
    PATH_PAIRS_MAGIC,
    load_pairs_dir,
    read_lfw_pairs,
    read_path_pairs,
)
from arcface.data.verification_bin import read_verification_bin
from arcface.data.verification_sets import load_verification_set
from arcface.errors import DataFormatError
from tests.conftest import REPO, shared_data, write_identity_folder


def write_lfw_folder(root: Path, n_people: int = 30, seed: int = 0, ext: str = "jpg") -> Path:
    """LFW-named tiny JPEGs: person_XX/person_XX_NNNN.jpg, 1 to 4 images per person."""
    rng = np.random.default_rng(seed)
    for p in range(n_people):
        name = f"person_{p:02d}"
        (root / name).mkdir(parents=True, exist_ok=True)
        for idx in range(1, 1 + [1, 2, 3, 4][p % 4]):
            img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (16, 16))
            ok, buf = cv2.imencode(f".{ext}", img)
            assert ok
            (root / name / f"{name}_{idx:04d}.{ext}").write_bytes(buf.tobytes())
    return root


@pytest.fixture
def lfw_folder(tmp_path):
    return write_lfw_folder(tmp_path / "lfw_like")


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, f"scripts/{script}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def check_protocol(g, n_folds, n_per_fold):
    """Counts, order, person-disjoint folds, no duplicates, no self pairs, files exist."""
    assert len(g) == 2 * n_folds * n_per_fold
    np.testing.assert_array_equal(g.folds, np.repeat(np.arange(n_folds), 2 * n_per_fold))
    np.testing.assert_array_equal(g.issame, np.tile(np.repeat([True, False], n_per_fold), n_folds))
    owner = {}
    for f in range(n_folds):
        seen = set()
        for i in np.flatnonzero(g.folds == f):
            a, b = g.identities(i)
            assert (a == b) == bool(g.issame[i])
            assert g.left[i] != g.right[i]
            key = frozenset((g.left[i], g.right[i]))
            assert key not in seen, f"duplicate pair in fold {f}: {sorted(key)}"
            seen.add(key)
            for ident in (a, b):
                assert owner.setdefault(ident, f) == f, f"{ident} appears in folds {owner[ident]} and {f}"
    for p in g.left + g.right:
        assert os.path.isfile(os.path.join(g.root, p)), p
    return owner


# ----------------------------------------------------------------------------- generation


def test_lfw_style_protocol_and_round_trip(lfw_folder):
    g = generate_pairs(lfw_folder, n_folds=5, n_per_fold=3, seed=0)
    owner = check_protocol(g, 5, 3)
    assert len(set(owner.values())) == 5
    assert g.is_lfw_style and g.lfw_ext == "jpg"
    for q, a, b in zip(g.lfw_pairs, g.left, g.right):
        assert a == f"{q.name1}/{q.name1}_{q.idx1:04d}.jpg" and b == f"{q.name2}/{q.name2}_{q.idx2:04d}.jpg"

    assert write_pairs(lfw_folder / "pairs.txt", g) == "lfw"
    assert list(read_lfw_pairs(lfw_folder / "pairs.txt")) == list(g.lfw_pairs)
    assert (lfw_folder / "pairs.txt").read_text().startswith("5\t3\n")
    ps = load_verification_set(lfw_folder)
    expected = g.to_pair_set()
    assert ps.left == expected.left and ps.right == expected.right
    assert ps.left[0] == str(lfw_folder / g.left[0])
    np.testing.assert_array_equal(ps.issame, g.issame)
    np.testing.assert_array_equal(ps.folds, g.folds)


def test_path_style_protocol_and_round_trip(tmp_path):
    root = write_identity_folder(tmp_path / "faces", n_classes=8, per_class=4, size=8)  # id_XXX/NNN.png
    g = generate_pairs(scan_image_folder(root), n_folds=4, n_per_fold=5, seed=3)
    check_protocol(g, 4, 5)
    assert not g.is_lfw_style and g.lfw_pairs is None

    assert write_pairs(root / "pairs.txt", g) == "paths"
    text = (root / "pairs.txt").read_text()
    assert text.startswith(PATH_PAIRS_MAGIC) and "\n4\t5\n" in text and str(tmp_path) not in text
    assert [(p.path1, p.path2, p.issame) for p in read_path_pairs(root / "pairs.txt")] == \
        list(zip(g.left, g.right, g.issame.tolist()))
    for source in (root, root / "pairs.txt"):
        ps = load_verification_set(source)
        assert ps.left == [str(root / p) for p in g.left] and ps.right == [str(root / p) for p in g.right]
        np.testing.assert_array_equal(ps.issame, g.issame)
        np.testing.assert_array_equal(ps.folds, g.folds)
    # a pairs file outside the folder is loaded against an explicit image root
    write_pairs(tmp_path / "elsewhere.txt", g)
    assert load_pairs_dir(tmp_path / "elsewhere.txt", image_root=root).left == ps.left
    # an LFW-named folder can be written as paths too, but not the reverse
    with pytest.raises(DataFormatError, match="path pairs format"):
        write_pairs(tmp_path / "x.txt", g, fmt="lfw")


@pytest.mark.parametrize("body, message", [
    ("1\t1\na.jpg\tb.jpg\t1\n", "header says 1 folds x 1 x 2 = 2 pairs but the file has 1"),
    ("a.jpg b.jpg 1\n", "got 1 tab-separated fields"),
    ("a.jpg\tb.jpg\tyes\n", "issame must be 1 or 0"),
    ("a.jpg\t\t0\n", "empty image path"),
    ("# only comments\n", "no pairs"),
])
def test_path_pairs_reader_errors(tmp_path, body, message):
    f = tmp_path / "pairs.txt"
    f.write_text(f"{PATH_PAIRS_MAGIC}: test\n{body}")
    with pytest.raises(DataFormatError, match=message):
        load_verification_set(f)


def test_path_pairs_reader_tolerates_crlf_and_spaces(tmp_path):
    (tmp_path / "a b").mkdir()
    for n in ("1.jpg", "2.jpg"):
        (tmp_path / "a b" / n).write_bytes(b"x")
    f = tmp_path / "pairs.txt"
    f.write_bytes(f"{PATH_PAIRS_MAGIC}\r\n# note\r\n\r\na b/1.jpg\ta b/2.jpg\t1\r\n".encode())
    ps = load_verification_set(f)
    assert ps.left == [str(tmp_path / "a b" / "1.jpg")] and ps.issame.tolist() == [True]


def test_mixed_naming_falls_back_to_paths(lfw_folder):
    (lfw_folder / "person_01" / "extra.jpg").write_bytes(b"not lfw named")
    assert not generate_pairs(lfw_folder, n_folds=2, n_per_fold=2).is_lfw_style


def test_deterministic_file_bytes(lfw_folder, tmp_path):
    paths = []
    for k, seed in enumerate((7, 7, 8)):
        paths.append(tmp_path / f"pairs{k}.txt")
        write_pairs(paths[-1], generate_pairs(lfw_folder, n_folds=5, n_per_fold=3, seed=seed))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_deterministic_paths_format(tmp_path):
    root = write_identity_folder(tmp_path / "faces", n_classes=8, per_class=4, size=8)
    a, b, c = (generate_pairs(root, n_folds=4, n_per_fold=4, seed=s) for s in (1, 1, 2))
    write_pairs(tmp_path / "a.txt", a)
    write_pairs(tmp_path / "b.txt", b)
    write_pairs(tmp_path / "c.txt", c)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert (tmp_path / "a.txt").read_bytes() != (tmp_path / "c.txt").read_bytes()


def test_tight_capacity_is_exhausted_without_duplicates(tmp_path):
    # 2 identities x 4 images per fold: exactly 2 * 6 same and 16 different image pairs per fold
    root = write_identity_folder(tmp_path / "faces", n_classes=4, per_class=4, size=8)
    g = generate_pairs(root, n_folds=2, n_per_fold=12, seed=0)
    check_protocol(g, 2, 12)
    with pytest.raises(DataFormatError, match=r"at most 12 pairs of each kind per fold"):
        generate_pairs(root, n_folds=2, n_per_fold=13, seed=0)
    g = generate_pairs(root, n_folds=1, n_per_fold=24, seed=0)  # 4 identities: 24 same, 96 different
    check_protocol(g, 1, 24)


def test_insufficient_folder(lfw_folder):
    # 30 people with 1..4 images: 8 x 1 + 7 x 3 + 7 x 6 = 71 same pairs in all
    with pytest.raises(DataFormatError, match=r"at most \d+ pairs of each kind per fold") as err:
        generate_pairs(lfw_folder, n_folds=5, n_per_fold=300)
    possible = int(str(err.value).split("at most ")[1].split()[0])
    assert 0 < possible < 300
    generate_pairs(lfw_folder, n_folds=5, n_per_fold=possible)  # the figure in the message is achievable
    with pytest.raises(DataFormatError, match=r"only 22 identities have 2 or more images"):
        generate_pairs(lfw_folder, n_folds=23, n_per_fold=1)
    with pytest.raises(DataFormatError, match="does not exist"):
        generate_pairs(lfw_folder / "missing")
    with pytest.raises(ValueError):
        generate_pairs(lfw_folder, n_folds=0)


def test_real_lfw_protocol():
    root = shared_data("lfw_112")
    g = generate_pairs(root, seed=0)
    owner = check_protocol(g, 10, 300)
    assert g.is_lfw_style and len(owner) > 3000
    # spread over identities: nobody is in more than a few pairs
    counts = np.unique([x for i in range(len(g)) for x in set(g.identities(i))], return_counts=True)[1]
    assert counts.max() <= 10


# ----------------------------------------------------------------------------- .bin


def test_make_bin_round_trip(lfw_folder, tmp_path):
    g = generate_pairs(lfw_folder, n_folds=10, n_per_fold=2, seed=1)
    write_pairs(tmp_path / "pairs.txt", g)
    stats = make_verification_bin(lfw_folder, tmp_path / "pairs.txt", tmp_path / "out" / "lfw.bin")
    assert stats.n_pairs == 40 and stats.folds_preserved
    assert sorted(os.listdir(tmp_path / "out")) == ["lfw.bin"]
    ps = read_verification_bin(tmp_path / "out" / "lfw.bin")
    assert len(ps) == 40 and stats.n_images == len(set(g.left + g.right))
    for got, rel in zip(ps.left + ps.right, g.left + g.right):
        assert got == (lfw_folder / rel).read_bytes()
    np.testing.assert_array_equal(ps.issame, g.issame)
    np.testing.assert_array_equal(ps.folds, np.repeat(np.arange(10), 4))


def test_make_bin_from_path_pairs_and_errors(tmp_path):
    root = write_identity_folder(tmp_path / "faces", n_classes=8, per_class=4, size=8)
    g = generate_pairs(root, n_folds=4, n_per_fold=3, seed=0)
    write_pairs(root / "pairs.txt", g)
    stats = make_verification_bin(root, root / "pairs.txt", tmp_path / "faces.bin", ext="ignored")
    assert not stats.folds_preserved  # 4 folds of 6 pairs are not 10 chunks
    ps = read_verification_bin(tmp_path / "faces.bin")
    assert ps.left == [(root / p).read_bytes() for p in g.left]
    assert ps.right == [(root / p).read_bytes() for p in g.right]
    with pytest.raises(DataFormatError, match="data folder does not exist"):
        make_verification_bin(tmp_path / "nope", root / "pairs.txt", tmp_path / "x.bin")
    with pytest.raises(DataFormatError, match="pairs file not found"):
        make_verification_bin(root, tmp_path / "nope.txt", tmp_path / "x.bin")
    os.remove(root / g.left[0])
    with pytest.raises(DataFormatError, match="missing"):
        make_verification_bin(root, root / "pairs.txt", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


def test_make_bin_real_lfw(tmp_path):
    root = shared_data("lfw_112")
    pairs_file = root / "pairs.txt"
    stats = make_verification_bin(root, pairs_file, tmp_path / "lfw.bin")
    assert stats.n_pairs == 6000 and stats.folds_preserved
    ps = read_verification_bin(tmp_path / "lfw.bin")
    src = load_pairs_dir(pairs_file)
    np.testing.assert_array_equal(ps.issame, src.issame)
    np.testing.assert_array_equal(ps.folds, src.folds)
    files = {p: Path(p).read_bytes() for p in set(src.left + src.right)}
    assert ps.left == [files[p] for p in src.left] and ps.right == [files[p] for p in src.right]
    assert ps.issame.sum() == 3000


# ----------------------------------------------------------------------------- scripts


def test_scripts(lfw_folder, tmp_path):
    r = run_script("generate_pairs.py", "--data_dir", lfw_folder, "--n_folds", 10, "--n_per_fold", 2,
                   "--seed", 4)
    assert r.returncode == 0, r.stderr
    assert "lfw format" in r.stdout and (lfw_folder / "pairs.txt").is_file()
    assert (lfw_folder / "pairs.txt").read_bytes() == _written(generate_pairs(lfw_folder, 10, 2, seed=4),
                                                                tmp_path / "ref.txt")
    r = run_script("make_bin.py", "--data_dir", lfw_folder, "--pairs", lfw_folder / "pairs.txt",
                   "--out", tmp_path / "lfw.bin")
    assert r.returncode == 0, r.stderr
    assert "wrote 40 pairs" in r.stdout
    assert len(read_verification_bin(tmp_path / "lfw.bin")) == 40

    for script, extra in (("generate_pairs.py", ()), ("make_bin.py", ("--pairs", lfw_folder / "pairs.txt",
                                                                       "--out", tmp_path / "x.bin"))):
        r = run_script(script, "--data_dir", tmp_path / "missing", *extra)
        assert r.returncode == 2, (script, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0], r.stderr
    r = run_script("generate_pairs.py", "--data_dir", lfw_folder, "--n_per_fold", 300)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "at most" in r.stderr


def _written(g, path):
    write_pairs(path, g)
    return path.read_bytes()


def test_modules_do_not_import_ml_frameworks():
    code = ("import sys, arcface.data.pair_generation; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
