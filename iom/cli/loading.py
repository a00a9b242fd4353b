"""Loading what a command decides with: the pipeline of ``--model`` and its operating point
(shared by the command line and the HTTP server)."""

from __future__ import annotations

import time

from iom.cli.output import say


def operating_point(args, request):
    """The hasher's calibration and the operating point that ``--far``/``--threshold`` pick."""
    from iom.service.calibration import load_calibration, select_operating_point
    from iom.errors import InvalidInputError

    info = request.model
    if info["calibration"] is None:
        raise InvalidInputError(f"hasher {args.model!r} has no calibration.json: no operating point to decide at")
    cal = load_calibration(info["calibration"], info["m"], info["q"])
    return cal, select_operating_point(cal, args.far, args.threshold)


def load_pipeline(args, request):
    """The pipeline of ``--model`` (aligning unless ``--aligned``); says what loaded with ``--verbose``."""
    from iom.service.pipeline import Pipeline

    start = time.perf_counter()
    pipeline = Pipeline.from_pretrained(args.model, align=not args.aligned)
    say(args, f"model {pipeline.model_id} (m={pipeline.hasher.m}, q={pipeline.hasher.q}) from "
              f"{request.model['folder']}, stage 1 {request.model['stage1_model']}, "
              f"{'no alignment (--aligned)' if args.aligned else 'MTCNN alignment'}; loaded in "
              f"{time.perf_counter() - start:.1f} s")
    return pipeline
