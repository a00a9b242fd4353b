"""Operating points (issue 13): calibration on identities held out of training, histograms
against brute force, thresholds at several FARs, the service's --far / --threshold."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from iom.evaluation.calibrate import (calibrate, duplicate_identities, genuine_histogram, operating_point,
                                      tail)
from iom.service.calibration import OperatingPoint, select_operating_point
from iom.errors import InvalidInputError


def brute_force(codes, labels, same_person=()):
    """Genuine and impostor agreement histograms over every pair, by a double loop; pairs of
    two labels listed in ``same_person`` count as neither."""
    m = codes.shape[1]
    genuine, impostor = np.zeros(m + 1, int), np.zeros(m + 1, int)
    skip = {tuple(sorted(p)) for p in same_person}
    for i, j in itertools.combinations(range(len(codes)), 2):
        k = int((codes[i] == codes[j]).sum())
        if labels[i] == labels[j]:
            genuine[k] += 1
        elif tuple(sorted((labels[i], labels[j]))) not in skip:
            impostor[k] += 1
    return genuine, impostor


class CodesAsGiven:
    """A 'hasher' whose codes are its input (encode ignores the key)."""

    def __init__(self, m, q):
        self.m, self.q = m, q

    def encode(self, x, key):
        return np.asarray(x)


def test_histograms_and_operating_points_against_brute_force():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), rng.integers(1, 6, 12))
    centres = rng.integers(0, 4, (12, 16))
    codes = np.where(rng.random((len(labels), 16)) < 0.3, rng.integers(0, 4, (len(labels), 16)), centres[labels])
    genuine, impostor = brute_force(codes, labels, duplicate_identities(codes, labels))
    assert np.array_equal(genuine_histogram(codes, labels), genuine)
    cal = calibrate(CodesAsGiven(16, 4), codes, labels, [0.1, 0.01], 0.01, "toy")
    assert cal["genuine_similarities"] == genuine.tolist() and cal["impostor_similarities"] == impostor.tolist()
    assert (cal["n_genuine"], cal["n_impostor"]) == (genuine.sum(), impostor.sum())
    for point in cal["operating_points"]:
        # the lowest k/m whose impostor share at or above it is <= far (brute force)
        sims = np.arange(17) / 16
        fars = [impostor[k:].sum() / impostor.sum() for k in range(17)] + [0.0]
        k = next(k for k in range(18) if fars[k] <= point["far"])
        assert point["threshold"] == k / 16
        assert point["far_measured"] == pytest.approx(fars[k])
        assert point["tar"] == pytest.approx(genuine[k:].sum() / genuine.sum())
        assert k == 0 or fars[k - 1] > point["far"]
        del sims
    assert cal["threshold"] == cal["operating_points"][1]["threshold"] and cal["far"] == 0.01


def test_operating_point_when_no_threshold_is_low_enough():
    impostor = np.array([0, 0, 0, 5])                     # every impostor agrees on all 3 groups
    genuine = np.array([0, 0, 0, 2])
    p = operating_point(genuine, impostor, 1e-3)
    assert p["threshold"] == 4 / 3 and p["tar"] == 0.0 and p["far_measured"] == 0.0   # above 1: nothing passes
    assert list(tail([1, 1, 2])) == [1.0, 0.75, 0.5, 0.0]


def _cal():
    return {"far": 1e-3, "threshold": 0.5, "tar": 0.9, "m": 4, "q": 2, "dataset": "held-out",
            "genuine_similarities": [0, 1, 1, 3, 5], "impostor_similarities": [50, 30, 15, 4, 1],
            "operating_points": [{"far": 1e-2, "threshold": 0.75, "tar": 0.8},
                                 {"far": 1e-3, "threshold": 1.0, "tar": 0.5}]}


def test_select_operating_point():
    cal = _cal()
    p = select_operating_point(cal, far=1e-2)
    assert p == OperatingPoint(0.75, 1e-2, 8 / 10, 5 / 100, "held-out")     # rates from the histograms
    p = select_operating_point(cal)                                          # the default: far 1e-3
    assert (p.threshold, p.far_target, p.expected_tar, p.expected_far) == (1.0, 1e-3, 0.5, 0.01)
    p = select_operating_point(cal, threshold=0.5)
    assert (p.threshold, p.far_target, p.expected_tar, p.expected_far) == (0.5, None, 0.9, 0.2)
    assert "expected TAR 0.900" in p.describe()
    with pytest.raises(InvalidInputError, match="no operating point at FAR 0.05.*it has: 0.01, 0.001"):
        select_operating_point(cal, far=0.05)
    with pytest.raises(InvalidInputError, match="not both"):
        select_operating_point(cal, far=1e-2, threshold=0.5)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        select_operating_point(cal, threshold=1.5)
    old = {"far": 1e-3, "threshold": 0.25, "tar": 0.7, "m": 4, "q": 2, "dataset": "lfw"}   # an older file
    p = select_operating_point(old)
    assert (p.threshold, p.expected_tar, p.expected_far) == (0.25, 0.7, None)


def test_held_out_identities_are_fixed_disjoint_and_never_mirrors(tmp_path):
    from iom.features import calibration_embeddings, held_out_identities, training_embeddings
    from tests.test_iom_stage2 import stage2_cfg

    class FakeExtractor:
        def embed_folder(self, folder, mirror=False, progress=True):
            from arcface.embeddings_io import EmbeddingSet

            labels = np.repeat(np.arange(10), 3)
            x = np.random.default_rng(1 if mirror else 0).normal(size=(30, 8)).astype(np.float32)
            return EmbeddingSet(np.array([f"{folder}/{i}{'m' if mirror else ''}" for i in range(30)]), x,
                                labels, None)

    cfg = stage2_cfg(train_dataset=["a", "b"], stage1_model="m", num_classes=20, calibration_identities=4,
                     embd_shape=8)
    held = held_out_identities(np.arange(20), 4)
    assert np.array_equal(held, held_out_identities(np.arange(20), 4)) and len(set(held)) == 4
    x, y = training_embeddings(cfg, FakeExtractor())
    assert not np.isin(y, held).any() and len(np.unique(y)) == 16 and len(x) == 16 * 3 * 2   # with mirrors
    xc, yc, source = calibration_embeddings(cfg, FakeExtractor())
    assert set(np.unique(yc)) == set(held) and len(xc) == 4 * 3                # originals only
    assert "4 identities of a, b held out of training" == source
    cfg_seed = stage2_cfg(train_dataset=["a", "b"], stage1_model="m", calibration_identities=4, seed=7)
    _, y7 = training_embeddings(cfg_seed, FakeExtractor())
    assert np.array_equal(np.unique(y7), np.unique(y))                        # independent of the seed


def test_calibration_needs_a_disjoint_set():
    from arcface.errors import ConfigError
    from iom.features import calibration_embeddings
    from tests.test_iom_stage2 import stage2_cfg

    with pytest.raises(ConfigError, match="nothing to calibrate on"):
        calibration_embeddings(stage2_cfg(train_dataset="a", stage1_model="m"))
    with pytest.raises(ConfigError, match="not both"):
        stage2_cfg(train_dataset="a", stage1_model="m", calibration_identities=3, calibration_dataset="c")


def test_service_decides_at_the_chosen_operating_point(tmp_path):
    """TemplateService(far=..., threshold=...): a verification is accepted exactly when the
    (exposed, research-policy) similarity reaches the operating point's threshold; the 1:N
    threshold is never below it."""
    from iom.service.calibration import load_calibration
    from iom.service.pipeline import Pipeline
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore
    from tests.test_iom_service import ADMIN, SECRET, _NoEmbedder, people, research_policy

    from arcface.pretrained import MODELS_DIR
    from iom.defaults import DEFAULT_HASHER
    from iom.hashing.hasher import DeepIoMHasher
    import os

    hasher = DeepIoMHasher.load(os.path.join(MODELS_DIR, DEFAULT_HASHER))
    cal = load_calibration(os.path.join(MODELS_DIR, DEFAULT_HASHER, "calibration.json"), hasher.m, hasher.q)
    x = people()
    for kwargs in ({}, {"threshold": 0.2}, {"threshold": 0.99}, {"far": cal["far"]}):
        store = SQLiteStore(tmp_path / f"t{len(os.listdir(tmp_path))}.db")
        service = TemplateService(Pipeline(_NoEmbedder(), hasher), store, SECRET, policy=research_policy(),
                                  admin_secret=ADMIN, **kwargs)
        expected = kwargs.get("threshold", cal["threshold"])
        assert service.threshold == expected == service.operating_point.threshold
        service.enroll("s0", embeddings=x[0, :2], user_token="token-s0-Xy7")
        d = service.verify("s0", user_token="token-s0-Xy7", embedding=x[0, 2])
        assert d.accepted == (d.similarity >= expected) and d.threshold == expected
        assert service.identification_threshold(1) >= expected
        store.close()
    with pytest.raises(InvalidInputError, match="no operating point at FAR 0.3"):
        TemplateService(Pipeline(_NoEmbedder(), hasher), SQLiteStore(tmp_path / "x.db"), SECRET, far=0.3)


def test_duplicate_identities_are_one_person_under_two_labels():
    """Labels 3 and 7 are one person (one cluster); the others are distinct people, two of
    them close to each other (alike, not the same). Only (3, 7) is flagged, and calibration
    counts none of its cross pairs as impostors."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(60, 32))
    centres[5] = centres[4] + 0.6 * rng.normal(size=32)            # lookalikes: not flagged
    centres[7] = centres[3]                                           # one person, two labels
    labels = np.repeat(np.arange(60), 6)
    x = centres[labels] + 0.5 * rng.normal(size=(360, 32))
    assert duplicate_identities(x, labels) == [(3, 7)]
    class SignCodes(CodesAsGiven):                                    # 16 groups of 2 sign bits
        def encode(self, x, key):
            return (x[:, :16] > 0).astype(np.int64) + 2 * (x[:, 16:] > 0)

    hasher = SignCodes(16, 4)
    codes = hasher.encode(x, None)
    cal = calibrate(hasher, x, labels, [0.1], 0.1, "toy")
    _, impostor = brute_force(codes, labels, [(3, 7)])
    assert cal["impostor_similarities"] == impostor.tolist() and cal["duplicate_identities"] == [[3, 7]]
    assert cal["n_impostor"] == 360 * 354 // 2 - 36
