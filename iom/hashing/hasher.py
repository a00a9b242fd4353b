"""Deep IoM hasher: a trained hashing network plus the key scheme, saved as one folder.

``encode(embeddings, key)`` gives the protected code of each embedding under a user key.
With ``key_mode='code'`` (default) the key relabels the learned code
(:class:`~iom.hashing.keying.CodeKeying`); with ``key_mode='embedding'`` it permutes the
embedding before the learned projection, as IoMArcFace does (measured in docs/RESULTS.md:
accuracy falls under keys never seen in training).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from arcface.data.pairs import atomic_write
from arcface.errors import CheckpointError
from iom.hashing.keying import CodeKeying, code_dtype
from iom.hashing.layers import build_hashing_network, key_permutation
from iom.keys import TemplateKey

SPEC_FILE = "hasher.json"
WEIGHTS_FILE = "hasher.weights.h5"
FORMAT_VERSION = 1


def train_key_of(seed: str) -> TemplateKey | None:
    """The model's public embedding-permutation key (``None`` for 'identity')."""
    return None if seed == "identity" else TemplateKey.from_seed(seed)


class DeepIoMHasher:
    """Embeddings → keyed IoM codes with a trained hashing network."""

    def __init__(self, spec: dict, network=None, seed: int = 0):
        self.spec = dict(spec)
        self.m, self.q, self.dim = int(spec["m"]), int(spec["q"]), int(spec["dim"])
        self.key_mode = spec.get("key_mode", "code")
        self.train_permutation = key_permutation(train_key_of(spec["train_key"]), self.dim)
        self.network = network or build_hashing_network(
            self.dim, self.m, self.q, self.train_permutation, spec.get("hidden_layer_remark", "0"),
            spec.get("hidden_units"), spec.get("T", 1.0), seed=seed,
            input_norm=spec.get("input_norm", "none"), projection_init=spec.get("projection_init", "gaussian"))
        self._infer = None  # the network's compiled inference call, built on first use
        self.folder = None  # where it was loaded from (its end-to-end backbone lives there)

    @classmethod
    def from_config(cls, cfg, dim: int, model_id: str | None = None) -> "DeepIoMHasher":
        """An untrained hasher with the sizes and key scheme of a stage-2 config."""
        spec = {"format_version": FORMAT_VERSION, "m": cfg["m"], "q": cfg["q"], "dim": int(dim),
                "hidden_layer_remark": cfg["hidden_layer_remark"], "hidden_units": cfg["hidden_units"],
                "T": float(cfg["T"]), "input_norm": cfg["input_norm"], "projection_init": cfg["projection_init"],
                "key_mode": cfg["key_mode"], "train_key": cfg["train_key"],
                "stage1_model": cfg["stage1_model"], "model_id": model_id or cfg["sub_name"]}
        return cls(spec, seed=cfg["seed"])

    def fit_input_normalization(self, embeddings: np.ndarray) -> None:
        """Fit the input normalisation (``spec["input_norm"]``) on training embeddings."""
        from iom.hashing.layers import fit_input_normalization

        mode = self.spec.get("input_norm", "none")
        if mode == "none":
            return
        x = np.asarray(embeddings, np.float32)[:, self.train_permutation]  # what the layer sees
        if mode == "auto":
            from iom.hashing.layers import auto_centres

            centre, stats = auto_centres(x)
            self.spec["input_norm_auto"] = {"centred": bool(centre), **stats}
        self.network.get_layer("input_norm").set_statistics(*fit_input_normalization(x, mode))

    # ------------------------------------------------------------------ encoding
    def logits(self, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(n, m, q) IoM projections of the embeddings under the model's own permutation."""
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("embeddings contain NaN or inf")
        if self._infer is None:
            from arcface.embed import inference_function

            self._infer = inference_function(self.network)
        out = [np.asarray(self._infer(x[i:i + batch_size])["logits"])
               for i in range(0, len(x), batch_size)] or [np.zeros((0, self.m * self.q), np.float32)]
        return np.concatenate(out).reshape(len(x), self.m, self.q)

    def codes(self, embeddings: np.ndarray) -> np.ndarray:
        """Un-keyed codes (n, m): the argmax of each group (the training-key code)."""
        return self.logits(embeddings).argmax(axis=2).astype(code_dtype(self.q))

    def keying(self, key: TemplateKey) -> CodeKeying:
        """The relabelling of ``key`` (made afresh each call, ~0.2 ms: template keys are
        secrets and no cache keeps them in memory)."""
        return CodeKeying(key, self.m, self.q)

    def encode(self, embeddings: np.ndarray, key: TemplateKey | None) -> np.ndarray:
        """Protected codes (n, m) of ``embeddings`` under ``key`` (``None``: un-keyed)."""
        if key is None:
            return self.codes(embeddings)
        if self.key_mode == "code":
            return self.keying(key).apply(self.codes(embeddings))
        # the parent's scheme: the key permutes the embedding the network was trained on
        x = np.asarray(embeddings, np.float32)[:, key_permutation(key, self.dim)]
        return self.codes(x[:, np.argsort(self.train_permutation)])

    # ------------------------------------------------------------------ files
    def save(self, folder: str) -> None:
        """Write ``hasher.json`` and ``hasher.weights.h5`` into ``folder`` (atomically)."""
        os.makedirs(folder, exist_ok=True)
        tmp_w = os.path.join(folder, "tmp." + WEIGHTS_FILE)
        self.network.save_weights(tmp_w)
        os.replace(tmp_w, os.path.join(folder, WEIGHTS_FILE))
        atomic_write(os.path.join(folder, SPEC_FILE), json.dumps(self.spec, indent=2).encode("utf-8"))

    @classmethod
    def load(cls, folder: str) -> "DeepIoMHasher":
        """A hasher saved by :meth:`save`."""
        spec_path, weights = os.path.join(folder, SPEC_FILE), os.path.join(folder, WEIGHTS_FILE)
        if not (os.path.isfile(spec_path) and os.path.isfile(weights)):
            raise CheckpointError(f"{folder}: not a saved hasher (needs {SPEC_FILE} and {WEIGHTS_FILE})")
        with open(spec_path) as f:
            spec = json.load(f)
        if spec.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{spec_path}: unsupported format_version {spec.get('format_version')}")
        hasher = cls(spec)
        try:
            hasher.network.load_weights(weights)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{weights} does not fit the hasher in {spec_path}: {e}") from None
        hasher.folder = folder
        own = spec.get("stage1_weights")
        if own and not os.path.isfile(os.path.join(folder, own)):
            raise CheckpointError(f"{folder}: the hasher was trained end to end but its backbone {own} is missing")
        return hasher


def stage1_backbone(hasher: DeepIoMHasher):
    """``(stage-1 config, backbone, weights file)`` a loaded hasher codes the faces of: the
    shipped ``spec["stage1_model"]``, with the backbone weights the hasher was trained end to
    end with when it has them (``spec["stage1_weights"]`` in its folder)."""
    from arcface.models import load_backbone, load_pretrained
    from arcface.pretrained import pretrained_files

    cfg, backbone = load_pretrained(hasher.spec["stage1_model"])
    own = hasher.spec.get("stage1_weights")
    if not own:
        return cfg, backbone, pretrained_files(hasher.spec["stage1_model"])[1]
    weights = os.path.join(hasher.folder, own)
    return cfg, load_backbone(cfg, weights), weights


@dataclass(frozen=True)
class HasherLocation:
    """Where :func:`locate_hasher` found a hasher: ``folder``; ``origin``, one of
    ``"checkpoints"`` (a trained run under the checkpoint root), ``"models"`` (a shipped
    hasher, under :data:`arcface.pretrained.MODELS_DIR`) or ``"path"`` (elsewhere); ``given``,
    whether ``--model_path`` named it; ``shadowed``, the shipped ``models/<sub_name>`` folder
    that a ``checkpoints/`` copy of the same name hides (else ``None``)."""

    folder: str
    origin: str
    given: bool = False
    shadowed: str | None = None

    def describe(self) -> str:
        """One line: the folder (absolute) and where it came from."""
        where = {"checkpoints": "a trained checkpoint under checkpoints/",
                 "models": "the shipped hasher under models/",
                 "path": "a saved hasher folder"}[self.origin]
        how = "given by --model_path" if self.given else "the config's sub_name"
        return f"{os.path.abspath(self.folder)} ({where}; {how})"

    def shadow_warning(self) -> str | None:
        """The warning to print when a ``checkpoints/`` hasher hides a shipped one, else None."""
        if self.shadowed is None:
            return None
        same = _same_files(self.folder, self.shadowed)
        return (f"warning: {self.folder} shadows the shipped hasher of the same name, "
                f"{self.shadowed} ({'identical files' if same else 'different weights or spec'}); "
                f"evaluating the checkpoint. Pass --model_path {self.shadowed} to evaluate the shipped one")


def _same_files(a: str, b: str) -> bool:
    import filecmp

    return all(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False)
               for f in (SPEC_FILE, WEIGHTS_FILE))


