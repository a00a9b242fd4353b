"""Tests for arcface.data.images: decode to RGB uint8, encoders, typed errors."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface.data.images import decode_image, encode_jpeg, encode_png
from arcface.errors import DataFormatError, ImageDecodeError

RNG = np.random.default_rng(0)


def _imencode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _smooth_rgb(h: int = 48, w: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def test_decode_grey_png_gives_three_equal_channels():
    grey = RNG.integers(0, 256, (17, 23), dtype=np.uint8)
    out = decode_image(_imencode(".png", grey))
    assert out.shape == (17, 23, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_decode_rgba_png_drops_alpha_and_is_rgb():
    bgra = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    out = decode_image(_imencode(".png", bgra))
    assert out.shape == (9, 11, 3)
    np.testing.assert_array_equal(out, bgra[:, :, [2, 1, 0]])


def test_decode_16bit_png_scaled_to_8bit():
    grey16 = RNG.integers(0, 65536, (8, 8), dtype=np.uint16)
    grey16[0, :3] = [0, 65535, 257 * 100]
    out = decode_image(_imencode(".png", grey16))
    expected = np.round(grey16.astype(np.float64) / 257.0).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert list(out[0, :3, 0]) == [0, 255, 100]

    bgr16 = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    out = decode_image(_imencode(".png", bgr16))
    np.testing.assert_array_equal(out, np.round(bgr16[:, :, ::-1] / 257.0).astype(np.uint8))


def test_png_round_trip_is_exact_and_rgb_ordered():
    rgb = RNG.integers(0, 256, (12, 13, 3), dtype=np.uint8)
    out = decode_image(encode_png(rgb))
    np.testing.assert_array_equal(out, rgb)
    assert out.flags["C_CONTIGUOUS"]


def test_jpeg_round_trip_within_tolerance(tmp_path):
    rgb = _smooth_rgb()
    data = encode_jpeg(rgb, quality=95)
    assert data[:3] == b"\xff\xd8\xff"
    out = decode_image(data)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3.0
    # pure red stays red (channel order)
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    r = decode_image(encode_jpeg(red))
    assert r[..., 0].mean() > 240 and r[..., 2].mean() < 15
    # from a path too, and bytes with trailing junk after EOI are fine
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(path), out)
    np.testing.assert_array_equal(decode_image(str(path)), out)
    np.testing.assert_array_equal(decode_image(data + b"\0" * 7), out)


def test_grey_input_to_encoders():
    grey = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    out = decode_image(encode_png(grey))
    np.testing.assert_array_equal(out[:, :, 1], grey)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "0 bytes"),
        (b"hello, this is plain text and not an image\n", "cannot decode"),
    ],
)
def test_decode_bad_bytes(data, fragment):
    with pytest.raises(ImageDecodeError, match=fragment) as info:
        decode_image(data)
    assert "<bytes>" in str(info.value)
    assert isinstance(info.value, DataFormatError)


@pytest.mark.parametrize("cut", [2, 10, 0.5])
def test_decode_truncated_jpeg(cut):
    data = encode_jpeg(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    n = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    with pytest.raises(ImageDecodeError, match="<bytes>"):
        decode_image(data[:n])


def test_decode_truncated_png():
    data = encode_png(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_decode_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageDecodeError, match="not found") as info:
        decode_image(missing)
    assert str(missing) in str(info.value)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="0 bytes") as info:
        decode_image(str(empty))
    assert str(empty) in str(info.value)

    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(text)
    assert str(text) in str(info.value)

    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(tmp_path)


def test_encoder_input_validation():
    with pytest.raises(DataFormatError):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DataFormatError):
        encode_jpeg(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), quality=101)
    with pytest.raises(TypeError):
        decode_image(12345)


def test_data_package_imports_no_deep_learning_framework():
    code = (
        "import sys, arcface.data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'jax', 'keras', 'torch'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
