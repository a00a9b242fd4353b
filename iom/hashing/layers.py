"""Deep IoM layers (keras.ops only): key permutation, hidden layers, IoM projection, softmax-out."""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import ops

from arcface.errors import ConfigError
from iom.keys import TemplateKey

PERMUTATION_PURPOSE = "embedding-permutation"


def key_permutation(key: TemplateKey | None, dim: int) -> np.ndarray:
    """The embedding permutation of ``key`` (identity for ``None``, as in IoMArcFace)."""
    if key is None:
        return np.arange(dim)
    return key.stream(f"{PERMUTATION_PURPOSE}/d={dim}").permutation(dim)


@keras.saving.register_keras_serializable(package="iomface")
class PermutationLayer(keras.layers.Layer):
    """Reorders the features of its input by a fixed, key-derived permutation (no weights)."""

    def __init__(self, permutation, **kwargs):
        super().__init__(**kwargs)
        perm = np.asarray(permutation, np.int64)
        if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(len(perm))):
            raise ValueError("PermutationLayer needs a permutation of range(d)")
        self.permutation = perm
        self.trainable = False

    def call(self, x):
        return ops.take(x, ops.convert_to_tensor(self.permutation.astype("int32")), axis=-1)

    def get_config(self):
        return {**super().get_config(), "permutation": self.permutation.tolist()}


INPUT_NORMS = ("none", "l2", "center", "whiten", "auto")
#: ``auto`` centres when the features' common direction shifts the cosine of unrelated faces by
#: more than this share of the centred cosines' standard deviation (see :func:`auto_centres`)
AUTO_CENTRE_SHIFT = 0.5


def auto_centres(x: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> tuple[bool, dict]:
    """Whether ``input_norm: auto`` centres features ``x``, and the statistics it decided on.

    For unit rows ``u`` with mean ``μ``, ``|μ|²`` is the mean cosine of two random rows: the
    shift a common direction adds to every pair. A well-centred extractor (ArcFace-trained
    ones: ``|μ|² ≈ 0.02``) has a mean that is mostly a property of the dataset it was measured
    on (the training mean then points elsewhere than a test set's, and removing it *adds* a
    shift there); features with a structural offset (ReLU or pooled features, ``|μ|² ≈ 0.1-0.4``)
    share it across datasets and every random projection mostly sees it. Centre when the
    shift exceeds :data:`AUTO_CENTRE_SHIFT` standard deviations of the centred features'
    pairwise cosines."""
    u = np.asarray(x, np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    mean = u.mean(axis=0)
    centred = u - mean
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(u), (2, n_pairs))
    keep = i != j
    spread = float(np.std(np.sum(centred[i[keep]] * centred[j[keep]], axis=1))) if keep.any() else 0.0
    shift = float(mean @ mean)
    return shift > AUTO_CENTRE_SHIFT * spread, {"common_cosine": shift, "centred_cosine_std": spread}


def fit_input_normalization(x: np.ndarray, mode: str, shrinkage: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, transform)`` of :class:`InputNormalization` fitted on training embeddings ``x``.

    ``"none"``/``"l2"``: zero mean, identity; ``"center"``: the mean of the L2-normalised
    rows, identity; ``"auto"``: ``"center"`` or ``"none"`` as :func:`auto_centres` decides; ``"whiten"``: that mean and the ZCA whitening
    ``V diag(1/sqrt(λ + s·mean λ)) Vᵀ`` of the centred rows' covariance (eigenpairs λ, V),
    shrunk by ``s = shrinkage`` so that directions of almost no variance are not blown up.
    The transform is scaled to unit spectral norm (the output is re-normalised anyway).
    """
    if mode not in INPUT_NORMS:
        raise ConfigError(f"input_norm {mode!r} is not one of {list(INPUT_NORMS)}")
    x = np.asarray(x, np.float64)
    dim = x.shape[1]
    if mode == "auto":
        mode = "center" if auto_centres(x)[0] else "none"
    if mode in ("none", "l2"):
        return np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0)
    if mode == "center":
        return mean.astype(np.float32), np.eye(dim, dtype=np.float32)
    centred = unit - mean
    lam, vec = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
    lam = np.maximum(lam, 0.0)
    scale = 1.0 / np.sqrt(lam + shrinkage * max(lam.mean(), 1e-12))
    transform = (vec * scale) @ vec.T
    return mean.astype(np.float32), (transform / scale.max()).astype(np.float32)


@keras.saving.register_keras_serializable(package="iomface")
class InputNormalization(keras.layers.Layer):
    """Any extractor's features → the hashing head's input: ``u = x / ‖x‖``, then
    ``z = (u − mean) · transform``, re-normalised to unit length.

    ``mean`` and ``transform`` are fixed (non-trainable) weights fitted on the training
    embeddings by :func:`fit_input_normalization` and saved with the hasher, so the scale,
    offset and anisotropy of the features do not matter to the learned projection."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.mean = self.add_weight(shape=(self.dim,), initializer="zeros", trainable=False, name="mean")
        self.transform = self.add_weight(shape=(self.dim, self.dim), initializer="identity",
                                         trainable=False, name="transform")

    def set_statistics(self, mean: np.ndarray, transform: np.ndarray) -> None:
        """Load fitted statistics (see :func:`fit_input_normalization`)."""
        self.mean.assign(np.asarray(mean, np.float32))
        self.transform.assign(np.asarray(transform, np.float32))

    @staticmethod
    def _unit(x):
        return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-24))

    def call(self, x):
        z = ops.matmul(self._unit(ops.cast(x, "float32")) - self.mean, self.transform)
        return self._unit(z)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


