"""Child process of tests/test_distribution.py: train one tiny run on one device and on N.

Device counts are fixed when a backend starts, so this runs in a fresh process:
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` on JAX (set here before JAX
loads), N logical CPU devices on TensorFlow. Usage::

    KERAS_BACKEND=jax python tests/multidevice_train.py OUT_DIR --devices 4 [--flip]

It trains the same config (TinyNet with batch norm, ArcFace head, SGD with momentum and
weight decay) three ways and writes each run's final training-model weights to
``OUT_DIR/<run>.npz``: ``single`` (distribution none), ``parallel`` (data_parallel over
the N devices) and ``resumed`` (data_parallel stopped after one checkpoint, resumed from it
on one device).
``OUT_DIR/summary.json`` holds each run's summary (devices used, losses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--flip", action="store_true", help="random_flip on (augmentation in the step)")
    p.add_argument("--host", type=int, default=None,
                   help="JAX multi-host: this process's id; --devices are then per host")
    p.add_argument("--hosts", type=int, default=2, help="JAX multi-host: processes in all")
    p.add_argument("--coordinator", default="127.0.0.1:12355", help="JAX multi-host: process 0's address")
    args = p.parse_args()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    if args.host is not None:
        os.environ.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=args.coordinator,
                          KERAS_DISTRIBUTION_NUM_PROCESSES=str(args.hosts),
                          KERAS_DISTRIBUTION_PROCESS_ID=str(args.host))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.devices)])

    import numpy as np

    from arcface.backbones import register_backbone
    from arcface.checkpoint import CheckpointManager
    from arcface.config import finalize_stage1, validate_config
    from arcface.train import train
    from tests.conftest import tiny_net, write_identity_folder, write_pairs_set

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    register_backbone("TinyNet")(tiny_net)
    data = out / ("data" if args.host is None else f"data_host{args.host}")  # hosts write apart
    faces = write_identity_folder(data / "faces", n_classes=6, per_class=8)
    pairs = write_pairs_set(faces, data / "pairs")

    def config(distribution: str, num_devices, sub_name: str = "tiny"):
        return finalize_stage1(validate_config(dict(
            batch_size=8, input_size=32, embd_shape=16, sub_name=sub_name,
            backbone_type="TinyNet", head_type="ArcHead", margin=0.3, logist_scale=16,
            train_dataset=str(faces), epochs=30, max_steps=8, base_lr=0.05, momentum=0.9,
            w_decay=5e-4, lr_schedule="cosine", warmup_steps=2, save_steps=4, random_flip=args.flip,
            seed=5, workers=1, distribution=distribution, num_devices=num_devices,
            test_dataset=str(pairs), eval_steps=4, eval_batch_size=8)))

    def weights(root: Path, cfg) -> dict:
        import h5py

        path = CheckpointManager(root / cfg["sub_name"]).latest()
        found = {}
        with h5py.File(f"{path}/train.weights.h5", "r") as f:
            f.visititems(lambda name, obj: found.__setitem__(name, np.array(obj))
                         if isinstance(obj, h5py.Dataset) else None)
        return found

    summaries = {}
    if args.host is not None:   # one process of a multi-host run: the parallel run only
        cfg = config("data_parallel", None)
        summary = train(cfg, checkpoint_root=str(out / "multihost"), log_root=str(out / "logs" / "mh"),
                        verbose=0)
        if args.host == 0:
            np.savez(out / "multihost.npz", **weights(out / "multihost", cfg))
        (out / f"summary_host{args.host}.json").write_text(json.dumps(summary, default=str))
        return
    runs = {"single": ("none", None), "parallel": ("data_parallel", args.devices)}
    for run, (distribution, count) in runs.items():
        cfg = config(distribution, count)
        root = out / run
        summaries[run] = train(cfg, checkpoint_root=str(root), log_root=str(out / "logs" / run), verbose=0)
        np.savez(out / f"{run}.npz", **weights(root, cfg))
    # half on N devices, resumed from its checkpoint on one device: checkpoints are device-free
    root = out / "resumed"
    first = train(config("data_parallel", args.devices), checkpoint_root=str(root),
                  log_root=str(out / "logs" / "resumed"), stop_after_chunks=1, verbose=0)
    cfg = config("none", None)
    second = train(cfg, checkpoint_root=str(root), log_root=str(out / "logs" / "resumed"), verbose=0)
    summaries["resumed"] = {"first": first, "second": second}
    np.savez(out / "resumed.npz", **weights(root, cfg))
    (out / "summary.json").write_text(json.dumps(summaries, default=str))


if __name__ == "__main__":
    main()
