"""Tests for arcface.data.recordio: dmlc RecordIO framing and the InsightFace layout."""

import io
import os
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from arcface.data.images import decode_image, encode_jpeg
from arcface.data.recordio import (
    RecordIODataset,
    iter_records,
    pack_header,
    pack_record,
    read_record_at,
    unpack_header,
    write_insightface_recordio,
)
from arcface.errors import DataFormatError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


def _lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | length)


def _parts(rec: bytes, offset: int) -> list[tuple[int, int]]:
    """(cflag, length) of each part of the record at offset, parsed independently of the library."""
    out = []
    while True:
        magic, lrec = struct.unpack_from("<II", rec, offset)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        out.append((cflag, length))
        offset += 8 + (length + 3) // 4 * 4
        if cflag in (0, 3):
            return out


def _crafted_images() -> list[bytes]:
    """Image payloads with the magic number at 4-byte aligned payload offsets.

    The IR header is 24 bytes, so image offset k is payload offset 24 + k.
    """
    return [
        MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"e" + MAGIC_BYTES + b"fgh" + MAGIC_BYTES,  # aligned, unaligned, aligned end
        MAGIC_BYTES * 3 + b"xyz",  # consecutive magics: empty middle parts
        b"\x01" * 5 + MAGIC_BYTES + b"\x02" * 3,  # only unaligned -> one part
    ]


def _random_jpegs(rng, n):
    return [encode_jpeg(rng.integers(0, 256, (int(rng.integers(8, 24)), 16, 3), dtype=np.uint8), quality=80) for _ in range(n)]


# ----------------------------------------------------------------- byte level


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"hello", _lrec(0, 5) + b"hello" + b"\0\0\0"),
        (b"", _lrec(0, 0)),
        (b"ABCD" + MAGIC_BYTES + b"EFGHIJ", _lrec(1, 4) + b"ABCD" + _lrec(3, 6) + b"EFGHIJ\0\0"),
        (b"A" + MAGIC_BYTES + b"BCD", _lrec(0, 8) + b"A" + MAGIC_BYTES + b"BCD"),
        (MAGIC_BYTES + b"xy", _lrec(1, 0) + _lrec(3, 2) + b"xy\0\0"),
        (MAGIC_BYTES, _lrec(1, 0) + _lrec(3, 0)),
        (MAGIC_BYTES * 3, _lrec(1, 0) + _lrec(2, 0) + _lrec(2, 0) + _lrec(3, 0)),
        (b"abcd" + MAGIC_BYTES, _lrec(1, 4) + b"abcd" + _lrec(3, 0)),
        (b"abcdefgh" + MAGIC_BYTES + b"12345678" + MAGIC_BYTES + b"z",
         _lrec(1, 8) + b"abcdefgh" + _lrec(2, 8) + b"12345678" + _lrec(3, 1) + b"z\0\0\0"),
    ],
)
def test_pack_record_matches_documented_layout(payload, expected, tmp_path):
    assert pack_record(payload) == expected
    assert read_record_at(io.BytesIO(expected), 0) == payload
    # preceded by another record: through a file object and a raw descriptor (pread)
    first = _lrec(0, 5) + b"first\0\0\0"
    path = tmp_path / "one.rec"
    path.write_bytes(first + expected + first)
    with open(path, "rb") as f:
        assert read_record_at(f, len(first)) == payload
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_record_at(fd, len(first)) == payload
        assert read_record_at(fd, len(first) + len(expected)) == b"first"
    finally:
        os.close(fd)


