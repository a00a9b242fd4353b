"""Extract L2-normalised embeddings of face images.

    python scripts/get_embd.py [--cfg_path configs/X.yaml] [--model_path NAME_OR_PATH]
        --read_path IMG_OR_DIR --save_path out.npz [--flip] [--align]

The model embeds aligned face crops of its input_size (112x112 for every shipped model:
MTCNN five-point alignment to the ArcFace template, what scripts/align_dataset.py writes).
Without --align every input must already be such a crop: an image of any other size (a raw
photo) is refused before anything is embedded, and nothing is written (exit 2), because the
resized photo's embedding says little about the face in it. With --align each image goes
through MTCNN detection and the five-point warp first (the most central face of each); an
image where no usable face is found is an error naming it, and nothing is written. For a
large folder, align it once with scripts/align_dataset.py (resumable, its manifest lists the
photos without a face) and embed the aligned copy.

With neither --cfg_path nor --model_path, the shipped default model mobilefacenet_ms1m
(models/mobilefacenet_ms1m/) is used.

The .npz holds ``names`` (paths relative to --read_path, unicode) and ``embeddings``
(float32, n x embd_shape), plus ``labels`` when --read_path is an identity folder;
nothing is pickled, so it loads with ``np.load(path)`` (allow_pickle=False).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import CFG_PATH_HELP, MODEL_PATH_HELP, fail_cleanly  # noqa: E402

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", default=None, help=CFG_PATH_HELP)
    parser.add_argument("--model_path", "--model", default=None, help=MODEL_PATH_HELP)
    parser.add_argument("--read_path", required=True,
                        help="an image file, a folder of images or an identity folder (one sub-folder "
                             "per person); aligned input_size crops unless --align")
    parser.add_argument("--save_path", required=True, help="output .npz")
    parser.add_argument("--flip", action="store_true",
                        help="flip test: add the embedding of the mirror image (also on if the config's "
                             "flip_test says so)")
    parser.add_argument("--align", action="store_true",
                        help="detect and align each image's face (MTCNN, five-point warp to the ArcFace "
                             "template, the most central face) before embedding: for raw photos")
    args = parser.parse_args(argv)

    from arcface.cli import stage1_config_path
    from arcface.config import load_config
    from arcface.embed_photos import check_aligned, embed_aligned
    from arcface.embeddings_io import list_images, save_embeddings
    from arcface.models import load_backbone, resolve_weights

    cfg = load_config(stage1_config_path(args.cfg_path, args.model_path))
    names, paths, labels, class_names = list_images(args.read_path)
    size = cfg["input_size"]
    if not args.align:
        check_aligned(names, paths, size, args.read_path)
    weights = resolve_weights(cfg, args.model_path)
    print(f"model: {weights} (config {cfg.source})", flush=True)

    from arcface.embed import Embedder

    backbone = load_backbone(cfg, weights)
    embedder = Embedder(backbone, cfg["eval_batch_size"], size,
                        flip=args.flip or cfg["flip_test"], center_crop=cfg["is_ccrop"],
                        workers=cfg["workers"])
    if args.align:
        embeddings = embed_aligned(embedder, names, paths, size, cfg["is_ccrop"])
    else:
        embeddings = embedder.embed_items(paths, progress=True)
    save_embeddings(args.save_path, names, embeddings, labels, class_names)
    print(f"saved {len(names)} embeddings of dimension {embeddings.shape[1]} to {args.save_path}"
          f"{' (faces aligned with MTCNN)' if args.align else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
