"""Shared command-line plumbing: typed iomface errors become one clear line and exit 2."""

from __future__ import annotations

import os
import sys
from typing import Callable

from arcface.pretrained import DEFAULT_MODEL

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_backend_quietly() -> None:
    """Import Keras (and its backend) with the process's native stderr (fd 2) closed off, so
    the C++ lines TensorFlow prints at import time whatever ``TF_CPP_MIN_LOG_LEVEL`` says
    (absl's "log messages before InitializeLog", oneDNN's notice on CPUs that have it) do not
    reach a command's error output. An import that fails restores fd 2 before raising."""
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                import keras  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def fail_cleanly(main: Callable[[], int]) -> int:
    """Run ``main``; an :class:`~arcface.errors.IomfaceError` prints ``error: ...`` and
    returns 2 instead of a traceback."""
    from arcface.errors import IomfaceError

    try:
        return main()
    except IomfaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


#: ``--cfg_path`` help of the stage-1 scripts (get_embd.py, evaluate.py): what
#: :func:`stage1_config_path` does, in its order
CFG_PATH_HELP = ("YAML config. Default: when --model_path is a shipped model's name, that model's "
                 "config; when --model_path is a folder (or a weights file in one) holding a "
                 "config.yaml, that file; when neither option is given, the shipped default model "
                 f"{DEFAULT_MODEL} (its config and weights, models/{DEFAULT_MODEL}/). Required "
                 "for any other --model_path (a checkpoint, run folder or bare .weights.h5)")
#: ``--model_path`` help of the stage-1 scripts, true to :func:`arcface.models.resolve_weights`
MODEL_PATH_HELP = ("a shipped model's name (models/), backbone .weights.h5, checkpoint folder or run "
                   "folder. Default: the weights beside --cfg_path when it is a model folder's "
                   "config.yaml (as for the shipped default), else the config's training run "
                   "checkpoints/<sub_name> (its best checkpoint, else the latest)")


def stage1_config_path(cfg_path: str | None, model_path: str | None) -> str:
    """The stage-1 config a script uses (see :data:`CFG_PATH_HELP`): ``cfg_path``; else the
    ``config.yaml`` of the shipped model ``model_path`` names, or beside the folder or file
    ``model_path`` points at; else (neither given) the shipped default model's. A
    :class:`~arcface.errors.ConfigError` that says what to pass otherwise."""
    from arcface.errors import CheckpointError, ConfigError
    from arcface.pretrained import CONFIG_FILE, is_pretrained_name, list_pretrained, resolve_config_path

    if cfg_path or not model_path or is_pretrained_name(model_path):
        return resolve_config_path(cfg_path, model_path)
    if not os.path.exists(model_path):
        raise CheckpointError(f"--model_path {model_path}: no such file or folder, and not a shipped "
                              f"model's name (shipped: {', '.join(list_pretrained()) or 'none'})")
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    beside = os.path.join(folder, CONFIG_FILE)
    if os.path.exists(model_path) and os.path.isfile(beside):
        return beside
    raise ConfigError(f"--model_path {model_path} is not a shipped model's name and has no "
                      f"{CONFIG_FILE} beside it: pass --cfg_path, the config it was trained with "
                      f"(shipped model names: {', '.join(list_pretrained()) or 'none'})")
