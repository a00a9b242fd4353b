"""``--model NAME`` wherever a model is loaded: the stage-2 scripts (a shipped stage-1 model put under
a config), the CLI, server and export (a shipped hasher; a stage-1 name is told apart), evaluate.py.
No Keras model is built here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from arcface.errors import ConfigError
from iom.config import load_stage2_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "iom_mobilefacenet_ms1m_64x8.yaml"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["sface_2021dec", "buffalo_s_w600k_mbf", "mbfn_celeba299"])
def test_stage2_model_option_takes_the_models_own_dimensions(name):
    model_cfg = yaml.safe_load((REPO / "models" / name / "config.yaml").read_text())
    cfg = load_stage2_config(CONFIG, stage1_model=name)
    assert cfg["stage1_model"] == name
    assert (cfg["backbone_type"], cfg["embd_shape"], cfg["input_size"]) == (
        model_cfg["backbone_type"], model_cfg["embd_shape"], model_cfg["input_size"])
    # the hasher gets a name of its own: the config's, its stage-1 model's name replaced
    assert cfg["sub_name"] == f"iom_{name}_64x8"
    # everything else is the config's recipe
    plain = load_stage2_config(CONFIG)
    same = [k for k in ("m", "q", "T", "input_norm", "projection_init", "seed", "max_steps", "train_dataset")]
    assert all(cfg[k] == plain[k] for k in same)


def test_stage2_model_option_keeps_the_config_when_it_names_the_same_model(tmp_path):
    assert load_stage2_config(CONFIG, stage1_model="mobilefacenet_ms1m") == load_stage2_config(CONFIG)
    other = tmp_path / "c.yaml"
    other.write_text(CONFIG.read_text().replace("sub_name: 'iom_mobilefacenet_ms1m_64x8'", "sub_name: 'mine'"))
    assert load_stage2_config(other, stage1_model="sface_2021dec")["sub_name"] == "mine_sface_2021dec"


def test_stage2_model_option_refusals_name_the_problem():
    with pytest.raises(ConfigError, match="'nope' is not a shipped stage-1 model; shipped: .*sface_2021dec"):
        load_stage2_config(CONFIG, stage1_model="nope")
    with pytest.raises(ConfigError, match="is not a shipped stage-1 model"):
        load_stage2_config(CONFIG, stage1_model="iom_mobilefacenet_ms1m_64x8")      # a hasher
    with pytest.raises(ConfigError, match="key 'train_embeddings' reads precomputed features"):
        load_stage2_config(REPO / "configs" / "iom_w600k_mbf_64x8.yaml", stage1_model="sface_2021dec")


@pytest.mark.parametrize("script", ["train_twostage_tripletloss_online", "calibrate_iom", "test_twostage_iom",
                                    "sweep_iom"])
def test_stage2_scripts_take_model(script):
    with pytest.raises(ConfigError, match="--model 'nope' is not a shipped stage-1 model"):
        _script(script).main(["--cfg_path", str(CONFIG), "--model", "nope"])


def test_cli_model_names_a_hasher_and_tells_a_stage1_name_apart(capsys, monkeypatch):
    import arcface.model_cards
    from iom.cli.main import main

    assert main(["list", "--model", "mobilefacenet_ms1m"]) == 2
    err = capsys.readouterr().err
    assert "'mobilefacenet_ms1m' is a stage-1 model" in err
    assert "iom_mobilefacenet_ms1m_512x8, iom_mobilefacenet_ms1m_64x8" in err      # the hashers on it
    assert main(["list", "--model", "sface_2021dec"]) == 2
    assert "iom_sface_2021dec_512x8, iom_sface_2021dec_64x8" in capsys.readouterr().err
    monkeypatch.setattr(arcface.model_cards, "list_models", lambda *a: [])      # a model with no hasher yet
    assert main(["list", "--model", "sface_2021dec"]) == 2
    err = capsys.readouterr().err
    assert "none is shipped for sface_2021dec" in err and "--model sface_2021dec" in err


def test_export_and_evaluate_take_model(tmp_path):
    from iom.export.cli import main as export_main
    from iom.export.spec import ExportError

    with pytest.raises(ExportError, match="'sface_2021dec' is a stage-1 model"):
        export_main(["--format", "tflite", "--out", str(tmp_path / "x"), "--model", "sface_2021dec"])
    with pytest.raises(ExportError, match="'nope' is not a folder"):
        export_main(["--format", "tflite", "--out", str(tmp_path / "x"), "--hasher", "nope"])  # older spelling
    evaluate = _script("evaluate")
    with pytest.raises(Exception, match="nope"):
        evaluate.main(["--model", "nope", "--val_data", str(tmp_path)])
