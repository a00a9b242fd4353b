"""The ``iomface`` entry point (:func:`main`): its usage, exit codes and secrets are the
parser's help text, in :mod:`iom.cli.parser`."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from iom.cli.commands import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, needs_model, run  # noqa: E402,F401
from iom.cli.inputs import (LITERAL_SECRET_OPTIONS, literal_secret_option, read_secret_file,  # noqa: E402,F401
                            read_token, store_location, witness_path)
from iom.cli.output import format_result, one_line  # noqa: E402
from iom.cli.parser import COMMANDS, KEY_COMMANDS, build_parser  # noqa: E402,F401
from iom.cli.request import Request  # noqa: E402

__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_OK", "EXIT_REJECTED", "format_result", "main", "read_secret_file",
           "read_token", "run", "store_location", "witness_path"]


def main(argv=None) -> int:
    """The ``iomface`` command; returns its exit code (see the module doc)."""
    from arcface.errors import IomfaceError
    from iom.errors import UnknownSubjectError
    from iom.store.dsn import scrub_dsn

    argv = sys.argv[1:] if argv is None else list(argv)
    literal = literal_secret_option(argv)
    if literal is not None:
        print(f"error: {literal} is refused: a secret on the command line can be read by every user of "
              f"this machine (ps, /proc/PID/cmdline) and stays in the shell history; use "
              f"{LITERAL_SECRET_OPTIONS[literal]}", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser().parse_args(argv)
    code = EXIT_ERROR
    try:
        if args.command in KEY_COMMANDS:
            from iom.server.serve import key_command

            result, code = key_command(args)
        elif args.command == "models":               # files only: no store, no secret, no Keras
            from arcface.model_cards import list_models

            result, code = list_models(), EXIT_OK
        else:
            request = Request(args)                   # every input checked before Keras is imported
            if needs_model(args):
                from iom.cli.loading import runtime_choice

                runtime_choice(args, request)         # --runtime tflite without a valid file: refused now
            if args.command == "serve":               # before TensorFlow starts its thread pools
                os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.op_threads or
                                                           os.environ.get("TF_NUM_INTRAOP_THREADS") or 1)
            if not args.verbose and needs_model(args):
                from arcface.cli import import_backend_quietly

                import_backend_quietly()
            if args.command == "serve":
                from iom.server.serve import serve

                return serve(args, request)
            result, code = run(args, request=request)
    except (IomfaceError, OSError) as e:
        message = str(e)
        for dsn in (args.db, os.environ.get("IOMFACE_DB")):
            message = scrub_dsn(message, dsn)
        print(f"error: {one_line(message)}", file=sys.stderr)
        return EXIT_REJECTED if isinstance(e, UnknownSubjectError) else EXIT_ERROR
    print(json.dumps(result) if args.json else format_result(args.command, result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
