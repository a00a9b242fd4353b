#!/usr/bin/env python
"""Exported models (scripts/export.py) on this CPU: file size, per-face latency, equivalence.

Exports ``--hasher`` (default: the shipped default) as TFLite, ONNX and SavedModel with
:func:`iom.export.export` (face variant: aligned 112x112 uint8 RGB in; the un-keyed code and
the embedding out) into a temporary folder (``--out DIR`` to keep them), then times
face → un-keyed code with:

==========  ===========================================================================
runtime     what one call is
==========  ===========================================================================
keras       the service's path: ``Pipeline.from_pretrained(hasher, align=False)``:
            ``embed_photos`` (the backbone's compiled call, L2 normalisation) then
            ``hasher.codes`` (the hashing network's compiled call, argmax per group)
tflite      ``tf.lite.Interpreter`` (LiteRT's ``ai_edge_litert`` when installed),
            ``--threads`` threads, XNNPACK: ``set_tensor``, ``invoke``, ``get_tensor`` x2
onnx        ``onnxruntime.InferenceSession.run`` (CPU provider, ``--threads`` intra-op)
==========  ===========================================================================

Latency: batch 1, the median over ``--runs`` calls (default 100) after ``--warmup`` (10),
each on the next LFW face; batch 16, the median over ``--runs_16`` calls (default 30)
divided by 16 (per face). Equivalence: the exported models and the SavedModel on
``--faces`` (default 500) LFW faces against the Keras pipeline: the fraction of identical
code symbols (groups) and the smallest embedding cosine. Faces: every k-th aligned crop of
``--data`` (default ../shared/data/lfw_112). Size: the model file (the SavedModel folder;
for keras the two ``.weights.h5`` files it loads).

The last stdout line is one JSON object with every figure; ``--json PATH`` writes it too.

    python bench/export_latency.py [--threads 2] [--runs 100] [--faces 500] [--json outputs/export_latency.json]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import (LFW_112, add_json_option, arg_parser, cpu_model, emit, loadavg,  # noqa: E402
                          machine_line, read_faces, say, today)
from iom.defaults import DEFAULT_HASHER  # noqa: E402


def tflite_runner(path: str, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=path, num_threads=threads)
    signature = interpreter.get_signature_list()["serving_default"]
    runner = interpreter.get_signature_runner("serving_default")
    index = {name: runner.get_input_details()[name]["index"] for name in signature["inputs"]}
    out_index = {name: runner.get_output_details()[name]["index"] for name in signature["outputs"]}
    shape = [None]

    def run(batch):
        if shape[0] != batch.shape:
            interpreter.resize_tensor_input(index["image"], batch.shape)
            interpreter.allocate_tensors()
            shape[0] = batch.shape
        interpreter.set_tensor(index["image"], batch)
        interpreter.invoke()
        return {k: interpreter.get_tensor(i) for k, i in out_index.items()}

    return run


def onnx_runner(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda batch: dict(zip(names, session.run(None, {"image": batch})))


def savedmodel_runner(path: str):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda batch: {k: v.numpy() for k, v in serve(image=tf.constant(batch)).items()}


def keras_runner(pipeline):
    def run(batch):
        embedding = pipeline.embed_photos(list(batch))
        return {"code": pipeline.hasher.codes(embedding), "embedding": embedding}

    return run


def timed(run, faces, batch: int, runs: int, warmup: int) -> dict:
    """Median (and p90) ms per call and per face over ``runs`` calls on successive batches."""
    n = len(faces)

    def batch_at(i):
        idx = (np.arange(batch) + i * batch) % n
        return np.ascontiguousarray(faces[idx])

    for i in range(warmup):
        run(batch_at(i))
    times = []
    for i in range(runs):
        x = batch_at(warmup + i)
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1000)
    median = float(np.median(times))
    return {"batch": batch, "runs": runs, "median_ms": round(median, 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3), "per_face_ms": round(median / batch, 3)}


def outputs_of(run, faces, batch=25) -> dict:
    outs = [run(faces[i:i + batch]) for i in range(0, len(faces), batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("code", "embedding")}


def size_of(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--hasher", default=DEFAULT_HASHER)
    parser.add_argument("--data", default=LFW_112)
    parser.add_argument("--faces", type=int, default=500, help="faces for the equivalence figures")
    parser.add_argument("--runs", type=int, default=100, help="timed batch-1 calls")
    parser.add_argument("--runs_16", type=int, default=30, help="timed batch-16 calls")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="TFLite and ONNX Runtime threads")
    parser.add_argument("--out", default=None, help="keep the exports in this folder (default: temporary)")
    add_json_option(parser)
    args = parser.parse_args()

    import keras

    from arcface.pretrained import pretrained_files
    from iom.export import FORMATS, export
    from iom.service.pipeline import Pipeline

    load_before = loadavg()
    say(f"machine: {machine_line()}, backend {keras.backend.backend()}, load average {load_before}")
    faces = read_faces(os.path.abspath(args.data), args.faces)
    tmp = tempfile.TemporaryDirectory(prefix="export-bench-") if args.out is None else None
    root = args.out or tmp.name
    manifests = {}
    for fmt in FORMATS:
        t = time.perf_counter()
        manifests[fmt] = export(args.hasher, fmt, os.path.join(root, fmt), force=True)
        say(f"[export] {fmt}: {time.perf_counter() - t:.1f} s")
    paths = {fmt: os.path.join(root, fmt, file) for fmt, file in FORMATS.items()}

    pipeline = Pipeline.from_pretrained(args.hasher, align=False)
    info = Pipeline.shipped(args.hasher)
    keras_bytes = size_of(os.path.join(info["folder"], "hasher.weights.h5")) + \
        size_of(pretrained_files(info["stage1_model"])[1])
    runners = {"keras": keras_runner(pipeline), "tflite": tflite_runner(paths["tflite"], args.threads),
               "onnx": onnx_runner(paths["onnx"], args.threads)}

    reference = outputs_of(runners["keras"], faces)
    equivalence = {}
    for fmt, run in (("tflite", runners["tflite"]), ("onnx", runners["onnx"]),
                     ("savedmodel", savedmodel_runner(paths["savedmodel"]))):
        out = outputs_of(run, faces)
        cosine = np.sum(out["embedding"] * reference["embedding"], axis=1)
        equivalence[fmt] = {"faces": len(faces), "identical_groups": float(np.mean(out["code"] == reference["code"])),
                            "identical_codes": float(np.mean(np.all(out["code"] == reference["code"], axis=1))),
                            "min_cosine": float(cosine.min())}
        say(f"[equivalence] {fmt}: identical groups {equivalence[fmt]['identical_groups']:.6f}, "
            f"min cosine {equivalence[fmt]['min_cosine']:.8f}")

    latency = {}
    for name, run in runners.items():
        latency[name] = {"bytes": keras_bytes if name == "keras" else size_of(paths[name]),
                         "batch_1": timed(run, faces, 1, args.runs, args.warmup),
                         "batch_16": timed(run, faces, 16, args.runs_16, max(2, args.warmup // 4))}
        b1, b16 = latency[name]["batch_1"], latency[name]["batch_16"]
        say(f"[latency] {name}: {latency[name]['bytes']:,} bytes; batch 1 median {b1['median_ms']:.2f} ms "
            f"(p90 {b1['p90_ms']:.2f}); batch 16 {b16['per_face_ms']:.2f} ms a face ({b16['median_ms']:.1f} ms a call)")

    record = {"latency": latency, "equivalence": equivalence, "hasher": args.hasher,
              "model_sha256": {fmt: m["model_sha256"] for fmt, m in manifests.items()},
              "backend": keras.backend.backend(), "threads": args.threads, "machine": cpu_model(),
              "cpus": os.cpu_count(), "load_before": load_before,
              "load_after": loadavg(), "date": today(), "versions": manifests["onnx"]["versions"]}
    import onnxruntime

    record["versions"]["onnxruntime"] = onnxruntime.__version__
    if tmp is not None:
        tmp.cleanup()
    emit(record, args.json)


if __name__ == "__main__":
    main()
