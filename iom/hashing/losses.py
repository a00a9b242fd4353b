"""Backend-agnostic losses for training the deep IoM hashing head (``keras.ops`` only).

Inputs are ``labels`` (B,) integer identities and either ``codes`` (B, m) soft codes
(the expected index of each of the m groups, in [0, q−1]) or ``probs`` (B, m, q) the
per-group softmax probabilities. Every loss returns a float32 scalar and is finite, with
finite gradients, also when rows of the batch coincide.

Conventions: a *positive* of anchor a is p ≠ a with the same label, a *negative* is n
with a different label; a *valid triplet* is (a, p, n) with p a positive and n a
negative of a. Means over an empty set are 0.

Metric losses (registry :data:`METRIC_LOSSES`, all callable as ``f(labels, codes, margin)``):

* arc triplet (angles θ = arccos of the cosine between rows, margin m):
  ``ℓ(θp, θn) = σ(cos(θn + m) − sin θn) + σ(sin(θp + m) − cos θp)``, where
  ``σ(x − y) = eˣ / (eˣ + eʸ)``; batch-hard uses, per anchor, the largest θp and the
  smallest θn; batch-all averages over every valid triplet.
* Euclidean triplet ``relu(d_ap − d_an + margin)``: batch-hard, batch-all (mean over the
  triplets with a positive loss) and semi-hard (``tfa.losses.TripletSemiHardLoss``).

Regularisers: :func:`code_balance_loss`, :func:`quantization_loss`, :func:`bin_lut_loss`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from keras import ops

from arcface.errors import ConfigError

#: cosines are clipped to [-1 + COS_EPS, 1 - COS_EPS] before arccos (finite gradients)
COS_EPS = 1e-7
#: squared norms / distances at or below this are treated as 0 (finite sqrt gradients)
SQ_EPS = 1e-12

BIN_LUT_KINDS = ("tanh", "sigmoid", "none")


# --------------------------------------------------------------------------- #
# pairwise geometry and masks
# --------------------------------------------------------------------------- #
def _safe_sqrt(sq):
    """``sqrt(sq)`` that is exactly 0, with zero gradient, where ``sq ≤ SQ_EPS``."""
    small = sq <= SQ_EPS
    return ops.where(small, 0.0, ops.sqrt(ops.where(small, 1.0, sq)))


def _eye(n):
    return ops.cast(ops.eye(n), "bool")


def unit_cosine_matrix(x):
    """(B, B) cosine similarities of the rows of ``x`` (any scale): ``x̂ x̂ᵀ`` with
    ``x̂ = x / sqrt(max(‖x‖², 1e-12))``."""
    x = ops.cast(x, "float32")
    x = x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=1, keepdims=True), SQ_EPS))
    return ops.matmul(x, ops.transpose(x))


def pairwise_cosine_angles(codes):
    """(B, B) angles ``θ_ij = arccos(clip(x̂_i · x̂_j, −1 + 1e-7, 1 − 1e-7))``.

    ``x̂ = x / sqrt(max(‖x‖², 1e-12))``. Because of the clip (and float32 rounding) the
    diagonal and identical rows give a small angle (≲ 1e-3), not exactly 0; the gradient
    of a clipped entry is 0.
    """
    cos = unit_cosine_matrix(codes)
    return ops.arccos(ops.clip(cos, -1.0 + COS_EPS, 1.0 - COS_EPS))


def pairwise_euclidean(x, squared: bool = False):
    """(B, B) Euclidean distances ``‖x_i − x_j‖`` (or their squares if ``squared``).

    Computed as ``max(‖x_i‖² + ‖x_j‖² − 2 x_i·x_j, 0)``; the diagonal is exactly 0 and
    entries ``≤ 1e-12`` get distance 0 with zero gradient (the sqrt is guarded).
    """
    x = ops.cast(x, "float32")
    sq_norm = ops.sum(ops.square(x), axis=1)
    sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * ops.matmul(x, ops.transpose(x))
    sq = ops.where(_eye(ops.shape(x)[0]), 0.0, ops.maximum(sq, 0.0))
    return sq if squared else _safe_sqrt(sq)


def _label_masks(labels):
    """``(positive, negative)`` (B, B) boolean masks: same label and j ≠ i / other label."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    same = ops.equal(labels[:, None], labels[None, :])
    return ops.logical_and(same, ops.logical_not(_eye(ops.shape(labels)[0]))), ops.logical_not(same)


