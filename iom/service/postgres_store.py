"""Moved to :mod:`iom.store.postgres`; this path is kept for one release (see :mod:`iom._moved`)."""

from iom._moved import forward

__getattr__ = forward(__name__)
