"""Embed aligned face crops with a released recogniser (another extractor than ours).

    python scripts/embed_foreign.py NAME --read_path FOLDER [--read_path FOLDER2 ...]
        --save_path out.npz [--flip_augment]

NAME is one of scripts/fetch_foreign_model.py --list (fetch it first). Each FOLDER holds aligned
112x112 crops (an identity folder, or any folder of images): each crop is resized to the model's
input size and fed with the model's own convention. The .npz (names, embeddings, labels,
class_names, mirrored) is what stage-2 configs read as ``train_embeddings`` / ``test_embeddings``:
several identity folders keep their identities apart (labels offset folder by folder, names
prefixed with the folder's name), ``--flip_augment`` adds the mirror image of every crop
(marked in ``mirrored``: training data, kept out of validation and calibration pairs). The
features are stored as the model gives them, not normalised: their scale and offset are part
of what a hashing head must cope with. For a test set (names relative to the pairs folder) give
one folder and no flips.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a model of scripts/fetch_foreign_model.py --list")
    parser.add_argument("--read_path", required=True, action="append", help="folder of aligned 112x112 crops")
    parser.add_argument("--save_path", required=True, help="output .npz")
    parser.add_argument("--flip_augment", action="store_true", help="also embed every mirror image")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--cache_dir", default=None, help="where the fetched models are (.cache/foreign)")
    args = parser.parse_args(argv)

    import numpy as np

    from arcface.embed import Embedder
    from arcface.embeddings_io import list_images, save_embeddings
    from arcface.foreign_models import CACHE_DIR, ForeignRunner, get_foreign_model

    model = get_foreign_model(args.name)
    runner = ForeignRunner(model, args.cache_dir or CACHE_DIR)
    several = len(args.read_path) > 1
    names, embeddings, labels, classes, mirrored, offset = [], [], [], [], [], 0
    for folder in args.read_path:
        n, paths, y, class_names = list_images(folder)
        prefix = os.path.basename(os.path.normpath(folder)) + "/" if several else ""
        for mirror in ([False, True] if args.flip_augment else [False]):
            embedder = Embedder(runner, args.batch_size, model.input_size, mirror=mirror)
            embeddings.append(embedder.embed_items(paths, normalize=False, progress=True,
                                                   desc=f"{args.name} {os.path.basename(folder)}"
                                                        f"{' (mirrored)' if mirror else ''}"))
            names += [prefix + name for name in n]
            mirrored += [mirror] * len(n)
            if y is not None:
                labels.append(np.asarray(y) + offset)
        if y is not None:
            classes += [prefix + c for c in class_names]
            offset += int(np.max(y)) + 1
    if labels and len(labels) != len(embeddings):
        from arcface.errors import DataFormatError

        raise DataFormatError("mix of identity folders and flat folders: give only one kind")
    emb = np.concatenate(embeddings)
    save_embeddings(args.save_path, names, emb, np.concatenate(labels) if labels else None,
                    classes or None, np.asarray(mirrored) if args.flip_augment else None)
    print(f"saved {len(names)} {args.name} embeddings ({emb.shape[1]}-d"
          f"{', half of them of mirror images' if args.flip_augment else ''}) to {args.save_path}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
