"""MobileFaceNet in the arcface_torch ``mbf`` form.

Building blocks (all convolutions without bias, explicit ZeroPadding2D):

* ConvBlock   = Conv -> BN -> PReLU
* LinearBlock = Conv -> BN
* DepthWise(in, out, stride, groups=g, residual) =
  ConvBlock 1x1 in->g -> ConvBlock 3x3 depthwise on g channels (stride s) ->
  LinearBlock 1x1 g->out, plus an identity shortcut when residual
* Residual(c, n, g) = n residual DepthWise(c, c, stride 1, groups g)

Network with width multiplier ``scale`` (default 2) and ``blocks``
(default ``(1, 4, 6, 2)``), matching arcface_torch's ``MobileFaceNet``::

    stem        ConvBlock 3 -> 64s, 3x3, stride 2, pad 1          layers.0
    stage1      blocks[0] == 1: ConvBlock 64s -> 64s, 3x3, pad 1,  layers.1
                groups 64 (depthwise when s == 1, grouped conv
                with s channels per group otherwise);
                else Residual(64s, blocks[0], groups 128)
    stage2_down DepthWise(64s -> 64s, stride 2, groups 128)        layers.2
    stage2      Residual(64s, blocks[1], groups 128)               layers.3
    stage3_down DepthWise(64s -> 128s, stride 2, groups 256)       layers.4
    stage3      Residual(128s, blocks[2], groups 256)              layers.5
    stage4_down DepthWise(128s -> 128s, stride 2, groups 512)      layers.6
    stage4      Residual(128s, blocks[3], groups 256)              layers.7
    conv_sep    ConvBlock 1x1 128s -> 512                          conv_sep
    GDC         LinearBlock depthwise 7x7 (valid) -> Flatten ->    features
                Dense(embd_shape, no bias) -> BN

Note: the expansion widths ("groups") 128/256/512/256 and the 64 groups of
the stage-1 conv are *not* multiplied by ``scale`` in arcface_torch; they are
kept fixed here as well so that the official weights map onto this model
(with scale=2 and a 512-d embedding this gives 2,059,520 PyTorch-way
parameters, arcface_torch's "about 2.0 M").

Layer names inside a DepthWise unit with prefix ``P`` (e.g. ``stage3_down``
or ``stage3_block4``)::

    P_expand_conv / P_expand_bn / P_expand_prelu     layers.0 (ConvBlock 1x1)
    P_dw_conv / P_dw_bn / P_dw_prelu                 layers.1 (ConvBlock 3x3)
    P_project_conv / P_project_bn                    layers.2 (LinearBlock)

and ``gdc_conv`` / ``gdc_bn`` / ``embedding_fc`` / ``embedding_bn`` for
arcface_torch's ``features.layers.0`` / ``.2`` / ``.3``.

The ``"fc"`` head (``head="fc"``; registered as ``MobileFaceNet_FC``) is the one of
InsightFace's released buffalo_s recogniser ``w600k_mbf.onnx`` (read from its graph: the
body above is identical, the GDC is replaced)::

    head        ConvBlock 1x1 512 -> head_channels (64)           head_conv/_bn/_prelu
    FC          Flatten (7x7x64 = 3136) -> Dense(embd_shape,       head_flatten,
                with bias) -> BN (BatchNorm1d)                    embedding_fc, embedding_bn
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from arcface.errors import ConfigError

from .common import (BN_EPSILON, BN_MOMENTUM, PixelNormalization, batch_norm, image_input,
                     kaiming_fan_out, prelu, torch_conv)
from .registry import register_backbone

__all__ = ["build_mobilefacenet"]


def _conv_block(x, filters, kernel, stride, padding, groups, prefix):
    x = torch_conv(x, filters, kernel, stride, padding, groups, f"{prefix}_conv")
    x = batch_norm(f"{prefix}_bn")(x)
    return prelu(f"{prefix}_prelu")(x)


def _linear_block(x, filters, kernel, stride, padding, groups, prefix):
    x = torch_conv(x, filters, kernel, stride, padding, groups, f"{prefix}_conv")
    return batch_norm(f"{prefix}_bn")(x)


def _depthwise_unit(x, out_channels: int, stride: int, groups: int, residual: bool, prefix: str):
    shortcut = x
    y = _conv_block(x, groups, 1, 1, 0, 1, f"{prefix}_expand")
    y = _conv_block(y, groups, 3, stride, 1, groups, f"{prefix}_dw")
    y = _linear_block(y, out_channels, 1, 1, 0, 1, f"{prefix}_project")
    if residual:
        y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return y


def _residual(x, channels: int, num_block: int, groups: int, prefix: str):
    for j in range(1, num_block + 1):
        x = _depthwise_unit(x, channels, 1, groups, True, f"{prefix}_block{j}")
    return x


def build_mobilefacenet(
    embd_shape: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    name: str | None = None,
    scale: int = 2,
    blocks: Sequence[int] = (1, 4, 6, 2),
    head: str = "gdc",
    head_channels: int = 64,
) -> keras.Model:
    """Build arcface_torch's MobileFaceNet (``mbf``; ``scale=4, blocks=(2, 8, 12, 4)``
    gives ``mbf_large``).

    ``dropout`` (0 in arcface_torch) is applied after the head's flatten, before
    ``embedding_fc``.  The GDC depthwise kernel covers the whole final feature
    map (7x7 for 112x112 inputs, the only size the reference supports).
    ``head="fc"`` replaces the GDC by InsightFace's w600k_mbf head (module
    docstring): a 1x1 ConvBlock to ``head_channels``, flatten, a Dense *with* bias,
    BatchNorm.
    """
    if head not in ("gdc", "fc"):
        raise ConfigError(f"MobileFaceNet head must be 'gdc' or 'fc', got {head!r}")
    if isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1:
        raise ConfigError(f"MobileFaceNet head_channels must be a positive integer, "
                          f"got {head_channels!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"MobileFaceNet scale must be a positive integer, got {scale!r}")
    try:
        blocks = tuple(int(b) for b in blocks)
    except (TypeError, ValueError):
        raise ConfigError(f"MobileFaceNet blocks must be 4 integers, got {blocks!r}") from None
    if len(blocks) != 4 or any(b < 1 for b in blocks):
        raise ConfigError(f"MobileFaceNet blocks must be 4 integers >= 1, got {blocks!r}")
    if input_size < 16:
        raise ConfigError(f"MobileFaceNet needs input_size >= 16, got {input_size}")
    c1, c2 = 64 * scale, 128 * scale

    inputs = image_input(input_size)
    x = PixelNormalization(name="pixel_norm")(inputs)
    x = _conv_block(x, c1, 3, 2, 1, 1, "stem")
    if blocks[0] == 1:
        x = _conv_block(x, c1, 3, 1, 1, 64, "stage1")
    else:
        x = _residual(x, c1, blocks[0], 128, "stage1")
    x = _depthwise_unit(x, c1, 2, 128, False, "stage2_down")
    x = _residual(x, c1, blocks[1], 128, "stage2")
    x = _depthwise_unit(x, c2, 2, 256, False, "stage3_down")
    x = _residual(x, c2, blocks[2], 256, "stage3")
    x = _depthwise_unit(x, c2, 2, 512, False, "stage4_down")
    x = _residual(x, c2, blocks[3], 256, "stage4")
    x = _conv_block(x, 512, 1, 1, 0, 1, "conv_sep")

    if head == "gdc":
        # GDC head: global depthwise conv over the whole (7x7) map, then linear.
        kernel = tuple(int(d) for d in x.shape[1:3])
        x = _linear_block(x, 512, kernel, 1, 0, 512, "gdc")  # gdc_conv, gdc_bn
        x = layers.Flatten(name="gdc_flatten")(x)
    else:
        # w600k_mbf head: 1x1 ConvBlock to a few channels, flatten, fully connected.
        x = _conv_block(x, head_channels, 1, 1, 0, 1, "head")  # head_conv, head_bn, head_prelu
        x = layers.Flatten(name="head_flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="gdc_dropout" if head == "gdc" else "head_dropout")(x)
    x = layers.Dense(
        embd_shape,
        use_bias=head == "fc",
        kernel_initializer=kaiming_fan_out(embd_shape),
        name="embedding_fc",
    )(x)
    outputs = layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="embedding_bn"
    )(x)
    return keras.Model(inputs, outputs, name=name or "MobileFaceNet")


@register_backbone("MobileFaceNet", "mbf", "mobilefacenet")
def mobilefacenet(
    embd_shape=512, input_size=112, dropout=0.0, name=None, scale=2, blocks=(1, 4, 6, 2)
):
    """MobileFaceNet (arcface_torch ``mbf``); kwargs ``scale`` and ``blocks``."""
    return build_mobilefacenet(embd_shape, input_size, dropout, name, scale=scale, blocks=blocks)


@register_backbone("MobileFaceNet_FC", "mbf_fc")
def mobilefacenet_fc(
    embd_shape=512, input_size=112, dropout=0.0, name=None, scale=2, blocks=(1, 4, 6, 2),
    head_channels=64,
):
    """MobileFaceNet with the fully connected head of InsightFace's buffalo_s recogniser
    (``w600k_mbf.onnx``): 1x1 ConvBlock 512 -> ``head_channels``, flatten, Dense with bias,
    BatchNorm; kwargs ``scale``, ``blocks``, ``head_channels``."""
    return build_mobilefacenet(embd_shape, input_size, dropout, name or "MobileFaceNet_FC",
                               scale=scale, blocks=blocks, head="fc", head_channels=head_channels)
