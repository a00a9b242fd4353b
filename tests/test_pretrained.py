"""Shipped models: listed and loaded by name from models/<name>/."""

import numpy as np
import pytest
import yaml

from arcface import pretrained
from arcface.errors import CheckpointError, ConfigError
from arcface.models import build_backbone_from_config, load_backbone
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
    loaded_cfg, backbone = pretrained.load_pretrained("tiny_model")
    assert loaded_cfg["backbone_type"] == "TinyNet"
    x = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype("uint8")
    np.testing.assert_allclose(backbone.predict_on_batch(x), original.predict_on_batch(x), atol=1e-6)
    # the scripts' path: load_backbone accepts the name as model_path
    again = load_backbone(cfg, "tiny_model")
    np.testing.assert_allclose(again.predict_on_batch(x), original.predict_on_batch(x), atol=1e-6)


def test_config_resolution(models_dir):
    assert pretrained.resolve_config_path("mine.yaml", "tiny_model") == "mine.yaml"
    assert pretrained.resolve_config_path(None, "tiny_model").endswith("tiny_model/config.yaml")
    with pytest.raises(ConfigError, match="tiny_model"):
        pretrained.resolve_config_path(None, None)


def test_unknown_name_is_refused(models_dir):
    with pytest.raises(CheckpointError, match="no shipped model named 'nope'"):
        pretrained.load_pretrained("nope")
