"""Released recognisers run in their own formats (arcface/foreign_models.py).

The real files are fetched by scripts/fetch_foreign_model.py (not in CI: no registry there);
here small models of the same two formats are written by the test: an ONNX graph (Conv,
ReLU, global average pool, flatten) with a fixed batch of 1 and an unused graph input, as the
SFace file has, and a TF.js graph model (model.json + a float16-quantised weight shard) made from
a TensorFlow graph. Each must give what the reference computation gives on the same pixels,
with the model's input convention applied.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from arcface.errors import CheckpointError, ConfigError
from arcface.foreign_models import (FOREIGN_MODELS, ForeignModel, ForeignRunner, check_files,
                                    get_foreign_model, read_tfjs_weights)
from arcface.pretrained import sha256_file as sha256_of

RNG = np.random.default_rng(0)
KERNEL = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)      # OIHW


def reference(images, channels, offset, scale):
    """Conv 3x3 valid (KERNEL), ReLU, global average: NumPy on NHWC pixels."""
    x = (images.astype(np.float64)[..., ::-1] if channels == "BGR" else images.astype(np.float64))
    x = (x - offset) * scale
    n, h, w, _ = x.shape
    out = np.zeros((n, h - 2, w - 2, 4))
    k = KERNEL.transpose(2, 3, 1, 0).astype(np.float64)            # HWIO
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,co->nhwo", x[:, i:i + h - 2, j:j + w - 2], k[i, j])
    return np.maximum(out, 0).mean(axis=(1, 2))


def spec(folder, fmt, members, **kw):
    return ForeignModel(name=os.path.basename(folder), description="test", package="test:none",
                        members=tuple(members), fmt=fmt, input_size=8, dim=4, **kw)


def write_onnx(folder):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["data", "w"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["fc1"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("stale_weight", TensorProto.FLOAT, [4])],   # read by no node
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, KERNEL.shape, KERNEL.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tiny.onnx")
    onnx.save(model, path)
    return path


def test_onnx_model_runs_with_its_convention_and_any_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    path = write_onnx(tmp_path / "tiny_onnx")
    model = spec(str(tmp_path / "tiny_onnx"), "onnx", [("x/tiny.onnx", sha256_of(path))],
                 layout="NCHW", channels="BGR", offset=0.0, scale=1.0)
    runner = ForeignRunner(model, str(tmp_path))
    images = RNG.integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    out = runner.predict_on_batch(images)                # batch 5 through a file exported for batch 1
    np.testing.assert_allclose(out, reference(images, "BGR", 0.0, 1.0), rtol=1e-4, atol=1e-3)


def write_tfjs(folder):
    """A TF.js graph model: Placeholder -> Conv2D (NHWC, HWIO) -> Relu -> Mean over H, W."""
    import tensorflow as tf
    from google.protobuf import json_format

    kernel = KERNEL.transpose(2, 3, 1, 0)                          # HWIO
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input_1")
        w = tf.constant(kernel, name="conv/kernel")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "VALID", name="conv/Conv2D"), name="relu")
        tf.reduce_mean(y, axis=[1, 2], name="global_pooling/Mean")
    topology = json_format.MessageToDict(graph.as_graph_def())
    for node in topology["node"]:
        if node["name"] == "conv/kernel":
            node["attr"].pop("value")                              # TF.js keeps weights out of the topology
    os.makedirs(folder, exist_ok=True)
    half = kernel.astype(np.float16)
    with open(os.path.join(folder, "m.bin"), "wb") as f:
        f.write(half.tobytes())
    manifest = [{"paths": ["m.bin"], "weights": [{"name": "conv/kernel", "shape": list(kernel.shape),
                                                  "dtype": "float32",
                                                  "quantization": {"dtype": "float16",
                                                                   "original_dtype": "float32"}}]}]
    with open(os.path.join(folder, "m.json"), "w") as f:
        json.dump({"format": "graph-model", "modelTopology": topology, "weightsManifest": manifest}, f)
    return os.path.join(folder, "m.json"), half.astype(np.float32)


def test_tfjs_graph_model_runs_with_float16_weights(tmp_path):
    pytest.importorskip("tensorflow")
    path, stored = write_tfjs(str(tmp_path / "tiny_tfjs"))
    weights = read_tfjs_weights(path)
    np.testing.assert_array_equal(weights["conv/kernel"], stored)
    model = spec(str(tmp_path / "tiny_tfjs"), "tfjs",
                 [("p/m.json", sha256_of(path)), ("p/m.bin", sha256_of(str(tmp_path / "tiny_tfjs" / "m.bin")))],
                 layout="NHWC", channels="RGB", offset=127.5, scale=1 / 127.5, output="global_pooling/Mean")
    runner = ForeignRunner(model, str(tmp_path))
    images = RNG.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    global KERNEL
    exact, KERNEL = KERNEL, stored.transpose(3, 2, 0, 1)           # the reference with the stored weights
    try:
        expected = reference(images, "RGB", 127.5, 1 / 127.5)
    finally:
        KERNEL = exact
    np.testing.assert_allclose(runner.predict_on_batch(images), expected, rtol=1e-4, atol=1e-4)


def test_files_are_checked_before_anything_runs(tmp_path):
    path = write_onnx(tmp_path / "tiny_onnx")
    bad = spec(str(tmp_path / "tiny_onnx"), "onnx", [("x/tiny.onnx", "0" * 64)])
    with pytest.raises(CheckpointError, match="SHA-256"):
        check_files(bad, str(tmp_path))
    missing = dataclasses.replace(bad, name="absent")
    with pytest.raises(CheckpointError, match="fetch_foreign_model.py absent"):
        check_files(missing, str(tmp_path))
    assert sha256_of(path) != "0" * 64


def test_registry_names_and_terms():
    with pytest.raises(ConfigError, match="known"):
        get_foreign_model("nope")
    for model in FOREIGN_MODELS.values():
        assert model.terms and model.package.split(":")[0] in ("npm", "pypi")
        assert all(len(sha) == 64 for _, sha in model.members)
