"""Margin-softmax heads: a cosine classifier layer and the label-dependent margin losses.

All heads share one layer, :class:`CosineHead`, which outputs ``cos θ_j`` between the
L2-normalised embedding and each L2-normalised class centre. The margin, which needs
the label, lives in :class:`MarginSoftmaxLoss` (``y_true``), so plain ``model.fit``
works on every backend. With target angle ``θ`` (the angle to the true class):

=============  ==========================================================================
head_type      target logit (before the scale ``s``)
=============  ==========================================================================
NormHead       ``cos θ``                                   (normalised softmax, NormFace)
SphereHead     ``ψ(θ) = (-1)^k cos(mθ) − 2k``, ``k = ⌊mθ/π⌋``  (A-Softmax, integer m)
CosHead        ``cos θ − m``                               (CosFace / AM-Softmax)
ArcHead        ``cos(θ + m)`` if ``θ + m ≤ π`` else ``cos θ − m·sin m``   (ArcFace)
CombinedHead   ``cos(m1·θ + m2) − m3`` if ``m1·θ + m2 ≤ π`` else ``cos θ − m3 − m2·sin m2``
=============  ==========================================================================

The fall-backs past π keep the target logit decreasing in θ, as InsightFace does
(``easy_margin=False``); with ``m1 = 1, m3 = 0`` CombinedHead is exactly ArcHead.
Everything is computed in float32, also under mixed precision.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from arcface.errors import ConfigError

#: cosines are clipped to [-1 + EPS, 1 - EPS] before arccos/sqrt so gradients stay finite
EPS = 1e-6


def _theta(cos):
    return ops.arccos(ops.clip(cos, -1.0 + EPS, 1.0 - EPS))


def margin_target_logit(cos, head_type: str, margin: float = 0.0,
                        margins: tuple[float, float, float] | None = None):
    """Apply the margin of ``head_type`` to the target-class cosines ``cos`` (any shape)."""
    cos = ops.cast(cos, "float32")
    if head_type == "NormHead":
        return cos
    if head_type == "CosHead":
        return cos - margin
    if head_type == "ArcHead":
        m = float(margin)
        sin = ops.sqrt(ops.maximum(1.0 - ops.square(cos), EPS))
        cos_theta_m = cos * math.cos(m) - sin * math.sin(m)
        # θ + m ≤ π  ⇔  cos θ ≥ cos(π − m)
        return ops.where(cos >= math.cos(math.pi - m), cos_theta_m, cos - m * math.sin(m))
    if head_type == "SphereHead":
        m = float(int(margin))
        theta = _theta(cos)
        k = ops.floor(m * theta / math.pi)
        sign = 1.0 - 2.0 * ops.mod(k, 2.0)
        return sign * ops.cos(m * theta) - 2.0 * k
    if head_type == "CombinedHead":
        m1, m2, m3 = (float(v) for v in margins)
        theta = _theta(cos)
        t = m1 * theta + m2
        return ops.where(t <= math.pi, ops.cos(t) - m3, cos - m3 - m2 * math.sin(m2))
    raise ConfigError(f"unknown head_type {head_type!r}")


@keras.saving.register_keras_serializable(package="iomface")
class CosineHead(keras.layers.Layer):
    """``cos θ_j`` between L2-normalised embeddings and L2-normalised class centres.

    Always float32 (variables and maths), so margins are exact under mixed precision.
    """

    def __init__(self, num_classes: int, kernel_initializer="glorot_normal", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="class_centres", shape=(int(input_shape[-1]), self.num_classes),
            initializer=self.kernel_initializer, trainable=True)

    def call(self, embeddings):
        x = ops.cast(embeddings, "float32")
        x = x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))
        w = self.kernel
        w = w / ops.sqrt(ops.maximum(ops.sum(ops.square(w), axis=0, keepdims=True), 1e-12))
        return ops.matmul(x, w)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@keras.saving.register_keras_serializable(package="iomface")
class MarginSoftmaxLoss(keras.losses.Loss):
    """Softmax cross-entropy over ``s · logits`` where the true class's cosine is
    replaced by its margin target (see the module table). ``y_pred`` are cosines from
    :class:`CosineHead`; ``y_true`` are integer class labels."""

    def __init__(self, head_type: str = "ArcHead", scale: float = 64.0, margin: float = 0.5,
                 margins=None, name: str | None = None, **kwargs):
        super().__init__(name=name or f"{head_type.lower()}_loss", **kwargs)
        self.head_type = head_type
        self.scale = float(scale)
        self.margin = float(margin) if margin is not None else 0.0
        self.margins = tuple(float(v) for v in margins) if margins is not None else None
        margin_target_logit(ops.zeros((1,)), head_type, self.margin, self.margins)  # validates

    def margin_logits(self, y_true, y_pred):
        """The scaled logits with the margin applied to each row's true class."""
        cos = ops.cast(y_pred, "float32")
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        onehot = ops.one_hot(labels, ops.shape(cos)[-1], dtype="float32")
        target_cos = ops.sum(cos * onehot, axis=-1)
        target = margin_target_logit(target_cos, self.head_type, self.margin, self.margins)
        return self.scale * (cos + onehot * ops.expand_dims(target - target_cos, -1)), onehot

    def call(self, y_true, y_pred):
        logits, onehot = self.margin_logits(y_true, y_pred)
        return ops.categorical_crossentropy(onehot, logits, from_logits=True)

    def get_config(self):
        config = super().get_config()
        config.update(head_type=self.head_type, scale=self.scale, margin=self.margin,
                      margins=list(self.margins) if self.margins else None)
        return config


def loss_from_config(cfg) -> MarginSoftmaxLoss:
    """The margin loss a (finalised) stage-1 config asks for."""
    return MarginSoftmaxLoss(head_type=cfg["head_type"], scale=cfg["logist_scale"],
                             margin=cfg["margin"] if cfg["head_type"] != "CombinedHead" else 0.0,
                             margins=cfg["margins"])
