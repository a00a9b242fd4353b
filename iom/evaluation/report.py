"""The stage-2 evaluation behind ``scripts/test_twostage_iom.py``.

For every verification set: raw-embedding cosine, deep IoM and random IoM at the same
(m, q), each under the key scenarios of :mod:`iom.evaluation.cancelability`; renewability
and unlinkability from the cross-key scores; identification on an identity folder; a
calibration (threshold at the target FAR, histogram of impostor similarities for 1:N
thresholds, see :mod:`iom.service.calibration`). Everything lands in one JSON-ready dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from arcface.embed import l2_normalize
from arcface.metrics import evaluate_scores, format_table
from iom.evaluation.cancelability import SCENARIOS, cancelability_report, run_scenarios
from iom.hashing.random_iom import RandomIoM
from iom.keys import TemplateKey

#: the public key under which random IoM plays the "training key" role
RANDOM_IOM_KEY = TemplateKey.from_seed("iomface-random-iom")


@dataclass
class PairData:
    """A verification protocol on embeddings: unique images, pair indices, labels, folds, and
    the identity of each image when known (``identities``, else ``None``)."""

    name: str
    embeddings: np.ndarray
    left: np.ndarray
    right: np.ndarray
    issame: np.ndarray
    folds: np.ndarray | None
    identities: np.ndarray | None = None


def pair_identities(items, left: np.ndarray, right: np.ndarray, issame: np.ndarray) -> np.ndarray | None:
    """The identity of each unique image of a pair set: its folder name (pairs folders keep one
    folder per person), or ``None`` for encoded images (.bin) or when the folder names
    contradict a pair's label."""
    if not items or not all(isinstance(x, (str, os.PathLike)) for x in items):
        return None
    ids = np.array([os.path.basename(os.path.dirname(os.path.abspath(x))) for x in items])
    if len(issame) and not np.array_equal(ids[left] == ids[right], np.asarray(issame, bool)):
        return None
    return ids


def load_pair_data(spec: str, extractor) -> PairData:
    """Embed (with caching) the images of a verification set (.bin or pairs folder);
    ``extractor`` is a :class:`~iom.features.FeatureExtractor` or precomputed embeddings."""
    from arcface.data.verification_sets import load_verification_set
    from arcface.verification import unique_items

    pairset = load_verification_set(spec)
    items, left, right = unique_items(pairset)
    data = extractor.embed_items(items, tag=f"pairs_{pairset.name}")
    issame = np.asarray(pairset.issame, bool)
    return PairData(pairset.name, data.embeddings, left, right, issame, pairset.folds,
                    pair_identities(items, left, right, issame))


def _summary(reports) -> dict:
    accs = np.array([r.accuracy for r in reports])
    return {"accuracy_mean": float(accs.mean()), "accuracy_std_over_keys": float(accs.std()),
            "accuracy_per_draw": accs.tolist(), "eer_mean": float(np.mean([r.eer for r in reports])),
            "auc_mean": float(np.mean([r.auc for r in reports])),
            "report": reports[0].to_dict()}


def evaluate_hasher_on_pairs(hasher, data: PairData, name: str, n_draws: int, seed: int,
                             training_key=None, scenarios=SCENARIOS) -> dict:
    """Reports of one hasher under each key scenario, plus its cancelability figures."""
    scores = run_scenarios(hasher, data.embeddings, data.left, data.right, data.issame,
                           n_draws=n_draws, seed=seed, training_key=training_key, scenarios=scenarios)
    out: dict = {"m": hasher.m, "q": hasher.q, "scenarios": {}}
    for scenario, result in scores.items():
        if scenario == "cross":
            continue
        reports = [evaluate_scores(s, data.issame, folds=data.folds, name=f"{name} [{scenario}]",
                                   score_name="hamming") for s in result.draws]
        out["scenarios"][scenario] = _summary(reports)
        out["scenarios"][scenario]["_reports"] = reports
    if "cross" in scores:
        out["cancelability"] = cancelability_report(scores, data.issame, hasher.q)
    return out


def evaluate_pairs(data: PairData, hashers: dict, n_draws: int, seed: int = 0) -> dict:
    """Raw cosine plus every hasher of ``hashers`` (name → (hasher, training key))."""
    unit = l2_normalize(data.embeddings)  # cosine whatever the extractor's scale
    raw = evaluate_scores(np.sum(unit[data.left] * unit[data.right], axis=1),
                          data.issame, folds=data.folds, name="raw", score_name="cosine")
    out = {"raw": {"report": raw.to_dict(), "_reports": [raw]}}
    for name, (hasher, training_key) in hashers.items():
        out[name] = evaluate_hasher_on_pairs(hasher, data, name, n_draws, seed, training_key)
    return out


