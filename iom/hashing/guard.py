"""Is the learned head better than random IoM? Measured on identities held out of training.

After training, :func:`guard_report` codes the validation identities (held out of training by
:func:`validation_split`) with

* the trained head (``learned``),
* the head's own initial weights (``initial``: a Gaussian random IoM projection of the
  normalised input, exactly random IoM when ``input_norm`` is ``none``),
* random IoM (Jin et al.) on the features as given, under ``n_keys`` keys (``random``),

and measures over every pair of the validation images TAR at FAR 1e-3 and 1e-4 (where the
impostor pairs resolve them) and the EER. The guard's *merit* is the mean of the TARs at the
FARs that the validation pairs resolve ten times over (minus the EER when none is). The learned
head *wins* when its merit exceeds random IoM's mean by more than random IoM's spread over
keys, and is not below its own initial projection's. Otherwise the configured fallback
(``if_not_better: random``, the default) ships the better of the two random projections,
measured the same way, and the report says so loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arcface.errors import ConfigError
from arcface.metrics import far_resolvable
from iom.keys import TemplateKey

GUARD_FARS = (1e-3, 1e-4)
#: identities are drawn from this stream (apart from calibration's and training's)
VALIDATION_STREAM = 0x7A11D
#: random IoM keys of the comparison (public: validation scores are key statistics)
GUARD_KEY_PREFIX = "iomface-guard-random"
FALLBACKS = ("random", "learned")
#: fewer validation pairs than these decide nothing (the verdict says so and the learned head stays)
MIN_GENUINE, MIN_IMPOSTOR = 50, 1000


def validation_identity_count(spec, n_identities: int, min_train: int = 0) -> int:
    """Identities ``validation_identities`` asks for: an int is a count, a float in (0, 1) a
    fraction of ``n_identities`` (rounded, at least 2, and 0 when that would leave fewer than
    ``min_train`` to train on: too little data to hold any out); 0 turns the guard off."""
    if isinstance(spec, float) and 0 < spec < 1:
        n = max(2, int(round(spec * n_identities)))
        return n if n_identities - n >= min_train else 0
    return int(spec)


def validation_split(labels: np.ndarray, spec, min_train: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_mask, validation_mask)`` over rows: a fixed seeded draw of identities (the
    same for every training seed), at least ``min_train`` identities left to train on."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    n = validation_identity_count(spec, len(ids), min_train)
    if n <= 0:
        return np.ones(len(labels), bool), np.zeros(len(labels), bool)
    if len(ids) - n < min_train:
        raise ConfigError(f"validation_identities asks for {n} of the {len(ids)} training identities, "
                          f"leaving fewer than {min_train} (classes_per_batch) to train on; lower it "
                          "(0 turns the guard off)")
    held = np.random.default_rng(VALIDATION_STREAM).choice(ids, n, replace=False)
    val = np.isin(labels, held)
    return ~val, val


# --------------------------------------------------------------------------- measuring codes
def eer_from_histograms(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Equal error rate of similarity histograms over the same bins (accept bin >= k),
    linearly interpolated between the two thresholds where FAR and FRR cross."""
    from iom.evaluation.calibrate import tail

    far, tar = tail(impostor), tail(genuine)
    frr = 1.0 - tar
    diff = far - frr                       # decreasing in k: from FAR 1 (FRR 0) to FAR 0 (FRR 1)
    k = int(np.flatnonzero(diff <= 0)[0])
    if k == 0:
        return float(far[0])
    t = diff[k - 1] / (diff[k - 1] - diff[k])
    return float(far[k - 1] + t * (far[k] - far[k - 1]))


