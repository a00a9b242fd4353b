"""Building and loading embedding networks from a config and a weights path."""

from __future__ import annotations

import os


def build_backbone_from_config(cfg):
    """The (untrained) backbone a stage-1 config describes."""
    from arcface.backbones import build_backbone

    return build_backbone(cfg["backbone_type"], embd_shape=cfg["embd_shape"],
                          input_size=cfg["input_size"], dropout=cfg["dropout"])


def resolve_weights(cfg, model_path: str | os.PathLike | None = None,
                    checkpoint_root: str = "checkpoints") -> str:
    """The backbone weights file for ``model_path``: the name of a shipped model in
    ``models/``, a ``.weights.h5`` file, a checkpoint folder or a run folder. By default:
    the weights beside the config when the config is a model folder's ``config.yaml``,
    else the run folder ``checkpoints/<sub_name>`` (its best checkpoint, else the latest)."""
    from arcface.checkpoint import resolve_backbone_weights
    from arcface.pretrained import is_pretrained_name, pretrained_files, weights_beside_config

    if model_path is None:
        beside = weights_beside_config(getattr(cfg, "source", None))
        if beside is not None:
            return beside
        return _trained_weights(cfg, os.path.join(checkpoint_root, cfg["sub_name"]), checkpoint_root)
    path = model_path
    if is_pretrained_name(path) and not os.path.exists(path):
        path = pretrained_files(path)[1]
    return resolve_backbone_weights(path)


def _trained_weights(cfg, run_folder: str, checkpoint_root: str) -> str:
    """The weights of the config's own training run, or a :class:`CheckpointError` that says
    the config has not been trained: the config, the folder looked in, the command that
    trains it and the shipped alternative."""
    from arcface.checkpoint import resolve_backbone_weights
    from arcface.errors import CheckpointError
    from arcface.pretrained import DEFAULT_MODEL

    try:
        return resolve_backbone_weights(run_folder)
    except CheckpointError:
        source = getattr(cfg, "source", None) or f"the config of {cfg['sub_name']!r}"
        root = "" if os.path.normpath(checkpoint_root) == "checkpoints" else f" --checkpoint_root {checkpoint_root}"
        raise CheckpointError(
            f"{source} has not been trained yet: no checkpoint in {os.path.abspath(run_folder)} "
            f"(its run folder, {checkpoint_root}/<sub_name>). Train it with "
            f"`python scripts/train_arcface.py --cfg_path {source}{root}`, pass --model_path with "
            f"its weights (.weights.h5, checkpoint or run folder), or use the shipped model instead: "
            f"--model_path {DEFAULT_MODEL} (without --cfg_path)") from None


def weights_file_arrays(path: str | os.PathLike) -> int:
    """How many arrays a Keras ``.weights.h5`` file holds."""
    import h5py  # a Keras dependency

    count = 0

    def visit(_name, obj):
        nonlocal count
        count += isinstance(obj, h5py.Dataset)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return count


def load_weights_exactly(backbone, weights: str, misfit: str) -> None:
    """Load a ``.weights.h5`` that holds exactly ``backbone``'s weights; else
    :class:`~arcface.errors.CheckpointError` starting with ``misfit``. (Keras loads the
    matching prefix of a *larger* network's file silently; the array count catches it.)"""
    from arcface.errors import CheckpointError

    try:
        found = weights_file_arrays(weights)
        if found != len(backbone.weights):
            raise CheckpointError(f"{misfit}: the file holds {found} arrays, the backbone has "
                                  f"{len(backbone.weights)}")
        backbone.load_weights(weights)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{misfit}: {e}") from None


def load_backbone(cfg, model_path: str | os.PathLike | None = None,
                  checkpoint_root: str = "checkpoints"):
    """Build the backbone of ``cfg`` and load the weights :func:`resolve_weights` finds."""
    weights = resolve_weights(cfg, model_path, checkpoint_root)
    backbone = build_backbone_from_config(cfg)
    load_weights_exactly(backbone, weights, f"{weights} does not fit backbone_type "
                                            f"{cfg['backbone_type']} with embd_shape {cfg['embd_shape']}")
    return backbone


def load_pretrained(name: str):
    """``(config, backbone)`` of shipped model ``name`` (``models/<name>/``), weights loaded."""
    from arcface.config import load_config
    from arcface.pretrained import pretrained_files

    cfg_path, weights = pretrained_files(name)
    cfg = load_config(cfg_path)
    return cfg, load_backbone(cfg, weights)