def random_baseline(m: int, q: int, dim: int) -> tuple[RandomIoM, TemplateKey]:
    """Random IoM at (m, q) with its public reference key."""
    return RandomIoM(m, q, dim), RANDOM_IOM_KEY


def calibration(data: PairData, hasher, far: float) -> dict:
    """The calibration file of ``hasher`` (training key; scores are key-invariant) on ``data``.

    ``threshold``: the lowest Hamming similarity accepted with a false-accept rate ``<= far``
    on the listed impostor pairs (``None`` when no genuine score clears every allowed
    impostor). ``impostor_similarities``: the histogram of agreeing groups (k = 0..m) over
    every cross-identity pair of the images (:func:`iom.service.calibration.impostor_histogram`),
    or over the listed impostor pairs when the images have no identities; it sets the 1:N
    thresholds (:func:`iom.service.calibration.identification_threshold`)."""
    from arcface.metrics import far_resolvable, tar_at_far
    from iom.evaluation.matching import hamming_similarity
    from iom.service.calibration import impostor_histogram

    codes = hasher.encode(data.embeddings, None)
    scores = hamming_similarity(codes[data.left], codes[data.right])
    tar, threshold = tar_at_far(scores, data.issame, far)
    n_impostor = int((~data.issame).sum())
    if data.identities is not None:
        counts, n_images = impostor_histogram(codes, hasher.q, data.identities)
        subset = "the" if n_images == len(codes) else f"a random {n_images} of the"
        source = (f"all cross-identity pairs of {subset} {len(codes)} images "
                  f"({len(np.unique(data.identities))} identities) of {data.name}")
    else:
        impostor = ~data.issame
        agree = np.count_nonzero(codes[data.left[impostor]] == codes[data.right[impostor]], axis=1)
        counts = np.bincount(agree, minlength=hasher.m + 1)
        source = f"the {n_impostor} listed impostor pairs of {data.name} (no identities)"
    return {"far": far, "threshold": float(threshold) if np.isfinite(threshold) else None,
            "tar": float(tar), "dataset": data.name, "n_impostor": n_impostor,
            "far_resolvable": bool(far_resolvable(n_impostor, far)), "m": hasher.m, "q": hasher.q,
            "impostor_similarities": [int(c) for c in counts],
            "n_impostor_similarities": int(counts.sum()), "impostor_similarities_source": source}


def format_pair_results(name: str, results: dict) -> str:
    """The seed's table (one column per method and scenario) and the cancelability lines."""
    columns = [results["raw"]["_reports"][0]]
    lines = []
    for method, res in results.items():
        if method == "raw":
            continue
        for scenario, summary in res["scenarios"].items():
            columns.append(summary["_reports"][0])
            if len(summary["_reports"]) > 1:
                lines.append(f"{method} [{scenario}]: accuracy {summary['accuracy_mean']:.4f} mean over "
                             f"{len(summary['_reports'])} key draws (± {summary['accuracy_std_over_keys']:.4f})")
        if "cancelability" in res:
            c = res["cancelability"]
            lines.append(
                f"{method}: mated cross-key mean {c.mated_cross_mean:.4f}, non-mated cross-key "
                f"{c.nonmated_cross_mean:.4f}, impostor (one key) {c.impostor_mean:.4f}, genuine "
                f"{c.genuine_mean:.4f}, 1/q {c.chance:.4f}; d' mated-vs-impostor "
                f"{c.d_prime_mated_vs_impostor:.3f}; D<->sys {c.unlinkability.d_sys:.4f}")
    return f"## {name}\n{format_table(columns)}\n" + "\n".join(lines)


def to_json(results: dict) -> dict:
    """``results`` without report objects (``_reports``), cancelability as dicts."""
    if isinstance(results, dict):
        out = {}
        for k, v in results.items():
            if k == "_reports":
                continue
            out[k] = v.to_dict() if hasattr(v, "to_dict") else to_json(v)
        return out
    if isinstance(results, (list, tuple)):
        return [to_json(v) for v in results]
    return results


def save_pair_plots(name: str, results: dict, plot_dir: str) -> list[str]:
    """ROC/DET of every method (first draw of each scenario) and unlinkability plots."""
    from arcface.plots import save_roc_det
    from iom.evaluation.unlinkability import save_unlinkability_plot

    reports = [results["raw"]["_reports"][0]]
    paths = []
    for method, res in results.items():
        if method == "raw":
            continue
        reports += [s["_reports"][0] for s in res["scenarios"].values()]
        if "cancelability" in res:
            path = os.path.join(plot_dir, f"{name}_{method}_unlinkability.png")
            paths.append(save_unlinkability_plot(res["cancelability"].unlinkability, path,
                                                 title=f"{method} on {name}"))
    paths += save_roc_det(reports, os.path.join(plot_dir, name))
    return paths


