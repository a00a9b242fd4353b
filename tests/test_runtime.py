"""The serving runtime (issue 26, part 2): the stage-1 backbone as the shipped TFLite file.

``models/mobilefacenet_ms1m/embedder.tflite`` and its ``runtime.json`` (made by
scripts/export_runtime.py), :class:`arcface.runtime.TFLiteEmbedder`, the choice of runtime
(:mod:`iom.service.runtime`, ``Pipeline.from_pretrained(runtime=...)``, ``iomface --runtime``).
Faces: 100 of the 500 LFW equivalence faces (../shared/data; skipped, saying so, when absent)
and the demo portraits that installed packages ship (run_me.py's), aligned by MTCNN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from iom.errors import InvalidInputError
from tests.conftest import REPO, shared_data
from tests.test_iom_cli_security import cli, one_error_line  # noqa: F401  (fixtures)

MODEL = "mobilefacenet_ms1m"
HASHERS = ("iom_mobilefacenet_ms1m_512x8", "iom_mobilefacenet_ms1m_64x8")
SECRET = b"application-secret-for-runtime-tests"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_record() -> dict:
    from arcface.pretrained import MODELS_DIR

    return json.loads((Path(MODELS_DIR) / MODEL / "runtime.json").read_text())


# ---------------------------------------------------------------------------- the shipped file
def test_the_shipped_file_is_the_one_its_record_names_made_from_the_shipped_weights():
    from arcface.pretrained import MODELS_DIR
    from iom.export.runtime import hashers_on

    folder = Path(MODELS_DIR) / MODEL
    record = shipped_record()
    assert record["file"] == "embedder.tflite" and record["model"] == MODEL
    assert sha256(folder / "embedder.tflite") == record["sha256"]
    assert (folder / "embedder.tflite").stat().st_size == record["bytes"]
    assert record["source"]["weights"]["sha256"] == sha256(folder / "backbone.weights.h5")
    assert record["converter"]["tensorflow"] and record["converter"]["keras"]
    eq = record["equivalence"]
    assert eq["faces"] == 500 and "every 26th" in eq["faces_source"]
    assert sorted(eq["hashers"]) == sorted(HASHERS) == hashers_on(MODEL)
    assert all(f["identical_codes"] == 1.0 and f["identical_groups"] == 1.0 for f in eq["hashers"].values())
    assert 0.9999 < eq["min_cosine"] <= 1.0 + 1e-6


@pytest.mark.parametrize("hasher", HASHERS)
def test_auto_picks_the_shipped_file_for_both_hashers(hasher):
    from iom.service.pipeline import Pipeline
    from iom.service.runtime import choose_runtime

    choice = choose_runtime("auto", Pipeline.shipped(hasher))
    assert choice.runtime == "tflite", choice.reason
    assert choice.path.endswith(os.path.join(MODEL, "embedder.tflite")) and choice.sha256 == shipped_record()["sha256"]
    assert "every un-keyed code identical on 500 faces" in choice.describe()
    assert choose_runtime("keras", Pipeline.shipped(hasher)).runtime == "keras"


def test_other_stage1_models_stay_on_keras():
    from iom.service.pipeline import Pipeline
    from iom.service.runtime import choose_runtime

    info = Pipeline.shipped("iom_mbfn_celeba299_64x8")               # mbfn_celeba299: no runtime.json
    choice = choose_runtime("auto", info)
    assert choice.runtime == "keras" and "runtime.json: no such file" in choice.reason
    with pytest.raises(InvalidInputError, match=r"--runtime tflite: .*mbfn_celeba299.*runtime.json: no such file"):
        choose_runtime("tflite", info)
    with pytest.raises(InvalidInputError, match="not one of auto, keras, tflite"):
        choose_runtime("onnx", info)


# ---------------------------------------------------------------------------- faces and pipelines
def _equivalence_subset() -> np.ndarray:
    from iom.export.runtime import equivalence_faces, read_faces

    root = shared_data("lfw_112")
    paths, step = equivalence_faces(root)
    assert step == 26 and len(paths) == 500
    return read_faces(paths[::5], 112)                  # 100 of the 500, spread over the set


@pytest.fixture(scope="module")
def pipelines():
    """The default hasher's pipeline on each runtime, without alignment (aligned crops in)."""
    from iom.service.pipeline import Pipeline

    out = {name: Pipeline.from_pretrained(align=False, runtime=name, threads=1) for name in ("keras", "tflite")}
    assert out["tflite"].runtime.runtime == "tflite" and out["keras"].runtime.runtime == "keras"
    return out