def code_scores(codes: np.ndarray, q: int, labels: np.ndarray) -> dict:
    """TAR at :data:`GUARD_FARS` (``None`` where too few impostor pairs resolve it) and EER
    over every pair of ``codes`` (n, m)."""
    from iom.evaluation.calibrate import genuine_histogram, operating_point
    from iom.service.calibration import impostor_histogram

    impostor, _ = impostor_histogram(codes, q, labels, max_pairs=10 ** 12)
    genuine = genuine_histogram(codes, labels)
    n_imp = int(impostor.sum())
    out = {"eer": eer_from_histograms(genuine, impostor), "n_genuine": int(genuine.sum()),
           "n_impostor": n_imp}
    for far in GUARD_FARS:
        out[f"tar@{far:g}"] = (operating_point(genuine, impostor, far)["tar"]
                               if far_resolvable(n_imp, far) else None)
    return out


def guard_fars(n_impostor: int) -> tuple[float, ...]:
    """The FARs the guard decides at: those of :data:`GUARD_FARS` that ``n_impostor`` pairs
    resolve 10 times over (none: decide on the EER)."""
    return tuple(far for far in GUARD_FARS if far_resolvable(n_impostor, far / 10))


@dataclass
class GuardDecision:
    """What the guard measured and what it ships (``shipped``: ``"learned"``,
    ``"random_normalised"`` (the initial projection of the normalised input) or ``"random"``)."""

    report: dict
    learned_wins: bool
    shipped: str
    message: str


def _merit(scores: dict, fars: tuple[float, ...]) -> float:
    """Higher is better: the mean TAR at ``fars``, or minus the EER."""
    return float(np.mean([scores[f"tar@{far:g}"] for far in fars])) if fars else -scores["eer"]


def decide(learned: dict, initial: dict, random_runs: list[dict], fallback: str, input_norm: str,
           names: tuple[str, str] = ("learned head", "initial projection"),
           collapsed: bool = False) -> GuardDecision:
    """The guard's verdict from the three measurements (see the module docstring); ``names``
    name the learned model and the one it started from in the message. A head that
    ``collapsed`` during training (and did not recover) never wins."""
    if fallback not in FALLBACKS:
        raise ConfigError(f"if_not_better {fallback!r} is not one of {list(FALLBACKS)}")
    learned_name, initial_name = names
    if learned["n_genuine"] < MIN_GENUINE or learned["n_impostor"] < MIN_IMPOSTOR:
        return GuardDecision({"learned": learned, "initial": initial, "random": {"runs": random_runs},
                              "inconclusive": True}, True, "learned",
                             f"WARNING: inconclusive: {learned['n_genuine']} genuine and {learned['n_impostor']} "
                             f"impostor validation pairs are too few to compare the {learned_name} with random "
                             f"IoM (at least {MIN_GENUINE} and {MIN_IMPOSTOR}: raise validation_identities); "
                             f"keeping the {learned_name} unchecked")
    fars = guard_fars(learned["n_impostor"])
    merits = np.array([_merit(r, fars) for r in random_runs])
    r_mean, r_std = float(merits.mean()), float(merits.std())
    lw, iw = _merit(learned, fars), _merit(initial, fars)
    metric = ("mean TAR at FAR " + " and ".join(f"{f:g}" for f in fars)) if fars else "-EER"
    wins = lw > r_mean + r_std and lw >= iw and not collapsed
    report = {"metric": metric, "fars": list(fars), "learned": learned, "initial": initial,
              "random": {"runs": random_runs, "mean": r_mean, "std": r_std},
              "learned_merit": lw, "initial_merit": iw, "collapsed": collapsed}
    summary = (f"on {learned['n_genuine']:,} genuine / {learned['n_impostor']:,} impostor pairs of held-out "
               f"identities, {metric}: {learned_name} {lw:.4f}, random IoM {r_mean:.4f} ± {r_std:.4f} "
               f"({len(random_runs)} keys), {initial_name} {iw:.4f}")
    if wins:
        return GuardDecision(report, True, "learned", f"the {learned_name} beats random IoM: {summary}")
    if fallback == "learned":
        shipped, action = "learned", f"keeping the {learned_name} (if_not_better: learned)"
    else:
        normalised = input_norm != "none" and iw >= r_mean
        shipped = "random_normalised" if normalised else "random"
        action = ("shipping a random IoM projection instead (if_not_better: random): the head's initial "
                  "projection of " + ("the normalised input" if normalised else
                                      "the features as given (input normalisation off)"))
    why = ("random IoM" if lw <= r_mean + r_std else f"the {initial_name} it started from" if lw < iw
           else "random IoM safely: it collapsed during training")
    return GuardDecision(report, False, shipped,
                         f"WARNING: the {learned_name} does NOT beat {why}: {summary}; {action}")


