"""Shipped models: listed and loaded by name from models/<name>/."""

import numpy as np
import pytest
import yaml

from arcface import pretrained
from arcface.errors import CheckpointError, ConfigError
from arcface.models import build_backbone_from_config, load_backbone, load_pretrained
from arcface.config import finalize_stage1, validate_config


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_backbone):
    raw = dict(batch_size=4, input_size=32, embd_shape=16, sub_name="tiny_model", backbone_type="TinyNet")
    folder = tmp_path / "models" / "tiny_model"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = finalize_stage1(validate_config(raw))
    backbone = build_backbone_from_config(cfg)
    backbone.save_weights(str(folder / "backbone.weights.h5"))
    (tmp_path / "models" / "incomplete").mkdir()  # no weights: not listed
    monkeypatch.setattr(pretrained, "MODELS_DIR", str(tmp_path / "models"))
    return cfg, backbone


def test_list_and_load_by_name(models_dir):
    cfg, original = models_dir
    assert pretrained.list_pretrained() == ["tiny_model"]
    loaded_cfg, backbone = load_pretrained("tiny_model")
    assert loaded_cfg["backbone_type"] == "TinyNet"
    x = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype("uint8")
    np.testing.assert_allclose(backbone.predict_on_batch(x), original.predict_on_batch(x), atol=1e-6)
    # the scripts' path: load_backbone accepts the name as model_path
    again = load_backbone(cfg, "tiny_model")
    np.testing.assert_allclose(again.predict_on_batch(x), original.predict_on_batch(x), atol=1e-6)


def test_config_resolution(models_dir):
    assert pretrained.resolve_config_path("mine.yaml", "tiny_model") == "mine.yaml"
    assert pretrained.resolve_config_path(None, "tiny_model").endswith("tiny_model/config.yaml")
    with pytest.raises(ConfigError, match="tiny_model"):   # no default model shipped here
        pretrained.resolve_config_path(None, None)


def test_default_model_config_when_nothing_is_named(models_dir, monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", "tiny_model")
    assert pretrained.resolve_config_path(None, None).endswith("tiny_model/config.yaml")
    with pytest.raises(ConfigError):       # a path that is not a shipped name still needs a config
        pretrained.resolve_config_path(None, "some/weights.h5")


def test_the_shipped_default_model_and_hasher_agree():
    import json
    import os

    from iom.defaults import DEFAULT_HASHER

    assert pretrained.DEFAULT_MODEL in pretrained.list_pretrained()
    with open(os.path.join(pretrained.MODELS_DIR, DEFAULT_HASHER, "hasher.json")) as f:
        assert json.load(f)["stage1_model"] == pretrained.DEFAULT_MODEL


def test_unknown_name_is_refused(models_dir):
    with pytest.raises(CheckpointError, match="no shipped model named 'nope'"):
        load_pretrained("nope")


def test_model_folder_config_finds_its_own_weights(models_dir, tmp_path):
    """--cfg_path models/NAME/config.yaml alone loads the weights beside it, not checkpoints/."""
    from arcface.config import load_config

    cfg, original = models_dir
    folder_cfg = load_config(str(tmp_path / "models" / "tiny_model" / "config.yaml"))
    backbone = load_backbone(folder_cfg, checkpoint_root=str(tmp_path / "no_checkpoints"))
    x = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    np.testing.assert_allclose(backbone.predict_on_batch(x), original.predict_on_batch(x), atol=1e-6)
    # a config elsewhere still means checkpoints/<sub_name>
    other = tmp_path / "configs" / "tiny.yaml"
    other.parent.mkdir()
    other.write_text((tmp_path / "models" / "tiny_model" / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no_checkpoints"):
        load_backbone(load_config(str(other)), checkpoint_root=str(tmp_path / "no_checkpoints"))


def test_write_model_folder_round_trip_and_refuses_overwrite(models_dir, tmp_path):
    cfg, original = models_dir
    folder = tmp_path / "out" / "copy"
    pretrained.write_model_folder(original, folder, "batch_size: 4\n", {"NOTICE": b"terms"})
    assert (folder / "NOTICE").read_bytes() == b"terms"
    before = pretrained.sha256_file(folder / "backbone.weights.h5")
    with pytest.raises(CheckpointError, match="exists"):
        pretrained.write_model_folder(original, folder, "batch_size: 8\n")
    assert (folder / "config.yaml").read_text() == "batch_size: 4\n"
    assert pretrained.sha256_file(folder / "backbone.weights.h5") == before
    assert sorted(p.name for p in folder.iterdir()) == ["NOTICE", "backbone.weights.h5", "config.yaml"]


def test_a_larger_networks_weights_are_refused_not_half_loaded(tmp_path):
    """Keras loads the matching prefix of a larger network's file silently; we refuse it."""
    from arcface.backbones import build_backbone
    from arcface.models import load_weights_exactly

    big = build_backbone("MobileFaceNet", embd_shape=16, scale=1, blocks=(1, 1, 1, 2))
    small = build_backbone("MobileFaceNet", embd_shape=16, scale=1, blocks=(1, 1, 1, 1))
    big.save_weights(str(tmp_path / "big.weights.h5"))
    small.save_weights(str(tmp_path / "small.weights.h5"))
    with pytest.raises(CheckpointError, match=r"misfit: the file holds \d+ arrays, the backbone has"):
        load_weights_exactly(small, str(tmp_path / "big.weights.h5"), "misfit")
    other = build_backbone("MobileFaceNet", embd_shape=16, scale=1, blocks=(1, 1, 1, 1))
    load_weights_exactly(other, str(tmp_path / "small.weights.h5"), "misfit")
    for a, b in zip(other.weights, small.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
