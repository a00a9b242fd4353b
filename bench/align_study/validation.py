"""The re-warp approximation checked on the 40 raw LFW photos (see :func:`validate_rewarp`)."""

from __future__ import annotations

import os

import numpy as np

from arcface.align import read_manifest, warp_face
from arcface.data.images import decode_image
from arcface.metrics import cosine_similarity
from bench.align_study.geometry import (HALF_PIXEL, compose, invert, jpeg, lost_fraction, parse_landmarks,
                                        rewarp_matrix, similarity, warp)


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


def validate_on_raw_photos(embed, lfw: str, raw_photos: str, raw_crops: str) -> tuple[list[dict], dict]:
    """:func:`validate_rewarp` with the landmarks of the shipped crops and of a second MTCNN run
    (``raw/lfw_112``), and the two MTCNN runs compared (how much landmark noise moves a crop);
    each printed."""
    validation = []
    for label, manifest_path, crops_dir in (
            ("lfw_112/manifest.tsv (the shipped crops)", os.path.join(lfw, "manifest.tsv"), lfw),
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
    m_ship, m_raw = read_manifest(os.path.join(lfw, "manifest.tsv")), read_manifest(os.path.join(raw_crops, "manifest.tsv"))
    both = sorted(n for n in m_raw if n in m_ship and m_raw[n][0] == m_ship[n][0] == "ok"
                  and os.path.exists(os.path.join(lfw, n)))
    shift = [float(np.linalg.norm(parse_landmarks(m_ship[n][2]) - parse_landmarks(m_raw[n][2]), axis=1).mean()) for n in both]
    a = np.stack([decode_image(os.path.join(lfw, n)) for n in both])
    b = np.stack([decode_image(os.path.join(raw_crops, n)) for n in both])
    run_cos = cosine_similarity(embed(a, progress=False), embed(b, progress=False))
    detector_runs = {"photos": len(both), "landmark_shift_px_mean": float(np.mean(shift)),
                     "landmark_shift_px_max": float(np.max(shift)),
                     "crop_mad_mean": float(np.abs(a.astype(np.int16) - b).mean()),
                     "cos_mean": float(run_cos.mean()), "cos_min": float(run_cos.min())}
    print(f"two MTCNN runs on the same {len(both)} photos (lfw_112 vs raw/lfw_112 landmarks): landmark shift "
          f"{detector_runs['landmark_shift_px_mean']:.2f} px mean ({detector_runs['landmark_shift_px_max']:.2f} max), "
          f"crop MAD {detector_runs['crop_mad_mean']:.2f}, embedding cos {run_cos.mean():.4f} (min {run_cos.min():.4f})")
    return validation, detector_runs