@pytest.fixture(scope="module")
def sample_faces():
    """run_me.py's three demo photos (Grace Hopper, her augmented copy, Eileen Collins), aligned."""
    from arcface.align import FaceAligner
    from run_me import demo_photos

    aligner = FaceAligner()
    return np.stack([aligner.align(photo)[0].image for _, photo in demo_photos()])


@pytest.fixture(scope="module", params=["lfw", "samples"])
def faces(request, sample_faces):
    return _equivalence_subset() if request.param == "lfw" else sample_faces


def one_at_a_time(embedder, faces) -> np.ndarray:
    return np.concatenate([embedder.embed_arrays(f[None]) for f in faces])


def test_tflite_codes_are_the_keras_codes(pipelines, faces):
    """Both shipped hashers' un-keyed codes, one face a call (the service's path), are the same
    from either runtime; the embeddings agree to float32 rounding."""
    from arcface.pretrained import MODELS_DIR
    from iom.hashing.hasher import DeepIoMHasher

    keras_emb = one_at_a_time(pipelines["keras"].embedder, faces)
    lite_emb = one_at_a_time(pipelines["tflite"].embedder, faces)
    assert lite_emb.dtype == np.float32 and lite_emb.shape == keras_emb.shape == (len(faces), 192)
    np.testing.assert_allclose(np.linalg.norm(lite_emb, axis=1), 1.0, atol=1e-6)
    assert np.sum(keras_emb * lite_emb, axis=1).min() > 0.99999
    for name in HASHERS:
        hasher = pipelines["keras"].hasher if name == pipelines["keras"].model_id else \
            DeepIoMHasher.load(os.path.join(MODELS_DIR, name))
        np.testing.assert_array_equal(hasher.codes(lite_emb), hasher.codes(keras_emb), err_msg=name)
    # through the pipeline's own call, batched: a face's embedding does not depend on its batch
    np.testing.assert_array_equal(pipelines["tflite"].embed_photos(list(faces)), lite_emb)


def test_stored_templates_are_byte_for_byte_the_same(pipelines, faces, tmp_path, monkeypatch):
    """The same subjects enrolled through a TemplateService on each runtime, with the same secret,
    tokens and salts (the salt source made deterministic, the same for both), store the same
    salts and the same template bytes, verification and identification."""
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore

    def enrol_all(runtime: str) -> dict:
        counter = iter(range(1 << 30))
        monkeypatch.setattr(os, "urandom", lambda n: hashlib.shake_256(
            b"salt-%d" % next(counter)).digest(n))
        store = SQLiteStore(tmp_path / f"{runtime}.db")
        service = TemplateService(pipelines[runtime], store, SECRET, policy=ServicePolicy(scrypt_n=2**10))
        subjects = {f"s{i:02d}": [faces[i], faces[(i + 1) % len(faces)]] if i % 2 else [faces[i]]
                    for i in range(min(len(faces), 8))}
        for subject, photos in subjects.items():
            service.enroll(subject, photos, user_token=f"token-of-{subject}-7Qx9")
        out = {s: {p: (r.salt, r.code) for p, r in store.active(s).items()} for s in subjects}
        store.close()
        monkeypatch.undo()
        return out

    keras_rows, lite_rows = enrol_all("keras"), enrol_all("tflite")
    assert keras_rows and all(set(rows) == {"verify", "identify"} for rows in keras_rows.values())
    assert lite_rows == keras_rows


# ---------------------------------------------------------------------------- threads
def test_four_threads_embed_as_one(pipelines, sample_faces):
    from arcface.runtime import TFLiteEmbedder

    faces = np.concatenate([sample_faces] * 4)
    for embedder in (pipelines["tflite"].embedder,
                     TFLiteEmbedder(pipelines["tflite"].runtime.path, num_threads=1, max_interpreters=4)):
        serial = [embedder.embed_arrays(faces[i:i + 1 + i % 3]) for i in range(len(faces))]
        got: dict = {}
        errors = []

        def work(k):
            try:
                for _ in range(3):
                    for i in range(k, len(faces), 4):
                        out = embedder.embed_arrays(faces[i:i + 1 + i % 3])
                        assert np.array_equal(got.setdefault(i, out), out)
            except BaseException as e:              # noqa: BLE001 (reported below)
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(got) == list(range(len(faces)))
        for i, want in enumerate(serial):
            np.testing.assert_array_equal(got[i], want)
        assert 1 <= embedder.interpreters <= embedder.max_interpreters


