"""Stage 2 on features of other extractors: dimensions, scales, offsets, anisotropy.

Synthetic identities stand in for an extractor's features; each is then distorted the way
real extractors differ (a large common offset, as ReLU features have; any overall scale;
unequal variances). The shipped recipe (input_norm 'center', similarity distillation) must
train on all of them, beat random IoM on held-out identities, and give the same codes
whatever the overall scale of the features.
"""

import numpy as np
import pytest

from arcface.config import validate_config
from arcface.metrics import eer
from iom.config import STAGE2_FIELDS, finalize_stage2
from iom.evaluation.matching import hamming_similarity_matrix
from iom.hashing.random_iom import RandomIoM
from iom.hashing.train import train_hasher
from iom.keys import TemplateKey

M, Q = 16, 8


def recipe(tmp_path, **values):
    base = {"sub_name": "any", "m": M, "q": Q, "input_norm": "center", "T": 0.1, "metric_loss_weight": 0,
            "distill_loss": 1, "classes_per_batch": 20, "samples_per_class": 4, "max_steps": 300,
            "save_steps": 50, "seed": 0}
    return finalize_stage2(validate_config({**base, **values}, STAGE2_FIELDS, "any.yaml"))


def identities(n_ids: int, per_id: int, dim: int, seed: int, offset: float, anisotropy: float):
    """Clustered features: unit centres, noise, then a common offset of norm ``offset`` (in
    units of the centres) and per-dimension scales spanning ``anisotropy``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per_id, axis=0) + 0.6 / np.sqrt(dim) * rng.normal(size=(n_ids * per_id, dim)) * 1.5
    common = np.random.default_rng(99).normal(size=dim)
    x = x + offset * common / np.linalg.norm(common)
    x = x * np.geomspace(1.0, 1.0 / anisotropy, dim)
    return x.astype(np.float32), np.repeat(np.arange(n_ids), per_id)


def verification_eer(codes, labels):
    sim = hamming_similarity_matrix(codes, codes, Q)
    iu = np.triu_indices(len(codes), 1)
    return eer(sim[iu], labels[iu[0]] == labels[iu[1]])[0]


@pytest.mark.parametrize("dim,offset,anisotropy", [(64, 3.0, 1.0), (256, 1.0, 2.0), (128, 2.0, 2.0)])
def test_recipe_beats_random_iom_on_distorted_features(tmp_path, dim, offset, anisotropy):
    x, y = identities(240, 8, dim, seed=dim, offset=offset, anisotropy=anisotropy)
    train, test = y < 200, y >= 200
    hasher, history = train_hasher(recipe(tmp_path), x[train], y[train],
                                   checkpoint_root=str(tmp_path / "ck"), log_root=str(tmp_path / "logs"),
                                   progress=False)
    assert history["distillation"][-1] < 0.95 * history["distillation"][0], history["distillation"]
    deep = verification_eer(hasher.codes(x[test]), y[test])
    random = np.mean([verification_eer(RandomIoM(M, Q, dim).encode(x[test], TemplateKey.from_seed(f"r{k}")),
                                       y[test]) for k in range(3)])
    assert deep < random, (deep, random)


def test_codes_do_not_depend_on_the_feature_scale(tmp_path):
    x, y = identities(40, 6, 96, seed=5, offset=2.0, anisotropy=3.0)
    codes = []
    for scale in (1.5, 40.0):
        hasher, _ = train_hasher(recipe(tmp_path, max_steps=100), scale * x, y,
                                 checkpoint_root=str(tmp_path / f"ck{scale}"), log_root=str(tmp_path / "logs"),
                                 progress=False)
        codes.append(hasher.codes(scale * x))
    assert np.mean(codes[0] == codes[1]) > 0.99