_HIDDEN = re.compile(r"^(T?)([0-9])$")


def parse_hidden_layer_remark(remark) -> tuple[int, str]:
    """``hidden_layer_remark`` → (number of hidden layers, activation).

    ``'0'`` (or empty): none; ``'1'``..``'9'``: that many Dense+BatchNorm+PReLU layers;
    ``'T1'``..``'T9'``: the same with tanh activations.
    """
    text = "0" if remark in (None, "") else str(remark).strip()
    match = _HIDDEN.match(text)
    if not match:
        raise ConfigError(f"hidden_layer_remark: {remark!r} is not one of '0'..'9' or 'T1'..'T9'")
    return int(match.group(2)), "tanh" if match.group(1) else "prelu"


PROJECTION_INITS = ("gaussian", "orthogonal")


def group_orthogonal(dim: int, m: int, q: int, seed: int) -> np.ndarray:
    """(dim, m·q) float32 projection whose q columns of each group are orthonormal directions
    and whose groups tile successive random rotations of R^dim (``dim // q`` groups a rotation),
    scaled by ``sqrt(dim)`` so that logits of unit inputs have the Gaussian init's scale.

    Gaussian columns differ in length (by about ``1/sqrt(2·dim)``), which tilts each group's
    argmax towards its longest column, and two groups of Gaussian columns are correlated by
    chance; these columns are all of one length and groups drawn from one rotation are
    orthogonal. Where ``dim < q`` no q directions are orthogonal: columns are unit-length
    Gaussian directions."""
    rng = np.random.default_rng([int(seed), 0x0A7])
    if dim < q:
        w = rng.normal(size=(dim, m * q))
        return (w / np.linalg.norm(w, axis=0) * np.sqrt(dim)).astype(np.float32)
    per_rotation = dim // q
    blocks = []
    for start in range(0, m, per_rotation):
        rotation, r = np.linalg.qr(rng.normal(size=(dim, dim)))
        rotation *= np.sign(np.diag(r))          # a uniformly random rotation (Haar)
        blocks.append(rotation[:, :min(per_rotation, m - start) * q])
    return (np.concatenate(blocks, axis=1) * np.sqrt(dim)).astype(np.float32)


