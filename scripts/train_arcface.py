"""Train a stage-1 face-embedding network.

    python scripts/train_arcface.py --cfg_path configs/arc_res50.yaml [--mode fit|eager_tf]

Resumes from the latest checkpoint in checkpoints/<sub_name>/ when there is one; otherwise a
config with `pretrained` starts from that backbone (fine-tuning).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", required=True, help="YAML config")
    parser.add_argument("--mode", default="fit", choices=["fit", "eager_tf"],
                        help="fit: compiled model.fit; eager_tf: run eagerly, for debugging")
    parser.add_argument("--checkpoint_root", default="checkpoints")
    parser.add_argument("--log_root", default="logs")
    parser.add_argument("--stop_after_chunks", type=int, default=None,
                        help="stop after this many save_steps chunks (resume later)")
    args = parser.parse_args(argv)

    from arcface.config import load_config
    from arcface.train import train

    cfg = load_config(args.cfg_path)
    summary = train(cfg, mode=args.mode, checkpoint_root=args.checkpoint_root,
                    log_root=args.log_root, stop_after_chunks=args.stop_after_chunks)
    print(json.dumps({k: v for k, v in summary.items() if k != "verification"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