def _anchor_mask(pos, neg):
    """(B,) mask of the anchors with ≥ 1 positive and ≥ 1 negative."""
    return ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1))


def _triplet_mask(pos, neg):
    """(B, B, B) mask of valid triplets ``[a, p, n]``."""
    return ops.logical_and(pos[:, :, None], neg[:, None, :])


def _masked_max(x, mask, axis: int = -1):
    """Max of non-negative ``x`` over ``mask`` along ``axis`` (0 where the mask is empty)."""
    return ops.max(ops.where(mask, x, 0.0), axis=axis)


def _masked_min(x, mask, axis: int = -1):
    """Min of ``x`` over ``mask`` along ``axis`` (meaningless where the mask is empty)."""
    return ops.min(ops.where(mask, x, ops.max(x) + 1.0), axis=axis)


def _masked_mean(values, mask):
    """Mean of ``values`` over ``mask`` (0 for an empty mask)."""
    mask = ops.cast(mask, "float32")
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


# --------------------------------------------------------------------------- #
# arc triplet losses (angles between soft codes)
# --------------------------------------------------------------------------- #
def _arc_term(theta_p, theta_n, margin: float):
    """``σ(cos(θn + m) − sin θn) + σ(sin(θp + m) − cos θp)`` elementwise."""
    neg = ops.sigmoid(ops.cos(theta_n + margin) - ops.sin(theta_n))
    pos = ops.sigmoid(ops.sin(theta_p + margin) - ops.cos(theta_p))
    return neg + pos


def batch_hard_arc_triplet_loss(labels, codes, margin: float = 0.0, scale: float = 1.0):
    """Batch-hard arc triplet loss.

    Per anchor a: ``θp = max_p θ_ap`` over positives, ``θn = min_n θ_an`` over negatives,
    ``ℓ_a = e^{cos(θn+m)} / (e^{cos(θn+m)} + e^{sin θn})
    + e^{sin(θp+m)} / (e^{sin(θp+m)} + e^{cos θp})``
    (evaluated as ``σ(cos(θn+m) − sin θn) + σ(sin(θp+m) − cos θp)``).
    Loss ``= scale · mean_a ℓ_a`` over the anchors with ≥ 1 positive and ≥ 1 negative
    (0 if there is none).
    """
    theta = pairwise_cosine_angles(codes)
    pos, neg = _label_masks(labels)
    term = _arc_term(_masked_max(theta, pos), _masked_min(theta, neg), float(margin))
    return float(scale) * _masked_mean(term, _anchor_mask(pos, neg))


def batch_all_arc_triplet_loss(labels, codes, margin: float = 0.0, scale: float = 1.0):
    """Batch-all arc triplet loss.

    ``scale · mean_{(a,p,n) valid} [σ(cos(θ_an + m) − sin θ_an) + σ(sin(θ_ap + m) − cos θ_ap)]``
    with ``σ(x − y) = eˣ / (eˣ + eʸ)`` (0 if there is no valid triplet).
    """
    theta = pairwise_cosine_angles(codes)
    pos, neg = _label_masks(labels)
    term = _arc_term(theta[:, :, None], theta[:, None, :], float(margin))
    return float(scale) * _masked_mean(term, _triplet_mask(pos, neg))


# --------------------------------------------------------------------------- #
# Euclidean triplet losses
# --------------------------------------------------------------------------- #
def batch_hard_triplet_loss(labels, x, margin: float = 0.5, squared: bool = False):
    """Batch-hard triplet loss ``mean_a relu(max_p d_ap − min_n d_an + margin)``.

    The mean runs over the anchors with ≥ 1 positive and ≥ 1 negative (0 if none);
    ``d`` is :func:`pairwise_euclidean` (squared if ``squared``).
    """
    d = pairwise_euclidean(x, squared)
    pos, neg = _label_masks(labels)
    loss = ops.relu(_masked_max(d, pos) - _masked_min(d, neg) + float(margin))
    return _masked_mean(loss, _anchor_mask(pos, neg))


