"""Tests for the deep IoM layers (keras.ops; run under the tensorflow and jax backends)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from arcface.errors import ConfigError
from iom.hashing.layers import (
    PermutationLayer,
    SoftmaxOut,
    build_hashing_network,
    key_permutation,
    parse_hidden_layer_remark,
)
from iom.keys import TemplateKey

DIM, M, Q = 16, 8, 4


def np_out(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def embeddings(n=6, dim=DIM, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- permutation


def test_key_permutation():
    np.testing.assert_array_equal(key_permutation(None, 5), np.arange(5))
    key = TemplateKey.from_seed(1)
    perm = key_permutation(key, 64)
    np.testing.assert_array_equal(np.sort(perm), np.arange(64))
    assert not np.array_equal(perm, np.arange(64))
    np.testing.assert_array_equal(perm, key_permutation(TemplateKey.from_seed(1), 64))
    assert not np.array_equal(perm, key_permutation(TemplateKey.from_seed(2), 64))


def test_permutation_layer_and_config_round_trip():
    perm = key_permutation(TemplateKey.from_seed(3), DIM)
    layer = PermutationLayer(perm, name="perm")
    x = embeddings()
    np.testing.assert_array_equal(np_out(layer(x)), x[:, perm])
    assert layer.trainable_weights == [] and layer.weights == []

    clone = PermutationLayer.from_config(layer.get_config())
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    for other in (clone, restored):
        assert isinstance(other, PermutationLayer) and other.name == "perm"
        np.testing.assert_array_equal(np_out(other(x)), x[:, perm])


@pytest.mark.parametrize("bad", [[0, 0, 1], [1, 2, 3], [[0, 1], [1, 0]], [0, 2]])
def test_permutation_layer_rejects_non_permutations(bad):
    with pytest.raises(ValueError):
        PermutationLayer(bad)


# --------------------------------------------------------------------------- hidden layer remark


@pytest.mark.parametrize("remark, expected", [
    ("0", (0, "prelu")), ("", (0, "prelu")), (None, (0, "prelu")),
    ("2", (2, "prelu")), (2, (2, "prelu")), ("T1", (1, "tanh")), ("T9", (9, "tanh")),
])
def test_parse_hidden_layer_remark(remark, expected):
    assert parse_hidden_layer_remark(remark) == expected


@pytest.mark.parametrize("remark", ["x", "10", "T", "t1", "-1", "1T"])
def test_parse_hidden_layer_remark_rejects(remark):
    with pytest.raises(ConfigError):
        parse_hidden_layer_remark(remark)


# --------------------------------------------------------------------------- SoftmaxOut


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_softmax_out_matches_numpy(temperature):
    z = 3.0 * np.random.default_rng(4).normal(size=(5, M * Q)).astype(np.float32)
    soft, probs = SoftmaxOut(M, Q, temperature)(z)
    soft, probs = np_out(soft), np_out(probs)
    ref_probs = np_softmax(z.astype(np.float64).reshape(5, M, Q) / temperature)
    assert probs.shape == (5, M, Q) and soft.shape == (5, M)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(soft, ref_probs @ np.arange(Q), rtol=1e-5, atol=1e-5)
    assert soft.min() >= 0.0 and soft.max() <= Q - 1


def test_softmax_out_config():
    layer = SoftmaxOut(M, Q, 0.25, name="head")
    clone = SoftmaxOut.from_config(layer.get_config())
    assert (clone.m, clone.q, clone.temperature, clone.name) == (M, Q, 0.25, "head")


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("remark, n_dense, activation", [("0", 1, None), ("1", 2, "prelu"),
                                                          ("T2", 3, "tanh")])
def test_network_output_shapes(remark, n_dense, activation):
    net = build_hashing_network(DIM, M, Q, hidden_layer_remark=remark, hidden_units=12)
    x = embeddings(3)
    out = net(x, training=False)
    assert set(out) == {"logits", "soft_codes", "probs", "features"}
    # features: the input as the projection's first layer sees it (no permutation, no normalisation here)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["features"]), x, atol=1e-6)
    assert tuple(out["logits"].shape) == (3, M * Q)
    assert tuple(out["soft_codes"].shape) == (3, M)
    assert tuple(out["probs"].shape) == (3, M, Q)
    names = [layer.name for layer in net.layers]
    assert sum(isinstance(layer, keras.layers.Dense) for layer in net.layers) == n_dense
    if activation:
        assert sum(name.endswith(f"_{activation}") for name in names) == n_dense - 1
        assert net.get_layer("hidden1_dense").kernel.shape == (DIM, 12)


def test_projection_initialised_standard_normal():
    net = build_hashing_network(64, 64, 8, seed=3)
    kernel = np_out(net.get_layer("IoMProjection").kernel)
    assert kernel.shape == (64, 512)
    assert abs(kernel.mean()) < 0.03 and abs(kernel.std() - 1.0) < 0.03


def test_network_applies_the_permutation_first():
    perm = key_permutation(TemplateKey.from_seed(5), DIM)
    x = embeddings()
    keyed = build_hashing_network(DIM, M, Q, permutation=perm, seed=1)
    plain = build_hashing_network(DIM, M, Q, seed=1)
    np.testing.assert_allclose(np_out(keyed(x)["logits"]), np_out(plain(x[:, perm])["logits"]),
                               rtol=1e-5, atol=1e-5)


def test_soft_codes_round_to_argmax_at_low_temperature():
    net = build_hashing_network(DIM, M, Q, temperature=1e-4, seed=2)
    out = net(embeddings(32), training=False)
    logits = np_out(out["logits"]).reshape(32, M, Q)
    soft = np_out(out["soft_codes"])
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-2  # no near-ties
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.rint(soft)[clear], logits.argmax(-1)[clear])
    np.testing.assert_allclose(soft[clear], logits.argmax(-1)[clear], atol=1e-3)


def test_weights_save_load_round_trip(tmp_path):
    path = tmp_path / "iom.weights.h5"
    x = embeddings(5)
    net = build_hashing_network(DIM, M, Q, hidden_layer_remark="1", seed=0)
    # move BatchNorm statistics and PReLU slopes off their initial values
    for layer in net.layers:
        for weight in layer.weights:
            weight.assign(np.random.default_rng(len(weight.path)).normal(
                size=weight.shape).astype("float32") * 0.1 + np_out(weight))
    net.save_weights(path)
    other = build_hashing_network(DIM, M, Q, hidden_layer_remark="1", seed=9)
    assert not np.allclose(np_out(other(x)["logits"]), np_out(net(x)["logits"]))
    other.load_weights(path)
    for name in ("logits", "soft_codes", "probs"):
        np.testing.assert_array_equal(np_out(other(x, training=False)[name]),
                                      np_out(net(x, training=False)[name]))


# --------------------------------------------------------------------------- input normalisation


def _np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("mode", ["none", "l2", "center", "whiten"])
def test_input_normalization_matches_numpy(mode):
    from iom.hashing.layers import InputNormalization, fit_input_normalization

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(200, DIM)) * np.linspace(0.1, 3, DIM) + 2.0).astype(np.float32)
    mean, transform = fit_input_normalization(x, mode)
    layer = InputNormalization(DIM)
    layer.set_statistics(mean, transform)
    want = _np_unit((_np_unit(x.astype(np.float64)) - mean) @ transform)
    np.testing.assert_allclose(np_out(layer(x)), want, atol=2e-5)
    # the scale of the extractor's features does not matter
    np.testing.assert_allclose(np_out(layer(37.5 * x)), np_out(layer(x)), atol=2e-5)


def test_input_normalization_statistics():
    from iom.hashing.layers import fit_input_normalization

    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, DIM)) * np.linspace(0.05, 2, DIM) + 1.0
    unit = _np_unit(x)
    mean, transform = fit_input_normalization(x, "center")
    np.testing.assert_allclose(mean, unit.mean(0), atol=1e-6)
    np.testing.assert_array_equal(transform, np.eye(DIM, dtype=np.float32))
    mean, transform = fit_input_normalization(x, "whiten", shrinkage=0.0)
    z = (unit - mean) @ transform.astype(np.float64)
    cov = np.cov(z.T)
    # whitened: isotropic (the transform's overall scale is normalised away)
    np.testing.assert_allclose(cov / cov[0, 0], np.eye(DIM), atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(transform, 2), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="input_norm 'pca'"):
        fit_input_normalization(x, "pca")


def test_network_with_input_normalization_saves_its_statistics(tmp_path):
    from iom.hashing.layers import fit_input_normalization

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(64, DIM)) + 3.0).astype(np.float32)
    net = build_hashing_network(DIM, M, Q, input_norm="center", seed=1)
    net.get_layer("input_norm").set_statistics(*fit_input_normalization(x, "center"))
    path = str(tmp_path / "w.weights.h5")
    net.save_weights(path)
    other = build_hashing_network(DIM, M, Q, input_norm="center", seed=2)
    other.load_weights(path)
    np.testing.assert_allclose(np_out(other(x)["logits"]), np_out(net(x)["logits"]), atol=1e-5)
    with pytest.raises(ConfigError, match="input_norm"):
        build_hashing_network(DIM, M, Q, input_norm="bogus")


# --------------------------------------------------------------------------- projection and input statistics
def test_group_orthogonal_projection():
    from iom.hashing.layers import group_orthogonal

    dim, m, q = 24, 7, 8                                     # 3 groups a rotation: rotations 0, 1 and a third
    w = group_orthogonal(dim, m, q, seed=5).astype(np.float64)
    assert w.shape == (dim, m * q)
    np.testing.assert_array_equal(w, group_orthogonal(dim, m, q, seed=5))
    assert not np.allclose(w, group_orthogonal(dim, m, q, seed=6))
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), np.sqrt(dim), rtol=1e-5)     # one length
    gram = w.T @ w / dim
    for start in range(0, m, 3):                               # groups of one rotation: all orthonormal
        cols = slice(start * q, min(start + 3, m) * q)
        np.testing.assert_allclose(gram[cols, cols], np.eye(gram[cols, cols].shape[0]), atol=1e-5)
    assert abs(gram[0, 3 * q]) > 1e-6                          # different rotations are not
    small = group_orthogonal(4, 3, 8, seed=1)                  # dim < q: unit-length random directions
    np.testing.assert_allclose(np.linalg.norm(small, axis=0), 2.0, rtol=1e-5)


def test_orthogonal_init_in_the_network():
    from iom.hashing.layers import group_orthogonal

    net = build_hashing_network(DIM, M, Q, seed=4, projection_init="orthogonal")
    kernel = ops.convert_to_numpy(net.get_layer("IoMProjection").kernel)
    np.testing.assert_allclose(kernel, group_orthogonal(DIM, M, Q, 4), rtol=1e-6)
    with pytest.raises(ConfigError, match="projection_init"):
        build_hashing_network(DIM, M, Q, projection_init="sparse")


def test_auto_input_norm_centres_only_a_large_common_direction():
    from iom.hashing.layers import AUTO_CENTRE_SHIFT, auto_centres, fit_input_normalization

    rng = np.random.default_rng(0)
    spread = rng.normal(size=(2000, 32))
    centred, stats = auto_centres(spread)
    unit = spread / np.linalg.norm(spread, axis=1, keepdims=True)
    assert stats["common_cosine"] == pytest.approx(float(unit.mean(0) @ unit.mean(0)))
    assert not centred and stats["common_cosine"] < AUTO_CENTRE_SHIFT * stats["centred_cosine_std"]
    shifted = spread + 3.0 * np.ones(32)                       # a ReLU-like common offset
    assert auto_centres(shifted)[0]
    mean, transform = fit_input_normalization(shifted, "auto")
    unit = shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, unit.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(transform, np.eye(32, dtype=np.float32))
    np.testing.assert_array_equal(fit_input_normalization(spread, "auto")[0], np.zeros(32, np.float32))
