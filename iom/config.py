"""Stage-2 (deep IoM) configuration: the IoMArcFace keys plus iomface's, validated.

Uses the stage-1 schema machinery (:mod:`arcface.config`): unknown, missing or mistyped
keys raise :class:`~arcface.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
from typing import Any

from arcface.config import (REQUIRED, Config, Field, non_negative, positive, unit_interval,
                            validate_config)
from arcface.errors import ConfigError
from iom.hashing.layers import INPUT_NORMS, PROJECTION_INITS, parse_hidden_layer_remark
from iom.hashing.losses import BIN_LUT_KINDS, METRIC_LOSSES


def _weight(value) -> str | None:
    if isinstance(value, bool):
        return None
    return None if value >= 0 else "must be true, false or a weight >= 0"


def _optional_str_or_list(value) -> str | None:
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        return "must be a path or a list of paths"
    return None


def _validation_spec(value) -> str | None:
    if isinstance(value, bool) or value < 0 or (isinstance(value, float) and value >= 1):
        return "must be a count >= 0 or a fraction in (0, 1)"
    return None


def _far_list(value) -> str | None:
    if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
                            for v in value):
        return "must be a non-empty list of FARs in (0, 1)"
    return None


#: Stage-2 keys. Those marked "parent's key" are accepted so IoMArcFace configs load.
STAGE2_FIELDS: dict[str, Field] = {
    # general
    "sub_name": Field((str,), REQUIRED, "run name: checkpoints/<sub_name>, logs/<sub_name>"),
    "samples_per_class": Field((int,), 4, "K: samples of each class in a batch", check=positive),
    "classes_per_batch": Field((int,), 50, "P: classes in a batch (batch = P x K)", check=positive),
    "batch_size": Field((int, type(None)), None, "parent's key: images per embedding batch", check=positive),
    "eval_batch_size": Field((int, type(None)), None, "images per embedding batch (default batch_size)",
                             check=positive),
    "input_size": Field((int,), 112, "input size of the stage-1 model", check=positive),
    "embd_shape": Field((int, type(None)), None, "embedding dimension (checked against the data)",
                        check=positive),
    "backbone_type": Field((str, type(None)), None, "checked against the stage-1 model's config"),
    "head_type": Field((str,), "IoMHead", "the stage-2 head", choices=("IoMHead",)),
    "stage1_model": Field((str, type(None)), None,
                          "stage-1 model: a shipped name (models/), weights file, checkpoint or run folder"),
    "stage1_cfg_path": Field((str, type(None)), None, "its stage-1 config (default: the shipped model's)"),
    # hashing network
    "m": Field((int,), REQUIRED, "number of IoM groups (code length)", check=positive),
    "q": Field((int,), REQUIRED, "symbols per group (2..256)", check=lambda v: None if 2 <= v <= 256
               else "must be in 2..256"),
    "hidden_layer_remark": Field((str, int), "0", "hidden layers: '0'..'9', or 'T1'..'T9' for tanh"),
    "hidden_units": Field((int, type(None)), None, "hidden layer width (default embd_shape)", check=positive),
    "T": Field((int, float), 1.0, "softmax temperature of the head: softmax(z / T)", check=positive),
    "input_norm": Field((str,), "none", "input handling: 'none' (L2-normalised embeddings as given), "
                        "'center' (minus the training mean, re-normalised), 'whiten' (centred and "
                        "shrinkage-whitened with training statistics) or 'auto' (centred only when the "
                        "features share a large common direction)", choices=INPUT_NORMS),
    "projection_init": Field((str,), "gaussian", "initial IoM projection: 'gaussian' (N(0, 1), the "
                             "parent's) or 'orthogonal' (each group's q columns orthonormal, groups tiling "
                             "random rotations)", choices=PROJECTION_INITS),
    "key_mode": Field((str,), "code", "where a user key acts: 'code' (keyed relabelling of the "
                      "code, default) or 'embedding' (the parent's key permutation of the embedding)",
                      choices=("code", "embedding")),
    "train_key": Field((str,), "iomface-train", "public seed of the model's own embedding permutation; "
                       "'identity' for none"),
    # losses
    "loss_fun": Field((str,), "batch_hard_arc_triplet_loss", "metric loss", choices=tuple(METRIC_LOSSES)),
    "triplet_margin": Field((int, float), 0.0, "margin of the metric loss", check=non_negative),
    "code_balance_loss": Field((bool, int, float), False, "code-balance term: true (weight 1) or a weight",
                               check=_weight),
    "quanti": Field((bool, int, float), False, "quantisation term: true (weight 0.1) or a weight",
                    check=_weight),
    "metric_loss_weight": Field((int, float), 1.0, "weight of loss_fun (0: off)", check=non_negative),
    "distill_loss": Field((bool, int, float), False, "similarity-distillation term: the codes' expected "
                          "agreement regressed on the embeddings' cosine; true (weight 1) or a weight",
                          check=_weight),
    "bin_lut_loss": Field((str,), "none", "binarisation LUT term", choices=BIN_LUT_KINDS),
    "bin_lut_weight": Field((int, float), 0.1, "weight of the bin_lut_loss term", check=non_negative),
    # train
    "train_dataset": Field((str, list, type(None)), None, "identity folder (or a list of them, "
                           "identities kept apart) embedded by the stage-1 model", check=_optional_str_or_list),
    "train_embeddings": Field((str, type(None)), None,
                              ".npz of embeddings + labels from any extractor (instead of train_dataset)"),
    "flip_augment": Field((bool,), True, "also train on the embeddings of mirrored training images"),
    "cache_dir": Field((str,), "outputs/embeddings", "where computed embeddings are cached"),
    "num_classes": Field((int, type(None)), None, "checked against the training data when given"),
    "num_samples": Field((int, type(None)), None, "parent's key (its triplet count); not used"),
    "img_ext": Field((str, type(None)), None, "parent's key; every image extension is read"),
    "dataset_ext": Field((str, type(None)), None, "parent's key; not used"),
    "binary_img": Field((bool,), False, "parent's key; not used"),
    "epochs": Field((int, float), 10, "passes over the training embeddings", check=positive),
    "max_steps": Field((int, type(None)), None, "cap on training steps", check=positive),
    "optimizer": Field((str,), "adam", "optimizer", choices=("adam", "adamw", "sgd")),
    "base_lr": Field((int, float), 1e-3, "learning rate", check=positive),
    "w_decay": Field((int, float), 0.0, "weight decay (adamw, sgd)", check=non_negative),
    "save_steps": Field((int,), 1000, "checkpoint and log interval in steps", check=positive),
    "seed": Field((int,), 0, "seed of sampling and initialisation", check=non_negative),
    # the guard: learned head against random IoM on held-out training identities
    "validation_identities": Field((int, float), 0.1, "training identities held out to check the learned "
                                   "head against random IoM: a count, or a fraction in (0, 1); 0 turns the "
                                   "guard off", check=_validation_spec),
    "if_not_better": Field((str,), "random", "what ships when the learned head does not beat random IoM "
                           "on the validation identities: 'random' (a random IoM projection, the safe "
                           "default) or 'learned'", choices=("random", "learned")),
    "guard_keys": Field((int,), 5, "random IoM keys the learned head is compared with", check=positive),
    "collapse_check": Field((bool,), True, "watch for a collapsed head during training (loss flat, codes "
                            "constant, one index dominant); stop and say why"),
    # end to end (the backbone trained with the head, from images: iom/hashing/end_to_end.py)
    "train_backbone": Field((str,), "none", "how much of the stage-1 backbone trains with the head: 'none' "
                            "(the head alone on cached embeddings), 'last_blocks' (from trainable_from on) "
                            "or 'all'", choices=("none", "last_blocks", "all")),
    "trainable_from": Field((str, type(None)), None, "first trainable backbone layer for last_blocks "
                            "(default: the backbone's last stage)"),
    "warmup_steps": Field((int,), 3000, "head-only steps before the joint phase", check=positive),
    "end_to_end_steps": Field((int,), 2000, "joint steps (backbone and head)", check=positive),
    "backbone_lr_mult": Field((int, float), 0.1, "the backbone's learning rate as a multiple of base_lr",
                              check=non_negative),
    "freeze_bn": Field((bool,), True, "keep the backbone's batch norm in inference mode (not trained)"),
    "teacher_loss": Field((int, float), 1.0, "weight of mean(1 - cos(embedding, frozen model's embedding))",
                          check=non_negative),
    # test
    "test_dataset": Field((str, list, type(None)), None, "pairs folders or .bin files (verification)",
                          check=_optional_str_or_list),
    "test_embeddings": Field((str, type(None)), None,
                             ".npz of the test images' embeddings from any extractor (names: paths relative "
                             "to the pairs folder); used instead of stage1_model at evaluation"),
    "identification_dataset": Field((str, type(None)), None,
                                    "identity folder (or, with test_embeddings, its .npz with labels)"),
    "gallery_per_class": Field((int,), 1, "identification: gallery images per enrolled identity",
                               check=positive),
    "target_far": Field((int, float), 1e-3, "FAR of the default operating point of the calibration "
                        "(the template service's default threshold)", check=unit_interval),
    "calibration_fars": Field((list,), [1e-2, 1e-3, 1e-4], "FARs of the calibration's operating points",
                              check=_far_list),
    "calibration_identities": Field((int,), 0, "identities of the training data held out of training "
                                    "(a fixed draw), to calibrate the decision thresholds on "
                                    "(0: none; the calibration then needs calibration_dataset)",
                                    check=non_negative),
    "calibration_dataset": Field((str, type(None)), None, "identity folder to calibrate on instead of "
                                 "held-out training identities (disjoint from training and test data)"),
    "n_fresh_keys": Field((int,), 5, "cancelability: key draws per scenario", check=positive),
    "flip_test": Field((bool,), False, "sum embeddings of the image and its mirror at evaluation"),
    "is_ccrop": Field((bool,), False, "central crop before the stage-1 model"),
    "test_dataset_ytf": Field((str, type(None)), None, "parent's key; not used"),
    "test_dataset_fs": Field((str, type(None)), None, "parent's key; used as identification_dataset "
                             "when that is not set"),
}


def finalize_stage2(cfg: Config) -> Config:
    """Derived values and cross-key rules of a stage-2 config."""
    src = cfg.source
    changes: dict[str, Any] = {}
    parse_hidden_layer_remark(cfg["hidden_layer_remark"])
    changes["hidden_layer_remark"] = str(cfg["hidden_layer_remark"])
    for key, on_weight in (("code_balance_loss", 1.0), ("quanti", 0.1), ("distill_loss", 1.0)):
        value = cfg[key]
        changes[key] = (on_weight if value else 0.0) if isinstance(value, bool) else float(value)
    if cfg["eval_batch_size"] is None:
        changes["eval_batch_size"] = cfg["batch_size"] or 128
    if cfg["identification_dataset"] is None and cfg["test_dataset_fs"]:
        changes["identification_dataset"] = cfg["test_dataset_fs"]
    if cfg["train_backbone"] != "none" and cfg["train_embeddings"]:
        raise ConfigError(f"{src}: train_backbone: {cfg['train_backbone']} trains from images: set "
                          "'train_dataset', not 'train_embeddings'")
    if cfg["train_dataset"] and cfg["train_embeddings"]:
        raise ConfigError(f"{src}: set one of 'train_dataset' and 'train_embeddings', not both")
    if cfg["train_dataset"] and not cfg["stage1_model"]:
        raise ConfigError(f"{src}: key 'stage1_model' is required to embed 'train_dataset'")
    if cfg["calibration_identities"] and cfg["calibration_dataset"]:
        raise ConfigError(f"{src}: set one of 'calibration_identities' and 'calibration_dataset', not both")
    if cfg["target_far"] not in cfg["calibration_fars"]:
        changes["calibration_fars"] = sorted({*cfg["calibration_fars"], cfg["target_far"]}, reverse=True)
    return cfg.replace(**changes)


def stage1_model_keys(raw: dict, name: str, source: str) -> dict:
    """The keys that put the shipped stage-1 model ``name`` under a stage-2 config (``--model
    NAME`` of the stage-2 scripts): ``stage1_model``, its ``backbone_type``, ``embd_shape`` and
    ``input_size`` from the model's config.yaml, and a ``sub_name`` of its own (the config's with
    its stage-1 model's name replaced by ``name``, else ``name`` appended), so another model's
    hasher is never written over. :class:`ConfigError` when ``name`` is not a shipped stage-1
    model, or the config reads precomputed features (another extractor's)."""
    from arcface import pretrained
    from arcface.config import read_yaml

    if not pretrained.is_pretrained_name(name):
        raise ConfigError(f"--model {name!r} is not a shipped stage-1 model; shipped: "
                          f"{', '.join(pretrained.list_pretrained()) or 'none'} (iomface models lists them)")
    for key in ("train_embeddings", "test_embeddings"):
        if raw.get(key):
            raise ConfigError(f"{source}: --model {name} embeds the config's image folders, but key '{key}' "
                              f"reads precomputed features: use a config with 'train_dataset'")
    model_cfg = read_yaml(pretrained.pretrained_files(name)[0])
    old, sub = raw.get("stage1_model"), str(raw.get("sub_name") or "iom")
    keys = {"stage1_model": name, "backbone_type": model_cfg.get("backbone_type"),
            "embd_shape": model_cfg.get("embd_shape"), "input_size": model_cfg.get("input_size", 112)}
    if old != name:
        keys["sub_name"] = sub.replace(old, name) if old and old in sub else f"{sub}_{name}"
    return keys


def load_stage2_config(path: str | os.PathLike, overrides=(), stage1_model: str | None = None) -> Config:
    """Load and validate a stage-2 YAML config; ``overrides`` (``"key=value"`` strings, the
    value read as YAML) change keys before validation, so a bad one is named like a bad key;
    ``stage1_model`` puts another shipped stage-1 model under it (:func:`stage1_model_keys`)."""
    import yaml

    from arcface.config import read_yaml

    raw = read_yaml(path)
    if stage1_model is not None:
        raw.update(stage1_model_keys(raw, stage1_model, os.fspath(path)))
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        try:
            raw[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    return finalize_stage2(validate_config(raw, STAGE2_FIELDS, source=os.fspath(path)))