@keras.saving.register_keras_serializable(package="iomface")
class GroupOrthogonal(keras.initializers.Initializer):
    """Keras initializer of :func:`group_orthogonal` for a (dim, m·q) kernel."""

    def __init__(self, q: int, seed: int = 0):
        self.q, self.seed = int(q), int(seed)

    def __call__(self, shape, dtype=None):
        dim, units = shape
        return keras.ops.convert_to_tensor(group_orthogonal(dim, units // self.q, self.q, self.seed),
                                           dtype=dtype or "float32")

    def get_config(self):
        return {"q": self.q, "seed": self.seed}


#: the dtype of every layer of the hashing network, whatever the global dtype policy
#: (a caller's ``mixed_bfloat16`` policy would otherwise change the trained hasher and its codes)
NETWORK_DTYPE = "float32"


def layer_seed(seed: int, *path: int) -> int:
    """A Keras initializer seed for one layer, derived from the training ``seed`` alone
    (not from Python's global RNG, which Keras draws on for an unseeded initializer)."""
    return int(np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(1)[0] & 0x7FFFFFFF)


def hidden_block(units: int, activation: str, name: str, seed: int | None = None) -> list:
    """One hidden layer of the hashing network (Glorot-uniform kernel seeded by ``seed``)."""
    dtype = NETWORK_DTYPE
    act = (keras.layers.PReLU(name=f"{name}_prelu", dtype=dtype) if activation == "prelu"
           else keras.layers.Activation("tanh", name=f"{name}_tanh", dtype=dtype))
    return [keras.layers.Dense(units, use_bias=False, name=f"{name}_dense", dtype=dtype,
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
            keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype), act]


@keras.saving.register_keras_serializable(package="iomface")
class SoftmaxOut(keras.layers.Layer):
    """IoM head: (B, m*q) projections → per group softmax(z/T) and the soft code.

    Returns ``(soft_codes, probs)``: ``probs`` (B, m, q) float32 and ``soft_codes`` (B, m),
    the expected index Σ_j j·p_j in [0, q−1], a differentiable stand-in for the argmax.
    """

    def __init__(self, m: int, q: int, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.m, self.q, self.temperature = int(m), int(q), float(temperature)

    def call(self, z):
        z = ops.reshape(ops.cast(z, "float32"), (-1, self.m, self.q))
        probs = ops.softmax(z / self.temperature, axis=-1)
        soft_codes = ops.sum(probs * ops.arange(self.q, dtype="float32"), axis=-1)
        return soft_codes, probs

    def get_config(self):
        return {**super().get_config(), "m": self.m, "q": self.q, "temperature": self.temperature}


def build_hashing_network(dim: int, m: int, q: int, permutation=None, hidden_layer_remark="0",
                          hidden_units: int | None = None, temperature: float = 1.0,
                          seed: int = 0, input_norm: str = "none",
                          projection_init: str = "gaussian") -> keras.Model:
    """Embedding (B, dim) → {"logits" (B, m*q), "soft_codes" (B, m), "probs" (B, m, q),
    "features" (B, dim)}; ``features`` is the input as the projection's first layer sees it
    (permuted and normalised: the geometry the distillation term teaches the codes).

    The IoM projection is a Dense layer of m·q units with N(0, 1) initial weights (as in
    the seed project; ``projection_init="gaussian"``) or :func:`group_orthogonal` ones
    (``"orthogonal"``), preceded by the key permutation, the input normalisation (any mode
    but ``"none"``: an :class:`InputNormalization` layer, statistics set after fitting)
    and the optional hidden layers.

    Every initial weight is a function of ``seed`` alone and every layer computes in
    float32 (:data:`NETWORK_DTYPE`) under any global dtype policy, so that training is
    reproducible (see :func:`iom.hashing.train.train_hasher`).
    """
    if input_norm not in INPUT_NORMS:
        raise ConfigError(f"input_norm {input_norm!r} is not one of {list(INPUT_NORMS)}")
    if projection_init not in PROJECTION_INITS:
        raise ConfigError(f"projection_init {projection_init!r} is not one of {list(PROJECTION_INITS)}")
    dtype = NETWORK_DTYPE
    inputs = keras.Input((dim,), name="embedding", dtype=dtype)
    x = PermutationLayer(np.arange(dim) if permutation is None else permutation, name="perm_layer",
                         dtype=dtype)(inputs)
    if input_norm != "none":
        x = InputNormalization(dim, name="input_norm", dtype=dtype)(x)
    features = x
    n_hidden, activation = parse_hidden_layer_remark(hidden_layer_remark)
    for i in range(n_hidden):
        for layer in hidden_block(hidden_units or dim, activation, f"hidden{i + 1}", layer_seed(seed, 1, i)):
            x = layer(x)
    init = (keras.initializers.RandomNormal(0.0, 1.0, seed=seed) if projection_init == "gaussian"
            else GroupOrthogonal(q, seed))
    logits = keras.layers.Dense(m * q, name="IoMProjection", dtype=dtype, kernel_initializer=init)(x)
    soft_codes, probs = SoftmaxOut(m, q, temperature, name="IoMHead", dtype=dtype)(logits)
    return keras.Model(inputs, {"logits": logits, "soft_codes": soft_codes, "probs": probs,
                                "features": features},
                       name="deep_iom")
