"""The fast paths of photo → template (bench/latency.py) give what the plain paths give.

* MTCNN's first stage with the whole pyramid in one TensorFlow call (``PyramidPNet``) equals
  mtcnn's own stage, level by level, exactly, and so does the whole detection;
* a photo's embedding through the pipeline (one image, no padding to the embedder's batch size,
  the direct inference call) equals the backbone's ``predict_on_batch`` on a full padded batch;
* the bench's staged chain is the service's path: the same stored blobs as ``enroll``, the
  same similarity as ``verify``.
"""

import importlib.util

import cv2
import numpy as np
import pytest

from arcface.align import FaceAligner, PyramidPNet, get_detector, plan_detection, to_rgb
from tests.conftest import shared_data

needs_mtcnn = pytest.mark.skipif(importlib.util.find_spec("mtcnn") is None,
                                 reason="the mtcnn package (and TensorFlow) is not installed")


@pytest.fixture(scope="module")
def photos():
    raw = shared_data("raw", "lfw")
    paths = sorted(raw.rglob("*.jpg"))
    assert len(paths) == 40
    return [p.read_bytes() for p in paths]


def normalised_batch(images):
    from mtcnn.utils.images import standarize_batch

    return standarize_batch(list(images), normalize=True)[:2]


@needs_mtcnn
def test_pyramid_pnet_equals_mtcnn_stage(photos):
    """Same proposals (every column, every row, same order) for single photos, a batch, and
    resized images whose plans have other level counts and min_face_size values."""
    pnet = get_detector().stages[0]
    assert isinstance(pnet, PyramidPNet)
    images = [to_rgb(p) for p in photos[:12]]
    cases = [([im], 20.0) for im in images[:8]] + [(images, 20.0)]
    for side, min_face in ((100, 20), (61, 20), (250, 60), (300, 5), (40, 12)):
        plan = plan_detection(side, side, min(min_face, 20))
        small = [cv2.resize(im, (plan.detect_width, plan.detect_height), interpolation=cv2.INTER_AREA)
                 for im in images[:3]]
        cases.append((small, plan.min_face_size))
    n_boxes = 0
    for batch, min_face in cases:
        norm, shapes = normalised_batch(batch)
        ours = pnet(images_normalized=norm, images_oshapes=shapes, min_face_size=min_face)
        theirs = pnet.reference(images_normalized=norm, images_oshapes=shapes, min_face_size=min_face)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{len(batch)} image(s) of {batch[0].shape}")
        n_boxes += len(ours)
    assert n_boxes > 100  # the comparison is not between empty arrays


@needs_mtcnn
def test_detection_with_the_fused_pyramid_equals_mtcnn(photos, monkeypatch):
    """FaceAligner's raw detections (boxes, scores, landmarks) and crops are those of mtcnn's own
    first stage, photo by photo and batched."""
    aligner = FaceAligner()
    images = {i: to_rgb(p) for i, p in enumerate(photos[:10])}
    fast_rows = aligner._detect(images)
    fast_single = [aligner._detect({0: im})[0] for im in images.values()]
    fast_faces = [aligner.align(im)[0] for im in images.values()]
    monkeypatch.setattr(PyramidPNet, "__call__", lambda self, **kwargs: self.reference(**kwargs))
    plain_rows = aligner._detect(images)
    plain_single = [aligner._detect({0: im})[0] for im in images.values()]
    plain_faces = [aligner.align(im)[0] for im in images.values()]
    for i in images:
        assert len(plain_rows[i]) >= 1
        np.testing.assert_array_equal(fast_rows[i], plain_rows[i])
        np.testing.assert_array_equal(fast_single[i], plain_single[i])
        np.testing.assert_array_equal(fast_faces[i].landmarks, plain_faces[i].landmarks)
        np.testing.assert_array_equal(fast_faces[i].image, plain_faces[i].image)


@pytest.fixture(scope="module")
def pipeline():
    from iom.service.pipeline import Pipeline

    return Pipeline.from_pretrained(runtime="keras")      # the tests below look inside the Keras backbone


@needs_mtcnn
def test_photo_embeddings_equal_the_padded_batch_predict(photos, pipeline):
    """One photo at a time through the pipeline (unpadded, direct inference call) against the
    crops of the same photos embedded by ``predict_on_batch`` on one batch padded to 16."""
    sample = photos[::7]
    crops = np.stack([pipeline.aligner.align(p)[0].image for p in sample])
    padded = np.concatenate([crops, np.zeros((16 - len(crops), *crops.shape[1:]), np.uint8)])
    want = np.asarray(pipeline.embedder.backbone.predict_on_batch(padded), np.float64)[:len(crops)]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = np.concatenate([pipeline.embed_photos(p) for p in sample])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5)
    # and different photos do give different embeddings (the comparison can fail)
    assert np.abs(got[0] - got[1]).max() > 1e-2


@needs_mtcnn
@pytest.mark.parametrize("identification", [True, False])
def test_latency_bench_chain_is_the_service_path(photos, pipeline, tmp_path, identification):
    """bench/latency.py's staged chain (scrypt verification key, gallery code, per-template
    identification key) gives exactly the blobs ``TemplateService.enroll`` stores, and its
    match the similarity ``verify`` computes (cheapest scrypt cost, to keep the test quick)."""
    from bench.latency import Bench, new_token

    bench = Bench(None, str(tmp_path / "t.db"), scrypt_n=2**10, identification=identification,
                  pipeline=pipeline)
    assert bench.key_version == 210
    bench.check_against_api(photos[0])
    token = new_token()
    bench.service.enroll("s0", photos=[photos[0]], user_token=token)
    _, embedding, ms = bench.template(photos[1], token, "s0")
    assert set(ms) >= {"key", "hash", "pack", "verification_template", "end_to_end"}
    assert ("id-key" in ms) == identification
    scored = bench.trusted.verify("s0", embedding=embedding, user_token=token)
    similarity, _ = bench.match("s0", token, embedding)
    assert similarity == pytest.approx(scored.similarity, abs=1e-12)
    assert bench.service.verify("s0", probe=photos[1], user_token=token).similarity is None
    bench.store.close()
