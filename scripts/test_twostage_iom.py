"""Evaluate a deep IoM hasher: verification, identification and cancelability.

    python scripts/test_twostage_iom.py --cfg_path configs/iom_mbfn_celeba299_512x8.yaml
        [--model_path checkpoints/<sub_name>] [--json results.json] [--plots DIR]
        [--cancelability] [--no_random] [--n_draws N] [--calibration PATH] [--key_mode code|embedding]

Prints, per verification set, the seed's table (raw embeddings, deep IoM and random IoM
at the same (m, q), under the training key, a stolen key and fresh keys) and the
renewability / unlinkability figures; then identification (rank-1, mAP, DIR@FAR=1e-2).
``--cancelability`` runs only the key scenarios; ``--json`` writes every figure.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", required=True, help="stage-2 YAML config")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a shipped stage-1 model to put under the config (its backbone_type, embd_shape; "
                             "sub_name gets its name); default: the config's stage1_model")
    parser.add_argument("--model_path", default=None,
                        help="saved hasher folder (default: checkpoints/<sub_name> when it holds a trained "
                             "hasher, else the shipped models/<sub_name>; a warning says when the first "
                             "hides the second). The folder evaluated is printed")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--plots", default=None,
                        help="folder for ROC/DET and unlinkability plots (each file written is printed)")
    parser.add_argument("--calibration", default=None,
                        help="write the decision threshold at target_far (for the template service)")
    parser.add_argument("--cancelability", action="store_true", help="only the key scenarios")
    parser.add_argument("--no_random", action="store_true", help="skip the random IoM baseline")
    parser.add_argument("--key_mode", default=None, choices=["code", "embedding"],
                        help="override where user keys act (ablation: 'embedding' is the parent's scheme)")
    parser.add_argument("--n_draws", type=int, default=None, help="key draws per scenario (n_fresh_keys)")
    args = parser.parse_args(argv)

    from iom.config import load_stage2_config
    from iom.evaluation.report import evaluate_stage2
    from iom.hashing.hasher import DeepIoMHasher, locate_hasher

    cfg = load_stage2_config(args.cfg_path, stage1_model=args.model)
    where = locate_hasher(cfg, args.model_path)
    print(f"hasher: {where.describe()}", flush=True)
    warning = where.shadow_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    hasher = DeepIoMHasher.load(where.folder)
    from iom.hashing.guard import describe_training_report

    for line in describe_training_report(hasher.spec):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout, flush=True)
    if args.key_mode:
        hasher.key_mode = args.key_mode
    evaluate_stage2(cfg, hasher, json_path=args.json, plot_dir=args.plots,
                    with_random=not args.no_random, cancelability_only=args.cancelability,
                    n_draws=args.n_draws, calibration_path=args.calibration, hasher_folder=where.folder)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
