"""Code-size sweep: deep IoM against random IoM and raw cosine at many (m, q).

Behind ``scripts/sweep_iom.py``. For every size the deep IoM recipe of a stage-2 config is
trained with several seeds and random IoM is drawn under several keys; each is measured on
the config's verification set (the LFW protocol: 10-fold accuracy, EER and TAR@FAR on the
listed pairs) and, where the images carry identities, on **all** pairs of its images
(every same-identity pair genuine, every cross-identity pair impostor: 29.6 million
impostors on LFW, so TAR@FAR=1e-4 is measured rather than read off 3,000 pairs).

Two protocols:

* ``"train_set"``: the head is trained on the config's training data (CelebA) and tested on
  the verification set;
* ``"person_disjoint"``: for each fold of the verification set, the head is trained on the
  config's training data plus every identity of the verification set's images that does
  not appear in that fold, and scores only that fold's pairs; the ten folds' scores are
  pooled. No fold's people are ever seen by the hasher that scores it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from arcface.embed import l2_normalize
from arcface.errors import ConfigError
from arcface.metrics import evaluate_scores, far_key
from iom.evaluation.matching import hamming_similarity, one_hot_codes
from iom.hashing.random_iom import RandomIoM
from iom.keys import TemplateKey

FARS = (1e-3, 1e-4)
PROTOCOLS = ("train_set", "person_disjoint")
#: resolution of raw cosine scores in the all-pairs histograms
COSINE_BINS = 20000


@dataclass(frozen=True)
class Size:
    """A code size: m groups of q symbols."""

    m: int
    q: int

    @classmethod
    def parse(cls, text: str) -> "Size":
        try:
            m, q = (int(v) for v in str(text).lower().split("x"))
        except ValueError:
            raise ConfigError(f"code size {text!r} is not of the form MxQ (e.g. 512x8)") from None
        if m < 1 or not 2 <= q <= 256:
            raise ConfigError(f"code size {text!r}: need m >= 1 and 2 <= q <= 256")
        return cls(m, q)

    @property
    def bits(self) -> int:
        return self.m * max(1, (self.q - 1).bit_length())

    @property
    def template_bytes(self) -> int:
        """Bytes of the stored (bit-plane packed) template, :mod:`iom.search.packing`."""
        from iom.search.packing import packed_nbytes

        return int(packed_nbytes(self.m, self.q))

    def __str__(self) -> str:
        return f"{self.m}x{self.q}"


# --------------------------------------------------------------------------- metrics
def tar_at_far_from_counts(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """TAR at the lowest score bin whose FAR ``<= far``, from histograms over the same bins
    (bin ``k`` accepted when the threshold is at or below it; ties accepted together)."""
    gen = np.asarray(genuine, np.float64)
    imp = np.asarray(impostor, np.float64)
    far_at = np.cumsum(imp[::-1])[::-1] / max(imp.sum(), 1.0)     # FAR accepting bins >= k
    tar_at = np.cumsum(gen[::-1])[::-1] / max(gen.sum(), 1.0)
    ok = np.flatnonzero(far_at <= far)
    return float(tar_at[ok[0]]) if len(ok) else 0.0


def _pair_histograms(scores_fn, n: int, identities: np.ndarray, n_bins: int, chunk: int = 1024):
    """Genuine and impostor histograms of ``scores_fn(rows) -> (len(rows), n) int bins`` over
    every unordered pair of the ``n`` images."""
    ids = np.unique(identities, return_inverse=True)[1]
    gen = np.zeros(n_bins, np.int64)
    imp = np.zeros(n_bins, np.int64)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        bins = scores_fn(rows)
        upper = np.arange(n)[None, :] > rows[:, None]
        same = ids[rows][:, None] == ids[None, :]
        gen += np.bincount(bins[upper & same], minlength=n_bins)
        imp += np.bincount(bins[upper & ~same], minlength=n_bins)
    return gen, imp


def all_pairs_codes(codes: np.ndarray, q: int, identities: np.ndarray) -> dict:
    """TAR at :data:`FARS` over all pairs of coded images (histograms of agreeing groups)."""
    m = codes.shape[1]
    onehot = one_hot_codes(codes, q)
    gen, imp = _pair_histograms(lambda r: np.rint(onehot[r] @ onehot.T).astype(np.int64),
                                len(codes), identities, m + 1)
    return _all_pairs_summary(gen, imp)


def all_pairs_cosine(embeddings: np.ndarray, identities: np.ndarray) -> dict:
    """TAR at :data:`FARS` over all pairs, raw cosine binned to 2/:data:`COSINE_BINS`."""
    unit = l2_normalize(np.asarray(embeddings, np.float32))

    def bins(rows):
        return np.clip(((unit[rows] @ unit.T + 1.0) / 2.0 * COSINE_BINS).astype(np.int64), 0, COSINE_BINS)

    return _all_pairs_summary(*_pair_histograms(bins, len(unit), identities, COSINE_BINS + 1))


def _all_pairs_summary(gen, imp) -> dict:
    out = {f"all_pairs_tar@{far:g}": tar_at_far_from_counts(gen, imp, far) for far in FARS}
    out.update(all_pairs_genuine=int(gen.sum()), all_pairs_impostor=int(imp.sum()))
    return out


def pair_metrics(scores: np.ndarray, issame: np.ndarray, folds) -> dict:
    """The LFW protocol figures of one set of pair scores (:func:`arcface.metrics.evaluate_scores`)."""
    report = evaluate_scores(scores, issame, folds=folds, far_targets=FARS)
    return {"accuracy": report.accuracy * 100.0, "eer": float(report.eer),
            **{f"tar@{far:g}": float(report.tar_at_far[far_key(far)]["tar"]) for far in FARS}}


# --------------------------------------------------------------------------- other extractors
def _relu_projection(x: np.ndarray, out_dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(x.shape[1], out_dim)) / np.sqrt(x.shape[1])
    b = rng.normal(scale=0.1, size=out_dim)
    return np.maximum(x @ w + b, 0.0) * 1.5


#: stand-ins for other extractors, made from the real features by fixed (seeded) maps:
#: non-negative 128-d ReLU features (a large common mean, norms about 1.5), a big offset
#: and scale, and 512-d features of highly unequal variances
FEATURE_TRANSFORMS = {
    "none": lambda x: x,
    "relu128": lambda x: _relu_projection(x, 128, 11),
    "offset_scale": lambda x: 40.0 * (x + 0.8 * np.random.default_rng(12).normal(size=x.shape[1]) / np.sqrt(x.shape[1]) * 4),
    "anisotropic512": lambda x: (x @ np.random.default_rng(13).normal(size=(x.shape[1], 512)))
    * np.geomspace(10.0, 0.01, 512),
}


def transform_features(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` mapped by :data:`FEATURE_TRANSFORMS[name]` (float32)."""
    if name not in FEATURE_TRANSFORMS:
        raise ConfigError(f"feature transform {name!r} is not one of {sorted(FEATURE_TRANSFORMS)}")
    return np.asarray(FEATURE_TRANSFORMS[name](np.asarray(x, np.float64)), np.float32)


