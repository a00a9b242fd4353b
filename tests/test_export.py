"""On-device export (iom/export, scripts/export.py): the exported models give the Keras
pipeline's codes and embeddings, and the standalone reference keying gives the service's bytes.

The conversions run once per module: TFLite and ONNX (face and crop variants) in two child
processes through the CLI code (``KERAS_BACKEND=tensorflow``), the SavedModel through
:func:`iom.export.export` in this process while they run (in-process on TensorFlow; under
JAX that call starts its own TensorFlow child, the path a JAX user takes).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from iom.defaults import DEFAULT_HASHER
from tests.conftest import REPO, shared_data

N_FACES = 500
CROP = 160
TOKEN = "Correct-Horse-7-Battery"
SECRET = b"test application secret, 32+ bytes long"


def _env() -> dict:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """500 aligned LFW faces (uint8 RGB), spread over the whole set (every k-th file)."""
    import cv2

    files = sorted(shared_data("lfw_112").rglob("*.jpg"))
    picked = files[::max(1, len(files) // N_FACES)][:N_FACES]
    return np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in picked])


@pytest.fixture(scope="module")
def exports(tmp_path_factory, faces, request):
    """``{"tflite", "onnx", "crop", "savedmodel"}`` → output folder (each with export.json).

    Two children convert through the CLI code (TFLite; ONNX face and crop) while this process
    exports the SavedModel with :func:`iom.export.export` (under JAX: its own child, waited
    for in a thread) and computes the Keras reference."""
    import keras

    from iom.export import export

    root = tmp_path_factory.mktemp("export")
    jobs = [{"tflite": ["--format", "tflite"]},
            {"onnx": ["--format", "onnx"],
             "crop": ["--format", "onnx", "--variant", "crop", "--crop_size", str(CROP)]}]
    logs = tmp_path_factory.mktemp("export-logs")
    start = time.perf_counter()
    children = []
    for i, batch in enumerate(jobs):
        code = "from iom.export.cli import main\n" + "".join(
            f"assert main({args + ['--out', str(root / name)]!r}) == 0\n" for name, args in batch.items())
        with open(logs / f"child{i}.log", "w") as log:      # a file, not a pipe nobody reads meanwhile
            children.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_env(),
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    try:
        with ThreadPoolExecutor(1) as pool:
            # on TensorFlow export() converts in this process, before the Keras reference; on
            # another backend it waits for its own TensorFlow child, so a thread waits for it
            if keras.backend.backend() == "tensorflow":
                manifest = export(DEFAULT_HASHER, "savedmodel", root / "savedmodel")
            else:
                pending = pool.submit(export, DEFAULT_HASHER, "savedmodel", root / "savedmodel")
            request.getfixturevalue("keras_ref")
            if keras.backend.backend() != "tensorflow":
                manifest = pending.result()
    finally:
        codes = [child.wait() for child in children]
    for i, rc in enumerate(codes):
        assert rc == 0, f"export child failed:\n{(logs / f'child{i}.log').read_text()[-4000:]}"
    assert manifest["format"] == "savedmodel"
    print(f"\n[export] 4 conversions and the Keras reference in {time.perf_counter() - start:.1f} s")
    return {name: root / name for name in ("tflite", "crop", "onnx", "savedmodel")}


@pytest.fixture(scope="module")
def pipeline():
    from iom.service.pipeline import Pipeline

    return Pipeline.from_pretrained(DEFAULT_HASHER, align=False, runtime="keras")   # the Keras reference


@pytest.fixture(scope="module")
def keras_ref(pipeline, faces):
    """The Keras pipeline's embeddings and un-keyed codes of the faces."""
    embeddings = pipeline.embed_photos(list(faces))
    return embeddings, pipeline.hasher.codes(embeddings)


def _batches(x, size):
    return [x[i:i + size] for i in range(0, len(x), size)]


