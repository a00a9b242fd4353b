"""Collapse detection while the hashing head trains, with the likely cause named.

A head has *collapsed* when its codes stop carrying the face: the loss does not move, every
face gets (nearly) the same code, or one symbol takes over the groups. :class:`CollapseMonitor`
watches a fixed probe of training embeddings every ``every`` steps; on the first sign it
prints one message that says what was seen and why it is likely (from
:func:`feature_diagnostics`, measured before training), records it, and stops training (the
guard then decides what ships, :mod:`iom.hashing.guard`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np

#: share of a group's most used symbol above which one index dominates (uniform is 1/q)
DOMINANT_SHARE = 0.9
#: relative change of the loss below which, after ``patience`` steps, it is flat
FLAT_CHANGE = 0.005
#: mean pairwise cosine (|mean of the unit rows|²) above which features share a common direction
COMMON_MEAN_COS = 0.1


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_spread(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the cosine over random pairs of rows (a sample)."""
    u = _unit(x)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(u), (2, n))
    keep = i != j
    cos = np.sum(u[i[keep]] * u[j[keep]], axis=1)
    return float(cos.mean()), float(cos.std())


@dataclass
class CodeHealth:
    """How much a batch of codes varies: ``distinct`` share of different codes among the rows,
    ``dominant`` median over groups of the most used symbol's share, ``agreement`` mean share
    of equal groups over pairs of rows (1/q for independent uniform codes), ``saturation``
    mean largest softmax probability (1: hard codes, no gradient through the softmax)."""

    distinct: float
    dominant: float
    agreement: float
    saturation: float


def code_health(probs: np.ndarray) -> CodeHealth:
    """:class:`CodeHealth` of the head's per-group probabilities (n, m, q)."""
    probs = np.asarray(probs, np.float32)
    n, m, q = probs.shape
    codes = probs.argmax(axis=2)
    usage = np.stack([np.bincount(codes[:, g], minlength=q) for g in range(m)]) / n
    onehot = np.eye(q, dtype=np.float32)[codes].reshape(n, m * q)
    agree = onehot @ onehot.T / m
    off = ~np.eye(n, dtype=bool)
    return CodeHealth(distinct=len(np.unique(codes, axis=0)) / n, dominant=float(np.median(usage.max(axis=1))),
                      agreement=float(agree[off].mean()), saturation=float(probs.max(axis=2).mean()))


def collapse_signs(health: CodeHealth, q: int, loss_change: float | None) -> list[str]:
    """What looks collapsed: ``"codes constant"``, ``"one index dominant"``, ``"loss flat"``."""
    signs = []
    if health.distinct < 0.05 or health.agreement > (1.0 + 1.0 / q) / 2:   # past halfway from chance to equal
        signs.append("codes constant")
    if health.dominant > DOMINANT_SHARE:
        signs.append("one index dominant")
    if loss_change is not None and abs(loss_change) < FLAT_CHANGE:
        signs.append("loss flat")
    return signs


def feature_diagnostics(x: np.ndarray, normalised: np.ndarray, init_health: CodeHealth,
                        distillation_fit: dict | None = None) -> dict:
    """What can make a head collapse, measured before training: the features' common direction
    (mean pairwise cosine, before and after the input normalisation), the spread of their
    cosines, how saturated the initial softmax is, and how well the distillation line fits."""
    raw_mean, raw_std = cosine_spread(x)
    norm_mean, norm_std = cosine_spread(normalised)
    out = {"cos_mean": raw_mean, "cos_std": raw_std, "normalised_cos_mean": norm_mean,
           "normalised_cos_std": norm_std, "init_saturation": init_health.saturation,
           "init_agreement": init_health.agreement}
    if distillation_fit is not None:
        out["distillation_fit"] = distillation_fit
    return out


