"""The alignment study's helpers (bench/align_study): the SCRFD head decoder, the face it picks, the
landmark-offset re-warp (against hand-built head outputs and the study's own lstsq re-warp), and the
background-face criterion."""

import numpy as np

from arcface.align import ARCFACE_TEMPLATE
from bench.align_study.geometry import rewarp_matrix, shifted_landmark_matrix, similarity, to_crop
from bench.align_study.scrfd import STRIDES, anchor_centres, decode, pick_face

H = W = 64  # input size of the hand-built outputs


def _outputs(face_at: dict) -> list:
    """Nine head outputs (batch 1) of an H x W input, all scores 0 except the anchors of ``face_at``:
    ``{(stride, anchor index): (score, ltrb distances, keypoint offsets)}``, in stride units."""
    scores, boxes, kps = [], [], []
    for stride in STRIDES:
        n = (H // stride) * (W // stride) * 2
        s, b, k = np.zeros((1, n, 1)), np.zeros((1, n, 4)), np.zeros((1, n, 10))
        for (st, i), (score, ltrb, offs) in face_at.items():
            if st == stride:
                s[0, i, 0], b[0, i], k[0, i] = score, ltrb, offs
        scores.append(s)
        boxes.append(b)
        kps.append(k)
    return scores + boxes + kps


def test_anchor_centres_are_row_major_with_two_anchors_per_cell():
    c = anchor_centres(2, 3, 8)
    expected = [(0, 0), (8, 0), (16, 0), (0, 8), (8, 8), (16, 8)]
    np.testing.assert_array_equal(c, np.repeat(np.array(expected, np.float32), 2, axis=0))


def test_decode_places_boxes_and_keypoints_by_stride_and_anchor():
    offs = np.arange(10, dtype=float) / 10.0
    # stride 16, cell (row 1, col 2), second anchor: index (1 * 4 + 2) * 2 + 1 = 13; centre (32, 16)
    scores, boxes, kps = decode(_outputs({(16, 13): (0.9, (1.0, 0.5, 2.0, 1.5), offs)}), (H, W))
    assert len(scores) == sum((H // s) * (W // s) * 2 for s in STRIDES)
    i = int(np.argmax(scores))
    assert scores[i] == 0.9 and (scores > 0).sum() == 1
    np.testing.assert_allclose(boxes[i], [32 - 16, 16 - 8, 32 + 32, 16 + 24])
    np.testing.assert_allclose(kps[i], np.array([32.0, 16.0]) + offs.reshape(5, 2) * 16)


def test_pick_face_prefers_the_face_holding_the_centre_then_the_score():
    scores = np.array([0.95, 0.6, 0.7, 0.3])
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [25, 25, 35, 35], [0, 0, 64, 64]], float)
    assert pick_face(scores, boxes, np.array([30.0, 30.0])) == 2     # both hold it: the better one
    assert pick_face(scores, boxes, np.array([60.0, 5.0])) == 0      # none holds it: best score
    assert pick_face(scores * 0.5, boxes, np.array([30.0, 30.0])) is None


def test_zero_offset_rewarp_is_the_lstsq_rewarp_and_an_offset_moves_the_template_points():
    rng = np.random.default_rng(0)
    template = ARCFACE_TEMPLATE.astype(np.float64)
    for _ in range(20):
        lm = template * rng.uniform(1.5, 2.5) + rng.uniform(20, 80, 2) + rng.normal(0, 4, (5, 2))
        np.testing.assert_allclose(shifted_landmark_matrix(lm, np.zeros((5, 2))), rewarp_matrix(lm), atol=1e-9)
    # landmarks exactly on the template (crop = photo): a uniform shift is undone by a translation
    m = shifted_landmark_matrix(template, np.full((5, 2), 1.5))
    np.testing.assert_allclose(m, [[1, 0, -1.5], [0, 1, -1.5]], atol=1e-9)
    t, _ = similarity(template, "lmeds")
    np.testing.assert_allclose(to_crop(template, t), template, atol=1e-9)


def test_off_centre_small_faces_flags_only_faces_both_far_and_small():
    from bench.align_study.geometry import off_centre_small_faces

    base = np.array([[105, 115], [145, 115], [125, 135], [108, 155], [142, 155]], float)  # eyes 40 px apart

    def row(shift=(0, 0), scale=1.0, status="ok"):
        lm = (base - base.mean(0)) * scale + base.mean(0) + shift
        return (status, "0.99", " ".join(f"{v:g}" for v in lm.ravel()))

    manifest = {f"subject/{i}.jpg": row((i % 3, -(i % 2))) for i in range(20)}
    manifest.update({"far_small.jpg": row((60, -50), 0.5),      # a bystander: 78 px away, eyes 20 px apart
                     "far_big.jpg": row((60, -50)),             # the subject, off-centre (eyes 40 px)
                     "near_small.jpg": row((10, 5), 0.5),       # the subject, small, centred
                     "centre_crop.jpg": row((80, 80), 0.5, status="center")})
    assert off_centre_small_faces(manifest) == {"far_small.jpg"}
