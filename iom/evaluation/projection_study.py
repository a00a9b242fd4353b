"""Training-free IoM projections compared: Gaussian or group-orthogonal, on the features as
given or centred by the training mean (``input_norm: auto`` decides which in training).

Behind ``scripts/projection_study.py``. Random IoM (Jin et al.) draws a Gaussian projection per
key; iomface's head starts from (and its guard falls back to) a projection of the normalised
input. This measures, without any training, what each choice does on a config's test set: the
LFW protocol and all pairs of its images, mean ± std over key draws.
"""

from __future__ import annotations

import numpy as np

from iom.evaluation.sweep import _summary, all_pairs_codes, all_pairs_cosine, pair_metrics

VARIANTS = (("gaussian", False), ("gaussian", True), ("orthogonal", False), ("orthogonal", True))


def projection(kind: str, dim: int, m: int, q: int, draw: int) -> np.ndarray:
    """The (dim, m·q) projection of one draw (Gaussian: random IoM's, from its public key)."""
    from iom.hashing.layers import group_orthogonal
    from iom.hashing.random_iom import RandomIoM
    from iom.keys import TemplateKey

    if kind == "gaussian":
        return RandomIoM(m, q, dim).projection(TemplateKey.from_seed(f"iomface-sweep-random-{draw}"))
    return group_orthogonal(dim, m, q, seed=draw)


def study(cfg, m: int, q: int, draws: int = 5, log=print) -> dict:
    """Every variant of :data:`VARIANTS` at (m, q) on the config's test set."""
    from arcface.embed import l2_normalize
    from arcface.verification import find_verification_sets
    from iom.evaluation.matching import hamming_similarity
    from iom.evaluation.report import load_pair_data
    from iom.features import evaluation_source, training_embeddings
    from iom.hashing.layers import auto_centres

    data = load_pair_data(find_verification_sets(cfg["test_dataset"])[0], evaluation_source(cfg))
    x_train, _ = training_embeddings(cfg)
    train_unit = l2_normalize(x_train)
    mean = train_unit.mean(axis=0)
    centred_auto, stats = auto_centres(x_train)
    unit = l2_normalize(data.embeddings)
    raw = pair_metrics(np.sum(unit[data.left] * unit[data.right], axis=1), data.issame, data.folds)
    if data.identities is not None:
        raw.update(all_pairs_cosine(unit, data.identities))
    out = {"config": cfg.source, "dataset": data.name, "m": m, "q": q, "draws": draws, "raw": raw,
           "auto_centres": bool(centred_auto), **stats, "variants": {}}
    for kind, centred in VARIANTS:
        x = l2_normalize(unit - mean) if centred else unit
        runs = []
        for draw in range(draws):
            codes = (x @ projection(kind, x.shape[1], m, q, draw)).reshape(len(x), m, q).argmax(axis=2)
            run = pair_metrics(hamming_similarity(codes[data.left], codes[data.right]), data.issame, data.folds)
            if data.identities is not None:
                run.update(all_pairs_codes(codes, q, data.identities))
            runs.append(run)
        name = f"{kind}{', centred' if centred else ''}"
        out["variants"][name] = _summary(runs)
        log(f"[projections] {name}: {out['variants'][name]['all_pairs_tar@0.001_mean']:.4f}")
    return out


def markdown_rows(name: str, result: dict) -> list[str]:
    """Table rows (one per variant) of one extractor's study: accuracy and all-pairs TARs."""
    rows = []
    for variant, s in result["variants"].items():
        auto = ("centred" in variant) == result["auto_centres"]
        rows.append(f"| {name} | {variant}{' (auto)' if auto and 'orthogonal' in variant else ''} | "
                    f"{s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f} | "
                    f"{s['all_pairs_tar@0.001_mean']:.3f} ± {s['all_pairs_tar@0.001_std']:.3f} | "
                    f"{s['all_pairs_tar@0.0001_mean']:.3f} ± {s['all_pairs_tar@0.0001_std']:.3f} |")
    return rows