def likely_cause(diag: dict, cfg, q: int) -> str:
    """The most likely reason for a collapse, in words a user can act on."""
    causes = []
    if diag["normalised_cos_mean"] > COMMON_MEAN_COS:
        causes.append(f"the features share a large common direction (mean pairwise cosine "
                      f"{diag['normalised_cos_mean']:.2f} as the head sees them, cosines bunched with std "
                      f"{diag['normalised_cos_std']:.2f}): every projection mostly sees that direction, so "
                      f"codes agree for everyone; set input_norm: center (or auto)")
    if diag["init_saturation"] > 0.99:
        causes.append(f"the softmax is saturated from the start (mean top probability "
                      f"{diag['init_saturation']:.3f} at T={cfg['T']}): its gradients vanish; "
                      "raise T or use a head that normalises its logits")
    fit = diag.get("distillation_fit")
    if fit is not None and (fit["r2"] < 0.05 or fit["beta"] <= 0):
        causes.append(f"the distillation line does not fit the features (slope {fit['beta']:.3f}, "
                      f"R² {fit['r2']:.3f}): the target carries no information about the faces")
    if not causes:
        causes.append(f"no input statistic explains it; the learning rate (base_lr {cfg['base_lr']}) or "
                      "the loss weights are the next suspects")
    return "; ".join(causes)


class CollapseMonitor(keras.callbacks.Callback):
    """Every ``every`` steps, codes a fixed probe of training embeddings with the network and
    checks :func:`collapse_signs` (the loss is compared with its mean over the first ``every``
    steps once ``patience`` steps have run). The first sign is printed at once with
    :func:`likely_cause` and kept in :attr:`collapse`; training goes on, since it may repair
    codes that the input made degenerate, and stops when the signs are still there
    ``patience`` steps later (``collapse["stopped_at"]``); if they vanish, ``collapse["recovered_at"]``
    says when. A loss that is not finite stops training at once."""

    def __init__(self, network, probe: np.ndarray, q: int, cfg, diagnostics: dict,
                 every: int = 100, patience: int = 500, log=print):
        super().__init__()
        self.network, self.probe, self.q, self.cfg = network, np.asarray(probe, np.float32), q, cfg
        self.diagnostics = diagnostics
        self.every, self.patience, self.log = max(1, int(every)), int(patience), log
        self.step, self._first_losses, self.collapse = 0, [], None
        self.history: list[dict] = []

    def _health(self) -> CodeHealth:
        _ = self.model  # on JAX this syncs the trained state into the variables
        out = self.network(self.probe, training=False)
        return code_health(keras.ops.convert_to_numpy(out["probs"]))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        loss = float((logs or {}).get("loss", np.nan))
        if self.step <= self.every:
            self._first_losses.append(loss)
        if not np.isfinite(loss):
            self._report(["loss not finite"], None, None)
            self._stop("the loss is not finite")
            return
        if self.step % self.every:
            return
        health = self._health()
        start = float(np.mean(self._first_losses))
        change = (loss - start) / max(abs(start), 1e-12) if self.step >= self.patience else None
        self.history.append({"step": self.step, "loss": loss, **asdict(health)})
        signs = collapse_signs(health, self.q, change)
        if signs and self.collapse is None:
            self._report(signs, health, change)
        elif signs and self.step - self.collapse["step"] >= self.patience and "recovered_at" not in self.collapse:
            self._stop(f"still collapsed {self.step - self.collapse['step']} steps later ({', '.join(signs)})")
        elif not signs and self.collapse is not None and "recovered_at" not in self.collapse \
                and "stopped_at" not in self.collapse:
            self.collapse["recovered_at"] = self.step
            self.log(f"[stage 2] the codes recovered at step {self.step} (pairs agree on {health.agreement:.0%} "
                     "of groups)")

    def _report(self, signs, health, change):
        self.collapse = {"step": self.step, "signs": signs,
                         "health": asdict(health) if health else None, "loss_change": change,
                         "cause": likely_cause(self.diagnostics, self.cfg, self.q)}
        self.log(f"[stage 2] WARNING: the hashing head collapsed at step {self.step} ({', '.join(signs)}"
                 + (f"; codes: {health.distinct:.0%} distinct, top symbol {health.dominant:.0%} of a group, "
                    f"pairs agree on {health.agreement:.0%} of groups (independent codes: {1 / self.q:.0%})"
                    if health else "")
                 + f"). Likely cause: {self.collapse['cause']}.")

    def _stop(self, why: str):
        self.collapse["stopped_at"] = self.step
        self.log(f"[stage 2] training stops at step {self.step}: {why}; the guard decides what ships")
        self.model.stop_training = True
