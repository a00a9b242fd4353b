"""Figures (b) and (c) of ``bench/train_throughput.py``: the real training step (model, loss and
optimizer as ``arcface.train.train`` builds them), one timed ``fit`` of warm-up + timed steps."""

from __future__ import annotations

import statistics
import time

import numpy as np


def make_config(args):
    from arcface.config import finalize_stage1, validate_config

    raw = {
        "batch_size": args.batch_size, "input_size": args.input_size, "embd_shape": args.embd_shape,
        "sub_name": "bench_train_throughput", "backbone_type": args.backbone,
        "head_type": "ArcHead", "margin": 0.5, "logist_scale": 64.0,
        "train_dataset": args.data, "num_classes": args.num_classes,
        "optimizer": "sgd", "momentum": 0.9, "base_lr": 0.1, "w_decay": 5e-4,
        "lr_schedule": "cosine", "warmup_steps": 0,
        "mixed_precision": args.precision, "seed": args.seed, "workers": args.workers,
        "distribution": args.distribution, "num_devices": args.num_devices,
    }
    return finalize_stage1(validate_config(raw, source="bench/train_throughput.py"))


def build_compiled_model(cfg, num_classes: int, total_steps: int, steps_per_execution: int, plan=None):
    """The training model, loss and optimizer exactly as ``arcface.train.train`` builds them
    (call it inside the :func:`~arcface.distribution.distribution_scope` of ``plan``)."""
    import keras

    from arcface.distribution import synchronize_batch_norm
    from arcface.heads import loss_from_config
    from arcface.train import build_lr_schedule, build_models, build_optimizer

    keras.mixed_precision.set_global_policy(cfg["mixed_precision"])
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(cfg["seed"])
    else:  # keras.utils.set_random_seed imports TensorFlow (to seed it) whenever it is installed
        np.random.seed(cfg["seed"])
    model, backbone = build_models(cfg, num_classes)
    if plan is not None:
        synchronize_batch_norm(model, plan)
    model.compile(optimizer=build_optimizer(cfg, build_lr_schedule(cfg, total_steps)),
                  loss=loss_from_config(cfg),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  steps_per_execution=steps_per_execution)
    model.optimizer.build(model.trainable_variables)
    return model, backbone


def make_step_clock():
    import keras

    class StepClock(keras.callbacks.Callback):
        """Records when each step's logs reached the host.

        Keras converts the logs to Python floats before calling ``on_train_batch_end``,
        which waits for that step's results on the device. ``async_safe`` lets Keras do
        that conversion in a helper thread (where the backend allows it), so this clock
        does not stop the main thread from queueing the next steps."""

        async_safe = True

        def __init__(self):
            super().__init__()
            self.done: dict[int, float] = {}
            self.losses: dict[int, float] = {}

        def on_train_batch_end(self, batch, logs=None):
            self.done[int(batch)] = time.perf_counter()
            if logs and "loss" in logs:
                self.losses[int(batch)] = float(logs["loss"])

    return StepClock()


def timed_fit(model, data, batch_size: int, warmup: int, steps: int, steps_per_execution: int) -> dict:
    """One ``fit`` of ``warmup + steps`` steps; images/s over the last ``steps``."""
    clock = make_step_clock()
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, shuffle=False, verbose=0,
              callbacks=[clock])
    end = time.perf_counter()
    first, last = warmup - 1, warmup + steps - 1
    if first not in clock.done or last not in clock.done:
        raise RuntimeError(f"fit ended early: steps done {sorted(clock.done)[-3:]}; did the data run out?")
    t0, t1 = clock.done[first], clock.done[last]
    marks = sorted(k for k in clock.done if first <= k <= last)
    per_step = [(clock.done[b] - clock.done[a]) / (b - a) for a, b in zip(marks, marks[1:])]
    losses = [clock.losses[k] for k in marks if k in clock.losses]
    median_step = statistics.median(per_step)
    return {
        "steps": steps, "warmup_steps": warmup,
        "images_per_s": round(steps * batch_size / (t1 - t0), 3),
        "seconds": round(t1 - t0, 3),
        "step_ms_median": round(1000 * median_step, 2),
        "images_per_s_median_step": round(batch_size / median_step, 3),
        "warmup_seconds": round(t0 - start, 2),  # tracing + compilation + warm-up steps
        "fit_seconds": round(end - start, 2),
        "step_ms": [round(1000 * v, 1) for v in per_step],
        "loss_first_timed": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
    }


def synthetic_batches(batch_size: int, input_size: int, num_classes: int, seed: int, distinct: int = 4):
    """Endless (uint8 images, int32 labels) batches cycled from a few made in host memory."""
    rng = np.random.default_rng(seed)
    pool = [(rng.integers(0, 256, (batch_size, input_size, input_size, 3), dtype=np.uint8),
             rng.integers(0, num_classes, (batch_size,), dtype=np.int32)) for _ in range(distinct)]
    k = 0
    while True:
        yield pool[k % distinct]
        k += 1


def fit_then_close(model, data, args) -> dict:
    """:func:`timed_fit` on ``data`` with the command's sizes; ``data`` is closed afterwards."""
    try:
        return timed_fit(model, data, args.batch_size, args.warmup, args.steps, args.steps_per_execution)
    finally:
        close_quietly(data)


def close_quietly(data) -> None:
    close = getattr(data, "close", None)
    if close is not None:
        try:
            close()
        except (ValueError, RuntimeError):  # still running in a Keras helper thread
            pass
