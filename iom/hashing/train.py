"""Stage-2 training: the hashing network on cached embeddings, with its loss terms logged."""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from arcface.errors import ConfigError
from iom.hashing import losses as L


@dataclass(frozen=True)
class LossSettings:
    """Which terms make the stage-2 loss and their weights (config keys in brackets)."""

    metric_loss: str = "batch_hard_arc_triplet_loss"   # loss_fun
    margin: float = 0.0                                # triplet_margin
    code_balance: float = 0.0                          # code_balance_loss (weight; 0 = off)
    quantization: float = 0.0                          # quanti (weight; 0 = off)
    bin_lut: str = "none"                              # bin_lut_loss
    bin_lut_weight: float = 1.0
    metric_weight: float = 1.0                         # metric_loss_weight
    distillation: float = 0.0                          # distill_loss (weight; 0 = off)

    def terms(self) -> list[str]:
        names = ["metric"] if self.metric_weight else []
        if self.code_balance:
            names.append("code_balance")
        if self.quantization:
            names.append("quantization")
        if self.bin_lut != "none":
            names.append("bin_lut")
        if self.distillation:
            names.append("distillation")
        if not names:
            raise ConfigError("the stage-2 loss has no term: metric_loss_weight is 0 and no other "
                              "term (distill_loss, code_balance_loss, quanti, bin_lut_loss) is on")
        return names


class HashingTrainer(keras.Model):
    """Wraps the hashing network; its loss is the weighted sum of the configured terms,
    each tracked as a metric (so it reaches the logs and TensorBoard)."""

    def __init__(self, network: keras.Model, settings: LossSettings,
                 distillation_map: tuple[float, float] | None = None, **kwargs):
        from iom.hashing.layers import NETWORK_DTYPE

        kwargs.setdefault("dtype", NETWORK_DTYPE)  # a global mixed policy would cast the batches
        super().__init__(**kwargs)
        self.network = network
        self.settings = settings
        if settings.distillation and distillation_map is None:
            raise ConfigError("distill_loss is on but no distillation map was fitted")
        self.distillation_map = distillation_map
        self._metric_loss = L.get_metric_loss(settings.metric_loss)
        L.bin_lut_loss(ops.ones((1, 1, 2)) / 2, settings.bin_lut)  # raises ConfigError on a bad kind
        self._trackers = {name: keras.metrics.Mean(name=name) for name in settings.terms()}

    def call(self, x, training=False):
        return self.network(x, training=training)

    def loss_terms(self, labels, outputs, embeddings=None) -> dict:
        """Each configured loss term (unweighted) for one batch (``embeddings``: the batch's
        input, needed by the distillation term)."""
        s = self.settings
        codes, probs = outputs["soft_codes"], outputs["probs"]
        metric_input = probs if s.metric_loss in L.PROBABILITY_LOSSES else codes
        terms = {}
        if s.metric_weight:
            terms["metric"] = self._metric_loss(labels, metric_input, s.margin)
        if s.distillation:
            terms["distillation"] = L.similarity_distillation_loss(embeddings, probs, *self.distillation_map)
        if s.code_balance:
            terms["code_balance"] = L.code_balance_loss(probs)
        if s.quantization:
            terms["quantization"] = L.quantization_loss(codes)
        if s.bin_lut != "none":
            terms["bin_lut"] = L.bin_lut_loss(probs, s.bin_lut)
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        s = self.settings
        weights = {"metric": s.metric_weight, "code_balance": s.code_balance, "quantization": s.quantization,
                   "bin_lut": s.bin_lut_weight, "distillation": s.distillation}
        terms = self.loss_terms(y, y_pred, x)
        total = 0.0
        for name, value in terms.items():
            self._trackers[name].update_state(value)
            total = total + weights[name] * value
        return total

    @property
    def metrics(self):
        return super().metrics + list(self._trackers.values())


def batch_stream(embeddings: np.ndarray, labels: np.ndarray, sampler, start_step: int = 0):
    """Endless (embeddings, labels) P×K batches from step ``start_step`` on."""
    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels, np.int32)
    for step in itertools.count(start_step):
        idx = sampler.batch(step)
        yield x[idx], y[idx]


def build_optimizer(cfg) -> keras.optimizers.Optimizer:
    """Adam (default), AdamW or SGD with momentum 0.9 at ``base_lr``."""
    lr, wd = float(cfg["base_lr"]), float(cfg["w_decay"])
    if cfg["optimizer"] == "adam":
        return keras.optimizers.Adam(lr)
    if cfg["optimizer"] == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd)
    return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=wd or None)


def loss_settings(cfg) -> LossSettings:
    """The :class:`LossSettings` of a stage-2 config."""
    return LossSettings(cfg["loss_fun"], float(cfg["triplet_margin"]), float(cfg["code_balance_loss"]),
                        float(cfg["quanti"]), cfg["bin_lut_loss"], float(cfg["bin_lut_weight"]),
                        float(cfg["metric_loss_weight"]), float(cfg["distill_loss"]))


