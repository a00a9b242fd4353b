"""``python -m iom.cli``: the ``iomface`` command."""

import sys

from iom.cli.main import main

sys.exit(main())
