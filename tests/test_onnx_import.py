"""arcface.onnx_import: arcface_torch-style ONNX files -> our Keras backbones.

Fixtures (tests/data/onnx/*.onnx.gz) come from scripts/make_onnx_fixtures.py:
random weights and BN statistics in the arcface_torch topologies at reduced
width.  Each is run through onnxruntime (NCHW, normalised as InsightFace does)
and through the imported Keras model (NHWC, raw 0..255) on the same 32 random
images.  Run under both backends: ``KERAS_BACKEND=tensorflow pytest ...`` and
``KERAS_BACKEND=jax pytest ...``.
"""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_deps import onnx, ort  # noqa: F401 - skips this module without them

from arcface.errors import CheckpointError  # noqa: E402
from arcface.onnx_import import import_onnx, onnx_input_convention, save  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "onnx"
NARROW = (8, 16, 32, 64)

# fixture -> (backbone, build kwargs, narrow IResNet widths or None)
FIXTURES = {
    "ir18_narrow": ("IR_18", {"embd_shape": 64}, NARROW),
    "ir18_narrow_dynamo": ("IR_18", {"embd_shape": 64}, NARROW),
    "mbf_s1": ("MobileFaceNet", {"embd_shape": 64, "scale": 1, "blocks": (2, 1, 1, 1)}, None),
    "mbf_s2": ("MobileFaceNet", {"embd_shape": 64, "scale": 2, "blocks": (1, 1, 1, 1)}, None),
}


def _fixture(name, tmp_path) -> Path:
    src = DATA / f"{name}.onnx.gz"
    if not src.exists():
        pytest.skip(f"{src} missing: run scripts/make_onnx_fixtures.py")
    out = tmp_path / f"{name}.onnx"
    out.write_bytes(gzip.decompress(src.read_bytes()))
    return out


def _import(name, path, backbone=None, **override):
    default_backbone, kwargs, widths = FIXTURES[name]
    kwargs = {**kwargs, **override}
    if widths is not None:
        kwargs["widths"] = widths
    return import_onnx(path, backbone or default_backbone, **kwargs)


def _images(n=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


def _onnx_embed(path, images_nhwc):
    conv = onnx_input_convention(path)
    x = (images_nhwc.astype(np.float32) - conv["mean"]) / conv["std"]
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # RGB NCHW
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_imported_model_matches_onnxruntime(name, tmp_path):
    import keras

    path = _fixture(name, tmp_path)
    model = _import(name, path)
    images = _images()
    ref = _onnx_embed(path, images)
    ours = np.asarray(model.predict(images.astype(np.float32), batch_size=32, verbose=0))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    cos = _cosine(ours, ref)
    diff = float(np.max(np.abs(ours - ref)))
    print(f"\n[{keras.backend.backend()}] {name}: min cosine {cos.min():.8f}, "
          f"max abs diff {diff:.2e}, max |ref| {np.abs(ref).max():.2f}")
    assert cos.min() > 0.9999
    assert diff < 1e-3
    # uint8 input gives the same embeddings (the model normalises inside)
    ours_u8 = np.asarray(model(images[:4], training=False))
    np.testing.assert_allclose(ours_u8, ours[:4], rtol=1e-5, atol=1e-4)


def test_input_convention(tmp_path):
    # file with the normalisation in the graph takes raw pixels, the others (x-127.5)/127.5
    conv = onnx_input_convention(_fixture("mbf_s1", tmp_path))
    pixel = (conv.pop("pixel_mean"), conv.pop("pixel_std"))
    assert conv == {"layout": "NCHW", "channels": "RGB", "normalised_in_graph": True, "mean": 0.0, "std": 1.0}
    np.testing.assert_allclose(pixel, (127.5, 127.5), rtol=1e-6)  # what the first layer sees, from the graph
    ir = _fixture("ir18_narrow", tmp_path)
    assert onnx_input_convention(ir)["mean"] == 127.5 and onnx_input_convention(ir)["std"] == 127.5
    # our model's first layer is PixelNormalization: feeding it pre-normalised NHWC is wrong,
    # feeding raw 0..255 NHWC (not NCHW, not BGR) is right
    model = _import("ir18_narrow", ir)
    assert type(model.layers[1]).__name__ == "PixelNormalization"
    images = _images(4, seed=1)
    ref = _onnx_embed(ir, images)
    ours_rgb = np.asarray(model(images.astype(np.float32), training=False))
    ours_bgr = np.asarray(model(images[..., ::-1].astype(np.float32), training=False))
    ours_norm = np.asarray(model((images.astype(np.float32) - 127.5) / 127.5, training=False))
    assert _cosine(ours_rgb, ref).min() > 0.9999
    assert _cosine(ours_bgr, ref).max() < 0.999
    assert _cosine(ours_norm, ref).max() < 0.999


def test_folded_conv_bn_is_unfolded_explicitly(tmp_path):
    model = _import("mbf_s1", _fixture("mbf_s1", tmp_path))
    report = model.onnx_import_report
    assert "stem_bn" in report["unfolded_bn"] and "gdc_bn" in report["unfolded_bn"]
    bn = model.get_layer("stem_bn")
    np.testing.assert_array_equal(np.asarray(bn.gamma), 1.0)
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), 0.0)
    # BN stays BN when the file keeps it
    model2 = _import("mbf_s2", _fixture("mbf_s2", tmp_path))
    assert model2.onnx_import_report["unfolded_bn"] == []
    assert not np.allclose(np.asarray(model2.get_layer("stem_bn").moving_mean), 0.0)
    # dynamo export: BN1d `features` folded into the Gemm -> identity embedding_bn
    model3 = _import("ir18_narrow_dynamo", _fixture("ir18_narrow_dynamo", tmp_path))
    assert "embedding_bn" in model3.onnx_import_report["unfolded_bn"]
    assert "stage1_block1_bn1" not in model3.onnx_import_report["unfolded_bn"]


