"""Draw LFW-protocol verification pairs (person-disjoint folds) from an identity folder.

    python scripts/generate_pairs.py --data_dir DIR [--out DIR/pairs.txt]
        [--n_folds 10] [--n_per_fold 300] [--seed 0] [--format auto|lfw|paths]

Each fold holds --n_per_fold same pairs then --n_per_fold different pairs, and no
identity appears in two folds. The file is in LFW pairs.txt format when every image
is named <name>/<name>_<NNNN>.<ext>, else a tab-separated 'path1 path2 issame' file;
entries are relative to DIR, which loaders assume is the pairs file's folder (pass
the folder explicitly, e.g. make_bin.py --data_dir, when the file lives elsewhere).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="identity folder: DIR/<identity>/<images>")
    parser.add_argument("--out", default=None, help="pairs file to write (default: DIR/pairs.txt)")
    parser.add_argument("--n_folds", type=_int_at_least(1), default=10)
    parser.add_argument("--n_per_fold", type=_int_at_least(1), default=300,
                        help="same pairs, and different pairs, per fold")
    parser.add_argument("--seed", type=_int_at_least(0), default=0)
    parser.add_argument("--format", choices=("auto", "lfw", "paths"), default="auto",
                        help="auto: LFW format when the images follow LFW naming, else paths")
    args = parser.parse_args(argv)

    from arcface.data.pair_generation import generate_pairs, write_pairs

    out = args.out or os.path.join(args.data_dir, "pairs.txt")
    pairs = generate_pairs(args.data_dir, n_folds=args.n_folds, n_per_fold=args.n_per_fold, seed=args.seed)
    fmt = write_pairs(out, pairs, fmt=args.format)
    n_ids = len({name for i in range(len(pairs)) for name in pairs.identities(i)})
    print(f"wrote {len(pairs)} pairs ({args.n_folds} folds x {args.n_per_fold} same + {args.n_per_fold} "
          f"different, {n_ids} identities) in {fmt} format to {out}")
    if os.path.dirname(os.path.abspath(out)) != pairs.root:
        print(f"note: entries are relative to {pairs.root}; give that folder as the image root "
              f"(make_bin.py --data_dir, load_pairs_dir(image_root=...))")
    if fmt == "lfw" and pairs.lfw_ext != "jpg":
        print(f"note: the images are .{pairs.lfw_ext}; pass --ext {pairs.lfw_ext} to make_bin.py "
              f"(load_pairs_dir(ext={pairs.lfw_ext!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
