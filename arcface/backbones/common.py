"""Building blocks shared by the backbones.

Conventions (chosen so InsightFace / arcface_torch PyTorch or ONNX weights map
one-to-one onto the Keras layers):

* channels-last tensors; explicit ``ZeroPadding2D(p)`` + ``padding="valid"``
  convolutions wherever PyTorch pads by ``p``;
* ``BatchNormalization(epsilon=1e-5, momentum=0.9)`` (PyTorch's momentum 0.1);
* PReLU with one slope per channel (``shared_axes=[1, 2]``, alpha shape
  ``(1, 1, C)``);
* no dtype-specific code: mixed precision comes from the global Keras policy;
* initialisers follow the PyTorch reference (they only matter for training
  from scratch).  As in PyTorch, a *freshly initialised* deep residual network
  is ill-conditioned in inference mode (BN moving statistics are still 0/1, so
  activations grow block after block; IR_100 can overflow to inf/nan): train
  it (BN in training mode) or load weights before evaluating it.

Weight-layout notes for converters: a PyTorch conv weight ``(O, I/g, kh, kw)``
becomes ``(kh, kw, I/g, O)`` for ``Conv2D`` and ``(kh, kw, C, 1)`` for
``DepthwiseConv2D``; a Linear weight ``(E, N)`` becomes ``(N, E)``.  Because
Keras flattens ``(H, W, C)`` while PyTorch flattens ``(C, H, W)``, the rows of
``embedding_fc`` after a spatial Flatten must be permuted:
``W.reshape(E, C, H, W).transpose(2, 3, 1, 0).reshape(H * W * C, E)``.
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "PixelNormalization",
    "FrozenGammaBatchNormalization",
    "image_input",
    "batch_norm",
    "prelu",
    "kaiming_fan_out",
    "torch_conv",
    "embedding_output_block",
    "count_reference_parameters",
    "iter_layers",
]

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras momentum = 1 - PyTorch momentum (0.1)


@keras.saving.register_keras_serializable(package="iomface")
class PixelNormalization(layers.Layer):
    """Map RGB pixels in [0, 255] to about [-1, 1] as ``(x - mean) / std``.

    The default ``(x - 127.5) / 127.5`` is InsightFace's input convention; models
    of other lineages keep their own (the TF-slim MobileFaceNet uses ``std=128``).
    Any input dtype (``uint8``, ``float32``, ...) is cast to the layer's compute
    dtype first, so callers may pass raw ``uint8`` images or float images in
    0..255 alike.
    """

    def __init__(self, mean: float = 127.5, std: float = 127.5, **kwargs):
        super().__init__(**kwargs)
        if not std > 0:
            raise ValueError(f"PixelNormalization std must be > 0, got {std!r}")
        self.mean, self.std = float(mean), float(std)
        self.supports_masking = True

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return (x - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config


@keras.saving.register_keras_serializable(package="iomface")
class FrozenGammaBatchNormalization(layers.BatchNormalization):
    """BatchNormalization whose scale (gamma) is kept but never trained.

    arcface_torch's IR-ResNet ends with ``BatchNorm1d`` whose weight is set to
    1 and ``requires_grad=False``: the parameter exists (so it is counted and
    exported) but the optimiser never updates it.  This layer reproduces that:
    ``gamma`` is created as usual (initialised to ones) and marked
    non-trainable, while ``beta`` and the moving statistics behave normally.
    The freeze survives ``layer.trainable = False/True`` toggles and
    save/load (it is a property of the layer class, not of a variable).
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._freeze_gamma()

    def _freeze_gamma(self):
        gamma = getattr(self, "gamma", None)
        if gamma is not None:
            gamma.trainable = False

    @property
    def trainable(self):
        return layers.BatchNormalization.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        layers.BatchNormalization.trainable.fset(self, value)
        self._freeze_gamma()


