"""Tests for arcface.data.folders: identity-per-folder datasets."""

import os
from pathlib import Path

import numpy as np
import pytest

from arcface.data.folders import scan_image_folder
from arcface.errors import DataFormatError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_scan_temporary_tree(tmp_path):
    root = tmp_path / "ds"
    _touch(root / "manifest.tsv", b"path\tstatus\n")
    _touch(root / "root_image.jpg")  # files at the root are not identities
    _touch(root / ".hidden_id" / "h.jpg")
    _touch(root / "bob" / "2.png", b"bob2")
    _touch(root / "bob" / "1.JPG", b"bob1")
    _touch(root / "alice" / "x.jpeg", b"alice")
    _touch(root / "alice" / ".secret.jpg")
    _touch(root / "alice" / "notes.txt")
    (root / "empty_id").mkdir()
    _touch(root / "carol" / "sub" / "3.bmp", b"carol3")
    _touch(root / "carol" / "a.webp", b"carola")

    ds = scan_image_folder(root)
    assert ds.class_names == ["alice", "bob", "carol"]
    assert ds.num_classes == 3 and len(ds) == 5
    assert [ds.name(i) for i in range(len(ds))] == ["alice/x.jpeg", "bob/1.JPG", "bob/2.png", "carol/a.webp", "carol/sub/3.bmp"]
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 2, 2])
    assert all(Path(p).is_absolute() for p in ds.paths)
    assert ds.read_bytes(2) == b"bob2"
    assert ds.root == os.path.abspath(root)
    # deterministic
    again = scan_image_folder(str(root))
    assert again.paths == ds.paths and again.class_names == ds.class_names

    only_png = scan_image_folder(root, extensions=("png",))
    assert only_png.class_names == ["bob"] and len(only_png) == 1


def test_scan_errors(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        scan_image_folder(tmp_path / "missing")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataFormatError, match="not a directory"):
        scan_image_folder(f)
    root = tmp_path / "noimg"
    _touch(root / "manifest.tsv")
    _touch(root / "a" / "readme.txt")
    with pytest.raises(DataFormatError, match="no images"):
        scan_image_folder(root)


def test_read_bytes_of_removed_file(tmp_path):
    _touch(tmp_path / "a" / "1.jpg")
    ds = scan_image_folder(tmp_path)
    (tmp_path / "a" / "1.jpg").unlink()
    with pytest.raises(DataFormatError, match="1.jpg"):
        ds.read_bytes(0)


def test_real_celeba299():
    root = SHARED_DATA / "celeba299_112"
    if not root.is_dir():
        pytest.skip(f"../shared/data not present: {root} is missing")
    ds = scan_image_folder(root)
    assert ds.num_classes == 299
    assert len(ds) == 6258
    assert not any(p.endswith("manifest.tsv") for p in ds.paths)
    assert np.all(np.diff(ds.labels) >= 0)
    assert set(np.unique(ds.labels)) == set(range(299))
