"""Head-only stage-2 training: the hashing network on cached embeddings, with its loss terms
logged and the guard applied (:func:`train_hasher`).

Shared by the entry point :func:`iom.hashing.train.train_stage2` and by end-to-end training
(:mod:`iom.hashing.end_to_end`, which warms the head up here and reuses its trainer and helpers).
"""

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

    def loss_terms(self, labels, outputs) -> dict:
        """Each configured loss term (unweighted) for one batch (the distillation term's
        teacher is the cosine of ``outputs["features"]``, the normalised input)."""
        s = self.settings
        codes, probs = outputs["soft_codes"], outputs["probs"]
        metric_input = probs if s.metric_loss in L.PROBABILITY_LOSSES else codes
        terms = {}
        if s.metric_weight:
            terms["metric"] = self._metric_loss(labels, metric_input, s.margin)
        if s.distillation:
            terms["distillation"] = L.similarity_distillation_loss(outputs["features"], probs,
                                                                   *self.distillation_map)
        if s.code_balance:
            terms["code_balance"] = L.code_balance_loss(probs)
        if s.quantization:
            terms["quantization"] = L.quantization_loss(codes)
        if s.bin_lut != "none":
            terms["bin_lut"] = L.bin_lut_loss(probs, s.bin_lut)
        return terms

    def weighted_loss(self, labels, outputs):
        """The weighted sum of :meth:`loss_terms`, each term tracked."""
        s = self.settings
        weights = {"metric": s.metric_weight, "code_balance": s.code_balance, "quantization": s.quantization,
                   "bin_lut": s.bin_lut_weight, "distillation": s.distillation}
        total = 0.0
        for name, value in self.loss_terms(labels, outputs).items():
            self._trackers[name].update_state(value)
            total = total + weights[name] * value
        return total

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.weighted_loss(y, y_pred)

    @property
    def term_metrics(self) -> list:
        """The trackers of the loss terms."""
        return list(self._trackers.values())

    @property
    def metrics(self):
        return super().metrics + self.term_metrics


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
    """The fixed ``(α, β)`` of the distillation term: agreement of the untrained head on the
    cosine of its normalised input (``features``), over every pair of ``n`` training embeddings
    drawn with ``seed``."""
    rng = np.random.default_rng([int(seed), 7])
    sample = np.asarray(embeddings, np.float32)[rng.choice(len(embeddings), min(n, len(embeddings)),
                                                           replace=False)]
    out = network(sample, training=False)
    return L.fit_distillation_map(keras.ops.convert_to_numpy(out["features"]),
                                  keras.ops.convert_to_numpy(out["probs"]))


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


