"""InsightFace / MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``) without MXNet.

Layout of one record in the ``.rec`` file (all integers little-endian)::

    uint32 magic = 0xced7230a
    uint32 lrec  = cflag << 29 | length      (length: low 29 bits)
    length bytes of this part, then zero padding to a multiple of 4

``cflag`` is 0 for a record in one part, else 1 / 2 / 3 for the first / middle /
last part. Like dmlc's writer, a payload is split wherever the magic number
occurs at a 4-byte aligned offset inside it; those 4 bytes are not stored and a
reader puts them back between the parts.

The payload of an image record is ``struct.pack('<IfQQ', flag, label, id, id2)``,
then ``flag`` float32 labels when ``flag > 0`` (the float ``label`` field is
then unused), then the encoded image. ``train.idx`` has lines ``key<TAB>offset``
and ``property`` holds ``num_classes,height,width``.

In InsightFace datasets record 0 is a header whose labels ``(a, b)`` say that
records ``1 .. a-1`` are images and records ``a .. b-1`` are identity records
whose labels are the ``(start, end)`` record keys of each identity's images.
When record 0 is a plain image (``flag == 0``) every record is an image.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from arcface.errors import DataFormatError

__all__ = [
    "RECORDIO_MAGIC",
    "IRHeader",
    "pack_record",
    "read_record_at",
    "iter_records",
    "pack_header",
    "unpack_header",
    "RecordIODataset",
    "write_insightface_recordio",
]

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LEN_BITS = 29
_LEN_MASK = (1 << _LEN_BITS) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LREC = struct.Struct("<II")


class IRHeader(NamedTuple):
    """Header of an image record: ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# --------------------------------------------------------------------------- records


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def pack_record(payload: bytes | bytearray | memoryview) -> bytes:
    """Encode one payload as RecordIO bytes, split exactly like dmlc's writer."""
    data = bytes(payload)
    n = len(data)
    if n > _LEN_MASK:
        raise DataFormatError(f"record payload of {n} bytes exceeds the RecordIO limit of {_LEN_MASK}")
    out: list[bytes] = []
    start = 0  # start of the current part
    pos = data.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            out.append(_LREC.pack(RECORDIO_MAGIC, ((1 if start == 0 else 2) << _LEN_BITS) | (pos - start)))
            out.append(data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    out.append(_LREC.pack(RECORDIO_MAGIC, ((3 if start else 0) << _LEN_BITS) | (n - start)))
    out.append(data[start:])
    out.append(b"\0" * (_pad4(n) - n))
    return b"".join(out)


_Reader = Callable[[int, int], bytes]  # (size, offset) -> bytes


def _make_reader(f_or_fd: Any) -> _Reader:
    """A positional reader: os.pread when there is a file descriptor, else seek + read."""
    fd: int | None = None
    if isinstance(f_or_fd, int):
        fd = f_or_fd
    else:
        try:
            fd = f_or_fd.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            fd = None
        if fd is not None and hasattr(f_or_fd, "flush") and getattr(f_or_fd, "writable", lambda: False)():
            f_or_fd.flush()
    if fd is not None and hasattr(os, "pread"):
        return lambda size, offset: os.pread(fd, size, offset)

    f = f_or_fd

    def _seek_read(size: int, offset: int) -> bytes:
        f.seek(offset)
        return f.read(size)

    return _seek_read


def _read_record(read: _Reader, offset: int, where: str) -> tuple[bytes, int]:
    """Read the (possibly multi-part) record at ``offset``; return ``(payload, next_offset)``."""
    parts: list[bytes] = []
    pos = offset
    first = True
    while True:
        at = f"offset {pos}" if pos == offset else f"offset {pos} (part of the record at offset {offset})"
        head = read(8, pos)
        if len(head) < 8:
            if first and not head:
                raise DataFormatError(f"{where}: no record at offset {pos} (end of file)")
            raise DataFormatError(f"{where}: truncated record header at {at}")
        magic, lrec = _LREC.unpack(head)
        if magic != RECORDIO_MAGIC:
            raise DataFormatError(
                f"{where}: bad RecordIO magic 0x{magic:08x} at {at} (expected 0x{RECORDIO_MAGIC:08x})"
            )
        cflag, length = lrec >> _LEN_BITS, lrec & _LEN_MASK
        if first and cflag not in (0, 1):
            raise DataFormatError(f"{where}: record at offset {pos} starts with continuation flag {cflag}")
        if not first and cflag not in (2, 3):
            raise DataFormatError(f"{where}: expected a continuation part at {at}, got flag {cflag}")
        body = read(length, pos + 8) if length else b""
        if len(body) < length:
            raise DataFormatError(
                f"{where}: truncated record at {at}: part of {length} bytes, only {len(body)} present"
            )
        parts.append(body)
        pos += 8 + _pad4(length)
        if cflag in (0, 3):
            return b"".join(parts), pos
        parts.append(_MAGIC_BYTES)
        first = False


def read_record_at(f_or_fd: Any, offset: int, *, name: str | None = None) -> bytes:
    """Read the payload of the record starting at byte ``offset``.

    ``f_or_fd`` is an int file descriptor or a binary file object; with a
    descriptor (or a real file) reads use ``os.pread`` and are thread-safe.
    ``name`` is used in error messages (defaults to the file object's name).
    """
    where = name or str(getattr(f_or_fd, "name", f"fd {f_or_fd}" if isinstance(f_or_fd, int) else "<stream>"))
    return _read_record(_make_reader(f_or_fd), int(offset), where)[0]


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for every record of a ``.rec`` file, in file order."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        read = _make_reader(f)
        pos = 0
        while pos < size:
            payload, nxt = _read_record(read, pos, path)
            yield pos, payload
            pos = nxt


# --------------------------------------------------------------------------- headers


def pack_header(label: float | Sequence[float] | np.ndarray, id: int = 0, id2: int = 0) -> bytes:
    """Image-record header bytes; append the encoded image to get the payload.

    A scalar ``label`` gives ``flag = 0``; a sequence gives ``flag = len(label)``
    followed by the labels as float32 (MXNet's ``recordio.pack`` convention).
    """
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), int(id), int(id2))
    arr = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(_IR_FORMAT, arr.size, 0.0, int(id), int(id2)) + arr.tobytes()


