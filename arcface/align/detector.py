"""The process's MTCNN detector: mtcnn 1.0.0 with its networks evaluated in TensorFlow ops.

mtcnn's pipeline runs on TensorFlow and NumPy, but its three networks are Keras models: under
``KERAS_BACKEND=jax`` they return JAX arrays that mtcnn cannot read. :class:`StageNetwork`
replaces each by the same computation in TensorFlow ops (read from the model's layers), so the
results are the same under every backend; it also makes the face scores float64, which makes
batch results equal one-by-one results (see its docstring). TensorFlow and mtcnn are imported
lazily, on the first detection; one detector is built per process and shared (calls are
serialised by :data:`DETECTOR_LOCK`).

:class:`PyramidPNet` replaces mtcnn's first stage: the same image pyramid, the same PNet and
the same box post-processing (mtcnn's own functions), but every level is resized and run
through PNet inside one ``tf.function`` call instead of one eager resize and one network call a
level, which is most of the detection time of a single photo. Its outputs equal mtcnn's
stage exactly (``PyramidPNet.reference`` runs mtcnn's own, level by level; the tests compare).
"""

from __future__ import annotations

import os
import threading

import numpy as np

_DETECTOR = None
DETECTOR_LOCK = threading.RLock()


class StageNetwork:
    """One of mtcnn's networks (PNet, RNet, ONet) evaluated with TensorFlow ops.

    mtcnn's networks are Keras models: under ``KERAS_BACKEND=jax`` they return JAX arrays,
    which mtcnn's TensorFlow/NumPy code cannot read, and JAX compiles every new input shape.
    This class reads the model's layers and weights once and runs the same computation as a
    ``tf.function`` whatever the backend, with two changes that only affect ties:

    * the face probability is the softmax of the float32 logits computed in float64. In float32
      it saturates at exactly 1.0 for many candidates, and mtcnn breaks those ties with an
      unstable ``argsort`` over the whole batch, so a batch and a single image could keep
      different boxes. Distinct float64 scores make the results batch-independent;
    * an empty batch raises ``InvalidArgumentError`` (as TensorFlow does for an empty
      convolution), which mtcnn reads as "no face".

    Supported layers: Conv2D, PReLU, MaxPooling2D, Permute, Flatten, Dense (linear or softmax).
    The last ``n_outputs`` layers are the heads, each applied to the trunk's output.
    """

    def __init__(self, model, n_outputs: int):
        import tensorflow as tf

        self.keras_model = model
        layers = list(model.layers)
        if len(layers) <= n_outputs:
            raise ValueError(f"{type(model).__name__}: expected a trunk and {n_outputs} heads")
        self.trunk = [self._layer(layer, tf) for layer in layers[:-n_outputs]]
        self.heads = [self._layer(layer, tf) for layer in layers[-n_outputs:]]
        self._call = tf.function(self._forward, reduce_retracing=True)

    @staticmethod
    def _layer(layer, tf):
        kind = type(layer).__name__
        weight = lambda v: tf.constant(np.asarray(v), dtype=tf.float32)  # noqa: E731
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if activation not in ("linear", "softmax"):
            raise ValueError(f"{layer.name}: unsupported activation {activation}")
        if kind == "Conv2D":
            if tuple(layer.dilation_rate) != (1, 1) or getattr(layer, "groups", 1) != 1:
                raise ValueError(f"{layer.name}: dilated or grouped convolutions are not supported")
            kernel, bias = weight(layer.kernel), weight(layer.bias) if layer.use_bias else None
            strides, padding = tuple(layer.strides), layer.padding.upper()

            def conv(x):
                y = tf.nn.conv2d(x, kernel, strides=strides, padding=padding)
                return y + bias if bias is not None else y
            return conv, activation
        if kind == "Dense":
            kernel, bias = weight(layer.kernel), weight(layer.bias) if layer.use_bias else None
            return (lambda x: tf.matmul(x, kernel) + bias if bias is not None else tf.matmul(x, kernel)), activation
        if kind == "PReLU":
            alpha = weight(layer.alpha)
            return (lambda x: tf.nn.relu(x) - alpha * tf.nn.relu(-x)), "linear"
        if kind == "MaxPooling2D":
            pool, strides, padding = tuple(layer.pool_size), tuple(layer.strides), layer.padding.upper()
            return (lambda x: tf.nn.max_pool2d(x, pool, strides, padding)), "linear"
        if kind == "Permute":
            perm = [0] + list(layer.dims)
            return (lambda x: tf.transpose(x, perm)), "linear"
        if kind == "Flatten":
            return (lambda x: tf.reshape(x, [tf.shape(x)[0], -1])), "linear"
        raise ValueError(f"{layer.name}: unsupported layer type {kind}")

    def _forward(self, x):
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        for fn, activation in self.trunk:
            x = fn(x)
            if activation == "softmax":
                x = tf.nn.softmax(x)
        outputs = []
        for fn, activation in self.heads:
            y = fn(x)
            outputs.append(tf.nn.softmax(tf.cast(y, tf.float64)) if activation == "softmax" else y)
        return outputs

    def __call__(self, x, *args, **kwargs):
        import tensorflow as tf

        if int(x.shape[0]) == 0:
            raise tf.errors.InvalidArgumentError(None, None, "empty batch: no face candidates")
        return self._call(tf.convert_to_tensor(x))


