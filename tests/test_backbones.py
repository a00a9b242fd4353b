"""Tests for arcface.backbones (run under KERAS_BACKEND=tensorflow and =jax)."""

from __future__ import annotations

import pathlib
import re
import warnings

import keras
import numpy as np
import pytest

from arcface.backbones import (
    build_backbone,
    count_reference_parameters,
    get_backbone_builder,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from arcface.backbones.common import (
    FrozenGammaBatchNormalization,
    PixelNormalization,
    embedding_output_block,
    image_input,
)
from arcface.errors import ConfigError

ALL_BACKBONES = ["IR_18", "IR_34", "IR_50", "IR_100", "MobileFaceNet", "MobileFaceNet_TF", "MobileNetV2",
                 "ResNet50"]
KERAS_APPS = ("MobileNetV2", "ResNet50")

# Models reused by several tests (the 512-d ones: shapes, parameter counts,
# structure), kept in memory for this module only.  Building is what costs
# time, above all under JAX, which compiles every weight initialiser per shape.
_CACHE: dict[tuple, keras.Model] = {}


def _model(name: str, embd: int, **kwargs) -> keras.Model:
    key = (name, embd, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = build_backbone(name, embd_shape=embd, **kwargs)
    return _CACHE[key]


@pytest.fixture(scope="module", autouse=True)
def _clear_cache():
    yield
    _CACHE.clear()
    keras.backend.clear_session()


def _images(batch: int = 2, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- registry


def test_all_expected_backbones_registered():
    assert set(ALL_BACKBONES) <= set(list_backbones())
    aliases = {
        "iresnet18": "IR_18", "r18": "IR_18",
        "iresnet34": "IR_34", "r34": "IR_34",
        "iresnet50": "IR_50", "r50": "IR_50",
        "iresnet100": "IR_100", "r100": "IR_100", "Insight_ResNet100": "IR_100",
        "mbf": "MobileFaceNet", "mobilefacenet": "MobileFaceNet",
        "mbf_tf": "MobileFaceNet_TF", "mobilefacenet_tf": "MobileFaceNet_TF",
    }
    for alias, canonical in aliases.items():
        assert alias in list_backbones(include_aliases=True)
        assert get_backbone_builder(alias) is get_backbone_builder(canonical)
    # lookups fall back to case-insensitive matching
    assert get_backbone_builder("ir_50") is get_backbone_builder("IR_50")
    assert get_backbone_builder("MBF") is get_backbone_builder("MobileFaceNet")


def test_unknown_name_raises_config_error_with_close_match():
    with pytest.raises(ConfigError) as info:
        build_backbone("IR_05")
    msg = str(info.value)
    assert "'IR_50'" in msg and "did you mean" in msg
    for name in ALL_BACKBONES:  # lists the known names
        assert name in msg
    with pytest.raises(ConfigError, match="MobileFaceNet"):
        build_backbone("MobileFaceNt")
    with pytest.raises(ConfigError, match="Known backbones"):
        build_backbone("completely-unrelated")
    with pytest.raises(ConfigError):
        build_backbone(50)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="embd_shape"):
        build_backbone("IR_18", embd_shape=0)
    with pytest.raises(ConfigError, match="dropout"):
        build_backbone("IR_18", dropout=1.5)
    with pytest.raises(ConfigError, match="input_size"):
        build_backbone("IR_18", input_size="112")
    with pytest.raises(ConfigError, match="invalid arguments"):
        build_backbone("mbf", not_an_option=3)
    with pytest.raises(ConfigError, match="blocks"):
        build_backbone("mbf", blocks=(1, 2, 3))
    with pytest.raises(ConfigError, match="scale"):
        build_backbone("mbf", scale=0)


def test_registry_round_trip():
    name = "TestTinyBackbone"

    def tiny(embd_shape=512, input_size=112, dropout=0.0, name=None, width=4):
        inputs = image_input(input_size)
        x = PixelNormalization()(inputs)
        x = keras.layers.Conv2D(width, 3, strides=4, name="tiny_conv")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(embd_shape, name="embedding_fc")(x)
        return keras.Model(inputs, outputs, name=name or "tiny")

    assert name not in list_backbones()
    register_backbone(name, "test_tiny_alias")(tiny)
    try:
        assert name in list_backbones()
        assert "test_tiny_alias" in list_backbones(include_aliases=True)
        with pytest.raises(ConfigError, match="already registered"):
            register_backbone("test_tiny_other", "TEST_TINY_ALIAS")(tiny)
        with pytest.raises(ConfigError, match="already registered"):
            register_backbone("ir_18")(tiny)
        model = build_backbone("test_tiny_alias", embd_shape=16, input_size=32, width=2)
        assert model.name == "tiny"
        out = keras.ops.convert_to_numpy(model(_images(2, 32).astype("float32")))
        assert out.shape == (2, 16)
    finally:
        unregister_backbone(name)
    assert name not in list_backbones()
    assert "test_tiny_alias" not in list_backbones(include_aliases=True)
    assert "test_tiny_other" not in list_backbones(include_aliases=True)
    with pytest.raises(ConfigError):
        build_backbone(name)
    with pytest.raises(ConfigError):
        unregister_backbone(name)


# --------------------------------------------------------------------------- pixels


def test_pixel_normalization_with_another_convention():
    layer = PixelNormalization(mean=127.5, std=128.0)
    out = keras.ops.convert_to_numpy(layer(np.array([[0.0, 127.5, 255.0]], dtype="float32")))
    np.testing.assert_allclose(out, [[-127.5 / 128, 0.0, 127.5 / 128]], atol=1e-7)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert (clone.mean, clone.std) == (127.5, 128.0)
    with pytest.raises(ValueError, match="std"):
        PixelNormalization(std=0)


def test_pixel_normalization_maps_0_255_to_minus1_1():
    layer = PixelNormalization()
    out = keras.ops.convert_to_numpy(layer(np.array([[0.0, 127.5, 255.0]], dtype="float32")))
    np.testing.assert_allclose(out, [[-1.0, 0.0, 1.0]], atol=1e-7)
    out8 = keras.ops.convert_to_numpy(layer(np.array([[0, 255]], dtype="uint8")))
    assert out8.dtype == np.float32
    np.testing.assert_allclose(out8, [[-1.0, 1.0]], atol=1e-7)
    # serialisable under the "iomface" package
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "iomface>PixelNormalization"
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, PixelNormalization)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("embd", [512, 128])
@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_output_shape_and_uint8_float_agree(name, embd):
    if embd == 512:
        model = _model(name, embd)  # reused by the parameter-count/structure tests
    else:
        model = build_backbone(name, embd_shape=embd)
    assert model.input_shape == (None, 112, 112, 3)
    assert model.output_shape == (None, embd)
    images = _images(2)
    if keras.backend.backend() == "jax" and name in KERAS_APPS:
        # Eager JAX compiles every op of these many-shaped networks one by one
        # (~6 s for MobileNetV2); a single jitted predict is faster.
        def infer(x):
            return model.predict(x, batch_size=2, verbose=0)
    else:
        def infer(x):
            return keras.ops.convert_to_numpy(model(x, training=False))
    out_u8 = infer(images)
    out_f32 = infer(images.astype("float32"))
    assert out_u8.shape == out_f32.shape == (2, embd)
    assert np.issubdtype(out_f32.dtype, np.floating)
    # Same computation after PixelNormalization.  (A freshly initialised deep
    # IR-ResNet is ill-conditioned in inference mode -- BN moving stats are
    # still 0/1 -- so its outputs may be huge or even inf/nan, hence equal_nan.)
    np.testing.assert_allclose(out_u8, out_f32, rtol=1e-5, atol=1e-6, equal_nan=True)
    if name in KERAS_APPS:
        return  # keras.applications internals: not ours to check further
    # With batch statistics (training mode) our networks are well-conditioned:
    # finite outputs that differ between the two images.
    out_train = keras.ops.convert_to_numpy(model(images, training=True))
    assert out_train.shape == (2, embd)
    assert np.all(np.isfinite(out_train))
    assert not np.allclose(out_train[0], out_train[1])


# --------------------------------------------------------------------------- params


def _ir_hand_count(blocks, embd=512, feat=7):
    """PyTorch-way parameter count of arcface_torch's iresnet, by hand."""
    n = 3 * 64 * 9 + 2 * 64 + 64  # stem conv, bn1 (weight+bias), prelu
    cin = 64
    for c, b in zip((64, 128, 256, 512), blocks):
        for j in range(b):
            n += 2 * cin  # bn1
            n += cin * c * 9 + 2 * c + c  # conv1, bn2, prelu
            n += c * c * 9 + 2 * c  # conv2, bn3
            if j == 0:
                n += cin * c + 2 * c  # downsample conv1x1 + bn
            cin = c
    n += 2 * 512  # bn2
    n += 512 * feat * feat * embd + embd  # fc weight + bias
    n += 2 * embd  # features BatchNorm1d weight (frozen) + bias
    return n


@pytest.mark.parametrize(
    "name, blocks, expected_m, expected_exact",
    [
        ("IR_18", (2, 2, 2, 2), 24.03, 24_025_600),
        ("IR_34", (3, 4, 6, 3), 34.14, 34_139_328),
        ("IR_50", (3, 4, 14, 3), 43.59, 43_590_848),
        ("IR_100", (3, 13, 30, 3), 65.16, 65_156_160),
    ],
)
def test_iresnet_reference_parameter_counts(name, blocks, expected_m, expected_exact):
    model = _model(name, 512)
    count = count_reference_parameters(model)
    assert round(count / 1e6, 2) == expected_m
    assert count == expected_exact == _ir_hand_count(blocks)
    # Keras' own count also includes the BN moving mean/variance buffers
    moving = sum(
        2 * layer.moving_mean.shape[0]
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert model.count_params() == count + moving


def _mbf_hand_count(scale=2, blocks=(1, 4, 6, 2), embd=512):
    """PyTorch-way parameter count of arcface_torch's MobileFaceNet, by hand.

    ConvBlock(i, o, k, g) = conv i/g*o*k*k + BN 2*o + PReLU o
    LinearBlock(i, o, k, g) = conv i/g*o*k*k + BN 2*o
    DepthWise(i, o, g) = ConvBlock(i, g, 1) + ConvBlock(g, g, 3, groups g)
                         + LinearBlock(g, o, 1)
    For scale=2, blocks=(1, 4, 6, 2), embd=512 (DepthWise = expand + dw + project):
      stem ConvBlock(3, 128, 3)             =   3,456 + 384                =     3,840
      stage1 ConvBlock(128, 128, 3, g=64)   =   2,304 + 384                =     2,688
      DepthWise(128, 128, 128)              =  16,768 + 1,536 + 16,640     =    34,944
        stage2_down + 4 residual units      =  5 * 34,944                  =   174,720
      DepthWise(128, 256, 256) stage3_down  =  33,536 + 3,072 + 66,048     =   102,656
      DepthWise(256, 256, 256)              =  66,304 + 3,072 + 66,048     =   135,424
        6 residual units (stage3)           =  6 * 135,424                 =   812,544
      DepthWise(256, 256, 512) stage4_down  = 132,608 + 6,144 + 131,584    =   270,336
        2 residual units (stage4)           =  2 * 135,424                 =   270,848
      conv_sep ConvBlock(256, 512, 1)       = 131,072 + 1,536              =   132,608
      GDC: dw 7x7 25,088 + BN 1,024 + Linear 262,144 + BN1d 1,024          =   289,280
      total = 3,840 + 2,688 + 174,720 + 102,656 + 812,544 + 270,336
              + 270,848 + 132,608 + 289,280 = 2,059,520  (arcface_torch: ~2.0 M)
    """

    def conv_block(i, o, k, g=1):
        return i // g * o * k * k + 3 * o

    def linear_block(i, o, k, g=1):
        return i // g * o * k * k + 2 * o

    def depthwise(i, o, g):
        return conv_block(i, g, 1) + conv_block(g, g, 3, g) + linear_block(g, o, 1)

    c1, c2 = 64 * scale, 128 * scale
    n = conv_block(3, c1, 3)
    n += conv_block(c1, c1, 3, 64) if blocks[0] == 1 else blocks[0] * depthwise(c1, c1, 128)
    n += depthwise(c1, c1, 128) + blocks[1] * depthwise(c1, c1, 128)
    n += depthwise(c1, c2, 256) + blocks[2] * depthwise(c2, c2, 256)
    n += depthwise(c2, c2, 512) + blocks[3] * depthwise(c2, c2, 256)
    n += conv_block(c2, 512, 1)
    n += linear_block(512, 512, 7, 512) + 512 * embd + 2 * embd
    return n


def test_mobilefacenet_reference_parameter_count():
    hand = _mbf_hand_count()
    assert hand == 2_059_520
    model = _model("MobileFaceNet", 512)
    count = count_reference_parameters(model)
    assert abs(count - hand) / hand < 0.02
    assert count == hand
    assert 1.9e6 < count < 2.2e6  # arcface_torch's mbf: "about 2.0 M"
    # other widths / depths follow the same formula
    small = _model("MobileFaceNet", 64, scale=1, blocks=(2, 2, 3, 1))
    assert count_reference_parameters(small) == _mbf_hand_count(1, (2, 2, 3, 1), 64)


def _mbf_tf_hand_count(embd=192, stem=64, bottlenecks=((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1),
                                                       (4, 128, 1, 2), (2, 128, 2, 1)), conv=512, size=112):
    """The paper's MobileFaceNet, counted by hand: conv k*k*in*out (depthwise k*k*c), BN 2c
    (gamma, beta), PReLU c."""
    def unit(cin, cout, k, act=True, dw=False):
        return (k * k * cin if dw else k * k * cin * cout) + 2 * cout + (cout if act else 0)

    n = unit(3, stem, 3) + unit(stem, stem, 3, dw=True) + unit(stem, stem, 1, act=False)
    cin, side = stem, size // 2
    for t, c, reps, s in bottlenecks:
        for j in range(reps):
            n += unit(cin, t * cin, 1) + unit(t * cin, t * cin, 3, dw=True) + unit(t * cin, c, 1, act=False)
            cin = c
        side = -(-side // s)
    n += unit(cin, conv, 1)
    n += unit(conv, conv, side, act=False, dw=True)   # global depthwise conv over the final map
    n += unit(conv, conv, 1, act=False) + unit(conv, embd, 1, act=False)
    return n


def test_mobilefacenet_tf_parameter_count_and_padding():
    model = _model("MobileFaceNet_TF", 192)
    assert count_reference_parameters(model) == _mbf_tf_hand_count() == 1_303_424
    narrow = dict(stem_channels=8, conv_channels=32,
                  bottlenecks=((2, 8, 2, 2), (2, 16, 1, 2), (2, 16, 2, 1), (2, 16, 1, 2), (2, 16, 2, 1)))
    small = _model("MobileFaceNet_TF", 16, **{k: (tuple(v) if isinstance(v, tuple) else v)
                                                for k, v in narrow.items()})
    assert count_reference_parameters(small) == _mbf_tf_hand_count(16, 8, narrow["bottlenecks"], 32)
    # TensorFlow "same" padding: stride 2 on 112 pixels -> 56, the GDC kernel covers 7x7
    assert tuple(model.get_layer("stem_conv").output.shape[1:3]) == (56, 56)
    assert model.get_layer("gdc_conv").kernel_size == (7, 7)
    assert type(model.get_layer("pixel_norm")).__name__ == "PixelNormalization"
    assert (model.get_layer("pixel_norm").mean, model.get_layer("pixel_norm").std) == (127.5, 128.0)
    with pytest.raises(ConfigError, match="bottlenecks"):
        build_backbone("MobileFaceNet_TF", bottlenecks=((2, 64, 5),))
    with pytest.raises(ConfigError, match="no shortcut"):
        build_backbone("MobileFaceNet_TF", bottlenecks=((2, 64, 1, 1),), stem_channels=32)


# --------------------------------------------------------------------------- structure


def test_iresnet_layer_conventions():
    model = _model("IR_18", 512)
    names = {layer.name for layer in model.layers}
    for expected in [
        "pixel_norm", "stem_conv", "stem_bn", "stem_prelu", "stage1_block1_bn1",
        "stage1_block1_conv1", "stage1_block1_conv2", "stage1_block1_downsample_conv",
        "stage1_block1_downsample_bn", "stage2_block2_prelu", "stage4_block2_bn3",
        "output_bn", "embedding_fc", "embedding_bn",
    ]:
        assert expected in names, expected
    assert "stage1_block2_downsample_conv" not in names
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert layer.padding == "valid" and not layer.use_bias
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == pytest.approx(1e-5)
            assert layer.momentum == pytest.approx(0.9)
        if isinstance(layer, keras.layers.PReLU):
            assert tuple(layer.alpha.shape) == (1, 1, layer.alpha.shape[-1])
    # stride 2 sits on the second conv of the first unit of each stage
    assert model.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert model.get_layer("output_flatten").output.shape[-1] == 7 * 7 * 512
    assert model.get_layer("embedding_fc").use_bias


def test_iresnet_final_bn_gamma_frozen():
    model = _model("IR_18", 512)
    bn = model.get_layer("embedding_bn")
    trainable = {id(w) for w in model.trainable_weights}
    assert id(bn.gamma) not in trainable
    assert id(bn.beta) in trainable
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.gamma), 1.0)
    model.trainable = False
    model.trainable = True
    assert id(bn.gamma) not in {id(w) for w in model.trainable_weights}
    assert id(bn.beta) in {id(w) for w in model.trainable_weights}


def test_frozen_gamma_head_survives_save_and_load(tmp_path):
    inputs = image_input(8)
    x = PixelNormalization(name="pixel_norm")(inputs)
    outputs = embedding_output_block(x, 4, freeze_final_gamma=True)
    model = keras.Model(inputs, outputs)
    images = _images(2, 8)
    expected = keras.ops.convert_to_numpy(model(images))
    path = tmp_path / "head.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    bn = clone.get_layer("embedding_bn")
    assert isinstance(bn, FrozenGammaBatchNormalization)
    assert not bn.gamma.trainable and bn.beta.trainable
    assert isinstance(clone.get_layer("pixel_norm"), PixelNormalization)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(images)), expected, rtol=1e-5)


