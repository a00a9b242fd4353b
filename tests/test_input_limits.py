"""Hostile inputs that are small on disk but huge in memory: image decompression bombs
(arcface.data.images) and verification ``.bin`` pickles that allocate (arcface.data.verification_bin).

Every bomb is built here from a few bytes; none of them may reach an allocation of its
claimed size. Image bombs are checked by making ``cv2.imdecode`` fail the test if it is
called at all; pickle bombs by the tracemalloc peak of the load.
"""

import pickle
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest

from arcface.data import images
from arcface.data.images import decode_image, encode_png
from arcface.data.verification_bin import read_verification_bin
from arcface.errors import DataFormatError, ImageDecodeError, ImageTooLargeError

RNG = np.random.default_rng(0)
BIG = 20000  # 20000 x 20000 = 400 megapixels, 1.2 GB as RGB


# ---------------------------------------------------------------------------- image bombs
def _png(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR claims ``width x height``, with a tiny zlib stream of zeros as IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9))
            + chunk(b"IEND", b""))


def _jpeg(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, a baseline SOF0 frame header for 3 components, EOI."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def _bmp(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def _webp_vp8x(width: int, height: int) -> bytes:
    body = b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBPVP8X" + struct.pack("<I", len(body)) + body


def _webp_vp8l(width: int, height: int) -> bytes:
    body = b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14) + b"\0" * 5
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBPVP8L" + struct.pack("<I", len(body)) + body


def _gif(width: int, height: int, screen: tuple[int, int] | None = None) -> bytes:
    sw, sh = screen or (width, height)
    return (b"GIF89a" + struct.pack("<HHBBB", sw, sh, 0, 0, 0)
            + b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # a graphic control extension first
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b")


def _tiff(width: int, height: int, extra: tuple = ()) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), *extra, (258, 3, 1, 8), (262, 3, 1, 2), (277, 3, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, typ, count, value) if typ == 4 else struct.pack("<HHIHH", tag, typ, count, value, 0)
        for tag, typ, count, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


BOMBS = {
    "png": _png(BIG, BIG),
    "png-16bit-rgba": _png(BIG, BIG, depth=16, colour=6),
    "jpeg": _jpeg(BIG, BIG),
    "bmp": _bmp(BIG, -BIG),  # top-down rows
    "webp-vp8x": _webp_vp8x(BIG, BIG),
    "webp-vp8l": _webp_vp8l(16000, 16000),  # 14-bit sizes: 256 megapixels at most
    "gif": _gif(BIG, BIG),
    "gif-frame-outside-screen": _gif(BIG, BIG, screen=(1, 1)),
    "tiff": _tiff(BIG, BIG),
    "ppm": b"P6\n# a comment\n%d %d\n255\n" % (BIG, BIG),
    # OpenCV ends a comment at CR: a reader that waits for LF would see 255 x 1 here
    "ppm-cr-comment": b"P6 #c\r%d %d\n255\n1 1 255\n" % (BIG, BIG),
}


@pytest.fixture
def no_imdecode(monkeypatch):
    """Fail the test if anything reaches cv2.imdecode."""
    def imdecode(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called: the image would have been decoded")

    monkeypatch.setattr(images.cv2, "imdecode", imdecode)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_image_bomb_refused_from_header(no_imdecode, name):
    data = BOMBS[name]
    assert len(data) < 200
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data)
    message = str(info.value)
    assert "<bytes>" in message and "MAX_IMAGE_PIXELS" in message
    assert ("16000x16000" if name == "webp-vp8l" else f"{BIG}x{BIG}") in message
    assert isinstance(info.value, ImageDecodeError) and isinstance(info.value, DataFormatError)


def test_image_bomb_file_names_the_file(no_imdecode, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(BOMBS["png"])
    with pytest.raises(ImageTooLargeError, match=f"bomb.png: PNG image of {BIG}x{BIG} pixels"):
        decode_image(path)


def test_16bit_rgba_png_refused_on_decoded_bytes(no_imdecode):
    """36 megapixels is under MAX_IMAGE_PIXELS, but 16-bit RGBA makes it 288 MB decoded."""
    data = _png(6000, 6000, depth=16, colour=6)
    assert 6000 * 6000 <= images.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="6000x6000 pixels, 4 channel.* of 16 bits.*MAX_DECODED_BYTES"):
        decode_image(data)


