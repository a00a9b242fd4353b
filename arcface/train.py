"""Stage-1 training: one function from a validated config to checkpoints and logs.

``train(cfg)`` builds backbone + cosine head, the margin loss, the optimizer and its
learning-rate schedule, resumes from the latest checkpoint of ``checkpoints/<sub_name>``
(same step, same optimizer state, same data order) or, on a fresh run, initialises the
backbone from ``pretrained`` (fine-tuning), and runs ``model.fit`` in chunks of
``save_steps`` steps, checkpointing after each chunk.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import keras

from arcface.errors import CheckpointError, ConfigError


@dataclass
class TrainPlan:
    """How many steps a run takes, derived from the data and the config."""

    num_samples: int
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    steps_per_chunk: int

    @property
    def num_chunks(self) -> int:
        return self.total_steps // self.steps_per_chunk


def make_plan(cfg, source) -> TrainPlan:
    """Check the data against ``num_classes``/``num_samples`` and derive the step counts.

    The total is rounded up to a whole number of ``save_steps`` chunks so every
    checkpoint is a resumable boundary."""
    n, c = len(source), int(source.num_classes)
    if cfg["num_classes"] is not None and cfg["num_classes"] != c:
        raise ConfigError(f"{cfg.source}: key 'num_classes' is {cfg['num_classes']} but "
                          f"{cfg['train_dataset']} has {c} identities")
    if cfg["num_samples"] is not None and cfg["num_samples"] != n:
        raise ConfigError(f"{cfg.source}: key 'num_samples' is {cfg['num_samples']} but "
                          f"{cfg['train_dataset']} has {n} images")
    steps_per_epoch = n // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.source}: key 'batch_size' ({cfg['batch_size']}) exceeds the "
                          f"{n} training images")
    chunk = cfg["save_steps"]
    wanted = cfg["epochs"] * steps_per_epoch
    if cfg["max_steps"] is not None:
        wanted = min(wanted, cfg["max_steps"])
    total = math.ceil(wanted / chunk) * chunk
    return TrainPlan(n, c, steps_per_epoch, total, chunk)


def build_lr_schedule(cfg, total_steps: int):
    """Constant, cosine (to 0) or piecewise-constant decay, each with linear warm-up."""
    base, warm = float(cfg["base_lr"]), int(cfg["warmup_steps"])
    kind = cfg["lr_schedule"]
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=base * 1e-3 if warm else base, decay_steps=max(1, total_steps - warm),
            warmup_target=base if warm else None, warmup_steps=warm)
    if kind == "piecewise":
        values = [base * cfg["lr_decay"] ** i for i in range(len(cfg["lr_steps"]) + 1)]
        # the rate changes AT each listed step (Keras switches after a boundary, hence -1)
        inner = keras.optimizers.schedules.PiecewiseConstantDecay([s - 1 for s in cfg["lr_steps"]], values)
    else:
        inner = keras.optimizers.schedules.PiecewiseConstantDecay([total_steps + 1], [base, base])
    return WarmupSchedule(inner, warm, base) if warm else inner


@keras.saving.register_keras_serializable(package="iomface")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ~0 to ``target`` over ``warmup_steps``, then ``inner``."""

    def __init__(self, inner, warmup_steps: int, target: float):
        self.inner = inner
        self.warmup_steps = int(warmup_steps)
        self.target = float(target)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.target * (step + 1.0) / float(self.warmup_steps)
        return keras.ops.where(step < self.warmup_steps, warm, self.inner(step))

    def get_config(self):
        return {"inner": keras.optimizers.schedules.serialize(self.inner),
                "warmup_steps": self.warmup_steps, "target": self.target}


def build_optimizer(cfg, lr_schedule):
    name, wd = cfg["optimizer"], float(cfg["w_decay"]) or None
    if name == "sgd":
        return keras.optimizers.SGD(lr_schedule, momentum=float(cfg["momentum"]), weight_decay=wd)
    if name == "adam":
        return keras.optimizers.Adam(lr_schedule, weight_decay=wd)
    return keras.optimizers.AdamW(lr_schedule, weight_decay=wd or 0.0)


def build_models(cfg, num_classes: int):
    """``(training_model, backbone)``: uint8 image → augmentation → backbone → cosine head."""
    from arcface.augment import augmentation_layers
    from arcface.heads import CosineHead
    from arcface.models import build_backbone_from_config

    size = cfg["input_size"]
    backbone = build_backbone_from_config(cfg)
    images = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = images
    for layer in augmentation_layers(cfg):
        x = layer(x)
    embedding = backbone(x)
    cosine = CosineHead(num_classes, name="cosine_head")(embedding)
    model = keras.Model(images, cosine, name=f"{cfg['sub_name']}_train")
    return model, backbone