def batch_all_triplet_loss(labels, x, margin: float = 0.5, squared: bool = False):
    """Batch-all triplet loss: ``t_apn = relu(d_ap − d_an + margin)`` over valid triplets,
    averaged over the triplets with ``t_apn > 1e-16`` only (0 if none)."""
    d = pairwise_euclidean(x, squared)
    pos, neg = _label_masks(labels)
    loss = ops.relu(d[:, :, None] - d[:, None, :] + float(margin))
    loss = ops.where(_triplet_mask(pos, neg), loss, 0.0)
    return _masked_mean(loss, loss > 1e-16)


def semihard_triplet_loss(labels, x, margin: float = 1.0):
    """Semi-hard triplet loss, as ``tfa.losses.TripletSemiHardLoss`` (non-squared distances).

    For each positive pair (a, p): ``d_an* = min {d_an : n negative, d_an > d_ap}``, or, if
    that set is empty, ``max_n d_an`` over negatives (0 if a has no negative, like tfa).
    Loss ``= mean_{(a,p)} relu(d_ap − d_an* + margin)`` over positive pairs (0 if none).
    """
    d = pairwise_euclidean(x)
    pos, neg = _label_masks(labels)
    outside = ops.logical_and(neg[:, None, :], d[:, None, :] > d[:, :, None])  # [a, p, n]
    semi = ops.where(ops.any(outside, axis=2), _masked_min(d[:, None, :], outside),
                     _masked_max(d, neg)[:, None])
    return _masked_mean(ops.relu(d - semi + float(margin)), pos)


# --------------------------------------------------------------------------- #
# code regularisers
# --------------------------------------------------------------------------- #
def code_balance_loss(probs):
    """``mean_i Σ_j (u_ij − 1/q)²`` with ``u_ij = mean_b probs[b, i, j]``.

    0 iff, over the batch, every group uses every one of its q indices equally often.
    """
    probs = ops.cast(probs, "float32")
    q = probs.shape[-1]
    usage = ops.mean(probs, axis=0)
    return ops.mean(ops.sum(ops.square(usage - 1.0 / q), axis=-1))


def quantization_loss(codes):
    """``mean((codes − stop_gradient(round(codes)))²)``: pulls soft codes to integers."""
    codes = ops.cast(codes, "float32")
    return ops.mean(ops.square(codes - ops.stop_gradient(ops.round(codes))))