_ENCODED = [
    (".png", (17, 23, 3), np.uint8, []),
    (".png", (17, 23, 4), np.uint16, []),
    (".png", (17, 23), np.uint8, []),
    (".jpg", (17, 23, 3), np.uint8, []),
    (".jpg", (17, 23), np.uint8, []),
    (".bmp", (17, 23, 3), np.uint8, []),
    (".bmp", (17, 23, 4), np.uint8, []),
    (".webp", (17, 23, 3), np.uint8, []),
    (".webp", (17, 23, 4), np.uint8, []),
    (".webp", (17, 23, 3), np.uint8, [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: VP8L
    (".tif", (17, 23, 3), np.uint8, []),
    (".tif", (17, 23), np.uint16, []),
    (".ppm", (17, 23, 3), np.uint8, []),
    (".pgm", (17, 23), np.uint16, []),
    (".pbm", (17, 23), np.uint8, []),
    (".gif", (17, 23, 3), np.uint8, []),
]


@pytest.mark.parametrize("ext, shape, dtype, params", _ENCODED, ids=[
    f"{ext[1:]}-{shape[2] if len(shape) == 3 else 1}ch-{np.dtype(dtype).itemsize * 8}bit{'-lossless' if params else ''}"
    for ext, shape, dtype, params in _ENCODED])
def test_limits_are_exact_for_every_supported_format(monkeypatch, ext, shape, dtype, params):
    """The header readers find the size the decoder uses: w*h pixels pass, one fewer allowed does not."""
    try:
        ok, buf = cv2.imencode(ext, RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype), params)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV cannot encode {ext}")
    data = buf.tobytes()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 17 * 23)
    assert decode_image(data).shape == (17, 23, 3)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 17 * 23 - 1)
    with pytest.raises(ImageTooLargeError, match="23x17"):
        decode_image(data)


@pytest.mark.parametrize(
    "data",
    [
        b"PF\n%d %d\n-1.0\n" % (BIG, BIG),  # PFM
        b"P7\nWIDTH %d\nHEIGHT %d\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" % (BIG, BIG),  # PAM
        b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (BIG, BIG),  # Radiance HDR
        b"\x59\xa6\x6a\x95" + struct.pack(">7I", BIG, BIG, 24, 0, 1, 0, 0),  # Sun raster
        b"II+\x00\x08\x00\x00\x00" + b"\0" * 16,  # BigTIFF
    ],
    ids=["pfm", "pam", "hdr", "sunraster", "bigtiff"],
)
def test_formats_without_a_size_check_are_refused(no_imdecode, data):
    with pytest.raises(ImageDecodeError, match="cannot decode image .*supported formats: JPEG, PNG"):
        decode_image(data)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (_png(BIG, BIG)[:20], "truncated PNG header"),
        (_png(BIG, BIG).replace(b"IHDR", b"IHDX", 1), "malformed or truncated PNG header"),
        (_png(BIG, BIG, colour=5), "malformed or truncated PNG header"),
        (_png(0, 5), "PNG header says 0x5"),
        (b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9", "malformed or truncated JPEG header"),  # no frame header
        (_bmp(-5, 5), "BMP header says -5x5"),
        # libtiff keeps the first of two ImageWidth tags; a reader keeping the last would see 1 x 20000
        (_tiff(BIG, BIG, extra=((256, 4, 1, 1),)), "malformed or truncated TIFF header"),
    ],
    ids=["png-cut", "png-no-ihdr", "png-bad-colour-type", "png-zero-width", "jpeg-no-frame", "bmp-negative-width",
         "tiff-duplicate-width"],
)
def test_malformed_headers_are_refused_before_decoding(no_imdecode, data, fragment):
    with pytest.raises(ImageDecodeError, match=fragment):
        decode_image(data)


def test_out_of_memory_while_decoding_is_typed(monkeypatch):
    data = encode_png(RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8))

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    def cv2_out_of_memory(*args, **kwargs):
        error = cv2.error("Failed to allocate 1200000000 bytes")
        error.code = cv2.Error.StsNoMem
        raise error

    for fake in (out_of_memory, cv2_out_of_memory):
        monkeypatch.setattr(images.cv2, "imdecode", fake)
        with pytest.raises(ImageTooLargeError, match="<bytes>: out of memory decoding a 9x8 PNG image"):
            decode_image(data)
    monkeypatch.undo()
    monkeypatch.setattr(images, "_to_rgb_uint8", out_of_memory)
    with pytest.raises(ImageTooLargeError, match="out of memory"):
        decode_image(data)