class PyramidPNet:
    """mtcnn's PNet stage (``mtcnn.stages.StagePNet``) with the whole pyramid in one TensorFlow call.

    For a batch of same-size normalised images it builds mtcnn's scale pyramid
    (``build_scale_pyramid``), resizes the batch to every level (area interpolation, level sizes
    truncated to integers as ``tf.image.resize`` does with mtcnn's float sizes) and runs PNet on
    each level, all in one ``tf.function`` (traced once per number of levels; image and level
    sizes are tensors); the proposals then go through mtcnn's own functions, unchanged. Keyword
    arguments and the output are those of ``StagePNet.__call__``.
    """

    def __init__(self, stage):
        import tensorflow as tf

        if not isinstance(stage._model, StageNetwork):
            raise TypeError("PyramidPNet wraps a PNet stage whose model is a StageNetwork")
        self.stage = stage  # mtcnn's stage, kept as the reference implementation
        self._model = stage._model
        self._pyramid = tf.function(self._levels, reduce_retracing=True)

    @property
    def name(self):
        return self.stage.name

    @property
    def id(self):
        return self.stage.id

    @property
    def model(self):
        return self._model

    def _levels(self, images, sizes):
        import tensorflow as tf

        return [self._model._forward(tf.image.resize(images, size, method=tf.image.ResizeMethod.AREA))
                for size in sizes]

    def reference(self, **kwargs):
        """mtcnn's own stage on the same network: one eager resize and one PNet call a level."""
        return self.stage(**kwargs)

    def __call__(self, images_normalized, images_oshapes, min_face_size=20, min_size=12, scale_factor=0.709,
                 threshold_pnet=0.6, nms_pnet1=0.5, nms_pnet2=0.7, **kwargs):
        import tensorflow as tf
        from mtcnn.utils.bboxes import generate_bounding_box, resize_to_square, smart_nms_from_bboxes, upscale_bboxes
        from mtcnn.utils.images import build_scale_pyramid

        # as StagePNet: every image's pyramid, the one with the most levels applied to the batch
        scales_groups = [build_scale_pyramid(shape[1], shape[0], min_face_size=min_face_size,
                                             scale_factor=scale_factor) for shape in images_oshapes]
        scales = scales_groups[int(np.argmax([len(x) for x in scales_groups]))]
        shape = np.asarray(images_normalized.shape[-3:-1])
        sizes = [tf.convert_to_tensor(shape * scale, tf.int32) for scale in scales]
        pnet_result = self._pyramid(tf.convert_to_tensor(images_normalized), sizes) if sizes else []

        batch_size = images_normalized.shape[0]
        proposals = [generate_bounding_box(result[0], result[1], threshold_pnet) for result in pnet_result]
        upscaled = [upscale_bboxes(bbox, np.asarray([scale] * batch_size)) for bbox, scale in zip(proposals, scales)]
        bboxes_nms = [smart_nms_from_bboxes(b, threshold=nms_pnet1, method="union", initial_sort=False)
                      for b in upscaled]
        bboxes_batch = np.concatenate(bboxes_nms, axis=0) if len(bboxes_nms) > 0 else np.empty((0, 6))
        bboxes_batch = smart_nms_from_bboxes(bboxes_batch, threshold=nms_pnet2, method="union", initial_sort=True)
        return resize_to_square(bboxes_batch)


_STAGE_OUTPUTS = {"PNet": 2, "RNet": 2, "ONet": 3}


def new_detector():
    """A new MTCNN detector with our stage networks (imports TensorFlow and mtcnn). One detector
    is not to be called from two threads at once: :func:`get_detector`'s is shared under
    :data:`DETECTOR_LOCK`; a server that aligns photos in parallel keeps several."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from mtcnn import MTCNN
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("face alignment needs the 'mtcnn' package (pip install 'iomface[align]') "
                          "and TensorFlow") from e

    detector = MTCNN()
    for stage in detector.stages:
        network = stage._model
        stage._model = StageNetwork(network, _STAGE_OUTPUTS[type(network).__name__])
    detector.stages[0] = PyramidPNet(detector.stages[0])
    return detector


def get_detector():
    """The process's MTCNN detector, built on first use (imports TensorFlow and mtcnn)."""
    global _DETECTOR
    with DETECTOR_LOCK:
        if _DETECTOR is None:
            _DETECTOR = new_detector()
        return _DETECTOR


_get_detector = get_detector  # the name earlier code and tests use
