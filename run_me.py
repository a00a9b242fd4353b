"""iomface demo: embed face photos with a stage-1 network and compare them.

    python run_me.py [--cfg_path configs/X.yaml] [--model_path PATH] [--images A B ...]

With no arguments it uses only what the project and its installed dependencies ship: the
model in ``models/mbfn_celeba299`` and matplotlib's public-domain ``grace_hopper.jpg``, an
augmented copy of it (a stand-in for a second photo of the same person, and said so), and a
different image. --model_path takes a shipped model's name, weights or a checkpoint folder;
without any weights the network is randomly initialised and the output says so plainly.
(The IoM hashing stage arrives with a later milestone: see README.)
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_MODEL = "mbfn_celeba299"
FALLBACK_CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                            "arc_mbfn_celeba_tiny.yaml")


def demo_faces():
    """(label, RGB 112x112 image) pairs built from files shipped with matplotlib."""
    import cv2
    import matplotlib.cbook as cbook
    import numpy as np

    from arcface.data.images import decode_image

    from arcface.align import FaceAligner

    # MTCNN detection and the five-point warp, as for any photo
    face = FaceAligner().align(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[0].image
    rng = np.random.default_rng(0)
    copy = np.clip(face[:, ::-1].astype(np.float32) * 1.1 + 8 + rng.normal(0, 4, face.shape), 0, 255)
    other = decode_image(cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False))
    other = cv2.resize(other, (112, 112), interpolation=cv2.INTER_AREA)
    return [("grace_hopper.jpg (MTCNN-aligned)", face),
            ("grace_hopper.jpg, mirrored + brightened copy (same photo, augmented)", copy.astype(np.uint8)),
            ("Minduka_Present_Blue_Pack.png (not the same person)", other)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", default=None,
                        help=f"default: the shipped model's config ({DEFAULT_MODEL})")
    parser.add_argument("--model_path", default=None)
    parser.add_argument("--images", nargs="+", default=None,
                        help="your own photos (faces are detected and aligned with MTCNN)")
    args = parser.parse_args(argv)

    import numpy as np

    from arcface.config import load_config
    from arcface.embed import Embedder
    from arcface.errors import CheckpointError
    from arcface.models import build_backbone_from_config, resolve_weights
    from arcface.pretrained import is_pretrained_name, pretrained_files

    if args.cfg_path is None and args.model_path is None and is_pretrained_name(DEFAULT_MODEL):
        args.model_path = DEFAULT_MODEL
    if args.cfg_path is None:
        args.cfg_path = pretrained_files(args.model_path)[0] if is_pretrained_name(args.model_path) \
            else FALLBACK_CFG
    cfg = load_config(args.cfg_path)
    backbone = build_backbone_from_config(cfg)
    try:
        weights = resolve_weights(cfg, args.model_path)
        backbone.load_weights(weights)
        print(f"weights: {weights}")
    except CheckpointError:
        if args.model_path:
            raise
        print("weights: NONE FOUND - the network is randomly initialised, so the similarities "
              "below show the pipeline working, not face recognition.\n"
              f"         train one with: python scripts/train_arcface.py --cfg_path {args.cfg_path}")
    if args.images:
        from arcface.align import FaceAligner

        aligner = FaceAligner(size=cfg["input_size"])
        faces = [(p, aligner.align(p)[0].image) for p in args.images]
    else:
        faces = demo_faces()
    embedder = Embedder(backbone, batch_size=len(faces), input_size=cfg["input_size"])
    emb = embedder.embed_arrays(np.stack([f for _, f in faces]))
    print(f"\nbackbone {cfg['backbone_type']}, {emb.shape[1]}-d embeddings")
    for i, (name, _) in enumerate(faces):
        print(f"  [{i}] {name}: {np.array2string(emb[i, :6], precision=3)} ...")
    print("\ncosine similarity:")
    for i in range(len(faces)):
        for j in range(i + 1, len(faces)):
            print(f"  [{i}] vs [{j}]: {float(emb[i] @ emb[j]):+.4f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from arcface.cli import fail_cleanly

    sys.exit(fail_cleanly(main))
