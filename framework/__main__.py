"""``python -m framework`` is the ``forkthread`` command."""

import sys

from framework.cli import main

sys.exit(main())
