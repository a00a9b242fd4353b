"""The serving runtime's file: a shipped stage-1 model's backbone as TFLite, and its record.

``export_runtime(model)`` writes into ``models/<model>/`` (or ``out``):

* ``embedder.tflite``: the Keras backbone alone, aligned uint8 RGB crops ``image`` (n, S, S, 3)
  in, the raw embedding ``embedding`` (n, d) float32 out (L2 normalisation stays in NumPy, as
  the Keras path does it), converted as the on-device export converts
  (:func:`iom.export.convert.to_tflite`: float32, builtin ops, no quantisation). The same
  weights and versions give the same bytes.
* ``runtime.json``: the file's SHA-256 and size, the SHA-256 of the weights it was converted
  from, the versions that converted it, and the equivalence measured: on the faces (by default
  the LFW equivalence set, 500 aligned crops, every 26th of ``lfw_112`` sorted), one face a call
  through the Keras backbone (what the service's pipeline runs) and through the file with the
  TFLite interpreter, the share of identical un-keyed codes (and code groups) of every shipped
  hasher on the model, and the smallest cosine between the two embeddings.

:mod:`iom.service.runtime` reads the record to choose a pipeline's runtime. Needs Keras'
TensorFlow backend (``scripts/export_runtime.py`` sets it for its process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from importlib import metadata

import numpy as np

from iom.export.spec import ExportError
from iom.service.runtime import RUNTIME_FILE, RUNTIME_FORMAT, TFLITE_FILE

#: faces of the equivalence set (every len/N-th aligned LFW crop, sorted by path)
EQUIVALENCE_FACES = 500
#: where the LFW equivalence set is read from by default: ../shared/data/lfw_112 beside the clone
DEFAULT_FACES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "..", "shared", "data", "lfw_112")
_IMAGES = (".jpg", ".jpeg", ".png", ".bmp")


def equivalence_faces(root, n: int = EQUIVALENCE_FACES) -> tuple[list[str], int]:
    """The LFW equivalence set and its step: every ``len // n``-th ``.jpg`` under ``root``
    (sorted by path), ``n`` of them, as bench/export_latency.py picks them."""
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".jpg"))
    if len(files) < n:
        raise ExportError(f"{root}: {len(files)} .jpg faces, the equivalence set takes {n}")
    step = max(1, len(files) // n)
    return files[::step][:n], step


def folder_faces(root) -> list[str]:
    """Every image under ``root`` (sorted by path): a folder of aligned crops (``--faces``)."""
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith(_IMAGES) and not f.startswith("."))
    if not files:
        raise ExportError(f"--faces {root}: no images ({', '.join(_IMAGES)})")
    return files


def read_faces(paths, size: int) -> np.ndarray:
    """The aligned crops at ``paths`` as uint8 RGB ``(n, size, size, 3)``."""
    from arcface.data.images import decode_image

    faces = [decode_image(p) for p in paths]
    wrong = [p for p, f in zip(paths, faces) if f.shape[:2] != (size, size)]
    if wrong:
        raise ExportError(f"{wrong[0]}: not an aligned {size}x{size} crop ({len(wrong)} such image(s))")
    return np.stack(faces)


def hashers_on(model: str) -> list[str]:
    """The shipped hashers that code the faces of stage-1 model ``model`` with its shipped
    weights (not those trained end to end with weights of their own), sorted."""
    from arcface.pretrained import MODELS_DIR

    out = []
    for name in sorted(os.listdir(MODELS_DIR)):
        try:
            with open(os.path.join(MODELS_DIR, name, "hasher.json")) as f:
                spec = json.load(f)
        except (OSError, ValueError):
            continue
        if spec.get("stage1_model") == model and not spec.get("stage1_weights"):
            out.append(name)
    return out


def backbone_model(backbone, input_size: int):
    """The Keras model the file is converted from: uint8 ``image`` → the backbone's embedding."""
    import keras
    from keras import ops

    image = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    embedding = backbone(ops.cast(image, "float32"), training=False)
    return keras.Model(image, {"embedding": embedding}, name=f"{backbone.name}_embedder")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _interpreter_version(name: str) -> str | None:
    if name == "ai_edge_litert":
        return _version("ai-edge-litert")
    return _version("tensorflow-cpu") or _version("tensorflow")


