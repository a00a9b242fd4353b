#!/usr/bin/env python
"""Stage-2 training speed on cached embeddings versus through the frozen backbone.

Trains the real deep IoM head (:class:`iom.hashing.train.HashingTrainer`, batch-hard
arc-triplet, Adam) on random unit embeddings in P x K batches for each ``--m``, and times
the stage-1 backbone's forward pass on a batch of the same size (what training *through*
the frozen backbone would add to every step). The last stdout line is a JSON object.

    python bench/stage2_throughput.py [--m 64 512] [--q 8] [--steps 300] [--backbone mbfn_celeba299]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import arg_parser, emit, quiet_tensorflow, say  # noqa: E402

quiet_tensorflow("3")


def head_steps_per_second(m: int, q: int, dim: int, P: int, K: int, steps: int) -> float:
    import keras
    import numpy as np

    from iom.hashing.layers import build_hashing_network
    from iom.hashing.sampler import PKSampler
    from iom.hashing.train import HashingTrainer, LossSettings, batch_stream

    rng = np.random.default_rng(0)
    x = rng.normal(size=(P * K * 20, dim)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(np.arange(P * 5), 4)
    trainer = HashingTrainer(build_hashing_network(dim, m, q), LossSettings())
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    stream = batch_stream(x, y, PKSampler(y, P, K))
    trainer.fit(stream, steps_per_epoch=20, epochs=1, verbose=0)          # warm-up: compile
    start = time.perf_counter()
    trainer.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - start)


def backbone_batches_per_second(name: str, batch: int, repeats: int) -> float:
    import numpy as np

    from arcface.models import load_pretrained

    cfg, backbone = load_pretrained(name)
    images = np.random.default_rng(0).integers(0, 256, (batch, cfg["input_size"], cfg["input_size"], 3))
    images = images.astype("float32")
    backbone.predict_on_batch(images)
    start = time.perf_counter()
    for _ in range(repeats):
        backbone.predict_on_batch(images)
    return repeats / (time.perf_counter() - start)


def main() -> int:
    parser = arg_parser(__doc__, full=True)
    parser.add_argument("--m", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--q", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes_per_batch", type=int, default=50)
    parser.add_argument("--samples_per_class", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--backbone", default="mbfn_celeba299")
    parser.add_argument("--backbone_repeats", type=int, default=3)
    args = parser.parse_args()
    import keras

    batch = args.classes_per_batch * args.samples_per_class
    out = {"backend": keras.backend.backend(), "batch": batch, "q": args.q, "head_steps_per_s": {}}
    for m in args.m:
        rate = head_steps_per_second(m, args.q, args.dim, args.classes_per_batch, args.samples_per_class,
                                     args.steps)
        out["head_steps_per_s"][str(m)] = round(rate, 2)
        say(f"head m={m} q={args.q}: {rate:.1f} steps/s ({rate * batch:,.0f} embeddings/s)")
    fwd = backbone_batches_per_second(args.backbone, batch, args.backbone_repeats)
    out["backbone_forward_batches_per_s"] = round(fwd, 3)
    say(f"{args.backbone} forward, batch {batch}: {fwd:.3f} batches/s ({fwd * batch:,.0f} images/s)")
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
