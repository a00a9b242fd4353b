"""IR-ResNet (LResNet-E-IR) as in InsightFace arcface_torch ``iresnet``.

Architecture (input 112x112 -> 7x7x512 before the embedding head):

* stem: ZeroPad(1) -> Conv3x3(64, stride 1, no bias) -> BN -> PReLU;
* four stages of IBasicBlock units with 64/128/256/512 channels; the first
  unit of every stage has stride 2 (on its *second* conv) and a
  Conv1x1(stride 2, no bias) -> BN shortcut, the others an identity shortcut.
  Unit: BN -> ZeroPad(1) -> Conv3x3(s=1) -> BN -> PReLU -> ZeroPad(1) ->
  Conv3x3(s) -> BN, then add the shortcut (no activation after the add);
* head: BN -> Dropout -> Flatten -> Dense(embd_shape, bias) -> BN with gamma
  frozen at 1 (see :func:`arcface.backbones.common.embedding_output_block`).

Layer names and their arcface_torch counterparts (stages and blocks are
1-based here, PyTorch's block indices are 0-based)::

    stem_conv / stem_bn / stem_prelu          conv1 / bn1 / prelu
    stage{i}_block{j}_bn1                     layer{i}.{j-1}.bn1
    stage{i}_block{j}_conv1                   layer{i}.{j-1}.conv1
    stage{i}_block{j}_bn2                     layer{i}.{j-1}.bn2
    stage{i}_block{j}_prelu                   layer{i}.{j-1}.prelu
    stage{i}_block{j}_conv2                   layer{i}.{j-1}.conv2
    stage{i}_block{j}_bn3                     layer{i}.{j-1}.bn3
    stage{i}_block1_downsample_conv           layer{i}.0.downsample.0
    stage{i}_block1_downsample_bn             layer{i}.0.downsample.1
    output_bn / embedding_fc / embedding_bn   bn2 / fc / features

With a 512-d embedding the PyTorch-way parameter counts are 24.03 M (IR_18),
34.14 M (IR_34), 43.59 M (IR_50) and 65.16 M (IR_100).
"""

from __future__ import annotations

import keras
from keras import layers

from arcface.errors import ConfigError

from .common import (
    PixelNormalization,
    batch_norm,
    embedding_output_block,
    image_input,
    prelu,
)
from .registry import register_backbone

__all__ = ["IR_STAGE_BLOCKS", "STAGE_CHANNELS", "build_iresnet"]

STAGE_CHANNELS = (64, 128, 256, 512)
IR_STAGE_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}


def _conv(filters: int, kernel: int, stride: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="valid",
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.1),  # as arcface_torch
        name=name,
    )


def _ibasic_block(x, filters: int, stride: int, downsample: bool, prefix: str):
    shortcut = x
    y = batch_norm(f"{prefix}_bn1")(x)
    y = layers.ZeroPadding2D(1, name=f"{prefix}_pad1")(y)
    y = _conv(filters, 3, 1, f"{prefix}_conv1")(y)
    y = batch_norm(f"{prefix}_bn2")(y)
    y = prelu(f"{prefix}_prelu")(y)
    y = layers.ZeroPadding2D(1, name=f"{prefix}_pad2")(y)
    y = _conv(filters, 3, stride, f"{prefix}_conv2")(y)
    y = batch_norm(f"{prefix}_bn3")(y)
    if downsample:
        shortcut = _conv(filters, 1, stride, f"{prefix}_downsample_conv")(x)
        shortcut = batch_norm(f"{prefix}_downsample_bn")(shortcut)
    return layers.Add(name=f"{prefix}_add")([y, shortcut])


def build_iresnet(
    depth: int,
    embd_shape: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    name: str | None = None,
    widths: tuple[int, int, int, int] = STAGE_CHANNELS,
) -> keras.Model:
    """Build IR-ResNet-``depth`` (18, 34, 50 or 100) as a functional model.

    ``widths``: channels of the four stages (arcface_torch's are the default; narrower
    ones make small test models of the same topology).
    """
    if depth not in IR_STAGE_BLOCKS:
        raise ConfigError(
            f"IR-ResNet depth must be one of {sorted(IR_STAGE_BLOCKS)}, got {depth!r}"
        )
    if input_size < 16:
        raise ConfigError(f"IR-ResNet needs input_size >= 16, got {input_size}")
    blocks = IR_STAGE_BLOCKS[depth]

    inputs = image_input(input_size)
    x = PixelNormalization(name="pixel_norm")(inputs)
    x = layers.ZeroPadding2D(1, name="stem_pad")(x)
    if len(widths) != 4 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ConfigError(f"IR-ResNet widths must be four positive integers, got {widths!r}")
    x = _conv(widths[0], 3, 1, "stem_conv")(x)
    x = batch_norm("stem_bn")(x)
    x = prelu("stem_prelu")(x)

    in_channels = widths[0]
    for stage, (filters, n_blocks) in enumerate(zip(widths, blocks), start=1):
        for block in range(1, n_blocks + 1):
            stride = 2 if block == 1 else 1
            downsample = stride != 1 or in_channels != filters
            x = _ibasic_block(x, filters, stride, downsample, f"stage{stage}_block{block}")
            in_channels = filters

    outputs = embedding_output_block(
        x, embd_shape, dropout=dropout, freeze_final_gamma=True, fc_use_bias=True
    )
    return keras.Model(inputs, outputs, name=name or f"IR_{depth}")


def _make_builder(depth: int):
    def builder(embd_shape=512, input_size=112, dropout=0.0, name=None, widths=STAGE_CHANNELS):
        return build_iresnet(depth, embd_shape, input_size, dropout, name, tuple(widths))

    builder.__name__ = f"ir_{depth}"
    builder.__doc__ = f"IR-ResNet-{depth} (arcface_torch iresnet{depth})."
    return builder


ir_18 = register_backbone("IR_18", "iresnet18", "r18")(_make_builder(18))
ir_34 = register_backbone("IR_34", "iresnet34", "r34")(_make_builder(34))
ir_50 = register_backbone("IR_50", "iresnet50", "r50")(_make_builder(50))
ir_100 = register_backbone("IR_100", "iresnet100", "r100", "Insight_ResNet100")(
    _make_builder(100)
)