@pytest.mark.parametrize("channels", [2, 4])
def test_16bit_alpha_conversion_unchanged(channels):
    """16-bit grey+alpha and BGRA still give round(v / 257), alpha dropped."""
    src = RNG.integers(0, 65536, (6, 7, channels), dtype=np.uint16)
    src[0, 0, 0] = 65535
    if channels == 2:
        rgb16, data = np.repeat(src[:, :, :1], 3, axis=2), _grey_alpha_png(src)
    else:
        rgb16, data = src[:, :, [2, 1, 0]], encode_png_bgra16(src)
    out = decode_image(data)
    np.testing.assert_array_equal(out, np.round(rgb16 / 257.0).astype(np.uint8))


def encode_png_bgra16(src: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", src)
    assert ok
    return buf.tobytes()


def _grey_alpha_png(src: np.ndarray) -> bytes:
    """A 16-bit grey+alpha PNG (colour type 4), which cv2.imencode cannot write."""
    h, w, _ = src.shape
    rows = b"".join(b"\0" + src[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_float_tiff_conversion_unchanged():
    src = RNG.random((5, 6, 3)).astype(np.float32) * 1.2 - 0.1
    ok, buf = cv2.imencode(".tif", src)
    if not ok:
        pytest.skip("this OpenCV cannot write float TIFF")
    expected = np.clip(src * 255.0 + 0.5, 0, 255).astype(np.uint8)[:, :, ::-1]
    np.testing.assert_array_equal(decode_image(buf.tobytes()), expected)


# ------------------------------------------------------------------------ pickle bombs
def _load_refused(tmp_path, data: bytes) -> tuple[str, int]:
    """Load ``data`` as a .bin; it must raise DataFormatError. Returns the message and the peak."""
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError) as info:
            read_verification_bin(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    return str(info.value), peak


MiB = 1 << 20
LIMIT = 32 * MiB  # far below every claimed size, far above what a refusal costs
INT_2G = b"\x8a\x05\x00\x00\x00\x80\x00"  # LONG1: 2**31
DTYPE_U1 = b"cnumpy\ndtype\nX\x02\x00\x00\x00u1\x85R"
RECONSTRUCT = b"cnumpy._core.multiarray\n_reconstruct\n"


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\x80\x04cbuiltins\nbytearray\n" + INT_2G + b"\x85R.", r"builtins.bytearray\(int\)"),
        (b"\x80\x02c__builtin__\nbytearray\n" + INT_2G + b"\x85R.", r"builtins.bytearray\(int\)"),
        (b"\x80\x04cbuiltins\nbytes\n" + INT_2G + b"\x85R.", r"builtins.bytes\(int\)"),
        # the size as a numpy integer, made by the allowed multiarray.scalar
        (b"\x80\x02c__builtin__\nbytearray\ncnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00i8\x85R"
         b"C\x08" + struct.pack("<q", 2**31) + b"\x86R\x85R.", r"builtins.bytearray\(int64\)"),
        # numpy.ndarray((2**31,), uint8) called directly
        (b"\x80\x04cnumpy\nndarray\n" + INT_2G + b"\x85" + DTYPE_U1 + b"\x86R.", "call of numpy.ndarray"),
        # _reconstruct(ndarray, (2**31,), b'b')
        (b"\x80\x04" + RECONSTRUCT + b"cnumpy\nndarray\n" + INT_2G + b"\x85C\x01b\x87R.", r"shape \(2147483648,\)"),
        # _reconstruct(ndarray, (0,), b'b') then __setstate__ with a shape of 2**31 and 2 bytes of data
        (b"\x80\x04" + RECONSTRUCT + b"cnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01" + INT_2G + b"\x85" + DTYPE_U1
         + b"\x89C\x02abtb.", r"shape \(2147483648,\)"),
        # counted opcodes whose length is allocated before it is read
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**31) + b"ab.", "bytes8"),  # BINBYTES8
        (b"\x80\x05\x96" + struct.pack("<Q", 2**31) + b"ab.", "bytearray8"),  # BYTEARRAY8
        (b"\x80\x03B" + struct.pack("<I", 2**31) + b"ab.", "bytes4"),  # BINBYTES
        # LONG_BINPUT 2**24: the memo table grows to 2**25 slots (256 MiB) and is zeroed
        (b"\x80\x02Nr" + struct.pack("<I", 2**24) + b".", "memo index 16777216"),
    ],
    ids=["bytearray", "py2-bytearray", "bytes", "bytearray-numpy-int", "ndarray-call", "reconstruct-shape",
         "setstate-shape", "binbytes8", "bytearray8", "binbytes", "memo-index"],
)
def test_tiny_pickle_cannot_allocate(tmp_path, data, fragment):
    assert len(data) < 128
    message, peak = _load_refused(tmp_path, data)
    assert peak < LIMIT, f"{len(data)}-byte file made the loader allocate {peak / MiB:.0f} MiB"
    assert re.search(fragment, message), message


