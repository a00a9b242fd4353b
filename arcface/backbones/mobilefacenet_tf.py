"""MobileFaceNet as in its paper (Chen et al., 2018), in the TF-slim form of sirius-ai/MobileFaceNet_TF.

This is the topology of the publicly released MobileFaceNet models of TensorFlow lineage
(the ``MobileFaceNet.tflite`` that ships in mobile SDKs, 192-d output), so that
:mod:`arcface.tflite_import` can load them onto real Keras layers; it also trains like any
other backbone here. It differs from arcface_torch's ``mbf`` (:mod:`.mobilefacenet`):
TF ``"same"`` padding (asymmetric at stride 2), a depthwise + linear 1x1 second block,
inverted-residual bottlenecks ``(t, c, n, s)`` of the paper, a 1x1 linear "neck" after the
global depthwise conv, and a linear 1x1 embedding conv instead of a Dense layer.

Blocks (convolutions without bias; each is followed by BatchNormalization)::

    stem        conv 3x3 stride 2 -> stem_channels, PReLU               Conv2d_0
    stem_dw     depthwise 3x3, PReLU                                     SeparableConv2d
    stem_project conv 1x1 -> stem_channels, linear                       Conv
    stage{i}    for each (t, c, n, s) of ``bottlenecks``: n units        Conv2d_{i+1}_InvResBlock_{j}
                expand 1x1 -> t * c_in, PReLU; depthwise 3x3 (stride s on the first unit), PReLU;
                project 1x1 -> c, linear; + identity shortcut when the unit has stride 1
    conv_sep    conv 1x1 -> conv_channels, PReLU                         Conv2d_7
    gdc         depthwise k x k over the whole map ("valid"), linear     Logits/SeparableConv2d
    neck        conv 1x1 -> conv_channels, linear                        Logits/Conv
    embedding   conv 1x1 -> embd_shape, linear, then flattened           Logits/LinearConv1x1

Layer names inside unit ``j`` (from 1) of stage ``i`` (from 1): ``stage{i}_block{j}_expand_conv``
/ ``_expand_bn`` / ``_expand_prelu``, ``_dw_conv`` / ``_dw_bn`` / ``_dw_prelu``, ``_project_conv`` /
``_project_bn`` and ``_add``. Input: RGB 0..255, normalised inside as ``(x - 127.5) / 128``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from arcface.errors import ConfigError

from .common import BN_EPSILON, BN_MOMENTUM, PixelNormalization, image_input, prelu
from .registry import register_backbone

__all__ = ["build_mobilefacenet_tf", "PAPER_BOTTLENECKS"]

#: (expansion t, output channels c, units n, first stride s), Table 1 of the MobileFaceNet paper
PAPER_BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))

PIXEL_MEAN, PIXEL_STD = 127.5, 128.0


def _init(fan_out: int) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=(2.0 / fan_out) ** 0.5)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _unit(x, filters: int, kernel: int, stride: int, prefix: str, *, depthwise: bool = False,
          activation: bool = True, padding: str = "same"):
    """conv (or depthwise conv) -> BN [-> PReLU]."""
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                   depthwise_initializer=_init(kernel * kernel),
                                   name=f"{prefix}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                          kernel_initializer=_init(filters * kernel * kernel),
                          name=f"{prefix}_conv")(x)
    x = _bn(f"{prefix}_bn")(x)
    return prelu(f"{prefix}_prelu")(x) if activation else x


def _check_bottlenecks(bottlenecks) -> tuple[tuple[int, int, int, int], ...]:
    try:
        rows = tuple(tuple(int(v) for v in row) for row in bottlenecks)
    except (TypeError, ValueError):
        rows = ()
    if not rows or any(len(r) != 4 or min(r) < 1 or r[3] > 2 for r in rows):
        raise ConfigError("MobileFaceNet_TF bottlenecks must be a list of (t, c, n, s) with "
                          f"positive integers and s in (1, 2), got {bottlenecks!r}")
    return rows


def build_mobilefacenet_tf(
    embd_shape: int = 192,
    input_size: int = 112,
    dropout: float = 0.0,
    name: str | None = None,
    stem_channels: int = 64,
    bottlenecks: Sequence[Sequence[int]] = PAPER_BOTTLENECKS,
    conv_channels: int = 512,
) -> keras.Model:
    """Build the paper's MobileFaceNet in its TF-slim form (see the module docstring).

    ``dropout`` (none in the released models) is applied after the global depthwise conv.
    A stride-1 unit whose input and output widths differ has no identity shortcut in the
    reference and is refused here.
    """
    rows = _check_bottlenecks(bottlenecks)
    for key, value in (("stem_channels", stem_channels), ("conv_channels", conv_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"MobileFaceNet_TF {key} must be a positive integer, got {value!r}")
    total_stride = 2 * 2 ** sum(1 for r in rows if r[3] == 2)
    if input_size < total_stride:
        raise ConfigError(f"MobileFaceNet_TF with these bottlenecks needs input_size >= "
                          f"{total_stride}, got {input_size}")

    inputs = image_input(input_size)
    x = PixelNormalization(PIXEL_MEAN, PIXEL_STD, name="pixel_norm")(inputs)
    x = _unit(x, stem_channels, 3, 2, "stem")
    x = _unit(x, stem_channels, 3, 1, "stem_dw", depthwise=True)
    x = _unit(x, stem_channels, 1, 1, "stem_project", activation=False)
    channels = stem_channels
    for i, (t, c, n, s) in enumerate(rows, start=1):
        for j in range(1, n + 1):
            stride = s if j == 1 else 1
            if stride == 1 and channels != c:
                raise ConfigError(f"MobileFaceNet_TF stage {i}: a stride-1 unit from {channels} to "
                                  f"{c} channels has no shortcut in the reference topology")
            prefix = f"stage{i}_block{j}"
            y = _unit(x, t * channels, 1, 1, f"{prefix}_expand")
            y = _unit(y, t * channels, 3, stride, f"{prefix}_dw", depthwise=True)
            y = _unit(y, c, 1, 1, f"{prefix}_project", activation=False)
            x = layers.Add(name=f"{prefix}_add")([y, x]) if stride == 1 else y
            channels = c
    x = _unit(x, conv_channels, 1, 1, "conv_sep")
    kernel = tuple(int(d) for d in x.shape[1:3])
    x = layers.DepthwiseConv2D(kernel, padding="valid", use_bias=False,
                               depthwise_initializer=_init(kernel[0] * kernel[1]), name="gdc_conv")(x)
    x = _bn("gdc_bn")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="gdc_dropout")(x)
    x = _unit(x, conv_channels, 1, 1, "neck", activation=False)
    x = layers.Conv2D(embd_shape, 1, use_bias=False, kernel_initializer=_init(embd_shape),
                      name="embedding_conv")(x)
    x = _bn("embedding_bn")(x)
    outputs = layers.Flatten(name="embedding_flatten")(x)
    return keras.Model(inputs, outputs, name=name or "MobileFaceNet_TF")


@register_backbone("MobileFaceNet_TF", "mobilefacenet_tf", "mbf_tf")
def mobilefacenet_tf(embd_shape=192, input_size=112, dropout=0.0, name=None, stem_channels=64,
                     bottlenecks=PAPER_BOTTLENECKS, conv_channels=512):
    """The paper's MobileFaceNet, TF-slim form; kwargs ``stem_channels``, ``bottlenecks``,
    ``conv_channels``."""
    return build_mobilefacenet_tf(embd_shape, input_size, dropout, name, stem_channels=stem_channels,
                                  bottlenecks=bottlenecks, conv_channels=conv_channels)
