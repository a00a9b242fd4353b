"""Stage 2 end to end: config validation, training on cached embeddings, the hasher file,
key scenarios, and the two command-line scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import keras
import numpy as np
import pytest

from arcface.config import validate_config
from arcface.data.pairs import LfwPair, write_lfw_pairs
from arcface.embeddings_io import save_embeddings
from arcface.errors import CheckpointError, ConfigError
from arcface.metrics import auc
from iom.config import STAGE2_FIELDS, finalize_stage2, load_stage2_config
from iom.evaluation.cancelability import cancelability_report, run_scenarios
from iom.evaluation.matching import hamming_similarity
from iom.hashing.hasher import DeepIoMHasher
from iom.keys import TemplateKey

REPO = Path(__file__).resolve().parents[1]


def stage2_cfg(**values):
    base = {"sub_name": "t", "m": 8, "q": 4}
    return finalize_stage2(validate_config({**base, **values}, STAGE2_FIELDS, "test.yaml"))


def synthetic_embeddings(n_classes=8, per_class=6, dim=16, seed=0, noise=0.3):
    """Unit vectors clustered by class (learnable)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    x = np.repeat(centres, per_class, axis=0) + noise * rng.normal(size=(n_classes * per_class, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), \
        np.repeat(np.arange(n_classes), per_class)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("iom_*.yaml")))
def test_shipped_stage2_configs_validate(path):
    cfg = load_stage2_config(path)
    assert cfg["m"] > 0 and cfg["q"] >= 2


@pytest.mark.parametrize("values, needle", [
    ({"loss_fun": "nope"}, "loss_fun"),
    ({"hidden_layer_remark": "X"}, "hidden_layer_remark"),
    ({"q": 1}, "'q'"),
    ({"m_": 3}, "did you mean 'm'"),
    ({"key_mode": "both"}, "key_mode"),
    ({"bin_lut_loss": "relu"}, "bin_lut_loss"),
    ({"train_dataset": "a", "train_embeddings": "b", "stage1_model": "x"}, "not both"),
    ({"train_dataset": "a"}, "stage1_model"),
])
def test_bad_stage2_configs_name_the_key(values, needle):
    with pytest.raises(ConfigError, match=needle):
        stage2_cfg(**values)


def test_boolean_loss_switches_become_weights():
    cfg = stage2_cfg(code_balance_loss=True, quanti=True)
    assert cfg["code_balance_loss"] == 1.0 and cfg["quanti"] == 0.1
    assert stage2_cfg(quanti=0.5)["quanti"] == 0.5 and stage2_cfg()["quanti"] == 0.0


# --------------------------------------------------------------------------- training
def test_train_stage2_on_an_embeddings_file_logs_every_term(tmp_path):
    from iom.hashing.train import train_stage2

    x, y = synthetic_embeddings()
    save_embeddings(tmp_path / "train.npz", [str(i) for i in range(len(x))], x, y)
    cfg = stage2_cfg(train_embeddings=str(tmp_path / "train.npz"), classes_per_batch=4,
                     samples_per_class=3, max_steps=30, save_steps=10, code_balance_loss=True,
                     quanti=True, bin_lut_loss="tanh", base_lr=0.01)
    hasher, history = train_stage2(cfg, tmp_path / "ckpt", tmp_path / "logs", progress=False)
    assert len(history["loss"]) == 3
    logged = [json.loads(line) for line in open(tmp_path / "logs" / "t" / "metrics.jsonl")]
    keys = set().union(*logged)
    for term in ("metric", "code_balance", "quantization", "bin_lut", "loss"):
        assert f"train/{term}" in keys
    loaded = DeepIoMHasher.load(str(tmp_path / "ckpt" / "t"))
    np.testing.assert_array_equal(loaded.codes(x), hasher.codes(x))
    assert loaded.codes(x).dtype == np.uint8 and loaded.codes(x).max() < 4