def freeze_batch_norm(model) -> int:
    """Set every BatchNormalization layer inside ``model`` (nested ones too) to
    ``trainable = False``: Keras 3 then runs it in inference mode, so its moving statistics,
    gamma and beta stay as loaded. Returns how many layers were frozen."""
    from arcface.backbones.common import iter_layers

    frozen = 0
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


def load_pretrained_backbone(cfg, backbone) -> str:
    """Load ``cfg['pretrained']`` into ``backbone``; return the weights file used.

    The value is resolved by :func:`arcface.models.resolve_weights` (a shipped model's
    name, a ``.weights.h5``, a checkpoint folder or a run folder). A missing path or
    unknown name raises :class:`ConfigError`; a file that does not hold exactly this
    backbone's weights (``backbone_type``, ``embd_shape``) raises :class:`CheckpointError`.
    Both name the key ``pretrained`` and the path."""
    from arcface.models import load_weights_exactly, resolve_weights
    from arcface.pretrained import list_pretrained

    value = cfg["pretrained"]
    where = f"{cfg.source}: key 'pretrained' ({value!r})"
    try:
        weights = resolve_weights(cfg, value)
    except (CheckpointError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}; or the name of a shipped model "
                          f"({', '.join(list_pretrained()) or 'none shipped'})") from None
    if not weights.endswith(".weights.h5"):
        raise ConfigError(f"{where}: {weights} is not a Keras backbone .weights.h5 file")
    load_weights_exactly(backbone, weights, f"{where}: {weights} does not fit backbone_type "
                                            f"{cfg['backbone_type']} with embd_shape {cfg['embd_shape']}")
    return weights


@dataclass
class TrainingSetup:
    """A compiled training model, ready to fit from ``start_step``."""

    model: Any
    backbone: Any
    schedule: Any
    manager: Any
    start_step: int
    best_accuracy: float
    #: the weights file the backbone was initialised from (this run, or the run resumed)
    pretrained: str | None


def prepare_training(cfg, num_classes: int, total_steps: int, checkpoint_root: str = "checkpoints",
                     mode: str = "fit", plan=None) -> TrainingSetup:
    """Seed, build and compile the training model, then resume the latest checkpoint of
    ``<checkpoint_root>/<sub_name>`` or, when there is none, load ``pretrained`` into the
    backbone (the head stays freshly initialised). Writes nothing. Call it under the
    config's dtype policy and inside the :func:`~arcface.distribution.distribution_scope`
    of ``plan`` (a :class:`~arcface.distribution.DistributionPlan`; default one device),
    as :func:`train` does."""
    from arcface.checkpoint import CheckpointManager
    from arcface.distribution import synchronize_batch_norm
    from arcface.heads import loss_from_config

    keras.utils.set_random_seed(cfg["seed"])
    model, backbone = build_models(cfg, num_classes)
    if cfg["freeze_bn"]:
        frozen = freeze_batch_norm(backbone)
        print(f"[train] freeze_bn: {frozen} BatchNormalization layers run in inference mode")
    if plan is not None:
        synchronize_batch_norm(model, plan)
    schedule = build_lr_schedule(cfg, total_steps)
    model.compile(optimizer=build_optimizer(cfg, schedule), loss=loss_from_config(cfg),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  run_eagerly=(mode == "eager_tf"))
    model.optimizer.build(model.trainable_variables)

    manager = CheckpointManager(os.path.join(checkpoint_root, cfg["sub_name"]),
                                max_to_keep=cfg["keep_checkpoints"])
    start_step, best, pretrained = 0, -1.0, None
    latest = manager.latest()
    if latest:
        state = manager.restore(latest, model, model.optimizer)
        start_step = int(state["step"])
        pretrained = state.get("pretrained")
        if os.path.isdir(manager.best_path):
            best = float(manager.read_state(manager.best_path).get("best_accuracy", -1.0))
        print(f"[train] resumed from {latest} at step {start_step}")
        if cfg["pretrained"]:
            print(f"[train] pretrained {cfg['pretrained']!r} not loaded: resuming wins")
    elif cfg["pretrained"]:
        pretrained = load_pretrained_backbone(cfg, backbone)
        print(f"[train] backbone initialised from {pretrained}; the head starts fresh")
    return TrainingSetup(model, backbone, schedule, manager, start_step, best, pretrained)