def distillation_map(network: keras.Model, embeddings: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    """The fixed ``(α, β)`` of the distillation term: agreement on cosine of the untrained
    head over every pair of ``n`` training embeddings drawn with ``seed``."""
    rng = np.random.default_rng([int(seed), 7])
    sample = np.asarray(embeddings, np.float32)[rng.choice(len(embeddings), min(n, len(embeddings)),
                                                           replace=False)]
    probs = np.asarray(keras.ops.convert_to_numpy(network(sample, training=False)["probs"]))
    return L.fit_distillation_map(sample, probs)


@contextlib.contextmanager
def deterministic_ops():
    """Within the block, backend ops give the same bits for the same inputs.

    TensorFlow: op determinism is enabled (``tf.config.experimental.enable_op_determinism``;
    TensorFlow is imported only on that backend) and put back as it was afterwards, so the
    rest of the process is not slowed or restricted by it. JAX on CPU is deterministic as
    it is; on a GPU, XLA is only with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` set
    before JAX starts (a flag that cannot be set from here), so a warning says so.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.default_backend() == "gpu" and "xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", ""):
            warnings.warn("stage-2 training on a JAX GPU is reproducible only with "
                          "XLA_FLAGS=--xla_gpu_deterministic_ops=true set before JAX starts", stacklevel=3)
    if backend != "tensorflow":
        yield
        return
    import tensorflow as tf

    try:  # the state to put back (no public API reads it or turns it off)
        from tensorflow.python.framework import config as tf_config

        was_on, turn_off = tf_config.is_op_determinism_enabled(), tf_config.disable_op_determinism
    except (ImportError, AttributeError):
        was_on, turn_off = True, None  # cannot restore: leave it on
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            turn_off()


class _SaveHasher(keras.callbacks.Callback):
    """Saves the hasher into the run folder at the end of every chunk of ``save_steps``."""

    def __init__(self, hasher, folder: str):
        super().__init__()
        self.hasher, self.folder = hasher, folder

    def on_epoch_end(self, epoch, logs=None):
        _ = self.model  # on JAX this syncs the trained state into the variables
        self.hasher.save(self.folder)


def train_stage2(cfg, checkpoint_root: str = "checkpoints", log_root: str = "logs",
                 progress: bool = True):
    """Train the deep IoM head of ``cfg`` on cached embeddings; returns ``(hasher, history)``.

    The hasher is saved to ``<checkpoint_root>/<sub_name>/`` every ``save_steps`` and at
    the end; each loss term is logged to ``<log_root>/<sub_name>/`` (JSON lines, and
    TensorBoard where TensorFlow is installed). Training is ``max_steps`` steps, or
    ``epochs`` passes over the training embeddings, rounded up to whole ``save_steps``.
    """
    from iom.features import training_embeddings

    x, y = training_embeddings(cfg)
    return train_hasher(cfg, x, y, checkpoint_root, log_root, progress)


def train_hasher(cfg, x: np.ndarray, y: np.ndarray, checkpoint_root: str = "checkpoints",
                 log_root: str = "logs", progress: bool = True):
    """:func:`train_stage2` on given training embeddings ``x`` (n, d) and labels ``y``.

    Reproducible: the same config (``seed`` included) and data give the same hasher bit for
    bit on one machine, backend and software stack, whatever ran before in the process.
    Every random draw is derived from ``cfg["seed"]``: the initial weights
    (:func:`~iom.hashing.layers.build_hashing_network`), the P×K batches (batch ``i`` from
    ``(seed, i)``, in order: no shuffling) and the distillation sample; the network is
    float32 under any global dtype policy, and backend ops run deterministically
    (:func:`deterministic_ops`). Python's, NumPy's and the backend's global seeds are
    also reset to ``seed``, for any draw that does not take a seed.
    """
    with deterministic_ops():
        return _train_hasher(cfg, x, y, checkpoint_root, log_root, progress)


def _train_hasher(cfg, x, y, checkpoint_root, log_root, progress):
    from arcface.callbacks import ScalarLog, TrainLogCallback
    from iom.hashing.hasher import DeepIoMHasher
    from iom.hashing.sampler import PKSampler

    keras.utils.set_random_seed(cfg["seed"])
    hasher = DeepIoMHasher.from_config(cfg, x.shape[1])
    hasher.fit_input_normalization(x)
    sampler = PKSampler(y, cfg["classes_per_batch"], cfg["samples_per_class"], seed=cfg["seed"])
    steps = cfg["max_steps"] or int(np.ceil(cfg["epochs"] * len(x) / sampler.batch_size))
    chunk = min(cfg["save_steps"], steps)
    chunks = int(np.ceil(steps / chunk))
    settings = loss_settings(cfg)
    trainer = HashingTrainer(hasher.network, settings,
                             distillation_map(hasher.network, x, cfg["seed"]) if settings.distillation else None)
    optimizer = build_optimizer(cfg)
    trainer.compile(optimizer=optimizer)
    folder = f"{checkpoint_root}/{cfg['sub_name']}"
    log = ScalarLog(f"{log_root}/{cfg['sub_name']}")
    print(f"[stage 2] {len(x)} embeddings of {len(np.unique(y))} identities, dimension {x.shape[1]}; "
          f"m={cfg['m']} q={cfg['q']}; {chunks * chunk} steps of {sampler.batch_size} "
          f"({cfg['classes_per_batch']} classes x {cfg['samples_per_class']})")
    history = trainer.fit(batch_stream(x, y, sampler), steps_per_epoch=chunk, epochs=chunks,
                          verbose=1 if progress else 0, shuffle=False,
                          callbacks=[TrainLogCallback(log, chunk, float(cfg["base_lr"]), every=min(50, chunk)),
                                     _SaveHasher(hasher, folder)])
    print(f"[stage 2] saved the hasher to {folder}")
    return hasher, history.history