def test_hand_built_file_is_read(tmp_path):
    """A small InsightFace dataset built only with struct, read back by the library."""
    img_a = b"\xff\xd8fake-jpeg-a"  # 13 bytes
    img_b = b"\x89PNGfake-b!"  # 11 bytes
    img_c = b"abcdefgh"
    records = [
        # header: flag=2, labels (a=4, b=6) -> images are keys 1..3, identities keys 4..5
        struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 4.0, 6.0),
        struct.pack("<IfQQ", 0, 0.0, 1, 0) + img_a,
        struct.pack("<IfQQ", 0, 0.0, 2, 0) + img_b,
        # an image whose label is stored as an array (flag=2): label[0] counts
        struct.pack("<IfQQ", 2, 99.0, 3, 0) + struct.pack("<2f", 1.0, 7.0) + img_c,
        struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 1.0, 3.0),
        struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 3.0, 4.0),
    ]
    blob = b""
    idx = ""
    for key, payload in enumerate(records):
        idx += f"{key}\t{len(blob)}\n"
        blob += struct.pack("<II", MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)
    assert len(blob) % 4 == 0
    (tmp_path / "train.rec").write_bytes(blob)
    (tmp_path / "train.idx").write_text(idx)
    (tmp_path / "property").write_text("5,112,112")

    ds = RecordIODataset(tmp_path)
    assert len(ds) == 3
    assert ds.header0 == (4, 6)
    assert [ds.read_bytes(i) for i in range(3)] == [img_a, img_b, img_c]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1])
    assert ds.labels.dtype == np.int64
    assert ds.num_classes == 5 and ds.image_size == (112, 112)
    assert [ds.name(i) for i in range(3)] == ["1", "2", "3"]
    head = ds.read_header(2)
    assert head.flag == 2 and head.id == 3
    np.testing.assert_array_equal(head.label, np.array([1.0, 7.0], np.float32))
    # our writer produces exactly these bytes for a single-part record
    assert pack_record(records[1]) == blob[int(idx.splitlines()[1].split()[1]) : int(idx.splitlines()[2].split()[1])]
    ds.close()


def test_pack_and_unpack_header():
    h = pack_header(3.0, id=7, id2=9)
    assert h == struct.pack("<IfQQ", 0, 3.0, 7, 9)
    header, img = unpack_header(h + b"IMG")
    assert header.flag == 0 and header.label == 3.0 and header.id == 7 and header.id2 == 9 and img == b"IMG"

    h = pack_header([1.0, 2.5, 3.0], id=1)
    assert h == struct.pack("<IfQQ", 3, 0.0, 1, 0) + struct.pack("<3f", 1.0, 2.5, 3.0)
    header, img = unpack_header(h + b"X")
    assert header.flag == 3 and img == b"X"
    assert header.label.dtype == np.float32
    np.testing.assert_array_equal(header.label, [1.0, 2.5, 3.0])

    with pytest.raises(DataFormatError):
        unpack_header(b"short")
    with pytest.raises(DataFormatError):
        unpack_header(struct.pack("<IfQQ", 5, 0.0, 0, 0) + b"\0\0\0\0")


# ----------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(1)
    out = tmp_path_factory.mktemp("rec")
    images = _random_jpegs(rng, 14) + _crafted_images()
    labels = [5, 0, 2, 0, 5, 1, 2, 2, 0, 3, 5, 1, 3, 0, 2, 5, 1]  # label 4 unused
    write_insightface_recordio(out, images, labels, image_size=(112, 96))
    return out, images, labels


def test_write_read_round_trip(written):
    out, images, labels = written
    assert sorted(os.listdir(out)) == ["property", "train.idx", "train.rec"]
    assert (out / "property").read_text().strip() == "6,112,96"
    order = np.argsort(labels, kind="stable")
    n, n_ids = len(images), len(set(labels))
    for source in (out, out / "train.rec", str(out / "train.rec")):
        with RecordIODataset(source) as ds:
            assert len(ds) == n
            assert ds.num_classes == 6
            assert ds.image_size == (112, 96)
            assert ds.header0 == (n + 1, n + 1 + n_ids)
            np.testing.assert_array_equal(ds.labels, np.asarray(labels)[order])
            for i, src in enumerate(order):
                assert ds.read_bytes(i) == images[src], i
                assert ds.read_header(i).id == i + 1
            assert ds.name(0) == "1"
            assert ds.read_bytes(-1) == images[order[-1]]
            with pytest.raises(IndexError):
                ds.read_bytes(n)
    # JPEG records decode
    with RecordIODataset(out) as ds:
        jpeg_i = [i for i, src in enumerate(order) if src < 14]
        assert decode_image(ds.read_bytes(jpeg_i[0])).shape[2] == 3


