"""One Keras model, face pixels → un-keyed deep IoM code, for on-device export.

The graph is exactly the service's :class:`~iom.service.pipeline.Pipeline` without alignment:

    uint8 RGB face (n, 112, 112, 3)
      → the stage-1 backbone (its pixel normalisation is its first layer; no flip test, as
        ``Pipeline.from_pretrained`` builds ``Embedder(backbone, 16, input_size)``)
      → L2 normalisation                                   → output ``embedding`` (n, d) float32
      → the hashing network's logits (key-free: its public training permutation, input
        normalisation, IoM projection, m·q units)
      → argmax within each of the m groups of q            → output ``code`` (n, m) int32

The ``crop`` variant takes a square uint8 RGB crop of ``crop_size`` pixels (a detector's box,
no landmarks) and resizes it bilinearly to the backbone's input size first. No user key is in
the model: the keyed relabelling is applied afterwards (:mod:`iom.export.reference`).
Everything here is ``keras.ops``, so the model builds under any backend; the converters
(:mod:`iom.export.convert`) need TensorFlow.
"""

from __future__ import annotations

import os

import keras
from keras import ops

from iom.export.spec import DEFAULT_CROP_SIZE, VARIANTS


@keras.saving.register_keras_serializable(package="iomface_export")
class L2Normalize(keras.layers.Layer):
    """Rows scaled to unit length, as :func:`arcface.embed.l2_normalize` (norm floored at 1e-12)."""

    def call(self, x):
        x = ops.cast(x, "float32")
        return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-24))


@keras.saving.register_keras_serializable(package="iomface_export")
class GroupArgmax(keras.layers.Layer):
    """(n, m·q) logits → (n, m) int32: the index of the largest of each group of q."""

    def __init__(self, m: int, q: int, **kwargs):
        super().__init__(**kwargs)
        self.m, self.q = int(m), int(q)

    def call(self, logits):
        groups = ops.reshape(ops.cast(logits, "float32"), (-1, self.m, self.q))
        if keras.backend.backend() == "tensorflow":
            # keras.ops.argmax on TensorFlow adds a bitcast/BitwiseAnd (-0.0 vs 0.0 handling) that
            # TFLite's builtin ops lack; tf.argmax is one ARG_MAX (first maximum, as NumPy's)
            import tensorflow as tf

            return tf.argmax(groups, axis=-1, output_type=tf.int32)
        return ops.cast(ops.argmax(groups, axis=-1), "int32")

    def compute_output_spec(self, logits):
        return keras.KerasTensor((logits.shape[0], self.m), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "m": self.m, "q": self.q}


def input_spec(variant: str, input_size: int = 112, crop_size: int = DEFAULT_CROP_SIZE) -> dict:
    """What the exported model takes: name, shape (``None`` = any batch), dtype, layout, meaning."""
    size = input_size if variant == "face" else crop_size
    what = (f"an aligned face: the {input_size}x{input_size} five-point similarity warp onto "
            "the ArcFace template (as the service aligns), RGB 0..255") if variant == "face" else (
            f"a square face crop of {crop_size}x{crop_size} (a detector's box, no landmarks), "
            f"RGB 0..255, resized bilinearly to {input_size}x{input_size} inside the model")
    return {"name": "image", "shape": [None, size, size, 3], "dtype": "uint8", "layout": "NHWC",
            "channels": "RGB", "description": what}


def output_spec(m: int, q: int, dim: int) -> list[dict]:
    """The exported model's outputs (in this order)."""
    return [{"name": "code", "shape": [None, m], "dtype": "int32",
             "description": f"un-keyed IoM code: m={m} symbols in [0, {q}); key it before storing"},
            {"name": "embedding", "shape": [None, dim], "dtype": "float32",
             "description": "L2-normalised stage-1 embedding (for testing; never store or send it)"}]


def build_code_model(backbone, hasher, variant: str = "face", crop_size: int = DEFAULT_CROP_SIZE,
                     input_size: int | None = None) -> keras.Model:
    """The export graph over a loaded ``backbone`` and :class:`~iom.hashing.hasher.DeepIoMHasher`.

    Outputs a dict ``{"code": (n, m) int32, "embedding": (n, d) float32}``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {list(VARIANTS)}")
    size = int(input_size or backbone.input_shape[1])
    side = size if variant == "face" else int(crop_size)
    image = keras.Input((side, side, 3), dtype="uint8", name="image")
    x = ops.cast(image, "float32")
    if variant == "crop":
        x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize", dtype="float32")(x)
    embedding = L2Normalize(name="embedding", dtype="float32")(backbone(x, training=False))
    network = hasher.network
    # the key-free part of the hashing network up to its logits (its soft-code head is for training)
    logits = keras.Model(network.inputs, network.get_layer("IoMProjection").output,
                         name="deep_iom_logits")(embedding, training=False)
    code = GroupArgmax(hasher.m, hasher.q, name="code")(logits)
    return keras.Model(image, {"code": code, "embedding": embedding}, name=f"{hasher.spec['model_id']}_{variant}")


def load_code_model(hasher_name: str, variant: str = "face", crop_size: int = DEFAULT_CROP_SIZE):
    """``(model, info)`` for a shipped hasher, loaded as ``Pipeline.from_pretrained(name,
    align=False)`` loads it; ``info`` is :meth:`Pipeline.shipped`'s dict plus ``dim`` and
    ``weights`` (``{"<model>/<file>": path}`` of the two weight files the export is made of)."""
    from iom.hashing.hasher import WEIGHTS_FILE, DeepIoMHasher, stage1_backbone
    from iom.service.pipeline import Pipeline

    info = Pipeline.shipped(hasher_name)
    hasher = DeepIoMHasher.load(info["folder"])
    cfg, backbone, stage1_weights = stage1_backbone(hasher)
    model = build_code_model(backbone, hasher, variant, crop_size, cfg["input_size"])
    owner = hasher_name if hasher.spec.get("stage1_weights") else info["stage1_model"]
    weights = {f"{hasher_name}/{WEIGHTS_FILE}": os.path.join(info["folder"], WEIGHTS_FILE),
               f"{owner}/{os.path.basename(stage1_weights)}": stage1_weights}
    return model, {**info, "dim": hasher.dim, "m": hasher.m, "q": hasher.q,
                   "model_id": hasher.spec["model_id"], "weights": weights}