@keras.saving.register_keras_serializable(package="iomface")
class GroupedConv2D(layers.Layer):
    """Bias-free grouped 2-D convolution ('valid' padding) built from depthwise convolutions.

    Same result and same kernel layout as ``Conv2D(filters, k, groups=groups)``
    (``(kh, kw, in_channels / groups, filters)``, output channels grouped contiguously).
    With ``ipg`` input channels per group, output channel ``o`` (group ``g``) is
    ``sum_i conv(x[g*ipg + i], K[:, :, i, o])``: for each ``i`` the inputs are gathered so
    that channel ``o`` holds ``x[g*ipg + i]``, then one multiplier-1 depthwise convolution
    applies ``K[:, :, i, :]``. That is ``ipg`` cheap depthwise convolutions, where XLA's
    grouped ``Conv2D`` on CPU is about 1000x slower (42 s for one training step of a
    56x56x128 layer with 64 groups, against 0.05 s) and a depthwise convolution with a
    channel multiplier has a very slow kernel gradient under JAX on CPU.
    """

    def __init__(self, filters: int, kernel_size, groups: int, strides: int = 1,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.groups = int(groups)
        self.strides = int(strides)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        cin = int(input_shape[-1])
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(f"{self.name}: channels {cin} -> {self.filters} not divisible by "
                             f"groups {self.groups}")
        self.kernel = self.add_weight(
            name="kernel", shape=(*self.kernel_size, cin // self.groups, self.filters),
            initializer=self.kernel_initializer, trainable=True)

    def call(self, x):
        g = self.groups
        ipg, opg = int(self.kernel.shape[2]), self.filters // g
        kernel = ops.cast(self.kernel, x.dtype)
        out = None
        for i in range(ipg):
            # output channel o reads input channel (o // opg) * ipg + i
            source = [(o // opg) * ipg + i for o in range(self.filters)]
            xi = x if ipg == 1 and opg == 1 else ops.take(x, source, axis=-1)
            k = ops.expand_dims(kernel[:, :, i, :], -1)  # (kh, kw, filters, 1)
            y = ops.depthwise_conv(xi, k, strides=self.strides, padding="valid")
            out = y if out is None else out + y
        return out

    def compute_output_shape(self, input_shape):
        kh, kw = self.kernel_size
        h = None if input_shape[1] is None else (input_shape[1] - kh) // self.strides + 1
        w = None if input_shape[2] is None else (input_shape[2] - kw) // self.strides + 1
        return (input_shape[0], h, w, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, groups=self.groups,
                      strides=self.strides,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


def image_input(input_size: int, name: str = "image", dtype=None) -> keras.KerasTensor:
    """``keras.Input`` of shape ``(input_size, input_size, 3)`` (RGB, 0..255).

    The symbolic dtype defaults to float32; uint8 arrays fed to the model are
    accepted as well (the model's first layer is :class:`PixelNormalization`).
    """
    return keras.Input(shape=(input_size, input_size, 3), name=name, dtype=dtype)


def batch_norm(name: str, **kwargs) -> layers.BatchNormalization:
    """BatchNormalization with PyTorch's defaults (eps 1e-5, momentum 0.1)."""
    return layers.BatchNormalization(
        axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, **kwargs
    )


def prelu(name: str) -> layers.PReLU:
    """PReLU with one slope per channel, initialised to 0.25 like PyTorch."""
    return layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
    )


def kaiming_fan_out(fan_out: int) -> keras.initializers.Initializer:
    """arcface_torch's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.

    PyTorch's fan_out is ``out_channels * kh * kw`` for every conv (grouped and
    depthwise ones included) and ``out_features`` for a Linear layer.
    """
    return keras.initializers.RandomNormal(stddev=(2.0 / fan_out) ** 0.5)


def torch_conv(x, filters: int, kernel, stride: int, padding: int, groups: int, name: str):
    """Bias-free conv with PyTorch-style explicit zero padding, applied to ``x``.

    ``groups == in_channels == filters`` uses ``DepthwiseConv2D``; other
    ``groups > 1`` use :class:`GroupedConv2D` (same kernel layout as a grouped ``Conv2D``).
    """
    in_channels = x.shape[-1]
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    init = kaiming_fan_out(filters * kh * kw)
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    if groups > 1 and groups == in_channels == filters:
        return layers.DepthwiseConv2D((kh, kw), strides=stride, padding="valid", use_bias=False,
                                      depthwise_initializer=init, name=name)(x)
    if groups > 1:
        return GroupedConv2D(filters, (kh, kw), groups, strides=stride, kernel_initializer=init,
                             name=name)(x)
    return layers.Conv2D(filters, (kh, kw), strides=stride, padding="valid", use_bias=False,
                         kernel_initializer=init, name=name)(x)


def embedding_output_block(
    x,
    embd_shape: int,
    dropout: float = 0.0,
    freeze_final_gamma: bool = False,
    fc_use_bias: bool = True,
):
    """Shared embedding head: BN -> Dropout -> Flatten -> Dense -> BN.

    Layer names: ``output_bn``, ``output_dropout``, ``output_flatten``,
    ``embedding_fc`` and ``embedding_bn`` (arcface_torch's ``bn2``,
    ``dropout``, flatten, ``fc`` and ``features``).  The final BN has both
    scale and centre; with ``freeze_final_gamma=True`` (IR-ResNet, as in
    arcface_torch) its gamma stays at 1 and is non-trainable, see
    :class:`FrozenGammaBatchNormalization`.
    """
    x = batch_norm("output_bn")(x)
    x = layers.Dropout(dropout, name="output_dropout")(x)
    x = layers.Flatten(name="output_flatten")(x)
    # PyTorch's default nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    limit = 1.0 / float(x.shape[-1]) ** 0.5
    x = layers.Dense(
        embd_shape,
        use_bias=fc_use_bias,
        kernel_initializer=keras.initializers.RandomUniform(-limit, limit),
        bias_initializer=keras.initializers.RandomUniform(-limit, limit),
        name="embedding_fc",
    )(x)
    bn_cls = FrozenGammaBatchNormalization if freeze_final_gamma else layers.BatchNormalization
    x = bn_cls(
        axis=-1,
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        scale=True,
        center=True,
        name="embedding_bn",
    )(x)
    return x


def iter_layers(layer):
    """Yield ``layer`` and all nested sub-layers (depth first, deduplicated)."""
    seen = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(getattr(current, "layers", None) or [])
        stack.extend(getattr(current, "_layers", None) or [])


def count_reference_parameters(model) -> int:
    """Count weights the way PyTorch's ``sum(p.numel() for p in parameters())`` does.

    All trainable and non-trainable weights are counted (including a frozen
    gamma, which is a non-trainable *parameter* in PyTorch) except the
    BatchNormalization ``moving_mean`` / ``moving_variance``, which PyTorch
    keeps as buffers.  Random-seed and metric state are never counted.
    Only weight shapes are used; the model is never run.
    """
    buffers = set()
    for layer in iter_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            for attr in ("moving_mean", "moving_variance"):
                var = getattr(layer, attr, None)
                if var is not None:
                    buffers.add(id(var))
    total = 0
    for w in model.weights:
        if id(w) in buffers:
            continue
        n = 1
        for dim in w.shape:
            n *= int(dim)
        total += n
    return total
