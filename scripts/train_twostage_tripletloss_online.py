"""Train the deep IoM hashing head (stage 2) on top of a frozen stage-1 model.

    python scripts/train_twostage_tripletloss_online.py --cfg_path configs/iom_mbfn_celeba299_512x8.yaml

The training images are embedded once by the stage-1 model (cached under cache_dir),
or read from ``train_embeddings`` (any extractor's .npz); the head trains on P x K
batches of those embeddings. The hasher lands in checkpoints/<sub_name>/.
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
    parser.add_argument("--checkpoint_root", default="checkpoints")
    parser.add_argument("--log_root", default="logs")
    parser.add_argument("--mode", default="fit", choices=["fit", "eager_tf"],
                        help="parent's flag; stage 2 always trains with model.fit")
    args = parser.parse_args(argv)

    from iom.config import load_stage2_config
    from iom.hashing.train import train_stage2

    cfg = load_stage2_config(args.cfg_path, stage1_model=args.model)
    train_stage2(cfg, checkpoint_root=args.checkpoint_root, log_root=args.log_root)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
