#!/usr/bin/env python
"""Embedding latency of every shipped stage-1 model on this CPU: one aligned face in, one embedding out.

    python bench/model_latency.py [--models NAME ...] [--n 200] [--warmup 20] [--threads N]
        [--json docs/results/model_latency.json]

Each model is loaded by name (``arcface.models.load_pretrained``) and timed through what the service
uses: ``arcface.embed.Embedder.embed_arrays`` on one 112x112 crop (batch 1, L2-normalised output), the
Keras backbone on the backend this process runs; and, for a model folder that ships
``embedder.tflite``, ``arcface.runtime.TFLiteEmbedder`` on the same crop. The crops are real LFW faces
(``../shared/data/lfw_112``) when present, else seeded random images (the work does not depend on the
pixels). Models are timed one after another, each after ``--warmup`` untimed calls; the record gives
n / mean / p50 / p90 / p99 / max in milliseconds, the weights' size, and the machine. Run it on a quiet
machine: the figures are what ``iomface models`` lists (each model's ``card.json``).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (LFW_112, add_json_option, arg_parser, command_line, distribution, emit,  # noqa: E402
                          machine_record, quiet_tensorflow, read_faces, say, set_threads, today, utc_now)


def _faces(n: int):
    import numpy as np

    if os.path.isdir(LFW_112):
        faces = read_faces(LFW_112, n)
        return np.stack(faces), f"{len(faces)} faces of {LFW_112}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8), f"{n} seeded random 112x112 images"


def _time(fn, faces, n: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fn(faces[i % len(faces)][None])
    out = []
    for i in range(n):
        x = faces[i % len(faces)][None]
        start = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def time_model(name: str, faces, n: int, warmup: int, threads: int | None) -> dict:
    """The latency record of one shipped stage-1 model (Keras, and TFLite when shipped)."""
    import keras

    from arcface import pretrained
    from arcface.embed import Embedder
    from arcface.models import load_pretrained

    cfg, backbone = load_pretrained(name)
    folder = os.path.dirname(pretrained.pretrained_files(name)[0])
    weights = os.path.join(folder, pretrained.WEIGHTS_FILE)
    embedder = Embedder(backbone, batch_size=1, input_size=cfg["input_size"])
    record = {"name": name, "backbone_type": cfg["backbone_type"], "embedding_size": cfg["embd_shape"],
              "weights_mb": round(os.path.getsize(weights) / 1e6, 1), "parameters": int(backbone.count_params()),
              "keras": {"backend": keras.backend.backend(),
                        "ms": distribution(_time(embedder.embed_arrays, faces, n, warmup))}}
    tflite = os.path.join(folder, "embedder.tflite")
    if os.path.isfile(tflite):
        from arcface.runtime import TFLiteEmbedder

        runtime = TFLiteEmbedder(tflite, num_threads=threads, batch_size=1, max_interpreters=1)
        record["tflite"] = {"interpreter": runtime.interpreter,
                            "ms": distribution(_time(runtime.embed_arrays, faces, n, warmup))}
    return record


def main(argv=None) -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--models", nargs="*", default=None, help="stage-1 model names (default: every shipped one)")
    parser.add_argument("--n", type=int, default=200, help="timed calls per model and runtime")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="op threads (default: the library's)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    quiet_tensorflow()
    set_threads(args.threads)
    from arcface.model_cards import list_models

    names = args.models or [m["name"] for m in list_models() if m["kind"] == "stage1"]
    faces, source = _faces(64)
    say(f"embedding latency, batch 1, {args.n} calls after {args.warmup} warm-up, on {source}")
    rows = []
    for name in names:
        rec = time_model(name, faces, args.n, args.warmup, args.threads)
        line = f"  {name:22s} keras p50 {rec['keras']['ms']['p50']:7.2f} ms"
        if "tflite" in rec:
            line += f"   tflite p50 {rec['tflite']['ms']['p50']:6.2f} ms"
        say(line)
        rows.append(rec)
    emit({"bench": "model_latency", "date": today(), "utc": utc_now(), "command": command_line(__file__, argv),
          "machine": machine_record(threads=args.threads), "faces": source, "models": rows}, args.json)


if __name__ == "__main__":
    main()
