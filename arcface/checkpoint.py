"""Checkpoints that resume exactly: model weights, optimizer state and the step.

A checkpoint is a folder ``<root>/ckpt_<step:09d>/`` holding

- ``train.weights.h5``: every variable of the training model (backbone, head,
  BatchNorm statistics, augmentation seed state);
- ``backbone.weights.h5``: the embedding network alone (what evaluation and stage 2 load);
- ``optimizer.npz``: every optimizer variable (iterations, momenta, loss scale), in order;
- ``rng.npz``: the states of the model's random-number generators (augmentation
  layers), which Keras weight files leave out;
- ``state.json``: step and metadata, written last.

Each folder is written under a temporary name and renamed into place, so a crash
mid-save never leaves a checkpoint that looks complete. ``best/`` holds the checkpoint
with the best verification accuracy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Any

import numpy as np

from arcface.errors import CheckpointError

_CKPT = re.compile(r"^ckpt_(\d{9})$")
STATE_FILE = "state.json"
BACKBONE_FILE = "backbone.weights.h5"
TRAIN_FILE = "train.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
RNG_FILE = "rng.npz"


def _variables_file(variables, path: str) -> None:
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, __names__=np.array([v.path for v in variables]), **arrays)


def _assign_from_file(variables, path: str, what: str) -> None:
    with np.load(path, allow_pickle=False) as data:
        names = list(data["__names__"])
        if len(names) != len(variables):
            raise CheckpointError(
                f"{path}: {len(names)} {what} variables saved, the model has {len(variables)}")
        for i, var in enumerate(variables):
            value = data[f"v{i:05d}"]
            if tuple(value.shape) != tuple(var.shape):
                raise CheckpointError(f"{path}: {what} variable {names[i]} has shape "
                                      f"{value.shape}, expected {tuple(var.shape)}")
            var.assign(value)


def seed_states(model) -> list:
    """The model's random-generator state variables (not in Keras weight files)."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_optimizer_state(optimizer, path: str) -> None:
    """Write every optimizer variable, in order, with its path."""
    _variables_file(optimizer.variables, path)


def load_optimizer_state(optimizer, path: str) -> None:
    """Assign saved values to a built optimizer; raise CheckpointError on any mismatch."""
    _assign_from_file(optimizer.variables, path, "optimizer")


class CheckpointManager:
    """Save, list, restore and prune the checkpoints of one run."""

    def __init__(self, root: str | os.PathLike, max_to_keep: int = 3):
        self.root = os.fspath(root)
        self.max_to_keep = max_to_keep

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            m = _CKPT.match(name)
            if m and os.path.isfile(os.path.join(self.root, name, STATE_FILE)):
                found.append(int(m.group(1)))
        return sorted(found)

    def path(self, step: int) -> str:
        return os.path.join(self.root, f"ckpt_{step:09d}")

    def latest(self) -> str | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    @property
    def best_path(self) -> str:
        return os.path.join(self.root, "best")

    def save(self, step: int, model, backbone, optimizer=None, extra: dict[str, Any] | None = None,
             target: str | None = None) -> str:
        """Write a checkpoint atomically (to ``target``, default ``ckpt_<step>``)."""
        final = target or self.path(step)
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, f".tmp_{os.path.basename(final)}_{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        model.save_weights(os.path.join(tmp, TRAIN_FILE))
        backbone.save_weights(os.path.join(tmp, BACKBONE_FILE))
        _variables_file(seed_states(model), os.path.join(tmp, RNG_FILE))
        if optimizer is not None:
            save_optimizer_state(optimizer, os.path.join(tmp, OPTIMIZER_FILE))
        state = {"step": int(step), "time": time.time(), **(extra or {})}
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(state, f, indent=2)
        if os.path.exists(final):
            old = final + f".old_{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        if target is None:
            self._prune()
        return final

    def _prune(self) -> None:
        for step in self.steps()[:-self.max_to_keep]:
            shutil.rmtree(self.path(step), ignore_errors=True)

    @staticmethod
    def read_state(path: str) -> dict:
        try:
            with open(os.path.join(path, STATE_FILE)) as f:
                return json.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})") from None

    def restore(self, path: str, model, optimizer=None) -> dict:
        """Load weights (and optimizer state) from checkpoint folder ``path``; return its state."""
        state = self.read_state(path)
        model.load_weights(os.path.join(path, TRAIN_FILE))
        if os.path.isfile(os.path.join(path, RNG_FILE)):
            _assign_from_file(seed_states(model), os.path.join(path, RNG_FILE), "random-generator")
        if optimizer is not None:
            opt_path = os.path.join(path, OPTIMIZER_FILE)
            if not os.path.isfile(opt_path):
                raise CheckpointError(f"{path}: no {OPTIMIZER_FILE} to resume the optimizer from")
            load_optimizer_state(optimizer, opt_path)
        return state


def resolve_backbone_weights(model_path: str | os.PathLike) -> str:
    """The backbone weights file for ``model_path``: a ``.weights.h5`` file, a checkpoint
    folder, or a run folder (its ``best/`` checkpoint if any, else the latest)."""
    path = os.fspath(model_path)
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(path, BACKBONE_FILE)):
        return os.path.join(path, BACKBONE_FILE)
    if os.path.isdir(path):
        manager = CheckpointManager(path)
        best = os.path.join(manager.best_path, BACKBONE_FILE)
        if os.path.isfile(best):
            return best
        latest = manager.latest()
        if latest:
            return os.path.join(latest, BACKBONE_FILE)
    raise CheckpointError(f"no backbone weights found at {path} (expected a .weights.h5 file, "
                          f"a checkpoint folder or a run folder with checkpoints)")
