"""Margin heads and losses against NumPy references of their published formulas."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from arcface.errors import ConfigError
from arcface.heads import CosineHead, MarginSoftmaxLoss, margin_target_logit
from tests.backend_utils import value_and_grad

HEADS = [
    ("NormHead", 0.0, None),
    ("SphereHead", 4, None),
    ("CosHead", 0.35, None),
    ("ArcHead", 0.5, None),
    ("CombinedHead", 0.0, (1.0, 0.3, 0.2)),
    ("CombinedHead", 0.0, (0.9, 0.4, 0.15)),
]


def ref_target(cos, head, m, ms):
    """NumPy reference: target logit as a function of θ = arccos(cos), from the papers."""
    theta = np.arccos(np.clip(cos, -1, 1)).astype(np.float64)
    if head == "NormHead":
        return np.cos(theta)
    if head == "CosHead":  # CosFace: cos θ − m
        return np.cos(theta) - m
    if head == "ArcHead":  # ArcFace: cos(θ+m), InsightFace fall-back past π
        return np.where(theta + m <= math.pi, np.cos(theta + m), np.cos(theta) - m * math.sin(m))
    if head == "SphereHead":  # A-Softmax ψ(θ) = (−1)^k cos(mθ) − 2k
        k = np.floor(m * theta / math.pi)
        return (-1.0) ** k * np.cos(m * theta) - 2 * k
    if head == "CombinedHead":
        m1, m2, m3 = ms
        t = m1 * theta + m2
        return np.where(t <= math.pi, np.cos(t) - m3, np.cos(theta) - m3 - m2 * math.sin(m2))
    raise AssertionError(head)


def ref_loss(cos, labels, head, m, ms, s):
    cos = cos.astype(np.float64)
    logits = cos.copy()
    rows = np.arange(len(labels))
    logits[rows, labels] = ref_target(cos[rows, labels], head, m, ms)
    logits *= s
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logp[rows, labels]


@pytest.mark.parametrize("head,m,ms", HEADS)
def test_target_logit_matches_formula(head, m, ms):
    theta = np.linspace(0.01, math.pi - 0.01, 200)
    cos = np.cos(theta).astype(np.float32)
    got = ops.convert_to_numpy(margin_target_logit(cos, head, m, ms))
    np.testing.assert_allclose(got, ref_target(cos, head, m, ms), atol=2e-4)


def test_hand_computed_values():
    # θ = 60°: cos θ = 0.5.  ArcFace m = 0.5 rad: cos(π/3 + 0.5) = 0.5·cos .5 − (√3/2)·sin .5
    arc = 0.5 * math.cos(0.5) - math.sqrt(3) / 2 * math.sin(0.5)
    got = ops.convert_to_numpy(margin_target_logit(np.array([0.5], "float32"), "ArcHead", 0.5))
    assert got[0] == pytest.approx(arc, abs=1e-5)
    # SphereFace m=4 at θ=60°: mθ = 240°, k = 1, ψ = −cos 240° − 2 = 0.5 − 2 = −1.5
    got = ops.convert_to_numpy(margin_target_logit(np.array([0.5], "float32"), "SphereHead", 4))
    assert got[0] == pytest.approx(-1.5, abs=1e-4)
    # CosFace: 0.5 − 0.35
    got = ops.convert_to_numpy(margin_target_logit(np.array([0.5], "float32"), "CosHead", 0.35))
    assert got[0] == pytest.approx(0.15, abs=1e-6)
    # ArcFace fall-back: θ = 170°, m = 0.5: θ+m > π → cos θ − m sin m
    c = math.cos(math.radians(170))
    got = ops.convert_to_numpy(margin_target_logit(np.array([c], "float32"), "ArcHead", 0.5))
    assert got[0] == pytest.approx(c - 0.5 * math.sin(0.5), abs=1e-5)


def test_margins_are_monotone_decreasing_in_theta():
    theta = np.linspace(0.0, math.pi, 2001)
    cos = np.cos(theta).astype(np.float32)
    for head, m, ms in HEADS:
        if head == "CombinedHead" and ms[0] != 1.0:
            continue  # m1 ≠ 1 has a jump at the fall-back (as in InsightFace)
        got = ops.convert_to_numpy(margin_target_logit(cos, head, m, ms))
        assert np.all(np.diff(got) <= 1e-5), head


@pytest.mark.parametrize("head,m,ms", HEADS)
def test_loss_matches_numpy_reference(head, m, ms):
    rng = np.random.default_rng(0)
    n, c, s = 16, 11, 30.0
    cos = rng.uniform(-0.95, 0.95, size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    loss = MarginSoftmaxLoss(head, scale=s, margin=m, margins=ms, reduction=None)
    got = ops.convert_to_numpy(loss(labels, cos))
    np.testing.assert_allclose(got, ref_loss(cos, labels, head, m, ms, s), rtol=1e-4, atol=1e-3)
    mean_loss = MarginSoftmaxLoss(head, scale=s, margin=m, margins=ms)
    assert float(mean_loss(labels, cos)) == pytest.approx(
        ref_loss(cos, labels, head, m, ms, s).mean(), rel=1e-4)


@pytest.mark.parametrize("head,m,ms", HEADS)
@pytest.mark.parametrize("edge", ["zero", "pi"])
def test_gradients_finite_near_zero_and_pi(head, m, ms, edge):
    # the target cosine at θ≈0 (cos≈1) or θ≈π (cos≈−1), including exactly ±1
    target = [1.0, 1.0 - 1e-7, 1.0 - 1e-4] if edge == "zero" else [-1.0, -1.0 + 1e-7, -1.0 + 1e-4]
    cos = np.full((3, 4), 0.1, np.float32)
    cos[:, 0] = target
    labels = np.zeros(3, np.int32)
    loss = MarginSoftmaxLoss(head, scale=16.0, margin=m, margins=ms)
    value, grad = value_and_grad(lambda x: loss(labels, x), cos)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad)), grad


def test_head_under_mixed_precision_is_float32():
    prior = keras.config.dtype_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        head = CosineHead(7)
        x = keras.ops.cast(np.random.default_rng(1).normal(size=(4, 8)), "bfloat16")
        out = head(x)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert head.kernel.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(prior)


def test_cosine_head_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    head = CosineHead(3)
    got = ops.convert_to_numpy(head(x))
    w = ops.convert_to_numpy(head.kernel)
    ref = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.all(np.abs(got) <= 1 + 1e-6)


def test_unknown_head_rejected():
    with pytest.raises(ConfigError, match="FooHead"):
        MarginSoftmaxLoss("FooHead")
