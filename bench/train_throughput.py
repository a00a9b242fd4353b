#!/usr/bin/env python
"""Stage-1 training throughput: how many images per second the real training step takes.

Three figures, each printed as it is measured and all gathered in one JSON object, the
LAST line this script writes to stdout:

(a) ``decode``: the training loader alone (:class:`~arcface.data.loader.NumpyBatchLoader`
    decoding the JPEGs of ``--data``), with 1 worker thread and with ``--workers``
    threads, and from these the decode rate per core;
(b) ``synthetic``: the training step fed random uint8 batches already in host memory
    (no decoding), i.e. what the model, loss and optimizer sustain on this device;
(c) ``loader``: the same training step fed by the real loader (``make_train_loader``:
    the NumPy/OpenCV engine on JAX, the backend's default engine otherwise).

The model is the real one: :func:`arcface.train.build_models` (uint8 input ->
augmentation -> backbone -> :class:`~arcface.heads.CosineHead`) compiled with the
ArcFace :class:`~arcface.heads.MarginSoftmaxLoss` (m = 0.5, s = 64) and SGD with
momentum 0.9, under the ``--precision`` dtype policy, trained with ``model.fit`` so that
Keras compiles the whole step. The first ``--warmup`` steps of each fit (tracing,
compilation, autotuning) are not timed; the clock runs from the end of the last warm-up
step to the end of the last step, each "end" being the moment that step's loss was
read back to the host (which waits for the device).

The backend is whatever ``KERAS_BACKEND`` says; this script sets nothing backend-specific
and imports TensorFlow only when TensorFlow is the backend. Typical uses::

    # the issue's GPU target (JAX, bf16, IR-ResNet50, 93,431 classes, batch 256)
    KERAS_BACKEND=jax python bench/train_throughput.py --backbone IR_50 \\
        --num_classes 93431 --batch_size 256 --precision mixed_bfloat16 \\
        --data .devdata/celeba299_112 --steps 50 --warmup 5 --workers 16 --json out.json
    # small CPU sizes
    KERAS_BACKEND=tensorflow python bench/train_throughput.py --backbone MobileFaceNet \\
        --num_classes 1000 --batch_size 32 --precision float32 --steps 10 --warmup 2 --workers 2

If ``--data`` holds fewer than ``(warmup + steps) x batch`` images the loader's schedule
simply goes on into further epochs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (CELEBA_112, add_json_option, cpu_model, describe_device, emit, loadavg,  # noqa: E402
                          memory_gib, peak_rss_mib, say, usable_cores, utc_now)
from bench.training.decode import measure_decode, warm_page_cache  # noqa: E402
from bench.training.step import build_compiled_model, fit_then_close, make_config, synthetic_batches  # noqa: E402

DEFAULT_DATA = CELEBA_112

#: the issue's target configuration and figure (one H100, JAX backend)
TARGET = {"backbone": "IR_50", "num_classes": 93431, "batch_size": 256,
          "precision": "mixed_bfloat16", "images_per_s": 6000.0}


def log(message: str) -> None:
    """A progress line of this bench (they start with ``[bench]``)."""
    say(f"[bench] {message}")


def rate(value: float) -> str:
    """An images/s figure for the log: whole numbers when large, 3 decimals when tiny."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Stage-1 training throughput: loader decode rate, training step on "
                    "synthetic batches, training step fed by the loader. The backend is "
                    "KERAS_BACKEND's; the last stdout line is a JSON object of every figure.")
    p.add_argument("--backbone", default="IR_50", help="backbone name (IR_50, MobileFaceNet, ...)")
    p.add_argument("--num_classes", type=int, default=93431, help="classes of the ArcFace head")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--precision", default="mixed_bfloat16",
                   choices=["float32", "mixed_bfloat16", "mixed_float16"], help="Keras dtype policy")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="image folder (one sub-folder per identity) or RecordIO; default "
                        "../shared/data/celeba299_112 beside the repository")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--workers", type=int, default=0,
                   help="loader decode threads (0 = one per available core)")
    p.add_argument("--no_loader_only", action="store_true",
                   help="skip (a), the decode rate of the loader alone")
    p.add_argument("--no_synthetic", action="store_true", help="skip (b), training on synthetic batches")
    p.add_argument("--no_loader_train", action="store_true", help="skip (c), training fed by the loader")
    p.add_argument("--engine", default="auto", choices=["auto", "numpy", "tf"],
                   help="(c): loader engine; auto = 'numpy' on JAX, make_train_loader's default "
                        "(tf.data on TensorFlow) otherwise")
    p.add_argument("--decode_seconds", type=float, default=3.0,
                   help="(a): time each decode measurement for at least this long")
    p.add_argument("--input_size", type=int, default=112)
    p.add_argument("--embd_shape", type=int, default=512)
    p.add_argument("--steps_per_execution", type=int, default=1,
                   help="Keras steps_per_execution (train() uses 1); must divide --warmup and --steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distribution", default="auto", choices=["auto", "none", "data_parallel"],
                   help="the config key: auto = data parallel over all devices when there are several; "
                        "--batch_size is then the global batch")
    p.add_argument("--num_devices", type=int, default=None, help="devices of data_parallel (default all)")
    add_json_option(p, "also write the JSON object to PATH")
    args = p.parse_args(argv)
    for name in ("num_classes", "batch_size", "steps", "warmup", "input_size", "embd_shape",
                 "steps_per_execution"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    k = args.steps_per_execution
    if args.steps % k or args.warmup % k:
        p.error(f"--steps ({args.steps}) and --warmup ({args.warmup}) must be multiples of "
                f"--steps_per_execution ({k})")
    args.data = os.path.abspath(args.data)
    if not os.path.exists(args.data):
        p.error(f"--data {args.data} does not exist. Pass --data DIR, an image folder with one "
                f"sub-folder per identity (default: {DEFAULT_DATA}).")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)

    from arcface.data.loader import default_workers, make_train_loader, open_image_source
    from arcface.errors import ConfigError, DataFormatError

    workers = args.workers or default_workers()
    cores = usable_cores()
    try:
        source = open_image_source(args.data)
    except DataFormatError as e:
        raise SystemExit(f"train_throughput.py: error: --data: {e}") from None
    if len(source) < args.batch_size:
        raise SystemExit(f"train_throughput.py: error: --data {args.data} holds {len(source)} images, "
                         f"fewer than one batch of {args.batch_size}")
    if source.num_classes > args.num_classes:
        raise SystemExit(f"train_throughput.py: error: --data has {source.num_classes} identities but "
                         f"the head has only --num_classes {args.num_classes}")
    cache_seconds = warm_page_cache(source)
    log(f"data {args.data}: {len(source)} images, {source.num_classes} identities "
        f"(read once in {cache_seconds:.1f} s to warm the page cache)")

    import keras

    backend = keras.backend.backend()
    result = {
        "benchmark": "train_throughput",
        "date": utc_now(),
        "backend": backend, "keras_version": keras.__version__,
        **describe_device(backend),
        "host_cpu": cpu_model(), "host_cores": cores, "host_memory_gib": memory_gib(),
        "python": platform.python_version(),
        "backbone": args.backbone, "num_classes": args.num_classes, "batch_size": args.batch_size,
        "precision": args.precision, "input_size": args.input_size, "embd_shape": args.embd_shape,
        "steps": args.steps, "warmup": args.warmup, "steps_per_execution": args.steps_per_execution,
        "workers": workers, "data": args.data, "data_images": len(source),
        "data_identities": source.num_classes,
        "host_loadavg_start": loadavg(),
    }
    log(f"backend {backend} (keras {keras.__version__}), device {result['device']} "
        f"{result['device_kind']}; host {result['host_cpu']}, {cores} cores")

    # (a) decode rate of the loader alone
    if not args.no_loader_only:
        min_batches = max(args.steps, 4 * workers)
        one = measure_decode(source, args.batch_size, 1, args.input_size, args.seed,
                             min_batches=min(min_batches, 20), min_seconds=args.decode_seconds)
        log(f"(a) decode, 1 worker: {rate(one['images_per_s'])} images/s")
        many = one
        if workers != 1:
            many = measure_decode(source, args.batch_size, workers, args.input_size, args.seed,
                                  min_batches=min_batches, min_seconds=args.decode_seconds)
            log(f"(a) decode, {workers} workers: {rate(many['images_per_s'])} images/s")
        busy = min(workers, cores)
        result["decode"] = {"one_worker": one, "workers": many}
        result["decode_images_per_s_1_worker"] = one["images_per_s"]
        result["decode_images_per_s"] = many["images_per_s"]
        result["decode_images_per_s_per_core"] = round(many["images_per_s"] / busy, 1)
        result["decode_scaling_efficiency"] = round(many["images_per_s"] / (busy * one["images_per_s"]), 3)
        log(f"(a) decode per core ({workers} workers on {busy} of {cores} cores): "
            f"{rate(result['decode_images_per_s_per_core'])} images/s")

    # (b) and (c): the real training step
    if not (args.no_synthetic and args.no_loader_train):
        try:
            cfg = make_config(args)
        except ConfigError as e:
            raise SystemExit(f"train_throughput.py: error: {e}") from None
        from arcface.distribution import distribution_scope, plan_distribution

        try:
            plan = plan_distribution(cfg)
        except ConfigError as e:
            raise SystemExit(f"train_throughput.py: error: {e}") from None
        result["distribution"], result["replicas"] = plan.kind, plan.replicas
        log(f"training on {plan.describe()}")
        runs = (0 if args.no_synthetic else 1) + (0 if args.no_loader_train else 1)
        prior_policy = keras.config.dtype_policy()
        try:
            with distribution_scope(plan):
                t = time.perf_counter()
                model, backbone = build_compiled_model(cfg, args.num_classes,
                                                       runs * (args.warmup + args.steps),
                                                       args.steps_per_execution, plan)
                result["build_seconds"] = round(time.perf_counter() - t, 2)
                result["params_backbone"] = int(backbone.count_params())
                result["params_total"] = int(model.count_params())
                result["jit_compile"] = getattr(model, "jit_compile", None)
                log(f"model {model.name}: {result['params_total']:,} parameters "
                    f"({result['params_backbone']:,} in the backbone), policy {cfg['mixed_precision']}, "
                    f"jit_compile={result['jit_compile']}")

                if not args.no_synthetic:
                    syn = fit_then_close(model, synthetic_batches(args.batch_size, args.input_size,
                                                                  args.num_classes, args.seed), args)
                    result["synthetic"] = syn
                    result["synthetic_images_per_s"] = syn["images_per_s"]
                    log(f"(b) train on synthetic host batches: {rate(syn['images_per_s'])} images/s "
                        f"(median step {syn['step_ms_median']:.1f} ms; warm-up {syn['warmup_seconds']:.1f} s; "
                        f"loss {syn['loss_last']})")

                if not args.no_loader_train:
                    engine = args.engine
                    if engine == "auto" and backend == "jax":
                        engine = "numpy"
                    loader = make_train_loader(source, args.batch_size, args.seed, start_step=0,
                                               stop_step=None, input_size=args.input_size,
                                               workers=workers, engine=engine)
                    used = "tf.data" if hasattr(loader, "element_spec") else type(loader).__name__
                    fed = fit_then_close(model, loader if hasattr(loader, "element_spec") else iter(loader), args)
                    fed["engine"] = used
                    result["loader"] = fed
                    result["loader_engine"] = used
                    result["loader_images_per_s"] = fed["images_per_s"]
                    if "synthetic_images_per_s" in result:
                        result["loader_vs_synthetic"] = round(fed["images_per_s"] / result["synthetic_images_per_s"], 3)
                    log(f"(c) train fed by the loader ({used}, {workers} workers): "
                        f"{rate(fed['images_per_s'])} images/s (median step {fed['step_ms_median']:.1f} ms; "
                        f"loss {fed['loss_last']})")
        finally:
            keras.mixed_precision.set_global_policy(prior_policy)

    is_target = (args.backbone == TARGET["backbone"] and args.num_classes == TARGET["num_classes"]
                 and args.batch_size == TARGET["batch_size"] and args.precision == TARGET["precision"]
                 and result["platform"] == "gpu")
    result["target_images_per_s"] = TARGET["images_per_s"]
    result["meets_target"] = (result.get("loader_images_per_s", 0.0) >= TARGET["images_per_s"]
                              if is_target and "loader_images_per_s" in result else None)
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    result["peak_rss_mib"] = peak_rss_mib()
    result["host_loadavg_end"] = loadavg()

    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
