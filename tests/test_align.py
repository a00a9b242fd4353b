"""Face detection and alignment (arcface.align): the similarity estimate, the warp, the face-choice
policy, MTCNN on the shared LFW sample against reference landmarks and crops, bad inputs,
mtcnn 1.0.0's pyramid crash, batch versus one-by-one, and align_folder / the CLI."""

import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from arcface.align import (
    ARCFACE_TEMPLATE,
    SCALE_FACTOR,
    FaceAligner,
    align_folder,
    center_scores,
    estimate_similarity,
    landmark_inliers,
    plan_detection,
    read_manifest,
    to_rgb,
    warp_face,
)
from arcface.data.images import decode_image, encode_jpeg, encode_png
from arcface.errors import FaceTooSmallError, ImageDecodeError, IomfaceError, NoFaceError
from tests.conftest import REPO, shared_data

needs_mtcnn = pytest.mark.skipif(importlib.util.find_spec("mtcnn") is None,
                                 reason="the mtcnn package (and TensorFlow) is not installed")

TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)


def similarity_matrix(angle, scale, tx, ty):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def mad(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def parse_landmarks(text: str) -> np.ndarray:
    return np.array(text.split(), dtype=np.float64).reshape(5, 2)


# --------------------------------------------------------------------------- geometry


def test_estimate_similarity_recovers_an_exact_transform():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 12))
        src = rng.uniform(-200, 400, size=(n, 2))
        true = similarity_matrix(rng.uniform(-math.pi, math.pi), math.exp(rng.uniform(-3, 3)),
                                 *rng.uniform(-500, 500, size=2))
        got = estimate_similarity(src, apply(true, src))
        assert got.shape == (2, 3)
        np.testing.assert_allclose(got, true, rtol=1e-9, atol=1e-9 * np.abs(true).max(), err_msg=f"trial {trial}")


