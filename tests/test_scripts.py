"""The command-line scripts, run as subprocesses on an untrained MobileFaceNet saved to disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from arcface.config import load_config
from arcface.data.pairs import LfwPair, write_lfw_pairs
from arcface.embed import Embedder

REPO = Path(__file__).resolve().parents[1]
EMBD = 32
PEOPLE = [f"person_{c}" for c in range(4)]  # 4 people x 3 images = 12 JPEGs per image set


def face(rng) -> np.ndarray:
    """A smooth 112x112 RGB image (a random 7x7 pattern enlarged), so JPEG keeps it close."""
    small = rng.integers(0, 256, (7, 7, 3)).astype(np.uint8)
    return cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # KERAS_BACKEND is inherited
    return subprocess.run([sys.executable, f"scripts/{script}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Config, saved backbone weights, an identity folder and an LFW-layout pairs folder."""
    root = tmp_path_factory.mktemp("scripts")
    rng = np.random.default_rng(0)

    faces = root / "faces"
    for person in PEOPLE:
        (faces / person).mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(faces / person / f"{k}.jpg"), face(rng))

    pairs_dir = root / "pairs_set"
    for person in PEOPLE:
        (pairs_dir / person).mkdir(parents=True)
        for idx in range(1, 4):
            cv2.imwrite(str(pairs_dir / person / f"{person}_{idx:04d}.jpg"), face(rng))
    pairs = []
    for fold in range(2):  # 2 folds x (2 same + 2 different)
        pairs += [LfwPair(PEOPLE[2 * fold + j], 1, PEOPLE[2 * fold + j], 2 + j) for j in range(2)]
        pairs += [LfwPair(PEOPLE[j], 1 + fold, PEOPLE[j + 2], 3 - fold) for j in range(2)]
    write_lfw_pairs(pairs_dir / "pairs.txt", pairs, n_folds=2, n_per_fold=2)

    cfg_path = root / "mbf.yaml"
    cfg_path.write_text(
        "batch_size: 8\n"
        "eval_batch_size: 8\n"           # 12 images: one full batch and one padded batch
        "input_size: 112\n"
        f"embd_shape: {EMBD}\n"
        "sub_name: mbf_test\n"
        "backbone_type: MobileFaceNet\n"
        "workers: 2\n"
        f"test_dataset: '{pairs_dir}'\n"
    )
    cfg = load_config(cfg_path)

    from arcface.models import build_backbone_from_config

    weights = root / "bb.weights.h5"
    backbone = build_backbone_from_config(cfg)  # untrained: random but fixed once saved
    backbone.save_weights(str(weights))
    return dict(root=root, faces=faces, pairs_dir=pairs_dir, cfg_path=cfg_path, cfg=cfg,
                weights=weights, backbone=backbone)


def embedder(setup, flip=False):
    cfg = setup["cfg"]
    return Embedder(setup["backbone"], cfg["eval_batch_size"], cfg["input_size"], flip=flip, workers=2)