def _inside(folder: str, root: str) -> bool:
    folder, root = os.path.realpath(folder), os.path.realpath(root)
    return os.path.commonpath([folder, root]) == root


def locate_hasher(cfg, model_path: str | None = None, checkpoint_root: str = "checkpoints") -> HasherLocation:
    """The hasher folder for a stage-2 config and where it comes from: ``model_path``, else
    ``checkpoints/<sub_name>`` (a trained run takes precedence; ``shadowed`` names the shipped
    folder of the same name when there is one), else the shipped ``models/<sub_name>``."""
    from arcface.pretrained import MODELS_DIR

    def saved(folder) -> bool:
        return bool(folder) and os.path.isfile(os.path.join(folder, SPEC_FILE))

    if model_path:
        model_path = os.fspath(model_path)
        candidates = [model_path]
        if saved(model_path):
            origin = ("models" if _inside(model_path, MODELS_DIR) else
                      "checkpoints" if _inside(model_path, checkpoint_root) else "path")
            return HasherLocation(model_path, origin, given=True)
    else:
        trained = os.path.join(checkpoint_root, cfg["sub_name"])
        shipped = os.path.join(MODELS_DIR, cfg["sub_name"])
        candidates = [trained, shipped]
        if saved(trained):
            return HasherLocation(trained, "checkpoints", shadowed=shipped if saved(shipped) else None)
        if saved(shipped):
            return HasherLocation(shipped, "models")
    raise CheckpointError(f"no saved hasher in {' or '.join(map(str, candidates))}; train one with "
                          "scripts/train_twostage_tripletloss_online.py")


def find_hasher(cfg, model_path: str | None = None, checkpoint_root: str = "checkpoints") -> str:
    """The hasher folder for a stage-2 config: ``model_path``, else
    ``checkpoints/<sub_name>``, else the shipped ``models/<sub_name>``
    (:func:`locate_hasher` also says which, and what a checkpoint shadows)."""
    return locate_hasher(cfg, model_path, checkpoint_root).folder