def test_training_separates_classes_better_than_the_random_start(tmp_path):
    from iom.hashing.train import train_stage2

    x, y = synthetic_embeddings(n_classes=10, per_class=8, dim=32, seed=1, noise=1.0)
    save_embeddings(tmp_path / "train.npz", [str(i) for i in range(len(x))], x, y)

    def margin(h):  # mean genuine minus mean impostor Hamming similarity
        c = h.codes(x)
        sim = (c[:, None, :] == c[None, :, :]).mean(2)
        same = y[:, None] == y[None, :]
        off = ~np.eye(len(y), dtype=bool)
        return sim[same & off].mean() - sim[~same].mean()

    cfg = stage2_cfg(train_embeddings=str(tmp_path / "train.npz"), m=16, q=4, classes_per_batch=5,
                     samples_per_class=4, max_steps=300, save_steps=300, base_lr=0.01)
    keras.utils.set_random_seed(cfg["seed"])                          # the start train_stage2 takes
    start = DeepIoMHasher.from_config(cfg, 32)
    trained, _ = train_stage2(cfg, tmp_path / "ckpt", tmp_path / "logs", progress=False)
    assert margin(trained) > margin(start) + 0.05


# --------------------------------------------------------------------------- keys
@pytest.fixture
def pair_protocol():
    x, y = synthetic_embeddings(n_classes=30, per_class=4, dim=16, seed=2)
    rng = np.random.default_rng(0)
    n = 3000
    left = rng.integers(0, len(x), n)
    right = np.where(rng.random(n) < 0.5, (left // 4) * 4 + (left + 1) % 4, rng.integers(0, len(x), n))
    return x, left, right, y[left] == y[right]


def test_code_keying_preserves_accuracy_and_unlinks_keys(pair_protocol):
    x, left, right, issame = pair_protocol
    hasher = DeepIoMHasher.from_config(stage2_cfg(m=256, q=8), 16)
    scores = run_scenarios(hasher, x, left, right, issame, n_draws=2, pool_size=8)
    training = scores["training"].draws[0]
    np.testing.assert_array_equal(scores["stolen"].draws[0], training)        # any shared key: same scores
    np.testing.assert_array_equal(scores["fresh"].draws[1][issame], training[issame])
    report = cancelability_report(scores, issame, q=8)
    assert abs(report.mated_cross_mean - 1 / 8) < 0.02                        # cross-key ≈ chance
    assert abs(report.mated_cross_mean - report.nonmated_cross_mean) < 0.02
    assert report.unlinkability.d_sys < 0.1


def test_embedding_key_mode_equals_training_codes_under_the_training_key(pair_protocol):
    x = pair_protocol[0]
    hasher = DeepIoMHasher.from_config(stage2_cfg(key_mode="embedding", train_key="k0"), 16)
    np.testing.assert_array_equal(hasher.encode(x, TemplateKey.from_seed("k0")), hasher.codes(x))
    assert not np.array_equal(hasher.encode(x, TemplateKey.from_seed("k1")), hasher.codes(x))


def test_hasher_rejects_bad_embeddings():
    hasher = DeepIoMHasher.from_config(stage2_cfg(), 16)
    with pytest.raises(ValueError, match="shape"):
        hasher.codes(np.zeros((3, 15), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        hasher.codes(np.full((3, 16), np.nan, np.float32))


def test_keyed_codes_of_one_key_match_themselves_exactly(pair_protocol):
    x = pair_protocol[0]
    hasher = DeepIoMHasher.from_config(stage2_cfg(m=64, q=16), 16)
    key = TemplateKey.random(np.random.default_rng(1))
    a, b = hasher.encode(x, key), hasher.encode(x[::-1], key)[::-1]
    assert hamming_similarity(a, b).min() == 1.0


# --------------------------------------------------------------------------- scripts
def face(rng):
    small = rng.integers(0, 256, (7, 7, 3)).astype(np.uint8)
    return cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)


def run_script(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, f"scripts/{script}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_and_test_scripts_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    people = [f"p{i}" for i in range(6)]
    faces, pairs_dir = tmp_path / "faces", tmp_path / "pairs"
    for person in people:
        for root, names in ((faces, [f"{k}.jpg" for k in range(4)]),
                            (pairs_dir, [f"{person}_{k:04d}.jpg" for k in range(1, 4)])):
            (root / person).mkdir(parents=True, exist_ok=True)
            for name in names:
                cv2.imwrite(str(root / person / name), face(rng))
    pairs = []
    for fold in range(2):
        pairs += [LfwPair(people[3 * fold + j], 1, people[3 * fold + j], 2 + (j % 2)) for j in range(3)]
        pairs += [LfwPair(people[j], 1 + fold, people[j + 3], 3 - fold) for j in range(3)]
    write_lfw_pairs(pairs_dir / "pairs.txt", pairs, n_folds=2, n_per_fold=3)
    from arcface.data.pair_generation import make_verification_bin

    make_verification_bin(pairs_dir, pairs_dir / "pairs.txt", tmp_path / "pairs_bin.bin")
    cfg = tmp_path / "iom.yaml"
    cfg.write_text(
        "sub_name: iom_test\nstage1_model: mbfn_celeba299\nm: 16\nq: 4\n"
        "classes_per_batch: 3\nsamples_per_class: 2\nmax_steps: 6\nsave_steps: 3\n"
        f"train_dataset: '{faces}'\ntest_dataset: ['{pairs_dir}', '{tmp_path / 'pairs_bin.bin'}']\n"
        f"identification_dataset: '{faces}'\n"
        f"cache_dir: '{tmp_path / 'cache'}'\nn_fresh_keys: 2\neval_batch_size: 16\ntarget_far: 0.1\n"
        "calibration_identities: 2\n")
    ckpt = tmp_path / "ckpt"
    done = run_script("train_twostage_tripletloss_online.py", "--cfg_path", cfg,
                      "--checkpoint_root", ckpt, "--log_root", tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (ckpt / "iom_test" / "hasher.json").is_file()
    out = tmp_path / "res.json"
    done = run_script("test_twostage_iom.py", "--cfg_path", cfg, "--model_path", ckpt / "iom_test",
                      "--json", out, "--plots", tmp_path / "plots", "--calibration", tmp_path / "cal.json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| Accuracy" in done.stdout and "D<->sys" in done.stdout
    # 6 identities, 2 held out for calibration: too few to hold any out for the guard, and it says so
    assert "the guard was off in training" in done.stdout
    res = json.loads(out.read_text())
    ver = res["verification"]["pairs"]
    assert set(ver) == {"raw", "deep_iom", "random_iom"}
    assert set(ver["deep_iom"]["scenarios"]) == {"training", "stolen", "fresh"}
    assert len(ver["deep_iom"]["scenarios"]["fresh"]["accuracy_per_draw"]) == 2
    assert 0.0 <= ver["deep_iom"]["cancelability"]["d_sys"] <= 1.0
    assert set(res["identification"]["faces"]) == {"raw", "deep_iom", "random_iom"}
    from_bin = res["verification"]["pairs_bin"]                      # the same images packed in a .bin
    assert from_bin["raw"]["report"]["auc"] == pytest.approx(ver["raw"]["report"]["auc"], abs=1e-6)
    assert from_bin["deep_iom"]["scenarios"]["training"]["report"]["auc"] == pytest.approx(
        ver["deep_iom"]["scenarios"]["training"]["report"]["auc"], abs=1e-6)
    cal = json.loads((tmp_path / "cal.json").read_text())
    # calibrated on the 2 identities held out of training (4 photos each): 16 impostor, 12 genuine pairs
    assert cal["far"] == 0.1 and cal["m"] == 16 and (cal["n_impostor"], cal["n_genuine"]) == (16, 12)
    assert [p["far"] for p in cal["operating_points"]] == [0.1, 0.01, 0.001, 0.0001]
    assert 0.0 <= cal["threshold"] <= 17 / 16 and "held out of training" in cal["dataset"]
    assert (tmp_path / "plots" / "pairs_roc.png").is_file()
    assert (tmp_path / "plots" / "pairs_deep_iom_unlinkability.png").is_file()
    # second run: embeddings come from the cache (no stage-1 model needed any more)
    done = run_script("test_twostage_iom.py", "--cfg_path", cfg, "--model_path", ckpt / "iom_test",
                      "--cancelability", "--no_random")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "random_iom" not in done.stdout


def test_scripts_fail_cleanly_on_a_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sub_name: x\nm: 8\nq: 4\nloss_fn: batch_hard_triplet\n")
    done = run_script("train_twostage_tripletloss_online.py", "--cfg_path", cfg)
    assert done.returncode == 2 and "unknown key 'loss_fn'" in done.stderr
    done = run_script("test_twostage_iom.py", "--cfg_path", REPO / "configs" / "iom_mbfn_celeba299_64x8.yaml",
                      "--model_path", tmp_path)
    assert done.returncode == 2 and "no saved hasher" in done.stderr


def test_key_assignment_of_each_scenario():
    from iom.evaluation.cancelability import assign_keys

    rng = np.random.default_rng(0)
    issame = rng.random(500) < 0.5
    left, right = assign_keys("training", issame, 8, rng)
    assert (left == -1).all() and (right == -1).all()
    left, right = assign_keys("stolen", issame, 8, rng)
    assert (left == right).all() and len(np.unique(left)) == 1
    left, right = assign_keys("fresh", issame, 8, rng)
    assert (left[issame] == right[issame]).all() and (left[~issame] != right[~issame]).all()
    assert len(np.unique(left)) == 8                                 # the whole pool is used
    left, right = assign_keys("cross", issame, 8, rng)
    assert (left != right).all()
    with pytest.raises(ValueError, match="scenario"):
        assign_keys("other", issame, 8, rng)


SHIPPED_HASHERS = ["iom_mobilefacenet_ms1m_512x8", "iom_mobilefacenet_ms1m_64x8",
                   "iom_mbfn_celeba299_512x8", "iom_mbfn_celeba299_64x8"]


@pytest.mark.parametrize("name", SHIPPED_HASHERS)
def test_shipped_hashers_separate_real_lfw_pairs(name):
    """The committed hashers on their committed stage-1 models: on 60 real LFW pairs, genuine
    codes agree more than impostor codes, and the shipped calibration threshold accepts more
    genuine than impostor pairs (on the default model: most genuine pairs and no impostor)."""
    from tests.conftest import shared_data
    from arcface.data.pairs import load_pairs_dir
    from arcface.embed import Embedder
    from arcface.models import load_pretrained
    from arcface.verification import unique_items
    from iom.defaults import DEFAULT_HASHER

    lfw = shared_data("lfw_112")
    pairs = load_pairs_dir(lfw)
    pick = np.r_[0:30, 300:330]                                      # fold 1: 30 same, 30 different
    subset = SimpleNamespace(left=[pairs.left[i] for i in pick], right=[pairs.right[i] for i in pick])
    items, left, right = unique_items(subset)
    folder = REPO / "models" / name
    hasher = DeepIoMHasher.load(str(folder))
    _, backbone = load_pretrained(hasher.spec["stage1_model"])
    emb = Embedder(backbone, 64, 112).embed_items(items)
    codes = hasher.encode(emb, TemplateKey.random())
    sims = hamming_similarity(codes[left], codes[right])
    same = np.asarray([pairs.issame[i] for i in pick])
    assert sims[same].mean() > sims[~same].mean() + 0.1
    threshold = json.loads((folder / "calibration.json").read_text())["threshold"]
    tar, far = (sims[same] >= threshold).mean(), (sims[~same] >= threshold).mean()
    assert tar > far
    if name == DEFAULT_HASHER:
        assert tar >= 0.8 and far == 0, (tar, far)


def test_calibration_threshold_at_the_target_far():
    from iom.evaluation.report import PairData, calibration

    class Fixed:  # a "hasher" whose codes are given: pair i agrees on k_i of 4 groups
        m, q = 4, 2

        def encode(self, embeddings, key):
            return np.asarray(embeddings, np.int64)

    agree = np.array([4, 3, 2, 1, 0, 1, 2, 0, 0, 0])                 # 4 genuine, then 6 impostor pairs
    issame = np.array([True] * 4 + [False] * 6)
    left = np.zeros((10, 4), np.int64)
    right = np.array([[0] * k + [1] * (4 - k) for k in agree])
    data = PairData("toy", np.concatenate([left, right]), np.arange(10), np.arange(10, 20), issame, None)
    cal = calibration(data, Fixed(), far=1 / 6)                      # one impostor (0.5) may pass
    assert cal["threshold"] == 0.5 and cal["tar"] == 0.75 and cal["far_resolvable"]
    cal = calibration(data, Fixed(), far=0.0)                        # none may: above 0.5
    assert cal["threshold"] == 0.75 and cal["tar"] == 0.5


def pairs_folder_with_test_embeddings(tmp_path):
    """A 2-fold pairs folder of 6 people x 3 images (the images exist, as the pairs reader
    checks, but are never decoded) and ``test.npz``, their synthetic embeddings by name;
    returns ``(pairs folder, the pairs, the image names, their embeddings)``."""
    people = [f"p{i}" for i in range(6)]
    pairs_dir = tmp_path / "pairs"
    rng = np.random.default_rng(0)
    for person in people:
        (pairs_dir / person).mkdir(parents=True)
        for k in range(1, 4):
            cv2.imwrite(str(pairs_dir / person / f"{person}_{k:04d}.jpg"), face(rng))
    pairs = []
    for fold in range(2):
        pairs += [LfwPair(people[3 * fold + j], 1, people[3 * fold + j], 2 + (j % 2)) for j in range(3)]
        pairs += [LfwPair(people[j], 1 + fold, people[j + 3], 3 - fold) for j in range(3)]
    write_lfw_pairs(pairs_dir / "pairs.txt", pairs, n_folds=2, n_per_fold=3)
    x, y = synthetic_embeddings(n_classes=6, per_class=3, dim=16, seed=3)
    names = [f"{people[c]}/{people[c]}_{k + 1:04d}.jpg" for c in range(6) for k in range(3)]
    save_embeddings(tmp_path / "test.npz", names, x, y)
    return pairs_dir, pairs, names, x


def test_any_extractor_through_embedding_files(tmp_path):
    """No stage-1 model at all: training and test embeddings come from .npz files."""
    pairs_dir, pairs, names, x = pairs_folder_with_test_embeddings(tmp_path)
    xt, yt = synthetic_embeddings(n_classes=8, per_class=6, dim=16, seed=4)
    save_embeddings(tmp_path / "train.npz", [str(i) for i in range(len(xt))], xt, yt)
    cfg = tmp_path / "iom.yaml"
    cfg.write_text(f"sub_name: any\nm: 32\nq: 4\nclasses_per_batch: 4\nsamples_per_class: 3\nmax_steps: 20\n"
                   f"save_steps: 20\ntrain_embeddings: '{tmp_path / 'train.npz'}'\n"
                   f"test_embeddings: '{tmp_path / 'test.npz'}'\ntest_dataset: '{pairs_dir}'\n"
                   f"identification_dataset: '{tmp_path / 'test.npz'}'\nn_fresh_keys: 2\n")
    ckpt = tmp_path / "ckpt"
    done = run_script("train_twostage_tripletloss_online.py", "--cfg_path", cfg, "--checkpoint_root", ckpt,
                      "--log_root", tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_script("test_twostage_iom.py", "--cfg_path", cfg, "--model_path", ckpt / "any",
                      "--json", tmp_path / "res.json")
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "res.json").read_text())
    raw = res["verification"]["pairs"]["raw"]["report"]
    cos = [x[names.index(f"{p.name1}/{p.name1}_{p.idx1:04d}.jpg")] @ x[names.index(f"{p.name2}/{p.name2}_{p.idx2:04d}.jpg")]
           for p in pairs]                                           # pairs file order = report order
    assert raw["n_pairs"] == 12
    assert raw["auc"] == pytest.approx(auc(np.array(cos), np.array([p.issame for p in pairs])))
    assert set(res["identification"]["test"]) == {"raw", "deep_iom", "random_iom"}


def test_raw_baseline_is_cosine_for_unnormalised_embeddings(tmp_path):
    """The "raw" column is cosine whatever the extractor's scale (it was a dot product)."""
    from arcface.metrics import evaluate_scores
    from iom.evaluation.report import PairData, evaluate_identification, evaluate_pairs
    from iom.features import PrecomputedEmbeddings

    x, y = synthetic_embeddings(n_classes=40, per_class=4, dim=16, seed=5, noise=0.9)
    rng = np.random.default_rng(1)
    scale = np.exp(rng.uniform(np.log(0.01), np.log(1000.0), size=(len(x), 1))).astype(np.float32)
    left, right = rng.integers(0, len(x), 600), rng.integers(0, len(x), 600)
    right[:300] = (left[:300] // 4) * 4 + (left[:300] + 1) % 4        # genuine pairs
    issame = y[left] == y[right]
    folds = np.repeat(np.arange(10), 60)
    reference = evaluate_scores(np.sum(x[left] * x[right], axis=1), issame, folds=folds)
    got = evaluate_pairs(PairData("p", x * scale, left, right, issame, folds), {}, 1)["raw"]["report"]
    assert got["accuracy"] == pytest.approx(reference.accuracy)
    assert got["auc"] == pytest.approx(reference.auc) and -1 <= got["threshold"] <= 1
    dot = evaluate_scores(np.sum((x * scale)[left] * (x * scale)[right], axis=1), issame, folds=folds)
    assert abs(dot.auc - reference.auc) > 0.01                    # the old dot product is not it
    ident = evaluate_identification(x * scale, y, {})["raw"].to_dict()
    assert ident == evaluate_identification(x, y, {})["raw"].to_dict()
    # precomputed embeddings are normalised on load; all-zero rows are refused
    names = [f"n{i}" for i in range(len(x))]
    save_embeddings(tmp_path / "e.npz", names, x * scale, y)
    loaded = PrecomputedEmbeddings(str(tmp_path / "e.npz")).embed_items(["n3", "n0"])
    np.testing.assert_allclose(loaded.embeddings, x[[3, 0]], rtol=1e-5, atol=1e-6)
    save_embeddings(tmp_path / "z.npz", names, np.where(np.arange(len(x))[:, None] == 7, 0, x), y)
    from arcface.errors import DataFormatError
    with pytest.raises(DataFormatError, match="row 7 is all zeros"):
        PrecomputedEmbeddings(str(tmp_path / "z.npz"))


def test_training_embeddings_from_several_folders_keep_identities_apart():
    from arcface.embeddings_io import EmbeddingSet
    from iom.features import training_embeddings

    class FakeExtractor:
        def embed_folder(self, folder, mirror=False, progress=True):
            n = {"a": 4, "b": 6}[folder]
            x = np.full((n, 3), 2.0 if mirror else 1.0, np.float32)
            return EmbeddingSet(np.array([str(i) for i in range(n)]), x, np.arange(n) // 2, None)

    cfg = stage2_cfg(train_dataset=["a", "b"], stage1_model="m", flip_augment=True, num_classes=5)
    x, y = training_embeddings(cfg, FakeExtractor())
    assert x.shape == (20, 3)
    # a: identities 0, 1 (and their mirrors); b: identities 2, 3, 4
    np.testing.assert_array_equal(y, [0, 0, 1, 1] * 2 + [2, 2, 3, 3, 4, 4] * 2)
    with pytest.raises(ConfigError, match="num_classes is 4"):
        training_embeddings(stage2_cfg(train_dataset=["a", "b"], stage1_model="m", num_classes=4),
                            FakeExtractor())


def test_a_loss_with_no_term_is_refused():
    from iom.hashing.train import loss_settings

    with pytest.raises(ConfigError, match="no term"):
        loss_settings(stage2_cfg(metric_loss_weight=0)).terms()
    assert loss_settings(stage2_cfg(metric_loss_weight=0, distill_loss=True)).terms() == ["distillation"]


def test_test_script_says_which_hasher_and_every_file_it_writes(tmp_path):
    """A checkpoints/ hasher named like a shipped one: the script evaluates the checkpoint,
    prints its absolute folder and origin, warns that it shadows models/<sub_name>, and prints
    the JSON and every plot file it writes (the JSON lists them too)."""
    from arcface.pretrained import MODELS_DIR

    name = "iom_mbfn_celeba299_64x8"                                 # a shipped hasher's name
    assert (Path(MODELS_DIR) / name / "hasher.json").is_file()
    pairs_dir, *_ = pairs_folder_with_test_embeddings(tmp_path)
    cfg = tmp_path / "iom.yaml"
    cfg.write_text(f"sub_name: {name}\nm: 8\nq: 4\ntest_embeddings: '{tmp_path / 'test.npz'}'\n"
                   f"test_dataset: '{pairs_dir}'\nn_fresh_keys: 2\n")
    folder = tmp_path / "checkpoints" / name                         # checkpoints/ of the cwd
    DeepIoMHasher.from_config(load_stage2_config(cfg), 16).save(str(folder))

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out_json, plots = tmp_path / "res.json", tmp_path / "plots"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "test_twostage_iom.py"), "--cfg_path", str(cfg),
                           "--json", str(out_json), "--plots", str(plots), "--no_random", "--cancelability"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"hasher: {folder} (a trained checkpoint under checkpoints/; the config's sub_name)" in done.stdout
    shipped = os.path.join(MODELS_DIR, name)
    (warning,) = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert f"checkpoints/{name} shadows the shipped hasher" in warning and "different weights" in warning
    assert f"--model_path {shipped}" in warning

    written = [line.split(" -> ", 1)[1] for line in done.stdout.splitlines() if line.startswith("plot -> ")]
    assert sorted(written) == sorted(str(p) for p in plots.iterdir())
    assert {os.path.basename(p) for p in written} == {"pairs_roc.png", "pairs_det.png",
                                                      "pairs_deep_iom_unlinkability.png"}
    assert f"all figures -> {out_json}" in done.stdout
    res = json.loads(out_json.read_text())
    assert res["hasher"] == str(folder) and res["plots"] == written


def test_locate_hasher_says_where_the_hasher_comes_from(tmp_path, monkeypatch):
    from arcface.pretrained import MODELS_DIR
    from iom.hashing.hasher import locate_hasher

    name = "iom_mbfn_celeba299_64x8"
    cfg = stage2_cfg(sub_name=name)
    monkeypatch.chdir(tmp_path)                                      # no checkpoints/ here
    shipped = os.path.join(MODELS_DIR, name)
    where = locate_hasher(cfg)
    assert (where.folder, where.origin, where.given, where.shadowed) == (shipped, "models", False, None)
    assert where.shadow_warning() is None and "the shipped hasher under models/" in where.describe()
    where = locate_hasher(cfg, shipped)
    assert (where.origin, where.given) == ("models", True) and "given by --model_path" in where.describe()
    (tmp_path / "checkpoints").mkdir()
    copy = tmp_path / "checkpoints" / name                           # an exact copy shadows too
    import shutil
    shutil.copytree(shipped, copy)
    where = locate_hasher(cfg)
    assert (where.folder, where.origin, where.shadowed) == (os.path.join("checkpoints", name), "checkpoints", shipped)
    assert "identical files" in where.shadow_warning()
    with pytest.raises(CheckpointError, match="no saved hasher"):
        locate_hasher(stage2_cfg(sub_name="never_trained"))
