"""``python -m rabo``: the ``rabo`` command, for environments without its entry-point script."""

import sys

from .cli import main

sys.exit(main())
