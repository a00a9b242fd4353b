"""Models the project ships under ``models/<name>/``: ``config.yaml`` + ``backbone.weights.h5``.

Loadable by name from the API (:func:`load_pretrained`) and from every script that takes
``--model_path`` (a name there resolves to the shipped weights). Nothing is downloaded.
"""

from __future__ import annotations

import os

from arcface.errors import CheckpointError

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "backbone.weights.h5"


def list_pretrained() -> list[str]:
    """Names of the shipped models."""
    if not os.path.isdir(MODELS_DIR):
        return []
    return sorted(n for n in os.listdir(MODELS_DIR)
                  if os.path.isfile(os.path.join(MODELS_DIR, n, CONFIG_FILE))
                  and os.path.isfile(os.path.join(MODELS_DIR, n, WEIGHTS_FILE)))


def is_pretrained_name(name) -> bool:
    return isinstance(name, str) and os.sep not in name and name in list_pretrained()


def pretrained_files(name: str) -> tuple[str, str]:
    """``(config path, weights path)`` of shipped model ``name``."""
    if not is_pretrained_name(name):
        raise CheckpointError(f"no shipped model named {name!r}; available: {list_pretrained() or 'none'}")
    folder = os.path.join(MODELS_DIR, name)
    return os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)


def load_pretrained(name: str):
    """``(config, backbone)`` of shipped model ``name``, weights loaded."""
    from arcface.config import load_config
    from arcface.models import load_backbone

    cfg_path, weights = pretrained_files(name)
    cfg = load_config(cfg_path)
    return cfg, load_backbone(cfg, weights)


def resolve_config_path(cfg_path: str | None, model_path: str | None) -> str:
    """The config to use: ``cfg_path`` if given, else the shipped model's own config."""
    from arcface.errors import ConfigError

    if cfg_path:
        return cfg_path
    if model_path and is_pretrained_name(model_path):
        return pretrained_files(model_path)[0]
    raise ConfigError("pass --cfg_path, or --model_path naming a shipped model "
                      f"({', '.join(list_pretrained()) or 'none shipped yet'})")
