"""Import an InsightFace / arcface_torch ONNX model into our Keras backbone.

    python scripts/import_onnx.py --onnx w600k_r50.onnx --backbone_type IR_50 \\
        --out models/w600k_r50.weights.h5 [--embd_shape 512] [--cfg_out configs/w600k_r50.yaml]

The graph is checked against the backbone before any weight is copied: a file that does
not match (e.g. an r50 into IR_100) is refused with the first mismatch named. The saved
weights load everywhere a backbone does (``--model_path`` of the scripts, ``stage1_model``
of a stage-2 config with ``stage1_cfg_path`` pointing at ``--cfg_out``), on any backend.
Only the ``onnx`` package is needed (``pip install onnx``); no PyTorch.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="the .onnx file")
    parser.add_argument("--backbone_type", required=True, help="IR_18/34/50/100 or MobileFaceNet")
    parser.add_argument("--out", required=True, help="output .weights.h5 (or .keras)")
    parser.add_argument("--embd_shape", type=int, default=512)
    parser.add_argument("--input_size", type=int, default=112)
    parser.add_argument("--cfg_out", default=None,
                        help="also write a stage-1 config for the imported model (for evaluate.py, stage 2)")
    args = parser.parse_args(argv)

    from arcface.onnx_import import import_onnx, save

    model = import_onnx(args.onnx, args.backbone_type, embd_shape=args.embd_shape, input_size=args.input_size)
    path = save(model, args.out)
    print(f"imported {args.onnx} into {args.backbone_type}: {model.count_params():,} parameters -> {path}")
    for note in getattr(model, "onnx_import_report", {}).get("unfolded_bn", []):
        print(f"  note: {note}")
    if args.cfg_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.cfg_out)), exist_ok=True)
        with open(args.cfg_out, "w") as f:
            f.write(f"# stage-1 config of {os.path.basename(args.onnx)}, imported by scripts/import_onnx.py\n"
                    f"batch_size: 64\neval_batch_size: 64\ninput_size: {args.input_size}\n"
                    f"embd_shape: {args.embd_shape}\nsub_name: '{os.path.splitext(os.path.basename(args.onnx))[0]}'\n"
                    f"backbone_type: '{args.backbone_type}'\n")
        print(f"stage-1 config -> {args.cfg_out}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
