"""The template service over HTTP: ``iomface serve``.

:mod:`~iom.server.app` builds the FastAPI application (routes, roles, typed errors → HTTP
statuses), :mod:`~iom.server.api_keys` the hashed API-key file, :mod:`~iom.server.uploads`
the capped photo uploads, :mod:`~iom.server.logs` the JSON logs, :mod:`~iom.server.metrics`
the Prometheus counters, :mod:`~iom.server.serve` the command that runs it under uvicorn.
"""
