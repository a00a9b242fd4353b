"""``iomface serve`` and the API-key commands: the template service on HTTP under uvicorn.

The server opens the store, loads the model once, and answers on ``--host``/``--port``
(127.0.0.1:8080 by default: put a TLS-terminating reverse proxy in front for anything else,
or give ``--tls_cert``/``--tls_key``). Keys come from ``--keys_file`` (``$IOMFACE_KEYS_FILE``),
the application secret as for every store command (``$IOMFACE_APP_SECRET`` or
``--secret_file``). Administrator operations are authorised by the admin API key: the service
is given a random per-process administrator secret that never leaves the process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets

from iom.server.options import keys_file, trusted_proxies  # noqa: F401 (re-exported)

log = logging.getLogger("iomface.server")


def key_command(args) -> tuple[object, int]:
    """add-key / remove-key / list-keys: ``(result, exit code)``."""
    from iom.server import api_keys

    path = keys_file(args)
    if args.command == "add-key":
        key = api_keys.add_key(path, args.name, args.role)
        return {"name": args.name, "role": args.role, "key": key, "keys_file": path}, 0
    if args.command == "remove-key":
        api_keys.remove_key(path, args.name)
        return {"name": args.name, "removed": True}, 0
    return api_keys.list_keys(path), 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(args, request):
    """The FastAPI app for parsed ``serve`` options (``request``: the checked inputs: store
    location and secret); the store is opened and the model loaded here."""
    from iom.server.api_keys import KeyRing
    from iom.server.app import ServerState, create_app
    from iom.server.uploads import PhotoAligner, UploadLimits
    from iom.cli.loading import load_pipeline, operating_point
    from iom.cli.inputs import witness_path
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService
    from iom.store.factory import open_store

    keys = KeyRing(keys_file(args), on_error=lambda message: log.error(message))
    limits = UploadLimits(args.max_photo_bytes, int(args.max_megapixels * 1e6), args.max_photos)
    policy = ServicePolicy(expose_scores=args.admin_scores, allow_codes=args.device_codes,
                           verify_per_minute=args.verify_per_minute,
                           identify_per_minute=args.identify_per_minute,
                           subject_verify_per_minute=args.subject_verify_per_minute,
                           max_failures=args.max_failures, failure_window_s=args.failure_window_s)
    calibration, _ = operating_point(args, request)
    gallery = getattr(request, "gallery", None)
    if gallery is not None:
        gallery.connect()                   # --cluster: joined (or started) before the model loads
    args.aligned = True                     # the service takes crops; the server aligns raw photos itself
    pipeline = load_pipeline(args, request)
    store = open_store(request.location)
    admin_secret = secrets.token_bytes(32)
    service = TemplateService(pipeline, store, request.secret, calibration=calibration, policy=policy,
                              admin_secret=admin_secret, witness=witness_path(args.witness, request.location),
                              far=args.far, threshold=args.threshold, gallery_spec=gallery)
    aligner = PhotoAligner(pipeline.embedder.input_size, detectors=args.detectors,
                           max_detect_pixels=int(args.max_detect_megapixels * 1e6),
                           seconds_per_minute=args.detect_seconds_per_minute or None)
    state = ServerState(service, keys, limits, aligner, admin_secret, admin_scores=args.admin_scores)
    return create_app(state)


def _python_only_stderr():
    """Standard error for Python only: native libraries' own lines (TensorFlow's and XLA's C++
    logs, printed whenever a model loads) would break the JSON log, so file descriptor 2 goes to
    /dev/null and ``sys.stderr`` (logs, tracebacks) to a copy of the real one."""
    import sys

    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="replace")
    return sys.stderr


def uvicorn_options(args) -> dict:
    """What ``uvicorn.run`` gets: the address, TLS, no access log of its own, and proxy headers
    only from ``--forwarded_allow_ips`` (off without it: uvicorn's default trusts 127.0.0.1)."""
    proxies = trusted_proxies(args.forwarded_allow_ips)
    return dict(host=args.host, port=args.port, log_config=None, access_log=False, ssl_certfile=args.tls_cert,
                ssl_keyfile=args.tls_key, server_header=False, timeout_graceful_shutdown=10,
                proxy_headers=bool(proxies), forwarded_allow_ips=",".join(proxies) if proxies else None)


def _runtime_fields(pipeline) -> dict:
    """The stage-1 runtime the pipeline embeds with, and why (``--runtime``), for the start-up log."""
    choice = getattr(pipeline, "runtime", None)
    return {} if choice is None else {"runtime": choice.runtime, "runtime_reason": choice.reason}


def serve(args, request) -> int:
    """Run the server until interrupted; returns the exit code."""
    import sys

    import uvicorn

    from iom.server.logs import setup_logging
    from iom.store.dsn import scrub_dsn

    setup_logging(args.log_level, _python_only_stderr() if args.log_level != "debug" else None)
    app = build_app(args, request)
    service = app.state.server.service
    if not _is_loopback(args.host) and args.tls_cert is None:
        log.warning("listening on a non-loopback address without TLS: put a TLS-terminating reverse proxy in "
                    "front (see the README) or pass --tls_cert/--tls_key", extra={"fields": {"host": args.host}})
    log.info("serving", extra={"fields": {
        "host": args.host, "port": args.port, "model": service.pipeline.model_id,
        "store": scrub_dsn(request.location, request.location), "tls": args.tls_cert is not None,
        "operating_point": service.operating_point.to_dict(), "admin_scores": args.admin_scores,
        "gallery": service.gallery_spec.describe(), **_runtime_fields(service.pipeline)}})
    try:
        uvicorn.run(app, **uvicorn_options(args))
    except SystemExit as e:             # uvicorn exits when it cannot listen (the port taken meanwhile)
        service.store.close()
        print(f"error: serve: cannot listen on {args.host}:{args.port} (taken meanwhile?); "
              f"uvicorn exited with status {e.code}", file=sys.stderr, flush=True)
        return 2
    service.store.close()
    return 0
