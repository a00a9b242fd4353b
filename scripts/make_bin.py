"""Pack an aligned image folder and a pairs file into an InsightFace verification .bin.

    python scripts/make_bin.py --data_dir DIR --pairs pairs.txt --out lfw.bin [--ext jpg]

The .bin is a pickle of (bins, issame_list) with two encoded images per pair: the
image files' bytes, unchanged. The pairs file is LFW pairs.txt (images
DIR/<name>/<name>_<idx:04d>.<ext>) or a path pairs file from generate_pairs.py.
Example: --data_dir ../shared/data/lfw_112 --pairs ../shared/data/lfw_112/pairs.txt
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="image root the pairs refer to")
    parser.add_argument("--pairs", required=True, help="pairs file (LFW format or path pairs)")
    parser.add_argument("--out", required=True, help=".bin file to write")
    parser.add_argument("--ext", default="jpg", help="image extension for LFW-format pairs (default: jpg)")
    args = parser.parse_args(argv)

    from arcface.data.pair_generation import make_verification_bin

    stats = make_verification_bin(args.data_dir, args.pairs, args.out, ext=args.ext, progress=True)
    print(f"wrote {stats.n_pairs} pairs ({stats.n_images} distinct images, "
          f"{stats.n_bytes / 2**20:.1f} MiB) to {args.out}")
    if not stats.folds_preserved:
        print("note: a .bin stores no folds; readers split it into 10 consecutive chunks, "
              "which differ from the pairs file's folds")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