def measure(tflite_path: str, embedder, hashers: dict, faces: np.ndarray) -> dict:
    """The equivalence of the file with the Keras ``embedder`` on ``faces``, one face a call:
    per hasher the share of identical un-keyed codes and groups, the smallest cosine."""
    from arcface.runtime import TFLiteEmbedder

    runtime = TFLiteEmbedder(tflite_path, num_threads=1, max_interpreters=1)
    keras_emb = np.concatenate([embedder.embed_arrays(f[None]) for f in faces])
    lite_emb = np.concatenate([runtime.embed_arrays(f[None]) for f in faces])
    cosine = np.sum(keras_emb.astype(np.float64) * lite_emb, axis=1)
    figures = {}
    for name, hasher in hashers.items():
        a, b = hasher.codes(keras_emb), hasher.codes(lite_emb)
        figures[name] = {"m": hasher.m, "q": hasher.q, "identical_codes": float(np.mean(np.all(a == b, axis=1))),
                         "identical_groups": float(np.mean(a == b))}
    return {"faces": len(faces), "hashers": figures, "min_cosine": float(cosine.min()),
            "max_abs_difference": float(np.abs(keras_emb - lite_emb).max()),
            "interpreter": f"{runtime.interpreter} {_interpreter_version(runtime.interpreter)}",
            "calls": "one face a call, Keras (TensorFlow backend) and TFLite (1 thread)"}


