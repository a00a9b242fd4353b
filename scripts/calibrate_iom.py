"""Calibrate a deep IoM hasher's operating points on identities disjoint from training and test.

    python scripts/calibrate_iom.py --cfg_path configs/iom_mobilefacenet_ms1m_512x8.yaml
        [--model_path DIR] [--out PATH] [--no_check]

The calibration set is the config's ``calibration_identities`` (training identities held out
of training, a fixed draw) or its ``calibration_dataset``. For every FAR of
``calibration_fars`` it writes the lowest threshold whose measured FAR is at most the target,
with its TAR; ``target_far`` is the default operating point of the template service. It also
writes the genuine and impostor similarity histograms (the 1:N thresholds come from the
latter) and, unless ``--no_check``, the same thresholds measured on every pair of the
config's ``identification_dataset`` (the reported evaluation set) to show how they transfer.
The file goes to ``--out``, by default ``calibration.json`` in the hasher's folder.
"""

import argparse
import json
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
                        help="saved hasher folder (default checkpoints/<sub_name>, then models/<sub_name>)")
    parser.add_argument("--out", default=None, help="calibration file to write (default: "
                        "<hasher folder>/calibration.json)")
    parser.add_argument("--no_check", action="store_true",
                        help="do not measure the thresholds on the identification_dataset")
    args = parser.parse_args(argv)

    from arcface.data.pairs import atomic_write
    from iom.config import load_stage2_config
    from iom.evaluation.calibrate import calibrate_config, format_operating_points
    from iom.hashing.hasher import DeepIoMHasher, locate_hasher

    cfg = load_stage2_config(args.cfg_path, stage1_model=args.model)
    where = locate_hasher(cfg, args.model_path)
    folder = where.folder
    print(f"[calibrate] hasher: {where.describe()}")
    if where.shadow_warning():
        print(where.shadow_warning(), file=sys.stderr)
    hasher = DeepIoMHasher.load(folder)
    cal = calibrate_config(cfg, hasher, check=not args.no_check)
    print(format_operating_points(cal, cal.get("check")))
    out = args.out or os.path.join(folder, "calibration.json")
    atomic_write(out, json.dumps(cal, indent=1).encode("utf-8"))
    print(f"[calibrate] written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
