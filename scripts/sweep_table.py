"""One table of several sweeps (one column pair per extractor), as in docs/RESULTS.md.

    python scripts/sweep_table.py NAME=docs/results/sweep_iom_X.json [NAME=...] [--key all_pairs_tar@0.001]

Each JSON is what scripts/sweep_iom.py wrote for one extractor's config; the table shows, per
code size, what ships after the guard (mean ± std over seeds, with the count of seeds whose
learned head shipped) beside random IoM (mean ± std over keys).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="NAME=PATH of a sweep JSON")
    parser.add_argument("--key", default="all_pairs_tar@0.001",
                        help="figure to tabulate: accuracy, eer, tar@0.001, all_pairs_tar@0.001, ...")
    args = parser.parse_args(argv)

    from arcface.errors import ConfigError
    from iom.evaluation.sweep import extractor_table

    results = {}
    for item in args.sweeps:
        name, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected NAME=PATH")
        with open(path) as f:
            results[name] = json.load(f)
    digits = 2 if args.key == "accuracy" else 4 if args.key == "eer" else 3
    print(extractor_table(results, args.key, digits))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