def _write(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_arguments(model: str, faces_dir: str | None = None, out: str | None = None) -> dict:
    """What :func:`export_runtime` works from, checked before Keras loads: ``{"cfg_path",
    "weights", "out", "hashers", "faces", "faces_source"}`` (``faces``: the paths); an
    :class:`ExportError` naming the bad argument."""
    from arcface.errors import CheckpointError
    from arcface.pretrained import pretrained_files

    try:
        cfg_path, weights = pretrained_files(model)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    out = os.path.abspath(out or os.path.dirname(weights))
    if not os.path.isdir(out):
        raise ExportError(f"--out {out}: not a folder")
    hashers = hashers_on(model)
    if not hashers:
        raise ExportError(f"no shipped hasher codes the faces of {model!r}: nothing to measure the file with")
    if faces_dir is None:
        if not os.path.isdir(DEFAULT_FACES):
            raise ExportError(f"{os.path.normpath(DEFAULT_FACES)}: no such folder (the shared data set); "
                              "give --faces DIR, a folder of aligned crops")
        paths, step = equivalence_faces(DEFAULT_FACES)
        source = f"lfw_112 (shared data set): every {step}th .jpg, sorted by path, {len(paths)} faces"
    else:
        if not os.path.isdir(faces_dir):
            raise ExportError(f"--faces {faces_dir}: not a folder")
        paths = folder_faces(faces_dir)
        source = f"{os.path.basename(os.path.normpath(faces_dir))}: every image, sorted by path, {len(paths)} faces"
    return {"cfg_path": cfg_path, "weights": weights, "out": out, "hashers": hashers, "faces": paths,
            "faces_source": source}


def export_runtime(model: str, faces_dir: str | None = None, out: str | None = None, say=print) -> dict:
    """Convert shipped stage-1 model ``model``'s backbone to ``embedder.tflite``, measure it
    against the Keras backbone on the LFW equivalence set (``faces_dir=None``) or on every
    aligned crop in ``faces_dir``, and write both files into ``out`` (default the model's
    folder). Returns the record written as ``runtime.json``."""
    import hashlib
    import tempfile

    from arcface.embed import Embedder
    from arcface.models import load_pretrained
    from arcface.pretrained import MODELS_DIR, sha256_file
    from iom.export.convert import require_tensorflow_backend, to_tflite
    from iom.hashing.hasher import DeepIoMHasher

    given = check_arguments(model, faces_dir, out)
    cfg_path, weights, names = given["cfg_path"], given["weights"], given["hashers"]
    require_tensorflow_backend()

    cfg, backbone = load_pretrained(model)
    size = int(cfg["input_size"])
    faces = read_faces(given["faces"], size)
    say(f"[runtime] {model}: converting the backbone ({os.path.basename(weights)}) to TFLite")
    with tempfile.TemporaryDirectory(prefix="iom-runtime-") as tmp:
        tflite = os.path.join(tmp, TFLITE_FILE)
        try:
            to_tflite(backbone_model(backbone, size), tflite)
        except ExportError:
            raise
        except Exception as e:      # the converter's own error, typed
            raise ExportError(f"TFLite conversion failed: {type(e).__name__}: {e}") from e
        with open(tflite, "rb") as f:
            content = f.read()
        say(f"[runtime] measuring on {len(faces)} faces against the Keras backbone, hashers {', '.join(names)}")
        hashers = {name: DeepIoMHasher.load(os.path.join(MODELS_DIR, name)) for name in names}
        equivalence = measure(tflite, Embedder(backbone, 16, size), hashers, faces)
    record = {
        "format_version": RUNTIME_FORMAT, "model": model, "file": TFLITE_FILE,
        "sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content),
        "input": {"name": "image", "shape": [None, size, size, 3], "dtype": "uint8", "layout": "NHWC",
                  "channels": "RGB", "description": "an aligned face (the service's five-point warp), 0..255"},
        "output": {"name": "embedding", "shape": [None, int(backbone.output_shape[-1])], "dtype": "float32",
                   "description": "the backbone's embedding, not normalised (the runtime L2-normalises it)"},
        "source": {"weights": {"file": os.path.basename(weights), "sha256": sha256_file(weights)},
                   "config": {"file": os.path.basename(cfg_path), "sha256": sha256_file(cfg_path)}},
        "converter": {"how": "iom.export.convert.to_tflite (a SavedModel of the Keras backbone, "
                             "tf.lite.TFLiteConverter.from_saved_model, builtin ops, float32, no quantisation)",
                      "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"), "keras": _version("keras"),
                      "numpy": _version("numpy"), "python": platform.python_version()},
        "equivalence": {"faces_source": given["faces_source"], **equivalence},
    }
    _write(os.path.join(given["out"], TFLITE_FILE), content)
    _write(os.path.join(given["out"], RUNTIME_FILE), (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return record


def main(argv=None) -> int:
    """``scripts/export_runtime.py``."""
    from arcface.pretrained import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="export_runtime.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a shipped stage-1 model (default {DEFAULT_MODEL})")
    parser.add_argument("--faces", default=None, metavar="DIR",
                        help="measure on every aligned crop in DIR (default: the LFW equivalence set, "
                             f"{EQUIVALENCE_FACES} faces of ../shared/data/lfw_112)")
    parser.add_argument("--out", default=None, metavar="DIR", help="write the two files here (default: the "
                                                                   "model's folder)")
    args = parser.parse_args(argv)
    from arcface.cli import import_backend_quietly

    check_arguments(args.model, args.faces, args.out)        # before Keras loads
    import_backend_quietly()
    record = export_runtime(args.model, args.faces, args.out)
    eq = record["equivalence"]
    codes = ", ".join(f"{name} {f['identical_codes']:.2%}" for name, f in eq["hashers"].items())
    print(f"wrote {TFLITE_FILE} ({record['bytes']:,} bytes, SHA-256 {record['sha256']}) and {RUNTIME_FILE} "
          f"for {args.model}; on {eq['faces']} faces identical un-keyed codes: {codes}; smallest embedding "
          f"cosine {eq['min_cosine']:.8f}")
    return 0