def guard_report(hasher, initial_weights, x_val: np.ndarray, y_val: np.ndarray, n_keys: int = 5,
                 fallback: str = "random", collapsed: bool = False) -> GuardDecision:
    """Measure ``hasher`` (trained), its ``initial_weights`` and random IoM on the validation
    identities and decide (:func:`decide`). The hasher's weights are left as trained."""
    from iom.hashing.random_iom import RandomIoM

    learned = code_scores(hasher.codes(x_val), hasher.q, y_val)
    trained = hasher.network.get_weights()
    hasher.network.set_weights(initial_weights)
    try:
        initial = code_scores(hasher.codes(x_val), hasher.q, y_val)
    finally:
        hasher.network.set_weights(trained)
    baseline = RandomIoM(hasher.m, hasher.q, hasher.dim)
    random_runs = [code_scores(baseline.encode(x_val, TemplateKey.from_seed(f"{GUARD_KEY_PREFIX}-{k}")),
                               hasher.q, y_val) for k in range(n_keys)]
    return decide(learned, initial, random_runs, fallback, hasher.spec.get("input_norm", "none"),
                  collapsed=collapsed)


def describe_training_report(spec: dict) -> list[str]:
    """Lines for a user evaluating a saved hasher: what the guard measured and shipped, and any
    collapse seen in training (``WARNING`` first where the learned head did not win)."""
    report = spec.get("training_report")
    if not report:
        return ["note: this hasher has no training report (trained before the guard, or not by "
                "train_twostage_tripletloss_online.py): it was not checked against random IoM"]
    lines = []
    collapse = report.get("collapse")
    if collapse:
        lines.append(f"WARNING: the head collapsed in training at step {collapse['step']} "
                     f"({', '.join(collapse['signs'])}); likely cause: {collapse['cause']}")
    g = report.get("guard")
    if g is None:
        lines.append("note: the guard was off in training (validation_identities: 0): the learned head "
                     "was not checked against random IoM")
        return lines
    if g.get("inconclusive"):
        lines.append("WARNING: the guard was inconclusive in training (too few validation pairs)")
        return lines
    numbers = (f"{g['metric']} on held-out training identities: learned {g['learned_merit']:.4f}, random IoM "
               f"{g['random']['mean']:.4f} ± {g['random']['std']:.4f}, initial projection {g['initial_merit']:.4f}")
    shipped = report.get("shipped")
    if report.get("learned_wins"):
        lines.append(f"guard: the learned head beat random IoM ({numbers})")
    elif shipped == "learned":
        lines.append(f"WARNING: the learned head did NOT beat random IoM ({numbers}); it was kept "
                     "(if_not_better: learned)")
    else:
        what = ("the head's initial random projection of the normalised input" if shipped == "random_normalised"
                else "the head's initial random projection of the features as given")
        lines.append(f"WARNING: the learned head did NOT beat random IoM ({numbers}); this hasher is {what} "
                     "(if_not_better: random)")
    joint = report.get("end_to_end")
    if joint:
        lines.append(f"end to end ({joint['mode']}): the jointly trained model "
                     f"{'won and ships' if report.get('shipped') == 'end_to_end' else 'did not win; the head-only model ships'}")
    return lines
