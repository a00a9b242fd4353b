"""Training callbacks: checkpoints, verification with best-model keeping, scalar logs.

Keras "epochs" in :mod:`arcface.train` are chunks of ``save_steps`` steps, so the global
step of a batch is ``epoch * steps_per_chunk + batch + 1``: callbacks count steps
themselves instead of reading the optimizer (which would force a JAX state sync).
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np


class ScalarLog:
    """Scalars to ``<logdir>/metrics.jsonl`` always, and to TensorBoard when TensorFlow
    is installed (the GPU machine has none; the JSON lines are the portable record)."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, "metrics.jsonl")
        self._writer = None
        try:
            import tensorboard  # noqa: F401  (tf.summary needs it; the CPU TF wheel lacks it)
            import tensorflow as tf

            self._tf = tf
            self._writer = tf.summary.create_file_writer(os.path.join(logdir, "scalars"))
        except ImportError:
            self._tf = None

    @property
    def has_tensorboard(self) -> bool:
        """Whether TensorFlow (hence TensorBoard summaries) is available."""
        return self._writer is not None

    def write(self, step: int, values: dict[str, float]) -> None:
        record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            with self._writer.as_default():
                for k, v in values.items():
                    self._tf.summary.scalar(k, float(v), step=int(step))
            self._writer.flush()


class StepCounter(keras.callbacks.Callback):
    """Tracks the global step from (chunk, batch) indices."""

    def __init__(self, steps_per_chunk: int):
        super().__init__()
        self.steps_per_chunk = int(steps_per_chunk)
        self.chunk = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.chunk = epoch

    def global_step(self, batch: int) -> int:
        return self.chunk * self.steps_per_chunk + batch + 1


class TrainLogCallback(StepCounter):
    """Loss, accuracy and learning rate every ``every`` steps into a :class:`ScalarLog`."""

    def __init__(self, log: ScalarLog, steps_per_chunk: int, lr_schedule, every: int = 10):
        super().__init__(steps_per_chunk)
        self.log = log
        self.lr_schedule = lr_schedule
        self.every = max(1, int(every))

    def on_train_batch_end(self, batch, logs=None):
        step = self.global_step(batch)
        if step % self.every == 0 and logs:
            values = {f"train/{k}": float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}
            values["train/learning_rate"] = float(self.lr_schedule(step)) if callable(self.lr_schedule) \
                else float(self.lr_schedule)
            self.log.write(step, values)


class CheckpointCallback(StepCounter):
    """Save a resumable checkpoint at the end of every chunk (every ``save_steps``)."""

    def __init__(self, manager, backbone, steps_per_chunk: int, extra: dict | None = None):
        super().__init__(steps_per_chunk)
        self.manager = manager
        self.backbone = backbone
        self.extra = extra or {}

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.steps_per_chunk
        from arcface.distribution import host_local

        model = self.model  # on JAX this syncs the training state into the variables
        with host_local():
            self.manager.save(step, model, self.backbone, model.optimizer, extra=self.extra)


class VerificationCallback(StepCounter):
    """Every ``every`` steps: 10-fold verification on each pair set, logged; the best mean
    accuracy so far is kept as the ``best`` checkpoint."""

    def __init__(self, pair_sets, embedder, every: int, steps_per_chunk: int, log: ScalarLog,
                 manager=None, backbone=None, best_accuracy: float = -1.0):
        super().__init__(steps_per_chunk)
        self.pair_sets = list(pair_sets)
        self.embedder = embedder
        self.every = int(every)
        self.log = log
        self.manager = manager
        self.backbone = backbone
        self.best_accuracy = best_accuracy
        self.history: list[dict] = []

    def evaluate(self, step: int) -> dict[str, float]:
        from arcface.verification import evaluate_pair_set

        values = {}
        for pairset in self.pair_sets:
            report = evaluate_pair_set(self.embedder, pairset)
            values[f"val/{pairset.name}/accuracy"] = report.accuracy
            values[f"val/{pairset.name}/eer"] = report.eer
            values[f"val/{pairset.name}/auc"] = report.auc
            print(f"\n[verification] step {step} {pairset.name}: accuracy {report.accuracy:.4f} "
                  f"± {report.accuracy_std:.4f}, EER {report.eer:.4f}, AUC {report.auc:.4f}")
        mean_acc = float(np.mean([v for k, v in values.items() if k.endswith("/accuracy")]))
        values["val/mean_accuracy"] = mean_acc
        self.log.write(step, values)
        self.history.append({"step": step, **values})
        return values

    def on_train_batch_end(self, batch, logs=None):
        step = self.global_step(batch)
        if not self.pair_sets or step % self.every:
            return
        model = self.model  # sync state (JAX) before reading weights
        values = self.evaluate(step)
        if self.manager is not None and values["val/mean_accuracy"] > self.best_accuracy:
            self.best_accuracy = values["val/mean_accuracy"]
            self.manager.save(step, model, self.backbone, None,
                              extra={"best_accuracy": self.best_accuracy, **values},
                              target=self.manager.best_path)