def train(cfg, mode: str = "fit", checkpoint_root: str = "checkpoints", log_root: str = "logs",
          stop_after_chunks: int | None = None, verbose: int = 1) -> dict:
    """Train (or resume) the run described by ``cfg``; return a summary dict.

    ``mode="eager_tf"`` runs eagerly for debugging. ``stop_after_chunks`` ends the call
    early (after that many checkpoints), as an interruption would. The config's
    ``distribution`` / ``num_devices`` choose the devices (:mod:`arcface.distribution`).
    """
    from arcface.data.loader import open_image_source
    from arcface.distribution import distribution_scope, initialize_hosts, plan_distribution
    from arcface.verification import load_verification_sets

    if mode not in ("fit", "eager_tf"):
        raise ConfigError(f"--mode must be 'fit' or 'eager_tf', got {mode!r}")
    if not cfg["train_dataset"]:
        raise ConfigError(f"{cfg.source}: key 'train_dataset' is required for training")
    source = open_image_source(cfg["train_dataset"])
    plan = make_plan(cfg, source)
    pair_sets = load_verification_sets(cfg["test_dataset"])
    initialize_hosts()
    devices = plan_distribution(cfg)
    print(f"[train] {devices.describe()}")
    if devices.process_count > 1 and pair_sets:
        print(f"[train] verification during training is off on a multi-host run "
              f"({devices.process_count} hosts): evaluate the checkpoints with scripts/evaluate.py")
        pair_sets = {}

    prior_policy = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(cfg["mixed_precision"])
    try:
        with distribution_scope(devices):
            return _train_on(cfg, plan, devices, source, pair_sets, mode, checkpoint_root, log_root,
                             stop_after_chunks, verbose)
    finally:
        keras.mixed_precision.set_global_policy(prior_policy)


def _train_on(cfg, plan: TrainPlan, devices, source, pair_sets, mode, checkpoint_root, log_root,
              stop_after_chunks, verbose) -> dict:
    """:func:`train` inside its dtype policy and distribution scope."""
    from arcface.callbacks import (CheckpointCallback, ScalarLog, TrainLogCallback,
                                   VerificationCallback)
    from arcface.data.loader import make_train_loader
    from arcface.distribution import process_slice, variable_devices
    from arcface.embed import Embedder

    setup = prepare_training(cfg, plan.num_classes, plan.total_steps, checkpoint_root, mode, devices)
    model, backbone, schedule, manager = setup.model, setup.backbone, setup.schedule, setup.manager
    start_step, best = setup.start_step, setup.best_accuracy
    if start_step % plan.steps_per_chunk:
        raise ConfigError(f"{cfg.source}: checkpoint step {start_step} is not a multiple of "
                          f"'save_steps' ({plan.steps_per_chunk}); keep save_steps when resuming")
    initial_chunk = start_step // plan.steps_per_chunk
    last_chunk = plan.num_chunks if stop_after_chunks is None else \
        min(plan.num_chunks, initial_chunk + stop_after_chunks)
    summary = {"start_step": start_step, "total_steps": plan.total_steps,
               "steps_per_epoch": plan.steps_per_epoch, "num_classes": plan.num_classes,
               "num_samples": plan.num_samples, "pretrained": setup.pretrained,
               "devices": devices.replicas}
    if initial_chunk >= last_chunk:
        print(f"[train] nothing to do: step {start_step} of {plan.total_steps}")
        summary["end_step"] = start_step
        return summary

    loader = make_train_loader(source, cfg["batch_size"], cfg["seed"], start_step=start_step,
                               stop_step=last_chunk * plan.steps_per_chunk,
                               input_size=cfg["input_size"], workers=cfg["workers"],
                               center_crop=cfg["is_ccrop"],
                               rows=process_slice(cfg["batch_size"], devices))
    verification = None
    callbacks = []
    if devices.is_chief:  # on a multi-host run, process 0 alone writes logs and checkpoints
        log = ScalarLog(os.path.join(log_root, cfg["sub_name"]))
        embedder = Embedder(backbone, cfg["eval_batch_size"], cfg["input_size"], flip=cfg["flip_test"],
                            center_crop=cfg["is_ccrop"], workers=cfg["workers"])
        verification = VerificationCallback(pair_sets, embedder, cfg["eval_steps"], plan.steps_per_chunk,
                                            log, manager, backbone, best_accuracy=best)
        callbacks = [
            TrainLogCallback(log, plan.steps_per_chunk, schedule, every=min(10, cfg["save_steps"])),
            verification,
            CheckpointCallback(manager, backbone, plan.steps_per_chunk,
                               extra={"sub_name": cfg["sub_name"], "config": cfg.source,
                                      **({"pretrained": setup.pretrained} if setup.pretrained else {})}),
        ]
        if log.has_tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_root, cfg["sub_name"]),
                                                         update_freq=min(100, cfg["save_steps"])))
    if not hasattr(loader, "element_spec"):  # Keras takes Python iterators, not iterables
        loader = iter(loader)
    history = model.fit(loader, epochs=last_chunk, shuffle=False, initial_epoch=initial_chunk,
                        steps_per_epoch=plan.steps_per_chunk, callbacks=callbacks, verbose=verbose)
    summary["weight_devices"] = variable_devices(model.trainable_variables[0])
    summary["end_step"] = last_chunk * plan.steps_per_chunk
    summary["loss"] = [float(v) for v in history.history.get("loss", [])]
    summary["verification"] = verification.history if verification else {}
    summary["checkpoint"] = manager.latest()
    return summary
