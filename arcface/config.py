"""YAML configuration: one schema per stage, validated with errors that name the key.

The keys are those of the IoMArcFace configs (``batch_size``, ``backbone_type``,
``head_type``, ``margin``, ``logist_scale`` ...) plus the ones iomface adds
(mixed precision, learning-rate schedule, warm-up, augmentation, seeds).
A config is a :class:`Config`: a read-only mapping that also allows attribute access.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import yaml

from arcface.errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One config key: accepted types, default (``REQUIRED`` if none), and checks."""

    types: tuple
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None


def positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def unit_interval(value) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _str_or_list(value) -> str | None:
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        return "must be a path or a list of paths"
    return None


def _non_empty(value) -> str | None:
    return None if value.strip() else "must not be empty"


def _three_floats(value) -> str | None:
    if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
        return "must be a list of three numbers [m1, m2, m3]"
    return None


def _int_list(value) -> str | None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return "must be a list of positive step numbers"
    if list(value) != sorted(value):
        return "must be in increasing order"
    return None


HEAD_TYPES = ("NormHead", "SphereHead", "CosHead", "ArcHead", "CombinedHead")

#: Stage-1 (ArcFace training, evaluation, embedding) keys.
STAGE1_FIELDS: dict[str, Field] = {
    # general
    "batch_size": Field((int,), REQUIRED, "training batch size", check=positive),
    "eval_batch_size": Field((int, type(None)), None, "batch size for embedding/eval (default batch_size)",
                             check=positive),
    "input_size": Field((int,), 112, "square input size in pixels", check=positive),
    "embd_shape": Field((int,), 512, "embedding dimension", check=positive),
    "sub_name": Field((str,), REQUIRED, "run name: checkpoints/<sub_name>, logs/<sub_name>"),
    "backbone_type": Field((str,), REQUIRED, "a name from arcface.backbones.list_backbones()"),
    "head_type": Field((str,), "ArcHead", "margin head", choices=HEAD_TYPES),
    "margin": Field((int, float, type(None)), None,
                    "head margin: SphereHead m (integer, 4), CosHead m (0.35), ArcHead m (0.5)"),
    "margins": Field((list, type(None)), None, "CombinedHead [m1, m2, m3]: cos(m1*theta+m2)-m3",
                     check=lambda v: None if v is None else _three_floats(v)),
    "logist_scale": Field((int, float), 64.0, "logit scale s", check=positive),
    "is_ccrop": Field((bool,), False, "central crop (resize to 128/112 of the size, crop the centre)"),
    "dropout": Field((int, float), 0.0, "dropout before the embedding layer", check=unit_interval),
    "pretrained": Field((str, type(None)), None,
                        "initialise the backbone from: a shipped model's name (models/), a backbone "
                        ".weights.h5, a checkpoint folder or a run folder (fine-tuning; the head "
                        "starts fresh; ignored when resuming)", check=_non_empty),
    "freeze_bn": Field((bool,), False,
                       "BatchNormalization layers of the backbone not trained: inference mode, "
                       "moving statistics, gamma and beta kept (fine-tuning imported models)"),
    # train
    "train_dataset": Field((str, type(None)), None, "image folder, RecordIO dir or .rec file"),
    "binary_img": Field((bool,), False, "parent's TFRecord flag; images are always decoded on the fly"),
    "num_classes": Field((int, type(None)), None, "checked against the training data when given"),
    "num_samples": Field((int, type(None)), None, "checked against the training data when given"),
    "epochs": Field((int,), 5, "passes over the training data", check=positive),
    "max_steps": Field((int, type(None)), None, "cap on training steps (default: epochs x steps per epoch)",
                       check=positive),
    "base_lr": Field((int, float), 0.1, "peak learning rate", check=positive),
    "w_decay": Field((int, float), 5e-4, "weight decay", check=non_negative),
    "optimizer": Field((str,), "sgd", "optimizer", choices=("sgd", "adam", "adamw")),
    "momentum": Field((int, float), 0.9, "SGD momentum", check=non_negative),
    "lr_schedule": Field((str,), "cosine", "learning-rate schedule",
                         choices=("constant", "cosine", "piecewise")),
    "lr_steps": Field((list,), [], "piecewise: steps where the rate is multiplied by lr_decay",
                      check=_int_list),
    "lr_decay": Field((int, float), 0.1, "piecewise decay factor", check=positive),
    "warmup_steps": Field((int,), 0, "linear warm-up steps", check=non_negative),
    "save_steps": Field((int,), 1000, "checkpoint every N steps", check=positive),
    "keep_checkpoints": Field((int,), 3, "how many recent checkpoints to keep", check=positive),
    "mixed_precision": Field((bool, str), False,
                             "false, true (= mixed_bfloat16), 'mixed_bfloat16' or 'mixed_float16'"),
    "seed": Field((int,), 0, "seed of shuffling, augmentation and initialisation", check=non_negative),
    "distribution": Field((str,), "auto",
                          "devices a training step runs on: 'none' (one), 'data_parallel' (the global "
                          "batch split over num_devices), 'auto' (data_parallel when there are several)",
                          choices=("auto", "none", "data_parallel")),
    "num_devices": Field((int, type(None)), None, "devices of data_parallel (default: all the backend sees)",
                         check=positive),
    "workers": Field((int,), 0, "decoder threads (0 = one per CPU core)", check=non_negative),
    "random_flip": Field((bool,), True, "random horizontal flip"),
    "random_brightness": Field((int, float), 0.0, "max brightness change, fraction of range (0 = off)",
                               check=unit_interval),
    "random_contrast": Field((int, float), 0.0, "max contrast change factor (0 = off)",
                             check=unit_interval),
    "random_crop": Field((int,), 0, "random translation in pixels (0 = off)", check=non_negative),
    # test
    "test_dataset": Field((str, list, type(None)), None,
                          ".bin files, pairs folders, or a folder holding them", check=_str_or_list),
    "eval_steps": Field((int, type(None)), None, "verify every N steps (default save_steps)",
                        check=positive),
    "flip_test": Field((bool,), False, "sum embeddings of the image and its mirror at evaluation"),
}