def train_hasher(cfg, x: np.ndarray, y: np.ndarray, checkpoint_root: str = "checkpoints",
                 log_root: str = "logs", progress: bool = True, mirrored: np.ndarray | None = None):
    """:func:`~iom.hashing.train.train_stage2` on given training embeddings ``x`` (n, d) and labels ``y``
    (``mirrored`` marks rows of mirror images, left out of the guard's validation pairs).

    ``validation_identities`` of them are held out (:func:`iom.hashing.guard.validation_split`);
    after training the head is measured against random IoM on them and what ships follows
    ``if_not_better`` (:mod:`iom.hashing.guard`); the verdict, the figures and any collapse seen
    during training (:mod:`iom.hashing.monitor`) are printed and kept in ``hasher.json``
    (``spec["training_report"]``).

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
        return _train_hasher(cfg, x, y, checkpoint_root, log_root, progress, mirrored)


def _train_hasher(cfg, x, y, checkpoint_root, log_root, progress, mirrored):
    from arcface.callbacks import ScalarLog, TrainLogCallback
    from iom.hashing.guard import validation_split
    from iom.hashing.hasher import DeepIoMHasher
    from iom.hashing.sampler import PKSampler

    keras.utils.set_random_seed(cfg["seed"])
    x, y = np.asarray(x, np.float32), np.asarray(y)
    train_rows, val_rows = validation_split(y, cfg["validation_identities"], cfg["classes_per_batch"])
    if mirrored is not None:
        val_rows &= ~np.asarray(mirrored, bool)
    x_val, y_val = x[val_rows], y[val_rows]
    x, y = x[train_rows], y[train_rows]
    hasher = DeepIoMHasher.from_config(cfg, x.shape[1])
    hasher.fit_input_normalization(x)
    initial_weights = hasher.network.get_weights()
    sampler = PKSampler(y, cfg["classes_per_batch"], cfg["samples_per_class"], seed=cfg["seed"])
    steps = cfg["max_steps"] or int(np.ceil(cfg["epochs"] * len(x) / sampler.batch_size))
    chunk = min(cfg["save_steps"], steps)
    chunks = int(np.ceil(steps / chunk))
    settings = loss_settings(cfg)
    dmap = distillation_map(hasher.network, x, cfg["seed"]) if settings.distillation else None
    trainer = HashingTrainer(hasher.network, settings, dmap)
    optimizer = build_optimizer(cfg)
    trainer.compile(optimizer=optimizer)
    folder = f"{checkpoint_root}/{cfg['sub_name']}"
    log = ScalarLog(f"{log_root}/{cfg['sub_name']}")
    print(f"[stage 2] {len(x)} embeddings of {len(np.unique(y))} identities, dimension {x.shape[1]}; "
          f"m={cfg['m']} q={cfg['q']}; {chunks * chunk} steps of {sampler.batch_size} "
          f"({cfg['classes_per_batch']} classes x {cfg['samples_per_class']}); "
          f"{len(np.unique(y_val))} identities held out for the guard")
    callbacks = [TrainLogCallback(log, chunk, float(cfg["base_lr"]), every=min(50, chunk)),
                 _SaveHasher(hasher, folder)]
    monitor = _collapse_monitor(cfg, hasher, x, dmap) if cfg["collapse_check"] else None
    if monitor is not None:
        callbacks.insert(0, monitor)
    history = trainer.fit(batch_stream(x, y, sampler), steps_per_epoch=chunk, epochs=chunks,
                          verbose=1 if progress else 0, shuffle=False, callbacks=callbacks)
    report = {"collapse": monitor.collapse if monitor is not None else None,
              "diagnostics": monitor.diagnostics if monitor is not None else None}
    if len(np.unique(y_val)) >= 2:
        hasher = _apply_guard(cfg, hasher, initial_weights, x_val, y_val, report)
    else:
        print("[stage 2] guard off (validation_identities is 0, or too few identities to hold any out): "
              "the learned head is not checked against random IoM", flush=True)
    hasher.spec["training_report"] = _plain(report)
    hasher.save(folder)
    print(f"[stage 2] saved the hasher to {folder}")
    return hasher, history.history


def _collapse_monitor(cfg, hasher, x, dmap):
    """A :class:`~iom.hashing.monitor.CollapseMonitor` on a fixed probe of ``x``, with the
    diagnostics measured before training."""
    from iom.hashing import monitor as M

    probe = x[np.random.default_rng([int(cfg["seed"]), 11]).choice(len(x), min(512, len(x)), replace=False)]
    out = hasher.network(probe, training=False)
    health = M.code_health(keras.ops.convert_to_numpy(out["probs"]))
    normalised = keras.ops.convert_to_numpy(out["features"])
    fit = None
    if dmap is not None:
        fit = L.distillation_fit_quality(normalised, keras.ops.convert_to_numpy(out["probs"]), *dmap)
    diag = M.feature_diagnostics(probe, normalised, health, fit)
    return M.CollapseMonitor(hasher.network, probe, cfg["q"], cfg, diag,
                             every=min(100, max(1, cfg["save_steps"] // 2)),
                             patience=min(500, max(200, (cfg["max_steps"] or 1000) // 4)))


def _apply_guard(cfg, hasher, initial_weights, x_val, y_val, report):
    """Measure the trained head against random IoM on the validation identities; ship per
    ``if_not_better``; the verdict goes into ``report``. Returns the hasher that ships."""
    from iom.hashing.guard import guard_report

    collapse = report.get("collapse")
    collapsed = bool(collapse) and "recovered_at" not in collapse
    decision = guard_report(hasher, initial_weights, x_val, y_val, cfg["guard_keys"], cfg["if_not_better"], collapsed)
    banner = "=" * 100
    print(f"{banner}\n[stage 2] guard: {decision.message}\n{banner}" if decision.message.startswith("WARNING")
          else f"[stage 2] guard: {decision.message}", flush=True)
    report.update(guard=decision.report, learned_wins=decision.learned_wins, shipped=decision.shipped)
    if decision.shipped == "learned":
        return hasher
    if decision.shipped == "random_normalised":
        hasher.network.set_weights(initial_weights)
        return hasher
    from iom.hashing.hasher import DeepIoMHasher

    spec = {k: v for k, v in hasher.spec.items() if k != "input_norm_auto"}
    plain = DeepIoMHasher({**spec, "input_norm": "none"}, seed=cfg["seed"])
    projection = dict(zip([w.path for w in hasher.network.weights], initial_weights))
    for w in plain.network.weights:
        w.assign(projection[w.path])
    return plain


def _plain(obj):
    """JSON-ready copy (NumPy scalars to Python)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