def test_get_embd_writes_the_embeddings(setup):
    out = setup["root"] / "out" / "emb.npz"
    proc = run_script("get_embd.py", "--cfg_path", setup["cfg_path"], "--model_path", setup["weights"],
                      "--read_path", setup["faces"], "--save_path", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saved 12 embeddings of dimension 32" in proc.stdout

    with np.load(out, allow_pickle=False) as data:
        names, emb = list(data["names"]), data["embeddings"]
        labels, class_names = data["labels"], list(data["class_names"])
    assert names == [f"{p}/{k}.jpg" for p in PEOPLE for k in range(3)]
    assert class_names == PEOPLE
    np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
    assert emb.shape == (12, EMBD) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    paths = [str(setup["faces"] / n) for n in names]
    want = embedder(setup).embed_items(paths)
    np.testing.assert_allclose(emb, want, atol=1e-4)
    # the images are different, so are their embeddings (the comparison is not vacuous)
    cos = emb @ emb.T
    assert cos[~np.eye(12, dtype=bool)].max() < 1 - 1e-4


def test_evaluate_prints_table_json_and_plots(setup):
    from arcface.verification import evaluate_pair_set, load_verification_sets

    root = setup["root"]
    plot_dir = root / "plots"
    out_json = root / "res" / "out.json"
    proc = run_script("evaluate.py", "--cfg_path", setup["cfg_path"], "--model_path", setup["weights"],
                      "--json", out_json, "--plot_dir", plot_dir, "--flip")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Accuracy" in proc.stdout and "pairs_set" in proc.stdout

    result = json.loads(out_json.read_text())
    assert result["flip_test"] is True and result["model_path"] == str(setup["weights"])
    assert set(result["sets"]) == {"pairs_set"}
    got = result["sets"]["pairs_set"]
    for key in ("accuracy", "eer", "auc"):
        assert isinstance(got[key], float) and 0.0 <= got[key] <= 1.0, key
    assert got["n_pairs"] == 8 and got["n_same"] == 4 and len(got["fold_accuracies"]) == 2
    roc, det = plot_dir / "mbf_test_roc.png", plot_dir / "mbf_test_det.png"
    assert sorted(result["plots"]) == sorted([str(det), str(roc)])
    for png in (roc, det):
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same numbers as an in-process evaluation (flip test) of the same weights
    (pairset,) = load_verification_sets(str(setup["pairs_dir"]))
    want = evaluate_pair_set(embedder(setup, flip=True), pairset)
    assert got["auc"] == pytest.approx(want.auc, abs=1e-6)
    assert got["eer"] == pytest.approx(want.eer, abs=1e-6)
    assert got["accuracy"] == pytest.approx(want.accuracy, abs=1e-6)


@pytest.mark.parametrize("script, extra", [
    ("get_embd.py", ["--read_path", "FACES", "--save_path", "x.npz"]),
    ("evaluate.py", []),
])
def test_missing_model_path_exits_2(setup, script, extra):
    missing = setup["root"] / "nope.weights.h5"
    extra = [str(setup["faces"]) if a == "FACES" else a for a in extra]
    extra = [str(setup["root"] / a) if a == "x.npz" else a for a in extra]
    proc = run_script(script, "--cfg_path", setup["cfg_path"], "--model_path", missing, *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0], out
    assert not (setup["root"] / "x.npz").exists()


# --------------------------------------------------------------------------- issue 13: traps
RAW_PHOTO = ("raw", "lfw", "Aaron_Peirsol", "Aaron_Peirsol_0001.jpg")     # a 250x250 LFW original


def load_script(name: str):
    """A script's module (its main() raises the typed errors fail_cleanly turns into exit 2)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_get_embd_refuses_a_raw_photo_without_align(tmp_path):
    from tests.conftest import shared_data

    photo = shared_data(*RAW_PHOTO)
    out = tmp_path / "out" / "emb.npz"
    proc = run_script("get_embd.py", "--read_path", photo, "--save_path", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert str(photo) in error and "250x250" in error and "112x112" in error
    assert "--align" in error and "scripts/align_dataset.py" in error and "nothing was written" in error
    assert not out.exists() and not out.parent.exists()


def test_get_embd_refusal_is_typed_and_names_each_unaligned_image(setup, tmp_path):
    from arcface.errors import DataFormatError, UnalignedImageError

    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(2):
        cv2.imwrite(str(folder / f"aligned_{k}.jpg"), face(rng))
    cv2.imwrite(str(folder / "photo.jpg"), cv2.resize(face(rng), (160, 120)))
    out = tmp_path / "x.npz"
    get_embd = load_script("get_embd")
    with pytest.raises(UnalignedImageError, match=r"1 of 3 images .* photo\.jpg \(160x120\).*--align") as e:
        get_embd.main(["--cfg_path", str(setup["cfg_path"]), "--model_path", str(setup["weights"]),
                       "--read_path", str(folder), "--save_path", str(out)])
    assert isinstance(e.value, DataFormatError)
    assert f"--src {folder}" in str(e.value)                      # the folder command, ready to run
    assert not out.exists()


def test_get_embd_align_embeds_a_raw_photo_like_its_aligned_crop(tmp_path):
    """No --cfg_path/--model_path: the shipped default model; --align makes the raw photo's
    embedding that of the face (the aligned LFW crop of the same photo), which the resized
    raw photo's is not."""
    from tests.conftest import shared_data

    from arcface.models import load_pretrained
    from arcface.pretrained import DEFAULT_MODEL

    photo = shared_data(*RAW_PHOTO)
    crop = shared_data("lfw_112", *RAW_PHOTO[2:])
    out = tmp_path / "emb.npz"
    proc = run_script("get_embd.py", "--align", "--read_path", photo, "--save_path", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"models/{DEFAULT_MODEL}/" in proc.stdout                # the default, as --help says
    assert "saved 1 embeddings of dimension 192" in proc.stdout and "aligned with MTCNN" in proc.stdout
    with np.load(out, allow_pickle=False) as data:
        names, emb = list(data["names"]), data["embeddings"]
    assert names == [photo.name] and emb.shape == (1, 192)

    cfg, backbone = load_pretrained(DEFAULT_MODEL)
    embed = Embedder(backbone, 8, cfg["input_size"], workers=1)
    aligned, resized = embed.embed_items([str(crop)]), embed.embed_items([str(photo)])
    assert float(emb[0] @ aligned[0]) > 0.9                       # measured: 0.99
    assert float(resized[0] @ aligned[0]) < 0.5                   # the trap: 0.19


def test_get_embd_help_states_the_defaults_it_applies():
    from arcface.pretrained import DEFAULT_MODEL

    proc = run_script("get_embd.py", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())                           # argparse wraps lines
    assert f"when neither option is given, the shipped default model {DEFAULT_MODEL}" in text
    assert "Required for any other --model_path" in text
    assert "--align" in text and "MTCNN" in text
    assert "checkpoints/<sub_name>" in text                        # the --model_path default


def test_stage1_config_path_defaults(tmp_path):
    """What --help says: shipped name → its config; model folder (or a file in it) → its
    config.yaml; neither → the default model's; any other path → a ConfigError saying what to pass."""
    from arcface.cli import stage1_config_path
    from arcface.errors import CheckpointError, ConfigError
    from arcface.pretrained import DEFAULT_MODEL, MODELS_DIR

    default_cfg = os.path.join(MODELS_DIR, DEFAULT_MODEL, "config.yaml")
    assert stage1_config_path(None, None) == default_cfg
    assert stage1_config_path(None, DEFAULT_MODEL) == default_cfg
    assert stage1_config_path("x.yaml", DEFAULT_MODEL) == "x.yaml"
    folder = os.path.join(MODELS_DIR, DEFAULT_MODEL)
    assert stage1_config_path(None, folder) == default_cfg
    assert stage1_config_path(None, os.path.join(folder, "backbone.weights.h5")) == default_cfg
    bare = tmp_path / "w.weights.h5"
    bare.write_bytes(b"")
    with pytest.raises(ConfigError, match="pass --cfg_path"):
        stage1_config_path(None, str(bare))
    with pytest.raises(CheckpointError, match="no such file"):
        stage1_config_path(None, str(tmp_path / "missing.weights.h5"))


def test_evaluate_on_an_untrained_config_says_so(tmp_path):
    """docs/DESIGN.md's example before training: one error naming the config, the folder looked in,
    the training command and the shipped alternative; exit 2, before any data is read."""
    cfg = REPO / "configs" / "arc_mbfn_celeba_tiny.yaml"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--cfg_path", str(cfg)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"{cfg} has not been trained yet" in error
    assert str(tmp_path / "checkpoints" / "arc_mbfn_celeba_tiny") in error
    assert f"python scripts/train_arcface.py --cfg_path {cfg}" in error
    assert "--model_path mobilefacenet_ms1m" in error
    assert not (tmp_path / "outputs").exists()
