"""End-to-end stage 2 against head-only stage 2, over seeds, on the config's verification set.

    python scripts/compare_end_to_end.py --cfg_path configs/iom_mobilefacenet_ms1m_64x8_e2e.yaml \
        [--seeds 0,1,2] [--n_keys 5] [--set KEY=VALUE ...] [--json out.json]

The config must set ``train_backbone`` (``last_blocks`` or ``all``). Each seed trains end to end
(the joint model is kept even where the guard would not ship it, to be measured); its warm-up
is the head-only model of the same seed. Prints a table: raw cosine, random IoM, head only,
end to end (mean ± std), as in docs/RESULTS.md.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", required=True, help="stage-2 YAML config with train_backbone set")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--n_keys", type=int, default=5, help="random IoM keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config key (repeatable), e.g. --set train_backbone=all")
    parser.add_argument("--checkpoint_root", default="checkpoints")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    args = parser.parse_args(argv)

    from arcface.errors import ConfigError
    from iom.config import load_stage2_config
    from iom.evaluation.joint_study import compare_end_to_end, markdown_table

    cfg = load_stage2_config(args.cfg_path, args.overrides)
    if cfg["train_backbone"] == "none":
        raise ConfigError(f"{args.cfg_path}: set train_backbone (last_blocks or all) to compare end to end")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = compare_end_to_end(cfg, seeds, args.n_keys, args.checkpoint_root)
    print(markdown_table(result))
    if args.json:
        from arcface.data.pairs import atomic_write

        atomic_write(args.json, json.dumps(result, indent=1).encode("utf-8"))
        print(f"all figures -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