# --------------------------------------------------------------------------- runs
def _summary(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    return {"n": len(runs), **{f"{k}_mean": float(np.mean([r[k] for r in runs])) for k in keys},
            **{f"{k}_std": float(np.std([r[k] for r in runs])) for k in keys}, "runs": runs}


def size_config(cfg, size: Size, seed: int, tag: str):
    """The stage-2 config of one sweep run."""
    return cfg.replace(m=size.m, q=size.q, seed=int(seed),
                       sub_name=f"sweep/{cfg['sub_name']}/{tag}{size}_seed{seed}", embd_shape=None)


def lfw_person_disjoint_training(x_base, y_base, data, fold, mirrored=None):
    """Training set ``(x, y, mirrored)`` of one person-disjoint rotation: the base set plus the
    verification images of every identity that appears in no pair of ``fold`` (their labels
    offset past the base set's)."""
    test_people = set(data.identities[data.left[data.folds == fold]]) | \
        set(data.identities[data.right[data.folds == fold]])
    keep = np.array([i not in test_people for i in data.identities])
    labels = np.unique(data.identities[keep], return_inverse=True)[1]
    base_mirrored = np.zeros(len(x_base), bool) if mirrored is None else np.asarray(mirrored, bool)
    return (np.concatenate([x_base, data.embeddings[keep]]),
            np.concatenate([y_base, labels + int(np.max(y_base)) + 1]),
            np.concatenate([base_mirrored, np.zeros(int(keep.sum()), bool)]))


class RunCache:
    """Finished deep-IoM runs of a sweep on disk (one JSON each), keyed by everything that
    makes the run: the config's values, the size, seed, protocol, feature transform and data,
    so an interrupted or extended sweep re-trains only what it has not measured yet."""

    def __init__(self, folder: str | None):
        self.folder = folder

    def _path(self, key: dict) -> str:
        import hashlib

        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return os.path.join(self.folder, f"{key['size']}_seed{key['seed']}_{digest}.json")

    def get(self, key: dict) -> dict | None:
        path = self.folder and self._path(key)
        if not path or not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def put(self, key: dict, run: dict) -> None:
        if self.folder:
            from arcface.data.pairs import atomic_write

            os.makedirs(self.folder, exist_ok=True)
            atomic_write(self._path(key), json.dumps(run).encode("utf-8"))


def run_sweep(cfg, sizes: list[Size], seeds: list[int], n_keys: int, protocol: str = "train_set",
              checkpoint_root: str = "checkpoints", log=print, transform: str = "none",
              cache_dir: str | None = None, on_size=None) -> dict:
    """Every figure of the sweep (JSON-ready); ``transform`` maps training and test features
    alike (:data:`FEATURE_TRANSFORMS`), to stand in for another extractor; finished deep-IoM
    runs are kept in ``cache_dir`` (:class:`RunCache`) and reused; ``on_size(result)`` is
    called with the result so far after each size."""
    from dataclasses import replace
    from arcface.verification import find_verification_sets
    from iom.evaluation.report import load_pair_data
    from iom.features import evaluation_source, training_set
    from iom.hashing.train import train_hasher

    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is not one of {list(PROTOCOLS)}")
    specs = find_verification_sets(cfg["test_dataset"])
    data = load_pair_data(specs[0], evaluation_source(cfg))
    if protocol == "person_disjoint" and (data.identities is None or data.folds is None):
        raise ConfigError(f"{data.name}: the person-disjoint protocol needs a pairs folder with folds")
    base = training_set(cfg)
    y_base, mirrored = base.labels, base.mirrored
    x_base = transform_features(base.x, transform)
    data = replace(data, embeddings=transform_features(data.embeddings, transform))
    emb = data.embeddings
    unit = l2_normalize(emb)
    raw = pair_metrics(np.sum(unit[data.left] * unit[data.right], axis=1), data.issame, data.folds)
    with_all_pairs = data.identities is not None and protocol == "train_set"
    if with_all_pairs:
        raw.update(all_pairs_cosine(emb, data.identities))
    log(f"[sweep] raw cosine on {data.name}: {raw}")
    out = {"config": cfg.source, "dataset": data.name, "protocol": protocol, "transform": transform,
           "dimension": int(emb.shape[1]), "seeds": list(seeds),
           "n_keys": n_keys, "raw": raw, "sizes": {}}
    cache = RunCache(cache_dir)
    for size in sizes:
        deep_runs = []
        for seed in seeds:
            key = {"config": {k: cfg[k] for k in sorted(cfg.keys())}, "size": str(size), "seed": int(seed),
                   "protocol": protocol, "transform": transform, "data": data.name,
                   "n_train": int(len(x_base)), "n_test": int(len(emb))}
            run = cache.get(key)
            if run is not None:
                log(f"[sweep] deep IoM {size} seed {seed}: cached")
                deep_runs.append(run)
                continue
            if protocol == "train_set":
                hasher = train_hasher(size_config(cfg, size, seed, ""), x_base, y_base,
                                      checkpoint_root=checkpoint_root, progress=False, mirrored=mirrored)[0]
                codes = hasher.codes(emb)
                scores = hamming_similarity(codes[data.left], codes[data.right])
                shipped = [hasher.spec.get("training_report", {}).get("shipped")]
            else:
                scores = np.empty(len(data.issame))
                shipped = []
                for fold in np.unique(data.folds):
                    x, y, m = lfw_person_disjoint_training(x_base, y_base, data, fold, mirrored)
                    hasher = train_hasher(size_config(cfg, size, seed, f"fold{fold}_"), x, y,
                                          checkpoint_root=checkpoint_root, progress=False, mirrored=m)[0]
                    shipped.append(hasher.spec.get("training_report", {}).get("shipped"))
                    codes = hasher.codes(emb)
                    sel = data.folds == fold
                    scores[sel] = hamming_similarity(codes[data.left[sel]], codes[data.right[sel]])
            run = {"seed": int(seed), "shipped": shipped, **pair_metrics(scores, data.issame, data.folds)}
            if with_all_pairs:
                run.update(all_pairs_codes(codes, size.q, data.identities))
            log(f"[sweep] deep IoM {size} seed {seed}: {run}")
            cache.put(key, run)
            deep_runs.append(run)
        random_runs = []
        baseline = RandomIoM(size.m, size.q, emb.shape[1])
        for k in range(n_keys):
            codes = baseline.encode(emb, TemplateKey.from_seed(f"iomface-sweep-random-{k}"))
            run = {"key": k, **pair_metrics(hamming_similarity(codes[data.left], codes[data.right]),
                                             data.issame, data.folds)}
            if with_all_pairs:
                run.update(all_pairs_codes(codes, size.q, data.identities))
            random_runs.append(run)
        out["sizes"][str(size)] = {"m": size.m, "q": size.q, "bits": size.bits,
                                   "template_bytes": size.template_bytes,
                                   "deep": _summary(deep_runs), "random": _summary(random_runs)}
        log(f"[sweep] {size}: deep {out['sizes'][str(size)]['deep']['accuracy_mean']:.2f} "
            f"random {out['sizes'][str(size)]['random']['accuracy_mean']:.2f}")
        if on_size is not None:
            on_size(out)
    return out


# --------------------------------------------------------------------------- reporting
def _pm(summary: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    return f"{summary[key + '_mean'] * scale:.{digits}f} ± {summary[key + '_std'] * scale:.{digits}f}"


def verdict(entry: dict, key: str) -> bool:
    """Deep IoM ahead of random IoM by more than the larger of their spreads."""
    d, r = entry["deep"], entry["random"]
    return d[f"{key}_mean"] - r[f"{key}_mean"] > max(d[f"{key}_std"], r[f"{key}_std"])


def markdown_table(result: dict) -> str:
    """The sweep table (one row per size and method, raw first)."""
    all_pairs = "all_pairs_tar@0.001" in result["raw"]
    head = ["size (m×q)", "bits", "template", "method", "accuracy %", "EER", "TAR@FAR=1e-3"]
    if all_pairs:
        head += ["all pairs TAR@1e-3", "all pairs TAR@1e-4"]
    head += ["deep > random + spread (acc / TAR@1e-3)"]
    raw = result["raw"]
    rows = [["—", "—", "—", "raw cosine", f"{raw['accuracy']:.2f}", f"{raw['eer']:.4f}",
             f"{raw['tar@0.001']:.3f}"]
            + ([f"{raw['all_pairs_tar@0.001']:.3f}", f"{raw['all_pairs_tar@0.0001']:.3f}"] if all_pairs else [])
            + [""]]
    for size, entry in result["sizes"].items():
        tar_key = "all_pairs_tar@0.001" if all_pairs else "tar@0.001"
        mark = (f"{'yes' if verdict(entry, 'accuracy') else 'no'} / "
                f"{'yes' if verdict(entry, tar_key) else 'no'}")
        for method, label in (("deep", f"deep IoM ({entry['deep']['n']} seeds)"),
                              ("random", f"random IoM ({entry['random']['n']} keys)")):
            s = entry[method]
            row = [size.replace("x", "×"), str(entry["bits"]), f"{entry['template_bytes']} B", label,
                   _pm(s, "accuracy", digits=2), _pm(s, "eer", digits=4), _pm(s, "tar@0.001")]
            if all_pairs:
                row += [_pm(s, "all_pairs_tar@0.001"), _pm(s, "all_pairs_tar@0.0001")]
            row.append(mark if method == "deep" else "")
            rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def save_plot(result: dict, path: str) -> str:
    """Accuracy and TAR@FAR=1e-3 against code bits: deep and random (mean ± std), raw line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_pairs = "all_pairs_tar@0.001" in result["raw"]
    tar_key = "all_pairs_tar@0.001" if all_pairs else "tar@0.001"
    entries = sorted(result["sizes"].items(), key=lambda kv: kv[1]["bits"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "accuracy", "LFW accuracy (%)"),
                           (axes[1], tar_key, "TAR @ FAR=1e-3" + (" (all LFW pairs)" if all_pairs else ""))):
        for method, style in (("deep", "o-"), ("random", "s--")):
            bits = [e["bits"] for _, e in entries]
            mean = [e[method][f"{key}_mean"] for _, e in entries]
            std = [e[method][f"{key}_std"] for _, e in entries]
            ax.errorbar(bits, mean, yerr=std, fmt=style, capsize=3, label=f"{method} IoM")
            for (name, e), b, v in zip(entries, bits, mean):
                if method == "deep":
                    ax.annotate(name, (b, v), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.axhline(result["raw"][key], color="k", lw=1, ls=":", label="raw cosine")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("code bits (m · log2 q)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"{result['dataset']}, protocol {result['protocol']}, features {result['transform']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replace_block(document: str, marker: str, body: str) -> str:
    """``document`` with the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``
    replaced by ``body`` (the block appended at the end when absent)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in document and end in document:
        head, rest = document.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return document.rstrip() + "\n\n" + block + "\n"


def write_outputs(result: dict, json_path: str | None, plot_path: str | None,
                  results_md: str | None, command: str) -> None:
    """The JSON, the plot and the RESULTS.md block of a sweep."""
    from arcface.data.pairs import atomic_write

    if json_path:
        atomic_write(json_path, json.dumps(result, indent=1).encode("utf-8"))
    if plot_path:
        save_plot(result, plot_path)
    if results_md:
        body = (f"Made by `{command}` (config `{result['config']}`, data `{result['dataset']}`, "
                f"protocol `{result['protocol']}`, features `{result['transform']}` ({result['dimension']}-d), seeds {result['seeds']}, {result['n_keys']} random-IoM keys).\n\n"
                + markdown_table(result)
                + (f"\n\n![sweep]({os.path.relpath(plot_path, os.path.dirname(results_md))})" if plot_path else ""))
        text = open(results_md, encoding="utf-8").read() if os.path.isfile(results_md) else ""
        config = os.path.splitext(os.path.basename(str(result["config"])))[0]
        marker = f"sweep-{config}-{result['protocol']}" + ("" if result["transform"] == "none" else f"-{result['transform']}")
        atomic_write(results_md, replace_block(text, marker, body).encode("utf-8"))


def extractor_table(results: dict, key: str = "all_pairs_tar@0.001", digits: int = 3) -> str:
    """One column pair per extractor (what ships after the guard, and random IoM) and one row
    per code size, for sweeps of several extractors (``{name: sweep result}``); a cell is
    ``mean ± std`` of ``key`` over seeds (keys for random IoM), ``*`` marks shipped ahead of
    random by more than the larger spread, and ``(k/n)`` counts the seeds whose learned head
    shipped (the others shipped a random projection, :mod:`iom.hashing.guard`)."""
    sizes: list[str] = []
    for result in results.values():
        sizes += [s for s in result["sizes"] if s not in sizes]
    head = ["size (m×q)"]
    for name, result in results.items():
        head += [f"{name} ({result['dimension']}-d): shipped", "random IoM"]
    raw = ["raw cosine"]
    for result in results.values():
        raw += [f"{result['raw'][key]:.{digits}f}" if key in result["raw"] else "—", ""]
    rows = [raw]
    for size in sizes:
        row = [size.replace("x", "×")]
        for result in results.values():
            entry = result["sizes"].get(size)
            if entry is None or f"{key}_mean" not in entry["deep"]:
                row += ["—", "—"]
                continue
            d, r = entry["deep"], entry["random"]
            learned = sum(1 for run in d["runs"] if (run.get("shipped") or [None])[0] in ("learned", None))
            mark = "*" if verdict(entry, key) else ""
            row += [f"{d[key + '_mean']:.{digits}f} ± {d[key + '_std']:.{digits}f}{mark} ({learned}/{d['n']})",
                    f"{r[key + '_mean']:.{digits}f} ± {r[key + '_std']:.{digits}f}"]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
