"""Loading what a command decides with: the pipeline of ``--model`` and its operating point
(shared by the command line and the HTTP server)."""

from __future__ import annotations

import os
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


def interpreter_threads(args) -> int | None:
    """Threads of each TFLite interpreter: ``serve``'s ``--op_threads`` (default
    ``$TF_NUM_INTRAOP_THREADS``, else 1: requests run side by side, one core each); for the other
    commands ``$TF_NUM_INTRAOP_THREADS`` when set, else ``None`` (every core)."""
    env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    env_threads = int(env) if env.isdigit() and int(env) > 0 else None
    if getattr(args, "command", None) == "serve":
        return getattr(args, "op_threads", None) or env_threads or 1
    return env_threads


def runtime_choice(args, request):
    """The stage-1 runtime ``--runtime`` picks for ``--model`` (:func:`iom.service.runtime.choose_runtime`):
    files read, no model loaded; ``--runtime tflite`` without a valid file is an
    :class:`~iom.errors.InvalidInputError` naming it. Kept on ``request.runtime``."""
    from iom.service.runtime import choose_runtime

    choice = getattr(request, "runtime", None)
    if choice is None:
        choice = request.runtime = choose_runtime(getattr(args, "runtime", "auto"), request.model)
    return choice


def load_pipeline(args, request):
    """The pipeline of ``--model`` (aligning unless ``--aligned``) on the stage-1 runtime of
    ``--runtime``; says what loaded, on which runtime and why, with ``--verbose``."""
    from iom.service.pipeline import Pipeline

    start = time.perf_counter()
    choice = runtime_choice(args, request)
    pipeline = Pipeline.from_pretrained(args.model, align=not args.aligned, runtime=choice,
                                        threads=interpreter_threads(args))
    say(args, f"model {pipeline.model_id} (m={pipeline.hasher.m}, q={pipeline.hasher.q}) from "
              f"{request.model['folder']}, stage 1 {request.model['stage1_model']}, "
              f"{'no alignment (--aligned)' if args.aligned else 'MTCNN alignment'}; loaded in "
              f"{time.perf_counter() - start:.1f} s")
    embedder = pipeline.embedder
    how = (f"{embedder.interpreter}, {embedder.num_threads} thread(s) an interpreter, up to "
           f"{embedder.max_interpreters} at once" if choice.runtime == "tflite" else "the Keras backbone")
    say(args, f"{choice.describe()} ({how})")
    return pipeline