def test_the_embedder_checks_its_input_and_file(pipelines, tmp_path):
    from arcface.errors import CheckpointError
    from arcface.runtime import TFLiteEmbedder

    embedder = pipelines["tflite"].embedder
    assert embedder.input_size == 112 and embedder.dim == 192
    assert embedder.embed_arrays(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 192)
    face = np.full((1, 112, 112, 3), 128, np.uint8)
    np.testing.assert_array_equal(embedder.embed_arrays(face.astype(np.float32)), embedder.embed_arrays(face))
    for bad in (np.zeros((1, 96, 96, 3), np.uint8), np.zeros((112, 112, 3), np.uint8),
                np.full((1, 112, 112, 3), 0.5, np.float32)):
        with pytest.raises(ValueError):
            embedder.embed_arrays(bad)
    with pytest.raises(CheckpointError, match="SHA-256"):
        TFLiteEmbedder(embedder.path, expected_sha256="0" * 64)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(CheckpointError, match="junk.tflite"):
        TFLiteEmbedder(junk)


# ---------------------------------------------------------------------------- choosing the runtime
@pytest.fixture
def models_copy(tmp_path, monkeypatch):
    """A copy of the default hasher and its stage-1 folder in tmp_path/models, which
    MODELS_DIR points at for the test; returns the stage-1 copy."""
    import arcface.pretrained

    from iom.defaults import DEFAULT_HASHER

    models = tmp_path / "models"
    for name in (DEFAULT_HASHER, MODEL):
        shutil.copytree(Path(arcface.pretrained.MODELS_DIR) / name, models / name)
    monkeypatch.setattr(arcface.pretrained, "MODELS_DIR", str(models))
    return models / MODEL


def _choose(requested):
    from iom.defaults import DEFAULT_HASHER
    from iom.service.pipeline import Pipeline
    from iom.service.runtime import choose_runtime

    return choose_runtime(requested, Pipeline.shipped(DEFAULT_HASHER))


def _edit_record(folder: Path, change) -> None:
    record = json.loads((folder / "runtime.json").read_text())
    change(record)
    (folder / "runtime.json").write_text(json.dumps(record))


@pytest.mark.parametrize("damage, says", [
    ("no record", r"runtime.json: no such file"),
    ("no file", r"embedder.tflite: no such file"),
    ("other weights", r"converted from weights with SHA-256 .*, but the Keras path loads .*backbone.weights.h5"),
    ("changed file", r"embedder.tflite: SHA-256 .* is not the .* that runtime.json records"),
    ("bad record", r"runtime.json: unreadable"),
    ("no interpreter", r"no TFLite interpreter is installed"),
])
def test_auto_falls_back_to_keras_and_tflite_is_refused_naming_the_file(models_copy, monkeypatch, damage, says):
    assert _choose("auto").runtime == "tflite"                          # the intact copy
    if damage == "no record":
        (models_copy / "runtime.json").unlink()
    elif damage == "no file":
        (models_copy / "embedder.tflite").unlink()
    elif damage == "other weights":
        _edit_record(models_copy, lambda r: r["source"]["weights"].update(sha256="ab" * 32))
    elif damage == "changed file":
        with open(models_copy / "embedder.tflite", "ab") as f:
            f.write(b"\0")
    elif damage == "bad record":
        (models_copy / "runtime.json").write_text("{not json")
    else:
        import arcface.runtime

        monkeypatch.setattr(arcface.runtime, "interpreter_name", lambda: None)
    choice = _choose("auto")
    assert choice.runtime == "keras" and choice.path is None
    assert __import__("re").search(says, choice.reason), choice.reason
    with pytest.raises(InvalidInputError, match="--runtime tflite: .*" + says):
        _choose("tflite")
    assert _choose("keras").runtime == "keras"


def test_auto_needs_every_recorded_code_identical(models_copy):
    from iom.defaults import DEFAULT_HASHER

    _edit_record(models_copy, lambda r: r["equivalence"]["hashers"][DEFAULT_HASHER].update(identical_codes=0.998))
    choice = _choose("auto")
    assert choice.runtime == "keras" and "0.998 of the codes" in choice.reason
    forced = _choose("tflite")                      # asked for: allowed, saying so
    assert forced.runtime == "tflite" and "as asked, although" in forced.reason
    _edit_record(models_copy, lambda r: r["equivalence"]["hashers"].pop(DEFAULT_HASHER))
    assert "records no equivalence for hasher" in _choose("auto").reason