def test_memo_cannot_multiply_one_large_object(tmp_path):
    """One 1 MiB bytes, then a list of bytearray() of that memo entry 100 times: 100 MiB from a 1 MiB file."""
    big = b"B" + struct.pack("<I", MiB) + b"z" * MiB
    data = b"\x80\x03cbuiltins\nbytearray\nq\x00" + big + b"q\x01(" + b"h\x00h\x01\x85R" * 100 + b"l."
    message, peak = _load_refused(tmp_path, data)
    assert peak < LIMIT, f"the loader allocated {peak / MiB:.0f} MiB"
    assert "memory budget" in message


def test_opcode_flood_is_refused(tmp_path):
    """400 kB of EMPTY_SET opcodes would be 400 000 sets (86 MB) on the unpickler's stack."""
    message, peak = _load_refused(tmp_path, b"\x80\x04" + b"\x8f" * 400_000 + b".")
    assert peak < LIMIT, f"the loader allocated {peak / MiB:.0f} MiB"
    assert "pickle opcodes" in message and "memory budget" in message


class _Reduce:
    """Pickles as ``callable(*args)`` followed by BUILD ``state``: hand-made numpy states."""

    def __init__(self, *reduce_value):
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


def _array(state) -> _Reduce:
    reconstruct = np.zeros(0).__reduce__()[0]  # numpy(._core).multiarray._reconstruct
    return _Reduce(reconstruct, (np.ndarray, (0,), b"b"), state)


_CRASHERS = {
    # an object array whose list is shorter than its shape: numpy reads past the list
    "object-array-short-list": (_array((1, (100,), np.dtype("O"), False, [])), [True]),
    # a 1-byte dtype with a field 16 MiB past its item: printing issame_list[0] reads out of bounds
    "dtype-field-past-item": ([b"a", b"b"], _array((1, (1,), _Reduce(np.dtype, ("V1", False, True),
                                                            (3, "|", None, ("a",), {"a": (np.dtype("S64"), 1 << 24)},
                                                             1, 1, 16)), False, b"\0"))),
}


@pytest.mark.parametrize("name", sorted(_CRASHERS))
def test_numpy_states_that_crash_numpy_are_refused(tmp_path, name):
    """Run in a child process: on a loader without the checks numpy segfaults or reads out of bounds."""
    path = tmp_path / f"{name}.bin"
    path.write_bytes(pickle.dumps(_CRASHERS[name], protocol=2))
    code = textwrap.dedent(f"""
        from arcface.data.verification_bin import read_verification_bin
        from arcface.errors import DataFormatError
        try:
            read_verification_bin({str(path)!r})
        except DataFormatError as e:
            print("REFUSED", e)
    """)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"loader crashed (rc {child.returncode}): {child.stderr[-500:]}"
    assert "REFUSED" in child.stdout and "refusing" in child.stdout and str(path) in child.stdout, child.stdout


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_scalars_and_arrays_still_load(tmp_path, protocol):
    """Legitimate numpy content keeps loading under every protocol: uint8 images, bool scalars and arrays."""
    raw = [RNG.bytes(int(n)) for n in RNG.integers(1, 3000, 6)]
    bins = [np.frombuffer(b, dtype=np.uint8) for b in raw]
    for issame in ([np.bool_(True), np.bool_(False), np.bool_(True)], np.array([True, False, True])):
        path = tmp_path / "ok.bin"
        path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
        ps = read_verification_bin(path)
        assert ps.left == raw[0::2] and ps.right == raw[1::2]
        np.testing.assert_array_equal(ps.issame, [True, False, True])
