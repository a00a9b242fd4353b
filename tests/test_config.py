"""Config validation: errors name the key, YAML quirks, cross-key rules, shipped configs, CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from arcface.config import (
    DEFAULT_MARGINS,
    HEAD_TYPES,
    STAGE1_FIELDS,
    Config,
    finalize_stage1,
    load_config,
    validate_config,
)
from arcface.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def base(**over):
    """The smallest valid stage-1 dict (the three required keys), plus ``over``."""
    raw = dict(batch_size=8, sub_name="run", backbone_type="MobileFaceNet")
    raw.update(over)
    return raw


def stage1(**over) -> Config:
    return finalize_stage1(validate_config(base(**over)))


def write(tmp_path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- keys


def test_required_keys_are_exactly_the_three_documented_ones():
    from arcface.config import REQUIRED

    required = sorted(k for k, f in STAGE1_FIELDS.items() if f.default is REQUIRED)
    assert required == ["backbone_type", "batch_size", "sub_name"]


def test_defaults_fill_every_other_key():
    cfg = validate_config(base())
    assert set(cfg) == set(STAGE1_FIELDS)
    for key, field in STAGE1_FIELDS.items():
        if key not in base():
            assert cfg[key] == field.default, key
    # attribute access and mapping access agree; the mapping is read-only
    assert cfg.batch_size == cfg["batch_size"] == 8
    with pytest.raises(TypeError):
        cfg["batch_size"] = 3  # type: ignore[index]


def test_list_defaults_are_not_shared_between_configs():
    a, b = validate_config(base()), validate_config(base())
    a["lr_steps"].append(7)
    assert b["lr_steps"] == [] and STAGE1_FIELDS["lr_steps"].default == []


@pytest.mark.parametrize("bad, suggestion", [
    ("logit_scale", "logist_scale"),
    ("batchsize", "batch_size"),
    ("embed_shape", "embd_shape"),
    ("random_flp", "random_flip"),
])
def test_unknown_key_is_named_with_a_suggestion(bad, suggestion):
    with pytest.raises(ConfigError) as err:
        validate_config(base(**{bad: 1}), source="my.yaml")
    msg = str(err.value)
    assert f"unknown key '{bad}'" in msg
    assert f"did you mean '{suggestion}'" in msg
    assert msg.startswith("my.yaml:")


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError, match="unknown key 'zzzzqqqq'") as err:
        validate_config(base(zzzzqqqq=1))
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("missing", ["batch_size", "sub_name", "backbone_type"])
def test_missing_required_key_is_named(missing):
    raw = base()
    del raw[missing]
    with pytest.raises(ConfigError, match=f"missing required key '{missing}'"):
        validate_config(raw)


@pytest.mark.parametrize("key, value, expect", [
    ("batch_size", "32", "must be int, got str '32'"),
    ("batch_size", 32.0, "must be int, got float"),
    ("random_flip", 1, "must be bool, got int"),
    ("random_flip", "yes", "must be bool, got str"),
    ("base_lr", True, "got a boolean"),
    ("batch_size", False, "got a boolean"),
    ("sub_name", 3, "must be str, got int"),
    ("test_dataset", 5, "must be str or list or null"),
    ("lr_steps", "100", "must be list"),
    ("base_lr", "fast", "must be int or float, got str 'fast'"),
    ("pretrained", 3, "must be str or null, got int"),
    ("pretrained", ["a.weights.h5"], "must be str or null, got list"),
    ("freeze_bn", "yes", "must be bool, got str"),
    ("freeze_bn", 1, "must be bool, got int"),
])
def test_wrong_type_is_named(key, value, expect):
    with pytest.raises(ConfigError) as err:
        validate_config(base(**{key: value}))
    msg = str(err.value)
    assert f"key '{key}'" in msg and expect in msg, msg


def test_non_finite_float_is_refused():
    with pytest.raises(ConfigError, match="key 'base_lr' must be finite"):
        validate_config(base(base_lr=float("nan")))
    with pytest.raises(ConfigError, match="key 'logist_scale' must be finite"):
        validate_config(base(logist_scale=float("inf")))


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    import yaml

    text = "batch_size: 8\nsub_name: s\nbackbone_type: IR_50\nw_decay: 5e-4\nbase_lr: 1e-2\n"
    # the YAML 1.1 quirk the loader works around: PyYAML reads these as strings
    assert yaml.safe_load(text)["w_decay"] == "5e-4"
    cfg = load_config(write(tmp_path, text))
    assert isinstance(cfg["w_decay"], float) and cfg["w_decay"] == 5e-4
    assert isinstance(cfg["base_lr"], float) and cfg["base_lr"] == 0.01


def test_string_numbers_are_not_accepted_for_int_only_keys(tmp_path):
    text = "batch_size: 8\nsub_name: s\nbackbone_type: IR_50\nsave_steps: 1e3\n"
    with pytest.raises(ConfigError, match="key 'save_steps' must be int"):
        load_config(write(tmp_path, text))


def test_choices_are_enforced():
    with pytest.raises(ConfigError) as err:
        validate_config(base(head_type="FooHead"))
    msg = str(err.value)
    assert "key 'head_type' must be one of" in msg and "'FooHead'" in msg
    for head in HEAD_TYPES:  # every listed head is named in the message
        assert head in msg
    with pytest.raises(ConfigError, match="key 'optimizer' must be one of"):
        validate_config(base(optimizer="rmsprop"))
    with pytest.raises(ConfigError, match="key 'lr_schedule' must be one of"):
        validate_config(base(lr_schedule="linear"))


@pytest.mark.parametrize("key, value, expect", [
    ("batch_size", 0, "must be > 0"),
    ("batch_size", -4, "must be > 0"),
    ("dropout", 1.0, "must be in [0, 1)"),
    ("dropout", -0.1, "must be in [0, 1)"),
    ("w_decay", -1e-4, "must be >= 0"),
    ("max_steps", 0, "must be > 0"),
    ("eval_steps", 0, "must be > 0"),
    ("eval_batch_size", 0, "must be > 0"),
    ("seed", -1, "must be >= 0"),
    ("random_brightness", 1, "must be in [0, 1)"),
    ("lr_steps", [20, 10], "must be in increasing order"),
    ("lr_steps", [10, 0], "must be a list of positive step numbers"),
    ("lr_steps", [True], "must be a list of positive step numbers"),
    ("margins", [0.5, 0.2], "must be a list of three numbers"),
    ("margins", [1.0, "a", 0.2], "must be a list of three numbers"),
    ("test_dataset", ["a.bin", 3], "must be a path or a list of paths"),
    ("pretrained", "", "must not be empty"),
    ("pretrained", "  ", "must not be empty"),
])
def test_checks_are_enforced(key, value, expect):
    with pytest.raises(ConfigError) as err:
        validate_config(base(**{key: value}))
    msg = str(err.value)
    assert f"key '{key}'" in msg and expect in msg, msg


def test_values_at_the_edge_of_checks_are_accepted():
    cfg = validate_config(base(batch_size=1, dropout=0.0, w_decay=0, max_steps=None,
                               random_brightness=0.99, lr_steps=[1, 2, 3], test_dataset=["a", "b"]))
    assert (cfg["batch_size"], cfg["dropout"], cfg["w_decay"], cfg["max_steps"]) == (1, 0.0, 0, None)


def test_finetuning_keys_default_to_training_from_scratch(tmp_path):
    cfg = stage1()
    assert cfg["pretrained"] is None and cfg["freeze_bn"] is False
    text = "batch_size: 8\nsub_name: s\nbackbone_type: IR_50\npretrained: models/x\nfreeze_bn: true\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg["pretrained"] == "models/x" and cfg["freeze_bn"] is True


def test_config_must_be_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate_config([("batch_size", 8)])


# --------------------------------------------------------------------------- finalize_stage1


@pytest.mark.parametrize("head", sorted(DEFAULT_MARGINS))
def test_default_margin_per_head(head):
    cfg = stage1(head_type=head)
    assert cfg["margin"] == DEFAULT_MARGINS[head]
    assert cfg["margins"] is None


def test_default_margins_values_match_the_documented_ones():
    assert DEFAULT_MARGINS == {"NormHead": 0.0, "SphereHead": 4, "CosHead": 0.35, "ArcHead": 0.5}
    cfg = stage1(head_type="CombinedHead")
    assert cfg["margins"] == [1.0, 0.3, 0.2] and cfg["margin"] is None


def test_explicit_margin_is_kept():
    assert stage1(head_type="CosHead", margin=0.2)["margin"] == 0.2
    assert stage1(head_type="CombinedHead", margins=[0.9, 0.4, 0.1])["margins"] == [0.9, 0.4, 0.1]


def test_margins_only_with_combined_head():
    with pytest.raises(ConfigError, match="key 'margins' only applies to head_type CombinedHead"):
        stage1(head_type="ArcHead", margins=[1.0, 0.3, 0.2])
    with pytest.raises(ConfigError, match="key 'margin' is not used by CombinedHead"):
        stage1(head_type="CombinedHead", margin=0.5)


@pytest.mark.parametrize("margin", [1.5, 0, -2, 2.5])
def test_sphere_head_needs_a_positive_integer_margin(margin):
    with pytest.raises(ConfigError, match="positive integer for SphereHead"):
        stage1(head_type="SphereHead", margin=margin)


def test_sphere_head_accepts_integer_valued_margins():
    assert stage1(head_type="SphereHead", margin=2)["margin"] == 2
    assert stage1(head_type="SphereHead", margin=3.0)["margin"] == 3.0


@pytest.mark.parametrize("head", ["CosHead", "ArcHead"])
def test_cos_and_arc_margin_range(head):
    with pytest.raises(ConfigError, match=f"in \\[0, 1.5\\) for {head}"):
        stage1(head_type=head, margin=1.5)
    with pytest.raises(ConfigError, match=f"in \\[0, 1.5\\) for {head}"):
        stage1(head_type=head, margin=-0.1)
    assert stage1(head_type=head, margin=1.49)["margin"] == 1.49


def test_piecewise_needs_lr_steps():
    with pytest.raises(ConfigError, match="key 'lr_steps' is required when lr_schedule is 'piecewise'"):
        stage1(lr_schedule="piecewise")
    assert stage1(lr_schedule="piecewise", lr_steps=[100, 200])["lr_steps"] == [100, 200]


@pytest.mark.parametrize("given, expected", [
    (True, "mixed_bfloat16"),
    (False, "float32"),
    ("mixed_float16", "mixed_float16"),
    ("mixed_bfloat16", "mixed_bfloat16"),
    ("float32", "float32"),
])
def test_mixed_precision_is_normalised(given, expected):
    assert stage1(mixed_precision=given)["mixed_precision"] == expected


def test_mixed_precision_rejects_unknown_policy():
    with pytest.raises(ConfigError, match="key 'mixed_precision'"):
        stage1(mixed_precision="fp16")


def test_eval_defaults_follow_training_values():
    cfg = stage1(batch_size=24, save_steps=70)
    assert (cfg["eval_batch_size"], cfg["eval_steps"]) == (24, 70)
    cfg = stage1(batch_size=24, save_steps=70, eval_batch_size=100, eval_steps=35)
    assert (cfg["eval_batch_size"], cfg["eval_steps"]) == (100, 35)


def test_finalize_does_not_mutate_its_input():
    raw = validate_config(base(head_type="CosHead"))
    stage1_cfg = finalize_stage1(raw)
    assert raw["margin"] is None and raw["eval_batch_size"] is None
    assert stage1_cfg["margin"] == 0.35 and stage1_cfg.source == raw.source


# --------------------------------------------------------------------------- load_config


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(missing)
    assert str(missing) in str(err.value)


def test_load_config_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="the config file is empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="the config file is empty"):
        load_config(write(tmp_path, "# only a comment\n"))


def test_load_config_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "batch_size: [8\nsub_name: x\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: b: c\n"))


def test_load_config_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- batch_size\n- 8\n"))


def test_load_config_names_the_file_and_finalizes(tmp_path):
    path = write(tmp_path, "batch_size: 8\nsub_name: s\nbackbone_type: IR_50\nhead_type: CosHead\n")
    cfg = load_config(path)
    assert cfg.source == str(path) and cfg["margin"] == 0.35 and cfg["eval_batch_size"] == 8
    raw = load_config(path, finalize=None)
    assert raw["margin"] is None
    bad = write(tmp_path, "batch_size: 8\nsub_name: s\nbackbone_type: IR_50\nbogus: 1\n", "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(err.value).startswith(f"{bad}: unknown key 'bogus'")


SHIPPED = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("iom_"))  # stage 1 only


def test_configs_folder_is_not_empty():
    assert len(SHIPPED) >= 1


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path):
    import yaml

    from arcface.backbones import get_backbone_builder

    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    # every key written in the file survives validation with its value (numbers as numbers)
    for key, value in raw.items():
        if key == "mixed_precision" and isinstance(value, bool):
            continue
        assert cfg[key] == value or float(cfg[key]) == float(value), key
    get_backbone_builder(cfg["backbone_type"])  # the backbone is registered
    assert cfg["margin"] is not None or cfg["margins"] is not None


# --------------------------------------------------------------------------- command line


def test_train_script_reports_bad_key_in_one_line(tmp_path):
    bad = write(tmp_path, "batch_size: 8\nsub_name: s\nbackbone_type: IR_50\nlogit_scale: 32\n", "BAD.yaml")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "scripts/train_arcface.py", "--cfg_path", str(bad)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert "'logit_scale'" in errors[0] and "did you mean 'logist_scale'" in errors[0]
    assert str(bad) in errors[0]