def test_written_file_layout(written):
    out, images, labels = written
    rec = (out / "train.rec").read_bytes()
    idx = [tuple(map(int, line.split("\t"))) for line in (out / "train.idx").read_text().splitlines()]
    n, ids = len(images), sorted(set(labels))
    assert [k for k, _ in idx] == list(range(n + 1 + len(ids)))
    offsets = dict(idx)
    # record 0: header with labels (a, b)
    head, rest = unpack_header(read_record_at(io.BytesIO(rec), 0))
    assert head.flag == 2 and rest == b""
    np.testing.assert_array_equal(head.label, [n + 1, n + 1 + len(ids)])
    # identity records give (start, end) keys of each identity's images
    order = np.argsort(labels, kind="stable")
    sorted_labels = np.asarray(labels)[order]
    for j, lab in enumerate(ids):
        h, _ = unpack_header(read_record_at(io.BytesIO(rec), offsets[n + 1 + j]))
        keys = np.flatnonzero(sorted_labels == lab) + 1
        np.testing.assert_array_equal(h.label, [keys[0], keys[-1] + 1])
    # crafted payloads really were written as multi-part records
    multipart = 0
    for key, off in idx:
        parts = _parts(rec, off)
        if len(parts) > 1:
            multipart += 1
            assert parts[0][0] == 1 and parts[-1][0] == 3 and all(c == 2 for c, _ in parts[1:-1])
    assert multipart == 2
    # iter_records walks the same records in order
    walked = list(iter_records(out / "train.rec"))
    assert [o for o, _ in walked] == [o for _, o in idx]


def test_headerless_dataset(tmp_path):
    rng = np.random.default_rng(2)
    images = _random_jpegs(rng, 6) + _crafted_images()[:1]
    labels = [3, 1, 1, 0, 3, 2, 7]
    blob, idx = b"", ""
    for key, (img, lab) in enumerate(zip(images, labels)):
        idx += f"{key}\t{len(blob)}\n"
        # record 2 has the magic number inside its IR header (id field): the header itself is split
        blob += pack_record(pack_header(float(lab), id=MAGIC if key == 2 else key) + img)
    (tmp_path / "faces.rec").write_bytes(blob)
    (tmp_path / "faces.idx").write_text(idx)
    ds = RecordIODataset(tmp_path / "faces.rec")
    assert ds.header0 is None and ds.property_path is None
    assert len(ds) == 7
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.num_classes == 8
    assert [ds.read_bytes(i) for i in range(7)] == images
    assert [ds.name(i) for i in range(7)] == [str(k) for k in range(7)]
    assert ds.read_header(2).id == MAGIC
    # a directory without train.rec is an error
    with pytest.raises(DataFormatError, match="not found"):
        RecordIODataset(tmp_path)


def test_concurrent_reads(written):
    out, images, labels = written
    order = np.argsort(labels, kind="stable")
    expected = [images[s] for s in order]
    ds = RecordIODataset(out)
    picks = np.random.default_rng(3).integers(0, len(ds), 3000)

    def work(chunk):
        return all(ds.read_bytes(int(i)) == expected[int(i)] for i in chunk)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, np.array_split(picks, 32)))
    assert all(results)
    # picklable (e.g. for worker processes): reopens the file
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.read_bytes(3) == expected[3]
    ds.close()
    clone.close()
    with pytest.raises(ValueError):
        ds.read_bytes(0)


