"""End to end against head-only stage 2: the same config trained both ways, over seeds.

Behind ``scripts/compare_end_to_end.py``. For each seed the config is trained end to end
(:func:`iom.hashing.end_to_end.train_end_to_end`, with ``if_not_better: learned`` so that the
joint model is kept whatever the guard says); its warm-up is the head-only model of the same
seed (same batches, same steps). Both are measured on the config's verification set (the
LFW protocol and all pairs of its images, :mod:`iom.evaluation.sweep`), the joint model on
embeddings of its own backbone, with random IoM (several keys) and raw cosine of the frozen
model beside them. The training data is CelebA: person-disjoint from LFW.
"""

from __future__ import annotations

import os

import numpy as np

from iom.evaluation.sweep import _summary, all_pairs_codes, all_pairs_cosine, pair_metrics


def _measure(codes, q, data) -> dict:
    from iom.evaluation.matching import hamming_similarity

    out = pair_metrics(hamming_similarity(codes[data.left], codes[data.right]), data.issame, data.folds)
    if data.identities is not None:
        out.update(all_pairs_codes(codes, q, data.identities))
    return out


def compare_end_to_end(cfg, seeds, n_keys: int = 5, checkpoint_root: str = "checkpoints",
                       log=print) -> dict:
    """Every figure of the comparison (JSON-ready)."""
    from arcface.embed import l2_normalize
    from arcface.verification import find_verification_sets
    from iom.evaluation.report import load_pair_data
    from iom.features import evaluation_source
    from iom.hashing.end_to_end import train_end_to_end
    from iom.hashing.hasher import DeepIoMHasher
    from iom.hashing.random_iom import RandomIoM
    from iom.keys import TemplateKey

    spec = find_verification_sets(cfg["test_dataset"])[0]
    frozen = load_pair_data(spec, evaluation_source(cfg))
    unit = l2_normalize(frozen.embeddings)
    raw = pair_metrics(np.sum(unit[frozen.left] * unit[frozen.right], axis=1), frozen.issame, frozen.folds)
    if frozen.identities is not None:
        raw.update(all_pairs_cosine(frozen.embeddings, frozen.identities))
    q = cfg["q"]
    baseline = RandomIoM(cfg["m"], q, unit.shape[1])
    random_runs = [{"key": k, **_measure(baseline.encode(unit, TemplateKey.from_seed(f"iomface-sweep-random-{k}")),
                                          q, frozen)} for k in range(n_keys)]
    head_runs, joint_runs, reports = [], [], []
    for seed in seeds:
        run_cfg = cfg.replace(seed=int(seed), if_not_better="learned",
                              sub_name=f"{cfg['sub_name']}_seed{seed}")
        hasher, _ = train_end_to_end(run_cfg, checkpoint_root=checkpoint_root, progress=False)
        folder = os.path.join(checkpoint_root, run_cfg["sub_name"])
        joint = DeepIoMHasher.load(folder)
        own = load_pair_data(spec, evaluation_source(run_cfg, joint))
        head = DeepIoMHasher.load(os.path.join(folder, "warmup"))
        joint_runs.append({"seed": int(seed), **_measure(joint.codes(own.embeddings), q, own)})
        head_runs.append({"seed": int(seed), **_measure(head.codes(frozen.embeddings), q, frozen)})
        reports.append(joint.spec["training_report"]["end_to_end"])
        log(f"[joint study] seed {seed}: head-only {head_runs[-1]}; end to end {joint_runs[-1]}")
    return {"config": cfg.source, "dataset": frozen.name, "m": cfg["m"], "q": q, "seeds": list(map(int, seeds)),
            "train_backbone": cfg["train_backbone"], "warmup_steps": cfg["warmup_steps"],
            "end_to_end_steps": cfg["end_to_end_steps"], "raw": raw, "random": _summary(random_runs),
            "head_only": _summary(head_runs), "end_to_end": _summary(joint_runs), "validation": reports}


def markdown_table(result: dict) -> str:
    """One row per method: accuracy, EER, all-pairs TAR at 1e-3 and 1e-4 (mean ± std)."""
    all_pairs = "all_pairs_tar@0.001" in result["raw"]
    head = ["method", "runs", "accuracy %", "EER"] + (["all pairs TAR@1e-3", "all pairs TAR@1e-4"] if all_pairs else
                                                      ["TAR@1e-3"])
    raw = result["raw"]
    rows = [["raw cosine", "—", f"{raw['accuracy']:.2f}", f"{raw['eer']:.4f}"]
            + ([f"{raw['all_pairs_tar@0.001']:.3f}", f"{raw['all_pairs_tar@0.0001']:.3f}"] if all_pairs
               else [f"{raw['tar@0.001']:.3f}"])]

    def pm(s, key, digits=3, scale=1.0):
        return f"{s[key + '_mean'] * scale:.{digits}f} ± {s[key + '_std'] * scale:.{digits}f}"

    for key, label in (("random", "random IoM (keys)"), ("head_only", "head only (seeds)"),
                       ("end_to_end", f"end to end, {result['train_backbone']} (seeds)")):
        s = result[key]
        rows.append([label, str(s["n"]), pm(s, "accuracy", 2), pm(s, "eer", 4)]
                    + ([pm(s, "all_pairs_tar@0.001"), pm(s, "all_pairs_tar@0.0001")] if all_pairs
                       else [pm(s, "tar@0.001")]))
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])
