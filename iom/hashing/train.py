"""Stage-2 training: the hashing network on cached embeddings, with its loss terms logged.

:func:`train_stage2` is the entry point: it dispatches on the config's ``train_backbone`` to
head-only training (:func:`iom.hashing.trainer.train_hasher`) or end-to-end training
(:func:`iom.hashing.end_to_end.train_end_to_end`). The head-only trainer and its helpers live in
:mod:`iom.hashing.trainer` (shared with :mod:`iom.hashing.end_to_end`) and are re-exported here.
"""

from __future__ import annotations

from iom.hashing.trainer import (HashingTrainer, LossSettings, batch_stream, build_optimizer,
                                 deterministic_ops, distillation_map, loss_settings, train_hasher)

__all__ = ["HashingTrainer", "LossSettings", "batch_stream", "build_optimizer", "deterministic_ops",
           "distillation_map", "loss_settings", "train_hasher", "train_stage2"]


def train_stage2(cfg, checkpoint_root: str = "checkpoints", log_root: str = "logs",
                 progress: bool = True):
    """Train the deep IoM head of ``cfg`` on cached embeddings; returns ``(hasher, history)``.

    The hasher is saved to ``<checkpoint_root>/<sub_name>/`` every ``save_steps`` and at
    the end; each loss term is logged to ``<log_root>/<sub_name>/`` (JSON lines, and
    TensorBoard where TensorFlow is installed). Training is ``max_steps`` steps, or
    ``epochs`` passes over the training embeddings, rounded up to whole ``save_steps``.
    """
    from iom.features import training_set

    if cfg["train_backbone"] != "none":
        from iom.hashing.end_to_end import train_end_to_end

        return train_end_to_end(cfg, checkpoint_root, log_root, progress)
    data = training_set(cfg)
    return train_hasher(cfg, data.x, data.labels, checkpoint_root, log_root, progress, mirrored=data.mirrored)