def run_tflite(path, images, batch=25) -> dict:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tf.lite.Interpreter's deprecation notice
        runner = Interpreter(model_path=str(path), num_threads=2).get_signature_runner("serving_default")
    outs = [runner(image=b) for b in _batches(images, batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("code", "embedding")}


def run_onnx(path, images, batch=50) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs = [dict(zip(names, session.run(None, {"image": b}))) for b in _batches(images, batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("code", "embedding")}


def run_savedmodel(path, images, batch=50) -> dict:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    outs = [{k: v.numpy() for k, v in serve(image=tf.constant(b)).items()} for b in _batches(images, batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("code", "embedding")}


RUNNERS = {"tflite": (run_tflite, "model.tflite"), "onnx": (run_onnx, "model.onnx"),
           "savedmodel": (run_savedmodel, "saved_model")}


@pytest.fixture(scope="module")
def outputs(exports, faces):
    return {fmt: run(exports[fmt] / file, faces) for fmt, (run, file) in RUNNERS.items()}


# ---------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("fmt", list(RUNNERS))
def test_exported_model_equals_keras_pipeline(fmt, outputs, keras_ref, pipeline):
    """≥ 99.9% identical code symbols over 500 faces x m groups; every embedding cosine > 0.9999."""
    embeddings, codes = keras_ref
    out = outputs[fmt]
    assert out["code"].dtype == np.int32 and out["code"].shape == codes.shape == (N_FACES, pipeline.hasher.m)
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == embeddings.shape
    same = float(np.mean(out["code"] == codes))
    cosine = np.sum(out["embedding"] * embeddings, axis=1)
    print(f"\n[export] {fmt}: identical groups {same:.6f}, min cosine {cosine.min():.8f}, "
          f"faces with identical codes {np.mean(np.all(out['code'] == codes, axis=1)):.3f}")
    assert same >= 0.999
    assert cosine.min() > 0.9999
    assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)


def test_manifest(exports):
    from iom.export.manifest import sha256_file

    for name, folder in exports.items():
        manifest = json.loads((folder / "export.json").read_text())
        assert manifest["model_id"] == DEFAULT_HASHER and (manifest["m"], manifest["q"]) == (512, 8)
        assert manifest["format"] == ("onnx" if name == "crop" else name)
        side = CROP if name == "crop" else 112
        assert manifest["input"]["shape"] == [None, side, side, 3] and manifest["input"]["dtype"] == "uint8"
        assert [o["name"] for o in manifest["outputs"]] == ["code", "embedding"]
        assert manifest["variant"] == ("crop" if name == "crop" else "face")
        for rel, entry in manifest["files"].items():
            assert sha256_file(folder / rel) == entry["sha256"], rel
        main = manifest["model"] if name != "savedmodel" else "saved_model/saved_model.pb"
        assert manifest["model_sha256"] == manifest["files"][main]["sha256"]
        assert (folder / "reference.py").read_bytes() == (REPO / "iom" / "export" / "reference.py").read_bytes()
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folder left"


def test_crop_variant(exports, faces, keras_ref):
    """The crop model on each aligned face upscaled to 160x160: most code symbols agree with the
    aligned pipeline (the 160 → 112 bilinear resize inside the model blurs a little)."""
    import cv2

    crops = np.stack([cv2.resize(f, (CROP, CROP), interpolation=cv2.INTER_LINEAR) for f in faces])
    out = run_onnx(exports["crop"] / "model.onnx", crops)
    same = float(np.mean(out["code"] == keras_ref[1]))
    cosine = np.sum(out["embedding"] * keras_ref[0], axis=1)
    print(f"\n[export] crop {CROP}: identical groups {same:.4f}, median cosine {np.median(cosine):.4f}")
    assert same > 0.8


# ---------------------------------------------------------------------------- reference keying
def _raw(key) -> bytes:
    """A TemplateKey's 32 bytes: what a deployment hands the device (no public accessor)."""
    return key._key


@pytest.mark.parametrize("m, q", [(512, 8), (64, 16), (100, 256), (64, 2), (33, 5), (1, 3)])
def test_reference_equals_keying_and_packing(m, q):
    from iom.export import reference
    from iom.hashing.keying import CodeKeying
    from iom.keys import TemplateKey
    from iom.search.packing import pack_codes, to_bytes

    rng = np.random.default_rng(m * 1000 + q)
    for _ in range(3):
        keys = [TemplateKey.random(rng) for _ in range(2)]
        codes = rng.integers(0, q, size=(4, m))
        keyed = CodeKeying(keys[0], m, q).apply(codes)
        assert np.array_equal(reference.relabel(codes, _raw(keys[0]), m, q), keyed)
        twice = CodeKeying(keys[1], m, q).apply(keyed)
        for i in range(len(codes)):
            assert reference.pack(keyed[i], q) == to_bytes(pack_codes(keyed[i:i + 1], q)[0])
            assert reference.template_bytes(codes[i], [_raw(k) for k in keys], m, q) == \
                to_bytes(pack_codes(twice[i:i + 1], q)[0])


def test_reference_stream_equals_numpy():
    """SeedSequence and PCG64 re-implemented in plain integers give NumPy's exact words."""
    from iom.export import reference
    from iom.keys import TemplateKey

    rng = np.random.default_rng(7)
    for n in (1, 4, 8, 11):
        words = [int(w) for w in rng.integers(0, 2**32, size=n)]
        assert reference.seed_sequence_state(words, 8) == \
            [int(w) for w in np.random.SeedSequence(words).generate_state(8)]
    key = TemplateKey.random(rng)
    stream = reference.KeyStream(_raw(key), "any purpose")
    assert [stream.next64() for _ in range(50)] == [int(x) for x in key.stream("any purpose")._bits.random_raw(50)]


def test_reference_is_standalone():
    """reference.py imports nothing of the project (numpy, hashlib, hmac) and stays short."""
    path = REPO / "iom" / "export" / "reference.py"
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"numpy", "hashlib", "hmac"}, imported
    assert len(path.read_text().splitlines()) <= 150


def test_device_template_equals_stored_template(tmp_path, exports, faces, outputs, keras_ref, pipeline):
    """End to end: the exported model's code, keyed and packed by reference.py with the keys
    the service derives, is byte for byte what TemplateService stores for an enrollment:
    the verification record (one relabelling under the token-derived key) and the
    identification record (two: the gallery key, then the template's own key)."""
    from iom.export import reference
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore
    from iom.service.template_keys import (binding_context, gallery_key, identification_key, scrypt_cost,
                                           verification_key)

    device = outputs["tflite"]["code"]
    i = int(np.flatnonzero(np.all(device == keras_ref[1], axis=1))[0])  # a face whose code is exact
    service = TemplateService(pipeline, SQLiteStore(tmp_path / "t.db"), SECRET,
                              policy=ServicePolicy(scrypt_n=2**10))
    try:
        service.enroll("alice", photos=[faces[i]], user_token=TOKEN)
        stored = service.store.active("alice")
    finally:
        service.store.close()
    m, q, model_id = pipeline.hasher.m, pipeline.hasher.q, pipeline.model_id
    ver, ident = stored["verify"], stored["identify"]

    vkey = verification_key(TOKEN.encode(), SECRET, ver.salt,
                            binding_context("alice", "verify", ver.key_version, model_id),
                            scrypt_cost(ver.key_version))
    assert reference.template_bytes(device[i], [_raw(vkey)], m, q) == ver.code

    ikey = identification_key(SECRET, ident.salt, binding_context("alice", "identify", ident.key_version, model_id))
    assert reference.template_bytes(device[i], [_raw(gallery_key(SECRET)), _raw(ikey)], m, q) == ident.code
    assert reference.template_bytes(device[i], [_raw(ikey)], m, q) != ident.code


# ---------------------------------------------------------------------------- arguments
def _script(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "export.py"), *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_cli_errors_write_nothing(tmp_path):
    out = tmp_path / "new" / "dir"
    cases = [(["--format", "tiff", "--out", out], "unknown format 'tiff': one of tflite, onnx, savedmodel"),
             (["--format", "onnx", "--hasher", "nope", "--out", out], "hasher 'nope' is not a folder in"),
             (["--format", "onnx", "--hasher", "../models", "--out", out], "is not a valid model name"),
             (["--format", "onnx", "--variant", "box", "--out", out], "unknown variant 'box'"),
             (["--format", "onnx", "--crop_size", "128", "--out", out], "--crop_size applies to --variant crop"),
             (["--format", "onnx", "--variant", "crop", "--crop_size", "8", "--out", out], "crop_size must be"),
             (["--format", "onnx", "--hasher", "mobilefacenet_ms1m", "--out", out], "is a stage-1 model (the embedding network), not a hasher")]
    for args, message in cases:
        proc = _script(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    proc = _script("--format", "tflite", "--out", full)
    assert proc.returncode == 2 and "is not empty" in proc.stderr and "--force" in proc.stderr
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    proc = _script("--format", "tflite", "--out", tmp_path / "file")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr


def test_failed_conversion_writes_nothing_and_force_replaces(tmp_path, monkeypatch):
    """A converter that fails leaves no output, temporary folder or created parent; --force
    replaces a non-empty folder whole (the converters are stubbed: no TensorFlow needed)."""
    from iom.export import ExportError, convert
    from iom.export.exporter import _export_here, check_arguments

    def broken(model, path):
        raise RuntimeError("converter exploded")

    monkeypatch.setitem(convert.CONVERTERS, "tflite", broken)
    out = tmp_path / "a" / "b"
    with pytest.raises(ExportError, match="tflite conversion failed: RuntimeError: converter exploded"):
        _export_here(DEFAULT_HASHER, "tflite", str(out), "face", None)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setitem(convert.CONVERTERS, "tflite", lambda model, path: open(path, "wb").write(b"flatbuffer"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ExportError, match="is not empty"):
        check_arguments(DEFAULT_HASHER, "tflite", out)
    check_arguments(DEFAULT_HASHER, "tflite", out, force=True)
    manifest = _export_here(DEFAULT_HASHER, "tflite", str(out), "face", None)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.tflite", "reference.py"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert json.loads((out / "export.json").read_text()) == manifest
    assert manifest["files"]["model.tflite"]["bytes"] == len(b"flatbuffer")


def test_missing_onnx_converter_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    from iom.export import ExportError
    from iom.export.exporter import check_arguments

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    with pytest.raises(ExportError, match="--format onnx needs the tf2onnx package"):
        check_arguments(DEFAULT_HASHER, "onnx", tmp_path / "x")
    check_arguments(DEFAULT_HASHER, "tflite", tmp_path / "x")
