"""Moved to :mod:`iom.errors`; this path is kept for one release (see :mod:`iom._moved`)."""

from iom._moved import forward

__getattr__ = forward(__name__)
