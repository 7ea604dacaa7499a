"""``python -m rabo``: the ``rabo`` command, for environments without its entry-point script."""

import sys

from .launch import main

sys.exit(main())
