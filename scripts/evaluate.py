"""Evaluate a stage-1 model on verification pairs (InsightFace 10-fold protocol).

    python scripts/evaluate.py [--cfg_path configs/X.yaml] [--model_path NAME_OR_PATH]
        [--val_data lfw.bin|pairs_dir ...] [--flip] [--json results.json] [--plot_dir DIR]

Prints accuracy ± std, threshold, AUC, EER and TAR@FAR per set, saves ROC and DET
curves as PNG and, with --json, every figure as JSON.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import CFG_PATH_HELP, MODEL_PATH_HELP, fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", default=None, help=CFG_PATH_HELP)
    parser.add_argument("--model_path", "--model", default=None, help=MODEL_PATH_HELP)
    parser.add_argument("--val_data", nargs="+", default=None,
                        help=".bin files or pairs folders (default: the config's test_dataset)")
    parser.add_argument("--flip", action="store_true", help="flip test (also on if the config says so)")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--plot_dir", default="outputs/evaluate", help="where ROC/DET PNGs go")
    parser.add_argument("--batch_size", type=int, default=None)
    args = parser.parse_args(argv)

    from arcface.cli import stage1_config_path
    from arcface.config import load_config
    from arcface.embed import Embedder
    from arcface.errors import ConfigError
    from arcface.metrics import format_table
    from arcface.models import load_backbone, resolve_weights
    from arcface.plots import save_roc_det
    from arcface.verification import evaluate_pair_set, load_verification_sets

    cfg = load_config(stage1_config_path(args.cfg_path, args.model_path))
    weights = resolve_weights(cfg, args.model_path)  # an untrained config fails here, saying so
    pair_sets = load_verification_sets(args.val_data or cfg["test_dataset"])
    if not pair_sets:
        raise ConfigError("no verification data: pass --val_data or set test_dataset in the config")
    print(f"model: {weights} (config {cfg.source})")
    backbone = load_backbone(cfg, weights)
    embedder = Embedder(backbone, args.batch_size or cfg["eval_batch_size"], cfg["input_size"],
                        flip=args.flip or cfg["flip_test"], center_crop=cfg["is_ccrop"],
                        workers=cfg["workers"])
    reports = [evaluate_pair_set(embedder, ps, progress=True) for ps in pair_sets]
    print(format_table(reports))
    os.makedirs(args.plot_dir, exist_ok=True)
    plots = save_roc_det(reports, os.path.join(args.plot_dir, cfg["sub_name"]))
    print("curves:", ", ".join(plots))
    if args.json:
        out = {"config": cfg.source, "model_path": args.model_path, "weights": weights, "flip_test": embedder.flip,
               "sets": {r.name: r.to_dict() for r in reports}, "plots": plots}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print("json:", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
