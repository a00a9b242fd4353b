"""Extract L2-normalised embeddings of aligned face images.

    python scripts/get_embd.py [--cfg_path configs/X.yaml] [--model_path NAME_OR_PATH]
        --read_path IMG_OR_DIR --save_path out.npz [--flip]

The .npz holds ``names`` (paths relative to --read_path, unicode) and ``embeddings``
(float32, n x embd_shape), plus ``labels`` when --read_path is an identity folder;
nothing is pickled, so it loads with ``np.load(path)`` (allow_pickle=False).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", default=None,
                        help="YAML config (default: the config of the shipped model --model_path names, "
                             "else of the default model, mobilefacenet_ms1m)")
    parser.add_argument("--model_path", default=None,
                        help="a shipped model's name (models/), backbone .weights.h5, checkpoint or run folder")
    parser.add_argument("--read_path", required=True, help="an image file or a folder of images")
    parser.add_argument("--save_path", required=True, help="output .npz")
    parser.add_argument("--flip", action="store_true")
    args = parser.parse_args(argv)

    from arcface.config import load_config
    from arcface.pretrained import resolve_config_path
    from arcface.embed import Embedder
    from arcface.embeddings_io import list_images, save_embeddings
    from arcface.models import load_backbone

    cfg = load_config(resolve_config_path(args.cfg_path, args.model_path))
    names, paths, labels, class_names = list_images(args.read_path)
    backbone = load_backbone(cfg, args.model_path)
    embedder = Embedder(backbone, cfg["eval_batch_size"], cfg["input_size"],
                        flip=args.flip or cfg["flip_test"], center_crop=cfg["is_ccrop"],
                        workers=cfg["workers"])
    embeddings = embedder.embed_items(paths, progress=True)
    save_embeddings(args.save_path, names, embeddings, labels, class_names)
    print(f"saved {len(names)} embeddings of dimension {embeddings.shape[1]} to {args.save_path}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
