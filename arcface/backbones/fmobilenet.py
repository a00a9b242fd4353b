"""InsightFace's ``fmobilenet``: MobileNet v1 for 112x112 faces, with the "E" output.

The network of OpenCV zoo's SFace recogniser (``face_recognition_sface_2021dec``; read from its
ONNX graph, an MXNet export): depthwise-separable units on a stride-1 stem, batch norm with
MXNet's epsilon (1e-3) in the body and InsightFace's 2e-5 in the head, PReLU everywhere::

    stem        Conv 3x3 3 -> 32w, stride 1, pad 1 -> BN -> PReLU          stem_conv/_bn/_prelu
    unit i      DW 3x3 (stride s) -> BN -> PReLU -> Conv 1x1 -> BN ->       unit{i}_dw_*, unit{i}_pw_*
                PReLU, for (out, s) = (64, 1) (128, 2) (128, 1) (256, 2)
                (256, 1) (512, 2) (512, 1) x5 (1024, 2) (1024, 1), times w
    head "E"    BN -> Dropout -> Flatten (7x7x1024w) -> Dense(embd_shape,   head_bn, head_dropout,
                with bias) -> BN                                           head_flatten,
                                                                           embedding_fc, embedding_bn

``width`` (w, default 1) scales every channel count; the input is normalised as
``(x - 127.5) / 128`` (MXNet InsightFace's ``(x - 127.5) * 0.0078125``), RGB. About 9.7 M
parameters at 128-d, 6.4 M of them in the fully connected layer.
"""

from __future__ import annotations

import keras
from keras import layers

from arcface.errors import ConfigError

from .common import BN_MOMENTUM, PixelNormalization, image_input, kaiming_fan_out, prelu, torch_conv
from .registry import register_backbone

__all__ = ["build_fmobilenet", "FMOBILENET_UNITS"]

#: (output channels, stride) of the depthwise-separable units, before the width multiplier
FMOBILENET_UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
BODY_BN_EPSILON = 1e-3   # MXNet's BatchNorm default, as the SFace file has it
HEAD_BN_EPSILON = 2e-5   # InsightFace's head


def _bn(name: str, epsilon: float) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=epsilon, momentum=BN_MOMENTUM, name=name)


def _conv_bn_prelu(x, filters: int, kernel: int, stride: int, groups: int, prefix: str):
    x = torch_conv(x, filters, kernel, stride, kernel // 2, groups, f"{prefix}_conv")
    x = _bn(f"{prefix}_bn", BODY_BN_EPSILON)(x)
    return prelu(f"{prefix}_prelu")(x)


def build_fmobilenet(embd_shape: int = 128, input_size: int = 112, dropout: float = 0.0,
                     name: str | None = None, width: float = 1.0) -> keras.Model:
    """Build InsightFace's fmobilenet with the "E" head (module docstring).

    ``dropout`` is applied after the head's BatchNorm, where the MXNet graph has its Dropout
    (0.4 there in training, none at inference)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ConfigError(f"FMobileNet width must be a positive number, got {width!r}")
    if input_size < 16:
        raise ConfigError(f"FMobileNet needs input_size >= 16, got {input_size}")

    def channels(c: int) -> int:
        return max(1, int(round(c * width)))

    inputs = image_input(input_size)
    x = PixelNormalization(mean=127.5, std=128.0, name="pixel_norm")(inputs)
    x = _conv_bn_prelu(x, channels(32), 3, 1, 1, "stem")
    for i, (out, stride) in enumerate(FMOBILENET_UNITS, start=1):
        c = x.shape[-1]
        x = _conv_bn_prelu(x, c, 3, stride, c, f"unit{i}_dw")
        x = _conv_bn_prelu(x, channels(out), 1, 1, 1, f"unit{i}_pw")
    x = _bn("head_bn", HEAD_BN_EPSILON)(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Flatten(name="head_flatten")(x)
    x = layers.Dense(embd_shape, use_bias=True, kernel_initializer=kaiming_fan_out(embd_shape),
                     name="embedding_fc")(x)
    outputs = _bn("embedding_bn", HEAD_BN_EPSILON)(x)
    return keras.Model(inputs, outputs, name=name or "FMobileNet")


@register_backbone("FMobileNet", "fmobilenet", "sface")
def fmobilenet(embd_shape=128, input_size=112, dropout=0.0, name=None, width=1.0):
    """InsightFace's fmobilenet (MobileNet v1, stride-1 stem, "E" head), the network of
    OpenCV zoo's SFace; kwarg ``width`` scales every channel count."""
    return build_fmobilenet(embd_shape, input_size, dropout, name, width=width)