def test_from_pretrained_loads_what_was_chosen(models_copy):
    from arcface.embed import Embedder
    from arcface.runtime import TFLiteEmbedder
    from iom.service.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(align=False, threads=1)
    assert isinstance(pipeline.embedder, TFLiteEmbedder) and pipeline.runtime.runtime == "tflite"
    assert pipeline.embedder.num_threads == 1
    _edit_record(models_copy, lambda r: r["source"]["weights"].update(sha256="cd" * 32))
    pipeline = Pipeline.from_pretrained(align=False)
    assert isinstance(pipeline.embedder, Embedder) and pipeline.runtime.runtime == "keras"
    with pytest.raises(InvalidInputError, match="runtime.json"):
        Pipeline.from_pretrained(align=False, runtime="tflite")


# ---------------------------------------------------------------------------- the command line
def test_runtime_is_a_documented_common_option():
    from iom.cli.parser import build_parser

    parser = build_parser()
    assert "--runtime {auto,keras,tflite}" in parser.format_help()
    assert parser.parse_args(["compare", "a", "b"]).runtime == "auto"
    assert parser.parse_args(["compare", "a", "b", "--runtime", "keras"]).runtime == "keras"
    assert parser.parse_args(["--runtime", "tflite", "serve", "--keys_file", "k"]).runtime == "tflite"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["compare", "a", "b", "--runtime", "onnx"])
    assert e.value.code == 2


@pytest.fixture
def aligned_pair(tmp_path, sample_faces):
    from arcface.data.images import encode_png

    paths = []
    for i in (0, 1):
        path = tmp_path / f"face{i}.png"
        path.write_bytes(encode_png(sample_faces[i]))
        paths.append(path)
    return paths


def test_forced_tflite_without_its_file_is_one_error_line_before_any_model_loads(cli, models_copy, aligned_pair,
                                                                                monkeypatch):
    from iom.service.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("a model loaded")))
    (models_copy / "runtime.json").unlink()
    rc, out, err = cli("compare", *aligned_pair, "--aligned", "--runtime", "tflite")
    assert rc == 2 and out == ""
    line = one_error_line(err)
    assert "--runtime tflite" in line and os.path.realpath(models_copy / "runtime.json") in line


def test_verbose_says_which_runtime_loaded_and_why(cli, pipelines, aligned_pair, monkeypatch):
    from iom.service.pipeline import Pipeline

    asked = []

    def cached(cls, name=None, align=True, runtime="auto", **kw):
        asked.append((runtime.runtime, kw))
        return pipelines[runtime.runtime]

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(cached))
    rc, out, err = cli("compare", *aligned_pair, "--aligned", "--verbose")
    assert rc == 0, err
    assert "stage-1 runtime TFLite (embedder.tflite), --runtime auto: runtime.json matches the weights" in err
    assert "ai_edge_litert" in err or "tensorflow.lite" in err
    rc, out, err = cli("compare", *aligned_pair, "--aligned", "--verbose", "--runtime", "keras")
    assert rc == 0 and "stage-1 runtime Keras, --runtime keras: as asked (the Keras backbone)" in err
    assert [r for r, _ in asked] == ["tflite", "keras"]


def test_interpreter_threads_follow_op_threads(monkeypatch):
    from iom.cli.loading import interpreter_threads

    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert interpreter_threads(argparse.Namespace(command="serve", op_threads=None)) == 1
    assert interpreter_threads(argparse.Namespace(command="serve", op_threads=3)) == 3
    assert interpreter_threads(argparse.Namespace(command="compare")) is None            # every core
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "2")
    assert interpreter_threads(argparse.Namespace(command="serve", op_threads=None)) == 2
    assert interpreter_threads(argparse.Namespace(command="verify")) == 2


def test_the_export_script_refuses_bad_arguments_before_converting(tmp_path):
    import subprocess
    import sys

    from iom.export import ExportError
    from iom.export.runtime import main

    done = subprocess.run([sys.executable, "scripts/export_runtime.py", "--model", "no_such_model"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 2 and done.stderr.startswith("error: no shipped model named 'no_such_model'")
    with pytest.raises(ExportError, match="not a folder"):
        main(["--model", MODEL, "--faces", str(tmp_path / "absent")])
    with pytest.raises(ExportError, match="no images"):
        main(["--model", MODEL, "--faces", str(tmp_path), "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