# ----------------------------------------------------------------- corruption


def _copy(src, dst):
    dst.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _offsets(d):
    return [int(line.split()[1]) for line in (d / "train.idx").read_text().splitlines()]


def test_bad_magic(written, tmp_path):
    d = _copy(written[0], tmp_path / "bad")
    off = _offsets(d)[3]
    rec = bytearray((d / "train.rec").read_bytes())
    rec[off] ^= 0xFF
    (d / "train.rec").write_bytes(bytes(rec))
    with pytest.raises(DataFormatError, match=f"magic.*offset {off}") as info:
        RecordIODataset(d)
    assert "train.rec" in str(info.value)
    with pytest.raises(DataFormatError, match="magic"):
        read_record_at(io.BytesIO(bytes(rec)), off)


def test_truncated(written, tmp_path):
    d = _copy(written[0], tmp_path / "trunc")
    rec = (d / "train.rec").read_bytes()
    offs = _offsets(d)
    n_img = len(written[1])
    last_img = offs[n_img]  # key n_img is the last image record
    # cut inside the last image record's body, and drop everything after it from the index
    (d / "train.rec").write_bytes(rec[: last_img + 8 + 30])
    (d / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offs[: n_img + 1])))
    (d / "property").unlink()
    header = (d / "train.rec").read_bytes()
    with pytest.raises(DataFormatError, match="truncated"):
        ds = RecordIODataset(d)
        ds.read_bytes(len(ds) - 1)
    with pytest.raises(DataFormatError, match=f"truncated.*offset {last_img}"):
        read_record_at(io.BytesIO(header), last_img)
    # a header cut short
    with pytest.raises(DataFormatError, match="truncated record header"):
        read_record_at(io.BytesIO(rec[: last_img + 5]), last_img)
    # end of file
    with pytest.raises(DataFormatError, match="end of file"):
        read_record_at(io.BytesIO(rec), len(rec))
    # an index offset past the end of the file
    (d / "train.idx").write_text(f"0\t0\n1\t{len(rec) * 2}\n")
    with pytest.raises(DataFormatError, match="past the end"):
        RecordIODataset(d)


def test_missing_or_bad_side_files(written, tmp_path):
    d = _copy(written[0], tmp_path / "side")
    (d / "property").write_text("many,112,112")
    with pytest.raises(DataFormatError, match="property"):
        RecordIODataset(d)
    (d / "property").write_text("3,112,112")  # fewer classes than labels present
    with pytest.raises(DataFormatError, match="num_classes"):
        RecordIODataset(d)
    (d / "property").unlink()
    idx_text = (d / "train.idx").read_text()
    (d / "train.idx").write_text(idx_text.replace("\n", "\ngarbage line here\n", 1))
    with pytest.raises(DataFormatError, match=r"train\.idx:2"):
        RecordIODataset(d)
    (d / "train.idx").write_text(idx_text + "3\t0\n")
    with pytest.raises(DataFormatError, match="duplicate record key 3"):
        RecordIODataset(d)
    (d / "train.idx").unlink()
    with pytest.raises(DataFormatError, match="index file not found"):
        RecordIODataset(d)


def test_continuation_flag_errors():
    with pytest.raises(DataFormatError, match="continuation"):
        read_record_at(io.BytesIO(_lrec(2, 0)), 0)
    with pytest.raises(DataFormatError, match="continuation"):
        read_record_at(io.BytesIO(_lrec(1, 0) + _lrec(0, 0)), 0)


def test_writer_validation(tmp_path):
    with pytest.raises(DataFormatError):
        write_insightface_recordio(tmp_path / "a", [b"x"], [0, 1])
    with pytest.raises(DataFormatError):
        write_insightface_recordio(tmp_path / "b", [b"x"], [-1])
    with pytest.raises(DataFormatError):
        write_insightface_recordio(tmp_path / "c", [], [])
