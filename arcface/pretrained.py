"""Models the project ships under ``models/<name>/``: ``config.yaml`` + ``backbone.weights.h5``.

This module knows the folder format only (names, files, provenance helpers) and imports
no model code; :func:`arcface.models.load_pretrained` builds and loads one. Every script
that takes ``--model_path`` accepts a shipped model's name. Nothing is downloaded.

Where the folder is (:data:`MODELS_DIR`): the repository's ``models/`` in a clone or an
editable install; the package data ``iomface_models/`` in site-packages after
``pip install .`` or a wheel (setup.py maps that package to ``models/``). Code reads
``arcface.pretrained.MODELS_DIR`` when it runs (tests replace it), never a path of its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

from arcface.errors import CheckpointError

#: the package name under which a wheel or a non-editable install carries ``models/``
MODELS_PACKAGE = "iomface_models"


def _find_models_dir() -> str:
    """The shipped models folder, looked for beside the ``arcface`` package being run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # installed (site-packages/arcface + site-packages/iomface_models): first, so that an
    # unrelated top-level "models" folder some other distribution put in site-packages is
    # never mistaken for ours
    for folder in (os.path.join(root, MODELS_PACKAGE), os.path.join(root, "models")):
        if os.path.isdir(folder):
            return folder
    try:  # installed elsewhere on sys.path (another prefix or target directory)
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isdir(folder):
            return os.path.abspath(folder)
    return os.path.join(root, "models")  # none: list_pretrained() is empty; errors name it


MODELS_DIR = _find_models_dir()
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "backbone.weights.h5"
#: the stage-1 model run_me.py, the template service, the CLI and the stage-2 configs use
DEFAULT_MODEL = "mobilefacenet_ms1m"


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


def weights_beside_config(cfg_path: str | None) -> str | None:
    """The ``backbone.weights.h5`` in the same folder as a model folder's ``config.yaml``
    (so ``--cfg_path models/NAME/config.yaml`` alone finds its weights), else None."""
    if not cfg_path or os.path.basename(cfg_path) != CONFIG_FILE:
        return None
    weights = os.path.join(os.path.dirname(os.path.abspath(cfg_path)), WEIGHTS_FILE)
    return weights if os.path.isfile(weights) else None


def resolve_config_path(cfg_path: str | None, model_path: str | None) -> str:
    """The config to use: ``cfg_path`` if given, else the named shipped model's own config,
    else (neither given) the default model's (:data:`DEFAULT_MODEL`)."""
    from arcface.errors import ConfigError

    if cfg_path:
        return cfg_path
    if model_path and is_pretrained_name(model_path):
        return pretrained_files(model_path)[0]
    if not model_path and is_pretrained_name(DEFAULT_MODEL):
        return pretrained_files(DEFAULT_MODEL)[0]
    raise ConfigError("pass --cfg_path, or --model_path naming a shipped model "
                      f"({', '.join(list_pretrained()) or 'none shipped yet'})")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (provenance of imported weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_model_folder(model, folder: str | os.PathLike, config_yaml: str,
                       extra_files: dict[str, bytes] | None = None, overwrite: bool = False) -> str:
    """Write ``model``'s weights, ``config.yaml`` and ``extra_files`` into a model folder.

    Refuses (CheckpointError, nothing written) to replace an existing folder's weights
    unless ``overwrite``; each file is written to a temporary name and moved into place.
    """
    from arcface.data.pairs import atomic_write

    folder = os.fspath(folder)
    weights = os.path.join(folder, WEIGHTS_FILE)
    if os.path.exists(weights) and not overwrite:
        raise CheckpointError(f"{weights} exists; pass overwrite (--force) to replace it")
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{WEIGHTS_FILE}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    atomic_write(os.path.join(folder, CONFIG_FILE), config_yaml.encode())
    for name, data in (extra_files or {}).items():
        atomic_write(os.path.join(folder, name), data)
    return folder
