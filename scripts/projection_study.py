"""Training-free IoM projections on a config's features: Gaussian (random IoM) or group-
orthogonal, on the features as given or centred (docs/RESULTS.md, "Why it failed").

    python scripts/projection_study.py --cfg_path configs/iom_sface_64x8.yaml [--size 64x8] [--draws 5]
        [--json out.json]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", required=True, help="stage-2 YAML config: the features and test set")
    parser.add_argument("--size", default="64x8", help="MxQ")
    parser.add_argument("--draws", type=int, default=5, help="projections drawn per variant")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from iom.config import load_stage2_config
    from iom.evaluation.projection_study import markdown_rows, study
    from iom.evaluation.sweep import Size

    size = Size.parse(args.size)
    cfg = load_stage2_config(args.cfg_path)
    result = study(cfg, size.m, size.q, args.draws)
    print(f"auto input_norm centres: {result['auto_centres']} (common cosine {result['common_cosine']:.3f}, "
          f"centred cosine std {result['centred_cosine_std']:.3f})")
    print("| extractor | projection | accuracy % | all pairs TAR@1e-3 | all pairs TAR@1e-4 |\n|---|---|---|---|---|")
    print("\n".join(markdown_rows(cfg["sub_name"], result)))
    if args.json:
        from arcface.data.pairs import atomic_write

        atomic_write(args.json, json.dumps(result, indent=1).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