def test_mobilefacenet_layer_conventions():
    model = _model("MobileFaceNet", 512)
    assert isinstance(model.get_layer("stage2_down_dw_conv"), keras.layers.DepthwiseConv2D)
    stage1 = model.get_layer("stage1_conv")  # 128 channels in 64 groups (arcface_torch)
    assert stage1.groups == 64 and tuple(stage1.kernel.shape) == (3, 3, 2, 128)
    assert tuple(model.get_layer("gdc_conv").kernel.shape) == (7, 7, 512, 1)
    assert not model.get_layer("embedding_fc").use_bias
    assert model.get_layer("stage3_block6_add") is not None
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            assert layer.padding == "valid" and not layer.use_bias
    # scale=1: the stage-1 conv is a true depthwise conv
    small = _model("MobileFaceNet", 64, scale=1)
    assert isinstance(small.get_layer("stage1_conv"), keras.layers.DepthwiseConv2D)
    # blocks[0] > 1: a Residual stage instead of the single conv
    residual = _model("MobileFaceNet", 64, scale=1, blocks=(2, 2, 3, 1))
    assert residual.get_layer("stage1_block2_add") is not None
    assert residual.get_layer("stage1_block1_expand_conv").filters == 128
    assert residual.output_shape == (None, 64)


def test_mobilenet_v2_builds_without_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_backbone("MobileNetV2", embd_shape=128, input_size=112)
    assert not [w for w in caught if "input_shape" in str(w.message)]


def test_sources_are_backend_agnostic():
    src = pathlib.Path(__file__).resolve().parents[1] / "arcface" / "backbones"
    pattern = re.compile(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", re.M)
    for path in src.glob("*.py"):
        assert not pattern.search(path.read_text()), path.name
