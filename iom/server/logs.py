"""Structured logs: one JSON object per line on standard error.

Every record carries ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``msg``, plus the
fields a caller passes in ``extra={"fields": {...}}`` (the request log: method, route
template, status, duration, credential name, request id). What is never logged: request
bodies (photos, tokens), headers (API keys), query strings, store URLs with passwords.
The route is the template (``/v1/subjects/{subject_id}/verify``), not the path.
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: loggers whose records the server emits
LOGGERS = ("iomface", "uvicorn", "uvicorn.error")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
               f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = record.exc_info[0].__name__
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", stream=None) -> logging.Handler:
    """Route the server's loggers to one JSON handler on ``stream`` (standard error)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if isinstance(h, logging.NullHandler)]
        logger.propagate = False
        logger.setLevel(level.upper())
        logger.addHandler(handler)
    logging.getLogger("uvicorn.access").disabled = True       # the request log replaces it
    return handler