def binary_lut(q: int) -> np.ndarray:
    """(q, ceil(log2 q)) float32 table of each index's binary digits, most significant first."""
    bits = max(1, (int(q) - 1).bit_length())
    return ((np.arange(q)[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.float32)


def bin_lut_loss(probs, kind: str):
    """Confidence loss on the soft bits ``b = probs @ LUT`` (B, m, bits), ``b ∈ [0, 1]``.

    * ``"sigmoid"``: ``mean((b − stop_gradient(round(b)))²)``;
    * ``"tanh"``: ``mean(1 − |2b − 1|)`` (L1 distance of ``u = 2b − 1`` to the nearer of ±1);
    * ``"none"``: 0.

    LUT is :func:`binary_lut`; any other ``kind`` raises :class:`ConfigError`.
    """
    if kind not in BIN_LUT_KINDS:
        raise ConfigError(f"bin_lut_loss kind {kind!r} is not one of {list(BIN_LUT_KINDS)}")
    if kind == "none":
        return ops.convert_to_tensor(0.0, "float32")
    probs = ops.cast(probs, "float32")
    b = ops.matmul(probs, ops.convert_to_tensor(binary_lut(probs.shape[-1])))
    if kind == "sigmoid":
        return ops.mean(ops.square(b - ops.stop_gradient(ops.round(b))))
    return ops.mean(1.0 - ops.abs(2.0 * b - 1.0))


# --------------------------------------------------------------------------- #
# Hamming-agreement losses (on the per-group probabilities)
# --------------------------------------------------------------------------- #
def expected_agreement(probs):
    """(B, B) expected normalised Hamming similarity ``A_ab = (1/m) Σ_i Σ_j p_aij p_bij``.

    If each group's symbol were drawn from its softmax, ``A_ab`` is the expected fraction
    of groups on which the codes of a and b agree: the soft version of what is matched.
    """
    shape = ops.shape(probs)
    flat = ops.reshape(ops.cast(probs, "float32"), (shape[0], shape[1] * shape[2]))
    return ops.matmul(flat, ops.transpose(flat)) / ops.cast(shape[1], "float32")


def batch_hard_hamming_loss(labels, probs, margin: float = 0.0, scale: float = 16.0):
    """Batch-hard triplet loss on expected agreement.

    Per anchor a: ``A_p = min_p A_ap`` over positives, ``A_n = max_n A_an`` over
    negatives; ``ℓ_a = softplus(scale · (A_n − A_p + margin))``; mean over the anchors
    with ≥ 1 positive and ≥ 1 negative.
    """
    pos, neg = _label_masks(labels)
    agree = expected_agreement(probs)
    hardest_pos = ops.min(ops.where(pos, agree, 2.0), axis=1)
    hardest_neg = ops.max(ops.where(neg, agree, -1.0), axis=1)
    loss = ops.softplus(scale * (hardest_neg - hardest_pos + margin))
    return _masked_mean(loss, _anchor_mask(pos, neg))


def batch_all_hamming_loss(labels, probs, margin: float = 0.0, scale: float = 16.0):
    """``softplus(scale · (A_an − A_ap + margin))`` averaged over every valid triplet."""
    pos, neg = _label_masks(labels)
    agree = expected_agreement(probs)
    loss = ops.softplus(scale * (agree[:, None, :] - agree[:, :, None] + margin))
    return _masked_mean(loss, _triplet_mask(pos, neg))



def decidability_hamming_loss(labels, probs, margin: float = 0.0):
    """Negative decidability of expected agreement over every pair of the batch:
    ``−(μ_gen − μ_imp) / sqrt((σ²_gen + σ²_imp) / 2)`` (``margin`` is not used)."""
    pos, neg = _label_masks(labels)
    agree = expected_agreement(probs)

    def moments(mask):
        w = ops.cast(mask, "float32")
        n = ops.maximum(ops.sum(w), 1.0)
        mean = ops.sum(agree * w) / n
        return mean, ops.sum(ops.square(agree - mean) * w) / n

    mu_g, var_g = moments(pos)
    mu_i, var_i = moments(neg)
    return -(mu_g - mu_i) / ops.sqrt((var_g + var_i) / 2.0 + 1e-8)

def circle_hamming_loss(labels, probs, margin: float = 0.25, scale: float = 64.0):
    """Circle loss (Sun et al., CVPR 2020) on expected agreement, per anchor a:
    ``softplus(LSE_n γ α_n (A_an − Δ_n) + LSE_p −γ α_p (A_ap − Δ_p))`` with
    ``α_p = relu(1 + m − A_ap)``, ``α_n = relu(A_an + m)``, ``Δ_p = 1 − m``, ``Δ_n = m``
    (``m = margin``, 0.25 when 0 is given, ``γ = scale``; the α are constants of the gradient);
    mean over the anchors with ≥ 1 positive and ≥ 1 negative. Its log-sum-exp over
    impostors weights the hardest ones most: it works on the low-FAR tail, where
    decidability works on the bulk."""
    m = float(margin) or 0.25
    pos, neg = _label_masks(labels)
    agree = expected_agreement(probs)
    alpha_p = ops.stop_gradient(ops.relu(1.0 + m - agree))
    alpha_n = ops.stop_gradient(ops.relu(agree + m))
    big = 1e4
    logit_p = ops.where(pos, -scale * alpha_p * (agree - (1.0 - m)), -big)
    logit_n = ops.where(neg, scale * alpha_n * (agree - m), -big)
    lse_p = ops.logsumexp(logit_p, axis=1)
    lse_n = ops.logsumexp(logit_n, axis=1)
    return _masked_mean(ops.softplus(lse_p + lse_n), _anchor_mask(pos, neg))


def similarity_distillation_loss(embeddings, probs, alpha: float, beta: float):
    """``mean_{a≠b} (A_ab − (α + β·cos_ab))²`` (× 100): the expected agreement of the codes
    regressed on an affine map of the cosine similarity of the input embeddings.

    The teacher is the extractor itself: raw cosine is what a code can at best preserve, and
    random IoM's agreement is a noisy monotone function of it. ``(α, β)`` is fixed, fitted on
    the untrained head (:func:`fit_distillation_map`), so the loss asks the learned projection
    for the same expected curve with less variance around it, for every pair of the batch,
    impostor tail included."""
    agree = expected_agreement(probs)
    target = float(alpha) + float(beta) * unit_cosine_matrix(embeddings)
    off = ops.logical_not(_eye(ops.shape(agree)[0]))
    return 100.0 * _masked_mean(ops.square(agree - target), off)


def fit_distillation_map(embeddings: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """``(α, β)``: least-squares line of expected agreement on cosine over every pair of a
    sample (the head's probabilities ``probs`` (n, m, q) of ``embeddings`` (n, d))."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    p = np.asarray(probs, np.float64).reshape(len(x), -1)
    iu = np.triu_indices(len(x), 1)
    cos, agree = (x @ x.T)[iu], (p @ p.T)[iu] / np.asarray(probs).shape[1]
    if len(cos) < 2 or np.ptp(cos) == 0:
        raise ConfigError("fit_distillation_map needs at least 3 embeddings that are not all parallel")
    beta, alpha = np.polyfit(cos, agree, 1)
    return float(alpha), float(beta)


def distillation_fit_quality(embeddings: np.ndarray, probs: np.ndarray, alpha: float,
                             beta: float) -> dict:
    """How well the line ``α + β·cos`` explains the expected agreement over every pair of a
    sample: ``{"alpha", "beta", "r2"}`` (R² of the line's residuals)."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    p = np.asarray(probs, np.float64).reshape(len(x), -1)
    iu = np.triu_indices(len(x), 1)
    cos, agree = (x @ x.T)[iu], (p @ p.T)[iu] / np.asarray(probs).shape[1]
    resid = agree - (alpha + beta * cos)
    var = float(np.var(agree))
    return {"alpha": float(alpha), "beta": float(beta),
            "r2": float(1.0 - np.var(resid) / var) if var > 0 else 0.0}


# --------------------------------------------------------------------------- #
# registry
# --------------------------------------------------------------------------- #
#: metric losses by name; each is callable as ``f(labels, codes, margin)`` (arc losses
#: with ``scale = 1``, Euclidean ones with non-squared distances)
METRIC_LOSSES: dict[str, Callable] = {
    "batch_hard_arc_triplet_loss": batch_hard_arc_triplet_loss,
    "batch_all_arc_triplet_loss": batch_all_arc_triplet_loss,
    "batch_hard_triplet": batch_hard_triplet_loss,
    "batch_hard_triplet_loss": batch_hard_triplet_loss,
    "batch_all_triplet_loss": batch_all_triplet_loss,
    "semihard_triplet_loss": semihard_triplet_loss,
    "triplet_semi": semihard_triplet_loss,
    "batch_hard_hamming_loss": batch_hard_hamming_loss,
    "batch_all_hamming_loss": batch_all_hamming_loss,
    "decidability_hamming_loss": decidability_hamming_loss,
    "circle_hamming_loss": circle_hamming_loss,
}

#: metric losses that take the (B, m, q) probabilities instead of the (B, m) soft codes
PROBABILITY_LOSSES = frozenset({"batch_hard_hamming_loss", "batch_all_hamming_loss",
                                "decidability_hamming_loss", "circle_hamming_loss"})


def get_metric_loss(name: str) -> Callable:
    """The metric loss registered as ``name``; :class:`ConfigError` naming the valid ones."""
    if name not in METRIC_LOSSES:
        raise ConfigError(f"unknown metric loss {name!r}; valid names: {sorted(METRIC_LOSSES)}")
    return METRIC_LOSSES[name]
