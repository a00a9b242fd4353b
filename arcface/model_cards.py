"""The readable model registry: what each shipped model folder under
:data:`arcface.pretrained.MODELS_DIR` is, read from its files only (no Keras, no model loaded).

A stage-1 model folder (``config.yaml`` + ``backbone.weights.h5``) may hold a small card,
``card.json``, with the facts its README/NOTICE state in prose::

    {"lfw_accuracy": 98.78, "lfw_accuracy_std": 0.41, "lfw_command": "python scripts/evaluate.py ...",
     "latency_ms": 18.5, "latency_tflite_ms": 3.1, "latency_measured": "bench/model_latency.py, ...",
     "terms_short": "research and evaluation", "terms": "...", "source": "..."}

(accuracies in percent on ``lfw_112``, all 6,000 pairs, 10 folds; latencies the median milliseconds
to embed one aligned face, Keras and the shipped TFLite runtime, as ``bench/model_latency.py`` measured
them on the machine ``latency_measured`` names). A fact a card lacks, or gives as
``"unknown"``, is ``None`` here. A hasher folder (``hasher.json``) needs no card: its stage-1 model,
m and q are in ``hasher.json``, its operating point in ``calibration.json``.

This module imports nothing of :mod:`iom` (stage 2 knows stage 1, never the reverse).
"""

from __future__ import annotations

import json
import os

from arcface import pretrained
from arcface.errors import CheckpointError

CARD_FILE = "card.json"
HASHER_FILE = "hasher.json"
CALIBRATION_FILE = "calibration.json"
UNKNOWN = "unknown"
#: the facts a stage-1 card may give (anything else in a card is kept out of the listing)
CARD_FIELDS = ("lfw_accuracy", "lfw_accuracy_std", "lfw_accuracy_flip", "lfw_data", "lfw_command", "lfw_stated_in",
               "latency_ms", "latency_tflite_ms", "latency_measured", "terms_short", "terms", "source")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def read_card(folder: str) -> dict | None:
    """The card of a model folder (its ``card.json``), or None when it has none."""
    path = os.path.join(folder, CARD_FILE)
    return _read_json(path) if os.path.isfile(path) else None


def _known(value):
    return None if value is None or value == UNKNOWN else value


def stage1_entry(name: str, folder: str) -> dict:
    """What the listing says of a stage-1 model folder: its config's dimensions, its weights'
    size, and its card's figures and terms (None where unknown)."""
    import yaml

    with open(os.path.join(folder, pretrained.CONFIG_FILE), encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    weights = os.path.join(folder, pretrained.WEIGHTS_FILE)
    card = read_card(folder)
    entry = {"name": name, "kind": "stage1", "default": name == pretrained.DEFAULT_MODEL,
             "backbone_type": cfg.get("backbone_type"), "embedding_size": cfg.get("embd_shape"),
             "input_size": cfg.get("input_size"),
             "weights_mb": round(os.path.getsize(weights) / 1e6, 1) if os.path.isfile(weights) else None,
             "card": card is not None}
    entry.update({field: _known((card or {}).get(field)) for field in CARD_FIELDS})
    return entry


def hasher_entry(name: str, folder: str) -> dict:
    """What the listing says of a hasher folder: its stage-1 model, m x q, and its calibrated
    operating point (``calibrated`` False when ``calibration.json`` is missing or has no threshold)."""
    h = _read_json(os.path.join(folder, HASHER_FILE))
    cal_path = os.path.join(folder, CALIBRATION_FILE)
    cal = _read_json(cal_path) if os.path.isfile(cal_path) else {}
    calibrated = isinstance(cal.get("threshold"), (int, float))
    return {"name": name, "kind": "hasher", "stage1_model": _known(h.get("stage1_model")),
            "m": h.get("m"), "q": h.get("q"), "code_bits": h["m"] * (h["q"] - 1).bit_length()
            if isinstance(h.get("m"), int) and isinstance(h.get("q"), int) and h["q"] > 1 else None,
            "calibrated": calibrated,
            "calibration_far": cal.get("far") if calibrated else None,
            "calibration_threshold": cal.get("threshold") if calibrated else None,
            "calibration_set": cal.get("dataset") if calibrated else None}


def list_models(models_dir: str | None = None) -> list[dict]:
    """Every model folder of ``models_dir`` (default :data:`arcface.pretrained.MODELS_DIR`, read
    now): stage-1 models first, then hashers, each by name. A folder with neither ``config.yaml``
    nor ``hasher.json`` is not a model and is left out."""
    root = pretrained.MODELS_DIR if models_dir is None else models_dir
    if not os.path.isdir(root):
        return []
    stage1, hashers = [], []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, HASHER_FILE)):
            hashers.append(hasher_entry(name, folder))
        elif os.path.isfile(os.path.join(folder, pretrained.CONFIG_FILE)):
            stage1.append(stage1_entry(name, folder))
    return stage1 + hashers
