"""The code-size sweep's pieces: sizes, all-pairs TAR from histograms, the person-disjoint
training split, the RESULTS block, feature transforms."""

import numpy as np
import pytest

from arcface.errors import ConfigError
from arcface.metrics import tar_at_far
from iom.evaluation.report import PairData
from iom.evaluation.sweep import (Size, all_pairs_codes, lfw_person_disjoint_training, replace_block,
                                  tar_at_far_from_counts, transform_features)


def test_size_parse_bits_and_bytes():
    s = Size.parse("512x8")
    assert (s.m, s.q, s.bits, s.template_bytes, str(s)) == (512, 8, 1536, 192, "512x8")
    assert Size.parse("128X4").bits == 256
    assert Size.parse("256x16").template_bytes == 128
    for bad in ("512", "ax8", "0x8", "8x1", "8x300"):
        with pytest.raises(ConfigError, match="code size"):
            Size.parse(bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_from_counts_matches_scores(seed):
    """Histogram TAR equals the score-level TAR when the scores are the bins."""
    rng = np.random.default_rng(seed)
    gen = rng.integers(20, 65, 400)
    imp = rng.binomial(64, 0.15, 20000)
    hist_g, hist_i = np.bincount(gen, minlength=65), np.bincount(imp, minlength=65)
    scores = np.concatenate([gen, imp]).astype(float)
    same = np.concatenate([np.ones(len(gen), bool), np.zeros(len(imp), bool)])
    for far in (1e-2, 1e-3, 1e-4):
        assert tar_at_far_from_counts(hist_g, hist_i, far) == pytest.approx(tar_at_far(scores, same, far)[0])


def test_all_pairs_codes_counts_every_pair():
    codes = np.array([[0, 1, 2], [0, 1, 3], [1, 1, 2], [3, 2, 0]])
    ids = np.array(["a", "a", "b", "b"])
    out = all_pairs_codes(codes, 4, ids)
    assert (out["all_pairs_genuine"], out["all_pairs_impostor"]) == (2, 4)
    # genuine pairs agree in 2 and 0 groups, impostors in 2, 1, 0, 0: at FAR <= 1e-3 no impostor
    # may pass, so only 3 agreeing groups are accepted and no genuine pair has them
    assert out["all_pairs_tar@0.001"] == 0.0
    codes[0] = codes[1]
    assert all_pairs_codes(codes, 4, ids)["all_pairs_tar@0.001"] == 0.5


def test_person_disjoint_training_never_holds_the_folds_people():
    ids = np.array(["ann", "ann", "bob", "bob", "cid", "cid", "dan", "dan"])
    emb = np.arange(16, dtype=np.float32).reshape(8, 2)
    data = PairData("toy", emb, left=np.array([0, 2, 4, 6]), right=np.array([1, 4, 5, 0]),
                    issame=np.array([True, False, True, False]), folds=np.array([0, 0, 1, 1]),
                    identities=ids)
    x_base, y_base = np.zeros((3, 2), np.float32), np.array([0, 1, 1])
    x, y, mirrored = lfw_person_disjoint_training(x_base, y_base, data, 0, np.array([False, True, False]))
    # fold 0 holds ann, bob, cid: only dan's two images join the base set, as a new identity
    np.testing.assert_array_equal(x[3:], emb[6:])
    np.testing.assert_array_equal(y, [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(mirrored, [False, True, False, False, False])   # the verification images are originals
    x, y, mirrored = lfw_person_disjoint_training(x_base, y_base, data, 1)
    np.testing.assert_array_equal(x[3:], emb[2:4])           # fold 1 holds cid, dan, ann: bob stays
    assert not mirrored.any()


def test_replace_block():
    doc = "intro\n<!-- s:begin -->\nold\n<!-- s:end -->\ntail\n"
    assert replace_block(doc, "s", "new") == "intro\n<!-- s:begin -->\nnew\n<!-- s:end -->\ntail\n"
    assert replace_block("intro", "s", "new").endswith("<!-- s:begin -->\nnew\n<!-- s:end -->\n")


def test_feature_transforms():
    x = np.random.default_rng(0).normal(size=(10, 192)).astype(np.float32)
    np.testing.assert_array_equal(transform_features(x, "none"), x)
    relu = transform_features(x, "relu128")
    assert relu.shape == (10, 128) and relu.min() >= 0
    assert transform_features(x, "anisotropic512").shape == (10, 512)
    np.testing.assert_array_equal(transform_features(x, "relu128"), relu)        # fixed maps
    with pytest.raises(ConfigError, match="feature transform"):
        transform_features(x, "bogus")
