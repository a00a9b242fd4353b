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