DEFAULT_MARGINS = {"NormHead": 0.0, "SphereHead": 4, "CosHead": 0.35, "ArcHead": 0.5}


class Config(Mapping):
    """A validated, read-only configuration: ``cfg['key']`` and ``cfg.key`` alike."""

    def __init__(self, values: Mapping[str, Any], source: str = "<dict>"):
        self._values = dict(values)
        self.source = source

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __getattr__(self, key):
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def replace(self, **changes) -> "Config":
        """A copy with some keys changed (not re-validated against a schema)."""
        values = dict(self._values)
        values.update(changes)
        return Config(values, self.source)

    def to_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self):
        return f"Config({self._values!r}, source={self.source!r})"


def _type_name(types: tuple) -> str:
    names = [t.__name__ if t is not type(None) else "null" for t in types]
    return " or ".join(names)


def _check_type(key: str, value: Any, field: Field, source: str) -> Any:
    if isinstance(value, bool) and bool not in field.types:
        raise ConfigError(f"{source}: key '{key}' must be {_type_name(field.types)}, got a boolean")
    if not isinstance(value, field.types):
        if float in field.types and isinstance(value, str):
            try:  # YAML reads 5e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, field.types):
            raise ConfigError(
                f"{source}: key '{key}' must be {_type_name(field.types)}, "
                f"got {type(value).__name__} {value!r}"
            )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: key '{key}' must be finite, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{source}: key '{key}' must be one of {list(field.choices)}, got {value!r}")
    if field.check is not None and value is not None:
        problem = field.check(value)
        if problem:
            raise ConfigError(f"{source}: key '{key}' {problem}, got {value!r}")
    return value


def validate_config(raw: Mapping[str, Any], fields: Mapping[str, Field] = STAGE1_FIELDS,
                    source: str = "<dict>") -> Config:
    """Check ``raw`` against ``fields``: unknown, missing and mistyped keys raise
    :class:`ConfigError` naming the key; defaults fill the rest."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of keys to values, "
                          f"got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
    for key, field in fields.items():
        if key in raw:
            values[key] = _check_type(key, raw[key], field, source)
        elif field.default is REQUIRED:
            raise ConfigError(f"{source}: missing required key '{key}' ({field.doc})")
        else:
            default = field.default
            values[key] = list(default) if isinstance(default, list) else default
    return Config(values, source)


def finalize_stage1(cfg: Config) -> Config:
    """Fill derived stage-1 values (per-head margin default, eval sizes) and check
    cross-key rules."""
    src = cfg.source
    changes: dict[str, Any] = {}
    head = cfg["head_type"]
    if head == "CombinedHead":
        if cfg["margins"] is None:
            changes["margins"] = [1.0, 0.3, 0.2]
        if cfg["margin"] is not None:
            raise ConfigError(f"{src}: key 'margin' is not used by CombinedHead; set 'margins'")
    else:
        if cfg["margins"] is not None:
            raise ConfigError(f"{src}: key 'margins' only applies to head_type CombinedHead")
        if cfg["margin"] is None:
            changes["margin"] = DEFAULT_MARGINS[head]
    margin = changes.get("margin", cfg["margin"])
    if head == "SphereHead" and (float(margin) != int(margin) or int(margin) < 1):
        raise ConfigError(f"{src}: key 'margin' must be a positive integer for SphereHead, got {margin!r}")
    if head in ("CosHead", "ArcHead") and not 0 <= float(margin) < 1.5:
        raise ConfigError(f"{src}: key 'margin' must be in [0, 1.5) for {head}, got {margin!r}")
    if cfg["eval_batch_size"] is None:
        changes["eval_batch_size"] = cfg["batch_size"]
    if cfg["eval_steps"] is None:
        changes["eval_steps"] = cfg["save_steps"]
    mp = cfg["mixed_precision"]
    if mp is True:
        changes["mixed_precision"] = "mixed_bfloat16"
    elif mp is False:
        changes["mixed_precision"] = "float32"
    elif mp not in ("mixed_bfloat16", "mixed_float16", "float32"):
        raise ConfigError(f"{src}: key 'mixed_precision' must be true, false, 'mixed_bfloat16' "
                          f"or 'mixed_float16', got {mp!r}")
    if cfg["lr_schedule"] == "piecewise" and not cfg["lr_steps"]:
        raise ConfigError(f"{src}: key 'lr_steps' is required when lr_schedule is 'piecewise'")
    return cfg.replace(**changes)


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a missing file or bad YAML raises ConfigError."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty")
    return raw


def load_config(path: str | os.PathLike, fields: Mapping[str, Field] = STAGE1_FIELDS,
                finalize: Callable[[Config], Config] | None = finalize_stage1) -> Config:
    """Load and validate a YAML config file (stage 1 by default)."""
    cfg = validate_config(read_yaml(path), fields, source=os.fspath(path))
    return finalize(cfg) if finalize else cfg
