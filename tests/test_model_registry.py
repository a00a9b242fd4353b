"""``iomface models``: the readable registry of the shipped model folders, read from their files
only (config.yaml, card.json, hasher.json, calibration.json), with no Keras imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arcface import pretrained
from arcface.model_cards import CARD_FIELDS, list_models
from iom.cli.main import main

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def _iomface(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def _json_models(capsys):
    code, out = _iomface(capsys, "models", "--json")
    assert code == 0
    return json.loads(out)


def test_models_lists_every_folder_with_its_config_and_card(capsys):
    listed = {m["name"]: m for m in _json_models(capsys)}
    folders = sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    assert sorted(listed) == folders
    for name in folders:
        folder, entry = MODELS / name, listed[name]
        if (folder / "hasher.json").is_file():
            h = json.loads((folder / "hasher.json").read_text())
            assert entry["kind"] == "hasher"
            assert (entry["stage1_model"], entry["m"], entry["q"]) == (h["stage1_model"], h["m"], h["q"])
            assert entry["stage1_model"] in listed                     # a hasher's stage-1 model is shipped
            cal = json.loads((folder / "calibration.json").read_text())
            assert entry["calibrated"] and entry["calibration_threshold"] == cal["threshold"]
        else:
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            card = json.loads((folder / "card.json").read_text())         # every shipped stage-1 model has one
            assert entry["kind"] == "stage1" and entry["card"]
            assert entry["backbone_type"] == cfg["backbone_type"]
            assert (entry["embedding_size"], entry["input_size"]) == (cfg["embd_shape"], cfg["input_size"])
            assert entry["weights_mb"] == round((folder / "backbone.weights.h5").stat().st_size / 1e6, 1)
            assert entry["lfw_accuracy"] == card["lfw_accuracy"] and entry["terms_short"] == card["terms_short"]
            assert set(card) <= set(CARD_FIELDS)
            assert card["lfw_command"].startswith((f"python scripts/evaluate.py --model_path {name} ",
                                                   f"python scripts/evaluate.py --model {name} "))


def test_card_figures_are_the_ones_the_folders_state():
    """The cards quote what the READMEs and docs/RESULTS.md already state (not re-measured here)."""
    results = (REPO / "docs" / "RESULTS.md").read_text()
    expected = {"mobilefacenet_ms1m": (98.78, 0.41), "buffalo_s_w600k_mbf": (99.07, 0.35),
                "mbfn_celeba299": (86.60, 2.19), "sface_2021dec": (98.78, 0.34)}
    for name, (acc, std) in expected.items():
        card = json.loads((MODELS / name / "card.json").read_text())
        assert (card["lfw_accuracy"], card["lfw_accuracy_std"]) == (acc, std)
        assert f"{acc:.2f}% ± {std:.2f}" in (MODELS / name / "README.md").read_text()
        assert f"{acc:.2f}" in results
        assert card["lfw_command"].split(" [")[0].split(" --json")[0] in (MODELS / name / "README.md").read_text()


def test_sface_card_is_its_recorded_measurement():
    """sface_2021dec's card rounds the evaluate.py outputs recorded beside RESULTS."""
    card = json.loads((MODELS / "sface_2021dec" / "card.json").read_text())
    for suffix, field in (("", "lfw_accuracy"), ("_flip", "lfw_accuracy_flip")):
        run = json.loads((REPO / "docs" / "results" / f"lfw_sface_2021dec{suffix}.json").read_text())
        lfw = run["sets"]["lfw_112"]
        assert run["model_path"] == "sface_2021dec" and run["flip_test"] == (suffix == "_flip")
        assert lfw["n_pairs"] == 6000 and card[field] == round(100 * lfw["accuracy"], 2)
        if not suffix:
            assert card["lfw_accuracy_std"] == round(100 * lfw["accuracy_std"], 2)


def test_card_latencies_are_the_recorded_bench_run(capsys):
    """Every stage-1 card's latency is bench/model_latency.py's recorded p50 (Keras; TFLite where the
    folder ships embedder.tflite), and the listing shows it."""
    run = json.loads((REPO / "docs" / "results" / "model_latency.json").read_text())
    timed = {m["name"]: m for m in run["models"]}
    listed = {m["name"]: m for m in _json_models(capsys) if m["kind"] == "stage1"}
    assert set(timed) == set(listed)
    for name, m in timed.items():
        card = json.loads((MODELS / name / "card.json").read_text())
        assert card["latency_ms"] == round(m["keras"]["ms"]["p50"], 1) == listed[name]["latency_ms"]
        assert ("tflite" in m) == (MODELS / name / "embedder.tflite").is_file()
        assert card.get("latency_tflite_ms") == (round(m["tflite"]["ms"]["p50"], 1) if "tflite" in m else None)
        assert m["keras"]["ms"]["n"] == 200 and "model_latency.json" in card["latency_measured"]