def evaluate_identification(embeddings: np.ndarray, labels: np.ndarray, hashers: dict,
                            gallery_per_class: int = 1, far: float = 1e-2) -> dict:
    """Closed- and open-set identification: raw cosine and each hasher (one application
    key for every template, as in open-set IoM identification)."""
    from iom.evaluation.identification import identification_report, split_gallery_probes
    from iom.evaluation.matching import hamming_similarity_matrix

    gallery, mated, nonmated = split_gallery_probes(labels, gallery_per_class)
    probes = np.concatenate([mated, nonmated])
    g_labels, p_labels = labels[gallery], labels[probes]
    unit = l2_normalize(embeddings)
    out = {"raw": identification_report(unit[probes] @ unit[gallery].T, g_labels, p_labels, far)}
    for name, (hasher, app_key) in hashers.items():
        codes = hasher.encode(embeddings, app_key)
        sim = hamming_similarity_matrix(codes[probes], codes[gallery], hasher.q)
        out[name] = identification_report(sim, g_labels, p_labels, far)
    return out


def evaluate_stage2(cfg, hasher, json_path: str | None = None, plot_dir: str | None = None,
                    with_random: bool = True, cancelability_only: bool = False,
                    n_draws: int | None = None, calibration_path: str | None = None,
                    hasher_folder: str | None = None) -> dict:
    """Everything ``scripts/test_twostage_iom.py`` reports, printed and returned (and
    written to ``json_path`` / ``plot_dir`` / ``calibration_path`` when given; each file
    written is printed). ``hasher_folder``, where the hasher was loaded from, goes into the
    results as ``hasher``."""

    from iom.evaluation.identification import format_identification_table
    from arcface.verification import find_verification_sets
    from iom.features import evaluation_source

    extractor = evaluation_source(cfg, hasher)
    n_draws = n_draws or cfg["n_fresh_keys"]
    hashers = {"deep_iom": (hasher, None)}
    if with_random:
        hashers["random_iom"] = random_baseline(hasher.m, hasher.q, hasher.dim)
    out: dict = {"config": cfg.source, "m": hasher.m, "q": hasher.q, "key_mode": hasher.key_mode,
                 "n_key_draws": n_draws, "verification": {}, "identification": {}}
    if hasher_folder:
        out["hasher"] = os.path.abspath(hasher_folder)
    training = hasher.spec.get("training_report") or {}
    out["training_guard"] = {k: training.get(k) for k in ("learned_wins", "shipped")}
    if training.get("guard"):
        g = training["guard"]
        out["training_guard"].update(metric=g.get("metric"), learned=g.get("learned_merit"),
                                     initial=g.get("initial_merit"), random_mean=g.get("random", {}).get("mean"),
                                     random_std=g.get("random", {}).get("std"))
    if plot_dir:
        out["plots"] = []
    for spec in find_verification_sets(cfg["test_dataset"]):
        data = load_pair_data(spec, extractor)
        if cancelability_only:
            results = {name: evaluate_hasher_on_pairs(h, data, name, n_draws, cfg["seed"], k)
                       for name, (h, k) in hashers.items()}
            results = {"raw": evaluate_pairs(data, {}, 1)["raw"], **results}
        else:
            results = evaluate_pairs(data, hashers, n_draws, cfg["seed"])
        print(format_pair_results(data.name, results), flush=True)
        if plot_dir:
            for path in save_pair_plots(data.name, results, plot_dir):
                print(f"plot -> {path}", flush=True)
                out["plots"].append(path)
        out["verification"][data.name] = to_json(results)
    if cfg["identification_dataset"] and not cancelability_only:
        path = cfg["identification_dataset"]
        if path.endswith(".npz"):
            from arcface.embeddings_io import load_embeddings
            folder = load_embeddings(path)
        else:
            folder = extractor.embed_folder(path)
        if folder.labels is None:
            from arcface.errors import DataFormatError
            raise DataFormatError(f"{cfg['identification_dataset']}: identification needs one "
                                  "sub-folder per identity")
        reports = evaluate_identification(folder.embeddings, folder.labels, hashers,
                                          cfg["gallery_per_class"])
        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        print(f"## identification on {name}\n" + format_identification_table(list(reports.values()),
                                                                               list(reports)))
        out["identification"][name] = {k: r.to_dict() for k, r in reports.items()}
    if calibration_path:
        from iom.evaluation.calibrate import calibrate_config, format_operating_points

        cal = out["calibration"] = calibrate_config(cfg, hasher, check=not cancelability_only)
        _write_json(calibration_path, cal)
        print(format_operating_points(cal, cal.get("check")))
        print(f"calibration -> {calibration_path}")
    if json_path:
        _write_json(json_path, out)
        print(f"all figures -> {json_path}")
    return out


def _write_json(path: str, obj) -> None:
    from arcface.data.pairs import atomic_write

    atomic_write(path, json.dumps(obj, indent=1, default=float).encode("utf-8"))
