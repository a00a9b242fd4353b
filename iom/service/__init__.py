"""The template service core: the service, its pipeline, keys, policy, calibration and rate limits.

The store is :mod:`iom.store`, 1:N search :mod:`iom.search`, the command line :mod:`iom.cli`,
the HTTP server :mod:`iom.server`; the old module paths here forward to them for one release.
"""