def test_text_output_shows_dims_figures_and_defaults(capsys):
    code, out = _iomface(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "192-d" in lines["mobilefacenet_ms1m*"] and "98.78% ± 0.41" in lines["mobilefacenet_ms1m*"]
    assert "512-d" in lines["buffalo_s_w600k_mbf"] and "99.07% ± 0.35" in lines["buffalo_s_w600k_mbf"]
    assert "non-commercial" in lines["buffalo_s_w600k_mbf"]
    assert "86.60% ± 2.19" in lines["mbfn_celeba299"]
    assert "512x8" in lines["iom_mobilefacenet_ms1m_512x8*"] and "192 B" in lines["iom_mobilefacenet_ms1m_512x8*"]
    assert "yes" in lines["iom_mobilefacenet_ms1m_64x8"]


def test_json_round_trips(capsys):
    listed = _json_models(capsys)
    assert listed == list_models()
    assert json.loads(json.dumps(listed)) == listed


def test_a_folder_without_a_card_is_listed_with_unknowns(tmp_path, monkeypatch, capsys):
    bare = tmp_path / "models" / "bare_model"
    bare.mkdir(parents=True)
    (bare / "config.yaml").write_text("input_size: 112\nembd_shape: 128\nbackbone_type: 'ResNet50'\n")
    (bare / "backbone.weights.h5").write_bytes(b"\0" * 2_500_000)
    hasher = tmp_path / "models" / "iom_bare_64x8"
    hasher.mkdir()
    (hasher / "hasher.json").write_text(json.dumps({"m": 64, "q": 8, "stage1_model": "bare_model"}))
    (tmp_path / "models" / "not_a_model").mkdir()                        # neither config nor hasher: left out
    monkeypatch.setattr(pretrained, "MODELS_DIR", str(tmp_path / "models"))

    listed = {m["name"]: m for m in _json_models(capsys)}
    assert sorted(listed) == ["bare_model", "iom_bare_64x8"]
    bare_entry = listed["bare_model"]
    assert not bare_entry["card"] and bare_entry["weights_mb"] == 2.5
    assert (bare_entry["embedding_size"], bare_entry["backbone_type"]) == (128, "ResNet50")
    assert all(bare_entry[field] is None for field in CARD_FIELDS)
    assert listed["iom_bare_64x8"]["calibrated"] is False and listed["iom_bare_64x8"]["calibration_far"] is None

    code, out = _iomface(capsys, "models")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("bare_model"))
    assert "128-d" in row and row.count("unknown") == 3                  # LFW accuracy, latency and terms
    assert next(line for line in out.splitlines() if line.startswith("iom_bare_64x8")).endswith("no")


def test_a_card_saying_unknown_reads_as_unknown(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(MODELS / "mobilefacenet_ms1m" / "config.yaml", folder / "config.yaml")
    (folder / "card.json").write_text(json.dumps({"lfw_accuracy": "unknown", "terms_short": "MIT"}))
    monkeypatch.setattr(pretrained, "MODELS_DIR", str(tmp_path))
    (entry,) = _json_models(capsys)
    assert entry["card"] and entry["lfw_accuracy"] is None and entry["terms_short"] == "MIT"
    assert entry["weights_mb"] is None                                   # no weights file: unknown, still listed


def test_models_imports_no_keras_and_loads_no_model():
    """In a fresh interpreter (the CLI's own main, as `python -m iom.cli models` runs it)."""
    code = ("import sys; from iom.cli.main import main; rc = main(['models']); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'h5py')); "
            "print('HEAVY', heavy); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    done = subprocess.run([sys.executable, "-m", "iom.cli", "models"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0 and done.stderr == "" and "mobilefacenet_ms1m*" in done.stdout


@pytest.mark.parametrize("argv", [["models", "--db", "/nonexistent/dir/t.db"], ["--model", "nope", "models"]])
def test_models_needs_no_store_and_ignores_the_hasher_choice(capsys, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = _iomface(capsys, *argv)
    assert code == 0 and "buffalo_s_w600k_mbf" in out
    assert list(tmp_path.iterdir()) == []                                # nothing written