def unpack_header(payload: bytes, *, where: str = "<record>") -> tuple[IRHeader, bytes]:
    """Split a payload into its :class:`IRHeader` and the encoded image bytes."""
    if len(payload) < _IR_SIZE:
        raise DataFormatError(f"{where}: payload of {len(payload)} bytes is shorter than the {_IR_SIZE}-byte header")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, payload, 0)
    if flag == 0:
        return IRHeader(0, label, id_, id2), bytes(payload[_IR_SIZE:])
    end = _IR_SIZE + 4 * flag
    if len(payload) < end:
        raise DataFormatError(f"{where}: header announces {flag} labels but the payload has only {len(payload)} bytes")
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=_IR_SIZE).astype(np.float32)
    return IRHeader(flag, labels, id_, id2), bytes(payload[end:])


# --------------------------------------------------------------------------- dataset


def _parse_idx(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``key<TAB>offset`` lines; returns (keys, offsets) as int64 in file order."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: index file not found (a .rec needs its .idx next to it)") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read index file ({e})") from None
    tokens = raw.split()
    table: np.ndarray | None = None
    if len(tokens) % 2 == 0:
        try:
            table = np.array(tokens).astype(np.int64).reshape(-1, 2)
        except (ValueError, OverflowError):
            table = None
    if table is None:  # slow path, only to name the bad line
        for lineno, line in enumerate(raw.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                int(fields[0]), int(fields[1])
            except ValueError:
                raise DataFormatError(
                    f"{path}:{lineno}: expected 'key<TAB>offset', got {line[:80]!r}"
                ) from None
        raise DataFormatError(f"{path}: malformed index file")
    if table.shape[0] == 0:
        raise DataFormatError(f"{path}: index file is empty")
    keys, offsets = table[:, 0], table[:, 1]
    if (offsets < 0).any():
        bad = int(np.flatnonzero(offsets < 0)[0])
        raise DataFormatError(f"{path}:{bad + 1}: negative offset {int(offsets[bad])}")
    return keys.copy(), offsets.copy()


def _parse_property(path: str) -> tuple[int, tuple[int, int] | None]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read property file ({e})") from None
    fields = [s.strip() for s in text.split(",")]
    try:
        values = [int(s) for s in fields]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or any(v <= 0 for v in values):
        raise DataFormatError(f"{path}: expected 'num_classes,height,width' with positive integers, got {text[:80]!r}")
    return values[0], (values[1], values[2]) if len(values) == 3 else None


_SCAN_BYTES = 8 + _IR_SIZE + 4  # lrec header + IR header + first float label
_SCAN_CHUNK = 1 << 16


def _label_to_int(value: float, where: str) -> int:
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DataFormatError(f"{where}: label {value!r} is not a non-negative integer")
    return int(value)


class RecordIODataset:
    """Read-only, thread-safe view of an InsightFace RecordIO dataset.

    Open it from a directory holding ``train.rec``, ``train.idx`` (and optionally
    ``property``) or from the path of a ``.rec`` file whose ``.idx`` has the same
    stem. All reads use ``os.pread`` on one descriptor, so threads can share an
    instance; it can also be pickled (the file is reopened on unpickling).

    Attributes:
        rec_path, idx_path, property_path: files used (``property_path`` may be None).
        keys: ``int64`` record key of each image.
        offsets: ``int64`` byte offset of each image record.
        labels: ``int64`` identity label of each image.
        num_classes: from ``property`` when present, else ``max(labels) + 1``.
        image_size: ``(height, width)`` from ``property``, or None.
        header0: ``(a, b)`` of the InsightFace header record, or None when headerless.
    """

    def __init__(self, path: str | os.PathLike):
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            rec = os.path.join(path, "train.rec")
        else:
            rec = path
        if not os.path.isfile(rec):
            raise DataFormatError(f"{rec}: RecordIO file not found")
        self.rec_path = rec
        self.idx_path = os.path.splitext(rec)[0] + ".idx"
        prop = os.path.join(os.path.dirname(rec), "property")
        self.property_path: str | None = prop if os.path.isfile(prop) else None

        all_keys, all_offsets = _parse_idx(self.idx_path)
        self._fd: int | None = None
        self._open()
        try:
            self._load_index(all_keys, all_offsets)
        except BaseException:
            self.close()
            raise

    def _load_index(self, all_keys: np.ndarray, all_offsets: np.ndarray) -> None:
        size = os.fstat(self._fd).st_size
        if (all_offsets >= size).any():
            bad = int(np.flatnonzero(all_offsets >= size)[0])
            raise DataFormatError(
                f"{self.idx_path}:{bad + 1}: offset {int(all_offsets[bad])} is past the end of "
                f"{self.rec_path} ({size} bytes)"
            )
        sorter = np.argsort(all_keys, kind="stable")
        sorted_keys = all_keys[sorter]
        dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if len(dup):
            raise DataFormatError(f"{self.idx_path}: duplicate record key {int(sorted_keys[dup[0]])}")

        def lookup(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pos = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
            return all_offsets[sorter[pos]], sorted_keys[pos] == wanted

        self.header0: tuple[int, int] | None = None
        keys = all_keys
        offsets = all_offsets
        zero = np.flatnonzero(all_keys == 0)
        if len(zero):
            off0 = int(all_offsets[zero[0]])
            head, _ = unpack_header(self._payload_at(off0), where=self._where(off0))
            if head.flag >= 2:
                a, b = float(head.label[0]), float(head.label[1])
                if not (1 <= a <= b <= 2**53) or a != int(a) or b != int(b):
                    raise DataFormatError(f"{self._where(off0)}: header record has invalid ranges ({a}, {b})")
                a, b = int(a), int(b)
                if a - 1 > len(all_keys):
                    raise DataFormatError(
                        f"{self._where(off0)}: header record says there are {a - 1} images but "
                        f"{self.idx_path} lists only {len(all_keys)} records"
                    )
                keys = np.arange(1, a, dtype=np.int64)
                offsets, found = lookup(keys)
                if not found.all():
                    missing = keys[~found]
                    raise DataFormatError(
                        f"{self.idx_path}: header record says images are keys 1..{a - 1} but "
                        f"{len(missing)} are missing from the index (first: {missing[:5].tolist()})"
                    )
                self.header0 = (a, b)
        if len(keys) == 0:
            raise DataFormatError(f"{self.rec_path}: dataset contains no image records")
        self.keys = np.ascontiguousarray(keys, dtype=np.int64)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.labels = self._scan_labels(size)

        max_label = int(self.labels.max())
        self.image_size: tuple[int, int] | None = None
        if self.property_path is not None:
            num_classes, self.image_size = _parse_property(self.property_path)
            if num_classes <= max_label:
                raise DataFormatError(
                    f"{self.property_path}: num_classes={num_classes} but {self.rec_path} has label {max_label}"
                )
            self.num_classes = num_classes
        else:
            self.num_classes = max_label + 1

    # -- file handling -------------------------------------------------------

    def _open(self) -> None:
        try:
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise DataFormatError(f"{self.rec_path}: cannot open ({e})") from None

    def close(self) -> None:
        """Close the file descriptor (reads afterwards raise ValueError)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RecordIODataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    # -- reading -------------------------------------------------------------

    def _where(self, offset: int) -> str:
        return f"{self.rec_path} (offset {offset})"

    def _pread(self, size: int, offset: int) -> bytes:
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.rec_path}: dataset is closed")
        return os.pread(fd, size, offset)

    def _payload_at(self, offset: int) -> bytes:
        return _read_record(self._pread, int(offset), self.rec_path)[0]

    def _scan_labels(self, size: int) -> np.ndarray:
        """Labels of all image records, reading only their first bytes (vectorised)."""
        n = len(self.offsets)
        labels = np.empty(n, dtype=np.int64)
        mm = np.memmap(self.rec_path, dtype=np.uint8, mode="r")
        try:
            span = np.arange(_SCAN_BYTES, dtype=np.int64)
            for lo in range(0, n, _SCAN_CHUNK):
                off = self.offsets[lo : lo + _SCAN_CHUNK]
                raw = mm[np.minimum(off[:, None] + span, size - 1)]
                magic = raw[:, 0:4].copy().view("<u4")[:, 0]
                lrec = raw[:, 4:8].copy().view("<u4")[:, 0]
                flag = raw[:, 8:12].copy().view("<u4")[:, 0]
                flabel = raw[:, 12:16].copy().view("<f4")[:, 0]
                label0 = raw[:, 32:36].copy().view("<f4")[:, 0]
                cflag = lrec >> _LEN_BITS
                plen = (lrec & _LEN_MASK).astype(np.int64)
                need = np.where(flag > 0, _IR_SIZE + 4, _IR_SIZE)
                fast = (
                    (magic == RECORDIO_MAGIC)
                    & ((cflag == 0) | (cflag == 1))
                    & (plen >= need)
                    & (off + 8 + plen <= size)
                    & (off + _SCAN_BYTES <= size)
                )
                values = np.where(flag > 0, label0, flabel).astype(np.float64)
                for j in np.flatnonzero(~fast):  # multi-part headers, damage, tiny records
                    o = int(off[j])
                    head, _ = unpack_header(self._payload_at(o), where=self._where(o))
                    values[j] = head.label[0] if head.flag > 0 else head.label
                ok = np.isfinite(values) & (values >= 0) & (values == np.floor(values))
                if not ok.all():
                    j = int(np.flatnonzero(~ok)[0])
                    _label_to_int(float(values[j]), self._where(int(off[j])))
                labels[lo : lo + len(off)] = values.astype(np.int64)
        finally:
            del mm
        return labels

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"RecordIODataset({self.rec_path!r}, images={len(self)}, classes={self.num_classes})"

    def _offset(self, i: int) -> int:
        n = len(self.keys)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        return int(self.offsets[i])

    def read_payload(self, i: int) -> bytes:
        """Full payload (IR header + image) of the ``i``-th image record."""
        return self._payload_at(self._offset(i))

    def read_header(self, i: int) -> IRHeader:
        """IR header of the ``i``-th image record."""
        o = self._offset(i)
        return unpack_header(self._payload_at(o), where=self._where(o))[0]

    def read_bytes(self, i: int) -> bytes:
        """Encoded image bytes of the ``i``-th image."""
        o = self._offset(i)
        return unpack_header(self._payload_at(o), where=self._where(o))[1]

    def name(self, i: int) -> str:
        """Record key of the ``i``-th image, as a string."""
        self._offset(i)
        return str(int(self.keys[i]))


# --------------------------------------------------------------------------- writer


def write_insightface_recordio(
    out_dir: str | os.PathLike,
    images: Sequence[bytes],
    labels: Sequence[int],
    image_size: tuple[int, int] = (112, 112),
) -> None:
    """Write ``train.rec``, ``train.idx`` and ``property`` in the InsightFace layout.

    Record 0 is the header ``(a, b)``; records ``1 .. a-1`` are the images sorted
    (stably) by label, with ``id`` set to their record key; records ``a .. b-1``
    are one identity record per label present, with labels ``(start, end)``.
    ``property`` holds ``max(label) + 1`` and ``image_size``. Files are written
    to temporary names and moved into place at the end.
    """
    if len(images) != len(labels):
        raise DataFormatError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataFormatError("cannot write a RecordIO dataset without images")
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer) or (lab < 0).any():
        raise DataFormatError("labels must be a 1-D sequence of non-negative integers")
    if int(lab.max()) >= 1 << 24:
        raise DataFormatError("labels must be below 2**24 to be exact as float32")
    lab = lab.astype(np.int64)
    order = np.argsort(lab, kind="stable")
    uniq, starts = np.unique(lab[order], return_index=True)
    n_img = len(images)
    a = n_img + 1
    b = a + len(uniq)
    height, width = (int(v) for v in image_size)

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    final = {name: os.path.join(out_dir, name) for name in ("train.rec", "train.idx", "property")}
    tmp = {name: path + ".tmp" for name, path in final.items()}
    try:
        idx_lines: list[str] = []
        with open(tmp["train.rec"], "wb") as rec:

            def put(key: int, payload: bytes) -> None:
                idx_lines.append(f"{key}\t{rec.tell()}\n")
                rec.write(pack_record(payload))

            put(0, pack_header([float(a), float(b)]))
            for key, src in enumerate(order.tolist(), start=1):
                put(key, pack_header(float(lab[src]), id=key) + bytes(images[src]))
            ends = np.append(starts[1:], n_img)
            for j, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
                put(a + j, pack_header([float(s + 1), float(e + 1)]))
        with open(tmp["train.idx"], "w", encoding="ascii", newline="\n") as f:
            f.writelines(idx_lines)
        with open(tmp["property"], "w", encoding="ascii", newline="\n") as f:
            f.write(f"{int(lab.max()) + 1},{height},{width}\n")
        for name in ("train.rec", "train.idx", "property"):
            os.replace(tmp[name], final[name])
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
