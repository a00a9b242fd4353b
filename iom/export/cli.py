"""``scripts/export.py`` / ``python -m iom.export``: export a shipped hasher for a device.

    python scripts/export.py --format tflite|onnx|savedmodel --out DIR
        [--hasher NAME] [--variant face|crop] [--crop_size N] [--force]

Writes DIR/ with the model (``model.tflite``, ``model.onnx`` or ``saved_model/``),
``export.json`` (model id, m, q, input and outputs, SHA-256 of each file, versions) and
``reference.py`` (how to key and pack the model's code into the stored template). The
model maps uint8 RGB faces (n, 112, 112, 3), aligned as the service aligns them, to the
un-keyed code (n, m) int32 and the L2-normalised embedding (n, d) float32. ``--variant crop``
takes a square detector crop of ``--crop_size`` pixels instead (default 160), resized to
112x112 inside the model: for devices whose face detector gives a box but no landmarks; it
is less accurate than aligned crops.

The conversion always runs on Keras' TensorFlow backend: these entry points set
KERAS_BACKEND=tensorflow for their own process, whatever the environment says. A bad
argument (unknown format, variant or hasher, crop size out of range, a non-empty --out
without --force) exits 2 with ``error: ...`` and writes nothing.
"""

from __future__ import annotations

import argparse

from iom.defaults import DEFAULT_HASHER


def main(argv=None) -> int:
    from arcface.cli import import_backend_quietly
    from iom.export.exporter import check_arguments, export
    from iom.export.spec import CROP_SIZE_RANGE, DEFAULT_CROP_SIZE, FORMATS, VARIANTS

    parser = argparse.ArgumentParser(prog="export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                        help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="output folder (created; must be empty or absent "
                                                     "unless --force)")
    parser.add_argument("--model", "--hasher", dest="hasher", default=DEFAULT_HASHER,
                        help=f"a shipped hasher under models/ (default {DEFAULT_HASHER}; --hasher is the "
                             f"older spelling)")
    parser.add_argument("--variant", default="face", help=f"one of {', '.join(VARIANTS)} (default face)")
    parser.add_argument("--crop_size", type=int, default=None,
                        help=f"--variant crop: the square crop's side in pixels, {CROP_SIZE_RANGE[0]}.."
                             f"{CROP_SIZE_RANGE[1]} (default {DEFAULT_CROP_SIZE})")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)

    check_arguments(args.hasher, args.fmt, args.out, args.variant, args.crop_size, args.force)  # before Keras
    import_backend_quietly()
    manifest = export(args.hasher, args.fmt, args.out, variant=args.variant, crop_size=args.crop_size,
                      force=args.force)
    size = sum(f["bytes"] for name, f in manifest["files"].items()
               if name == manifest["model"] or name.startswith(manifest["model"] + "/"))
    shape = "x".join("n" if d is None else str(d) for d in manifest["input"]["shape"])
    print(f"exported {manifest['model_id']} ({manifest['variant']}: uint8 {shape} -> code n x "
          f"{manifest['m']} in [0, {manifest['q']}), embedding n x {manifest['embedding_dim']}) as "
          f"{manifest['format']}: {args.out}/{manifest['model']} ({size:,} bytes, SHA-256 "
          f"{manifest['model_sha256']})")
    return 0
