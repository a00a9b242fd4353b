"""Moved to :mod:`iom.cli.main`; this path is kept for one release (see :mod:`iom._moved`)."""

from iom._moved import forward

__getattr__ = forward(__name__)


if __name__ == "__main__":
    import sys

    from iom.cli.main import main

    sys.exit(main())
