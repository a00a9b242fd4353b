"""Backbones from ``keras.applications`` with the shared embedding head.

``ResNet50`` and ``MobileNetV2`` are built with ``weights=None,
include_top=False, input_shape=(s, s, 3)`` and used as a nested sub-model
(named ``resnet50`` / ``mobilenetv2_1.00_<s>``) after
:class:`~arcface.backbones.common.PixelNormalization` (inputs in [-1, 1]),
followed by BN -> Dropout -> Flatten -> Dense -> BN (``output_bn`` ...
``embedding_bn``, a plain trainable final BN).
"""

from __future__ import annotations

import warnings

import keras

from arcface.errors import ConfigError

from .common import PixelNormalization, embedding_output_block, image_input
from .registry import register_backbone

__all__ = ["build_keras_application"]

# MobileNetV2 warns when input_size is not one of the sizes it has ImageNet
# weights for (Keras 3.15 only does so for weights="imagenet", other versions
# may warn regardless); irrelevant with weights=None, so it is filtered.
_MOBILENET_SIZE_WARNING = r".*`input_shape` is undefined or non-square.*"


def _base_resnet50(input_size: int, **kwargs):
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3), **kwargs
    )


def _base_mobilenet_v2(input_size: int, alpha: float = 1.0, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MOBILENET_SIZE_WARNING, category=UserWarning)
        return keras.applications.MobileNetV2(
            include_top=False,
            weights=None,
            input_shape=(input_size, input_size, 3),
            alpha=alpha,
            **kwargs,
        )


def build_keras_application(
    base_fn,
    default_name: str,
    embd_shape: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    name: str | None = None,
    **base_kwargs,
) -> keras.Model:
    """Wrap a ``keras.applications`` feature extractor with the embedding head."""
    if input_size < 32:
        raise ConfigError(f"{default_name} needs input_size >= 32, got {input_size}")
    try:
        base = base_fn(input_size, **base_kwargs)
    except ValueError as exc:  # keras.applications rejects bad alpha etc.
        raise ConfigError(f"{default_name}: {exc}") from None
    inputs = image_input(input_size)
    x = PixelNormalization(name="pixel_norm")(inputs)
    x = base(x)
    outputs = embedding_output_block(x, embd_shape, dropout=dropout, freeze_final_gamma=False)
    return keras.Model(inputs, outputs, name=name or default_name)


@register_backbone("ResNet50", "resnet50_keras")
def resnet50(embd_shape=512, input_size=112, dropout=0.0, name=None):
    """keras.applications ResNet50 (random init) + embedding head."""
    return build_keras_application(
        _base_resnet50, "ResNet50", embd_shape, input_size, dropout, name
    )


@register_backbone("MobileNetV2", "mobilenet_v2")
def mobilenet_v2(embd_shape=512, input_size=112, dropout=0.0, name=None, alpha=1.0):
    """keras.applications MobileNetV2 (random init, width ``alpha``) + embedding head."""
    return build_keras_application(
        _base_mobilenet_v2, "MobileNetV2", embd_shape, input_size, dropout, name, alpha=alpha
    )
