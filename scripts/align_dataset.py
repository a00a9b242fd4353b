"""Detect and align the faces of a folder tree to 112x112 ArcFace crops (MTCNN + five-point warp).

    python scripts/align_dataset.py --src RAW_DIR --dst ALIGNED_DIR [--workers N] [--batch_size B]
        [--min_face_size PX] [--fallback center|skip] [--select center|largest] [--size 112]
        [--worker_type thread|process] [--retry_failed] [--jpeg_quality Q] [--no_progress]

The tree under --src is mirrored under --dst (one face per image; .jpg/.jpeg/.png keep their
name, other formats get ".png" appended) and DST/manifest.tsv gets one row per input:
``path  status  confidence  landmarks`` with status ``ok``, ``center`` (no face found and
--fallback center wrote the centre crop) or ``failed:<reason>`` (bad_image, no_face,
face_too_small); failed inputs get no output file. Run it again to resume: inputs already in
the manifest are skipped (ok/center ones only if their output exists; failed ones unless
--retry_failed). The work is done by arcface.align.align_folder.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--dst", required=True, help="output folder (created; holds manifest.tsv)")
    parser.add_argument("--workers", type=int, default=1,
                        help="batches processed at once (0 = in the main thread); default 1")
    parser.add_argument("--worker_type", choices=("thread", "process"), default="thread",
                        help="threads share one detector; processes load one each (default thread)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per detector call (default 32)")
    parser.add_argument("--min_face_size", type=float, default=20, help="smallest face kept, px (default 20)")
    parser.add_argument("--min_confidence", type=float, default=0.9, help="detector confidence (default 0.9)")
    parser.add_argument("--select", choices=("center", "largest"), default="center",
                        help="which face of a photo with several (default center)")
    parser.add_argument("--size", type=int, default=112, help="side of the aligned crops (default 112)")
    parser.add_argument("--fallback", choices=("skip", "center"), default="skip",
                        help="no face found: record a failure (skip) or write the centre crop (center)")
    parser.add_argument("--retry_failed", action="store_true", help="redo inputs the manifest lists as failed")
    parser.add_argument("--jpeg_quality", type=int, default=95, help="quality of .jpg outputs (default 95)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from arcface.align import align_folder

    summary = align_folder(
        args.src, args.dst, min_face_size=args.min_face_size, min_confidence=args.min_confidence,
        select=args.select, size=args.size, batch_size=args.batch_size, workers=args.workers,
        worker_type=args.worker_type, fallback=args.fallback, retry_failed=args.retry_failed,
        jpeg_quality=args.jpeg_quality, progress=not args.no_progress)
    print(f"{summary.total} images: {summary.ok} aligned, {summary.center} centre crops, "
          f"{summary.failed} failed, {summary.skipped} already done; {summary.seconds:.1f} s; "
          f"manifest {summary.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