def test_estimate_similarity_is_the_least_squares_solution_under_noise():
    """Against the normal equations of dst = [[a, -b], [b, a]] src + t (linear in a, b, tx, ty)."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(3, 10))
        src = rng.uniform(0, 250, size=(n, 2))
        true = similarity_matrix(rng.uniform(-1, 1), rng.uniform(0.3, 2), *rng.uniform(-50, 50, size=2))
        dst = apply(true, src) + rng.normal(0, 3, size=(n, 2))
        design = np.zeros((2 * n, 4))
        design[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], axis=1)
        design[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], axis=1)
        a, b, tx, ty = np.linalg.solve(design.T @ design, design.T @ dst.reshape(-1))
        want = np.array([[a, -b, tx], [b, a, ty]])
        got = estimate_similarity(src, dst)
        np.testing.assert_allclose(got, want, atol=1e-8)
        # and no perturbation of (angle, log-scale, t) lowers the squared error
        err = ((apply(got, src) - dst) ** 2).sum()
        angle, scale = math.atan2(got[1, 0], got[0, 0]), math.hypot(got[0, 0], got[1, 0])
        for d in np.eye(4) * 1e-3:
            for sign in (1, -1):
                p = similarity_matrix(angle + sign * d[0], scale * math.exp(sign * d[1]),
                                      got[0, 2] + sign * d[2], got[1, 2] + sign * d[3])
                assert ((apply(p, src) - dst) ** 2).sum() >= err - 1e-9


def test_estimate_similarity_never_reflects_and_rejects_bad_points():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, size=(5, 2))
    mirrored = src * [-1, 1]
    assert np.linalg.det(estimate_similarity(src, mirrored)[:, :2]) >= 0
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), src)
    with pytest.raises(ValueError):
        estimate_similarity(src[:1], src[:1])
    with pytest.raises(ValueError):
        estimate_similarity(src, src[:4])
    with pytest.raises(ValueError):
        estimate_similarity(src * np.nan, src)


def test_warp_face_maps_the_landmarks_onto_the_template():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_face(image, TEMPLATE), image)  # identity

    # a face-like pattern: dots at the template points of a 2x bigger, rotated, shifted image
    true = similarity_matrix(0.3, 2.0, 40.0, 10.0)
    big_points = apply(true, TEMPLATE)
    canvas = np.zeros((320, 320, 3), np.uint8)
    for x, y in big_points:
        cv2.circle(canvas, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop = warp_face(canvas, big_points)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 200
    assert warp_face(canvas, big_points, size=224).shape == (224, 224, 3)
    assert warp_face(canvas[:, :, 0], big_points).shape == (112, 112)


# --------------------------------------------------------------------------- face choice (no detector)


def detection_row(x1, y1, x2, y2, conf=0.99, swap_eyes=False):
    """A raw detection row (box, confidence, x1..x5, y1..y5) with landmarks inside the box."""
    w, h = x2 - x1, y2 - y1
    pts = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * [w, h] + [x1, y1]
    if swap_eyes:
        pts[[0, 1]] = pts[[1, 0]]
        pts[[3, 4]] = pts[[4, 3]]
    return np.concatenate([[x1, y1, x2, y2, conf], pts[:, 0], pts[:, 1]])


def test_face_choice_policies():
    rgb = np.zeros((400, 400, 3), np.uint8)
    centred = detection_row(150, 150, 250, 250)  # 100x100 at the centre
    edge_x2 = detection_row(-100, 100, 100, 300, swap_eyes=True)  # 4x the area, centre mid left edge
    edge_x9 = detection_row(-150, 50, 150, 350)  # 9x the area, centre mid left edge
    small = detection_row(380, 0, 395, 15)  # too small for min_face_size=20
    weak = detection_row(100, 100, 300, 300, conf=0.5)

    # score = area * exp(-2 r^2), r = 1 at the middle of an edge: weight exp(-2) = 0.135
    scores = center_scores(np.stack([centred[:4], edge_x2[:4], edge_x9[:4]]), 400, 400)
    np.testing.assert_allclose(scores, [1e4, 4e4 * math.exp(-2), 9e4 * math.exp(-2)], rtol=1e-3)

    def faces(select, *rows, **kw):
        aligner = FaceAligner(select=select, **kw)
        return aligner._faces(rgb, np.stack(rows), "<test>")

    (face,) = faces("center", centred, edge_x2, small, weak)
    assert face.box == (150.0, 150.0, 250.0, 250.0) and face.index == 0
    (face,) = faces("center", centred, edge_x9)  # 9 > 1 / 0.135: the edge face wins
    assert face.box == (-150.0, 50.0, 150.0, 350.0)
    (face,) = faces("largest", centred, edge_x2)
    assert face.box == (-100.0, 100.0, 100.0, 300.0) and face.index == 1
    everything = faces("all", edge_x2, centred, small)
    assert [f.index for f in everything] == [0, 1]
    assert everything[0].box == (150.0, 150.0, 250.0, 250.0)
    for f in everything:  # "left" = smaller x, whatever order the detector gave
        assert f.landmarks[0, 0] < f.landmarks[1, 0] and f.landmarks[3, 0] < f.landmarks[4, 0]
        assert f.image.shape == (112, 112, 3) and f.landmarks.dtype == np.float32

    with pytest.raises(NoFaceError):
        faces("center", weak)
    with pytest.raises(NoFaceError):
        FaceAligner()._faces(rgb, np.empty((0, 15)), "<test>")
    with pytest.raises(FaceTooSmallError, match="15 px"):
        faces("center", small, weak)
    with pytest.raises(FaceTooSmallError):
        faces("center", centred, min_face_size=150)


def test_aligner_rejects_bad_settings():
    for kwargs in (dict(select="biggest"), dict(min_face_size=3), dict(min_confidence=2), dict(size=0)):
        with pytest.raises(ValueError):
            FaceAligner(**kwargs)
    with pytest.raises(ValueError):
        FaceAligner().align(np.zeros((50, 50, 3), np.uint8), color_order="hsv")
    with pytest.raises(TypeError):
        FaceAligner().align(12345)


# --------------------------------------------------------------------------- the mtcnn pyramid


@needs_mtcnn
def test_detection_plan_keeps_every_pyramid_level_at_12_pixels_or_more():
    """mtcnn 1.0.0 builds round(log(S/12)/log(1/0.709) - 1) levels whatever min_face_size is,
    so e.g. a 250x250 photo with min_face_size=25 gets a 10.8 px level: PNet fails and mtcnn
    reports "no face". The plan must give levels >= 12 px from min_face_size to ~the image size."""
    from mtcnn.utils.images import build_scale_pyramid

    raw = build_scale_pyramid(250, 250, min_face_size=25, scale_factor=SCALE_FACTOR)
    assert np.floor(250 * raw).min() < 12  # the crash the plan avoids

    sizes = [12, 13, 17, 20, 24, 25, 31, 40, 47, 60, 99, 112, 250, 251, 640, 1000, 3000]
    for h in sizes:
        for w in (h, 13, 25, 40, 250, 777):
            for min_face in (1, 5, 10, 12, 15, 20, 24, 25, 30, 40, 60, 100, 300):
                plan = plan_detection(h, w, min_face)
                side, det_side = min(h, w), min(plan.detect_height, plan.detect_width)
                scales = build_scale_pyramid(plan.detect_width, plan.detect_height,
                                             min_face_size=plan.min_face_size, scale_factor=SCALE_FACTOR)
                levels = det_side * scales
                where = (h, w, min_face, plan)
                assert len(levels) >= 1, where
                assert np.floor(levels).min() >= 12, where
                np.testing.assert_allclose(levels, plan.level_sides, rtol=1e-9)
                # the finest level finds faces of min(min_face, side) original pixels ...
                assert 12 * side / levels[0] <= min(min_face, side) * (1 + 1e-9), where
                # ... and the coarsest one faces as large as the image
                assert levels[-1] < 12 / SCALE_FACTOR + 1e-6, where
                aspect = (plan.detect_width / w) / (plan.detect_height / h)  # kept up to rounding
                assert abs(aspect - 1) <= 0.51 / plan.detect_width + 0.51 / plan.detect_height, where
    with pytest.raises(ValueError):
        plan_detection(11, 100, 20)


# --------------------------------------------------------------------------- LFW sample


@pytest.fixture(scope="module")
def lfw():
    raw = shared_data("raw", "lfw")
    ref = shared_data("raw", "lfw_112")
    manifest = read_manifest(ref / "manifest.tsv")
    names = sorted(manifest)
    assert len(names) == 40 and all(manifest[n][0] == "ok" for n in names)
    images = [decode_image(raw / n) for n in names]
    return dict(raw=raw, ref=ref, manifest=manifest, names=names, images=images)


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


@pytest.fixture(scope="module")
def lfw_batch(lfw, aligner):
    aligner.align(lfw["images"][0])  # build the detector before timing
    start = time.perf_counter()
    results = aligner.align_batch(lfw["images"])
    seconds = time.perf_counter() - start
    print(f"\nalign_batch: {len(results)} LFW photos in {seconds:.2f} s")
    return results


@needs_mtcnn
def test_lfw_landmarks_match_the_reference(lfw, lfw_batch):
    errors = []
    for name, image, result in zip(lfw["names"], lfw["images"], lfw_batch):
        assert isinstance(result, list) and len(result) == 1, (name, result)
        face = result[0]
        reference = parse_landmarks(lfw["manifest"][name][2])
        error = float(np.linalg.norm(face.landmarks - reference, axis=1).mean())
        errors.append(error)
        assert error < 2.0, (name, error)
        assert face.confidence >= 0.9 and face.index == 0
        x1, y1, x2, y2 = face.box
        assert (face.landmarks[:, 0] > x1).all() and (face.landmarks[:, 0] < x2).all()
        assert (face.landmarks[:, 1] > y1).all() and (face.landmarks[:, 1] < y2).all()
        assert face.image.shape == (112, 112, 3) and face.image.dtype == np.uint8
    print(f"\nlandmark distance to the reference: mean {np.mean(errors):.3f} px, max {np.max(errors):.3f} px")


@needs_mtcnn
def test_a_large_photo_is_searched_at_a_bounded_size_and_warped_at_full_size(lfw, monkeypatch):
    """max_detect_pixels: a 4x-upscaled LFW photo (1000x1000) is searched at 250,000 pixels at
    most; the landmarks, mapped back, are the reference ones scaled by 4 (within 2 px of the
    250x250 photo's), and the crop is warped from the full image."""
    seen = []
    capped = FaceAligner(max_detect_pixels=250_000)
    real = capped._detect_same_size
    monkeypatch.setattr(capped, "_detect_same_size",
                        lambda images, plan: seen.append(images[0].shape[:2]) or real(images, plan))
    for name, image in list(zip(lfw["names"], lfw["images"]))[:6]:
        big = cv2.resize(image, (1000, 1000), interpolation=cv2.INTER_CUBIC)
        face = capped.align(big)[0]
        assert seen[-1][0] * seen[-1][1] <= 250_000
        reference = parse_landmarks(lfw["manifest"][name][2])
        error = float(np.linalg.norm((face.landmarks + 0.5) / 4 - 0.5 - reference, axis=1).mean())
        assert error < 2.0, (name, error)
        np.testing.assert_array_equal(face.image, warp_face(big, face.landmarks))
    small = FaceAligner(max_detect_pixels=250_000)
    assert small._reduction(250, 250) == 1.0 and small._reduction(1000, 1000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_detect_pixels"):
        FaceAligner(max_detect_pixels=10)


@needs_mtcnn
def test_our_warp_reproduces_the_reference_crops(lfw):
    """Warping the reference landmarks with warp_face gives the reference crop within 2 grey
    levels (mean absolute difference; JPEG noise is about 1). The reference crops were made with
    a least-median-of-squares fit; on photos where it keeps all five points, the plain
    least-squares warp is the same image."""
    diffs, n_all_five = [], 0
    for name, image in zip(lfw["names"], lfw["images"]):
        reference = decode_image(lfw["ref"] / name)
        points = parse_landmarks(lfw["manifest"][name][2])
        ours = warp_face(image, points)
        diff = mad(cv2.cvtColor(ours, cv2.COLOR_RGB2GRAY), cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY))
        assert diff <= 2.0, (name, diff)
        diffs.append(diff)
        if landmark_inliers(points, TEMPLATE).all():
            n_all_five += 1
            np.testing.assert_array_equal(warp_face(image, points, method="lstsq"), ours)
    assert n_all_five >= 20
    print(f"\ngrey MAD to the reference crops: mean {np.mean(diffs):.2f}, max {np.max(diffs):.2f} "
          f"({n_all_five} of {len(diffs)} photos keep all five landmarks)")


@needs_mtcnn
def test_the_centred_subject_wins_over_a_bystander(lfw, aligner):
    """A real photo centred in a larger canvas with a half-size copy of another person's photo in a
    corner (a bystander whose face is detected too): ``select="center"`` aligns the subject, whichever
    face the detector is surer of. (lfw_112's bystander crops, docs/alignment_study.md, are this error.)"""
    import cv2

    subject, other = lfw["images"][0], lfw["images"][-1]
    canvas = np.full((500, 500, 3), 128, np.uint8)
    canvas[125:375, 125:375] = subject
    canvas[10:135, 10:135] = cv2.resize(other, (125, 125), interpolation=cv2.INTER_AREA)
    everyone = FaceAligner(select="all").align(canvas)
    centres = [f.landmarks.mean(0) for f in everyone]
    assert len(everyone) >= 2 and any(np.all(c < 135) for c in centres)  # the bystander was found
    (face,) = aligner.align(canvas)
    alone = aligner.align(subject)[0]
    np.testing.assert_allclose(face.landmarks, alone.landmarks + 125, atol=2.0)


@needs_mtcnn
def test_batch_results_equal_one_by_one(lfw, lfw_batch, aligner):
    start = time.perf_counter()
    for image, batched in zip(lfw["images"][:10], lfw_batch[:10]):
        (single,) = aligner.align(image)
        (face,) = batched
        np.testing.assert_allclose(face.landmarks, single.landmarks, atol=1e-3)
        np.testing.assert_allclose(face.box, single.box, atol=1e-3)
        assert face.confidence == pytest.approx(single.confidence, abs=1e-6)
        assert mad(face.image, single.image) < 0.01
    print(f"\none by one: 10 LFW photos in {time.perf_counter() - start:.2f} s")


@needs_mtcnn
def test_every_input_form_gives_the_same_face(lfw, aligner, tmp_path):
    name = lfw["names"][0]
    rgb = lfw["images"][0]
    (want,) = aligner.align(rgb)
    path = lfw["raw"] / name
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    sources = {
        "path": (path, "rgb"),
        "str": (str(path), "rgb"),
        "bytes": (path.read_bytes(), "rgb"),
        "bgr": (bgr, "bgr"),
        "rgba": (np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "rgb"),
        "bgra": (np.dstack([bgr, np.zeros(rgb.shape[:2], np.uint8)]), "bgr"),
        "uint16": (rgb.astype(np.uint16) * 257, "rgb"),
    }
    for what, (source, order) in sources.items():
        (face,) = aligner.align(source, color_order=order)
        np.testing.assert_allclose(face.landmarks, want.landmarks, atol=1e-3, err_msg=what)
        np.testing.assert_array_equal(face.image, want.image, err_msg=what)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for source in (grey, grey[:, :, None]):
        (face,) = aligner.align(source)
        assert np.linalg.norm(face.landmarks - want.landmarks, axis=1).mean() < 3.0
        assert (face.image[:, :, 0] == face.image[:, :, 1]).all()
    np.testing.assert_array_equal(to_rgb(bgr, "bgr"), rgb)


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def bad_corpus(lfw, tmp_path_factory):
    """{file name: expected error type, or None when the file must align}."""
    root = tmp_path_factory.mktemp("corpus") / "photos"
    (root / "sub").mkdir(parents=True)
    face = lfw["images"][0]
    jpeg = encode_jpeg(face)
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "text.png").write_text("this is not an image\n" * 20)
    (root / "one_pixel.png").write_bytes(encode_png(np.full((1, 1, 3), 128, np.uint8)))
    (root / "tiny.png").write_bytes(encode_png(np.full((8, 10, 3), 128, np.uint8)))
    (root / "flat_grey.png").write_bytes(encode_png(np.full((200, 240, 3), 127, np.uint8)))
    # a real face, ~40 px: found, but below min_face_size=60
    (root / "small_face.png").write_bytes(encode_png(cv2.resize(face, (100, 100), interpolation=cv2.INTER_AREA)))
    bgr16 = cv2.cvtColor(face, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", bgr16)
    assert ok
    (root / "sub" / "face16.png").write_bytes(buf.tobytes())
    bgra = np.dstack([cv2.cvtColor(face, cv2.COLOR_RGB2BGR), np.full(face.shape[:2], 200, np.uint8)])
    ok, buf = cv2.imencode(".png", bgra)
    assert ok
    (root / "sub" / "face_rgba.png").write_bytes(buf.tobytes())
    (root / "notes.txt").write_text("ignored: not an image extension")
    expected = {
        "empty.jpg": ImageDecodeError,
        "truncated.jpg": ImageDecodeError,
        "text.png": ImageDecodeError,
        "one_pixel.png": ImageDecodeError,
        "tiny.png": FaceTooSmallError,
        "flat_grey.png": NoFaceError,
        "small_face.png": FaceTooSmallError,
        "sub/face16.png": None,
        "sub/face_rgba.png": None,
    }
    return root, expected


@needs_mtcnn
def test_bad_inputs_raise_typed_errors(bad_corpus, lfw):
    root, expected = bad_corpus
    aligner = FaceAligner(min_face_size=60)
    (want,) = aligner.align(lfw["images"][0])
    for name, error in expected.items():
        if error is None:
            (face,) = aligner.align(root / name)
            np.testing.assert_allclose(face.landmarks, want.landmarks, atol=0.5, err_msg=name)
        else:
            with pytest.raises(error) as info:
                aligner.align(root / name)
            assert isinstance(info.value, IomfaceError) and isinstance(info.value, ValueError)
            if error is ImageDecodeError:
                assert name in str(info.value)
    # the batch API returns the same errors instead of raising them
    names = list(expected)
    for name, result in zip(names, aligner.align_batch([root / n for n in names])):
        if expected[name] is None:
            assert isinstance(result, list) and len(result) == 1, name
        else:
            assert type(result) is expected[name], (name, result)
    with pytest.raises(ImageDecodeError):
        aligner.align(root / "missing.jpg")
    with pytest.raises(ImageDecodeError):
        aligner.align(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ImageDecodeError):
        aligner.align(np.zeros((50, 50, 5), np.uint8))
    with pytest.raises(ImageDecodeError):
        aligner.align(np.zeros((0, 50), np.uint8))


@needs_mtcnn
def test_align_folder_writes_no_output_for_failures(bad_corpus, tmp_path):
    root, expected = bad_corpus
    reasons = {ImageDecodeError: "failed:bad_image", NoFaceError: "failed:no_face",
               FaceTooSmallError: "failed:face_too_small", None: "ok"}
    for fallback in ("skip", "center"):
        dst = tmp_path / fallback
        summary = align_folder(root, dst, min_face_size=60, fallback=fallback, progress=False, workers=0)
        rows = read_manifest(dst / "manifest.tsv")
        assert sorted(rows) == sorted(expected)  # notes.txt is not an image: not listed
        for name, error in expected.items():
            status, confidence, landmarks = rows[name]
            want = "center" if (fallback == "center" and error is NoFaceError) else reasons[error]
            assert status == want, (fallback, name, status)
            assert (dst / name).exists() == (status in ("ok", "center")), (fallback, name)
            assert (confidence != "") == (status == "ok") and (landmarks != "") == (status == "ok")
            if status in ("ok", "center"):
                assert decode_image(dst / name).shape == (112, 112, 3)
        assert summary.total == len(expected) and summary.failed == len(expected) - 2 - (fallback == "center")
        assert not list(dst.rglob("*.part"))


# --------------------------------------------------------------------------- mtcnn crash sizes


@needs_mtcnn
def test_odd_sizes_and_min_face_sizes_do_not_crash(lfw):
    """Sizes and min_face_size values for which raw mtcnn 1.0.0 builds a pyramid level under 12 px
    (and silently returns no face) or none at all."""
    face = lfw["images"][0]
    noise = np.random.default_rng(5).integers(0, 256, size=(250, 250, 3), dtype=np.uint8)
    outcomes = {}
    for h, w in ((11, 11), (12, 12), (13, 13), (25, 40), (40, 25), (61, 61), (250, 250)):
        for min_face in (12, 20, 25, 30, 80):
            aligner = FaceAligner(min_face_size=min_face)
            for kind, image in (("face", face), ("noise", noise)):
                small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
                try:
                    outcomes[kind, h, w, min_face] = len(aligner.align(small))
                except (NoFaceError, FaceTooSmallError) as e:
                    outcomes[kind, h, w, min_face] = type(e).__name__
    assert outcomes["face", 11, 11, 20] == "FaceTooSmallError"
    for min_face in (25, 30, 80):  # raw mtcnn: a 10.8/9.0/<9 px level, "no face"
        assert outcomes["face", 250, 250, min_face] == 1
    assert outcomes["face", 61, 61, 20] == 1
    # and the largest faces are still found when min_face_size is small (raw mtcnn misses them)
    (big,) = FaceAligner(min_face_size=5).align(face)
    assert big.box[2] - big.box[0] > 80


# --------------------------------------------------------------------------- folders


@needs_mtcnn
def test_align_folder_on_lfw_and_resume(lfw, tmp_path):
    dst = tmp_path / "aligned"
    summary = align_folder(lfw["raw"], dst, progress=False, workers=1, batch_size=16)
    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (40, 40, 0, 0)
    rows = read_manifest(dst / "manifest.tsv")
    assert sorted(rows) == lfw["names"]
    header = (dst / "manifest.tsv").read_text().splitlines()[0]
    assert header == "path\tstatus\tconfidence\tlandmarks"
    for name in lfw["names"]:
        status, confidence, landmarks = rows[name]
        assert status == "ok" and 0.9 <= float(confidence) <= 1.0
        reference = parse_landmarks(lfw["manifest"][name][2])
        assert np.linalg.norm(parse_landmarks(landmarks) - reference, axis=1).mean() < 2.0
        assert decode_image(dst / name).shape == (112, 112, 3)

    # resume: nothing left to do
    again = align_folder(lfw["raw"], dst, progress=False)
    assert (again.skipped, again.processed) == (40, 0)

    # a killed run: one output missing, the last manifest row cut in the middle
    (dst / lfw["names"][3]).unlink()
    text = (dst / "manifest.tsv").read_text()
    (dst / "manifest.tsv").write_text(text[:-10])
    again = align_folder(lfw["raw"], dst, progress=False)
    assert (again.skipped, again.ok) == (38, 2)
    rows = read_manifest(dst / "manifest.tsv")
    assert sorted(rows) == lfw["names"] and all(r[0] == "ok" for r in rows.values())
    assert all((dst / n).exists() for n in lfw["names"])


@needs_mtcnn
def test_align_dataset_script(bad_corpus, tmp_path):
    root, expected = bad_corpus
    dst = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "scripts/align_dataset.py", "--src", str(root / "sub"), "--dst", str(dst),
                           "--workers", "2", "--batch_size", "1", "--no_progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 images: 2 aligned, 0 centre crops, 0 failed, 0 already done" in proc.stdout
    rows = read_manifest(dst / "manifest.tsv")
    assert sorted(rows) == ["face16.png", "face_rgba.png"] and all(r[0] == "ok" for r in rows.values())

    proc = subprocess.run([sys.executable, "scripts/align_dataset.py", "--src", str(tmp_path / "nowhere"),
                           "--dst", str(dst)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr


def test_align_module_imports_without_tensorflow():
    code = ("import sys, arcface.align; "
            "bad = [m for m in ('tensorflow', 'mtcnn', 'keras', 'jax', 'iom') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_mtcnn
def test_stage_networks_equal_the_mtcnn_keras_models():
    """Our TensorFlow evaluation of PNet/RNet/ONet against mtcnn's Keras models (any backend)."""
    from arcface.align import _get_detector

    rng = np.random.default_rng(6)
    stages = _get_detector().stages
    for stage, shape in zip(stages, [(2, 37, 29, 3), (5, 24, 24, 3), (3, 48, 48, 3)]):
        x = rng.uniform(-1, 1, size=shape).astype(np.float32)
        ours = stage._model(x)
        theirs = stage._model.keras_model(x)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_read_manifest_skips_any_header_with_our_first_columns(tmp_path):
    """lfw_112's manifest names its last column differently; its header is not a photo."""
    path = tmp_path / "manifest.tsv"
    path.write_text("path\tstatus\tconfidence\tlandmarks_in_original_250x250\n"
                    "a/a_0001.jpg\tok\t0.9998\t1 2 3 4 5 6 7 8 9 10\n"
                    "b/b_0001.jpg\tcenter\t\t\n")
    assert read_manifest(path) == {"a/a_0001.jpg": ("ok", "0.9998", "1 2 3 4 5 6 7 8 9 10"),
                                   "b/b_0001.jpg": ("center", "", "")}