def test_bn_epsilon_taken_from_file(tmp_path):
    path = _fixture("mbf_s2", tmp_path)
    m = onnx.load(str(path))
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    for attr in bns[0].attribute:
        if attr.name == "epsilon":
            attr.f = 0.5  # large, so a wrong epsilon would show in the embeddings
    edited = tmp_path / "eps.onnx"
    onnx.save(m, str(edited))
    model = _import("mbf_s2", edited)
    assert model.onnx_import_report["epsilon_changed"] == [("stem_bn", pytest.approx(1e-5),
                                                            0.5)]
    assert model.get_layer("stem_bn").epsilon == 0.5
    images = _images(4, seed=2)
    ref = _onnx_embed(edited, images)
    assert _cosine(np.asarray(model(images.astype(np.float32), training=False)), ref).min() > 0.9999


def test_deeper_backbone_refused_naming_first_mismatch(tmp_path):
    """r18 file into IR_34 (same widths): stage1 has a third block in ours, not in the file."""
    path = _fixture("ir18_narrow", tmp_path)
    with pytest.raises(CheckpointError) as err:
        _import("ir18_narrow", path, backbone="IR_34")
    msg = str(err.value)
    assert "'stage1_block3_conv1'" in msg, msg
    assert "(3, 3, 8, 8)" in msg and "(16, 8, 3, 3)" in msg, msg
    assert "ONNX conv node" in msg, msg


def test_wider_backbone_refused_before_any_copy(tmp_path):
    from arcface.backbones import build_backbone

    path = _fixture("ir18_narrow", tmp_path)
    model = build_backbone("IR_18", embd_shape=64)  # full width 64..512
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(CheckpointError) as err:
        import_onnx(path, "IR_18", embd_shape=64, model=model)
    msg = str(err.value)
    assert "'stem_conv'" in msg and "(3, 3, 3, 64)" in msg and "(8, 3, 3, 3)" in msg, msg
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, np.asarray(w))


def test_other_family_and_embedding_refused(tmp_path):
    path = _fixture("mbf_s2", tmp_path)
    with pytest.raises(CheckpointError, match="stem_conv"):
        _import("mbf_s2", path, scale=1)  # 64 vs 128 stem channels
    with pytest.raises(CheckpointError, match="embedding_fc"):
        _import("mbf_s2", path, embd_shape=128)
    with pytest.raises(CheckpointError, match="stem_conv"):
        import_onnx(_fixture("ir18_narrow", tmp_path), "MobileFaceNet", embd_shape=64)


def test_unsupported_op_and_missing_file(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 112, 112])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu0")], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match="relu0.*Relu"):
        import_onnx(path, "IR_18")
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"], name="add_c")], "g",
                              [x], [y], initializer=[c])
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match="add_c"):
        import_onnx(path, "IR_18")
    with pytest.raises(CheckpointError, match="not found"):
        import_onnx(tmp_path / "nope.onnx", "IR_18")


def test_save_roundtrip(tmp_path):
    import keras

    model = _import("mbf_s2", _fixture("mbf_s2", tmp_path))
    images = _images(2, seed=3).astype(np.float32)
    out = save(model, tmp_path / "m.keras")
    reloaded = keras.saving.load_model(out)
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(model(images)),
                               rtol=0, atol=1e-5)
    with pytest.raises(CheckpointError):
        save(model, tmp_path / "m.bin")


def test_import_script_refuses_a_mismatched_graph_with_exit_2(tmp_path):
    import subprocess
    import sys

    path = _fixture("mbf_s2", tmp_path)
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "scripts/import_onnx.py", "--onnx", str(path), "--backbone_type",
                           "IR_18", "--out", str(tmp_path / "x.weights.h5")], cwd=repo, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 2 and "does not fit" in done.stderr
    assert not (tmp_path / "x.weights.h5").exists()
