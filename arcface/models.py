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
    ``models/``, a ``.weights.h5`` file, a checkpoint folder or a run folder; by default
    the run folder ``checkpoints/<sub_name>`` (its best checkpoint, else the latest)."""
    from arcface.checkpoint import resolve_backbone_weights
    from arcface.pretrained import is_pretrained_name, pretrained_files

    path = model_path or os.path.join(checkpoint_root, cfg["sub_name"])
    if is_pretrained_name(path) and not os.path.exists(path):
        path = pretrained_files(path)[1]
    return resolve_backbone_weights(path)


def load_backbone(cfg, model_path: str | os.PathLike | None = None,
                  checkpoint_root: str = "checkpoints"):
    """Build the backbone of ``cfg`` and load the weights :func:`resolve_weights` finds."""
    from arcface.errors import CheckpointError

    weights = resolve_weights(cfg, model_path, checkpoint_root)
    backbone = build_backbone_from_config(cfg)
    try:
        backbone.load_weights(weights)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{weights} does not fit backbone_type {cfg['backbone_type']} "
                              f"with embd_shape {cfg['embd_shape']}: {e}") from None
    return backbone
